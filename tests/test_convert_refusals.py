"""``lifelong convert`` refuses in one line (exit 2) what it cannot do, instead of a traceback or an hours-long
run: a strategy whose prediction is not a forward of its network (iCaRL's nearest class mean), a results folder it
cannot write (read-only file system), and more time steps than it will run."""

from __future__ import annotations

import errno

import pytest
from conftest import TINY_STREAM

from lifelong.cli.main import main
from lifelong.incremental import convert

pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from lifelong.incremental.run import resolve_config, run_experiment

    root = tmp_path_factory.mktemp("convert-refusals")
    for strategy in ("icarl", "naive"):
        config = resolve_config(strategy=strategy, benchmark="split-digits", seed=0,
                                overrides={**TINY_STREAM, "train_per_class": 10, "epochs": 1, "model": "cnn-28-clip",
                                           **({"mem_size": 20} if strategy == "icarl" else {})})
        run_experiment(config, out=root / strategy, progress=False)
    return root


def test_a_strategy_whose_prediction_is_not_a_forward_is_refused(runs, capsys) -> None:
    assert main(["convert", "--run", str(runs / "icarl"), "--timesteps", "1"]) == 2
    err = capsys.readouterr().err
    assert "icarl's predictions cannot be recomputed" in err and err.count("\n") == 1, err
    assert not (runs / "icarl" / convert.RESULT_NAME).exists()


def test_a_read_only_results_folder_is_one_line(runs, capsys, monkeypatch) -> None:
    def read_only(path, text):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(convert, "atomic_write_text", read_only)
    assert main(["convert", "--run", str(runs / "naive"), "--timesteps", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot write the conversion results" in err and "read-only" in err and err.count("\n") == 1


def test_more_time_steps_than_the_cap_are_refused_before_any_work(runs, capsys) -> None:
    assert main(["convert", "--run", str(runs / "naive"), "--timesteps", str(convert.MAX_TIMESTEPS + 1)]) == 2
    err = capsys.readouterr().err
    assert f"from 1 to {convert.MAX_TIMESTEPS}" in err and err.count("\n") == 1, err
