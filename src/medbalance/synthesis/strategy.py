"""Class-distribution control with imbalanced-learn's ``sampling_strategy`` semantics.

:func:`plan_sampling` returns, per class, how many *new* (synthetic) samples to make, exactly as
``imblearn.utils.check_sampling_strategy(..., sampling_type='over-sampling')`` plans them:

- ``'auto'`` (= ``'not majority'``), ``'minority'``, ``'not minority'``, ``'not majority'``,
  ``'all'``: bring the targeted classes up to the majority count;
- a ``dict`` ``{class: target_total}`` with every target >= the current count;
- a callable ``f(labels) -> dict`` (interpreted as the dict form);
- a float in (0, 1] for two classes only: minority/majority ratio after resampling.

medbalance adds two plans used in the papers: :func:`plan_ratio` (synthetic = r x real, per class
or overall, as in Red-GAN's 50/100/200 % experiments) and :func:`plan_single_class` (inject n
samples of one class only, Red-GAN's "control over the accuracy of one class").

Invalid strategies raise :class:`SamplingStrategyError`, which is a ``ValueError`` (the kind
imbalanced-learn raises, with the same wording) and a :class:`~medbalance.errors.ConfigError`
(so the CLI reports it as one line with exit code 2).
"""

from __future__ import annotations

from collections import OrderedDict
from numbers import Integral, Real
from typing import Any, Callable, Hashable, Mapping, Sequence, Union

import numpy as np

from medbalance.errors import ConfigError

Strategy = Union[str, float, Mapping[Hashable, int], Callable[[np.ndarray], Mapping[Hashable, int]]]

STRING_STRATEGIES = ("minority", "not minority", "not majority", "all", "auto")


class SamplingStrategyError(ConfigError, ValueError):
    """An invalid sampling strategy (a ValueError, like imbalanced-learn's)."""


def class_counts(labels: Sequence[Hashable] | np.ndarray) -> "OrderedDict[Hashable, int]":
    """Counts per class, classes in sorted order (as ``np.unique``)."""
    y = np.asarray(labels)
    if y.size == 0:
        raise SamplingStrategyError("Found array with 0 sample(s) while a minimum of 1 is required.")
    uniq, counts = np.unique(y, return_counts=True)
    return OrderedDict((_py(k), int(c)) for k, c in zip(uniq, counts))


