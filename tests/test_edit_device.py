"""Editing with ``--device`` and ``--precision`` on a tiny random Llama: bf16 and fp16 edits take and roll back to
the base output token for token, every forward runs in the asked precision, stored edits are float32 on the CPU,
a store made in one precision serves another, and bad values fail with one line, exit 2, and no store written.
CUDA was not available where these were written; on CPU, ``auto`` means ``cpu``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _llm_fixtures import tiny_llama  # noqa: F401  (session fixture)
from lifelong.cli.main import main
from lifelong.editing.session import EditSession
from lifelong.editing.store import EditStore

P, T = "The capital of Australia is", "Canberra"
OTHER = "Cats like to"
# The tiny model's softmax is almost flat over SmolLM2's 49k tokens (loss ~10 even when the target is the argmax),
# so stop_loss just under ln(49152) stops training as soon as the target is reproduced: seconds, not minutes.
CONFIGS = {
    "sola": {"layers": [1], "modules": ["mlp.down_proj"], "lr": 0.05, "max_steps": 30, "stop_loss": 10.5},
    "grace": {"layer": 1, "max_steps": 30, "stop_loss": 10.5},
    "ft-l": {"layer": 1, "lr": 0.01, "max_steps": 30, "stop_loss": 10.5},
}
TINY_CLI = ["--set", "layers=[1]", "--set", "modules=[mlp.down_proj]", "--set", "lr=0.05", "--set", "max_steps=30",
            "--set", "stop_loss=10.5"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def run(capsys, *args: str) -> tuple[int, str, str]:
    """``lifelong ARGS`` in-process; argparse's own errors (exit 2) come back as a code too."""
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def _record_dtypes(model) -> tuple[set, object]:
    """Output dtypes of an unedited projection (layer 0): what precision the forwards really ran in."""
    seen: set = set()
    handle = model.get_submodule("model.layers.0.mlp.down_proj").register_forward_hook(
        lambda m, i, o: seen.add(o.dtype))
    return seen, handle


@pytest.mark.parametrize("editor, precision", [
    ("sola", "bf16"), ("sola", "fp16"), ("grace", "bf16"), ("grace", "fp16"), ("ft-l", "bf16"), ("ft-l", "fp16"),
])
def test_reduced_precision_edit_takes_and_rollback_is_exact(tmp_path, tiny_llama, editor, precision):  # noqa: F811
    store = tmp_path / "store"
    cfg = CONFIGS[editor]
    with EditSession(store, model=str(tiny_llama), editor=editor, editor_config=cfg, precision=precision,
                     device="cpu", quiet=True) as s:
        weight0 = s.model.get_submodule("model.layers.1.mlp.down_proj").weight
        assert weight0.dtype == torch.float32 and s.device.type == "cpu"
        base = [g["tokens"] for g in s.generate([P, OTHER], max_new_tokens=6)]
        seen, handle = _record_dtypes(s.model)
        rec = s.apply(P, T)
        after = s.generate([P], max_new_tokens=6)[0]
        handle.remove()
        assert seen == {DTYPES[precision]}  # training and generation both ran under autocast
        assert after["completion"].startswith(" " + T)
        assert rec.extra["precision"] == precision and rec.extra["device"] == "cpu"
        assert s.token_accuracy([P], [T]) == [1.0]

    # what the store holds: float32 CPU tensors (master weights), a float32 key, whatever the precision
    with EditStore.open(store, create=False) as st:
        (stored,) = st.active_edits()
        tensors = st.load_tensors(stored)
        spec = st.editor_spec()[1]
    assert all(spec[k] == v for k, v in cfg.items()) and "precision" not in spec and "device" not in spec
    assert tensors and all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors.values())
    assert stored.key is None or stored.key.dtype == np.float32

    # the store serves an fp32 session (precision is not fixed by the store; the model identity does not change)
    with EditSession(store, model=str(tiny_llama), precision="fp32", quiet=True) as s:
        assert s.generate([P], max_new_tokens=3)[0]["completion"].startswith(" " + T)

    # rolled back in the edit's precision: the base model's greedy output, token for token
    with EditSession(store, model=str(tiny_llama), precision=precision, quiet=True) as s:
        assert s.rollback([rec.id]) == [(rec.id, True)]
        assert [g["tokens"] for g in s.generate([P, OTHER], max_new_tokens=6)] == base


