"""Regression tests of a hostile-input review (``docs/reliability.md``): racing first writers with different editor
specs never mix edits in one store; a plugin that exits or raises at import is reported and skipped and leaves
nothing registered; an edit whose training does not reach its target is refused, not stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from _llm_fixtures import tiny_llama  # noqa: F401

from lifelong.cli.main import main
from lifelong.editing.session import EditSession
from lifelong.editing.store import ADAPTER_DIR, EditStore
from lifelong.platform.errors import UserError

# ---------------------------------------------------------------------------------------------- 1. racing writers

_RACER = textwrap.dedent("""
    import json, os, sys, time
    import numpy as np, torch
    from lifelong.editing.store import EditStore
    base, me, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    specs = json.loads(sys.argv[4])  # per round: [name, config, metric] of this worker

    def barrier(tag):  # both workers reach it before either goes on (or the other has died: no wait then)
        open(os.path.join(base, f"{tag}-{me}"), "w").close()
        other, gone = os.path.join(base, f"{tag}-{1 - me}"), os.path.join(base, f"gone-{1 - me}")
        deadline = time.monotonic() + 60
        while not os.path.exists(other) and not os.path.exists(gone) and time.monotonic() < deadline:
            time.sleep(0.0005)

    def run_rounds():
        for r in range(rounds):
            name, cfg, metric = specs[r]
            barrier(f"open{r}")
            with EditStore.open(os.path.join(base, f"store{r}")) as s:
                barrier(f"add{r}")
                t = {"w": torch.full((4, 4), float(me))}
                k = np.random.default_rng(100 * r + me).standard_normal(8).astype(np.float32)
                try:
                    s.add_edit(f"p{me}", "t", editor=name, editor_config=cfg, metric=metric, tensors=t, key=k)
                    print(json.dumps({"round": r, "ok": True}), flush=True)
                except Exception as exc:
                    print(json.dumps({"round": r, "ok": False, "error": f"{type(exc).__name__}: {exc}"}), flush=True)

    try:
        run_rounds()
    finally:  # a worker that dies must not leave the other waiting at every barrier
        open(os.path.join(base, f"gone-{me}"), "w").close()
""")


def test_racing_first_writers_with_different_editor_specs_never_mix(tmp_path):
    rounds = 24
    # even rounds: two editors (sola routes by ip, grace by l2); odd rounds: one editor, two configs
    specs = [
        [["sola", {"rank": 4}, "ip"], ["grace", {"layer": 1}, "l2"]] if r % 2 == 0
        else [["sola", {"max_steps": 5}, "ip"], ["sola", {"max_steps": 6}, "ip"]]
        for r in range(rounds)
    ]
    script = tmp_path / "racer.py"
    script.write_text(_RACER)
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path), str(w), str(rounds),
                               json.dumps([specs[r][w] for r in range(rounds)])],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in (0, 1)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        outs.append({d["round"]: d for d in map(json.loads, out.splitlines())})
    for r in range(rounds):
        results = [outs[w][r] for w in (0, 1)]
        assert sorted(d["ok"] for d in results) == [False, True], (r, results)  # exactly one writer won
        winner = next(w for w in (0, 1) if results[w]["ok"])
        loser_error = results[1 - winner]["error"]
        name, cfg, metric = specs[r][winner]
        assert loser_error.startswith("StoreError: ") and "\n" not in loser_error
        assert f"holds 1 '{name}' edits with config" in loser_error and loser_error.endswith("use a new store")
        with EditStore.open(tmp_path / f"store{r}") as s:
            recs = s.all_edits()
            assert [(x.prompt, x.editor, x.editor_config) for x in recs] == [(f"p{winner}", name, cfg)], r
            assert s.editor_spec() == (name, cfg) and s.metric == metric
            assert s.router().ids() == {recs[0].id}
        assert sorted(p.name for p in (tmp_path / f"store{r}" / ADAPTER_DIR).iterdir()) == [recs[0].adapter_file]


def test_a_later_writer_with_another_spec_is_refused_in_process(tmp_path):
    with EditStore.open(tmp_path / "s") as s:
        s.add_edit("p", "t", editor="sola", editor_config={"rank": 4, "lr": 0.05}, metric="ip",
                   key=[1.0, 0.0], tensors={"w": torch.ones(2)})
        before = (s.version(), sorted(p.name for p in (tmp_path / "s" / ADAPTER_DIR).iterdir()))
        with pytest.raises(UserError, match=r"holds 1 'sola' edits with config \{\"rank\": 4\}.*use a new store$"):
            s.add_edit("q", "t", editor="sola", editor_config={"rank": 8, "lr": 0.05}, metric="ip", key=[0.0, 1.0],
                       tensors={"w": torch.zeros(2)})
        with pytest.raises(UserError, match="holds 1 'sola' edits"):
            s.add_edit("q", "t", editor="grace", editor_config={}, metric="l2", key=[0.0, 1.0])
        assert (s.version(), sorted(p.name for p in (tmp_path / "s" / ADAPTER_DIR).iterdir())) == before
        assert len(s.all_edits()) == 1
        s.add_edit("r", "t", editor="sola", editor_config={"rank": 4, "lr": 0.05}, metric="ip", key=[0.5, 0.5])
        assert len(s.all_edits()) == 2


# ---------------------------------------------------------------------------------------------- 2. bad plugins

_HALF = textwrap.dedent("""
    from lifelong.platform.registry import register
    from lifelong.incremental.learner import Learner

    @register("strategy", "half-registered")
    class Half(Learner):
        pass

    raise RuntimeError("broken after registering")
