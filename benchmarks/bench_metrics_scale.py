"""Metrics at scale: fidelity metrics on 10k x 10k features and the privacy nearest-neighbour pass on 10k x 10k images.

    python benchmarks/bench_metrics_scale.py                         # 10k x 10k, 2048-d, 64 px, 2 threads
    python benchmarks/bench_metrics_scale.py --json /tmp/metrics_scale.json
    python benchmarks/bench_metrics_scale.py --tiny --threads 1       # seconds (tests/test_metrics_scale.py)

What is timed (medbalance, one call each, in this order):

- ``fd``, ``kid``, ``precision/recall + density/coverage``: ``evaluation.fidelity.fidelity_metrics`` on ``--n`` real
  and ``--n`` synthetic ``--dim``-d float32 features (two seeded Gaussian clouds with low-rank covariances of
  different shape, slightly different means and a positive offset like pooled CNN features), restricted to those metrics;
  ``fidelity total`` is their sum (what one ``fidelity_metrics`` call with every metric costs).
- ``privacy NN pass``: ``evaluation.privacy.privacy_metrics`` in pixel space (DCR synthetic->train and
  held-out->train, exact duplicates, the distance membership-inference attack) on ``--n`` training, ``--holdout``
  held-out and ``--n`` synthetic ``--channels`` x ``--size`` px images in [-1, 1]; 1 % of the synthetic images are
  copies of training images, so ``exact_duplicates`` must come out at that count.

Plain references in the same run (skipped with ``--no-ref``), with the time ratio reference / medbalance and the
largest difference of their results:

- FD: ``np.cov`` + ``scipy.linalg.sqrtm(S1 @ S2)`` (the formula of the original FID code).
- KID: a per-subset NumPy float64 loop (``(x y^T / d + 1) ** 3``, unbiased MMD^2) on the first ``--ref-kid-subsets``
  subsets of the same draws; its time is scaled to ``--kid-subsets`` subsets, and medbalance's ``kid`` is rerun on
  that many subsets for the value check.
- precision/recall/density/coverage: full distance matrices from ``sklearn.metrics.pairwise_distances`` (float64)
  and ``np.partition`` for the k-NN radii, as the reference ``prdc`` package computes them.
- privacy: ``sklearn.neighbors.NearestNeighbors(algorithm="brute")`` for the four nearest-neighbour queries, then
  the same DCR share / memorisation rate / attack AUC formulas.

Peak RSS is read (``getrusage``) after the medbalance rows and again at the end (the references hold full
distance matrices). The thread count is set for NumPy's BLAS and PyTorch before they are imported.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

from _machine import cpu_model  # benchmarks/ (the script's folder) is on sys.path

TINY = {"n": 300, "dim": 64, "size": 16, "kid_subsets": 5, "kid_subset_size": 100, "ref_kid_subsets": 2}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10000, help="real = synthetic features; training = synthetic images")
    ap.add_argument("--dim", type=int, default=2048, help="feature dimension")
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--channels", type=int, default=1, help="image channels")
    ap.add_argument("--holdout", type=int, default=None, help="held-out images (default: --n)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kid-subsets", type=int, default=100)
    ap.add_argument("--kid-subset-size", type=int, default=1000)
    ap.add_argument("--ref-kid-subsets", type=int, default=10, help="subsets the plain KID reference runs")
    ap.add_argument("--target-s", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-ref", action="store_true", help="skip the plain reference computations")
    ap.add_argument("--tiny", action="store_true", help=f"small sizes for a smoke test: {TINY}")
    ap.add_argument("--json", type=Path, default=None, help="write every figure to this JSON file")
    args = ap.parse_args(argv)
    if args.tiny:
        for k, v in TINY.items():
            setattr(args, k, v)
    if args.holdout is None:
        args.holdout = args.n
    if min(args.n, args.dim, args.size, args.channels, args.holdout, args.threads, args.kid_subsets) < 1:
        ap.error("sizes, subsets and threads must be >= 1")
    return args


def _set_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    os.environ.setdefault("MEDBALANCE_QUIET", "1")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# ---------------------------------------------------------------------------- data


def make_features(n: int, dim: int, seed: int):
    """Two float32 clouds: low-rank Gaussian structure (perturbed basis for the synthetic one) + isotropic noise +
    a positive offset (shifted by 0.005 for the synthetic one); at 2000 x 2000 precision ~0.63, recall ~0.72."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rank = max(2, min(256, dim // 2))
    offset = rng.uniform(0.2, 0.6, dim)
    basis = rng.normal(size=(rank, dim)) / np.sqrt(rank)
    scale = 1.0 / np.sqrt(1.0 + np.arange(rank))
    basis_syn = basis + 0.12 * rng.normal(size=(rank, dim)) / np.sqrt(rank)
    real = (rng.normal(size=(n, rank)) * scale) @ basis + 0.1 * rng.normal(size=(n, dim)) + offset
    syn = (rng.normal(size=(n, rank)) * scale) @ basis_syn + 0.1 * rng.normal(size=(n, dim)) + offset + 0.005
    return real.astype(np.float32), syn.astype(np.float32)


