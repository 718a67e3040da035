"""Router look-up latency at 1e3, 1e5 and 1e6 keys: faiss flat (exact) vs IVF (approximate) vs the torch matmul
that ``RoutedLoRA`` uses, with the recall@1 of the approximate index against the exact one.

    python bench/edit_router.py [--sizes 1000,100000,1000000] [--dim 576] [--queries 200]

Keys are synthetic but clustered like real ones (2,000 centres, Gaussian spread), L2-normalised, inner product;
queries are stored keys plus noise (a paraphrase lands near its edit's key). Latency is per single query
(batch 1, the generation case), median over the queries, one thread.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,100000,1000000")
    ap.add_argument("--dim", type=int, default=576)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--nprobe", type=int, default=16)
    args = ap.parse_args()
    import faiss
    import torch

    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    d = args.dim
    print(f"dim {d}, {args.queries} single queries, median latency in ms; recall@1 of IVF vs exact")
    print(f"{'keys':>9s} | {'flat ms':>8s} | {'torch ms':>8s} | {'ivf ms':>7s} {'nlist':>6s} {'nprobe':>6s} {'recall@1':>8s} | build s")
    for n in [int(x) for x in args.sizes.split(",")]:
        centres = rng.standard_normal((min(2000, n), d)).astype(np.float32)
        keys = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32)
        keys /= np.linalg.norm(keys, axis=1, keepdims=True)
        pick = rng.integers(0, n, args.queries)
        q = keys[pick] + 0.05 * rng.standard_normal((args.queries, d)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)

        flat = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
        flat.add_with_ids(keys, np.arange(n, dtype=np.int64))
        lat, exact = [], []
        for i in range(args.queries):
            t = time.perf_counter()
            _, ids = flat.search(q[i : i + 1], 1)
            lat.append(time.perf_counter() - t)
            exact.append(int(ids[0, 0]))
        tk = torch.from_numpy(keys)
        tl = []
        for i in range(args.queries):
            t = time.perf_counter()
            (torch.from_numpy(q[i : i + 1]) @ tk.T).max(dim=1)
            tl.append(time.perf_counter() - t)
        nlist = max(16, int(4 * np.sqrt(n)) // 4)
        t0 = time.perf_counter()
        quant = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(keys[rng.choice(n, min(n, 40 * nlist), replace=False)])
        ivf.add_with_ids(keys, np.arange(n, dtype=np.int64))
        build = time.perf_counter() - t0
        ivf.nprobe = min(args.nprobe, nlist)
        al, hits = [], 0
        for i in range(args.queries):
            t = time.perf_counter()
            _, ids = ivf.search(q[i : i + 1], 1)
            al.append(time.perf_counter() - t)
            hits += int(ids[0, 0]) == exact[i]
        print(f"{n:9d} | {np.median(lat) * 1e3:8.3f} | {np.median(tl) * 1e3:8.3f} | {np.median(al) * 1e3:7.3f} "
              f"{nlist:6d} {ivf.nprobe:6d} {hits / args.queries:8.3f} | {build:7.1f}", flush=True)
        del flat, ivf, keys, tk


if __name__ == "__main__":
    main()
