"""Does ALADE-SNN beat its own ablations, and how far is it from ANN DER at what energy? On split-fashion-mnist.

Variants, all from ``configs/alade-snn/split-fashion-mnist.yaml`` (spiking ``resnet-mnist`` extractors, T = 4) and
the bench protocol of ``bench/cil_fashion.py`` (``--train-per-class`` / ``--test-per-class`` seeded subsets):

- ``alade-snn``: the config as it is (logit alignment and OtoN on);
- ``no-align``: ``logit_alignment=false`` (classifier fine-tuning without the adaptive offset);
- ``no-oton``: ``oton=false`` (old extractors' features may feed the new classes' logits);
- ``spiking-der``: both off: spiking DER with the same KD and auxiliary loss;
- ``ann-twin``: ``neuron=relu``: the same learner, config and extractor with ReLU instead of LIF neurons (T = 1),
  so the only difference is the neuron: the same schedule, memory, distillation, OtoN, logit alignment and
  classifier handling (no bias, no reuse of old weights, re-initialisation before fine-tuning). The bench prints
  the two resolved configs side by side. (An earlier ``ann-der`` variant ran ``der`` with the spiking-only keys
  dropped, which also dropped the distillation and the classifier choices: not a twin.)

Every comparison with ``alade-snn`` is paired by seed (a seed fixes the class order and the subsets, so both runs
see the same stream): the table gives the mean difference and its 95 % t-interval over seeds. The energy column
is the learner's own estimate of one forward pass per sample (4.6 pJ per multiply-accumulate, 0.9 pJ per
spike-driven accumulate). ``alade-snn`` runs land in the same folders as ``bench/cil_fashion.py``'s, so the
evidence table reuses them.

    .venv/bin/python bench/alade_ablation.py --seeds 0,1,2,3,4 --train-per-class 200 --test-per-class 200 --jobs 2
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cil_fashion import REPO, fmt, parse_protocol, run_all, run_dir, t_interval  # noqa: E402

CONFIG = REPO / "configs" / "alade-snn" / "split-fashion-mnist.yaml"
#: variant -> (strategy, overrides on top of the config's strategy settings)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "alade-snn": ("alade-snn", {}),
    "no-align": ("alade-snn", {"logit_alignment": False}),
    "no-oton": ("alade-snn", {"oton": False}),
    "spiking-der": ("alade-snn", {"logit_alignment": False, "oton": False}),
    "ann-twin": ("alade-snn", {"neuron": "relu"}),
}


def resolved(variant: str, seed: int, protocol: dict[str, Any]) -> Any:
    """The run config of ``variant`` (the ALADE-SNN config, the protocol and the variant's changes)."""
    from lifelong.incremental.run import resolve_config

    return resolve_config(config_file=CONFIG, seed=seed, device="cpu", overrides={**protocol, **VARIANTS[variant][1]})


def side_by_side(protocol: dict[str, Any], a: str = "alade-snn", b: str = "ann-twin") -> str:
    """Both variants' resolved strategy configs, key by key, the differing keys marked with ``*``."""
    from lifelong.platform.config import to_dict

    left, right = (to_dict(resolved(v, 0, protocol).strategy_config) for v in (a, b))
    lines = [f"  {'key':<24}{a:>24}{b:>24}"]
    for key in sorted(set(left) | set(right)):
        mark = "*" if left.get(key) != right.get(key) else " "
        lines.append(f"{mark} {key:<24}{str(left.get(key)):>24}{str(right.get(key)):>24}")
    return "\n".join(lines)


def one(args: tuple[str, int, str, dict[str, Any], bool]) -> dict[str, Any]:
    variant, seed, out, protocol, fresh = args
    import torch

    torch.set_num_threads(1)
    from lifelong.incremental.run import run_experiment

    folder = run_dir(out, variant, seed)
    done = folder / "results.json"
    if done.exists() and not fresh:
        return {**json.loads(done.read_text()), "variant": variant}
    try:
        config = resolved(variant, seed, protocol)
        return {**run_experiment(config, out=folder, progress=False), "variant": variant}
    except Exception as exc:  # one failing run is reported, the others still count
        return {"variant": variant, "seed": seed, "error": f"{type(exc).__name__}: {exc}"}


def paired(a: list[float], b: list[float]) -> str:
    """Mean of a - b in points with its 95 % t-interval over the paired seeds."""
    mean, low, high = t_interval([x - y for x, y in zip(a, b)])
    return f"{mean:+6.2f}" if len(a) < 2 else f"{mean:+6.2f} [{low:+6.2f}, {high:+6.2f}]"


def main(argv: list[str] | None = None) -> int:
    import numpy as np

    args, seeds, variants, protocol = parse_protocol(argv, __doc__.splitlines()[0], list(VARIANTS))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"alade_ablation: unknown variant(s) {unknown}; allowed: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    # seed by seed, so a bench stopped early still holds complete pairs for the seeds it finished
    tasks = [(v, seed, args.out, protocol, args.fresh) for seed in seeds for v in variants]
    t0 = time.time()
    runs = run_all(one, tasks, args.jobs)
    by_variant: dict[str, dict[int, dict[str, Any]]] = {}
    for r in runs:
        if "error" not in r:
            by_variant.setdefault(r["variant"], {})[int(r["seed"])] = r
    print(f"split-fashion-mnist, 5 x 2 classes, {args.train_per_class} train / {args.test_per_class} test images a "
          f"class, seeds {seeds}, {CONFIG.relative_to(REPO)} (resnet-mnist, T = 4); mean ± std in %; "
          f"differences to alade-snn paired by seed, mean [95 % t-interval] in points; bench wall time "
          f"{time.time() - t0:.0f} s")
    header = (f"{'variant':<12}{'AIA':>16}{'last':>16}{'AIA - alade':>27}{'last - alade':>27}{'run s':>8}"
              f"{'uJ/sample':>11}")
    print(header)
    print("-" * len(header))
    base = by_variant.get("alade-snn", {})
    for variant in variants:
        group = by_variant.get(variant, {})
        if not group:
            continue
        common = sorted(set(group) & set(base))
        rows = list(group.values())
        mean_std = [fmt([r[key] for r in rows]) for key in ("average_incremental_accuracy", "last_accuracy")]
        diffs = ["" if variant == "alade-snn" else
                 paired([group[s][key] for s in common], [base[s][key] for s in common])
                 for key in ("average_incremental_accuracy", "last_accuracy")]
        energy = [r.get("strategy_summary", {}).get("ops", {}).get("energy_uj_per_sample") for r in rows]
        energy_text = f"{np.mean(energy):.1f}" if all(e is not None for e in energy) else "-"
        wall = np.mean([r["wall_time_s"] for r in rows])
        n = f" (n={len(group)})" if len(group) != len(seeds) else ""
        print(f"{variant:<12}{mean_std[0]:>16}{mean_std[1]:>16}{diffs[0]:>27}{diffs[1]:>27}{wall:>8.1f}"
              f"{energy_text:>11}{n}")
    if "ann-twin" in variants:
        print("\nresolved strategy configs (* = differs):\n" + side_by_side(protocol))
    failures = [r for r in runs if "error" in r]
    for f in failures:
        print(f"FAILED: {f['variant']} seed {f['seed']}: {f['error']}")
    shown = argv if argv is not None else sys.argv[1:]
    print(f"command: {' '.join([Path(sys.executable).name, 'bench/alade_ablation.py', *shown])}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
