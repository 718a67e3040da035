"""What a new user hits (issue 32): ``compare --config`` honours the file as ``run`` does, ``run`` and ``compare``
give the same numbers by default, ``--resume`` refuses a learner that would lose its memory, the waits say what
is happening, and the small items. Commands run in-process through ``cli.main.main`` on tiny streams."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lifelong.cli.main import main
from lifelong.incremental.learner import Learner, StrategyConfig
from lifelong.platform import registry

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "n_experiences=2", "--set", "train_per_class=20", "--set", "epochs=1"]


def _error(capsys, code: int) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]
    assert code == 2 and len(err) == 1, (code, err)
    assert err[0].startswith("lifelong: error: "), err
    return err[0]


@pytest.fixture(scope="module")
def fashion_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_fashion_mnist import write_fashion

    return write_fashion(tmp_path_factory.mktemp("fashion"), train=6, test=3)


def _fashion_sets(root: Path) -> list[str]:
    # test_per_class is a key of split-fashion-mnist only: split-digits would refuse it
    return ["--set", f"data_root={root}", "--set", "verify_checksums=false", "--set", "epochs=1",
            "--set", "train_per_class=6", "--set", "test_per_class=3"]


# ------------------------------------------------------------------------- 1. compare honours --config

def test_the_shipped_fashion_configs_drive_a_comparison_by_name(capsys, tmp_path, fashion_files):
    out = tmp_path / "cmp"
    code = main(["compare", "--config", "split-fashion-mnist", "--strategies", "naive,replay,ewc", "--seeds", "0",
                 *_fashion_sets(fashion_files), "--out", str(out), "--json"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmark"] == "split-fashion-mnist"
    assert list(summary["strategies"]) == ["naive", "replay", "ewc"]
    replay = json.loads((out / "replay-seed0" / "results.json").read_text())
    shipped = (REPO / "configs" / "replay" / "split-fashion-mnist.yaml").read_text()
    assert "mem_size: 500" in shipped and replay["config"]["strategy_config"]["mem_size"] == 500  # the file's value
    assert replay["config"]["strategy_config"]["lr"] == 0.01 and replay["config"]["benchmark_config"]["test_per_class"] == 3


def test_a_folder_of_configs_and_one_file(capsys, tmp_path, fashion_files):
    folder = tmp_path / "configs"
    folder.mkdir()
    for strategy in ("naive", "replay"):
        shutil.copy(REPO / "configs" / strategy / "split-fashion-mnist.yaml", folder / f"{strategy}.yaml")
    out = tmp_path / "cmp"
    assert main(["compare", "--config", str(folder), "--seeds", "0", *_fashion_sets(fashion_files),
                 "--out", str(out), "--json"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmark"] == "split-fashion-mnist" and sorted(summary["strategies"]) == ["naive", "replay"]
    capsys.readouterr()
    one = tmp_path / "one"
    assert main(["compare", "--config", str(folder / "replay.yaml"), "--seeds", "0", *_fashion_sets(fashion_files),
                 "--out", str(one), "--json"]) == 0
    assert json.loads((one / "summary.json").read_text())["benchmark"] == "split-fashion-mnist"


@pytest.mark.parametrize("args, expected", [
    (["--config", "configs/replay/split-fashion-mnist.yaml", "--benchmark", "split-digits"],
     "--benchmark split-digits contradicts configs/replay/split-fashion-mnist.yaml, which says benchmark: split-fashion-mnist"),
    (["--config", "configs/replay/split-fashion-mnist.yaml", "--strategies", "naive"],
     "--strategies naive contradicts configs/replay/split-fashion-mnist.yaml, which says strategy: replay"),
    (["--config", "split-fashion-mnist", "--strategies", "der,alade-snn"],
     "set split-fashion-mnist's train_per_class differently (1000, 200)"),
    (["--config", "split-fashion-mnist", "--strategies", "naive,l2p"], "no config for l2p in"),
    (["--config", "no-such-protocol", "--strategies", "naive"], "no configs/<strategy>/no-such-protocol.yaml"),
])
def test_a_flag_that_contradicts_the_config_is_one_line(capsys, monkeypatch, tmp_path, args, expected):
    monkeypatch.chdir(REPO)
    line = _error(capsys, main(["compare", *args, "--seeds", "0", "--out", str(tmp_path / "o")]))
    assert expected in line, line
    assert not (tmp_path / "o").exists()


def test_run_refuses_a_benchmark_flag_that_contradicts_its_file(capsys, tmp_path):
    line = _error(capsys, main(["run", "--config", str(REPO / "configs/naive/split-fashion-mnist.yaml"),
                                "--benchmark", "split-digits", "--out", str(tmp_path / "o")]))
    assert "contradicts" in line and "benchmark: split-fashion-mnist" in line


# ------------------------------------------------------------------ 2. run and compare agree by default

def test_run_and_compare_give_the_same_numbers_by_default_and_record_the_threads(capsys, tmp_path):
    assert main(["run", "--strategy", "replay", "--seed", "1", *TINY, "--out", str(tmp_path / "run"), "--json"]) == 0
    assert main(["compare", "--strategies", "replay", "--seeds", "1", *TINY, "--out", str(tmp_path / "cmp"),
                 "--json"]) == 0
    alone = json.loads((tmp_path / "run" / "results.json").read_text())
    within = json.loads((tmp_path / "cmp" / "replay-seed1" / "results.json").read_text())
    assert alone["threads"] == within["threads"] == 1
    assert alone["accuracy_matrix"] == within["accuracy_matrix"]
    capsys.readouterr()
    assert main(["run", "--strategy", "naive", *TINY, "--threads", "2", "--out", str(tmp_path / "t2"), "--json"]) == 0
    assert json.loads((tmp_path / "t2" / "results.json").read_text())["threads"] == 2
    line = _error(capsys, main(["run", "--strategy", "naive", "--threads", "0", "--out", str(tmp_path / "t0")]))
    assert "--threads must be at least 1" in line


# ------------------------------------------------------------- 3. resume never silently loses a memory

@dataclass
class _ForgetfulConfig(StrategyConfig):
    mem_size: int = 20


class _Forgetful(Learner):
    """Keeps a replay memory (declared) but saves none of it: what a quick plugin looks like."""

    def __init__(self, config: Any, context: Any) -> None:
        import torch

        super().__init__(config, context)
        shape = context.stream.input_shape
        self.model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(torch.tensor(shape).prod()),
                                                                              context.stream.n_classes))
        self.memory: list[Any] = []

    def train_experience(self, experience: Any) -> None:
        self.memory.extend(experience.dataset[i] for i in range(min(self.config.mem_size, len(experience.dataset))))


@pytest.fixture()
def forgetful():
    registry.ensure_loaded()
    registry.register("strategy", "test-forgetful", config=_ForgetfulConfig,
                      capabilities={"uses_replay_memory": True})(_Forgetful)
    yield "test-forgetful"
    registry._state.specs.pop(("strategy", "test-forgetful"), None)


def test_resume_of_a_learner_that_saves_no_memory_is_refused(capsys, tmp_path, forgetful):
    out = tmp_path / "r"
    assert main(["run", "--strategy", forgetful, *TINY, "--out", str(out), "--stop-after", "1", "--json"]) == 0
    capsys.readouterr()
    line = _error(capsys, main(["run", "--strategy", forgetful, *TINY, "--out", str(out), "--resume"]))
    assert "keeps a memory (uses_replay_memory) but does not save it" in line
    assert "extra_state / load_extra_state" in line
    assert not (out / "results.json").exists()


def test_results_record_that_a_run_was_resumed_and_from_where(capsys, tmp_path):
    out, whole = tmp_path / "r", tmp_path / "whole"
    assert main(["run", "--strategy", "replay", *TINY, "--out", str(whole), "--json"]) == 0
    assert json.loads((whole / "results.json").read_text())["resumed"] is False
    assert main(["run", "--strategy", "replay", *TINY, "--out", str(out), "--stop-after", "1", "--json"]) == 0
    assert main(["run", "--strategy", "replay", *TINY, "--out", str(out), "--resume", "--json"]) == 0
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["resumed"] is True and resumed["resumed_from"] == [1]
    assert resumed["accuracy_matrix"] == json.loads((whole / "results.json").read_text())["accuracy_matrix"]


# ----------------------------------------------------------------------------------------- 4. silent waits

def test_compare_with_jobs_prints_one_line_per_finished_run(capsys, tmp_path):
    import re

    assert main(["compare", "--strategies", "naive,replay", "--seeds", "0", *TINY, "--jobs", "2",
                 "--out", str(tmp_path / "cmp")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if "runs done" in line]
    assert len(lines) == 2, lines
    pattern = r"^(naive|replay) seed 0: AIA \d+\.\d\d %, \d+\.\d s \((\d) of 2 runs done, (\d) remain\)$"
    assert all(re.match(pattern, line) for line in lines), lines
    assert [re.match(pattern, line).group(3) for line in lines] == ["1", "0"]
    assert {re.match(pattern, line).group(1) for line in lines} == {"naive", "replay"}


def test_a_model_load_prints_no_loading_weights_bar(capfd, tmp_path):
    from transformers.utils import logging as hf_logging

    from _llm_fixtures import make_tiny_llama
    from lifelong.adapters.lm.model_loading import load_causal_lm

    folder = make_tiny_llama(tmp_path / "tiny")
    capfd.readouterr()
    hf_logging.enable_progress_bar()  # as a user's process has it
    load_causal_lm(str(folder))
    err = capfd.readouterr().err
    assert "Loading weights" not in err, err
    assert hf_logging.is_progress_bar_enabled()  # the caller's setting is given back


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_install_names_each_stage(tmp_path):
    import subprocess

    plan = subprocess.run(["make", "-n", "--no-print-directory", f"VENV={tmp_path / 'venv'}", "run"], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout
    stages = [line for line in plan.splitlines() if line.startswith("echo ")]
    assert [s.split('"')[1][:5] for s in stages[:4]] == ["[1/3]", "[2/3]", "     ", "[3/3]"], stages
    assert "several minutes on a first install" in plan and "running the demo" in plan


# ------------------------------------------------------------------------------------------ 9. CI and data

def test_ci_installs_the_data_before_the_tests():
    commands = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    data = next(k for k, c in enumerate(commands) if c.startswith("make") and " data" in f" {c}")
    assert data < commands.index("make test")


@pytest.mark.skipif(shutil.which("make") is None or not Path("/usr/share/datasets/fashion-mnist").is_dir()
                    or not Path("/usr/share/wordnet").is_dir(),
                    reason="make, Fashion-MNIST or WordNet is not installed (make data installs them)")
def test_make_data_is_one_quiet_line_when_everything_is_present():
    import shutil
    import subprocess

    present = (Path("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").is_file()
               and Path("/usr/share/wordnet/data.noun").is_file() and shutil.which("espeak-ng") and shutil.which("sox"))
    if not present:
        pytest.skip("the offline data is not installed here (make data would install it); CI installs it first")

    result = subprocess.run(["make", "--no-print-directory", "data"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == ""
    assert len(result.stdout.splitlines()) == 1, result.stdout


# --------------------------------------------------------------------------------------- 7. plugin authors

def test_plugins_show_gives_summary_fields_capabilities_and_source(capsys):
    assert main(["plugins", "show", "replay"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("strategy replay  (source: builtin, module: lifelong.strategies.baselines)")
    assert "uses_replay_memory=yes" in text and "experience replay" in text
    line = next(row for row in text.splitlines() if row.strip().startswith("mem_size"))
    assert "int = 200" in line and "[mem_size >= 0]" in line and "samples the memory holds" in line
    assert main(["plugins", "show", "sola", "--kind", "editor", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    fields = {f["name"]: f for f in shown["fields"]}
    assert shown["kind"] == "editor" and shown["capabilities"]["supports_rollback"] is True
    assert fields["threshold"]["type"] == "float" and fields["threshold"]["default"] == 0.08
    assert "last prompt token" in fields["key_pooling"]["help"]
    line = _error(capsys, main(["plugins", "show", "replya"]))
    assert "no plugin named 'replya'; did you mean replay?" in line


def test_new_plugin_writes_a_package_that_installs_runs_and_resumes(cli, tmp_path):
    import os
    import subprocess
    import sys

    package = tmp_path / "lifelong-my-method"
    result = cli("new", "plugin", "my-method", "--out", str(package))
    assert result.code == 0, result.stderr
    assert (package / "pyproject.toml").is_file() and (package / "my_method" / "__init__.py").is_file()
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(package)], check=True, capture_output=True, text=True)
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    shown = cli("plugins", "show", "my-method", "--json", env=env)
    assert shown.code == 0, shown.stderr
    described = json.loads(shown.stdout)
    assert described["source"] == "lifelong-my-method" and described["capabilities"]["uses_replay_memory"]
    assert {"mem_size", "hidden"} <= {f["name"] for f in described["fields"]}
    # the package's own test: a run on a small stream, and --stop-after then --resume gives the same matrix
    tested = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(package / "tests")],
                            capture_output=True, text=True, cwd=tmp_path, env={**os.environ, **env})
    assert tested.returncode == 0, tested.stdout[-2000:]
    again = cli("new", "plugin", "my-method", "--out", str(package))
    assert again.code == 2 and "exists and is not an empty folder" in again.stderr
    bad = cli("new", "plugin", "My_Method", "--out", str(tmp_path / "x"))
    assert bad.code == 2 and "not kebab-case" in bad.stderr and not (tmp_path / "x").exists()
    taken = cli("new", "plugin", "replay", "--out", str(tmp_path / "y"))
    assert taken.code == 2 and "already registered" in taken.stderr


def test_the_command_line_imports_no_torch_and_convert_names_the_real_schemes():
    import subprocess
    import sys

    from lifelong.adapters.nets.snn_conversion import SCHEMES
    from lifelong.cli import convert, detect
    from lifelong.detection.models import DETECTORS

    assert convert.SCHEMES == tuple(SCHEMES)
    assert detect.DETECTORS == DETECTORS
    code = "import sys, lifelong.cli.main; lifelong.cli.main.build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


# ------------------------------------------------------------------------------------------ 8. small items

def test_plots_count_steps_from_0_in_percent_and_tell_many_lines_apart():
    import io

    import numpy as np
    from PIL import Image

    from lifelong.incremental import plots

    assert plots.step_ticks(5) == [0, 1, 2, 3, 4] and plots.step_ticks(25)[:3] == [0, 3, 6]
    assert plots.percent_ticks() == ["0", "20", "40", "60", "80", "100"]
    styles = [plots.series_style(k) for k in range(20)]
    assert len(set(styles)) == 20  # line k and line k + 10 share a colour, never a marker too
    assert plots.legend_label({"label": "replay", "values": [0.9, 0.546]}, True) == "replay 54.6"
    assert plots.legend_label({"label": "replay", "values": [0.9, 0.546]}, False) == "replay"
    # the plot still draws with the marker shapes: the second line (square markers) in its colour
    series = [{"label": "a", "values": [0.2, 0.2]}, {"label": "b", "values": [0.6, 0.6]}]
    image = np.asarray(Image.open(io.BytesIO(plots.line_plot_png(series, xlabel="x", ylabel="y", size=(400, 300)))))
    orange = np.array([255, 127, 14])
    close = np.argwhere(np.abs(image[..., :3].astype(int) - orange).max(axis=-1) <= 30)
    assert len(close) > 50


def test_compare_and_the_demo_say_what_the_metrics_mean(capsys, tmp_path, monkeypatch):
    from lifelong.cli import demo
    from lifelong.incremental.results import METRICS_LINE

    assert main(["compare", "--strategies", "naive", "--seeds", "0", *TINY, "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert METRICS_LINE in out and "AIA: mean over steps" in out and "BWT:" in out
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())["strategies"]
    monkeypatch.setattr(demo, "compare", lambda *args, **kwargs: summary)
    demo.demo_baselines(tmp_path / "demo")
    assert METRICS_LINE in capsys.readouterr().out


class _Blind(Learner):
    """Always predicts the last class of the stream: experience 0 (other classes) then scores exactly 0 %."""

    def __init__(self, config: Any, context: Any) -> None:
        import torch

        super().__init__(config, context)
        self.model = torch.nn.Linear(1, 1)
        self.n = context.stream.n_classes

    def train_experience(self, experience: Any) -> None:
        pass

    def predict(self, x: Any) -> Any:
        import torch

        logits = torch.zeros(len(x), self.n)
        logits[:, -1] = 1.0
        return logits


def test_a_step_that_scores_0_on_its_own_data_warns_that_the_model_underfits(capsys, tmp_path):
    registry.ensure_loaded()
    registry.register("strategy", "test-blind", config=StrategyConfig)(_Blind)
    try:
        assert main(["run", "--strategy", "test-blind", *TINY, "--out", str(tmp_path / "r"), "--json"]) == 0
    finally:
        registry._state.specs.pop(("strategy", "test-blind"), None)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lifelong: warning:")]
    assert len(err) == 1 and "after training experience 0" in err[0] and "underfits (epochs=1" in err[0], err
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["accuracy_matrix"][0][0] == 0.0 and len(results["warnings"]) == 1
