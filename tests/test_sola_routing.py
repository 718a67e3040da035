"""SoLA's key options (``key_layer``, ``key_module``, ``key_pooling``) on a tiny Llama: the key is read where the
config says and pooled over the prompt's tokens only, edits route and roll back through it, bad options are one
clear error, and a store recorded before the options existed keeps its key site."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import pytest
import torch
from _llm_fixtures import tiny_llama  # noqa: F401  (session fixture)

from lifelong.adapters.lm.model_loading import load_causal_lm
from lifelong.editing.session import EditSession
from lifelong.editors.sola import SoLAConfig
from lifelong.platform import registry
from lifelong.platform.config import ConfigError

TINY = {"layers": [1], "modules": ["mlp.down_proj"], "max_steps": 40, "lr": 0.05, "center_keys": False}


@pytest.fixture(scope="module")
def loaded(tiny_llama):  # noqa: F811
    return load_causal_lm(str(tiny_llama))


def _editor(loaded, **cfg):
    ed = registry.create("editor", "sola", **{**TINY, **cfg})
    ed.attach(*loaded)
    return ed


def test_key_site_and_mean_pooling_match_the_hidden_states(loaded):
    model, tok = loaded
    prompts = ["The cat sat", "A much longer prompt about the weather today"]
    ed = _editor(loaded, key_layer=1, key_module="self_attn.o_proj", key_pooling="mean")
    try:
        batch = ed.key_of(prompts)  # right-padded batch: padding must not enter the mean
        for i, p in enumerate(prompts):
            alone = ed.key_of([p])[0]
            assert torch.allclose(torch.from_numpy(batch[i]), torch.from_numpy(alone), atol=1e-5)
        caught = []
        hook = model.get_submodule("model.layers.1.self_attn.o_proj").register_forward_pre_hook(
            lambda m, inp: caught.append(inp[0][0].detach().float()))
        try:
            with torch.no_grad():
                model(**tok(prompts[0], return_tensors="pt", add_special_tokens=False))
        finally:
            hook.remove()
        assert torch.allclose(caught[0].mean(0), torch.from_numpy(batch[0]), atol=1e-5)
    finally:
        ed.detach()
    last = _editor(loaded, key_layer=0, key_module="", key_pooling="last")  # the residual stream into layer 0
    try:
        emb = model.get_input_embeddings()(tok(prompts[0], return_tensors="pt", add_special_tokens=False).input_ids)
        assert torch.allclose(torch.from_numpy(last.key_of(prompts[:1])[0]), emb[0, -1].detach(), atol=1e-6)
    finally:
        last.detach()
    # the default (no key_layer) is the first edited module's input at the last token, as before the options
    legacy = _editor(loaded)
    try:
        caught = []
        hook = model.get_submodule("model.layers.1.mlp.down_proj").register_forward_pre_hook(
            lambda m, inp: caught.append(inp[0][0, -1].detach().float()))
        try:
            with torch.no_grad():
                model(**tok(prompts[0], return_tensors="pt", add_special_tokens=False))
        finally:
            hook.remove()
        assert torch.allclose(torch.from_numpy(legacy.key_of(prompts[:1])[0]), caught[0], atol=1e-5)
    finally:
        legacy.detach()


def test_mean_pooled_key_routes_edits_and_rollback_is_exact(tmp_path, loaded):
    model, tok = loaded
    cfg = {**TINY, "key_layer": 1, "key_module": "self_attn.o_proj", "key_pooling": "mean", "threshold": 0.02}
    prompt, other = "The capital of Australia is", "Water boils at a temperature of"
    with torch.no_grad():
        base = [model(**tok(p, return_tensors="pt", add_special_tokens=False)).logits[0, -1].clone()
                for p in (prompt, other)]
    with EditSession(tmp_path / "s", loaded=loaded, editor="sola", editor_config=cfg) as s:
        rec = s.apply(prompt, "Canberra")
        gens = s.generate([prompt, other], max_new_tokens=2)
        assert gens[0]["edit_id"] == rec.id and gens[1]["edit_id"] is None
        assert s.token_accuracy([prompt], ["Canberra"]) == [1.0]
        s.rollback([rec.id])
        with torch.no_grad(), s.editor.routing():
            after = [model(**tok(p, return_tensors="pt", add_special_tokens=False)).logits[0, -1].clone()
                     for p in (prompt, other)]
    assert all(torch.equal(a, b) for a, b in zip(after, base))


def test_bad_key_options_are_one_config_error(loaded):
    with pytest.raises(ConfigError, match="key_pooling"):
        registry.create("editor", "sola", **{**TINY, "key_pooling": "max"})
    with pytest.raises(ConfigError, match="key_layer"):  # above the edited layer: read after the decision
        _editor(loaded, layers=[0], key_layer=1)
    with pytest.raises(ConfigError, match="key_module"):
        _editor(loaded, key_layer=1, key_module="no.such_module")
    with pytest.raises(ConfigError, match="runs after"):  # inside the edited layer, after the edited module
        _editor(loaded, key_layer=1, key_module="mlp.down_proj", modules=["self_attn.o_proj"])


def test_store_recorded_before_the_key_options_keeps_its_key_site(tmp_path, loaded):
    """A store whose recorded config has no key fields (made before they existed) routes with the key site it
    was made with (the first edited module, last token), whatever the current defaults are."""
    prompt = "The capital of Australia is"
    with EditSession(tmp_path / "old", loaded=loaded, editor="sola",
                     editor_config={**TINY, **SoLAConfig.LEGACY}) as s:
        rec = s.apply(prompt, "Canberra")
        key = s.store.active_edits()[0].key
    con = sqlite3.connect(tmp_path / "old" / "edits.sqlite")
    raw = json.loads(con.execute("SELECT value FROM meta WHERE key = 'editor'").fetchone()[0])
    for k in SoLAConfig.LEGACY:
        raw["config"].pop(k)
    con.execute("UPDATE meta SET value = ? WHERE key = 'editor'", (json.dumps(raw, sort_keys=True),))
    rows = con.execute("SELECT key, value FROM meta WHERE key != 'meta_sha256' ORDER BY key").fetchall()
    seal = hashlib.sha256(json.dumps([list(r) for r in rows]).encode()).hexdigest()  # as the store seals its meta
    con.execute("UPDATE meta SET value = ? WHERE key = 'meta_sha256'", (seal,))
    con.commit()
    con.close()
    with EditSession(tmp_path / "old", loaded=loaded) as s:
        for k, v in SoLAConfig.LEGACY.items():
            assert getattr(s.editor.config, k) == v
        assert torch.allclose(torch.from_numpy(s.editor.key_of([prompt])[0]), torch.from_numpy(key), atol=1e-5)
        assert s.generate([prompt], max_new_tokens=1)[0]["edit_id"] == rec.id
