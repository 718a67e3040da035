"""Which hidden state makes a good SoLA routing key? Measured on the bundled edit set.

For each candidate key site (layer L, module input) the script takes every edit prompt's key, stores them all, and
asks the routing question for each paraphrase (should route to its own edit) and each locality prompt (should
route nowhere): with cosine distance on L2-normalised keys, optionally centred by the mean key of a fixed set of
generic prompts. It prints, per site, the best threshold and the paraphrase/locality routing accuracy there.

    python bench/edit_keys.py [--layers 4,8,12,16,20,24] [--modules mlp.down_proj,self_attn.q_proj]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "lifelong" / "benchmarks" / "data" / "edits-smollm2.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", default="4,8,12,16,20,24")
    ap.add_argument("--modules", default="mlp.down_proj,self_attn.q_proj,mlp.gate_proj")
    args = ap.parse_args()
    from lifelong.adapters.lm.edit_io import edit_module_names
    from lifelong.adapters.lm.model_loading import load_causal_lm
    from lifelong.editors.sola import GENERIC_PROMPTS

    model, tok = load_causal_lm()
    recs = [json.loads(x) for x in DATA.read_text().splitlines() if x.strip()]
    texts, kinds, owner = [], [], []
    for i, r in enumerate(recs):
        texts.append(r["prompt"]); kinds.append("edit"); owner.append(i)
        for p in r["paraphrases"]:
            texts.append(p); kinds.append("para"); owner.append(i)
        for p in r["locality"]:
            texts.append(p); kinds.append("loc"); owner.append(i)
    all_texts = texts + list(GENERIC_PROMPTS)
    layers = [int(x) for x in args.layers.split(",")]
    mods = args.modules.split(",")
    sites = [(m, n) for m in mods for n in edit_module_names(model, layers, m)]
    caught: dict[str, list[torch.Tensor]] = {n: [] for _, n in sites}
    hooks = []
    for _, n in sites:
        hooks.append(model.get_submodule(n).register_forward_pre_hook(
            lambda mod, inp, n=n: caught[n].append(inp[0][0, -1].float().clone())))
    with torch.no_grad():
        for t in all_texts:
            model(**tok(t, return_tensors="pt", add_special_tokens=False))
    for h in hooks:
        h.remove()
    kinds_a = np.array(kinds)
    owner_a = np.array(owner)
    print(f"{len(recs)} edits, {int((kinds_a == 'para').sum())} paraphrases, {int((kinds_a == 'loc').sum())} locality prompts")
    print(f"{'site':42s} {'centred':8s} {'alpha':>6s} {'para->own':>9s} {'loc->none':>9s} {'sum':>6s}")
    for _, n in sites:
        X = torch.stack(caught[n]).numpy()
        for centred in (False, True):
            Y = X[: len(texts)]
            if centred:
                Y = Y - X[len(texts):].mean(0, keepdims=True)
            Y = Y / np.linalg.norm(Y, axis=1, keepdims=True)
            keys = Y[kinds_a == "edit"]
            sims = Y @ keys.T
            best = sims.argmax(1)
            dist = 1 - sims.max(1)
            res = []
            for alpha in np.arange(0.01, 0.6, 0.01):
                para = kinds_a == "para"
                loc = kinds_a == "loc"
                p_ok = ((dist[para] <= alpha) & (best[para] == owner_a[para])).mean()
                l_ok = (dist[loc] > alpha).mean()
                res.append((p_ok + l_ok, alpha, p_ok, l_ok))
            # prefer perfect locality: the best alpha with loc->none == 1, else the best sum
            perfect = [r for r in res if r[3] >= 1.0]
            s, a, p, l = max(perfect) if perfect else max(res)
            near = [r for r in res if r[3] >= 0.95]
            s2, a2, p2, l2 = max(near, key=lambda r: r[2]) if near else max(res)
            print(f"{n:42s} {str(centred):8s} {a:6.2f} {p:9.3f} {l:9.3f} {s:6.3f} | loc>=.95: alpha {a2:.2f} para {p2:.3f} loc {l2:.3f}")


if __name__ == "__main__":
    main()
