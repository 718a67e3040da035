"""How well does a SoLA routing key separate an edit's paraphrases from template-sharing unrelated prompts?

On the WordNet development split (``lifelong.benchmarks.wordnet_edits``, never the test split), for every candidate
key site, pooling and centring:

- **AUC**: ROC area of the cosine distance ``1 - cos`` for (edit prompt, its paraphrase) pairs (positives: should
  route) against (edit prompt, its locality prompt) pairs (negatives: share the edit's template, other subject);
- **operating point**: all dev edit keys in one index (as the store's router holds them); α is the largest
  threshold at which at least ``--locality`` (0.98) of the locality prompts have their nearest key farther than α;
  ``para@α`` is the fraction of paraphrases whose nearest key is their own edit's and within α (they route to it).

Sites: ``resid.L`` is the input of decoder layer L (the residual stream, ``output_hidden_states[L]``);
``oproj.L`` is the input of ``model.layers.L.self_attn.o_proj`` (the attention heads' output; ``oproj.24`` is the
key of SoLA before ``key_layer`` existed).
Poolings: ``last`` (last prompt token), ``mean`` (mean over the prompt's tokens), and, for analysis only since a
router does not know where the subject is, ``subj`` (mean over the subject's tokens). Centring: ``none`` or
``generic`` (minus the mean key of SoLA's ``GENERIC_PROMPTS``).

With ``--results`` it measures instead the editors themselves on a split (default: test): for each seed, ``n``
edits of the split (shuffled by the seed) applied one by one to a fresh store (``lifelong edit bench``'s
``run_edit_bench``: reliability, generalization and locality right after each edit and after the stream, rollback
fidelity), then mean ± sample std over the seeds, per editor:

    python bench/edit_routing.py --results [--split test] [--n 40] [--seeds 0,1,2] [--editors sola,grace,ft-l]
                                 [--set threshold=0.2 ...] [--out bench/out/edit-routing]

``--bundled-alphas 0.08,0.19`` prints paraphrase and locality routing on the bundled set at those thresholds.

``--file PATH`` takes the edits from an edit file instead (``--results``: all of it unless ``--n``; with
``--bundled-alphas``: the routing on that file). ``--locality-kinds near,near,unrelated`` names the kind of each
record's locality prompt by position (the bundled and the natural set put two near neighbours first, one unrelated
prompt last); the tables then split locality by kind:

    python bench/edit_routing.py --results --file lifelong/benchmarks/data/edits-natural.jsonl --seeds 0 \
        --editors sola --locality-kinds near,near,unrelated --out bench/out/edit-natural-default

    python bench/edit_routing.py [--n 0 (all)] [--layers 8,16,24] [--oproj 8,12,16,20,24,28] [--locality 0.98]
                                 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np
import torch


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(distance of a positive < distance of a negative), ties counting half (the Mann-Whitney form of ROC AUC)."""
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    ranks[order] = np.arange(1, len(allv) + 1)
    for v in np.unique(allv[np.r_[False, np.diff(allv[order]) == 0]] if len(allv) > 1 else []):  # average ties
        m = allv == v
        ranks[m] = ranks[m].mean()
    r_pos = ranks[: len(pos)].sum()
    return float(1.0 - (r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def subject_span(tok, text: str, subject: str) -> tuple[int, int]:
    """Token index range of the subject's last occurrence in ``text`` (offsets of the fast tokenizer)."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    start = text.rfind(subject)
    end = start + len(subject)
    idx = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > start and a < end]
    return (idx[0], idx[-1] + 1) if idx else (0, len(enc["input_ids"]))


def collect(model, tok, texts: list[str], subjects: list[str | None], layers: list[int], oproj: list[int],
            batch: int = 32) -> dict[tuple[str, str], np.ndarray]:
    """Pooled hidden states per (site, pooling) for every text, float32 (n, d)."""
    caught: dict[int, torch.Tensor] = {}
    hooks = [model.get_submodule(f"model.layers.{L}.self_attn.o_proj").register_forward_pre_hook(
        lambda m, inp, L=L: caught.__setitem__(L, inp[0].detach().float())) for L in oproj]
    out: dict[tuple[str, str], list[np.ndarray]] = {}
    try:
        for s in range(0, len(texts), batch):
            chunk = texts[s: s + batch]
            enc = [tok(t, add_special_tokens=False).input_ids for t in chunk]
            length = max(map(len, enc))
            ids = torch.full((len(enc), length), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, e in enumerate(enc):
                ids[i, : len(e)], mask[i, : len(e)] = torch.tensor(e), 1
            caught.clear()
            with torch.no_grad():
                hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
            sites = {f"resid.{L}": hs[L].float() for L in layers}
            sites.update({f"oproj.{L}": caught[L] for L in oproj})
            spans = [subject_span(tok, t, sub) if sub else (0, len(e)) for t, sub, e in
                     zip(chunk, subjects[s: s + batch], enc)]
            for name, h in sites.items():
                last = torch.stack([h[i, len(e) - 1] for i, e in enumerate(enc)])
                mean = torch.stack([h[i, : len(e)].mean(0) for i, e in enumerate(enc)])
                subj = torch.stack([h[i, a:b].mean(0) for i, (a, b) in enumerate(spans)])
                for pool, v in (("last", last), ("mean", mean), ("subj", subj)):
                    out.setdefault((name, pool), []).append(v.numpy())
    finally:
        for hook in hooks:
            hook.remove()
    return {k: np.concatenate(v) for k, v in out.items()}


def evaluate(x: np.ndarray, centre: np.ndarray | None, kinds: np.ndarray, owner: np.ndarray, loc_rate: float
             ) -> dict[str, float]:
    y = x - centre[None] if centre is not None else x
    y = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    edit_rows = np.flatnonzero(kinds == "edit")
    keys = y[edit_rows]  # key j belongs to edit j (owner of edit_rows is 0..n-1 in order)
    para, loc = kinds == "para", kinds == "loc"
    own = (y * keys[owner]).sum(1)  # cosine to the own edit's key
    a = auc(1 - own[para], 1 - own[loc])
    sims = y @ keys.T
    nearest = sims.argmax(1)
    dist = 1 - sims.max(1)
    loc_d = np.sort(dist[loc])
    k = int(np.floor((1 - loc_rate) * len(loc_d)))  # at most k locality prompts may route
    alpha = float(loc_d[k] - 1e-6) if k < len(loc_d) else float(loc_d[-1])
    alpha = max(alpha, 0.0)
    para_ok = float(((dist[para] <= alpha) & (nearest[para] == owner[para])).mean())
    loc_ok = float((dist[loc] > alpha).mean())
    return {"auc": a, "alpha": alpha, "para_at_alpha": para_ok, "loc_at_alpha": loc_ok}


def bundled_alphas(alphas: list[float], path: str | None = None, kinds: list[str] | None = None) -> None:
    """Routing on the bundled set (or the edit file ``path``) at given thresholds, with SoLA's own keys (default
    config): the fraction of paraphrases whose nearest edit key is their own edit's and within α, and of locality
    prompts with no key within α (per kind with ``kinds``), all the file's edit keys in the index."""
    from lifelong.adapters.lm.model_loading import load_causal_lm
    from lifelong.benchmarks.edits import bundled_edits_path, load_edits
    from lifelong.platform import registry

    model, tok = load_causal_lm()
    ed = registry.create("editor", "sola")
    ed.attach(model, tok)
    reqs = load_edits(path or bundled_edits_path())

    def keys(prompts: list[str]) -> np.ndarray:
        y = np.concatenate([ed.key_of(prompts[i: i + 16]) for i in range(0, len(prompts), 16)])
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    k = keys([r.prompt for r in reqs])
    sp = keys([p for r in reqs for p in r.paraphrases]) @ k.T
    po = np.array([i for i, r in enumerate(reqs) for _ in r.paraphrases])
    sl = keys([p for r in reqs for p in r.locality]) @ k.T
    lk = np.array(locality_kinds(reqs, kinds or []))
    split = sorted(set(lk)) if kinds else []
    # a paraphrase that ends in the edit prompt's last two words keeps the prompt's template end
    same_end = np.array([p.split()[-2:] == r.prompt.split()[-2:] for r in reqs for p in r.paraphrases])
    print(f"{path or 'bundled set'}: {len(reqs)} edits, {len(po)} paraphrases ({int(same_end.sum())} ending in "
          f"the prompt's last two words), {len(sl)} locality prompts" + "".join(f", {int((lk == c).sum())} {c}"
                                                                               for c in split))
    print("| α | paraphrases routed to their edit | same ending / other ending | locality prompts not routed |"
          + "".join(f" {c} not routed |" for c in split))
    print("|---|---|---|---|" + "---|" * len(split))
    for a in alphas:
        routed = (1 - sp.max(1) <= a) & (sp.argmax(1) == po)
        kept = 1 - sl.max(1) > a
        ends = " / ".join(f"{float(routed[m].mean()):.3f}" if m.any() else "n/a" for m in (same_end, ~same_end))
        print(f"| {a:.4f} | {float(routed.mean()):.3f} | {ends} | {float(kept.mean()):.3f} |"
              + "".join(f" {float(kept[lk == c].mean()):.3f} |" for c in split))


def results(args: argparse.Namespace) -> None:
    """The editors on a split, mean ± std over seeds (see the module docstring)."""
    from pathlib import Path

    from lifelong.adapters.lm.model_loading import load_causal_lm
    from lifelong.benchmarks.edits import load_edits
    from lifelong.benchmarks.wordnet_edits import wordnet_edit_set
    from lifelong.editing.bench import run_edit_bench
    from lifelong.platform.config import parse_overrides

    path = args.file or wordnet_edit_set(args.split)
    reqs = load_edits(path)
    args.n = args.n or (len(reqs) if args.file else 40)
    loaded = load_causal_lm()
    overrides = parse_overrides(args.set) or None
    seeds = [int(x) for x in args.seeds.split(",")]
    base_cache: dict = {}
    table: dict[str, list[dict]] = {}
    out = Path(args.out)
    for name in args.editors.split(","):
        for seed in seeds:
            t = time.perf_counter()
            order = list(reqs)
            random.Random(seed).shuffle(order)
            sub = order[: args.n]  # the seed's edits; TRR on their own locality prompts, one checkpoint at the end
            res = run_edit_bench(name, sub, seed=seed, out=out / f"{name}-{seed}", loaded=loaded, source=str(path),
                                 base_cache=base_cache, editor_config=overrides if name == "sola" else None,
                                 every=len(sub), retention=[(p, None) for r in sub for p in r.locality],
                                 overhead_reps=0)
            row = {k: res[k] for k in ("right_after", "after_stream", "rollback", "seconds_per_edit",
                                       "editor_config", "pre_edit_reliability")}
            row.update(_locality_by_kind(res, sub, args.locality_kinds))
            table.setdefault(name, []).append(row)
            print(f"{name} seed {seed}: {time.perf_counter() - t:.0f} s", flush=True)
            out.mkdir(parents=True, exist_ok=True)
            (out / "summary.json").write_text(json.dumps(table, indent=1, default=str))

    def ms(rows: list[dict], a: str, b: str) -> str:
        v = np.array([r[a][b] for r in rows if r[a][b] is not None], dtype=float)
        return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else (f"{v[0]:.3f}" if len(v) else "n/a")

    print(f"\n{args.file or args.split + ' split of the WordNet set'}, {args.n} sequential edits per run, "
          f"seeds {args.seeds}; "
          f"mean ± sample std over the seeds; sola overrides: {overrides or 'none'}")
    print("| editor | reliability (after / end) | generalization (after / end) | locality (after / end) | "
          "rollback fidelity | pre-edit reliability |")
    print("|---|---|---|---|---|---|")
    for name, rows in table.items():
        print(f"| {name} | {ms(rows, 'right_after', 'reliability')} / {ms(rows, 'after_stream', 'reliability')} | "
              f"{ms(rows, 'right_after', 'generalization')} / {ms(rows, 'after_stream', 'generalization')} | "
              f"{ms(rows, 'right_after', 'locality')} / {ms(rows, 'after_stream', 'locality')} | "
              f"{ms(rows, 'rollback', 'fidelity')} | "
              f"{np.mean([r['pre_edit_reliability'] for r in rows]):.3f} |")
    for kind in dict.fromkeys(args.locality_kinds.split(",") if args.locality_kinds else []):
        print(f"locality of the {kind} prompts (after / end): "
              + "; ".join(f"{name} {ms(rows, 'loc_' + kind, 'right_after')} / {ms(rows, 'loc_' + kind, 'end')}"
                          for name, rows in table.items()))


def locality_kinds(reqs: list, names: list[str]) -> list[str]:
    """The kind of every locality prompt of ``reqs``, in order, named by its position in its record
    (``--locality-kinds``); ``other`` past the named positions."""
    return [(names[j] if j < len(names) else "other") for r in reqs for j in range(len(r.locality))]


def _locality_by_kind(res: dict, reqs: list, kinds: str) -> dict[str, dict[str, float]]:
    """Locality per kind of locality prompt (by position in each record, ``--locality-kinds``), right after each
    edit and after the stream, from the per-prompt scores ``run_edit_bench`` records."""
    names = kinds.split(",") if kinds else []
    pos = locality_kinds(reqs, names)
    after = [x for e in res["per_edit"] for x in (e.get("locality_each") or [])]
    end = res["after_stream"].get("locality_each") or []
    out: dict[str, dict[str, float]] = {}
    for kind in dict.fromkeys(pos if names else []):
        out["loc_" + kind] = {"right_after": float(np.mean([a for a, k in zip(after, pos) if k == kind])),
                              "end": float(np.mean([a for a, k in zip(end, pos) if k == kind]))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", action="store_true", help="measure the editors on a split instead of the ROC")
    ap.add_argument("--split", default="test")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--editors", default="sola,grace,ft-l")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="sola config overrides")
    ap.add_argument("--out", default="bench/out/edit-routing")
    ap.add_argument("--bundled-alphas", default="", help="e.g. 0.08,0.12,0.19: routing on the bundled set at these α")
    ap.add_argument("--n", type=int, default=0, help="dev edits to use (0: all)")
    ap.add_argument("--layers", default="8,16,24", help="residual-stream sites (decoder layer inputs)")
    ap.add_argument("--oproj", default="8,12,16,20,24,28", help="self_attn.o_proj input sites")
    ap.add_argument("--locality", type=float, default=0.98)
    ap.add_argument("--json", default=None)
    ap.add_argument("--file", default=None, help="an edit file instead of the WordNet split (--results, "
                                                 "--bundled-alphas)")
    ap.add_argument("--locality-kinds", default="", help="kind of each record's locality prompt by position, e.g. "
                                                         "near,near,unrelated: locality split by kind")
    args = ap.parse_args()
    if args.bundled_alphas:
        bundled_alphas([float(x) for x in args.bundled_alphas.split(",")], args.file,
                       args.locality_kinds.split(",") if args.locality_kinds else None)
        return
    if args.results:
        results(args)
        return
    from lifelong.adapters.lm.model_loading import load_causal_lm
    from lifelong.benchmarks.wordnet_edits import wordnet_edit_set
    from lifelong.editors.sola import GENERIC_PROMPTS

    t0 = time.perf_counter()
    recs = [json.loads(x) for x in wordnet_edit_set("dev").read_text().splitlines() if x.strip()]
    if args.n:
        recs = recs[: args.n]
    model, tok = load_causal_lm()
    texts, kinds, owner, subjects = [], [], [], []
    for i, r in enumerate(recs):
        loc_subjects = [p.replace(r["prompt"].split(r["subject"])[1], "").split()[-1] for p in r["locality"]]
        for t, kind, sub in ([(r["prompt"], "edit", r["subject"])] + [(p, "para", r["subject"]) for p in r["paraphrases"]]
                             + [(p, "loc", s) for p, s in zip(r["locality"], loc_subjects)]):
            texts.append(t); kinds.append(kind); owner.append(i); subjects.append(sub)
    layers = [int(x) for x in args.layers.split(",")]
    oproj = [int(x) for x in args.oproj.split(",") if x]
    feats = collect(model, tok, texts + list(GENERIC_PROMPTS), subjects + [None] * len(GENERIC_PROMPTS), layers, oproj)
    n = len(texts)
    kinds_a, owner_a = np.array(kinds), np.array(owner)
    rows = []
    for (site, pool), x in feats.items():
        for centring in ("none", "generic"):
            centre = x[n:].mean(0) if centring == "generic" else None
            res = evaluate(x[:n], centre, kinds_a, owner_a, args.locality)
            rows.append({"site": site, "pooling": pool, "centring": centring, **res})
    print(f"{len(recs)} dev edits, {int((kinds_a == 'para').sum())} paraphrases, {int((kinds_a == 'loc').sum())} "
          f"locality prompts, {time.perf_counter() - t0:.0f} s; operating point: locality >= {args.locality}")
    print("| site | pooling | centring | AUC | α | paraphrases routed to their edit at α | locality at α |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: -r["para_at_alpha"]):
        print(f"| {r['site']} | {r['pooling']} | {r['centring']} | {r['auc']:.3f} | {r['alpha']:.3f} | "
              f"{r['para_at_alpha']:.3f} | {r['loc_at_alpha']:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n_edits": len(recs), "locality": args.locality, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
