"""Regression tests of the run side of the hostile-input review (``docs/reliability.md``): config ranges, strict
JSON, unusable ``--out`` folders and full disks, damaged checkpoints, seeds, one writer per run folder, leftovers
of killed writers, duplicate pairs and failed runs of ``compare``, and property-based tests of ``--set`` values
and of damaged checkpoints. Commands run in-process through ``cli.main.main`` (a subprocess costs seconds of
imports), on a 2-experience split-digits stream with 20 training images a class."""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest
from _fs import read_only_dir  # noqa: F401
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifelong.cli.main import main
from lifelong.incremental.checkpoint import CHECKPOINT_NAME, load_checkpoint
from lifelong.incremental.results import to_json, write_run
from lifelong.incremental.run import resolve_config
from lifelong.platform import atomic, registry
from lifelong.platform.config import ConfigError, Rule, build_config, parse_overrides
from lifelong.platform.errors import UserError, one_line

TINY = ["--set", "n_experiences=2", "--set", "train_per_class=20", "--set", "epochs=1"]
TINY_OVERRIDES = {"n_experiences": 2, "train_per_class": 20, "epochs": 1}


def _one_line(capsys, code, expected_code=2):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]
    assert code == expected_code, err
    assert len(err) == 1, err
    assert err[0].startswith("lifelong: error: "), err
    return err[0]


