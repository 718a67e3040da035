"""The edit store's own router at 1e3, 1e5 and 1e6 keys: routed generation time over base generation time, and the
recall of every stored key's own query.

    python bench/edit_router.py [--sizes 1000,100000,1000000] [--reps 3] [--new-tokens 16] [--threads 2]
    python bench/edit_router.py --scan      # flat vs IVF look-up time by store size (the IVF threshold)

(a) SmolLM2 (the default model of ``lifelong.adapters.lm.model_loading``), a real ``EditStore`` in a temporary folder, the SoLA
editor bound to the store's router exactly as ``EditSession`` binds it: 4 edits of the bundled set are stored
with their real keys (random LoRA weights: the routing cost does not depend on them), then synthetic keys of the
key size (Gaussian, 576 dimensions) are bulk-inserted into the same store (``EditStore.add_keys``) up to each size,
and ``store.router()`` builds the index it would build for that many edits (flat below ``IVF_MIN_KEYS``, IVF
above). A batch of 8 prompts (the 4 edit prompts and 4 locality prompts, left-padded) is generated greedily,
``--new-tokens`` tokens, by the base model and by the routed model (``SoLAEditor.routing()``: one decision per
sequence through ``Router.nearest``), interleaved, ``--reps`` times each; the ratio is of the medians. The
routed outputs are checked: the edit prompts route to their edits, the locality prompts to none.

(b) Recall: every stored key searched with itself as the query must come back as its own id (ties aside, and
the synthetic keys have none); at 1e6 keys a random sample of ``--recall-sample`` keys is queried (all of them
would take hours of IVF look-ups on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _scan(args: argparse.Namespace) -> None:
    from lifelong.editing.router import Router

    rng = np.random.default_rng(0)
    d = args.dim
    print(f"look-up of a batch of 8 queries (Router.nearest), dimension {d}, median of 30, {args.threads} thread(s)")
    print(f"{'keys':>8s} | {'flat ms':>8s} | {'ivf ms':>7s} | {'ivf build s':>11s} | ivf recall (own key)")
    for n in [int(x) for x in args.scan_sizes.split(",")]:
        keys = rng.standard_normal((n, d)).astype(np.float32)
        q = keys[rng.integers(0, n, 8)]
        row = []
        for thr in (n + 1, 1):
            r = Router("ip", ivf_min_keys=thr)
            t0 = time.perf_counter()
            r.build(np.arange(n), keys)
            build = time.perf_counter() - t0
            lat = []
            for _ in range(30):
                t = time.perf_counter()
                r.nearest(q)
                lat.append(time.perf_counter() - t)
            row.append((statistics.median(lat) * 1e3, build, r))
        sample = rng.choice(n, min(n, 2000), replace=False)
        rec = float((row[1][2].nearest(keys[sample])[1] == sample).mean())
        print(f"{n:8d} | {row[0][0]:8.3f} | {row[1][0]:7.3f} | {row[1][1]:11.2f} | {rec:.4f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,100000,1000000")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recall-sample", type=int, default=20000)
    ap.add_argument("--workdir", default=None, help="folder for the store (default: a temporary folder)")
    ap.add_argument("--scan", action="store_true", help="flat vs IVF look-up time by size, no model")
    ap.add_argument("--scan-sizes", default="2000,5000,10000,20000,50000,100000")
    ap.add_argument("--dim", type=int, default=576)
    args = ap.parse_args()
    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    if args.scan:
        _scan(args)
        return

    from lifelong.adapters.lm.model_loading import load_causal_lm
    from lifelong.editing.router import IVF_MIN_KEYS
    from lifelong.editing.store import EditStore
    from lifelong.editors.sola import lora_tensor_names
    from lifelong.platform import registry

    model, tok = load_causal_lm()
    recs = [json.loads(x) for x in (ROOT / "lifelong/benchmarks/data/edits-smollm2.jsonl").read_text().splitlines()]
    real = recs[:4]
    prompts = [r["prompt"] for r in real] + [r["locality"][0] for r in real]
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    tok.padding_side = "right"

    def generate(editor=None) -> float:
        t = time.perf_counter()
        with torch.no_grad():
            if editor is None:
                model.generate(**enc, max_new_tokens=args.new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            else:
                with editor.routing():
                    model.generate(**enc, max_new_tokens=args.new_tokens, do_sample=False,
                                   pad_token_id=tok.pad_token_id)
        return time.perf_counter() - t

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="edit-router-"))
    store = EditStore.open(workdir / "store")
    ed = registry.create("editor", "sola")
    store.set_editor("sola", {}, metric=ed.metric)
    ed.bind_router(store.router(metric=ed.metric))
    ed.attach(model, tok)
    g = torch.Generator().manual_seed(0)
    keys = ed.key_of([r["prompt"] for r in real])
    tensors = []
    for i, r in enumerate(real):
        t = {}
        for w in ed.routed.wrappers:
            a, b = lora_tensor_names(w.name)
            t[a] = torch.randn(ed.config.rank, w.in_features, generator=g) * 0.01
            t[b] = torch.randn(w.out_features, ed.config.rank, generator=g) * 0.01
        tensors.append(t)
        store.add_edit(r["prompt"], r["target"], editor="sola", tensors=t, key=keys[i], layer=ed.routed.names[0])
    real_ids = [rec.id for rec in store.active_edits()]
    ed.detach()
    dim = keys.shape[1]
    rng = np.random.default_rng(0)
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        t0 = time.perf_counter()
        have = len(store)
        while have < n:
            chunk = min(100_000, n - have)
            store.add_keys(rng.standard_normal((chunk, dim)).astype(np.float32), editor="sola")
            have += chunk
        t_insert = time.perf_counter() - t0
        t0 = time.perf_counter()
        router = store.router()
        t_build = time.perf_counter() - t0
        ed.bind_router(router)
        base_t, routed_t = [], []
        generate()  # warm-up
        for _ in range(args.reps):
            base_t.append(generate())
            ed.attach(model, tok)
            for rid, t in zip(real_ids, tensors):
                ed.activate(rid, store.get(rid).key, t)
            generate(ed)  # warm-up of the routed path
            routed_t.append(generate(ed))
            routed = ed.routed_ids()
            ed.detach()
        assert routed == real_ids + [None] * 4, f"routing at {n} keys: {routed}"
        q = keys - 0  # the stored (centred) keys as queries: the look-up alone, batch of 4
        lat = []
        for _ in range(20):
            t = time.perf_counter()
            router.nearest(q)
            lat.append(time.perf_counter() - t)
        # (b) recall of every stored key's own query (a sample at the largest sizes)
        ids = np.fromiter(sorted(router.ids()), dtype=np.int64)
        sample = ids if len(ids) <= 100_000 else rng.choice(ids, args.recall_sample, replace=False)
        got = []
        for s in range(0, len(sample), 5000):
            part = sample[s : s + 5000]
            vecs = np.stack([_key_of(store, int(i)) for i in part])
            got.append(router.nearest(vecs)[1] == part)
        recall = float(np.concatenate(got).mean())
        ratio = statistics.median(routed_t) / statistics.median(base_t)
        rows.append((n, router.kind, statistics.median(base_t), statistics.median(routed_t), ratio,
                     statistics.median(lat) * 1e3, len(sample), recall, t_insert, t_build))
        print(f"{n:>9d} keys ({router.kind}): base {rows[-1][2]:.3f} s, routed {rows[-1][3]:.3f} s, ratio {ratio:.3f}, "
              f"look-up {rows[-1][5]:.2f} ms, recall {recall:.4f} over {len(sample)} keys; insert {t_insert:.1f} s, "
              f"index {t_build:.1f} s; load {os.getloadavg()[0]:.1f}", flush=True)
    store.close()
    cmd = "python bench/edit_router.py " + " ".join(sys.argv[1:])
    print()
    print(f"SmolLM2-135M, batch of 8 prompts (4 routed to an edit, 4 to none), {args.new_tokens} greedy tokens, "
          f"{args.threads} threads, median of {args.reps}; IVF from {IVF_MIN_KEYS} keys")
    print("| keys | index | base s | routed s | routed / base | look-up ms (4 queries) | recall of own key (keys queried) |")
    print("|---|---|---|---|---|---|---|")
    for n, kind, b, r, ratio, lk, ns, rc, _, _ in rows:
        print(f"| {n:.0e} | {kind} | {b:.3f} | {r:.3f} | {ratio:.3f} | {lk:.2f} | {rc:.4f} ({ns}) |")
    print(f"command: {cmd.strip()}")


def _key_of(store, edit_id: int) -> np.ndarray:
    return store.get(edit_id).key


if __name__ == "__main__":
    main()
