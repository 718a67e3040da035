"""The command line as a user meets it: outputs, and one clear line with exit code 2 for bad input."""

import json

import pytest

TINY = ["--set", "n_experiences=2", "--set", "train_per_class=20", "--set", "epochs=1"]


def _one_error_line(result):
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert result.code == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lifelong: error: ")
    return lines[0]


def test_plugins_list_json(cli):
    result = cli("plugins", "list", "--kind", "strategy", "--json")
    assert result.code == 0
    plugins = json.loads(result.stdout)["plugins"]
    names = {p["name"] for p in plugins}
    assert {"naive", "replay", "icarl", "dark-er"} <= names
    assert all(p["kind"] == "strategy" and p["source"] and "summary" in p for p in plugins)


def test_run_prints_table_and_writes_results(cli, tmp_path):
    out = tmp_path / "run"
    result = cli("run", "--strategy", "naive", "--benchmark", "split-digits", "--seed", "1", "--out", str(out), *TINY)
    assert result.code == 0, result.stderr
    assert "AIA" in result.stdout and "forgetting" in result.stdout
    saved = json.loads((out / "results.json").read_text())
    assert saved["seed"] == 1 and saved["config"]["strategy_config"]["epochs"] == 1


def test_run_json_prints_only_json(cli, tmp_path):
    result = cli("run", "--strategy", "naive", "--out", str(tmp_path), "--json", *TINY)
    assert json.loads(result.stdout)["strategy"] == "naive"


def test_config_file_and_set_override(cli, tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text("strategy: replay\nbenchmark: split-digits\nseed: 3\nstrategy_config: {mem_size: 40, epochs: 1}\n"
                      "benchmark_config: {n_experiences: 2, train_per_class: 20}\n")
    result = cli("run", "--config", str(config), "--set", "mem_size=30", "--out", str(tmp_path / "o"), "--json")
    saved = json.loads(result.stdout)
    assert saved["seed"] == 3 and saved["config"]["strategy_config"]["mem_size"] == 30


@pytest.mark.parametrize("args, expected", [
    (["run", "--strategy", "replya"], "unknown strategy 'replya'; did you mean replay"),
    (["run", "--strategy", "naive", "--benchmark", "split-digitz"], "unknown benchmark 'split-digitz'; did you mean split-digits"),
    (["run", "--strategy", "naive", "--set", "epochz=3"], "unknown config key 'epochz'"),
    (["run", "--strategy", "naive", "--set", "epochs=three"], "epochs: expected an integer"),
    (["run", "--strategy", "naive", "--set", "n_experiences=3"], "10 classes do not divide into 3 experiences"),
    (["run", "--strategy", "naive", "--set", "optimizer=rmsprop"], "allowed values: 'sgd', 'adam'"),
    (["compare", "--strategies", "naive", "--seeds", "0,x"], "--seeds: expected comma-separated integers"),
])
def test_bad_input_is_one_clear_line_and_exit_2(cli, tmp_path, args, expected):
    result = cli(*args, "--out", str(tmp_path / "out"))
    assert expected in _one_error_line(result)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_malformed_yaml_names_the_line(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("strategy: naive\nstrategy_config: {epochs: 1\n")
    line = _one_error_line(cli("run", "--config", str(bad)))
    assert "bad.yaml: line" in line and "malformed YAML" in line


def test_resume_of_a_directory_from_another_configuration(cli, tmp_path):
    out = str(tmp_path / "r")
    assert cli("run", "--strategy", "naive", "--out", out, *TINY).code == 0
    line = _one_error_line(cli("run", "--strategy", "naive", "--out", out, "--resume", *TINY, "--set", "lr=0.2"))
    assert "another configuration" in line


def test_python_dash_m_and_help(cli):
    result = cli("--help")
    assert result.code == 0 and "run" in result.stdout and "compare" in result.stdout


def test_plugins_list_every_kind_including_components(cli):
    result = cli("plugins", "list", "--kind", "component", "--json")
    assert result.code == 0, result.stderr
    assert {"kd", "esl", "rkd", "sca"} <= {p["name"] for p in json.loads(result.stdout)["plugins"]}


def test_compare_routes_component_options_to_the_strategies_that_take_them(tmp_path, monkeypatch):
    """``compare --set components=[kd] --set kd.alpha=..`` reaches the strategies that accept components and
    skips the others (lwf), as plain strategy keys do; the runs themselves are not started here."""
    from lifelong.incremental import compare as runner
    from lifelong.platform.config import parse_overrides

    seen = []

    def capture(configs, *args, **kwargs):
        seen.extend(configs)
        raise KeyboardInterrupt  # stop before any training

    monkeypatch.setattr(runner, "_run_many", capture)
    with pytest.raises(KeyboardInterrupt):
        runner.compare(["naive", "lwf"], "split-digits", [0], out=tmp_path / "cmp", progress=False, device="cpu",
                       overrides=parse_overrides(["components=[kd]", "kd.alpha=0.25", "n_experiences=2"]))
    by_strategy = {c.strategy: c.strategy_config for c in seen}
    assert by_strategy["naive"].components == ["kd"]
    assert by_strategy["naive"].component_config["kd"].alpha == 0.25
    assert not hasattr(by_strategy["lwf"], "components")
