"""Inference overhead of SoLA's routed model against the base model on the same prompts (greedy generation,
batch 1 and batch 8), with 50 edits and with 10,000 extra synthetic keys in the router.

    python bench/edit_overhead.py [--edits 50] [--extra-keys 10000] [--new-tokens 16] [--reps 3]

The 50 edits have the real keys of 50 bundled edit prompts and random LoRA weights of the default shape (the
cost of routing and of applying a LoRA does not depend on what the LoRA learned). The prompts are half edit
prompts (routed: LoRA on) and half their locality prompts (not routed). Base and routed timings are interleaved
rep by rep (the machine is shared) and the ratio of medians is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edits", type=int, default=50)
    ap.add_argument("--extra-keys", type=int, default=10000)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    from lifelong.adapters.lm.model_loading import load_causal_lm
    from lifelong.editors.sola import SoLAConfig, SoLAEditor, lora_tensor_names

    model, tok = load_causal_lm()
    recs = [json.loads(x) for x in (ROOT / "lifelong/benchmarks/data/edits-smollm2.jsonl").read_text().splitlines()]
    recs = recs[: args.edits]
    prompts = [r["prompt"] for r in recs[:8]] + [r["locality"][0] for r in recs[:8]]
    ed = SoLAEditor(SoLAConfig())

    def gen(batch: int) -> float:
        t = time.perf_counter()
        for s in range(0, len(prompts), batch):
            chunk = prompts[s : s + batch]
            tok.padding_side = "left"
            enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad(), (ed.routing() if ed.routed is not None else _null()):
                model.generate(**enc, max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        tok.padding_side = "right"
        return time.perf_counter() - t

    def attach(extra: int) -> None:
        ed.attach(model, tok)
        keys = ed.key_of([r["prompt"] for r in recs])
        g = torch.Generator().manual_seed(0)
        for i, k in enumerate(keys):
            t = {}
            for w in ed.routed.wrappers:
                a, b = lora_tensor_names(w.name)
                t[a] = torch.randn(ed.config.rank, w.in_features, generator=g) * 0.01
                t[b] = torch.randn(w.out_features, ed.config.rank, generator=g) * 0.01
            ed.activate(i + 1, k, t)
        if extra:  # synthetic keys in the editor's router (ids with no LoRA here: a hit would mean the base output)
            ed.router.add(np.arange(1_000_000, 1_000_000 + extra),
                          torch.randn(extra, keys.shape[1], generator=g).numpy())

    results = {}
    for label, extra in ((f"{args.edits} edits", 0), (f"{args.edits} edits + {args.extra_keys} keys", args.extra_keys)):
        for batch in (1, 8):
            base_t, routed_t = [], []
            gen(batch)  # warm-up
            for _ in range(args.reps):
                ed.routed = None
                base_t.append(gen(batch))
                attach(extra)
                routed_t.append(gen(batch))
                ed.detach()
            ratio = statistics.median(routed_t) / statistics.median(base_t)
            results[(label, batch)] = ratio
            print(f"{label:28s} batch {batch}: base {statistics.median(base_t):6.2f} s  routed "
                  f"{statistics.median(routed_t):6.2f} s  ratio {ratio:.3f}", flush=True)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


if __name__ == "__main__":
    main()
