"""Crash campaign for the edit store: SIGKILL ``lifelong edit apply`` and ``lifelong edit rollback`` at random
moments, then check that the store's rows, adapter files and router index agree and that nothing was lost or
half-applied (``docs/reliability.md``).

The model is the tests' tiny random Llama (``tests/_llm_fixtures.make_tiny_llama``: 2 layers, 64 wide, SmolLM2's
tokenizer) with the tests' small SoLA settings. So that the kills land inside the command rather than in Python's
start-up, a "zygote" process imports everything once and forks one child per trial, which runs the command
(``lifelong.cli.main.main``, the same code path as the shell command); the child is killed after a random delay
drawn uniformly from zero to 1.2 times the command's measured uninterrupted duration. The rollback store is seeded
with one real SoLA edit and copies of it with noisy keys (rollback touches only rows, keys and the router).

After every kill the store is reopened (which removes orphan files) and checked: every earlier edit is there,
unchanged; the killed edit is wholly there (row, adapter file with its SHA-256, key in the router) or wholly
absent; for a rollback, the edit is rolled back or still active, and the others unchanged; no adapter file that
no row names survives the reopening; the router index on disk, when its checksum is the store's, holds exactly the
active keys, and so does the router the store gives.

    nice -n 5 .venv/bin/python bench/crash_edit.py --trials 50
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("LIFELONG_CACHE", str(REPO / ".cache" / "lifelong"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from _llm_fixtures import TINY_SOLA, make_tiny_llama  # noqa: E402

from lifelong.editing.router import Router  # noqa: E402
from lifelong.editing.store import ADAPTER_DIR, EditStore  # noqa: E402
from lifelong.platform.config import parse_overrides  # noqa: E402

ZYGOTE = """
import json, os, sys, time
import torch, transformers  # the slow imports, once; no torch op runs here, so forking is safe
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM  # noqa: F401 (lazy modules)
from lifelong.cli.main import main
from lifelong.editing import session  # noqa: F401
from lifelong.platform import registry
registry.get("editor", "sola")  # the editor plugins imported
print("ready", flush=True)
for line in sys.stdin:
    argv = json.loads(line)
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the command, in a fresh child: the same code path as the shell command
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        os._exit(main(argv))
    print(f"pid {pid}", flush=True)
    _, status = os.waitpid(pid, 0)
    print(f"exit {status} {time.perf_counter() - t0:.3f}", flush=True)