def make_images(n: int, channels: int, size: int, seed: int):
    """Smooth random images in [-1, 1] (bilinear upsampling of a coarse grid + noise)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    coarse = max(2, size // 8)
    x = torch.rand(n, channels, coarse, coarse, generator=g)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x * 2 - 1 + 0.05 * torch.randn(n, channels, size, size, generator=g)).clamp_(-1, 1)


# ---------------------------------------------------------------------------- plain references


def ref_fd(real, syn) -> float:
    import numpy as np
    import scipy.linalg

    a, b = real.astype(np.float64), syn.astype(np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = np.real(scipy.linalg.sqrtm(s1 @ s2))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def ref_kid(real, syn, subsets: int, m: int, seed: int) -> float:
    """Per-subset float64 loop with the draws of medbalance's ``kid`` (same generator, same order)."""
    import numpy as np

    r, s = real.astype(np.float64), syn.astype(np.float64)
    d = r.shape[1]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        x = r[rng.choice(r.shape[0], m, replace=False)]
        y = s[rng.choice(s.shape[0], m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        vals.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())
    return float(np.mean(vals))


def ref_prdc(real, syn, k_pr: int = 3, k_dc: int = 5) -> dict[str, float]:
    """Full distance matrices (sklearn, float64) and ``np.partition`` radii, closed balls."""
    import numpy as np
    from sklearn.metrics import pairwise_distances

    r, s = real.astype(np.float64), syn.astype(np.float64)
    drr = pairwise_distances(r, r)
    rad_r = np.partition(drr, [k_pr, k_dc], axis=1)  # column 0 is the point itself
    rr_pr, rr_dc = rad_r[:, k_pr].copy(), rad_r[:, k_dc].copy()
    del drr, rad_r
    dss = pairwise_distances(s, s)
    rs_pr = np.partition(dss, k_pr, axis=1)[:, k_pr].copy()
    del dss
    drs = pairwise_distances(r, s)  # rows real, columns synthetic
    out = {
        "precision": float((drs <= rr_pr[:, None]).any(0).mean()),
        "recall": float((drs <= rs_pr[None, :]).any(1).mean()),
        "density": float((drs <= rr_dc[:, None]).sum(0).mean() / k_dc),
        "coverage": float((drs.min(1) <= rr_dc).mean()),
    }
    return out


def ref_privacy(train, holdout, synthetic) -> dict[str, float]:
    import numpy as np
    from sklearn.metrics import roc_auc_score
    from sklearn.neighbors import NearestNeighbors

    tr, ho, sy = (x.reshape(x.shape[0], -1).numpy() for x in (train, holdout, synthetic))
    nn_tr = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(tr)
    d_syn = nn_tr.kneighbors(sy)[0][:, 0]
    d_ho = nn_tr.kneighbors(ho)[0][:, 0]
    nn_sy = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(sy)
    a_tr = nn_sy.kneighbors(tr)[0][:, 0]
    a_ho = nn_sy.kneighbors(ho)[0][:, 0]
    med, p1 = np.median(d_ho), np.percentile(d_ho, 1)
    y = np.r_[np.ones(len(a_tr)), np.zeros(len(a_ho))]
    return {
        "dcr_share": float((d_syn < med).mean()),
        "memorization_rate": float((d_syn < p1).mean()),
        "holdout_dcr_median": float(med),
        "mia_distance_auc": float(roc_auc_score(y, -np.r_[a_tr, a_ho])),
    }


# ---------------------------------------------------------------------------- run


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _max_diff(ours: dict, ref: dict, keys) -> float:
    return max(abs(float(ours[k]) - float(ref[k])) for k in keys)


def run(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from medbalance.evaluation.fidelity import fidelity_metrics
    from medbalance.evaluation.privacy import privacy_metrics

    load_start = os.getloadavg()[0]
    real, syn = make_features(args.n, args.dim, args.seed)
    train = make_images(args.n, args.channels, args.size, args.seed + 1)
    holdout = make_images(args.holdout, args.channels, args.size, args.seed + 2)
    synthetic = make_images(args.n, args.channels, args.size, args.seed + 3)
    n_copies = max(1, args.n // 100)
    synthetic[:n_copies] = train[torch.arange(n_copies) * (args.n // n_copies)]
    kid_kw = {"kid_subsets": args.kid_subsets, "kid_subset_size": args.kid_subset_size, "seed": args.seed}

    rows: list[dict] = []

    def fid(metrics):
        return fidelity_metrics(real=real, synthetic=syn, metrics=metrics, **kid_kw)["overall"]

    values: dict = {}
    for name, metrics in (("fd", ("fd",)), ("kid", ("kid",)),
                          ("precision/recall + density/coverage", ("precision_recall", "density_coverage"))):
        res, secs = _timed(lambda m=metrics: fid(m))
        values.update({k: v for k, v in res.items() if not k.startswith("n_")})
        rows.append({"metric": name, "seconds": secs})
    rows.append({"metric": "fidelity total", "seconds": sum(r["seconds"] for r in rows)})
    priv, secs = _timed(lambda: privacy_metrics(train=train, holdout=holdout, synthetic=synthetic)["pixels"])
    rows.append({"metric": "privacy NN pass", "seconds": secs})
    values["privacy"] = priv
    peak_ours = _peak_rss_mb()

    if not args.no_ref:
        by = {r["metric"]: r for r in rows}
        v, secs = _timed(lambda: ref_fd(real, syn))
        by["fd"].update(reference="np.cov + scipy.linalg.sqrtm", ref_seconds=secs, diff=abs(v - values["fd"]) / max(abs(v), 1e-300),
                        diff_kind="relative")
        rs = min(args.ref_kid_subsets, args.kid_subsets)
        m = min(args.kid_subset_size, args.n)
        v, secs = _timed(lambda: ref_kid(real, syn, rs, m, args.seed))
        ours_rs = fidelity_metrics(real=real, synthetic=syn, metrics=("kid",), kid_subsets=rs,
                                   kid_subset_size=args.kid_subset_size, seed=args.seed)["overall"]["kid"]
        by["kid"].update(reference=f"NumPy per-subset loop ({rs} subsets, time x{args.kid_subsets / rs:g})",
                         ref_seconds=secs * args.kid_subsets / rs, diff=abs(v - ours_rs), diff_kind="absolute")
        v, secs = _timed(lambda: ref_prdc(real, syn))
        by["precision/recall + density/coverage"].update(
            reference="sklearn pairwise_distances + np.partition", ref_seconds=secs,
            diff=_max_diff(values, v, ("precision", "recall", "density", "coverage")), diff_kind="absolute")
        by["fidelity total"]["ref_seconds"] = sum(by[k]["ref_seconds"] for k in
                                                  ("fd", "kid", "precision/recall + density/coverage"))
        by["fidelity total"]["reference"] = "sum of the above"
        v, secs = _timed(lambda: ref_privacy(train, holdout, synthetic))
        by["privacy NN pass"].update(reference="sklearn NearestNeighbors brute", ref_seconds=secs,
                                     diff=_max_diff(priv, v, ("dcr_share", "memorization_rate", "mia_distance_auc")),
                                     diff_kind="absolute")
        values["privacy_ref"] = v
    for r in rows:
        r["target_s"] = args.target_s
        r["met"] = r["seconds"] <= args.target_s
        if "ref_seconds" in r:
            r["ratio_ref_over_ours"] = r["ref_seconds"] / r["seconds"] if r["seconds"] > 0 else float("inf")
    return {
        "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "threads": args.threads,
                    "torch_threads": torch.get_num_threads(), "load_avg_start": load_start,
                    "load_avg_end": os.getloadavg()[0], "python": sys.version.split()[0], "torch": torch.__version__,
                    "numpy": np.__version__},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": rows,
        "values": values,
        "planted_duplicates": n_copies,
        "peak_rss_mb_medbalance": peak_ours,
        "peak_rss_mb_total": _peak_rss_mb(),
    }


def format_table(res: dict) -> str:
    a = res["args"]
    lines = [
        (f"{a['n']} x {a['n']} features, {a['dim']}-d; images {a['n']} train / {a['holdout']} held-out / {a['n']} "
         f"synthetic, {a['channels']}x{a['size']}x{a['size']}; {res['machine']['threads']} threads; "
         f"load average {res['machine']['load_avg_start']:.2f} at the start"),
        "",
        "| metric | medbalance s | target s | met | reference | reference s | ref / medbalance | max diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        ref = r.get("reference", "-")
        rs = f"{r['ref_seconds']:.2f}" if "ref_seconds" in r else "-"
        ratio = f"{r['ratio_ref_over_ours']:.2f}x" if "ratio_ref_over_ours" in r else "-"
        diff = f"{r['diff']:.1e} ({r['diff_kind'][:3]})" if "diff" in r else "-"
        lines.append(f"| {r['metric']} | {r['seconds']:.2f} | {r['target_s']:g} | {'yes' if r['met'] else 'NO'} | "
                     f"{ref} | {rs} | {ratio} | {diff} |")
    v = res["values"]
    p = v["privacy"]
    lines += [
        "",
        (f"values: fd {v['fd']:.6g}, kid {v['kid']:.6g} (std {v['kid_std']:.2g}), precision {v['precision']:.4f}, "
         f"recall {v['recall']:.4f}, density {v['density']:.4f}, coverage {v['coverage']:.4f}; privacy: dcr_share "
         f"{p['dcr_share']:.4f}, memorization_rate {p['memorization_rate']:.4f}, exact_duplicates "
         f"{p['exact_duplicates']} (planted {res['planted_duplicates']}), mia_distance_auc {p['mia_distance_auc']:.4f}"),
        (f"peak RSS: {res['peak_rss_mb_medbalance']:.0f} MB after the medbalance rows, "
         f"{res['peak_rss_mb_total']:.0f} MB at the end (references included)"),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _set_threads(args.threads)
    res = run(args)
    print(format_table(res), flush=True)
    if args.json is not None:
        from medbalance.utils.io import atomic_write_json

        atomic_write_json(args.json, res)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
