"""Peak memory of ``edit bench`` on the decoder, per phase, and how it grows with the number of edits.

Each (code, editor) runs ``run_edit_bench`` (what ``lifelong edit bench`` runs) in a fresh child process, so
its peak resident set (``VmHWM``) is its own. A thread samples ``VmRSS`` every 50 ms; the bench's phases
(model load, unedited references, the edit stream, after the stream, the rollback of half) are marked by
wrapping their functions, and the resident set after each edit is recorded, so the growth per edit is a
least-squares slope over the stream, and the peak at ``--at`` edits is extrapolated as the peak measured plus
that slope times the edits not run. ``--before DIR`` runs the same children on another checkout of the code
(``git archive <commit> | tar -x -C DIR``) and prints both side by side.

    nice -n 10 .venv/bin/python bench/edit_memory.py --file runs/wn-test.jsonl --n 40 --editors ft-l,grace,sola \
        [--before /tmp/before] [--at 1000]

``--before-stream`` measures, at the full ``--n``, only the phases whose work grows with the number of edits
before the first edit is applied (the unedited references of every locality prompt, the pre-edit reliability of
every target, the retention targets, the checkpoint at 0 edits), with the bench's own functions, printing the
resident set after each and after a final ``malloc_trim`` (what of it was free heap); ``--unpinned`` leaves
glibc's mmap threshold as it is (the bench pins it, ``lifelong/platform/memory.py``), for the side-by-side.

    nice -n 10 .venv/bin/python bench/edit_memory.py --file runs/wn-all.jsonl --n 1000 --before-stream [--unpinned]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("_unedited_references", "_apply_stream", "_after_stream", "_roll_back_half")


def _rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(editor: str, file: str, n: int, every: int) -> None:
    """One bench run; prints one JSON line of phase peaks and the per-edit resident set."""
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(_rss_mb())
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    from lifelong.adapters.lm.model_loading import load_causal_lm
    from lifelong.benchmarks.edits import load_edits
    from lifelong.editing import bench
    from lifelong.editing.session import EditSession

    base = _rss_mb()
    loaded = load_causal_lm()
    peaks: dict[str, float] = {"model loaded": max(samples + [_rss_mb()])}
    for name in PHASES:
        real = getattr(bench, name)

        def wrapped(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            start = len(samples)
            try:
                return _real(*args, **kwargs)
            finally:
                peaks[_name.strip("_")] = max(samples[start:] + [_rss_mb()])

        setattr(bench, name, wrapped)
    per_edit: list[float] = []
    apply = EditSession.apply

    def counted(self: EditSession, *args: Any, **kwargs: Any) -> Any:
        rec = apply(self, *args, **kwargs)
        per_edit.append(_rss_mb())
        return rec

    EditSession.apply = counted  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        bench.run_edit_bench(editor, load_edits(file), n=n, seed=0, out=Path(tmp) / "out", loaded=loaded,
                             every=every, overhead_reps=1)
        wall = time.perf_counter() - t0
    stop.set()
    print(json.dumps({"editor": editor, "n": n, "python_mb": base, "peaks_mb": peaks, "per_edit_mb": per_edit,
                      "vmhwm_mb": _rss_mb("VmHWM"), "wall_s": wall}))


def before_stream(editor: str, file: str, n: int, pinned: bool) -> None:
    """The resident set after each phase of ``run_edit_bench`` that precedes the first edit, at ``n`` edits (the
    bench's own draw and functions, one editor's fresh store)."""
    import ctypes

    from lifelong.benchmarks.edits import load_edits
    from lifelong.editing import bench
    from lifelong.editing.metrics import retention_targets
    from lifelong.editing.session import EditSession
    from lifelong.platform.memory import pin_mmap_threshold

    print(f"{os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.2f}; n = {n}; mmap threshold "
          f"{'pinned at 1 MB: ' + str(pin_mmap_threshold()) if pinned else 'as glibc sets it'}", flush=True)
    requests = load_edits(file)
    reqs, _, fid_check = bench.bench_draw(requests, n, 0)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        session = EditSession(Path(tmp) / "store", editor=editor, quiet=True, device="cpu")
        print(f"model loaded: {_rss_mb():.0f} MB", flush=True)
        cache: dict = {}
        bench._unedited_references(session, reqs, fid_check, 8, cache)
        print(f"unedited references ({sum(len(r.locality) for r in reqs)} locality prompts): {_rss_mb():.0f} MB "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        session.token_accuracy([r.prompt for r in reqs], [r.target for r in reqs])
        print(f"pre-edit reliability ({len(reqs)} targets): {_rss_mb():.0f} MB", flush=True)
        trr = retention_targets(session, bench._default_retention(requests, 0, 200), cache)
        print(f"retention targets: {_rss_mb():.0f} MB", flush=True)
        bench._checkpoint(session, [], trr, None, 0, 0.0)
        print(f"checkpoint at 0 edits: {_rss_mb():.0f} MB; peak {_rss_mb('VmHWM'):.0f} MB "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        print(f"after malloc_trim(0): {_rss_mb():.0f} MB; load average {os.getloadavg()[0]:.2f}", flush=True)
        session.close()


def slope(ys: list[float]) -> float:
    """Least-squares MB per edit over the second half of the stream (after the allocator has warmed up)."""
    ys = ys[len(ys) // 2:]
    if len(ys) < 2:
        return float("nan")
    xs = range(len(ys))
    mx, my = sum(xs) / len(ys), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def run(code: Path, editor: str, args: argparse.Namespace) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--child", editor, "--file", args.file, "--n", str(args.n),
                          "--every", str(args.every)], capture_output=True, text=True, cwd=code,
                         env=os.environ | {"PYTHONPATH": str(code)})
    if out.returncode != 0:
        raise SystemExit(f"child {editor} on {code} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", required=True, help="edit file (e.g. lifelong edit make-set --source wordnet)")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--editors", default="ft-l,grace,sola")
    ap.add_argument("--before", default=None, help="a checkout of the code before, run side by side")
    ap.add_argument("--at", type=int, default=1000, help="extrapolate the peak to this many edits")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--before-stream", action="store_true", help="only the phases before the first edit, at --n")
    ap.add_argument("--unpinned", action="store_true", help="with --before-stream: leave the mmap threshold as is")
    args = ap.parse_args()
    if args.child:
        child(args.child, args.file, args.n, args.every)
        return
    if args.before_stream:
        before_stream(args.editors.split(",")[0], args.file, args.n, pinned=not args.unpinned)
        return
    codes = {"after": ROOT} | ({"before": Path(args.before)} if args.before else {})
    print(f"{os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.2f}; n = {args.n}", flush=True)
    for editor in args.editors.split(","):
        for label, code in sorted(codes.items(), reverse=True):  # before first
            r = run(code, editor, args)
            s = slope(r["per_edit_mb"])
            extrapolated = r["vmhwm_mb"] + s * max(0, args.at - args.n)
            phases = ", ".join(f"{k} {v:.0f}" for k, v in r["peaks_mb"].items())
            trace = " ".join(f"{v:.0f}" for v in r["per_edit_mb"])
            print(f"{editor} {label} RSS MB after each edit: {trace}", flush=True)
            print(f"{editor:6s} {label:6s} peak RSS {r['vmhwm_mb']:.0f} MB at n={args.n} ({r['wall_s']:.0f} s); "
                  f"growth {s:.2f} MB/edit -> about {extrapolated / 1024:.2f} GB at {args.at} edits; "
                  f"phase peaks MB: {phases} (load average {os.getloadavg()[0]:.2f})", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
