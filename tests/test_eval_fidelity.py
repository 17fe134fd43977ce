"""Fidelity metrics against independent references (SciPy sqrtm, closed forms, plain loops)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from medbalance.evaluation.fidelity import (
    density_coverage,
    fidelity_metrics,
    frechet_distance,
    frechet_distance_from_stats,
    kid,
    precision_recall,
)


def _scipy_fd(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_fd_equals_scipy_sqrtm():
    rng = np.random.default_rng(0)
    d = 24
    a = rng.normal(size=(300, d)) @ rng.normal(size=(d, d))
    b = rng.normal(size=(250, d)) @ rng.normal(size=(d, d)) + 0.7
    ours = frechet_distance(real=a.astype(np.float32), synthetic=b.astype(np.float32))
    ref = _scipy_fd(a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64))
    assert ours == pytest.approx(ref, rel=1e-7)
    # symmetric in its arguments, zero on identical sets
    assert frechet_distance(real=b, synthetic=a) == pytest.approx(frechet_distance(real=a, synthetic=b), rel=1e-9)
    assert frechet_distance(real=a, synthetic=a) == pytest.approx(0.0, abs=1e-6)


def test_fd_closed_form_known_gaussians():
    # N(mu1, diag(s1^2)) vs N(mu2, diag(s2^2)): FD = |mu1-mu2|^2 + sum (s1 - s2)^2
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([3.0, 1.0, 0.5])
    fd = frechet_distance_from_stats(mu1, np.diag(s1**2), mu2, np.diag(s2**2))
    assert fd == pytest.approx(5.0 + 4.0 + 1.0 + 0.0, rel=1e-12)
    # non-commuting covariances: compare with scipy's sqrtm
    rng = np.random.default_rng(1)
    A, B = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    S1, S2 = A @ A.T + 0.1 * np.eye(5), B @ B.T + 0.1 * np.eye(5)
    ref = np.trace(S1) + np.trace(S2) - 2 * np.trace(np.real(scipy.linalg.sqrtm(S1 @ S2)))
    assert frechet_distance_from_stats(np.zeros(5), S1, np.zeros(5), S2) == pytest.approx(ref, rel=1e-9)
    # samples from two known Gaussians approach the closed form
    x = rng.normal(size=(20000, 2))
    y = rng.normal(size=(20000, 2)) * 2.0 + np.array([3.0, 0.0])
    assert frechet_distance(real=x, synthetic=y) == pytest.approx(9.0 + 1.0 + 1.0, rel=0.03)


def _kid_loop(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k = lambda a, b: (float(np.dot(a, b)) / d + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return sxx + syy - 2 * sxy


def test_kid_equals_double_loop():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(12, 4))
    y = rng.normal(size=(12, 4)) + 0.5
    # one subset of all samples = a permutation, and unbiased MMD^2 is permutation invariant
    res = kid(real=x, synthetic=y, subsets=3, subset_size=12)
    assert res["mean"] == pytest.approx(_kid_loop(x, y), rel=1e-10)
    assert res["std"] == pytest.approx(0.0, abs=1e-12)
    # subset size larger than N is reduced, with a warning
    w: list[str] = []
    res = kid(real=x, synthetic=y[:8], subsets=5, subset_size=100, warnings=w)
    assert res["subset_size"] == 8 and w and "using 8" in w[0]
    # same distribution -> KID near 0, shifted -> clearly positive
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    assert abs(kid(real=a, synthetic=b, subsets=20, subset_size=200)["mean"]) < 0.02
    assert kid(real=a, synthetic=b + 1.0, subsets=20, subset_size=200)["mean"] > 0.2


def test_precision_recall_density_coverage_constructed():
    # real: 10 points on a line at 0..9 (k=1 radius 1 each)
    real = np.stack([np.arange(10.0), np.zeros(10)], 1)
    syn_in = np.stack([np.arange(5) + 0.5, np.zeros(5)], 1)
    syn_out = np.stack([np.arange(5) + 100.0, np.zeros(5)], 1)
    syn = np.concatenate([syn_in, syn_out])
    pr = precision_recall(real=real, synthetic=syn, k=1)
    assert pr["precision"] == pytest.approx(0.5)  # 5 of 10 synthetic in the real manifold
    assert pr["recall"] == pytest.approx(0.6)  # reals 0..5 within radius 1 of a synthetic point
    dc = density_coverage(real=real, synthetic=syn, k=1)
    assert dc["density"] == pytest.approx(1.0)  # each inside point is in exactly 2 real balls: 10 / (1*10)
    assert dc["coverage"] == pytest.approx(0.6)
    same = precision_recall(real=real, synthetic=real.copy(), k=2)
    assert same == {"precision": 1.0, "recall": 1.0}
    far = density_coverage(real=real, synthetic=real + 1000.0, k=2)
    assert far == {"density": 0.0, "coverage": 0.0}


def test_fidelity_metrics_per_class_and_warnings():
    rng = np.random.default_rng(3)
    real = np.concatenate([rng.normal(size=(60, 3)), rng.normal(size=(20, 3)) + 5])
    rl = np.r_[np.zeros(60, int), np.ones(20, int)]
    syn = np.concatenate([rng.normal(size=(60, 3)), rng.normal(size=(20, 3)) - 5])
    sl = rl.copy()
    res = fidelity_metrics(
        real=real, synthetic=syn, real_labels=rl, synthetic_labels=sl, class_names=["a", "b"],
        per_class=True, kid_subsets=5, kid_subset_size=20,
    )
    assert set(res["per_class"]) == {"a", "b"}
    # class a matches, class b is displaced by 10 along every axis
    assert res["per_class"]["a"]["fd"] < 1.0 < 100.0 < res["per_class"]["b"]["fd"]
    assert res["per_class"]["b"]["precision"] == 0.0
    assert res["per_class"]["a"]["fd"] == pytest.approx(frechet_distance(real=real[:60], synthetic=syn[:60]))
    assert any("class 'b'" in w and "< 50" in w for w in res["warnings"])
    with pytest.raises(TypeError):
        frechet_distance(real, syn)  # keyword-only: sets cannot be swapped by position
