"""editors/ft_l.py keeps no copy of its edits' deltas when they are in a store, and its weight stays exactly
``base + the deltas in force, summed in id order`` through edits, rollbacks, other writers' edits and reopening."""

from __future__ import annotations

import torch
from _llm_fixtures import tiny_llama  # noqa: F401

from lifelong.editing.session import EditSession
from lifelong.editing.store import EditStore

CFG = {"layer": 1, "lr": 0.01, "max_steps": 30, "stop_loss": 10.5}  # tiny Llama: see tests/test_edit_device.py
EDITS = [("The capital of Australia is", "Canberra"), ("The Night Watch was painted by", "Rembrandt"),
         ("Cats like to", "sleep"), ("The sky is", "green")]
WEIGHT = "model.layers.1.mlp.down_proj"


def _expected(base: torch.Tensor, store_dir, ids) -> torch.Tensor:
    """The weight the sum from the base gives: every delta in force read from the store, added in id order."""
    w = base.clone()
    with EditStore.open(store_dir, create=False) as st:
        for i in sorted(ids):
            w += st.load_tensors(st.get(i))[f"ft-l.{WEIGHT}.delta"]
    return w


def test_ftl_weight_exact_without_keeping_deltas(tmp_path, tiny_llama):  # noqa: F811
    store = tmp_path / "store"
    with EditSession(store, model=str(tiny_llama), editor="ft-l", editor_config=CFG, quiet=True) as s:
        weight = s.model.get_submodule(WEIGHT).weight
        base = weight.detach().clone()
        ids = [s.apply(p, t, require_target=False).id for p, t in EDITS]
        assert all(v is None for v in s.editor.deltas.values())  # nothing but the ids in memory
        assert sorted(s.editor.deltas) == ids
        assert torch.equal(weight, _expected(base, store, ids))
        s.rollback([ids[1]])  # a middle one: rebuilt from the base with the others read back
        assert torch.equal(weight, _expected(base, store, [ids[0], *ids[2:]]))

    # a second writer adds an edit; a session opened before it, on the same store, syncs it in
    with EditSession(store, model=str(tiny_llama), quiet=True) as first:
        w_first = first.model.get_submodule(WEIGHT).weight
        assert torch.equal(w_first, _expected(base, store, [ids[0], *ids[2:]]))  # reopened: the same weight
        with EditSession(store, model=str(tiny_llama), quiet=True) as second:
            extra = second.apply("Water boils at", "ninety", require_target=False).id
        assert first.sync()
        assert torch.equal(w_first, _expected(base, store, [ids[0], *ids[2:], extra]))
        first.rollback([ids[0], ids[2], ids[3], extra])
        assert torch.equal(w_first, base)  # all rolled back: the base weight bit for bit


def test_ftl_without_store_keeps_deltas_and_is_exact(tiny_llama):  # noqa: F811
    from lifelong.adapters.lm.model_loading import load_causal_lm
    from lifelong.editors.ft_l import FTLConfig, FTLEditor

    model, tok = load_causal_lm(str(tiny_llama))
    ed = FTLEditor(FTLConfig(**CFG))
    ed.attach(model, tok)
    weight = model.get_submodule(WEIGHT).weight
    base = weight.detach().clone()
    g = torch.Generator().manual_seed(0)
    deltas = {i: torch.randn(base.shape, generator=g) * 1e-3 for i in (3, 1, 2)}
    for i, d in deltas.items():  # out of id order: 1 after 3 rebuilds from the base
        ed.activate(i, None, {f"ft-l.{WEIGHT}.delta": d})
    want = base.clone()
    for i in sorted(deltas):
        want += deltas[i]
    assert torch.equal(weight, want)
    ed.deactivate([2])
    want = base.clone()
    want += deltas[1]
    want += deltas[3]
    assert torch.equal(weight, want)
    ed.detach()
    assert torch.equal(weight, base)


def test_a_rollback_beside_a_damaged_delta_still_takes_the_edit_out(tmp_path, tiny_llama):  # noqa: F811
    """The deltas are read back at a rollback: one that no longer reads (a damaged file) is reported, and the
    weight is still base + the readable deltas in force, never one that holds the rolled-back edit."""
    import pytest

    from lifelong.editing.store import ADAPTER_DIR
    from lifelong.platform.errors import UserError

    store = tmp_path / "store"
    with EditSession(store, model=str(tiny_llama), editor="ft-l", editor_config=CFG, quiet=True) as s:
        weight = s.model.get_submodule(WEIGHT).weight
        base = weight.detach().clone()
        ids = [s.apply(p, t, require_target=False).id for p, t in EDITS[:3]]
        damaged = store / ADAPTER_DIR / s.store.get(ids[0]).adapter_file
        data = bytearray(damaged.read_bytes())
        data[-8:] = b"\xff" * 8  # the tensor bytes change: the file no longer matches its recorded hash
        damaged.write_bytes(bytes(data))
        with pytest.raises(UserError):
            s.rollback([ids[2]])
        assert torch.equal(weight, _expected(base, store, [ids[1]]))
