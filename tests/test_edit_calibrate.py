"""``edit calibrate``: SoLA's threshold chosen on development edits, on a tiny Llama. The returned threshold keeps
the asked share of locality prompts unrouted and is the largest that does; the routing it reports is what the
store's router then does; bad input is one line and exit code 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _bench import load_bench_script
from _llm_fixtures import tiny_llama  # noqa: F401  (session fixture)

from lifelong.adapters.lm.model_loading import load_causal_lm
from lifelong.editing.calibrate import MARGIN, _auc, _largest_threshold, calibrate_threshold
from lifelong.editing.editor import EditRequest
from lifelong.editing.session import EditSession
from lifelong.platform.errors import UserError

# one torch thread: tiny models run no slower, and a CLI command forked after an OpenMP pool exists can hang
pytestmark = pytest.mark.usefixtures("one_thread_module")

KEY = {"layers": [1], "modules": ["mlp.down_proj"], "max_steps": 30, "lr": 0.05}
SUBJECTS = ["poodle", "violin", "carrot", "glacier", "sparrow", "hammer", "tulip", "falcon"]
POOL = ["beagle", "cello", "turnip", "iceberg", "finch", "wrench", "daisy", "hawk", "spoon", "river", "lemon",
        "anvil"]  # locality subjects: never edited


def _requests() -> list[EditRequest]:
    return [EditRequest(prompt=f"A {s} is a kind of", target=" thing",
                        paraphrases=[f"The {s} is a type of", f"Broadly speaking, a {s} is one kind of"],
                        locality=[f"A {POOL[(3 * i + k) % len(POOL)]} is a kind of" for k in range(3)])
            for i, s in enumerate(SUBJECTS)]


@pytest.fixture(scope="module")
def loaded(tiny_llama):  # noqa: F811
    return load_causal_lm(str(tiny_llama))


def test_largest_threshold_and_auc_on_known_distances():
    d = np.array([0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    alpha = _largest_threshold(d, 0.9)  # one of ten may route: alpha just below the second nearest
    assert np.mean(d > alpha) >= 0.9 and alpha == pytest.approx(0.1 - MARGIN) and np.mean(d > 0.1) < 0.9
    assert _largest_threshold(d, 1.0) == pytest.approx(0.05 - MARGIN)
    assert _largest_threshold(np.array([0.3, 0.5]), 0.5) == pytest.approx(0.5 - MARGIN)  # one of two may route
    assert _auc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert _auc(np.array([0.3, 0.4]), np.array([0.1, 0.2])) == 0.0
    assert _auc(np.array([0.2]), np.array([0.2])) == 0.5


def test_calibrated_threshold_is_the_largest_that_keeps_the_locality_share(loaded):
    model, tok = loaded
    res = calibrate_threshold(_requests(), model, tok, editor_config=KEY, locality=0.75)
    assert res["n_edits"] == 8 and res["n_paraphrases"] == 16 and res["n_locality"] == 24
    assert res["locality_kept"] >= 0.75
    curve = {row["threshold"]: row for row in res["curve"]}
    assert all(row["locality_kept"] < 0.75 for a, row in curve.items() if a > res["threshold"] + 1e-6)
    assert 0.0 <= res["paraphrases_routed"] <= 1.0 and 0.0 <= res["auc"] <= 1.0
    assert res["configured_threshold"] == 0.08 and res["key"]["layers"] == [1]
    # a stricter target never gives a larger threshold
    strict = calibrate_threshold(_requests(), model, tok, editor_config=KEY, locality=1.0)
    assert strict["threshold"] <= res["threshold"] and strict["locality_kept"] == 1.0


def test_the_store_routes_as_calibration_says(loaded, tmp_path):
    model, tok = loaded
    reqs = _requests()
    res = calibrate_threshold(reqs, model, tok, editor_config=KEY, locality=0.75)
    session = EditSession(tmp_path / "store", editor="sola", editor_config={**KEY, "threshold": res["threshold"]},
                          loaded=(model, tok), quiet=True, device="cpu")
    try:
        ids = [session.apply(r.prompt, r.target, require_target=False).id for r in reqs]
        loc = [p for r in reqs for p in r.locality]
        para = [(p, ids[i]) for i, r in enumerate(reqs) for p in r.paraphrases]
        routed_loc = [g["edit_id"] for g in session.generate(loc, max_new_tokens=1)]
        routed_para = [g["edit_id"] for g in session.generate([p for p, _ in para], max_new_tokens=1)]
    finally:
        session.close()
    assert np.mean([i is None for i in routed_loc]) == pytest.approx(res["locality_kept"])
    assert np.mean([got == own for got, (_, own) in zip(routed_para, para)]) == pytest.approx(res["paraphrases_routed"])


def test_records_without_paraphrases_or_locality_are_refused(loaded):
    model, tok = loaded
    with pytest.raises(UserError, match="paraphrases and locality"):
        calibrate_threshold([EditRequest(prompt="A is", target=" B")], model, tok, editor_config=KEY)


def test_cli_calibrate(cli, tiny_llama, tmp_path):  # noqa: F811
    f = tmp_path / "dev.jsonl"
    f.write_text("".join(json.dumps({"prompt": r.prompt, "target": r.target, "paraphrases": r.paraphrases,
                                     "locality": r.locality}) + "\n" for r in _requests()))
    keys = [a for k, v in (("layers", "[1]"), ("modules", "[mlp.down_proj]")) for a in ("--set", f"{k}={v}")]
    ok = cli("edit", "calibrate", "--file", str(f), "--model", str(tiny_llama), "--locality", "0.75", "--json",
             "--device", "cpu", *keys)
    assert ok.code == 0, ok.stderr
    res = json.loads(ok.stdout)
    assert res["locality_kept"] >= 0.75 and res["n_edits"] == 8
    text = cli("edit", "calibrate", "--file", str(f), "--model", str(tiny_llama), "--n", "4", "--device", "cpu", *keys)
    assert text.code == 0 and "--set threshold=" in text.stdout and "on 4 edits" in text.stdout
    bad = cli("edit", "calibrate", "--file", str(f), "--locality", "1.5")
    assert bad.code == 2 and "--locality must be in (0, 1]" in bad.stderr and "Traceback" not in bad.stderr
    bad_key = cli("edit", "calibrate", "--file", str(f), "--set", "key_pooling=max")
    assert bad_key.code == 2 and "key_pooling" in bad_key.stderr and "Traceback" not in bad_key.stderr


def test_a_calibration_records_its_edits_and_edit_scale_refuses_them(tiny_llama, tmp_path, monkeypatch,  # noqa: F811
                                                                     capsys):
    """``edit calibrate --out`` records the dev file's hash and edit ids; ``bench/edit_scale.py --split all`` with
    that calibration is refused in one line before anything runs, and ``--split test`` runs, recording it."""

    from test_wordnet_edits import wordnet_40

    from lifelong.benchmarks.edits import load_edits
    from lifelong.benchmarks.wordnet_edits import wordnet_edit_set
    from lifelong.cli.main import main
    from lifelong.editing.store import EditStore
    from lifelong.platform.atomic import file_sha256

    monkeypatch.setenv("LIFELONG_WORDNET", str(wordnet_40(tmp_path / "wn")))
    monkeypatch.setenv("LIFELONG_CACHE", str(tmp_path / "cache"))
    dev = wordnet_edit_set("dev", min_count=0)
    cal = tmp_path / "cal.json"
    keys = [a for k, v in (("layers", "[1]"), ("modules", "[mlp.down_proj]")) for a in ("--set", f"{k}={v}")]
    assert main(["edit", "calibrate", "--file", str(dev), "--model", str(tiny_llama), "--locality", "0.75",
                 "--out", str(cal), "--device", "cpu", *keys]) == 0
    assert "calibrated on" in capsys.readouterr().out
    record = json.loads(cal.read_text())
    on = record["calibrated_on"]
    dev_ids = sorted(r.id for r in load_edits(dev) if r.paraphrases and r.locality)
    assert on["edit_ids"] == dev_ids and on["file_sha256"] == file_sha256(dev) and on["n_edits"] == len(dev_ids)

    edit_scale = load_bench_script("edit_scale")
    args = ["--settings", "decoder", "--editors", "sola", "--min-count", "0", "--model", str(tiny_llama),
            "--calibration", str(cal), "--set", "sola.layers=[1]", "--set", "sola.modules=[mlp.down_proj]",
            "--set", "sola.max_steps=5"]
    assert edit_scale.main(args + ["--split", "all", "--out", str(tmp_path / "all")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "were in the calibration set" in err and "--split test" in err, err
    assert not (tmp_path / "all").exists()
    # the test split holds none of them: it runs, with the calibrated threshold, and the run and its store say so
    assert edit_scale.main(args + ["--split", "test", "--n", "2", "--every", "1", "--out", str(tmp_path / "t")]) == 0
    res = json.loads((tmp_path / "t" / "summary-decoder.json").read_text())[0]
    assert res["editor_config"]["threshold"] == pytest.approx(record["threshold"])
    assert res["calibration"]["calibrated_on"]["ids_sha256"] == on["ids_sha256"]
    with EditStore.open(tmp_path / "t" / "decoder" / "sola" / "store", create=False) as store:
        assert store.calibration()["calibrated_on"]["ids_sha256"] == on["ids_sha256"]
    # the same refusal in `edit bench`, before its folder is made; and `edit calibrate --store` records in a store
    capsys.readouterr()
    assert main(["edit", "bench", "--editor", "sola", "--file", str(dev), "--model", str(tiny_llama), "--device",
                 "cpu", "--calibration", str(cal), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "were in the calibration set" in err and not (tmp_path / "b").exists()
    assert main(["edit", "calibrate", "--file", str(dev), "--model", str(tiny_llama), "--locality", "0.75",
                 "--store", str(tmp_path / "all-store"), "--device", "cpu", *keys]) == 2
    assert main(["edit", "calibrate", "--file", str(dev), "--model", str(tiny_llama), "--locality", "0.75",
                 "--store", str(tmp_path / "t" / "decoder" / "sola" / "store"), "--n", "5", "--device", "cpu",
                 *keys]) == 0
    with EditStore.open(tmp_path / "t" / "decoder" / "sola" / "store", create=False) as store:
        assert store.calibration()["calibrated_on"]["edit_ids"] == sorted(
            r.id for r in load_edits(dev)[:5] if r.paraphrases and r.locality)
