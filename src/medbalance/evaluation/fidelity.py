"""Fidelity of synthetic data: does it look like the real data?

All functions take features (``(N, D)`` arrays from an extractor, see
:mod:`medbalance.evaluation.extractors`) as keyword-only ``real=`` and ``synthetic=``, so the two
sets can never be swapped by position.

- :func:`frechet_distance` — Fréchet distance between Gaussians fitted to the two sets (FID when
  the features are Inception-v3 pool features). Computed in float64 with a symmetric formulation:
  with ``S1 = L L^T`` (Cholesky), ``S1 S2`` is similar to the symmetric PSD ``L^T S2 L``, so
  ``tr sqrt(S1 S2)`` is the sum of the square roots of the latter's eigenvalues (``eigvalsh``); a
  singular ``S1`` uses ``sqrt(S1)`` from ``eigh`` instead of ``L``. This equals ``scipy.linalg.sqrtm``'s
  value and took 1/18 of its time at 2048-d (``benchmarks/bench_metrics_scale.py``, docs/performance.md).
- :func:`kid` — kernel inception distance: unbiased MMD^2 with the cubic polynomial kernel
  ``k(x, y) = (x.y / d + 1)^3`` averaged over random subsets (Bińkowski et al. 2018), float64.
- :func:`precision_recall` — improved precision and recall (Kynkäänniemi et al. 2019): k-NN
  balls around each sample approximate each manifold.
- :func:`density_coverage` — density and coverage (Naeem et al. 2020), k-NN balls of real samples.
- :func:`fidelity_metrics` — all of them, overall and per class (intra-class), with warnings.

Precision, recall, density and coverage share one k-NN pass per set (the radii) and one scan of the
real x synthetic distances (:func:`medbalance.utils.neighbors.ball_counts`: float32 products, every
pair near a ball's surface settled in float64).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medbalance.utils.neighbors import ball_counts, knn

MIN_CLASS_SAMPLES = 50


def _f64(x: Any) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        a = a.reshape(a.shape[0], -1)
    return a


def _check_pair(real: np.ndarray, synthetic: np.ndarray) -> None:
    if real.shape[1] != synthetic.shape[1]:
        raise ValueError(f"real features have {real.shape[1]} dims, synthetic {synthetic.shape[1]}")


# ---------------------------------------------------------------------------- Fréchet distance


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    # The decompositions run on one BLAS thread: they are bound by matrix-vector steps that synchronise the
    # threads thousands of times, and on a busy 2-core CPU two threads made eigvalsh at 2048-d 15x slower.
    with threadpool_limits(1, user_api="blas"):
        try:
            f = np.linalg.cholesky(s1)  # S1 = F F^T: S1 S2 is similar to F^T S2 F
        except np.linalg.LinAlgError:  # singular S1: F = sqrt(S1), which is symmetric
            w1, v1 = np.linalg.eigh(s1)
            f = (v1 * np.sqrt(np.clip(w1, 0.0, None))) @ v1.T
    m = f.T @ s2 @ f
    m = 0.5 * (m + m.T)
    with threadpool_limits(1, user_api="blas"):
        ev = np.linalg.eigvalsh(m)
    return float(np.sqrt(np.clip(ev, 0.0, None)).sum())


def frechet_distance_from_stats(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2)`` in float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    diff = mu1 - mu2
    val = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * _trace_sqrt_product(s1, s2)
    return float(max(val, 0.0))


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = _f64(feats)
    if f.shape[0] < 2:
        raise ValueError("at least 2 samples are needed for a covariance")
    mu = f.mean(0)
    c = f - mu
    return mu, (c.T @ c) / (f.shape[0] - 1)  # = np.cov(f, rowvar=False); A^T A runs as one symmetric product


def frechet_distance(*, real: np.ndarray, synthetic: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to ``real`` and ``synthetic`` features."""
    r, s = _f64(real), _f64(synthetic)
    _check_pair(r, s)
    mu1, s1 = feature_stats(r)
    mu2, s2 = feature_stats(s)
    return frechet_distance_from_stats(mu1, s1, mu2, s2)


# ---------------------------------------------------------------------------- KID


