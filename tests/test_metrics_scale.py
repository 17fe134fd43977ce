"""Blocked neighbour search and ball counts against float64 brute force; the metrics-at-scale benchmark's tiny run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medbalance.errors import DataError
from medbalance.evaluation.fidelity import (
    density_coverage,
    fidelity_metrics,
    frechet_distance,
    precision_recall,
)
from medbalance.utils.neighbors import ball_counts, knn, knn_pair

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_metrics_scale.py"


def _dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return np.sqrt(((a64[:, None, :] - b64[None, :, :]) ** 2).sum(-1))


def _points(n: int, d: int, seed: int, offset: float = 30.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) + offset).astype(np.float32)  # offset: float32 cancellation


def test_knn_self_symmetric_scan_matches_brute_force():
    x = _points(203, 24, 0)
    x[50] = x[7]  # a duplicate pair: each is the other's neighbour at distance 0
    x[120] = x[7]  # and a third copy: ties broken by the lower index
    for block in (16, 64, 1024):  # tiles on and off the diagonal, ragged last tile
        d, i = knn(x, x, k=4, exclude_self=True, block=block)
        bd = _dist(x, x)
        np.fill_diagonal(bd, np.inf)
        order = np.argsort(bd, 1, kind="stable")[:, :4]
        np.testing.assert_array_equal(i, order)
        np.testing.assert_allclose(d, np.take_along_axis(bd, order, 1), rtol=1e-12)
    assert d[7, 0] == 0.0 and i[7, 0] == 50 and i[7, 1] == 120 and i[50, 0] == 7


def test_knn_pair_equals_two_knn_calls():
    a, b = _points(150, 16, 1), _points(97, 16, 2)
    b[3] = a[10]
    (da, ia), (db, ib) = knn_pair(a, b, k=2, block=32)
    for q, r, d, i in ((a, b, da, ia), (b, a, db, ib)):
        bd = _dist(q, r)
        order = np.argsort(bd, 1, kind="stable")[:, :2]
        np.testing.assert_array_equal(i, order)
        np.testing.assert_allclose(d, np.take_along_axis(bd, order, 1), rtol=1e-12)
    assert da[10, 0] == 0.0 and ia[10, 0] == 3 and db[3, 0] == 0.0 and ib[3, 0] == 10


def test_knn_rejects_non_finite_values():
    x = _points(20, 4, 3)
    x[5, 1] = np.nan
    with pytest.raises(DataError, match="NaN"):
        knn(x, _points(20, 4, 4))


def _brute_counts(a: np.ndarray, b: np.ndarray, r: np.ndarray, around_b: bool) -> tuple[np.ndarray, np.ndarray]:
    d2 = _dist(a, b) ** 2
    r2 = np.asarray(r, np.float64) ** 2
    thr = r2 + 1e-9 * (r2 + 1.0)
    inside = d2 <= (thr[None, :] if around_b else thr[:, None])
    return (inside.sum(1), inside.sum(0)) if around_b else (inside.sum(0), inside.sum(1))


@pytest.mark.parametrize("block", [8, 1024])
def test_ball_counts_match_brute_force_including_surface_points(block):
    rng = np.random.default_rng(5)
    a = (rng.normal(size=(120, 12)) + 100.0).astype(np.float64)
    b = (rng.normal(size=(90, 12)) + 100.0).astype(np.float64)
    rb = np.quantile(_dist(a, b), 0.05, axis=0)  # ~6 a rows per b ball
    ra = np.quantile(_dist(a, b), 0.1, axis=1)
    # points exactly on a surface: 40 radii are the exact float64 distance of one pair (float32 alone gets
    # about half of these wrong)
    for j in range(40):
        rb[j] = np.sqrt(((a[3 * j] - b[j]) ** 2).sum())
        ra[j] = np.sqrt(((a[j] - b[2 * j]) ** 2).sum())
    (in_b, pop_b), = ball_counts(a, b, b_radii=[rb], block=block)[0]
    (in_a, pop_a), = ball_counts(a, b, a_radii=[ra], block=block)[1]
    ref_in_b, ref_pop_b = _brute_counts(a, b, rb, around_b=True)
    ref_in_a, ref_pop_a = _brute_counts(a, b, ra, around_b=False)
    np.testing.assert_array_equal(in_b, ref_in_b)
    np.testing.assert_array_equal(pop_b, ref_pop_b)
    np.testing.assert_array_equal(in_a, ref_in_a)
    np.testing.assert_array_equal(pop_a, ref_pop_a)
    assert pop_b.sum() > 100 and pop_a.sum() > 100  # the test exercises real memberships
    # several radius vectors at once give the same counts as one at a time
    both_b, both_a = ball_counts(a, b, b_radii=[rb, 2 * rb], a_radii=[ra], block=block)
    np.testing.assert_array_equal(both_b[0][0], in_b)
    np.testing.assert_array_equal(both_a[0][1], pop_a)
    np.testing.assert_array_equal(both_b[1][1], _brute_counts(a, b, 2 * rb, around_b=True)[1])


def test_ball_counts_repeated_points_on_surfaces():
    # six points, repeated; every ball reaches exactly to the farthest of them, so a sixth of all pairs lie on a
    # surface: the first row block has more of them than the pair-by-pair float64 check takes (one float64
    # product of the block), the last block fewer
    base = np.random.default_rng(6).normal(size=(6, 8)) + 5.0
    a, b = np.repeat(base, 200, axis=0), np.repeat(base, 100, axis=0)
    r = _dist(b, base).max(1)
    (in_b, pop_b), = ball_counts(a, b, b_radii=[r])[0]
    assert np.all(in_b == b.shape[0]) and np.all(pop_b == a.shape[0])
    (in_b0, pop_b0), = ball_counts(a, b, b_radii=[np.zeros(b.shape[0])])[0]
    assert np.all(in_b0 == 100) and np.all(pop_b0 == 200)


def _prdc_brute(real: np.ndarray, syn: np.ndarray, k_pr: int, k_dc: int) -> dict[str, float]:
    """Independent reference: full float64 distance matrices, sorted radii, closed balls."""
    drr, dss, drs = _dist(real, real), _dist(syn, syn), _dist(real, syn)
    rr = np.sort(drr, 1)  # column 0 is the point itself
    rs = np.sort(dss, 1)

    def tol(r: np.ndarray) -> np.ndarray:
        return r**2 + 1e-9 * (r**2 + 1.0)

    in_pr = drs**2 <= tol(rr[:, k_pr])[:, None]
    in_dc = drs**2 <= tol(rr[:, k_dc])[:, None]
    return {
        "precision": float(in_pr.any(0).mean()),
        "recall": float((drs**2 <= tol(rs[:, k_pr])[None, :]).any(1).mean()),
        "density": float(in_dc.sum() / (k_dc * syn.shape[0])),
        "coverage": float(in_dc.any(1).mean()),
    }


def test_precision_recall_density_coverage_match_brute_force():
    rng = np.random.default_rng(7)
    real = rng.normal(size=(260, 20)) + 3.0
    syn = 1.2 * rng.normal(size=(240, 20)) + 3.3
    ref = _prdc_brute(real, syn, 3, 5)
    assert 0.05 < ref["precision"] < 0.95 and 0.05 < ref["coverage"] < 0.95  # not a trivial case
    pr = precision_recall(real=real, synthetic=syn, k=3)
    dc = density_coverage(real=real, synthetic=syn, k=5)
    assert pr == {"precision": ref["precision"], "recall": ref["recall"]}
    assert dc["coverage"] == ref["coverage"]
    assert dc["density"] == pytest.approx(ref["density"], abs=1e-15)
    both = fidelity_metrics(real=real, synthetic=syn, metrics=("precision_recall", "density_coverage"))["overall"]
    assert {k: both[k] for k in ("precision", "recall")} == pr
    assert {k: both[k] for k in ("density", "coverage")} == dc


def test_fd_with_singular_covariances_matches_svd_identity():
    # fewer samples than dimensions: S1 is singular (no Cholesky factor). With centred data A, B,
    # eig(S1 S2) = sigma(A B^T)^2 / ((n1 - 1)(n2 - 1)), so tr sqrt(S1 S2) is a nuclear norm.
    rng = np.random.default_rng(8)
    a = rng.normal(size=(10, 24)) * np.linspace(0.5, 2.0, 24)
    b = rng.normal(size=(14, 24)) + 0.3
    ac, bc = a - a.mean(0), b - b.mean(0)
    nuclear = np.linalg.svd(ac @ bc.T, compute_uv=False).sum() / np.sqrt(9 * 13)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum() + (ac**2).sum() / 9 + (bc**2).sum() / 13 - 2 * nuclear
    # square roots of the ~0 eigenvalues amplify float64 rounding to ~1e-8 relative (as with sqrtm)
    assert frechet_distance(real=a, synthetic=b) == pytest.approx(ref, rel=1e-7)
    assert frechet_distance(real=b, synthetic=a) == pytest.approx(ref, rel=1e-7)


def test_bench_metrics_scale_tiny_prints_every_metric(tmp_path):
    out = tmp_path / "m.json"
    path = os.pathsep.join(p for p in [str(REPO / "src"), os.environ.get("PYTHONPATH", "")] if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "MEDBALANCE_QUIET": "1"}
    r = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--threads", "1", "--json", str(out)],
                       check=False, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in ("| fd |", "| kid |", "| precision/recall + density/coverage |", "| fidelity total |",
                 "| privacy NN pass |", "peak RSS"):
        assert name in r.stdout, name
    res = json.loads(out.read_text())
    rows = {row["metric"]: row for row in res["rows"]}
    assert set(rows) == {"fd", "kid", "precision/recall + density/coverage", "fidelity total", "privacy NN pass"}
    assert all(row["seconds"] > 0 and "ratio_ref_over_ours" in row for row in rows.values())
    # the plain references agree with medbalance
    assert rows["fd"]["diff"] < 1e-9
    assert rows["kid"]["diff"] < 1e-12
    assert rows["precision/recall + density/coverage"]["diff"] < 1e-12
    assert rows["privacy NN pass"]["diff"] < 0.01  # sklearn works in float32 here: a share may move by one sample
    assert res["values"]["privacy"]["exact_duplicates"] == res["planted_duplicates"]
    assert res["peak_rss_mb_medbalance"] > 0
