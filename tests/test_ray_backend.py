"""``compare --backend ray``: the serial summary bit for bit on a local Ray instance, ``--resume`` through Ray, and
one-line refusals when Ray is missing or its address does not answer."""

import json
import shutil
import socket
import sys
import time

import pytest
from _cli import one_line, run

from lifelong.incremental.compare import compare
from lifelong.incremental.run import resolve_config, run_experiment

TINY = {"n_experiences": 2, "train_per_class": 20, "epochs": 1}
TINY_ARGS = ["--set", "n_experiences=2", "--set", "train_per_class=20", "--set", "epochs=1"]


def _without_wall_times(folder):
    summary = json.loads((folder / "summary.json").read_text())
    for entry in summary["strategies"].values():
        assert entry.pop("wall_time_s")["mean"] >= 0
    return summary


def _closed_port() -> int:
    with socket.socket() as s:  # a port the system just gave out and that nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_missing_ray_is_refused_in_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    code, _, err = run(capsys, "compare", "--strategies", "naive", "--seeds", "0", *TINY_ARGS, "--backend", "ray",
                       "--out", str(tmp_path / "cmp"))
    assert code == 2 and "--backend ray: Ray cannot be imported" in one_line(err)
    assert "pip install 'lifelong[ray]'" in err and not (tmp_path / "cmp" / "summary.json").exists()


def test_unreachable_address_is_refused_in_one_line_without_hanging(capsys, tmp_path):
    pytest.importorskip("ray")
    address = f"127.0.0.1:{_closed_port()}"
    start = time.perf_counter()
    code, _, err = run(capsys, "compare", "--strategies", "naive", "--seeds", "0", *TINY_ARGS, "--backend", "ray",
                       "--address", address, "--out", str(tmp_path / "cmp"))
    assert code == 2 and f"--address {address}: no Ray cluster answers there" in one_line(err)
    assert time.perf_counter() - start < 10 and not (tmp_path / "cmp" / "summary.json").exists()
    code, _, err = run(capsys, "compare", "--strategies", "naive", "--seeds", "0", "--backend", "ray",
                       "--address", "nohost", "--out", str(tmp_path / "cmp"))
    assert code == 2 and "--address nohost: expected HOST:PORT" in one_line(err)


def test_backend_options_that_do_not_fit_are_refused(capsys, tmp_path):
    code, _, err = run(capsys, "compare", "--strategies", "naive", "--seeds", "0", "--address", "127.0.0.1:6379",
                       "--out", str(tmp_path / "cmp"))
    assert code == 2 and "--address names a Ray cluster: give it with --backend ray" in one_line(err)
    code, _, err = run(capsys, "compare", "--strategies", "naive", "--seeds", "0", "--backend", "ray", "--jobs", "2",
                       "--out", str(tmp_path / "cmp"))
    assert code == 2 and "--jobs: with --backend ray, Ray decides" in one_line(err)


@pytest.fixture(scope="module")
def local_ray():
    """One small local Ray instance for the module (its workers stay warm between the comparisons)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.mark.slow  # a local Ray instance whose two workers import torch and Avalanche
def test_ray_gives_the_serial_summary_bit_for_bit_and_resumes(local_ray, tmp_path):
    """Each (strategy, seed) as a Ray task, files written by the driver; then one run cut short and resumed."""
    common = dict(overrides=TINY, progress=False)
    compare(["naive", "replay"], "split-digits", [0], out=tmp_path / "serial", **common)
    compare(["naive", "replay"], "split-digits", [0], out=tmp_path / "ray", backend="ray", **common)
    assert _without_wall_times(tmp_path / "ray") == _without_wall_times(tmp_path / "serial")
    for name in ("naive-seed0", "replay-seed0"):
        serial, on_ray = (json.loads((tmp_path / f / name / "results.json").read_text()) for f in ("serial", "ray"))
        assert serial["accuracy_matrix"] == on_ray["accuracy_matrix"], name
        assert sorted(p.name for p in (tmp_path / "ray" / name).iterdir()) == \
            sorted(p.name for p in (tmp_path / "serial" / name).iterdir())
    # as if killed: replay has only its first experience checkpointed, and there is no summary
    shutil.rmtree(tmp_path / "ray" / "replay-seed0")
    (tmp_path / "ray" / "summary.json").unlink()
    config = resolve_config(strategy="replay", benchmark="split-digits", seed=0, overrides=TINY)
    partial = run_experiment(config, out=tmp_path / "ray" / "replay-seed0", progress=False, stop_after=1)
    assert partial["completed"] == 1
    compare(["naive", "replay"], "split-digits", [0], out=tmp_path / "ray", backend="ray", resume=True, **common)
    assert _without_wall_times(tmp_path / "ray") == _without_wall_times(tmp_path / "serial")


def test_each_run_asks_ray_for_a_gpu_only_where_it_trains_on_one():
    """No GPU here: the cluster's resources are faked, to check what each run asks Ray for."""
    from lifelong.incremental.ray_backend import _gpus
    from lifelong.platform.errors import UserError

    class FakeRay:
        def __init__(self, gpus):
            self.resources = {"CPU": 8.0, **({"GPU": gpus} if gpus else {})}

        def cluster_resources(self):
            return self.resources

    with_gpus, without = FakeRay(2.0), FakeRay(0)
    assert [_gpus(with_gpus, d) for d in ("auto", "cuda", "cpu")] == [1.0, 1.0, 0.0]
    assert [_gpus(without, d) for d in ("auto", "cpu")] == [0.0, 0.0]
    with pytest.raises(UserError, match="the Ray cluster has no GPU"):
        _gpus(without, "cuda")
    with pytest.raises(UserError, match="Ray gives each run its GPU; use --device cuda or auto"):
        _gpus(with_gpus, "cuda:1")


def test_a_ray_client_address_is_checked_too(capsys, tmp_path):
    from lifelong.incremental.ray_backend import check_address
    from lifelong.platform.errors import UserError

    with pytest.raises(UserError, match=r"--address ray://127.0.0.1:\d+: no Ray cluster answers there"):
        check_address(f"ray://127.0.0.1:{_closed_port()}", timeout_s=2)
    check_address("auto")  # left to Ray, which refuses it at once when no `ray start` cluster is here


def test_a_run_folder_in_the_way_is_refused_before_any_task(local_ray, capsys, tmp_path):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "naive-seed1").write_text("in the way")
    code, _, err = run(capsys, "compare", "--strategies", "naive", "--seeds", "0,1", *TINY_ARGS, "--backend", "ray",
                       "--out", str(out))
    assert code == 2 and f"run naive seed 1 failed: --out {out / 'naive-seed1'} is a file" in one_line(err)
    assert not (out / "naive-seed0").exists() and not (out / "summary.json").exists()