def _poly_kernel_sum(a: np.ndarray, b: np.ndarray | None, degree: int, gamma: float, coef0: float) -> float:
    """Sum of ``(gamma a_i.b_j + coef0)^degree`` over all pairs; ``b=None``: over the pairs ``i != j`` of ``a``."""
    k = a @ (a if b is None else b).T  # a @ a.T runs as one symmetric product
    k *= gamma
    k += coef0
    diag = np.diagonal(k).copy() if b is None else None
    if float(degree).is_integer() and degree >= 2:
        p = k * k  # repeated products and one dot: several times faster than a float power and a sum
        for _ in range(int(degree) - 3):
            p *= k
        total = float(np.vdot(p, k)) if degree > 2 else float(p.sum())
    else:
        total = float((k**degree).sum())
    if diag is not None:
        total -= float((diag**degree).sum())
    return total


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> float:
    """Unbiased MMD^2 between two samples with the polynomial kernel."""
    x, y = _f64(x), _f64(y)
    m, n = x.shape[0], y.shape[0]
    g = 1.0 / x.shape[1] if gamma is None else gamma
    sxx = _poly_kernel_sum(x, None, degree, g, coef0) / (m * (m - 1))
    syy = _poly_kernel_sum(y, None, degree, g, coef0) / (n * (n - 1))
    sxy = _poly_kernel_sum(x, y, degree, g, coef0) / (m * n)
    return float(sxx + syy - 2.0 * sxy)


def kid(
    *,
    real: np.ndarray,
    synthetic: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
    warnings: list[str] | None = None,
) -> dict[str, float]:
    """KID: mean (and std) of unbiased polynomial-kernel MMD^2 over random subsets.

    Each subset draws ``subset_size`` rows without replacement from each set. A ``subset_size``
    larger than either set is reduced to the smaller set size (noted in ``warnings``).
    """
    r, s = _f64(real), _f64(synthetic)
    _check_pair(r, s)
    n = min(r.shape[0], s.shape[0])
    if n < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    m = subset_size
    if m > n:
        if warnings is not None:
            warnings.append(f"KID subset size {subset_size} > samples available ({n}); using {n}")
        m = n
    rng = np.random.default_rng(seed)
    vals = np.empty(subsets)
    for i in range(subsets):
        xi = r[rng.choice(r.shape[0], m, replace=False)]
        yi = s[rng.choice(s.shape[0], m, replace=False)]
        vals[i] = mmd2_unbiased(xi, yi, degree, gamma, coef0)
    return {"mean": float(vals.mean()), "std": float(vals.std()), "subset_size": int(m), "subsets": int(subsets)}


# ---------------------------------------------------------------------------- k-NN manifolds


def knn_radii(feats: np.ndarray, k: int) -> np.ndarray:
    """Distance of every row to its k-th nearest other row."""
    d, _ = knn(feats, feats, k=k, exclude_self=True)
    return d[:, k - 1]


def _manifold(r: np.ndarray, s: np.ndarray, k_pr: int | None, k_dc: int | None) -> dict[str, float]:
    """Precision/recall (k-NN balls of ``k_pr``) and/or density/coverage (``k_dc``) from one scan of real x synthetic."""
    ks = [k for k in (k_pr, k_dc) if k is not None]
    d_real, _ = knn(r, r, k=max(ks), exclude_self=True)  # one pass gives the real radii for both k
    real_balls = [d_real[:, k - 1] for k in ks]
    syn_balls = [knn_radii(s, k_pr)] if k_pr is not None else []
    in_real, in_syn = ball_counts(s, r, b_radii=real_balls, a_radii=syn_balls)
    out: dict[str, float] = {}
    if k_pr is not None:
        syn_in_real, _ = in_real[0]
        real_in_syn, _ = in_syn[0]
        out["precision"] = float((syn_in_real > 0).mean())
        out["recall"] = float((real_in_syn > 0).mean())
    if k_dc is not None:
        syn_in_real, real_pop = in_real[-1]
        out["density"] = float(syn_in_real.sum() / (k_dc * s.shape[0]))
        out["coverage"] = float((real_pop > 0).mean())
    return out


def precision_recall(*, real: np.ndarray, synthetic: np.ndarray, k: int = 3) -> dict[str, float]:
    """Improved precision/recall (Kynkäänniemi et al. 2019).

    precision: share of synthetic samples inside the real manifold (union of the closed balls around
    each real sample with radius = distance to its k-th nearest real neighbour); recall: share of real
    samples inside the synthetic manifold.
    """
    r, s = _f64(real), _f64(synthetic)
    _check_pair(r, s)
    return _manifold(r, s, k, None)


