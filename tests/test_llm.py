"""adapters/lm/model_loading.py: the embedded GGUF model through the hash-checked cache, HF folders, identities, errors."""

from __future__ import annotations

import json
import os

import pytest
from _llm_fixtures import smollm, tiny_llama, tiny_llama_other  # noqa: F401

from lifelong.adapters.lm import model_loading as llm
from lifelong.platform.errors import UserError


def test_default_model_identity_and_cache(smollm, tmp_path, monkeypatch):  # noqa: F811
    model, tok = smollm
    ident = llm.model_identity(model)
    assert ident["name"] == "smollm2-135m" and len(ident["weights_sha256"]) == 64
    assert type(model).__name__ == "LlamaForCausalLM" and not any(p.requires_grad for p in model.parameters())
    assert tok.pad_token is not None
    # the identity recorded in the cache is the hash of the weights actually loaded
    assert llm.weights_sha256(model) == ident["weights_sha256"]
    root = llm.cache_root()
    sha = llm._gguf_sha(llm.embedded_gguf_path("smollm2-135m"), root)
    entry = root / f"gguf-{sha[:32]}"
    manifest = json.loads((entry / "lifelong-cache.json").read_text())
    assert manifest["weights_sha256"] == ident["weights_sha256"]
    assert llm.file_sha256(entry / "model.safetensors") == manifest["safetensors_sha256"]

    # a cache entry whose file does not match its recorded hash is rebuilt, never trusted
    fake_root = tmp_path / "cache"
    fake = fake_root / entry.name
    fake.mkdir(parents=True)
    for f in entry.iterdir():
        if f.name != "lifelong-cache.json":
            os.symlink(f, fake / f.name)
    (fake_root / "gguf-hashes.json").write_text((root / "gguf-hashes.json").read_text())
    (fake / "lifelong-cache.json").write_text(json.dumps(dict(manifest, safetensors_sha256="0" * 64)))
    rebuilt = []
    monkeypatch.setattr(llm, "_build_gguf_cache", lambda *a, **k: rebuilt.append(a) or ("m", "t"))
    assert llm._load_gguf_cached(llm.embedded_gguf_path("smollm2-135m"), "x", None, fake_root) == ("m", "t")
    assert len(rebuilt) == 1


def test_hf_folder_identity_differs_between_models(tiny_llama, tiny_llama_other):  # noqa: F811
    a, tok = llm.load_causal_lm(str(tiny_llama))
    a2, _ = llm.load_causal_lm(str(tiny_llama))
    b, _ = llm.load_causal_lm(str(tiny_llama_other))
    assert llm.model_identity(a) == llm.model_identity(a2)
    assert llm.model_identity(a)["weights_sha256"] != llm.model_identity(b)["weights_sha256"]
    assert tok.pad_token is not None and not a.training


@pytest.mark.parametrize("name, message", [
    ("no-such-model", "unknown model 'no-such-model'"),
    ("/nonexistent/model.gguf", "does not exist"),
])
def test_bad_model_names(name, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=message):
        llm.load_causal_lm(name)


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        llm.load_causal_lm(str(tmp_path))
