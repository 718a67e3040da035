"""Crash campaign of ``lifelong run`` and ``lifelong compare --jobs 2``: SIGKILL at random moments, then resume.

Each trial starts the command (in a forked child of this warm process, so the kill lands on the work and not on
seconds of imports; ``compare --jobs 2`` still spawns its two workers), kills the child's whole process group
with SIGKILL after a delay drawn uniformly from [0, T] (T: the uninterrupted command's time, measured first),
records what the kill left (checkpoints, orphan ``.*.tmp`` files, the stale lock), then continues:
``run --resume`` where a checkpoint exists (a fresh ``run`` where none does: ``--resume`` must then refuse in one
line, exit 2), ``compare --resume`` always. It passes when the continued command exits 0, no ``.*.tmp`` is left,
and every accuracy matrix (and compare's summary) equals the uninterrupted command's, bit for bit.

    nice -n 5 .venv/bin/python bench/crash_run.py --trials 50            # both campaigns
    nice -n 5 .venv/bin/python bench/crash_run.py --which run --trials 5  # a quick look
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: tiny runs, a shared machine

RUN = ["run", "--strategy", "replay", "--set", "n_experiences=5", "--set", "train_per_class=20",
       "--set", "epochs=2", "--set", "mem_size=40", "--seed", "3", "--json"]
COMPARE = ["compare", "--strategies", "naive,replay", "--seeds", "0", "--jobs", "2", "--set", "n_experiences=5",
           "--set", "train_per_class=20", "--set", "epochs=2", "--set", "mem_size=40", "--json"]


def _child(args: list[str], log: Path, fork_workers: bool = True) -> int:
    """Fork a child in its own process group that runs ``lifelong ARGS`` in-process; returns its pid.

    With ``fork_workers`` the pool of ``compare --jobs`` forks its workers from the child instead of spawning
    them: the same pool, processes, folders, locks and kills, without each worker's seconds of imports (about
    100 s for two spawned workers on the loaded 2-core machine this was written on)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.setpgid(0, 0)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        code = 1
        try:
            import torch

            torch.set_num_threads(1)
            if fork_workers:
                import multiprocessing

                real = multiprocessing.get_context
                multiprocessing.get_context = lambda method=None: real("fork" if method == "spawn" else method)
            from lifelong.cli.main import main

            code = main(args)
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def _wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def run_command(args: list[str], log: Path, fork_workers: bool = True) -> tuple[int, float]:
    t0 = time.perf_counter()
    code = _wait(_child(args, log, fork_workers))
    return code, time.perf_counter() - t0


def kill_after(args: list[str], delay: float, log: Path, fork_workers: bool = True) -> bool:
    """Start ``args``, SIGKILL its process group after ``delay`` s; True if it was still running then."""
    pid = _child(args, log, fork_workers)
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
        time.sleep(0.005)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _wait(pid)
    time.sleep(0.05)  # the pool's workers of compare are in the same group; let the kernel reap them
    return True


def _matrices(folder: Path, names: list[str]) -> dict[str, list]:
    return {n: json.loads((folder / n / "results.json").read_text())["accuracy_matrix"] for n in names}


def _summary(folder: Path) -> dict:
    summary = json.loads((folder / "summary.json").read_text())["strategies"]
    for entry in summary.values():
        entry.pop("wall_time_s", None)
    return summary


def _state_after_kill(folder: Path, runs: list[str]) -> dict[str, int]:
    """What the kill left: checkpoints per run folder, completed results, orphan temporaries."""
    import torch  # noqa: F401  (load_checkpoint needs it; already imported by the parent's warm-up)

    from lifelong.incremental.checkpoint import load_checkpoint

    found = {"checkpoints": 0, "results": 0, "orphans": len(list(folder.rglob(".*.tmp"))), "completed_steps": 0}
    for run in runs:
        run_dir = folder / run
        if (run_dir / "checkpoint.pt").exists():
            found["checkpoints"] += 1
            found["completed_steps"] += int(load_checkpoint(run_dir / "checkpoint.pt")["completed"])
        found["results"] += (run_dir / "results.json").exists()
    return found