def _strict_json(text: str):
    """Parse as a strict JSON parser would: NaN, Infinity and -Infinity are errors."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*.tmp")]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run of naive stopped after its first experience (a checkpoint, no results), made once per module."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    assert main(["run", "--strategy", "naive", *TINY, "--out", str(out), "--stop-after", "1", "--json"]) == 0
    return out


# ------------------------------------------------------------------------------------ 2. config ranges (typed)

@pytest.mark.parametrize("pair, field, allowed", [
    ("mem_size=-5", "mem_size", "mem_size >= 0"),
    ("momentum=-1", "momentum", "0 <= momentum < 1"),
    ("weight_decay=-1", "weight_decay", "weight_decay >= 0"),
    ("lr=nan", "lr", "lr > 0"),
    ("lr=.inf", "lr", "lr > 0"),
    ("lr=-0.1", "lr", "lr > 0"),
    ("epochs=-2", "epochs", "epochs >= 1"),
    ("batch_size=0", "batch_size", "batch_size >= 1"),
    ("eval_batch_size=-3", "eval_batch_size", "eval_batch_size >= 1"),
    ("alpha=nan", "alpha", "a finite number"),
])
def test_out_of_range_values_are_refused_at_config_time(pair, field, allowed):
    with pytest.raises(ConfigError) as info:
        resolve_config(strategy="dark-er", overrides=parse_overrides([pair]))
    message = str(info.value)
    assert f"strategy_config.{field}: " in message and f"allowed: {allowed}" in message, message
    assert pair.split("=")[1].lstrip(".").lower()[:3] in message.lower(), message  # the value is named


def test_out_of_range_value_through_the_cli_is_one_line_and_writes_nothing(capsys, tmp_path):
    line = _one_line(capsys, main(["run", "--strategy", "replay", "--set", "mem_size=-5", "--out", str(tmp_path / "o")]))
    assert "strategy_config.mem_size: -5 is out of range; allowed: mem_size >= 0" in line
    assert not (tmp_path / "o").exists()


def test_shared_rules_apply_to_third_party_configs_and_a_field_may_declare_its_own():
    @dataclasses.dataclass
    class ThirdParty:
        lr: float = 0.1
        mem_size: int = 10
        temperature: typing.Annotated[float, Rule(low=0, low_open=True)] = 1.0
        offset: float = dataclasses.field(default=0.0, metadata={"rule": Rule(finite=False)})

    assert build_config(ThirdParty, {"offset": float("-inf")}).offset == float("-inf")  # its own rule allows it
    with pytest.raises(ConfigError, match=r"^lr: -1.0 is out of range; allowed: lr > 0, finite$"):
        build_config(ThirdParty, {"lr": -1})
    with pytest.raises(ConfigError, match=r"^mem_size: -1 is out of range; allowed: mem_size >= 0$"):
        build_config(ThirdParty, {"mem_size": -1})
    with pytest.raises(ConfigError, match=r"^temperature: 0.0 is out of range; allowed: temperature > 0"):
        build_config(ThirdParty, {"temperature": 0})


def test_an_error_quoting_control_characters_is_still_one_line(capsys, tmp_path):
    line = _one_line(capsys, main(["run", "--strategy", "naive", "--benchmark", "split-mnist",
                                   "--set", "data_root=/no\nsuch\x1b[31m", "--out", str(tmp_path / "o")]))
    assert "/no\\nsuch\\x1b[31m" in line, line


# --------------------------------------------------------------------------------------------- 6. seeds

@pytest.mark.parametrize("seed", ["-1", "4294967296", str(2**70)])
def test_seeds_outside_what_every_rng_takes_are_refused_with_the_range(capsys, tmp_path, seed):
    line = _one_line(capsys, main(["run", "--strategy", "naive", "--seed", seed, "--out", str(tmp_path / "o")]))
    assert f"seed: {seed} is out of range; allowed: 0 <= seed <= 4294967295" in line
    line = _one_line(capsys, main(["compare", "--strategies", "naive", "--seeds", f"0,{seed}",
                                   "--out", str(tmp_path / "c")]))
    assert f"seed: {seed} is out of range" in line
    assert not (tmp_path / "o").exists() and not (tmp_path / "c").exists()
    assert resolve_config(strategy="naive", seed=2**32 - 1).benchmark_config.seed == 2**32 - 1


# ------------------------------------------------------------------------------------------ 3. strict JSON

def test_results_json_is_strict_json_with_null_for_undefined_numbers(tmp_path):
    results = {"strategy": "naive", "benchmark": "b", "seed": 0, "accuracy_matrix": [[0.5]], "seen_accuracy": [0.5],
               "average_incremental_accuracy": float("nan"), "last_accuracy": 0.5, "forgetting": float("inf"),
               "bwt": float("-inf"), "loss": [1.0, float("nan")]}
    write_run(tmp_path, results)
    saved = _strict_json((tmp_path / "results.json").read_text())
    assert saved["average_incremental_accuracy"] is None and saved["forgetting"] is None and saved["bwt"] is None
    assert saved["loss"] == [1.0, None] and saved["last_accuracy"] == 0.5
    assert _strict_json(to_json({"x": float("nan")})) == {"x": None}


# ------------------------------------------------------------------- 4. --out a file, read-only, disk full

def test_out_naming_a_file_is_refused_for_run_and_compare(capsys, tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    for command in (["run", "--strategy", "naive"], ["compare", "--strategies", "naive", "--seeds", "0"]):
        line = _one_line(capsys, main([*command, *TINY, "--out", str(target)]))
        assert f"--out {target} is a file, not a folder" in line
    assert target.read_text() == "keep me"


def test_out_on_a_read_only_file_system_is_one_line(capsys, read_only_dir):
    for command in (["run", "--strategy", "naive"], ["compare", "--strategies", "naive", "--seeds", "0"]):
        line = _one_line(capsys, main([*command, *TINY, "--out", str(read_only_dir / "out")]))
        assert f"cannot write to --out {read_only_dir / 'out'}" in line, line
        assert "read-only" in line or "permission denied" in line, line


def _disk_full_on(monkeypatch, names):
    """Make the atomic writer fail like a full disk (ENOSPC after half the bytes) for files named in ``names``."""
    real = atomic.atomic_write_with

    def failing(path, write, hook=None):
        if Path(path).name not in names:
            return real(path, write, hook)

        def half_then_full(tmp):
            write(tmp)
            tmp.write_bytes(tmp.read_bytes()[: max(1, tmp.stat().st_size // 2)])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return real(path, half_then_full, hook)

    monkeypatch.setattr(atomic, "atomic_write_with", failing)


def test_a_full_disk_while_writing_results_is_one_line_and_leaves_nothing_half_written(capsys, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _disk_full_on(monkeypatch, {"results.json"})
    line = _one_line(capsys, main(["run", "--strategy", "naive", *TINY, "--out", str(out)]))
    assert f"cannot write the results of the run to {out}: no space left on the device" in line
    assert not (out / "results.json").exists() and not _temporaries(out)
    monkeypatch.undo()  # space again: --resume writes the results from the complete checkpoint
    assert main(["run", "--strategy", "naive", *TINY, "--out", str(out), "--resume", "--json"]) == 0
    assert _strict_json((out / "results.json").read_text())["strategy"] == "naive"


def test_a_full_disk_while_writing_the_first_checkpoint_is_one_line(capsys, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _disk_full_on(monkeypatch, {CHECKPOINT_NAME})
    line = _one_line(capsys, main(["run", "--strategy", "naive", *TINY, "--out", str(out)]))
    assert f"cannot write the checkpoint {out / CHECKPOINT_NAME}: no space left on the device" in line
    assert not out.exists()  # no checkpoint, no temporary file, and the folder it made is gone again


# ------------------------------------------------------------------------------------ 5. damaged checkpoints

def _damage(path: Path, how: str) -> None:
    import torch

    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flipped":
        path.write_bytes(data[:-100] + bytes([data[-100] ^ 0x40]) + data[-99:])
    elif how == "not-a-dict":
        torch.save([1, 2, 3], path)
    elif how == "pickled-object":
        torch.save({"learner": argparse_namespace()}, path)
    elif how == "no-learner":
        torch.save({"fingerprint": "x", "completed": 1, "accuracy_matrix": [], "wall_time_s": 0.0}, path)
    elif how == "other-format":
        path.write_text("not a checkpoint at all")


def argparse_namespace():
    import argparse

    return argparse.Namespace(a=1)


@pytest.mark.parametrize("how, expected", [
    ("empty", "is empty (0 bytes)"),
    ("truncated", "is damaged: its SHA-256 does not match"),
    ("flipped", "is damaged: its SHA-256 does not match"),
    ("not-a-dict", "holds a list, not a checkpoint"),
    ("pickled-object", "holds a pickled argparse.Namespace"),
    ("no-learner", "has no 'learner'"),
    ("other-format", "is not a lifelong checkpoint"),
])
def test_resume_from_an_unusable_checkpoint_is_one_line_naming_the_file(capsys, tmp_path, stopped_run, how, expected):
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    _damage(out / CHECKPOINT_NAME, how)
    line = _one_line(capsys, main(["run", "--strategy", "naive", *TINY, "--out", str(out), "--resume"]))
    assert f"checkpoint {out / CHECKPOINT_NAME} {expected}" in line, line
    assert not (out / "results.json").exists()


# ------------------------------------------------------------------------------ 7. locks and leftovers

_HOLDER = textwrap.dedent("""
    import fcntl, os, sys, time
    fd = os.open(os.path.join(sys.argv[1], ".lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0); os.write(fd, f"{os.getpid()}\\n".encode())
    print("locked", flush=True)
    time.sleep(120)
""")


def test_a_second_writer_is_refused_with_the_holders_pid_and_a_dead_holders_lock_is_taken_over(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for command in (["run", "--strategy", "naive"], ["compare", "--strategies", "naive", "--seeds", "0"]):
            line = _one_line(capsys, main([*command, *TINY, "--out", str(out)]))
            assert f"--out {out} is in use by another lifelong process (pid {holder.pid}" in line, line
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder is dead: its pid is still in the lock file, its flock went with it
    assert (out / ".lock").read_text().strip() == str(holder.pid)
    (out / ".checkpoint.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")  # what a SIGKILL mid-write leaves
    (out / "logs" / "csv").mkdir(parents=True)
    (out / "logs" / "csv" / ".train.csv.x9.tmp").write_text("half")
    assert main(["run", "--strategy", "naive", *TINY, "--out", str(out), "--json"]) == 0
    assert (out / ".lock").read_text().strip() == str(os.getpid())
    assert _temporaries(out) == [] and (out / "results.json").exists()


# --------------------------------------------------------------------------- 8. and 1. compare's pairs and failures

def test_compare_refuses_a_strategy_or_seed_named_twice(capsys, tmp_path):
    line = _one_line(capsys, main(["compare", "--strategies", "naive,replay,naive", "--seeds", "0", "--out", str(tmp_path)]))
    assert "--strategies: naive given more than once" in line
    line = _one_line(capsys, main(["compare", "--strategies", "naive", "--seeds", "0,1,0", "--out", str(tmp_path)]))
    assert "--seeds: 0 given more than once" in line


@pytest.mark.slow  # two spawned workers import torch and avalanche
def test_compare_in_parallel_names_the_failed_run_in_one_line(capsys, tmp_path):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "naive-seed1").write_text("in the way")  # seed 1's run folder is a file: that run fails, seed 0 runs
    line = _one_line(capsys, main(["compare", "--strategies", "naive", "--seeds", "0,1", "--jobs", "2", *TINY,
                                   "--out", str(out)]))
    assert f"run naive seed 1 failed: --out {out / 'naive-seed1'} is a file, not a folder" in line, line
    assert not (out / "summary.json").exists()


def test_compare_names_a_run_that_fails_with_a_bug_exit_1_and_keeps_its_traceback(capsys, tmp_path, monkeypatch):
    def boom(self, experience):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(registry.get("strategy", "naive").factory, "train_experience", boom)
    out = tmp_path / "cmp"
    line = _one_line(capsys, main(["compare", "--strategies", "naive", "--seeds", "3", *TINY, "--out", str(out)]),
                     expected_code=1)
    log = out / "naive-seed3" / "error.log"
    assert line == f"lifelong: error: run naive seed 3 failed with RuntimeError: boom; traceback in {log}"
    assert "Traceback" in log.read_text() and "boom" in log.read_text()


def test_compare_resume_continues_every_pair_from_its_own_checkpoint(capsys, tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", "--strategies", "naive", "--seeds", "0,1", *TINY, "--out", str(out), "--json"]
    assert main(args) == 0
    full = json.loads(capsys.readouterr().out)
    # as if killed: seed 1 has only its first experience checkpointed, and there is no summary
    shutil.rmtree(out / "naive-seed1")
    (out / "summary.json").unlink()
    assert main(["run", "--strategy", "naive", "--seed", "1", *TINY, "--out", str(out / "naive-seed1"),
                 "--stop-after", "1", "--json"]) == 0
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    for summary in (full, resumed):
        summary["naive"].pop("wall_time_s")
    assert resumed == full


# ------------------------------------------------------------------------------------ 9. property-based tests

def _set_values():
    """Text a user might type after ``--set key=``: numbers of every size and sign, non-finite floats, booleans,
    null, lists, words, YAML oddities."""
    scalars = st.one_of(
        st.integers(min_value=-2**70, max_value=2**70).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(["nan", ".nan", "inf", "-inf", ".inf", "true", "false", "null", "~", "", "1e-3", "0x10",
                         "[]", "[1, 2]", "[a, b]", "{a: 1}", "!!python/object:os.system x", "'quoted'", "auto"]),
        st.text(max_size=8),
    )
    return scalars


def _stream_fields():
    pairs = []
    for kind in ("strategy", "benchmark"):
        for spec in registry.list_plugins(kind):
            if spec.config is None or getattr(spec, "produces", "stream") not in (None, "stream"):
                continue
            pairs += [(kind, spec.name, f.name) for f in dataclasses.fields(spec.config)]
    return pairs


FIELDS = _stream_fields()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(target=st.sampled_from(FIELDS), text=_set_values())
def test_any_set_value_for_any_field_validates_or_is_one_config_error(target, text):
    kind, name, field = target
    strategy, benchmark = (name, "split-digits") if kind == "strategy" else ("naive", name)
    try:
        config = resolve_config(strategy=strategy, benchmark=benchmark, overrides=parse_overrides([f"{field}={text}"]))
    except UserError as exc:  # ConfigError is a UserError; the CLI prints it through one_line
        line = one_line(str(exc))
        assert line and len(line.splitlines()) == 1 and line.isprintable(), line
        return
    section = config.strategy_config if kind == "strategy" else config.benchmark_config
    value = getattr(section, field)
    for item in value if isinstance(value, (list, tuple)) else [value]:
        assert not (isinstance(item, float) and not math.isfinite(item)), (field, value)


@pytest.fixture(scope="module")
def checkpoint_bytes(stopped_run):
    return (stopped_run / CHECKPOINT_NAME).read_bytes()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_damaged_checkpoint_is_refused_in_one_line_or_loads_unchanged(tmp_path, checkpoint_bytes, data):
    raw = bytearray(checkpoint_bytes)
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="length")]
    else:
        for _ in range(data.draw(st.integers(1, 8), label="flips")):
            i = data.draw(st.integers(0, len(raw) - 1), label="at")
            raw[i] ^= data.draw(st.integers(1, 255), label="mask")
    path = tmp_path / CHECKPOINT_NAME
    path.write_bytes(bytes(raw))
    try:
        state = load_checkpoint(path)
    except UserError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        return
    assert bytes(raw) == checkpoint_bytes  # flips that cancel out: the very same file
    assert state["completed"] == 1
