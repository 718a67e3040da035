"""split-digits table: SimE, ProP, Continual-CLIP and L2P beside naive fine-tuning, with the platform's defaults.

The pre-trained-backbone strategies run on the tiny open_clip/timm ViT with RANDOM weights (the digits are
resized from 8x8 grey to 32x32 RGB); naive uses its own small MLP on the raw 8x8 images. With random weights
these numbers show that the mechanics work (training, prototypes, prompts, evaluation, metrics), not what
the methods reach with pre-trained CLIP weights: Continual-CLIP in particular is at chance by construction.

    OMP_NUM_THREADS=1 .venv/bin/python bench/sime_split_digits.py [--seeds 0,1,2] [--out bench/out/split-digits]
"""

from __future__ import annotations

import argparse
import time

STRATEGIES = ["naive", "l2p", "continual-clip", "sime", "prop"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--out", default="bench/out/split-digits-pretrained")
    args = parser.parse_args()

    from lifelong.incremental.compare import compare
    from lifelong.incremental.results import format_summary_table

    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    summary = compare(args.strategies.split(","), "split-digits", seeds, out=args.out, progress=False, device="cpu")
    print(f"split-digits, 5 experiences of 2 classes, seeds {args.seeds} (mean ± std, %); "
          f"tiny ViT with RANDOM weights for l2p/continual-clip/sime/prop: mechanics only")
    print(format_summary_table(summary))
    print(f"total {time.perf_counter() - start:.0f} s; summary in {args.out}/summary.json")


if __name__ == "__main__":
    main()
