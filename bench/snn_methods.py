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
  same epochs as in ``one``, whose ``snn alone`` row is their baseline. The part also trains LaSNN's larger
  teacher (``cnn-small``, 4.8x the parameters of ``spiking-mnist-half``) the same way;
- ``cil``: 5 experiences of 2 classes, ``spiking-mnist``: naive, replay (200 samples), naive + ``kd`` with the
  previous model as teacher, naive + ``esl`` with per-experience masks (density 0.2 each). Reported: average
  incremental accuracy, last accuracy, forgetting;
- ``more``: one experience again: the student alone with cross-entropy and with ``loss=tet``; LaSNN's smaller
  student (``spiking-mnist-half``, a quarter of the parameters) alone and distilled with attention KD and the
  layer-wise schedule from part ``pre``'s trained ``cnn-small`` (the LaSNN row: a teacher 4.8x the student, as
  the paper distils a large ANN into a smaller SNN) and, beside it, from the trained ``cnn-28`` (1.2x); the
  ``teacher x`` column gives each row's teacher/student parameter ratio and the paired differences against
  the half student alone are printed under the table; ``esl`` at 0.2 beside ``rkd`` at 0.2 (hint KD from the
  trained ``cnn-28``, distillation-aware prune score); ``--cost`` adds the networks' parameters and forward
  time;
- ``cil-der``: 5 experiences with ``der`` on ``spiking-mnist`` extractors (memory 200, the classifier's
  fine-tuning shortened to 8 epochs), alone and with ``kd`` against forgetting.

A run's folder is keyed by its resolved configuration (``run_folder``): rows of different parts with the same
configuration (``snn alone`` in ``one`` and ``more``) are one run, made once and printed with the same figure.
Each run uses one torch thread; ``--jobs`` runs in parallel; runs already in ``--out`` are reused (``--fresh``
reruns). Needs the Fashion-MNIST files (``make data``).

    nice -n 5 .venv/bin/python bench/snn_methods.py --seeds 0,1,2 --train-per-class 100 --test-per-class 100 --jobs 2
"""

from __future__ import annotations

import argparse
import functools
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

#: the teachers trained first (part ``pre``, ``--teacher-epochs`` epochs, their own runs): backbone -> row
TEACHER_ROWS: dict[str, str] = {"cnn-28": "ann cnn-28 teacher", "cnn-small": "ann cnn-small teacher"}
#: LaSNN's student and its row (the teacher must stay at least 4x the student; tests/test_snn_methods_bench.py)
HALF_STUDENT = "spiking-mnist-half"
LASNN_ROW = "half snn + kd attention layerwise, cnn-small teacher (LaSNN)"


def _teacher(model: str) -> str:
    """A placeholder for the run folder of part ``pre``'s trained ``model`` teacher of the same seed."""
    return f"{{teacher:{model}}}"


def _kd(**options: Any) -> dict[str, Any]:
    return {**STUDENT, "components": ["kd"], "kd": {**KD["kd"], **options}}


def _esl(**options: Any) -> dict[str, Any]:
    return {**STUDENT, "components": ["esl"], "esl": {**ESL["esl"], **options}}


