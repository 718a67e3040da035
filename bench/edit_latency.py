"""``edit apply`` latency of sola, grace and ft-l with the model already loaded, and the first-call costs.

First call: the cached model load (``load_causal_lm`` of the embedded SmolLM2-135M from the dequantised cache)
and, per editor, the start of an edit session on a fresh store with that model (the model's identity hash, the
editor's attach: SoLA's centre of 32 generic prompts is one batched forward). Per edit: ``EditSession.apply``
(training, the store write, switching the edit on) on bundled edits of ``edits-smollm2.jsonl``, the model loaded.

Each edit is applied twice, in two fresh stores, rounds alternating: with the frozen layers below the edited one
replayed (``editors/_prefix.py``, what the editors do) and without (the editors' code before it); the trained
tensors, keys and steps of the two must be equal (checked and printed), and the ratio of the median times is
the speed-up. One process, so both see the same load.

    .venv/bin/python bench/edit_latency.py [--editors sola,grace,ft-l] [--edits 3] [--first 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODULES = {"sola": "lifelong.editors.sola", "grace": "lifelong.editors.grace", "ft-l": "lifelong.editors.ft_l"}


def _no_replay(*args: Any, **kwargs: Any) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def apply_all(editor: str, loaded: tuple[Any, Any], recs: list[dict[str, Any]], replay: bool) -> dict[str, Any]:
    """A fresh store and session; apply each record; per-edit seconds, steps, and what each edit trained."""
    from lifelong.editing.session import EditSession

    module = importlib.import_module(MODULES[editor])
    real = module.replay_frozen_layers
    module.replay_frozen_layers = real if replay else _no_replay
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            session = EditSession(Path(tmp) / "store", editor=editor, loaded=loaded)
            start = time.perf_counter() - t0
            trained: list[Any] = []
            train = session.editor.train_edit

            def recording(prompt: str, target: str) -> Any:
                art = train(prompt, target)
                trained.append(art)
                return art

            session.editor.train_edit = recording
            seconds, steps = [], []
            try:
                for r in recs:
                    t0 = time.perf_counter()
                    session.apply(r["prompt"], r["target"], require_target=False)
                    seconds.append(time.perf_counter() - t0)
                    steps.append(session.editor.last_fit.steps)
            finally:
                session.close()
    finally:
        module.replay_frozen_layers = real
    return {"start": start, "seconds": seconds, "steps": steps, "trained": trained}


def same_edits(a: list[Any], b: list[Any]) -> bool:
    import numpy as np
    import torch

    for x, y in zip(a, b, strict=True):
        if set(x.tensors) != set(y.tensors) or not all(torch.equal(x.tensors[k], y.tensors[k]) for k in x.tensors):
            return False
        if (x.key is None) != (y.key is None) or (x.key is not None and not np.array_equal(x.key, y.key)):
            return False
        if x.extra != y.extra:
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--editors", default="sola,grace,ft-l")
    p.add_argument("--edits", type=int, default=3, help="edits per editor and mode")
    p.add_argument("--first", type=int, default=10, help="index of the first bundled edit used")
    p.add_argument("--rounds", type=int, default=1, help="rounds of (replay, no replay) per editor")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    from lifelong.adapters.lm.model_loading import load_causal_lm

    t1 = time.perf_counter()
    loaded = load_causal_lm()
    t2 = time.perf_counter()
    print(f"first call: import torch + lifelong {t1 - t0:.1f} s, cached model load {t2 - t1:.1f} s "
          f"({args.threads} torch threads, torch {torch.__version__})", flush=True)
    lines = (ROOT / "lifelong/benchmarks/data/edits-smollm2.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines[args.first:args.first + args.edits]]
    summary = []
    for editor in args.editors.split(","):
        runs: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
        for r in range(args.rounds):
            for replay in ((True, False) if r % 2 == 0 else (False, True)):
                res = apply_all(editor, loaded, recs, replay)
                runs[replay].append(res)
                print(f"  {editor} {'replay' if replay else 'no replay':<9} session start {res['start']:.1f} s, "
                      f"apply s {[round(s, 1) for s in res['seconds']]}, steps {res['steps']}", flush=True)
        identical = all(same_edits(a["trained"], b["trained"]) for a, b in zip(runs[True], runs[False]))
        med = {k: statistics.median(s for run in v for s in run["seconds"]) for k, v in runs.items()}
        steps = statistics.mean(s for run in runs[True] for s in run["steps"])
        summary.append((editor, med[False], med[True], steps, identical))
    print(f"\n{'editor':<7}{'before s/edit':>15}{'after s/edit':>14}{'speed-up':>10}{'steps/edit':>12}  results")
    for editor, before, after, steps, identical in summary:
        print(f"{editor:<7}{before:>15.2f}{after:>14.2f}{before / after:>10.2f}{steps:>12.1f}  "
              f"{'identical' if identical else 'DIFFER'}")
    return 0 if all(s[-1] for s in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