""")


def _bad_plugins_env(tmp_path: Path) -> dict[str, str]:
    """A distribution on sys.path with two entry points: one calls sys.exit() at import, one registers a strategy
    and then raises."""
    dist = tmp_path / "bad_plugins-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-plugins\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[lifelong.plugins]\nexits = exits_mod\nhalf = half_mod\n")
    (tmp_path / "exits_mod.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "half_mod.py").write_text(_HALF)
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}


def test_plugins_that_exit_or_raise_at_import_are_reported_skipped_and_rolled_back(tmp_path, cli):
    (tmp_path / "site").mkdir()
    env = _bad_plugins_env(tmp_path / "site")
    listed = cli("plugins", "list", "--json", env=env)
    assert listed.code == 0, listed.stderr
    payload = json.loads(listed.stdout)
    names = {p["name"] for p in payload["plugins"]}
    assert "naive" in names and "half-registered" not in names  # the failed plugin left nothing registered
    errors = {e["name"]: e for e in payload["errors"]}
    assert errors["exits"]["source"] == "bad-plugins" and errors["exits"]["error"].startswith("SystemExit")
    assert errors["half"]["error"] == "RuntimeError: broken after registering"

    run = cli("run", "--strategy", "naive", "--set", "epochs=1", "--set", "n_experiences=2",
              "--set", "train_per_class=20", "--out", str(tmp_path / "run"), "--json", env=env)
    assert run.code == 0, run.stderr
    assert (tmp_path / "run" / "results.json").is_file()

    half = cli("run", "--strategy", "half-registered", "--out", str(tmp_path / "half"), env=env)
    assert half.code == 2 and "unknown strategy 'half-registered'" in half.stderr
    assert len(half.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------- 3. edits that fail

P, T = "The capital of Australia is", "Canberra"
ONE_STEP = {"layers": [1], "modules": ["mlp.down_proj"], "max_steps": 1, "lr": 0.05}


def _snapshot(store: Path) -> tuple:
    with EditStore.open(store) as s:
        return (len(s.all_edits()), s.version(), s.editor_spec(),
                sorted(p.name for p in (store / ADAPTER_DIR).iterdir()))


def test_an_edit_that_does_not_reach_its_target_is_refused(tmp_path, tiny_llama):  # noqa: F811
    store = tmp_path / "s"
    with EditSession(store, model=str(tiny_llama), editor="sola", editor_config=ONE_STEP, device="cpu",
                     quiet=True) as s:
        with pytest.raises(UserError) as info:
            s.apply(P, T)
        msg = str(info.value)
        assert "\n" not in msg and repr(P) in msg and "after 1 steps" in msg and "final loss" in msg
        assert s.editor.last_fit is not None and not s.editor.last_fit.reached
        assert s.loaded_ids == []
    assert _snapshot(store) == (0, 0, None, [])  # no row, no adapter file, the store not even fixed to sola


def test_edit_apply_cli_refuses_an_edit_that_did_not_take(tmp_path, capsys, tiny_llama):  # noqa: F811
    def apply(store: str, prompt: str, target: str, *options: str) -> tuple[int, list[str], str]:
        code = main(["edit", "apply", "--store", store, "--model", str(tiny_llama), "--prompt", prompt,
                     "--target", target, "--device", "cpu", "--set", "layers=[1]", "--set", "modules=[mlp.down_proj]",
                     "--set", "lr=0.05", *options])
        err = capsys.readouterr().err
        return code, [line for line in err.splitlines() if line.startswith("lifelong")], err

    # a fresh store, one training step: refused, and the store holds nothing (not even its editor)
    fresh = str(tmp_path / "fresh")
    code, lines, err = apply(fresh, P, T, "--set", "max_steps=1")
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("lifelong: error: edit 'The capital of Australia is' -> 'Canberra' did not take")
    assert "after 1 steps" in lines[0] and "final loss" in lines[0]
    assert _snapshot(Path(fresh)) == (0, 0, None, [])

    # a store with an edit: a target the tiny model cannot learn in 30 steps is refused, the store unchanged
    store = str(tmp_path / "s")
    enough = ("--set", "max_steps=30", "--set", "stop_loss=10.5")
    assert apply(store, P, T, *enough)[0] == 0
    before = _snapshot(Path(store))
    assert before[0] == 1 and len(before[3]) == 1
    long_target = "Rembrandt van Rijn, the Dutch painter of Leiden and Amsterdam, in sixteen forty-two"
    code, lines, err = apply(store, "The Night Watch was painted by", long_target, *enough)
    assert code == 2 and len(lines) == 1 and "did not take: after 30 steps" in lines[0], err
    assert _snapshot(Path(store)) == before
