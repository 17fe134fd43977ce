"""Nearest-neighbour search speed: medbalance.utils.neighbors.knn vs plain baselines, same run.

    python benchmarks/bench_nn_search.py --n 10000 --dim 1024     # 10k x 10k, 32x32 pixels
    python benchmarks/bench_nn_search.py --n 10000 --dim 4096     # 10k x 10k, 64x64 pixels

Prints query images/s for ``knn`` (blocked float32 matrix products + exact float64 recheck of
the best candidates) and for the baselines (blocked ``torch.cdist`` + ``min``; scikit-learn
``NearestNeighbors(algorithm="brute")``), their time ratio, and whether the nearest neighbours
agree with an exact float64 computation on a sample of queries.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000, help="queries and reference rows")
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--no-sklearn", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("MEDBALANCE_QUIET", "1")
    torch.set_num_threads(args.threads)
    from medbalance.utils.neighbors import knn

    g = torch.Generator().manual_seed(0)
    # image-like data: values in [-1, 1] with a common offset (worst case for float32 cancellation)
    ref = (torch.rand(args.n, args.dim, generator=g) * 0.5 + 0.25).float()
    q = (torch.rand(args.n, args.dim, generator=g) * 0.5 + 0.25).float()
    q[:50] = ref[:50]  # exact duplicates must come out at distance 0

    print(f"{args.n} queries x {args.n} reference rows, dim {args.dim}, {torch.get_num_threads()} threads")
    t = time.perf_counter()
    d, idx = knn(q, ref, k=1, block=args.block)
    t_ours = time.perf_counter() - t
    print(f"medbalance knn          : {t_ours:7.2f} s  {args.n / t_ours:9.0f} images/s")

    t = time.perf_counter()
    base_d = torch.empty(args.n)
    base_i = torch.empty(args.n, dtype=torch.long)
    for s in range(0, args.n, args.block):
        dd = torch.cdist(q[s : s + args.block], ref)
        m = dd.min(1)
        base_d[s : s + args.block], base_i[s : s + args.block] = m.values, m.indices
    t_cdist = time.perf_counter() - t
    print(f"torch.cdist + min       : {t_cdist:7.2f} s  {args.n / t_cdist:9.0f} images/s   ratio ours/cdist time {t_ours / t_cdist:.2f}")

    if not args.no_sklearn:
        from sklearn.neighbors import NearestNeighbors

        t = time.perf_counter()
        nn = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(ref.numpy())
        sk_d, sk_i = nn.kneighbors(q.numpy())
        t_sk = time.perf_counter() - t
        print(f"sklearn brute           : {t_sk:7.2f} s  {args.n / t_sk:9.0f} images/s   ratio ours/sklearn time {t_ours / t_sk:.2f}")

    # exactness on a sample of 200 queries (float64 brute force)
    sel = torch.arange(0, args.n, max(1, args.n // 200))
    exact = torch.cdist(q[sel].double(), ref.double(), compute_mode="donot_use_mm_for_euclid_dist").min(1)
    agree = float((torch.as_tensor(idx[sel.numpy(), 0]) == exact.indices).float().mean())
    agree_c = float((base_i[sel] == exact.indices).float().mean())
    err = float(np.abs(d[sel.numpy(), 0] - exact.values.numpy()).max())
    err_c = float((base_d[sel].double() - exact.values).abs().max())
    print(f"agreement with float64 exact NN (200 queries): ours {agree:.3f} (max |d err| {err:.2e}), cdist {agree_c:.3f} (max |d err| {err_c:.2e})")
    print(f"duplicates at distance exactly 0: ours {int((d[:50, 0] == 0).sum())}/50, cdist {int((base_d[:50] == 0).sum())}/50")


if __name__ == "__main__":
    main()
