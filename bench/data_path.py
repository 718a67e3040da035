"""One naive epoch over the five experiences of split Fashion-MNIST: the platform's ``split-fashion-mnist`` stream
(the IDX files decoded once into one normalised float tensor) against plain Avalanche's ``SplitFMNIST``
(torchvision's ``FashionMNIST``: a PIL image per sample, then ``ToTensor`` and ``Normalize``), side by side in one
process, repeats interleaved (ours, plain, ours, plain, ...).

Both read the same four files: ours from Debian's ``dataset-fashion-mnist`` folder (or ``--data-root``), plain
Avalanche from ``<work>/FashionMNIST/raw/``, where the files are gunzipped once (torchvision reads the
uncompressed names). Both train the same network (Avalanche's ``SimpleMLP``, 784-512-10, from the same seed)
with Avalanche's ``Naive`` strategy: SGD lr 0.01 momentum 0.9, batch 32, one epoch per experience, no evaluation,
no loggers; ``--threads`` torch threads, the data loaded in the main process (``num_workers=0``, Avalanche's
default). Two figures per side: the epoch (data + training) and the data alone (the same DataLoader walk over
the five experiences without the model). Class orders are fixed to 0..9 on both sides so the experiences hold
the same classes.

    .venv/bin/python bench/data_path.py [--repeats 2] [--threads 2] [--measures data,epoch] [--data-root DIR] [--work /tmp/lifelong-fmnist]
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from lifelong.benchmarks.fashion_mnist import FILES, SplitFashionMNISTConfig, locate_files, split_fashion_mnist
from lifelong.incremental.streams import quiet_avalanche

ORDER = list(range(10))


def torchvision_layout(files: dict[str, Path], work: Path) -> Path:
    """``work/FashionMNIST/raw/<name>`` gunzipped (what torchvision's FashionMNIST reads); returns ``work``."""
    raw = work / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for key, src in files.items():
        dst = raw / FILES[key]
        if not dst.is_file():
            opener = gzip.open if src.read_bytes()[:2] == b"\x1f\x8b" else open
            with opener(src, "rb") as fin, open(dst.with_suffix(".part"), "wb") as fout:
                shutil.copyfileobj(fin, fout)
            dst.with_suffix(".part").rename(dst)
    return work


def ours_stream(data_root: str) -> Any:
    cfg = SplitFashionMNISTConfig(data_root=data_root, n_experiences=5, class_order=ORDER, shuffle_classes=False)
    return split_fashion_mnist(cfg).scenario


def plain_stream(root: Path) -> Any:
    with quiet_avalanche():
        from avalanche.benchmarks.classic import SplitFMNIST
    return SplitFMNIST(5, fixed_class_order=ORDER, dataset_root=str(root), seed=0)


def naive_epoch(scenario: Any) -> float:
    """Seconds of one training epoch per experience with Avalanche's Naive (no evaluation, no loggers)."""
    from avalanche.models import SimpleMLP
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.supervised import Naive

    torch.manual_seed(0)
    model = SimpleMLP(num_classes=10)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                     train_mb_size=32, train_epochs=1, device="cpu", evaluator=EvaluationPlugin(loggers=[]))
    t0 = time.perf_counter()
    for exp in scenario.train_stream:
        strategy.train(exp, num_workers=0)
    return time.perf_counter() - t0


def data_only(scenario: Any) -> float:
    """Seconds to walk every training experience once in shuffled batches of 32, without a model."""
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    t0 = time.perf_counter()
    n = 0
    for exp in scenario.train_stream:
        for batch in DataLoader(exp.dataset.train(), batch_size=32, shuffle=True, num_workers=0):
            n += len(batch[0])
    assert n == 60000, n
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--measures", default="data,epoch", help="which figures, in this order: data, epoch")
    p.add_argument("--data-root", default="", help="folder of the four IDX files ('' = the Debian package's)")
    p.add_argument("--work", default="/tmp/lifelong-fmnist", help="where torchvision's layout is written")
    args = p.parse_args(argv)
    unknown = set(args.measures.split(",")) - {"data", "epoch"}
    if unknown:
        p.error(f"--measures: {', '.join(sorted(unknown))} not allowed; allowed values: data, epoch")
    torch.set_num_threads(args.threads)
    files = locate_files(args.data_root)
    root = torchvision_layout(files, Path(args.work))

    with quiet_avalanche():  # imported before the clocks start: the first import costs both sides the same
        import avalanche.benchmarks.classic  # noqa: F401
        import avalanche.training  # noqa: F401
    t0 = time.perf_counter()
    ours = ours_stream(args.data_root)
    build_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    plain = plain_stream(root)
    build_plain = time.perf_counter() - t0
    sides: dict[str, Any] = {"ours": ours, "plain": plain}
    print(f"stream build: ours {build_ours:.1f} s, plain Avalanche {build_plain:.1f} s; {args.threads} torch "
          f"thread(s), {args.repeats} interleaved repeat(s); torch {torch.__version__}")
    for side, sc in sides.items():
        x, y, *_ = sc.train_stream[0].dataset[0]
        print(f"  {side}: first sample {type(x).__name__} {tuple(x.shape)} {x.dtype}, label {int(y)}, "
              f"{sum(len(e.dataset) for e in sc.train_stream)} training samples")

    measures: dict[str, Callable[[Any], float]] = {"data": data_only, "epoch": naive_epoch}
    measures = {m: measures[m] for m in args.measures.split(",")}
    times: dict[tuple[str, str], list[float]] = {(m, s): [] for m in measures for s in sides}
    for r in range(args.repeats):
        for m, fn in measures.items():
            for side, sc in sides.items():
                dt = fn(sc)
                times[(m, side)].append(dt)
                print(f"  repeat {r + 1}: {m:<5} {side:<5} {dt:7.1f} s", flush=True)
    if not args.repeats:
        return 0
    print(f"\n{'':<7}{'ours s':>9}{'plain s':>10}{'plain / ours':>14}")
    for m in measures:
        o, pl = statistics.median(times[(m, "ours")]), statistics.median(times[(m, "plain")])
        print(f"{m:<7}{o:>9.1f}{pl:>10.1f}{pl / o:>14.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
