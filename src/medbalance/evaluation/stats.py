"""Statistics for comparing experiment arms: bootstrap confidence intervals and paired tests.

- :func:`bootstrap_ci`: percentile bootstrap of the mean (``scipy.stats.bootstrap``), seeded.
- :func:`paired_wilcoxon`: Wilcoxon signed-rank test of paired values (``scipy.stats.wilcoxon``), e.g. one
  arm vs ``real`` across seeds (the same split per seed) or across test cases. With n pairs the smallest
  attainable two-sided p-value is ``2 / 2**n`` (0.0625 for 5 seeds): :func:`min_attainable_p` says so, and the
  verdicts in the report use it instead of pretending significance is possible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats


@dataclass
class Summary:
    mean: float
    std: float
    ci_low: float
    ci_high: float
    n: int

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std, "ci_low": self.ci_low, "ci_high": self.ci_high, "n": self.n}


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap CI of the mean. One value gives (v, v); NaNs are dropped."""
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1 or np.all(x == x[0]):
        return float(x[0]), float(x[0])
    res = stats.bootstrap(
        (x,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method="percentile",
        random_state=np.random.default_rng(seed), vectorized=True,
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarize(values: Sequence[float], confidence: float = 0.95, seed: int = 0) -> Summary:
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    lo, hi = bootstrap_ci(x, confidence, seed=seed)
    return Summary(
        mean=float(x.mean()) if x.size else float("nan"),
        std=float(x.std(ddof=1)) if x.size > 1 else 0.0,
        ci_low=lo,
        ci_high=hi,
        n=int(x.size),
    )


def min_attainable_p(n_pairs: int) -> float:
    """Smallest two-sided p-value an exact Wilcoxon signed-rank test can give with n non-zero pairs."""
    return 2.0 / (2**n_pairs) if n_pairs > 0 else 1.0


def paired_wilcoxon(arm: Sequence[float], baseline: Sequence[float]) -> dict[str, float | int | str]:
    """Two-sided Wilcoxon signed-rank test of ``arm - baseline`` (pairs with NaN dropped).

    Returns ``p`` (1.0 when every difference is zero), the number of pairs, the mean difference and the
    smallest p-value attainable with that many pairs.
    """
    a = np.asarray(arm, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same shape, got {a.shape} and {b.shape}")
    ok = ~(np.isnan(a) | np.isnan(b))
    d = a[ok] - b[ok]
    out: dict[str, float | int | str] = {
        "n": int(d.size),
        "mean_diff": float(d.mean()) if d.size else float("nan"),
        "min_attainable_p": min_attainable_p(int(np.count_nonzero(d))),
    }
    if d.size == 0 or np.all(d == 0):
        out.update(p=1.0, statistic=float("nan"), method="all differences zero")
        return out
    res = stats.wilcoxon(a[ok], b[ok], alternative="two-sided", zero_method="wilcox")
    out.update(p=float(res.pvalue), statistic=float(res.statistic), method="wilcoxon signed-rank (two-sided)")
    return out


def paired_difference(arm: Sequence[float], baseline: Sequence[float], confidence: float = 0.95, seed: int = 0
                      ) -> dict[str, float | int]:
    """Effect size of ``arm`` over ``baseline`` on paired replicates: mean difference, its percentile-bootstrap CI,
    the standardised effect (mean / std of the differences, Cohen's d_z) and a two-sided paired t-test p-value
    (``scipy.stats.ttest_1samp`` on the differences; p = 1 when every difference is 0). Pairs with a NaN are dropped."""
    a = np.asarray(arm, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values must have the same length ({a.shape} vs {b.shape})")
    d = a - b
    d = d[~np.isnan(d)]
    n = int(d.size)
    if n == 0:
        return {"diff": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "d_z": float("nan"),
                "p": float("nan"), "n": 0}
    lo, hi = bootstrap_ci(d, confidence, seed=seed)
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    if n < 2 or np.all(d == d[0]):
        p = 1.0 if np.all(d == 0) else (float("nan") if n < 2 else 0.0)
    else:
        p = float(stats.ttest_1samp(d, 0.0).pvalue)
    return {"diff": float(d.mean()), "ci_low": lo, "ci_high": hi,
            "d_z": float(d.mean() / sd) if sd > 0 else float("nan"), "p": p, "n": n}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1). NaNs stay NaN and do not count."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out.tolist()
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()
