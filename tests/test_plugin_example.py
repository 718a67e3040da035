"""The example third-party plugin, installed as pip installs it, runs through `lifelong run`."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_example_plugin_installs_and_runs(tmp_path, cli):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(REPO / "examples" / "lifelong-nearest-mean")],
        check=True, capture_output=True, text=True,
    )
    assert list(target.glob("lifelong_nearest_mean-*.dist-info/entry_points.txt"))
    env = {"PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}

    listed = json.loads(cli("plugins", "list", "--json", env=env).stdout)["plugins"]
    plugin = next(p for p in listed if p["name"] == "nearest-mean")
    assert plugin["source"] == "lifelong-nearest-mean" and plugin["kind"] == "strategy"

    out = tmp_path / "run"
    result = cli("run", "--strategy", "nearest-mean", "--out", str(out), "--json", env=env)
    assert result.code == 0, result.stderr
    results = json.loads(result.stdout)
    # nearest class mean keeps every class mean: all classes stay well recognised to the end
    assert results["accuracy_matrix"][0][0] > 0.8 and results["last_accuracy"] > 0.7

    # without autoload the plugin is not there, and the error says so with close matches
    off = cli("run", "--strategy", "nearest-mean", env={**env, "LIFELONG_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert off.code == 2 and "unknown strategy 'nearest-mean'" in off.stderr