def campaign(which: str, trials: int, rng: random.Random, work: Path, fork_workers: bool = True) -> dict:
    base = RUN if which == "run" else COMPARE
    runs = ["."] if which == "run" else ["naive-seed0", "replay-seed0"]
    reference = work / f"{which}-reference"
    code, took = run_command([*base, "--out", str(reference)], work / f"{which}-reference.log", fork_workers)
    assert code == 0, (work / f"{which}-reference.log").read_text()[-2000:]
    expected = _matrices(reference, runs)
    expected_summary = _summary(reference) if which == "compare" else None
    outcomes: collections.Counter = collections.Counter()
    failures = []
    t0 = time.perf_counter()
    for trial in range(trials):
        out = work / f"{which}-{trial}"
        delay = rng.uniform(0, took)
        killed = kill_after([*base, "--out", str(out)], delay, work / "killed.log", fork_workers)
        state = _state_after_kill(out, runs) if out.exists() else {"checkpoints": 0, "results": 0, "orphans": 0,
                                                                      "completed_steps": 0}
        outcomes["killed" if killed else "finished before the kill"] += 1
        outcomes[f"left {state['completed_steps']} checkpointed steps"] += 1
        outcomes["left an orphan .tmp"] += state["orphans"] > 0
        outcomes["left a stale .lock"] += (out / ".lock").exists() and killed
        if which == "run" and state["checkpoints"] == 0:
            refused, _ = run_command([*base, "--out", str(out), "--resume"], work / "resume.log")
            lines = [l for l in (work / "resume.log").read_text().splitlines() if l.strip() and "%|" not in l]
            ok = refused == 2 and len(lines) == 1 and "no checkpoint" in lines[0]
            outcomes["no checkpoint: --resume refused in one line"] += ok
            if not ok:
                failures.append((trial, "resume without checkpoint", refused, lines[-3:]))
            args = [*base, "--out", str(out)]
        else:
            args = [*base, "--out", str(out), "--resume"]
        code, _ = run_command(args, work / "resume.log", fork_workers)
        problem = None
        if code != 0:
            problem = f"exit {code}: {(work / 'resume.log').read_text()[-500:]}"
        elif list(out.rglob(".*.tmp")):
            problem = f"temporaries left: {list(out.rglob('.*.tmp'))}"
        elif _matrices(out, runs) != expected:
            problem = "accuracy matrix differs from the uninterrupted run"
        elif which == "compare" and _summary(out) != expected_summary:
            problem = "summary differs from the uninterrupted comparison"
        outcomes["resumed, equal to uninterrupted" if problem is None else "FAILED"] += 1
        if problem:
            failures.append((trial, round(delay, 3), problem))
        shutil.rmtree(out, ignore_errors=True)
    return {"command": "lifelong " + " ".join(base), "trials": trials, "uninterrupted_s": round(took, 2),
            "workers": ("forked" if fork_workers else "spawned") if which == "compare" else None,
            "campaign_s": round(time.perf_counter() - t0, 1), "outcomes": dict(sorted(outcomes.items())),
            "failures": failures}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--which", choices=("run", "compare", "both"), default="both")
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spawn", action="store_true",
                        help="compare's workers spawned as in normal use (slow: each imports torch and avalanche)")
    args = parser.parse_args()
    import avalanche.benchmarks  # noqa: F401  (the stream builder's, seconds of imports)
    import avalanche.training  # noqa: F401
    import sklearn.datasets
    import torch  # warm the parent (imports only: no torch op runs here, so forking stays safe)

    import lifelong.cli.main  # noqa: F401
    import lifelong.strategies.baselines  # noqa: F401
    from lifelong.platform import registry

    registry.list_plugins("strategy")
    sklearn.datasets.load_digits()  # split-digits' data, read once here (numpy only)
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    print(f"load at start: {os.getloadavg()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="crash-run-"))
    report = {}
    try:
        for which in (["run", "compare"] if args.which == "both" else [args.which]):
            report[which] = campaign(which, args.trials, rng, work, fork_workers=not args.spawn)
            print(json.dumps(report[which], indent=1), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load at end: {os.getloadavg()}", flush=True)
    return 1 if any(r["failures"] for r in report.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
