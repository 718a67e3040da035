"""adapters/lm/model_loading.py: the dequantised-weights cache of a GGUF model, on a tiny Llama.

The dequantisation itself (transformers' GGUF loader, about 25 s for SmolLM2) is replaced by loading a tiny Llama
folder, counted; the GGUF file is any file (only its bytes are hashed). What is checked is the cache around it:
made once, reused by the memory-mapped load (same weights, buffers, generation config and logits as
``from_pretrained``), rebuilt when the source changes, never used when damaged (edited with its mtime put back,
truncated, or with a header that does not parse).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _llm_fixtures import tiny_llama  # noqa: F401

from lifelong.adapters.lm import model_loading as llm


@pytest.fixture()
def fake_gguf(tiny_llama, tmp_path, monkeypatch):  # noqa: F811
    """A source file, a cache root, and a counting stand-in for the dequantiser that loads the tiny Llama."""
    source = tmp_path / "tiny.gguf"
    source.write_bytes(b"GGUF tiny stand-in v1")
    built: list[Path] = []

    def dequantise(gguf: Path):
        built.append(gguf)
        return llm._load_hf(str(tiny_llama), None)

    monkeypatch.setattr(llm, "_dequantise_gguf", dequantise)
    return source, tmp_path / "cache", built


def _entry(root: Path) -> Path:
    (entry,) = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("gguf-")]
    return entry


def _same_model(a, b) -> None:
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    ba, bb = dict(a.named_buffers()), dict(b.named_buffers())
    assert ba.keys() == bb.keys() and all(torch.equal(ba[k], bb[k]) for k in ba)  # the rotary table too
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        assert torch.equal(a(input_ids=ids).logits, b(input_ids=ids).logits)


def test_cache_made_once_then_reused_without_from_pretrained(fake_gguf, tiny_llama, monkeypatch):  # noqa: F811
    source, root, built = fake_gguf
    first, tok = llm.load_causal_lm(str(source), cache_dir=root)
    assert len(built) == 1
    manifest = json.loads((_entry(root) / "lifelong-cache.json").read_text())
    assert manifest["safetensors_bytes"] == (_entry(root) / "model.safetensors").stat().st_size

    import transformers

    def no_from_pretrained(*a, **k):
        raise AssertionError("the cached load must not go through from_pretrained")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_from_pretrained)
    again, tok2 = llm.load_causal_lm(str(source), cache_dir=root)
    assert len(built) == 1  # reused
    monkeypatch.undo()
    reference, _ = llm._load_hf(str(tiny_llama), None)
    _same_model(again, reference)
    _same_model(first, again)
    assert again.lm_head.weight is again.model.embed_tokens.weight  # tied again, as from_pretrained ties it
    assert again.generation_config.eos_token_id == reference.generation_config.eos_token_id
    assert llm.model_identity(again) == llm.model_identity(first)
    assert llm.model_identity(again)["weights_sha256"] == llm.weights_sha256(again)
    assert not again.training and not any(p.requires_grad for p in again.parameters())
    assert tok2("a b c").input_ids == tok("a b c").input_ids


def test_cached_weights_edited_in_memory_leave_the_file_alone(fake_gguf):
    import torch

    source, root, _ = fake_gguf
    llm.load_causal_lm(str(source), cache_dir=root)
    model, _ = llm.load_causal_lm(str(source), cache_dir=root)
    before = llm.file_sha256(_entry(root) / "model.safetensors")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the mapping is private (copy on write): the file must not change
    assert llm.file_sha256(_entry(root) / "model.safetensors") == before


def test_cache_rebuilt_when_the_source_changes(fake_gguf):
    source, root, built = fake_gguf
    llm.load_causal_lm(str(source), cache_dir=root)
    old = _entry(root).name
    source.write_bytes(b"GGUF tiny stand-in v2, another file")
    llm.load_causal_lm(str(source), cache_dir=root)
    assert len(built) == 2
    assert {p.name for p in root.iterdir() if p.is_dir()} - {old}  # a new entry, keyed by the new hash


@pytest.mark.parametrize("damage", ["flip-byte-same-mtime", "truncate", "bad-header", "manifest-hash"])
def test_damaged_cache_is_never_used(fake_gguf, damage):
    source, root, built = fake_gguf
    llm.load_causal_lm(str(source), cache_dir=root)
    entry = _entry(root)
    weights = entry / "model.safetensors"
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    if damage == "flip-byte-same-mtime":
        data[-5] ^= 0xFF
        weights.write_bytes(bytes(data))
        os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # a check by size and mtime alone would miss it
    elif damage == "truncate":
        weights.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "bad-header":
        weights.write_bytes(b"\xff" * 16 + bytes(data[16:]))
    else:
        manifest = json.loads((entry / "lifelong-cache.json").read_text())
        (entry / "lifelong-cache.json").write_text(json.dumps(dict(manifest, safetensors_sha256="0" * 64)))
    model, _ = llm.load_causal_lm(str(source), cache_dir=root)
    assert len(built) == 2  # not used: dequantised again
    assert llm.model_identity(model)["weights_sha256"] == llm.weights_sha256(model)
    manifest = json.loads((_entry(root) / "lifelong-cache.json").read_text())
    assert llm.file_sha256(_entry(root) / "model.safetensors") == manifest["safetensors_sha256"]  # rewritten whole
    llm.load_causal_lm(str(source), cache_dir=root)
    assert len(built) == 2  # and the rebuilt entry is used


def test_quiet_cached_load_prints_no_progress_bar(fake_gguf, capfd):
    source, root, _ = fake_gguf
    llm.load_causal_lm(str(source), cache_dir=root)
    capfd.readouterr()
    llm.load_causal_lm(str(source), cache_dir=root)
    out, err = capfd.readouterr()
    assert "Loading weights" not in out + err and "%|" not in err
