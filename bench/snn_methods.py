"""The spiking training components on split-fashion-mnist: kd (response, hint and attention KD into a spiking
ResNet), esl at several densities, and in class-incremental learning kd against forgetting and esl's
per-experience masks beside naive and replay. Mean ± std over seeds; docs/snn-methods.md has the tables.

Five parts, every run ``run_experiment`` with ``strategy`` and ``--set`` overrides as ``lifelong run`` takes them:

- ``one``: Fashion-MNIST as one experience (10 classes), the ``spiking-mnist`` student (T = 4) trained alone, with
  ``kd`` from an ANN (``cnn-28``) trained jointly (response, hint, attention with the layer-wise schedule), with
  ``esl`` at densities 0.5, 0.2 and 0.1 (density 1.0 is the student alone: all masks one, nothing pruned), and
  the ``cnn-28`` ANN alone for reference; the same epochs for all. Reported: test accuracy, run wall time and,
  for esl, the density reached;
- ``pre``: as ``one``, but the teacher is trained first (``cnn-28``, ``--teacher-epochs`` epochs, its own run)
  and loaded with ``kd.teacher=checkpoint``, as KDSNN distils from a trained ANN; the student rows train the
  same epochs as in ``one``, whose ``snn alone`` row is their baseline;
- ``cil``: 5 experiences of 2 classes, ``spiking-mnist``: naive, replay (200 samples), naive + ``kd`` with the
  previous model as teacher, naive + ``esl`` with per-experience masks (density 0.2 each). Reported: average
  incremental accuracy, last accuracy, forgetting;
- ``more``: one experience again: the student alone with cross-entropy and with ``loss=tet``; LaSNN's smaller
  student (``spiking-mnist-half``, a quarter of the parameters) alone and distilled from part ``pre``'s trained
  ANN with attention KD and the layer-wise schedule; ``esl`` at 0.2 beside ``rkd`` at 0.2 (hint KD from the
  trained teacher, distillation-aware prune score); ``--cost`` adds the students' parameters and forward time;
- ``cil-der``: 5 experiences with ``der`` on ``spiking-mnist`` extractors (memory 200, the classifier's
  fine-tuning shortened to 8 epochs), alone and with ``kd`` against forgetting.

Each run uses one torch thread; ``--jobs`` runs in parallel; runs already in ``--out`` are reused (``--fresh``
reruns). Needs the Fashion-MNIST files (``make data``).

    nice -n 5 .venv/bin/python bench/snn_methods.py --seeds 0,1,2 --train-per-class 100 --test-per-class 100 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cil_fashion import fmt, run_all  # noqa: E402  (the Fashion-MNIST benches share formatting and the pool)

STUDENT = {"model": "spiking-mnist", "lr": 0.05}
KD = {"components": ["kd"], "kd": {"teacher": "joint", "teacher_model": "cnn-28", "teacher_lr": 0.05}}
ESL = {"components": ["esl"], "esl": {"T_iter": 10, "grow": "gradient"}}


# der with spiking extractors: the same student per experience, its fine-tuning of the classifier shortened
DER = {"model": "spiking-mnist", "lr": 0.05, "mem_size": 200, "finetune_epochs": 8, "finetune_milestones": [6]}

TEACHER_RUN = "{teacher}"  # the part-pre teacher's run folder of the same seed, filled in per task


def _kd(**options: Any) -> dict[str, Any]:
    return {**STUDENT, "components": ["kd"], "kd": {**KD["kd"], **options}}


def _esl(**options: Any) -> dict[str, Any]:
    return {**STUDENT, "components": ["esl"], "esl": {**ESL["esl"], **options}}


#: part -> row -> (strategy, overrides)
PARTS: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "one": {
        "ann cnn-28 (reference)": ("naive", {"model": "cnn-28", "lr": 0.05}),
        "snn alone": ("naive", dict(STUDENT)),
        "snn + kd response": ("naive", _kd()),
        "snn + kd hint": ("naive", _kd(feature="hint")),
        "snn + kd attention, layerwise": ("naive", _kd(feature="attention", schedule="layerwise")),
        "snn + esl 0.5": ("naive", _esl(density=0.5)),
        "snn + esl 0.2": ("naive", _esl(density=0.2)),
        "snn + esl 0.1": ("naive", _esl(density=0.1)),
    },
    "pre": {
        "ann cnn-28 teacher": ("naive", {"model": "cnn-28", "lr": 0.05}),
        "snn + kd response, trained teacher": ("naive", _kd(teacher="checkpoint", teacher_run=TEACHER_RUN)),
        "snn + kd hint, trained teacher": ("naive", _kd(teacher="checkpoint", teacher_run=TEACHER_RUN,
                                                         feature="hint")),
    },
    "more": {
        "snn alone": ("naive", dict(STUDENT)),
        "snn alone, loss=tet": ("naive", {**STUDENT, "loss": "tet"}),
        "half snn alone": ("naive", {**STUDENT, "model": "spiking-mnist-half"}),
        "half snn + kd attention layerwise, trained teacher (LaSNN)": (
            "naive", {**_kd(teacher="checkpoint", teacher_run=TEACHER_RUN, feature="attention",
                        schedule="layerwise"), "model": "spiking-mnist-half"}),
        "snn + esl 0.2": ("naive", _esl(density=0.2)),
        "snn + rkd 0.2, trained teacher": (
            "naive", {**STUDENT, "components": ["rkd"],
                      "rkd": {**KD["kd"], **ESL["esl"], "teacher": "checkpoint", "teacher_run": TEACHER_RUN,
                              "feature": "hint", "density": 0.2}}),
    },
    "cil-der": {
        "der": ("der", {**DER}),
        "der + kd previous": ("der", {**DER, "components": ["kd"], "kd": {**KD["kd"], "teacher": "previous"}}),
    },
    "cil": {
        "naive": ("naive", dict(STUDENT)),
        "replay": ("replay", dict(STUDENT)),
        "naive + kd previous": ("naive", _kd(teacher="previous")),
        "naive + esl per-experience 0.2": ("naive", _esl(density=0.2, per_experience=True)),
    },
}


def _folder(out: str, part: str, row: str, seed: int) -> Path:
    return Path(out) / part / f"{row.replace(' ', '_').replace(',', '').replace('+', 'with')}-seed{seed}"


def one(task: tuple[str, str, int, str, dict[str, Any], bool]) -> dict[str, Any]:
    part, row, seed, out, protocol, fresh = task
    import torch

    torch.set_num_threads(1)
    from lifelong.incremental.run import resolve_config, run_experiment

    strategy, overrides = PARTS[part][row]
    if part == "pre" and row == "ann cnn-28 teacher":
        protocol = {**protocol, "epochs": protocol["teacher_epochs"]}
    for component in ("kd", "rkd"):
        if overrides.get(component, {}).get("teacher_run") == TEACHER_RUN:
            teacher = _folder(out, "pre", "ann cnn-28 teacher", seed)
            overrides = {**overrides, component: {**overrides[component], "teacher_run": str(teacher)}}
    protocol = {k: v for k, v in protocol.items() if k != "teacher_epochs"}
    folder = _folder(out, part, row, seed)
    done = folder / "results.json"
    if done.exists() and not fresh:
        return {**json.loads(done.read_text()), "row": row, "part": part}
    n_exp = 5 if part.startswith("cil") else 1
    config = resolve_config(strategy=strategy, benchmark="split-fashion-mnist", seed=seed, device="cpu",
                            overrides={**protocol, "n_experiences": n_exp, **overrides})
    try:
        return {**run_experiment(config, out=folder, progress=False), "row": row, "part": part}
    except Exception as exc:  # one failing run is reported, the others still count
        return {"row": row, "part": part, "seed": seed, "error": f"{type(exc).__name__}: {exc}"}


def _density(summary: dict[str, Any]) -> float | None:
    """The mask density a sparse component reached (esl's, or the one nested in rkd's summary)."""
    for value in summary.values():
        if isinstance(value, dict):
            found = value["density"] if "density" in value else _density(value)
            if found is not None:
                return found
    return None


def inference_cost(names: tuple[str, ...] = ("cnn-28", "spiking-mnist", "spiking-mnist-half"), batch: int = 256,
                   repeats: int = 7) -> list[str]:
    """LaSNN's point is a smaller student: parameters and eval-mode forward time of each network on one batch of
    28x28 images (one thread, median of ``repeats``, the networks interleaved so they see the same load)."""
    import statistics

    import torch

    from lifelong.adapters.nets.backbones import build_backbone, spiking_network

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.rand(batch, 1, 28, 28)
    nets = {name: build_backbone(name, (1, 28, 28), 10).eval() for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.no_grad():
        for name, net in nets.items():
            net(x)  # warm-up
        for _ in range(repeats):
            for name, net in nets.items():
                t0 = time.perf_counter()
                net(x)
                times[name].append(time.perf_counter() - t0)
    lines = [f"inference cost, batch {batch} of 28x28, one thread, median of {repeats} interleaved; load "
             f"{os.getloadavg()[0]:.1f}",
             f"{'network':<22}{'parameters':>12}{'forward ms':>12}{'vs spiking-mnist':>18}"]
    base = statistics.median(times["spiking-mnist"]) if "spiking-mnist" in times else None
    for name, net in nets.items():
        ms = statistics.median(times[name]) * 1e3
        ratio = f"{ms / (base * 1e3):.2f}x" if base else "-"
        params = sum(p.numel() for p in net.parameters())
        lines.append(f"{name:<22}{params:>12,}{ms:>12.1f}{ratio:>18}" + ("" if spiking_network(net) else "  (ANN)"))
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--parts", default="one,pre,cil")
    p.add_argument("--train-per-class", type=int, default=100)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--teacher-epochs", type=int, default=12, help="epochs of the part-pre teacher")
    p.add_argument("--out", default="runs/bench-snn-methods")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--cost", action="store_true", help="also print parameters and forward time of the students")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    protocol = {"train_per_class": args.train_per_class, "test_per_class": args.test_per_class,
                "epochs": args.epochs, "teacher_epochs": args.teacher_epochs}
    tasks = [(part, row, seed, args.out, protocol, args.fresh) for part in parts for row in PARTS[part]
             for seed in seeds]
    t0 = time.time()
    # the teachers before their students (part pre's teacher row, also when only a later part needs it)
    first = [("pre", "ann cnn-28 teacher", seed, args.out, protocol, args.fresh) for seed in seeds
             if any(PARTS[t[0]][t[1]][1].get(c, {}).get("teacher_run") == TEACHER_RUN and t[2] == seed
                    for t in tasks for c in ("kd", "rkd"))]
    tasks = [t for t in tasks if t not in first]
    runs = run_all(one, first, args.jobs) + run_all(one, tasks, args.jobs)
    if "pre" not in parts:
        runs = [r for r in runs if r.get("part") != "pre"]
    print(f"split-fashion-mnist, {args.train_per_class} training / {args.test_per_class} test images a class, "
          f"{args.epochs} epochs an experience, seeds {seeds}; mean ± std over seeds in %; one thread a run, "
          f"{args.jobs} runs in parallel; bench wall time {time.time() - t0:.0f} s; load {os.getloadavg()[0]:.1f}")
    for part in parts:
        group = {row: [r for r in runs if r.get("part") == part and r.get("row") == row and "error" not in r]
                 for row in PARTS[part]}
        if part in ("one", "pre", "more"):
            print("\none experience (10 classes), spiking-mnist student unless said"
                  + (f"; teacher trained first for {args.teacher_epochs} epochs" if part == "pre" else ""))
            header = f"{'configuration':<58}{'accuracy':>16}{'run s':>8}{'density':>9}"
            keys = ("last_accuracy",)
        else:
            print("\n5 experiences x 2 classes, spiking-mnist" + (" extractors" if part == "cil-der" else ""))
            header = f"{'configuration':<58}{'AIA':>16}{'last':>16}{'forgetting':>16}{'run s':>8}{'density':>9}"
            keys = ("average_incremental_accuracy", "last_accuracy", "forgetting")
        print(header)
        print("-" * len(header))
        for row, rs in group.items():
            if not rs:
                continue
            wall = sum(r["wall_time_s"] for r in rs) / len(rs)
            dens = [_density(r["strategy_summary"].get("components", {})) for r in rs]
            dens_text = f"{sum(dens) / len(dens):.3f}" if all(d is not None for d in dens) else "-"
            n = f" (n={len(rs)})" if len(rs) != len(seeds) else ""
            print(f"{row:<58}" + "".join(f"{fmt([r[k] for r in rs]):>16}" for k in keys)
                  + f"{wall:>8.1f}{dens_text:>9}{n}")
    if args.cost:
        print()
        print("\n".join(inference_cost()))
    failures = [r for r in runs if "error" in r]
    for f in failures:
        print(f"FAILED: {f['part']} {f['row']} seed {f['seed']}: {f['error']}")
    print(f"command: {' '.join([Path(sys.executable).name, 'bench/snn_methods.py', *(argv if argv is not None else sys.argv[1:])])}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