def test_cli_explicit_cpu_and_precision(tmp_path, capsys, tiny_llama):  # noqa: F811
    store = str(tmp_path / "store")
    model = str(tiny_llama)
    code, out, err = run(capsys, "edit", "apply", "--store", store, "--model", model, "--prompt", P, "--target", T,
                         "--device", "cpu", "--precision", "bf16", *TINY_CLI, "--json")
    assert code == 0, err
    code, out, _ = run(capsys, "edit", "list", "--store", store, "--json")
    (row,) = json.loads(out)
    assert row["extra"]["device"] == "cpu" and row["extra"]["precision"] == "bf16"

    code, out, err = run(capsys, "edit", "generate", "--store", store, "--prompt", P, "--max-new-tokens", "3",
                         "--device", "cpu", "--precision", "fp16", "--json")
    assert code == 0, err
    assert json.loads(out)["edit_id"] == row["id"] and json.loads(out)["completion"].startswith(" " + T)

    edits = tmp_path / "edits.jsonl"  # two edits, so that the bench rolls one back
    edits.write_text("".join(json.dumps({"prompt": p, "target": t}) + "\n"
                             for p, t in ((P, T), ("The Night Watch was painted by", "Rembrandt"))))
    code, out, err = run(capsys, "edit", "eval", "--store", store, "--file", str(edits), "--device", "cpu",
                         "--precision", "bf16", "--json")
    assert code == 0, err
    assert json.loads(out)["reliability"] == 1.0

    code, out, err = run(capsys, "edit", "bench", "--editor", "sola", "--file", str(edits), "--out",
                         str(tmp_path / "bench"), "--model", model, "--device", "cpu", "--precision", "bf16",
                         *TINY_CLI, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert (res["device"], res["precision"]) == ("cpu", "bf16")
    assert res["n_edits"] == 2 and res["rollback"]["n_rolled_back"] == 1
    assert res["rollback"]["fidelity"] == 1.0 and res["right_after"]["reliability"] == 1.0


BAD = [
    (["--device", "foo"], ["--device", "'foo'", "allowed: auto, cpu, cuda, cuda:N"]),
    (["--device", "cuda"], ["--device", "no CUDA device is available", "allowed here: auto, cpu"]),
    (["--precision", "fp8"], ["--precision", "'fp8'", "fp32", "bf16", "fp16"]),
]


@pytest.mark.parametrize("option, words", BAD, ids=["device-foo", "device-cuda", "precision-fp8"])
def test_bad_device_or_precision_writes_nothing(tmp_path, capsys, tiny_llama, option, words):  # noqa: F811
    if option == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("CUDA is available here, so --device cuda is a valid choice")
    model = str(tiny_llama)
    store = tmp_path / "store"
    code, out, err = run(capsys, "edit", "apply", "--store", str(store), "--model", model, "--prompt", P,
                         "--target", T, *option, *TINY_CLI)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and all(w in err for w in words), err
    assert not store.exists()

    bench_out = tmp_path / "bench"
    edits = tmp_path / "edits.jsonl"
    edits.write_text(json.dumps({"prompt": P, "target": T}) + "\n")
    code, _, err = run(capsys, "edit", "bench", "--editor", "sola", "--file", str(edits), "--out", str(bench_out),
                       "--model", model, *option)
    assert code == 2 and all(w in err for w in words), err
    assert not bench_out.exists()

    # an existing store is left as it was by generate and eval
    with EditSession(store, model=model, editor="sola", editor_config=CONFIGS["sola"], quiet=True) as s:
        s.apply(P, T)
    before = _snapshot(store)
    for cmd in (["generate", "--prompt", P], ["eval", "--file", str(edits)]):
        code, out, err = run(capsys, "edit", *cmd, "--store", str(store), *option)
        assert code == 2 and out == "" and all(w in err for w in words), err
    assert _snapshot(store) == before


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
