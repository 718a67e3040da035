"""SoLA's threshold per base model, on a tiny Llama: the shipped calibration table (model identity -> threshold and
how it was chosen) gives a new store its threshold, a threshold the caller sets wins, another key site or an unknown
model keeps the generic default and ``edit apply`` says which; ``edit calibrate --store`` chooses a store's threshold
on the paraphrases and locality prompts its edits were applied with, records it, and the store routes with it;
``edit bench`` refuses the edits a shipped default was calibrated on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from _cli import one_line, run
from _llm_fixtures import TINY_SOLA, tiny_llama  # noqa: F401  (session fixture)

import lifelong.editors.sola as sola
from lifelong.adapters.lm.model_loading import load_causal_lm, model_identity
from lifelong.benchmarks.edits import load_edits
from lifelong.editing.bench import run_edit_bench
from lifelong.editing.calibrate import calibrate_threshold
from lifelong.editing.editor import EditRequest
from lifelong.editing.session import EditSession
from lifelong.editing.store import EditStore
from lifelong.platform.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread_module")

KEY = {"layers": [1], "modules": ["mlp.down_proj"], "max_steps": 30, "lr": 0.05}
SUBJECTS = ["poodle", "violin", "carrot", "glacier", "sparrow", "hammer"]
POOL = ["beagle", "cello", "turnip", "iceberg", "finch", "wrench", "daisy", "hawk", "spoon"]


def _requests() -> list[EditRequest]:
    return [EditRequest(prompt=f"A {s} is a kind of", target=" thing", id=f"e{i}",
                        paraphrases=[f"The {s} is a type of", f"Broadly speaking, a {s} is one kind of"],
                        locality=[f"A {POOL[(2 * i + k) % len(POOL)]} is a kind of" for k in range(2)])
            for i, s in enumerate(SUBJECTS)]


def _write(path: Path, reqs: list[EditRequest]) -> Path:
    path.write_text("".join(json.dumps({"id": r.id, "prompt": r.prompt, "target": r.target,
                                        "paraphrases": r.paraphrases, "locality": r.locality}) + "\n" for r in reqs))
    return path


def _table(tmp_path: Path, monkeypatch, identity: dict[str, str], threshold: float = 0.3456) -> None:
    """A calibration table naming the tiny Llama (its real weights hash) at the key site of ``KEY``."""
    key = {"layers": [1], "key_layer": None, "key_module": "self_attn.o_proj", "key_pooling": "last",
           "center_keys": True}
    row = {"model": "tiny", "weights_sha256": identity["weights_sha256"], "threshold": threshold, "key": key,
           "locality_kept": 0.98, "paraphrases_routed": 0.5, "n_edits": 6, "source": "edit calibrate --file dev.jsonl",
           "date": "2026-12-07", "calibrated_on": {"file": "dev.jsonl", "edit_ids": ["e0", "e1"]}}
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"models": [row]}))
    monkeypatch.setattr(sola, "THRESHOLDS_FILE", path)


def test_the_shipped_table_records_how_each_threshold_was_chosen():
    rows = sola.calibrated_thresholds()
    smol = next(r for r in rows if r["model"] == "smollm2-135m")
    assert smol["threshold"] == 0.2894 and smol["n_edits"] == 250 and smol["locality_target"] == 0.98
    assert "edit calibrate --file wn-dev.jsonl --n 250" in smol["source"] and smol["date"]
    # the ids hash is the SHA-256 of the sorted ids, one a line (recomputed here), and there are n_edits of them
    on = smol["calibrated_on"]
    assert len(set(on["edit_ids"])) == on["n_edits"] == 250
    assert hashlib.sha256("\n".join(sorted(on["edit_ids"])).encode()).hexdigest() == on["ids_sha256"]
    # it was calibrated at SoLA's default key site, so a default store on that model gets it
    defaults = sola.SoLAConfig()
    assert all(getattr(defaults, k) == smol["key"][k] for k in sola.KEY_FIELDS)


def test_a_new_store_gets_the_models_calibrated_threshold_unless_set(tiny_llama, tmp_path, monkeypatch):  # noqa: F811
    loaded = load_causal_lm(str(tiny_llama))
    ident = model_identity(loaded[0])
    # not in the shipped table: the generic default, and the note says so
    with EditSession(tmp_path / "a", loaded=loaded, editor_config=KEY, device="cpu") as s:
        assert s.editor.config.threshold == sola.SoLAConfig().threshold and s.calibrated_default is None
        assert "generic default: no calibrated threshold for this model" in s.defaults_note
    _table(tmp_path, monkeypatch, ident)
    with EditSession(tmp_path / "b", loaded=loaded, editor_config=KEY, device="cpu") as s:
        assert s.editor.config.threshold == 0.3456 and "calibrated for tiny" in s.defaults_note
        assert s.editor_config["threshold"] == 0.3456  # the config the store fixes with its first edit
    with EditSession(tmp_path / "c", loaded=loaded, editor_config={**KEY, "threshold": 0.1}, device="cpu") as s:
        assert s.editor.config.threshold == 0.1 and s.defaults_note == "SoLA threshold 0.1 (as set)"
    with EditSession(tmp_path / "d", loaded=loaded, editor_config={**KEY, "key_pooling": "mean"}, device="cpu") as s:
        assert s.editor.config.threshold == sola.SoLAConfig().threshold and "key differs" in s.defaults_note
    # another model (other weights) is not matched by the table
    _table(tmp_path, monkeypatch, {"weights_sha256": "0" * 64})
    with EditSession(tmp_path / "e", loaded=loaded, editor_config=KEY, device="cpu") as s:
        assert s.editor.config.threshold == sola.SoLAConfig().threshold


def test_calibrate_store_uses_the_stores_own_edits_and_the_store_routes_with_it(capsys, tiny_llama,  # noqa: F811
                                                                                tmp_path):
    reqs = _requests()
    edits = _write(tmp_path / "edits.jsonl", reqs)
    store = tmp_path / "store"
    code, _, err = run(capsys, "edit", "apply", "--store", str(store), "--file", str(edits), "--model",
                       str(tiny_llama), "--device", "cpu", *TINY_SOLA)
    assert code == 0, err
    assert "SoLA threshold 0.08 (the generic default" in err  # edit apply says which threshold the store got
    with EditStore.open(store, create=False) as s:
        assert [r.extra["paraphrases"] for r in s.active_edits()] == [r.paraphrases for r in reqs]
    code, out, err = run(capsys, "edit", "calibrate", "--store", str(store), "--locality", "0.75", "--device", "cpu",
                         "--json")
    assert code == 0, err
    res = json.loads(out)
    # the same choice made directly from the file the edits came from, at the store's key site
    model, tok = load_causal_lm(str(tiny_llama))
    direct = calibrate_threshold(load_edits(edits), model, tok, editor_config=KEY, locality=0.75)
    assert res["threshold"] == pytest.approx(direct["threshold"], abs=1e-6)
    assert res["paraphrases_routed"] == direct["paraphrases_routed"] and res["n_edits"] == len(reqs)
    assert res["calibrated_on"]["edit_ids"] == sorted(r.id for r in reqs)
    with EditStore.open(store, create=False) as s:
        recorded = s.calibration()
        assert recorded["threshold"] == res["threshold"] and recorded["calibrated_on"]["store"] == str(store)
        assert s.editor_spec()[1]["threshold"] == 0.08  # the edits' config stays as they were made
    with EditSession(store, model=str(tiny_llama), device="cpu") as s:
        assert s.editor.config.threshold == pytest.approx(res["threshold"])
        assert "calibrated for this store on 6 edits" in s.defaults_note
        # the router does what calibration reported: the share of paraphrases routed to their own edit
        routed = [g["edit_id"] for g in s.generate([p for r in reqs for p in r.paraphrases], max_new_tokens=1)]
        ids = {rec.prompt: rec.id for rec in s.store.active_edits()}
        own = [ids[r.prompt] for r in reqs for _ in r.paraphrases]
        assert sum(a == b for a, b in zip(routed, own)) / len(own) == pytest.approx(res["paraphrases_routed"])


def test_calibrate_store_refusals_are_one_line(capsys, tiny_llama, tmp_path):  # noqa: F811
    code, _, err = run(capsys, "edit", "calibrate", "--locality", "0.9")
    assert code == 2 and "needs --file DEV.jsonl, or --store STORE" in one_line(err)
    empty = tmp_path / "empty"
    EditStore.open(empty).close()
    code, _, err = run(capsys, "edit", "calibrate", "--store", str(empty))
    assert code == 2 and "holds no edits" in one_line(err)
    code, _, err = run(capsys, "edit", "calibrate", "--store", str(empty), "--set", "key_pooling=mean")
    assert code == 2 and "--set is not used with --store alone" in one_line(err)


def test_bench_refuses_the_edits_a_shipped_default_was_calibrated_on(tmp_path):
    smol = next(r for r in sola.calibrated_thresholds() if r["model"] == "smollm2-135m")
    dev = [EditRequest(prompt="A cross is a kind of", target=" surface", id=smol["calibrated_on"]["edit_ids"][0])]
    with pytest.raises(UserError, match="the default sola threshold of smollm2-135m was calibrated on them"):
        run_edit_bench("sola", dev, seed=0, out=tmp_path / "b", model="smollm2-135m", device="cpu")
    assert not (tmp_path / "b").exists()  # refused before anything was written or loaded
