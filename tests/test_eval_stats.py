"""Bootstrap CI and Wilcoxon against independent computations on fixed numbers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from medbalance.evaluation.stats import bootstrap_ci, min_attainable_p, paired_wilcoxon, summarize

VALUES = [0.61, 0.74, 0.58, 0.69, 0.66]


def test_bootstrap_ci_matches_numpy_percentile_bootstrap():
    lo, hi = bootstrap_ci(VALUES, n_resamples=20_000, seed=1)
    rng = np.random.default_rng(123)
    x = np.asarray(VALUES)
    means = x[rng.integers(0, len(x), size=(20_000, len(x)))].mean(1)
    ref_lo, ref_hi = np.percentile(means, [2.5, 97.5])
    assert lo == pytest.approx(ref_lo, abs=0.006) and hi == pytest.approx(ref_hi, abs=0.006)
    assert lo < np.mean(VALUES) < hi


def test_bootstrap_degenerate_cases():
    assert bootstrap_ci([0.5]) == (0.5, 0.5)
    assert bootstrap_ci([0.3, 0.3, 0.3]) == (0.3, 0.3)
    assert all(np.isnan(bootstrap_ci([])))


def test_summarize():
    s = summarize(VALUES)
    assert s.mean == pytest.approx(np.mean(VALUES)) and s.std == pytest.approx(np.std(VALUES, ddof=1)) and s.n == 5


def test_wilcoxon_matches_scipy_and_hand_value():
    arm = [0.70, 0.80, 0.66, 0.75, 0.71, 0.69, 0.77, 0.72]
    base = [0.61, 0.74, 0.58, 0.69, 0.66, 0.70, 0.70, 0.60]
    r = paired_wilcoxon(arm, base)
    ref = stats.wilcoxon(arm, base)
    assert r["p"] == pytest.approx(ref.pvalue) and r["n"] == 8
    # hand check: differences (0.09,0.06,0.08,0.06,0.05,-0.01,0.07,0.12): only one negative, rank 1 -> W = 1,
    # exact two-sided p = 2 * P(W <= 1) = 2 * 2 / 2**8
    assert r["statistic"] == pytest.approx(1.0)
    assert r["p"] == pytest.approx(4 / 256)


def test_wilcoxon_zero_differences_and_min_p():
    r = paired_wilcoxon([0.5, 0.6], [0.5, 0.6])
    assert r["p"] == 1.0
    assert min_attainable_p(5) == pytest.approx(0.0625)
    with pytest.raises(ValueError):
        paired_wilcoxon([1, 2], [1])