def _py(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x


def _majority(stats: Mapping[Hashable, int]) -> Hashable:
    # first class (in sorted order) with the largest count, as max(dict, key=dict.get) does
    return max(stats, key=stats.get)


def _minority(stats: Mapping[Hashable, int]) -> Hashable:
    return min(stats, key=stats.get)


def _plan_string(strategy: str, stats: Mapping[Hashable, int]) -> dict[Hashable, int]:
    n_major = max(stats.values())
    if strategy in ("auto", "not majority"):
        skip = _majority(stats)
        return {k: n_major - v for k, v in stats.items() if k != skip}
    if strategy == "not minority":
        skip = _minority(stats)
        return {k: n_major - v for k, v in stats.items() if k != skip}
    if strategy == "minority":
        only = _minority(stats)
        return {only: n_major - stats[only]}
    if strategy == "all":
        return {k: n_major - v for k, v in stats.items()}
    if strategy == "majority":
        raise SamplingStrategyError("'sampling_strategy'='majority' cannot be used with over-sampler.")
    raise SamplingStrategyError(
        f"When 'sampling_strategy' is a string, it needs to be one of {list(STRING_STRATEGIES)}. "
        f"Got '{strategy}' instead."
    )


def _plan_dict(strategy: Mapping[Hashable, Any], stats: Mapping[Hashable, int]) -> dict[Hashable, int]:
    unknown = set(strategy) - set(stats)
    if unknown:
        raise SamplingStrategyError(f"The {unknown} target class is/are not present in the data.")
    for v in strategy.values():
        if not isinstance(v, Integral) or isinstance(v, bool):
            raise SamplingStrategyError(
                f"The number of samples in a class must be an integer; 'sampling_strategy' contains {v!r}."
            )
    if any(v < 0 for v in strategy.values()):
        raise SamplingStrategyError(
            "The number of samples in a class cannot be negative."
            f"'sampling_strategy' contains some negative value: {dict(strategy)}"
        )
    out = {}
    for k, target in strategy.items():
        if target < stats[k]:
            raise SamplingStrategyError(
                "With over-sampling methods, the number of samples in a class should be greater or equal "
                f"to the original number of samples. Originally, there is {stats[k]} samples and "
                f"{target} samples are asked."
            )
        out[k] = int(target) - stats[k]
    return out


def _plan_float(ratio: float, stats: Mapping[Hashable, int]) -> dict[Hashable, int]:
    if len(stats) != 2:
        raise SamplingStrategyError(
            '"sampling_strategy" can be a float only when the type of target is binary. For multi-class, use a dict.'
        )
    n_major = max(stats.values())
    skip = _majority(stats)
    out = {k: int(n_major * ratio - v) for k, v in stats.items() if k != skip}
    if any(n <= 0 for n in out.values()):
        raise SamplingStrategyError(
            "The specified ratio required to remove samples from the minority class while trying to "
            "generate new samples. Please increase the ratio."
        )
    return out


def plan_sampling(labels: Sequence[Hashable] | np.ndarray, sampling_strategy: Strategy = "auto") -> "OrderedDict[Hashable, int]":
    """Number of new samples per class (sorted by class), imbalanced-learn's over-sampling semantics."""
    stats = class_counts(labels)
    if len(stats) <= 1:
        raise SamplingStrategyError(f"The target 'y' needs to have more than 1 class. Got {len(stats)} class instead")
    s = sampling_strategy
    if isinstance(s, str):
        plan = _plan_string(s, stats)
    elif isinstance(s, Mapping):
        plan = _plan_dict(s, stats)
    elif isinstance(s, (list, tuple)):
        raise SamplingStrategyError("'sampling_strategy' cannot be a list for samplers which are not cleaning methods.")
    elif isinstance(s, Real) and not isinstance(s, bool):
        if s <= 0 or s > 1:
            raise SamplingStrategyError(
                f"When 'sampling_strategy' is a float, it should be in the range (0, 1]. Got {s} instead."
            )
        plan = _plan_float(float(s), stats)
    elif callable(s):
        result = s(np.asarray(labels))
        if not isinstance(result, Mapping):
            raise SamplingStrategyError(
                f"A callable 'sampling_strategy' must return a dict of class -> target count; got {type(result).__name__}."
            )
        plan = _plan_dict(result, stats)
    else:
        raise SamplingStrategyError(
            f"'sampling_strategy' must be a str, float, dict or callable; got {type(s).__name__}."
        )
    return OrderedDict(sorted(plan.items(), key=lambda kv: _sort_key(kv[0], list(stats))))


def _sort_key(k: Hashable, order: list[Hashable]) -> int:
    return order.index(k)


def plan_ratio(
    labels: Sequence[Hashable] | np.ndarray, ratio: float, mode: str = "per_class", classes: Sequence[Hashable] | None = None
) -> "OrderedDict[Hashable, int]":
    """Synthetic = ``ratio`` x real.

    ``mode='per_class'``: every (targeted) class gets ``round(ratio * n_class)`` new samples, so the
    class distribution is unchanged (Red-GAN's 50/100/200 % mixing). ``mode='overall'``:
    ``round(ratio * N)`` new samples in total, shared equally between the targeted classes
    (largest remainder), which moves the distribution towards balance.
    """
    if not isinstance(ratio, Real) or isinstance(ratio, bool) or ratio < 0:
        raise SamplingStrategyError(f"ratio must be a number >= 0; got {ratio!r}")
    stats = class_counts(labels)
    targets = list(stats) if classes is None else list(classes)
    unknown = set(targets) - set(stats)
    if unknown:
        raise SamplingStrategyError(f"The {unknown} target class is/are not present in the data.")
    if mode == "per_class":
        plan = {k: int(round(ratio * stats[k])) for k in targets}
    elif mode == "overall":
        total = int(round(ratio * sum(stats.values())))
        base, rem = divmod(total, len(targets))
        plan = {k: base + (1 if i < rem else 0) for i, k in enumerate(targets)}
    else:
        raise SamplingStrategyError(f"unknown ratio mode {mode!r}; allowed: overall, per_class")
    return OrderedDict((k, plan[k]) for k in stats if k in plan)


def plan_single_class(labels: Sequence[Hashable] | np.ndarray, cls: Hashable, n: int) -> "OrderedDict[Hashable, int]":
    """Inject ``n`` synthetic samples of class ``cls`` only."""
    stats = class_counts(labels)
    if cls not in stats:
        raise SamplingStrategyError(f"The {{{cls!r}}} target class is/are not present in the data.")
    if not isinstance(n, Integral) or isinstance(n, bool) or n < 0:
        raise SamplingStrategyError(f"n must be an integer >= 0; got {n!r}")
    return OrderedDict([(cls, int(n))])


def parse_strategy(text: str) -> Strategy:
    """Parse a command-line strategy: a name (``auto``, ``not majority``/``not-majority``, ...), a float,
    or ``class=count,class=count`` target totals."""
    t = text.strip()
    if "=" in t or ":" in t:
        out: dict[str, int] = {}
        for part in t.split(","):
            sep = "=" if "=" in part else ":"
            k, _, v = part.partition(sep)
            k = k.strip()
            try:
                out[k] = int(v)
            except ValueError:
                raise SamplingStrategyError(f"strategy {text!r}: count for class {k!r} is not an integer") from None
        return out
    try:
        return float(t)
    except ValueError:
        pass
    return t.replace("-", " ").replace("_", " ")