def density_coverage(*, real: np.ndarray, synthetic: np.ndarray, k: int = 5) -> dict[str, float]:
    """Density and coverage (Naeem et al. 2020) with closed k-NN balls around the real samples.

    density = (1 / kM) sum_j sum_i 1[y_j in B(x_i, NND_k(x_i))];
    coverage = (1 / N) sum_i 1[exists j: y_j in B(x_i, NND_k(x_i))].
    """
    r, s = _f64(real), _f64(synthetic)
    _check_pair(r, s)
    return _manifold(r, s, None, k)


# ---------------------------------------------------------------------------- all together

ALL_FIDELITY = ("fd", "kid", "precision_recall", "density_coverage")


def _one_set(
    r: np.ndarray,
    s: np.ndarray,
    metrics: Sequence[str],
    *,
    k_pr: int,
    k_dc: int,
    kid_subsets: int,
    kid_subset_size: int,
    seed: int,
    where: str,
    warnings: list[str],
) -> dict[str, Any]:
    out: dict[str, Any] = {"n_real": int(r.shape[0]), "n_synthetic": int(s.shape[0])}
    n_min = min(r.shape[0], s.shape[0])
    if "fd" in metrics:
        if n_min < 2:
            out["fd"] = None
        else:
            if n_min < r.shape[1]:
                warnings.append(
                    f"{where}: FD from {n_min} samples < feature dimension {r.shape[1]} "
                    "(singular covariance; the value is biased and not comparable)"
                )
            out["fd"] = frechet_distance(real=r, synthetic=s)
    if "kid" in metrics:
        if n_min < 2:
            out["kid"] = None
        else:
            w: list[str] = []
            res = kid(real=r, synthetic=s, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed, warnings=w)
            warnings.extend(f"{where}: {x}" for x in w)
            out["kid"] = res["mean"]
            out["kid_std"] = res["std"]
            out["kid_subset_size"] = res["subset_size"]
    pr = dc = None
    if "precision_recall" in metrics:
        if n_min <= k_pr:
            out["precision"] = out["recall"] = None
        else:
            pr = k_pr
    if "density_coverage" in metrics:
        if r.shape[0] <= k_dc or s.shape[0] < 1:
            out["density"] = out["coverage"] = None
        else:
            dc = k_dc
    if pr is not None or dc is not None:
        out.update(_manifold(r, s, pr, dc))
    return out


def fidelity_metrics(
    *,
    real: np.ndarray,
    synthetic: np.ndarray,
    real_labels: np.ndarray | None = None,
    synthetic_labels: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    per_class: bool = False,
    metrics: Sequence[str] = ALL_FIDELITY,
    k_pr: int = 3,
    k_dc: int = 5,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
    include_overall: bool = True,
) -> dict[str, Any]:
    """FD, KID, precision/recall, density/coverage; overall and (``per_class``) intra-class.

    Returns ``{"overall": {...}, "per_class": {name: {...}}, "warnings": [...]}`` (``overall``
    left out with ``include_overall=False``).
    """
    unknown = set(metrics) - set(ALL_FIDELITY)
    if unknown:
        raise ValueError(f"unknown fidelity metrics {sorted(unknown)}; allowed: {list(ALL_FIDELITY)}")
    r, s = _f64(real), _f64(synthetic)
    _check_pair(r, s)
    warnings: list[str] = []
    kw = {"k_pr": k_pr, "k_dc": k_dc, "kid_subsets": kid_subsets, "kid_subset_size": kid_subset_size, "seed": seed}
    result: dict[str, Any] = {}
    if include_overall:
        result["overall"] = _one_set(r, s, metrics, where="overall", warnings=warnings, **kw)
    if per_class:
        if real_labels is None or synthetic_labels is None:
            raise ValueError("per_class needs real_labels and synthetic_labels")
        rl, sl = np.asarray(real_labels), np.asarray(synthetic_labels)
        classes = sorted(set(rl.tolist()) | set(sl.tolist()))
        names = list(class_names) if class_names is not None else [str(c) for c in range(max(classes) + 1)]
        pc: dict[str, Any] = {}
        for c in classes:
            name = names[c]
            rc, sc = r[rl == c], s[sl == c]
            small = [f"{lab} {n}" for lab, n in (("real", rc.shape[0]), ("synthetic", sc.shape[0])) if n < MIN_CLASS_SAMPLES]
            if small:
                warnings.append(
                    f"class {name!r}: only {', '.join(small)} samples (< {MIN_CLASS_SAMPLES}); per-class numbers are noisy"
                )
            pc[name] = _one_set(rc, sc, metrics, where=f"class {name!r}", warnings=warnings, **kw)
        result["per_class"] = pc
    result["warnings"] = warnings
    return result
