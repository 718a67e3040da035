"""``lifelong run`` against a hand-written plain Avalanche loop, on the same split-fashion-mnist protocol.

The same stream (split-fashion-mnist's files, split, seeded class order and subsets, built once by the benchmark
factory), the same backbone (``cnn-28``), epochs, batch size, optimizer, learning rate and memory as
``configs/<strategy>/split-fashion-mnist.yaml``, for naive, ewc, lwf, replay, icarl, gdumb and dark-er:

- lifelong: ``run_experiment`` on the config (the runs of ``bench/cil_fashion.py`` with the same protocol and
  ``--out`` are reused);
- plain Avalanche: the Avalanche 0.6 strategy class built by hand (``Naive``, ``EWC``, ``LwF``, ``Replay``,
  ``ICaRL``, ``GDumb``, ``DER``) with Avalanche's own defaults where lifelong changes them (Replay's
  experience-balanced buffer instead of lifelong's class-balanced one, Replay's own plugin), ``strategy.train``
  on each experience, then top-1 accuracy on every test experience with a plain loop (``strategy.model`` in eval
  mode, as lifelong's runner does). iCaRL gets the same ``experience.benchmark`` patch lifelong gives it (Avalanche
  0.6's iCaRL reads the class split from there).

Seeds differ in how they are consumed (lifelong reseeds every step), so the accuracies agree within seed noise,
not bit for bit. Time is training plus evaluation of each run, one torch thread each.

    .venv/bin/python bench/avalanche_side_by_side.py --seeds 0,1,2 --train-per-class 300 --test-per-class 300 --jobs 2
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cil_fashion import REPO, fmt, one, parse_protocol, run_all  # noqa: E402  (the lifelong side: the evidence table's runs)

STRATEGIES = ("naive", "ewc", "lwf", "replay", "icarl", "gdumb", "dark-er")


def plain(args: tuple[str, int, str, dict[str, Any], bool]) -> dict[str, Any]:
    """One run of the hand-written Avalanche loop (results cached in ``out/plain-<strategy>-seed<seed>.json``)."""
    strategy, seed, out, protocol, fresh = args
    cache = Path(out) / f"plain-{strategy}-seed{seed}.json"
    if cache.exists() and not fresh:
        return json.loads(cache.read_text())
    import random
    import warnings

    warnings.filterwarnings("ignore")  # Avalanche's "no loggers specified" and deprecation notes
    import numpy as np
    import torch
    from torch import nn

    torch.set_num_threads(1)
    import avalanche.training as avl
    from avalanche.training.plugins import EvaluationPlugin

    from lifelong.adapters.nets.backbones import build_backbone
    from lifelong.incremental.metrics import cil_metrics
    from lifelong.platform import registry
    from lifelong.platform.config import load_yaml

    cfg = load_yaml(REPO / "configs" / strategy / "split-fashion-mnist.yaml")["strategy_config"]
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    stream = registry.create("benchmark", "split-fashion-mnist", seed=seed, n_experiences=5, **protocol)
    model = build_backbone("cnn-28", stream.input_shape, stream.n_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg.get("momentum", 0.9),
                                weight_decay=cfg.get("weight_decay", 0.0))
    common = dict(train_mb_size=cfg["batch_size"], train_epochs=cfg["epochs"], eval_mb_size=256, device="cpu",
                  evaluator=EvaluationPlugin(loggers=[]))
    loss = nn.CrossEntropyLoss()
    if strategy == "icarl":
        learner = avl.ICaRL(feature_extractor=model.features, classifier=model.classifier, optimizer=optimizer,
                            memory_size=cfg["mem_size"], buffer_transform=None, fixed_memory=True, **common)
    else:
        cls, extra = {
            "naive": (avl.Naive, {}),
            "ewc": (avl.EWC, {"ewc_lambda": cfg.get("ewc_lambda", 100.0), "mode": "separate"}),
            "lwf": (avl.LwF, {"alpha": cfg.get("alpha", 1.0), "temperature": cfg.get("temperature", 2.0)}),
            "replay": (avl.Replay, {"mem_size": cfg.get("mem_size", 200)}),
            "gdumb": (avl.GDumb, {"mem_size": cfg.get("mem_size", 200)}),
            "dark-er": (avl.DER, {"mem_size": cfg.get("mem_size", 200), "alpha": cfg.get("alpha", 0.1),
                                  "beta": cfg.get("beta", 0.5)}),
        }[strategy]
        learner = cls(model=model, optimizer=optimizer, criterion=loss, **common, **extra)

    def accuracy(experience: Any) -> float:
        net = learner.model
        net.eval()
        correct = total = 0
        loader = torch.utils.data.DataLoader(experience.dataset.eval(), batch_size=256, shuffle=False)
        with torch.no_grad():
            for batch in loader:
                correct += int((net(batch[0]).argmax(1) == batch[1]).sum())
                total += len(batch[1])
        return correct / max(total, 1)

    n = stream.n_experiences
    matrix = np.zeros((n, n))
    t0 = time.perf_counter()
    for i, experience in enumerate(stream.train_stream):
        if strategy == "icarl":
            experience = copy.copy(experience)
            experience.benchmark = SimpleNamespace(n_classes_per_exp=[len(c) for c in stream.classes_per_experience],
                                                   classes_order=list(range(stream.n_classes)))
        learner.train(experience, num_workers=0)
        matrix[i] = [accuracy(stream.test_stream[j]) for j in range(n)]
    elapsed = time.perf_counter() - t0
    sizes = [len(stream.test_stream[j].dataset) for j in range(n)]
    results = {"strategy": strategy, "seed": seed, "accuracy_matrix": matrix.tolist(), "wall_time_s": elapsed,
               **cil_metrics(matrix, sizes)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(results, indent=2) + "\n")
    return results


def dispatch(task: tuple[str, str, int, str, dict[str, Any], bool]) -> dict[str, Any]:
    side, *rest = task
    try:
        return {"side": side, **(one if side == "lifelong" else plain)(tuple(rest))}
    except Exception as exc:
        return {"side": side, "strategy": rest[0], "seed": rest[1], "error": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str] | None = None) -> int:
    args, seeds, strategies, protocol = parse_protocol(argv, __doc__.splitlines()[0], STRATEGIES)
    tasks = [(side, s, seed, args.out, protocol, args.fresh)
             for s in strategies for seed in seeds for side in ("lifelong", "plain")]
    t0 = time.time()
    runs = run_all(dispatch, tasks, args.jobs)
    print(f"split-fashion-mnist, 5 x 2 classes, {args.train_per_class} train / {args.test_per_class} test images a "
          f"class, seeds {seeds}; lifelong run vs plain Avalanche 0.6 loop; mean ± std over seeds in %; "
          f"time = train + eval of a run, one thread; bench wall time {time.time() - t0:.0f} s")
    header = (f"{'strategy':<9}{'AIA lifelong':>16}{'AIA plain':>16}{'last lifelong':>16}{'last plain':>16}"
              f"{'s lifelong':>11}{'s plain':>9}{'ratio':>7}")
    print(header)
    print("-" * len(header))
    for s in strategies:
        ll = [r for r in runs if r["side"] == "lifelong" and r["strategy"] == s and "error" not in r]
        pl = [r for r in runs if r["side"] == "plain" and r["strategy"] == s and "error" not in r]
        if not ll or not pl:
            continue
        t_ll = sum(r["wall_time_s"] for r in ll) / len(ll)
        t_pl = sum(r["wall_time_s"] for r in pl) / len(pl)
        print(f"{s:<9}{fmt([r['average_incremental_accuracy'] for r in ll]):>16}"
              f"{fmt([r['average_incremental_accuracy'] for r in pl]):>16}"
              f"{fmt([r['last_accuracy'] for r in ll]):>16}{fmt([r['last_accuracy'] for r in pl]):>16}"
              f"{t_ll:>11.1f}{t_pl:>9.1f}{t_ll / t_pl:>7.2f}")
    failures = [r for r in runs if "error" in r]
    for f in failures:
        print(f"FAILED: {f['side']} {f['strategy']} seed {f['seed']}: {f['error']}")
    print(f"command: {' '.join(['python', 'bench/avalanche_side_by_side.py', *(argv if argv is not None else sys.argv[1:])])}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