"""


class Zygote:
    """A process that has done the imports once and forks one child per command (so a trial costs no start-up);
    the campaign kills the child, never the zygote."""

    def __init__(self, script: Path) -> None:
        self.proc = subprocess.Popen(["nice", "-n", "5", sys.executable, str(script)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def run(self, argv: list[str], kill_after: float | None) -> tuple[str, float]:
        """Run one command; SIGKILL it after ``kill_after`` seconds (None: let it finish, and it must succeed).
        Returns ``("killed" | "finished", seconds)``."""
        self.proc.stdin.write(json.dumps(argv) + "\n")
        self.proc.stdin.flush()
        pid = int(self.proc.stdout.readline().split()[1])
        if kill_after is not None:
            time.sleep(kill_after)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _, status, seconds = self.proc.stdout.readline().split()
        status = int(status)
        if kill_after is None and status != 0:
            raise RuntimeError(f"the uninterrupted command {argv} failed (wait status {status})")
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        return ("killed" if killed else "finished"), float(seconds)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def rows_of(store: EditStore) -> dict[int, tuple]:
    return {r.id: (r.uid, r.prompt, r.target, r.status, r.adapter_file, r.adapter_sha256,
                   None if r.key is None else r.key.tobytes()) for r in store.all_edits()}


def check(path: Path) -> tuple[dict[int, tuple], list[str]]:
    """Reopen the store and check rows, files and router agree; returns the rows and the problems found."""
    problems = []
    adir = path / ADAPTER_DIR
    before_files = {p.name for p in adir.iterdir()}
    with EditStore.open(path, create=False) as s:  # removes orphans
        rows = rows_of(s)
        named = {r[4] for r in rows.values() if r[4]}
        files = {p.name for p in adir.iterdir()}
        if files != named:
            problems.append(f"adapter files {sorted(files ^ named)} disagree with the rows")
        for rec in s.active_edits():
            try:
                s.load_tensors(rec)
            except Exception as exc:  # noqa: BLE001 - reported, not raised
                problems.append(f"edit {rec.id}: {exc}")
        active_keyed = {i for i, r in rows.items() if r[3] == "active" and r[6] is not None}
        disk = Router(s.metric)
        if disk.read(path, s.keys_checksum()) and disk.ids() != active_keyed:
            problems.append(f"router file ids {sorted(disk.ids())} != active keys {sorted(active_keyed)}")
        if s.router().ids() != active_keyed:
            problems.append(f"router ids {sorted(s.router().ids())} != active keys {sorted(active_keyed)}")
    orphans = len(before_files - named)
    return rows, problems + ([f"__orphans={orphans}"] if orphans else [])


def campaign(kind: str, trials: int, store: Path, model: Path, zygote: Zygote, rng: random.Random) -> dict:
    def argv(k: int) -> list[str]:
        if kind == "apply":
            return ["edit", "apply", "--store", str(store), "--model", str(model), "--prompt",
                    f"Fact number {k} is about", "--target", f" topic{k % 7}", *TINY_SOLA]
        return ["edit", "rollback", "--store", str(store), str(k)]

    with EditStore.open(store, create=False) as s:
        rows = rows_of(s)
    ids = iter(sorted(i for i, r in rows.items() if r[3] == "active"))
    targets = [next(ids) for _ in range(trials + 1)] if kind == "rollback" else list(range(1000, 1001 + trials))
    _, duration = zygote.run(argv(targets[0]), None)  # how long one uninterrupted command takes
    rows, problems = check(store)
    assert not problems, problems
    outcome: Counter = Counter()
    bad = []
    for t in range(1, trials + 1):
        delay = rng.uniform(0, 1.2 * duration)
        how, _ = zygote.run(argv(targets[t]), delay)
        after, problems = check(store)
        orphans = [p for p in problems if p.startswith("__orphans=")]
        problems = [p for p in problems if not p.startswith("__orphans=")]
        outcome["orphan files removed on reopening"] += sum(int(p.split("=")[1]) for p in orphans)
        # every edit committed before is there, unchanged (a rollback may change only its own edit's status)
        for i, r in rows.items():
            if i not in after:
                problems.append(f"edit {i} lost")
            elif kind == "rollback" and i == targets[t]:
                if after[i][:3] + after[i][4:] != r[:3] + r[4:]:
                    problems.append(f"edit {i} changed beyond its status")
            elif after[i] != r:
                problems.append(f"edit {i} changed")
        new = {i: r for i, r in after.items() if i not in rows}
        if kind == "apply":
            if len(new) > 1 or any(r[1] != f"Fact number {targets[t]} is about" for r in new.values()):
                problems.append(f"unexpected new rows {sorted(new)}")
            state = "applied (row, file, key)" if new else "absent"
        else:
            if new:
                problems.append(f"unexpected new rows {sorted(new)}")
            state = "rolled back" if after[targets[t]][3] == "rolled_back" else "still active"
        outcome[f"{how}, {state}"] += 1
        print(f"{kind} {t}/{trials}: {how} after {delay:.2f} s, {state}, problems: {len(problems)}", file=sys.stderr,
              flush=True)
        if problems:
            bad.append((t, problems))
        rows = after
    return {"kind": kind, "trials": trials, "uninterrupted_seconds": round(duration, 3),
            "outcomes": dict(outcome), "inconsistent_trials": len(bad), "problems": bad[:5]}


def _seed_store(store: Path, model: Path, n: int) -> None:
    """A store for ``model`` with one real SoLA edit (applied through a session, so the store is fixed to the same
    editor and config as the campaign's applies) and ``n - 1`` more whose tensors and keys are copies of it with
    noise: rollback only touches rows, keys and the router, so these need no training."""
    import numpy as np

    from lifelong.editing.session import EditSession

    cfg = parse_overrides(TINY_SOLA[1::2])
    with EditSession(store, model=str(model), editor="sola", editor_config=cfg, device="cpu", quiet=True) as s:
        first = s.apply("Known fact 0 says", " value0", require_target=False)
        tensors = s.store.load_tensors(first)
        rng = np.random.default_rng(0)
        for k in range(1, n):
            key = first.key + rng.normal(0, 0.1, first.key.shape).astype(np.float32)
            s.store.add_edit(f"Known fact {k} says", f" value{k % 5}", editor=s.editor_name, tensors=tensors,
                             key=key, layer=first.layer, editor_config=s.editor_config, metric=s.editor.metric)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=50, help="kills per command (default 50)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="folder for the model and stores (default: a temporary one)")
    ap.add_argument("--only", nargs="+", choices=("apply", "rollback"), default=["apply", "rollback"])
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="crash-edit-"))
    work.mkdir(parents=True, exist_ok=True)
    script = work / "zygote.py"
    script.write_text(ZYGOTE)
    model = work / "tiny-llama"
    if not (model / "config.json").is_file():
        make_tiny_llama(model, seed=0)
    t0 = time.perf_counter()
    results = []
    for kind in args.only:
        store = work / f"store-{kind}"
        if not store.exists():
            _seed_store(store, model, args.trials + 2 if kind == "rollback" else 1)
        t1 = time.perf_counter()
        zygote = Zygote(script)
        try:
            res = campaign(kind, args.trials, store, model, zygote, rng)
        finally:
            zygote.close()
        res["seconds"] = round(time.perf_counter() - t1, 1)
        results.append(res)
        print(json.dumps(res), flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s; inconsistent trials: "
          f"{sum(r['inconsistent_trials'] for r in results)}", file=sys.stderr)
    return 1 if any(r["inconsistent_trials"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
