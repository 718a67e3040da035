"""The scorer contract (``lifelong/scorers/base.py``): every built-in scorer follows it, the branches register through
the registry's own import of ``scorers/branches/``, and ``srm`` registers its two scorers and re-exports nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lifelong.platform.errors import UserError
from lifelong.platform.registry import BUILTIN_PACKAGES, create, get, list_plugins
from lifelong.scorers import base, srm
from lifelong.scorers.base import Scorer, ScoreResult, load_scorer, read_meta

ROOT = Path(__file__).resolve().parents[1]
BUILTIN_BRANCHES = {"semantic", "fact-check", "style", "fluency", "quality", "entity-background", "sbm-semantic",
                    "sbm-entity", "sbm-fact-check", "sbm-style"}


@pytest.mark.parametrize("name", ["srm", "scalar-rm", "grm"])
def test_every_builtin_scorer_factory_has_the_contracts_methods(name: str) -> None:
    factory = get("scorer", name).factory
    for method in ("fit", "score", "evaluate", "save", "load"):
        assert callable(getattr(factory, method, None)), (name, method)
    assert isinstance(factory.trains_nothing, bool)
    assert factory.trains_nothing == (name == "grm")


def test_a_trains_nothing_scorer_round_trips_through_the_contract(tmp_path: Path) -> None:
    judge = create("scorer", "grm", cache_dir=":memory:", max_chars=64)
    assert isinstance(judge, Scorer)  # structural: no base class needed
    out = judge.save(tmp_path / "grm")
    assert read_meta(out)["scorer"] == "grm"
    again = load_scorer(out, device="cpu")
    assert type(again) is type(judge) and again.config.max_chars == 64 and str(again.device) == "cpu"
    with pytest.raises(UserError, match="no config.json"):
        load_scorer(tmp_path)


def test_read_meta_settles_an_aside_left_by_a_killed_save(tmp_path: Path) -> None:
    folder = tmp_path / "rm"
    create("scorer", "grm", cache_dir=":memory:").save(folder)
    os.replace(folder, tmp_path / ".rm.old")  # a save killed between its two renames
    assert read_meta(folder)["scorer"] == "grm"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rm"]


def test_score_result_is_the_json_the_cli_prints() -> None:
    r = ScoreResult(0.5, {"text": 0.25, "style": 0.25}, {"style": "style: short"})
    assert json.loads(json.dumps(r.as_dict())) == {"reward": 0.5, "contributions": {"text": 0.25, "style": 0.25},
                                                   "branch_texts": {"style": "style: short"}}


def test_srm_registers_its_two_scorers_and_reexports_nothing() -> None:
    own = {n for n in srm.__all__ if getattr(getattr(srm, n), "__module__", srm.__name__) == srm.__name__}
    assert own == set(srm.__all__)
    for name in ("Branch", "BranchCache", "make_branches", "run_branches", "RewardResult", "load_scorer"):
        assert name not in srm.__all__
    assert {s.name for s in list_plugins("scorer") if s.module == srm.__name__} == {"srm", "scalar-rm"}
    assert base.CONFIG_FILE == "config.json"


def test_builtin_branches_are_registered_by_the_registry_without_any_scorer() -> None:
    assert "lifelong.scorers.branches" in BUILTIN_PACKAGES
    code = ("import json, sys\n"
            "from lifelong.platform import registry\n"
            "registry.BUILTIN_PACKAGES = ('lifelong.scorers.branches',)\n"
            "names = {s.name: s.module for s in registry.list_plugins('branch')}\n"
            "print(json.dumps(names))\n"
            "assert not [m for m in ('lifelong.scorers.srm', 'lifelong.scorers.grm', 'lifelong.scorers.reward_model')"
            " if m in sys.modules]\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "LIFELONG_DISABLE_PLUGIN_AUTOLOAD": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(names) == BUILTIN_BRANCHES
    assert all(m.startswith("lifelong.scorers.branches.") for m in names.values()), names
