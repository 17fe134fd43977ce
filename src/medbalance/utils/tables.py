"""Numbers as text, and the one "mean [95 % CI]" table of per-arm summaries.

A summary entry is a dict with ``mean``, ``ci_low``, ``ci_high`` (:meth:`medbalance.evaluation.stats.Summary.to_dict`)
and, for an arm compared with ``real``, ``vs_real_seeds`` (its paired test across seeds, with ``p``). The report
(HTML), the experiments' terminal summaries and the CLI format them with these functions.
"""

from __future__ import annotations

import math
from typing import Any, Sequence


def finite(v: Any) -> bool:
    """A real number that is neither NaN nor infinite (bools are not numbers here)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def fmt_num(v: Any, digits: int = 3) -> str:
    """``digits`` decimals; two significant digits for smaller non-zero values; ``n/a`` for None, NaN, inf."""
    if v is None:
        return "n/a"
    if isinstance(v, (bool, int)):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        return f"{v:.{digits}f}" if abs(v) >= 10 ** (-digits) or v == 0 else f"{v:.2g}"
    return str(v)


def fmt_ci(e: Any, digits: int = 3, p: bool = False) -> str:
    """``mean [low, high]`` of a summary dict; ``n/a`` for what is missing. With ``p``: `` p=…`` of the entry's
    paired test against ``real`` appended when it has a finite one."""
    if not isinstance(e, dict):
        return "n/a"
    s = f"{fmt_num(e.get('mean'), digits)} [{fmt_num(e.get('ci_low'), digits)}, {fmt_num(e.get('ci_high'), digits)}]"
    pv = (e.get("vs_real_seeds") or {}).get("p") if p else None
    return s + f" p={float(pv):.3g}" if finite(pv) else s


def ci_table(summary: dict[str, Any], metrics: Sequence[str], title: str, arms: Sequence[str] | None = None,
             metric_header: str = "metric", p: bool = False) -> Any:
    """A rich table: one row per metric, one column per arm (default: every key of ``summary`` not starting with
    ``_``), cells :func:`fmt_ci` of ``summary[arm][metric]``."""
    from rich.table import Table

    arms = [a for a in summary if not a.startswith("_")] if arms is None else list(arms)
    t = Table(title=title)
    t.add_column(metric_header)
    for a in arms:
        t.add_column(a)
    for m in metrics:
        t.add_row(m, *[fmt_ci((summary.get(a) or {}).get(m), p=p) for a in arms])
    return t