def _lasnn(teacher: str) -> dict[str, Any]:
    """The half student distilled from part ``pre``'s trained ``teacher`` by attention maps, layer by layer."""
    return {**_kd(teacher="checkpoint", teacher_run=_teacher(teacher), teacher_model=teacher, feature="attention",
                  schedule="layerwise"), "model": HALF_STUDENT}


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
        "ann cnn-small teacher": ("naive", {"model": "cnn-small", "lr": 0.05}),
        "snn + kd response, trained teacher": ("naive", _kd(teacher="checkpoint", teacher_run=_teacher("cnn-28"))),
        "snn + kd hint, trained teacher": ("naive", _kd(teacher="checkpoint", teacher_run=_teacher("cnn-28"),
                                                         feature="hint")),
    },
    "more": {
        "snn alone": ("naive", dict(STUDENT)),
        "snn alone, loss=tet": ("naive", {**STUDENT, "loss": "tet"}),
        "half snn alone": ("naive", {**STUDENT, "model": HALF_STUDENT}),
        "half snn + kd attention layerwise, cnn-28 teacher": ("naive", _lasnn("cnn-28")),
        LASNN_ROW: ("naive", _lasnn("cnn-small")),
        "snn + esl 0.2": ("naive", _esl(density=0.2)),
        "snn + rkd 0.2, trained teacher": (
            "naive", {**STUDENT, "components": ["rkd"],
                      "rkd": {**KD["kd"], **ESL["esl"], "teacher": "checkpoint", "teacher_run": _teacher("cnn-28"),
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


def teacher_of(overrides: dict[str, Any]) -> str | None:
    """The backbone of the trained teacher a row distils from (its ``{teacher:MODEL}`` placeholder), else None."""
    for component in ("kd", "rkd"):
        run = overrides.get(component, {}).get("teacher_run", "")
        if run.startswith("{teacher:"):
            return run[len("{teacher:"):-1]
    return None


def run_folder(out: str, config: Any) -> Path:
    """A run's folder, keyed by its resolved configuration (``RunConfig.identity``, every default filled in):
    two rows that resolve to the same configuration share one folder, so they are one run and one figure."""
    import hashlib

    identity = config.identity()
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]
    model = identity["strategy_config"].get("model", "auto")
    return Path(out) / "runs" / f"{identity['strategy']}-{model}-seed{identity['seed']}-{digest}"


def resolved(part: str, row: str, seed: int, out: str, protocol: dict[str, Any]) -> tuple[Any, Path]:
    """The row's ``RunConfig`` for ``seed`` and its folder; a trained-teacher placeholder becomes the folder of
    part ``pre``'s teacher run (teacher rows train ``teacher_epochs`` epochs)."""
    from lifelong.incremental.run import resolve_config

    strategy, overrides = PARTS[part][row]
    teacher = teacher_of(overrides)
    if teacher is not None:
        teacher_folder = str(resolved("pre", TEACHER_ROWS[teacher], seed, out, protocol)[1])
        overrides = {**overrides, **{c: {**overrides[c], "teacher_run": teacher_folder}
                                     for c in ("kd", "rkd") if c in overrides}}
    if part == "pre" and row in TEACHER_ROWS.values():
        protocol = {**protocol, "epochs": protocol["teacher_epochs"]}
    protocol = {k: v for k, v in protocol.items() if k != "teacher_epochs"}
    n_exp = 5 if part.startswith("cil") else 1
    config = resolve_config(strategy=strategy, benchmark="split-fashion-mnist", seed=seed, device="cpu",
                            overrides={**protocol, "n_experiences": n_exp, **overrides})
    return config, run_folder(out, config)


def one(task: tuple[str, str, int, str, dict[str, Any], bool]) -> dict[str, Any]:
    part, row, seed, out, protocol, fresh = task
    import torch

    torch.set_num_threads(1)
    from lifelong.incremental.run import run_experiment

    config, folder = resolved(part, row, seed, out, protocol)
    done = folder / "results.json"
    if done.exists() and not fresh:
        return {**json.loads(done.read_text()), "row": row, "part": part}
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


@functools.lru_cache(maxsize=None)
def parameters(name: str) -> int:
    """Parameters of backbone ``name`` for 1x28x28 images and 10 classes (the networks of this bench)."""
    # (cached: every table row with a teacher asks for two of them)
    from lifelong.adapters.nets.backbones import build_backbone

    return sum(p.numel() for p in build_backbone(name, (1, 28, 28), 10).parameters())


def inference_cost(names: tuple[str, ...] = ("cnn-28", "cnn-small", "spiking-mnist", HALF_STUDENT),
                   batch: int = 256, repeats: int = 7) -> list[str]:
    """LaSNN's point is a smaller student: parameters (and their ratio to the half student's) and eval-mode
    forward time of each network on one batch of 28x28 images (one thread, median of ``repeats``, the networks
    interleaved so they see the same load)."""
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
             f"{'network':<22}{'parameters':>12}{'x half':>8}{'forward ms':>12}{'vs spiking-mnist':>18}"]
    base = statistics.median(times["spiking-mnist"]) if "spiking-mnist" in times else None
    half = parameters(HALF_STUDENT)
    for name, net in nets.items():
        ms = statistics.median(times[name]) * 1e3
        ratio = f"{ms / (base * 1e3):.2f}x" if base else "-"
        params = sum(p.numel() for p in net.parameters())
        lines.append(f"{name:<22}{params:>12,}{params / half:>7.2f}x{ms:>12.1f}{ratio:>18}"
                     + ("" if spiking_network(net) else "  (ANN)"))
    return lines


def teacher_ratio(overrides: dict[str, Any]) -> str:
    """``teacher/student`` parameters of a row distilled from a trained teacher (``4.77x``), else ``-``."""
    teacher = teacher_of(overrides)
    if teacher is None:
        return "-"
    return f"{parameters(teacher) / parameters(overrides.get('model', STUDENT['model'])):.2f}x"


def paired(rows: dict[str, list[dict[str, Any]]], row: str, baseline: str) -> str | None:
    """``row - baseline`` in last accuracy, paired by seed: mean and 95 % t-interval over the common seeds."""
    from cil_fashion import t_interval

    a = {r["seed"]: r["last_accuracy"] for r in rows.get(row, [])}
    b = {r["seed"]: r["last_accuracy"] for r in rows.get(baseline, [])}
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        return None
    mean, low, high = t_interval([a[s] - b[s] for s in seeds])
    return f"{row} - {baseline}: {mean:+.2f} points, 95 % t-interval [{low:+.2f}, {high:+.2f}], seeds {seeds}"


def print_part(part: str, rows: dict[str, list[dict[str, Any]]], n_seeds: int, teacher_epochs: int) -> None:
    """One part's table: mean ± std over seeds per row, with the teacher/student ratio for one experience."""
    single = part in ("one", "pre", "more", "teachers")
    if single:
        print("\none experience (10 classes), spiking-mnist student unless said"
              + (f"; teachers trained first for {teacher_epochs} epochs" if part in ("pre", "teachers") else ""))
        header = f"{'configuration':<62}{'accuracy':>16}{'teacher x':>10}{'run s':>8}{'density':>9}"
        keys: tuple[str, ...] = ("last_accuracy",)
    else:
        print("\n5 experiences x 2 classes, spiking-mnist" + (" extractors" if part == "cil-der" else ""))
        header = f"{'configuration':<62}{'AIA':>16}{'last':>16}{'forgetting':>16}{'run s':>8}{'density':>9}"
        keys = ("average_incremental_accuracy", "last_accuracy", "forgetting")
    print(header)
    print("-" * len(header))
    for row, rs in rows.items():
        if not rs:
            continue
        wall = sum(r["wall_time_s"] for r in rs) / len(rs)
        dens = [_density(r["strategy_summary"].get("components", {})) for r in rs]
        dens_text = f"{sum(dens) / len(dens):.3f}" if all(d is not None for d in dens) else "-"
        n = f" (n={len(rs)})" if len(rs) != n_seeds else ""
        ratio = f"{teacher_ratio(PARTS['pre' if part == 'teachers' else part][row][1]):>10}" if single else ""
        print(f"{row:<62}" + "".join(f"{fmt([r[k] for r in rs]):>16}" for k in keys)
              + f"{ratio}{wall:>8.1f}{dens_text:>9}{n}")
    if part == "more":
        for row in ("half snn + kd attention layerwise, cnn-28 teacher", LASNN_ROW):
            line = paired(rows, row, "half snn alone")
            if line:
                print("paired: " + line)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--parts", default="one,pre,cil")
    p.add_argument("--train-per-class", type=int, default=100)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--teacher-epochs", type=int, default=12, help="epochs of the part-pre teachers")
    p.add_argument("--out", default="runs/bench-snn-methods")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--cost", action="store_true", help="also print parameters and forward time of the networks")
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        print(f"--seeds: expected comma-separated integers, got {args.seeds!r}", file=sys.stderr)
        return 2
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    unknown = [part for part in parts if part not in PARTS]
    if unknown:
        print(f"--parts: unknown part {unknown[0]!r}; allowed values: {', '.join(PARTS)}", file=sys.stderr)
        return 2
    protocol = {"train_per_class": args.train_per_class, "test_per_class": args.test_per_class,
                "epochs": args.epochs, "teacher_epochs": args.teacher_epochs}
    tasks = [(part, row, seed, args.out, protocol, args.fresh) for part in parts for row in PARTS[part]
             for seed in seeds]
    # the teachers the rows name, before their students (also when only a later part needs them)
    teachers = {(teacher_of(PARTS[t[0]][t[1]][1]), t[2]) for t in tasks} - {(None, s) for s in seeds}
    first = [("pre", TEACHER_ROWS[model], seed, args.out, protocol, args.fresh) for model, seed in sorted(teachers)]
    tasks = first + [t for t in tasks if t not in first]
    # one run per resolved configuration: rows that resolve alike share the run (and its figure)
    folders = [resolved(*t[:5])[1] for t in tasks]
    unique: dict[Path, tuple] = {}
    for folder, task in zip(folders, tasks):
        unique.setdefault(folder, task)
    t0 = time.time()
    n_first = len({f for f, t in zip(folders, tasks) if t in first})
    made = run_all(one, list(unique.values())[:n_first], args.jobs) + run_all(one, list(unique.values())[n_first:],
                                                                                args.jobs)
    by_folder = dict(zip(unique, made))
    runs = [{**by_folder[f], "row": t[1], "part": t[0]} for f, t in zip(folders, tasks)]
    print(f"split-fashion-mnist, {args.train_per_class} training / {args.test_per_class} test images a class, "
          f"{args.epochs} epochs an experience, seeds {seeds}; mean ± std over seeds in %; one thread a run, "
          f"{args.jobs} runs in parallel; {len(unique)} runs for {len(tasks)} rows x seeds; bench wall time "
          f"{time.time() - t0:.0f} s; load {os.getloadavg()[0]:.1f}")
    shown = parts if "pre" in parts or not first else ["teachers", *parts]
    for part in shown:
        names = [r for r in PARTS["pre"] if r in TEACHER_ROWS.values()] if part == "teachers" else list(PARTS[part])
        source = "pre" if part == "teachers" else part
        group = {row: [r for r in runs if r["part"] == source and r["row"] == row and "error" not in r]
                 for row in names}
        print_part(part, group, len(seeds), args.teacher_epochs)
    if args.cost:
        print()
        print("\n".join(inference_cost()))
    failures = {(r["part"], r["row"], r["seed"]): r for r in runs if "error" in r}
    for f in failures.values():
        print(f"FAILED: {f['part']} {f['row']} seed {f['seed']}: {f['error']}")
    print(f"command: {' '.join([Path(sys.executable).name, 'bench/snn_methods.py', *(argv if argv is not None else sys.argv[1:])])}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
