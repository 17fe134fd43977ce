"""The "Benchmark leaderboard" tables from ``benchmark.json`` (written by ``medbalance benchmark``).

Baseline arms, then one row per (generator, synthetic arm): primary metrics (mean [95 % CI]), the difference to the
best baseline arm with its CI and Holm-adjusted p, the verdict as a word and a colour (helps green, hurts red, no
evidence grey) and the generator's fidelity, diversity and privacy numbers. Missing or null values show as ``n/a``.
"""

from __future__ import annotations

from typing import Any

from medbalance.report.verdicts import word_class
from medbalance.utils.tables import fmt_ci, fmt_num

FIDELITY_KEYS = ["fd", "kid", "precision", "recall", "density", "coverage"]


def _get(d: Any, *keys: str) -> Any:
    """``d[k1][k2]...`` or None when any level is missing or not a dict."""
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _list(v: Any) -> list[Any]:
    return v if isinstance(v, list) else []


def _na(v: Any) -> str:
    return str(v or "n/a")


def _diff(c: Any) -> str:
    """``+0.012 [-0.020, 0.050]`` of a comparison dict."""
    if not isinstance(c, dict) or c.get("diff") is None:
        return "n/a"
    sign = "+" if isinstance(c["diff"], (int, float)) and c["diff"] > 0 else ""
    return f"{sign}{fmt_num(c['diff'])} [{fmt_num(c.get('ci_low'))}, {fmt_num(c.get('ci_high'))}]"


def _pair(a: Any, b: Any) -> str:
    return "n/a" if a is None and b is None else f"{fmt_num(a)} / {fmt_num(b)}"


def leaderboard_rows(bench: dict[str, Any], metrics: list[str]) -> tuple[list[list[Any]], list[str], list[dict[int, str]]]:
    """Rows (a tuple cell is shown as lines), row classes (overall verdict) and per-cell classes (metric verdicts)."""
    gens, best = _dict(bench.get("generators")), _dict(bench.get("best_baseline"))
    rows, classes, cell_classes = [], [], []
    for r in map(_dict, _list(bench.get("leaderboard"))):
        arm = _na(r.get("arm"))
        cells: list[Any] = [_na(r.get("generator")), (arm, "feature level") if r.get("kind") == "feature" else arm]
        marks: dict[int, str] = {}
        for m in metrics:
            c = _get(r, "vs_best_baseline", m)
            base = _get(c, "baseline")
            vs = () if base is not None and base == best.get(m) else (f"vs {base or 'n/a'}",)
            verdict = _get(c, "verdict") or "n/a"
            cells += [(fmt_ci(_get(r, "metrics", m)), _diff(c)), (verdict, f"p {fmt_num(_get(c, 'p_holm'))}", *vs)]
            marks[len(cells) - 1] = "w " + word_class(verdict)
        g = gens.get(r.get("generator"))  # the generator's fidelity / diversity / privacy beside the row
        fid, div, priv = _get(g, "fidelity"), _get(g, "diversity"), _get(g, "privacy")
        cells.append("n/a" if fid is None else " / ".join(fmt_num(_get(fid, k)) for k in ("fd", "precision", "recall")))
        cells.append(_pair(_get(div, "ms_ssim"), _get(div, "ms_ssim_real")))
        cells.append("n/a" if priv is None else (_pair(_get(priv, "nn_distance_median"), _get(priv, "real_nn_distance_median")),
                                                 f"{fmt_num(_get(priv, 'near_copies'))} near copies"))
        rows.append(cells)
        classes.append(word_class(r.get("verdict") or "no evidence"))
        cell_classes.append(marks)
    return rows, classes, cell_classes


def _generator_row(name: str, g: dict[str, Any]) -> list[str]:
    budget = next((f"{fmt_num(g[k])} {k}" for k in ("steps", "epochs", "minutes") if g.get(k) is not None), "n/a")
    fid = _dict(g.get("fidelity"))
    return [name, _na(g.get("model")), _na(g.get("preset")), budget, fmt_num(g.get("train_seconds"), 1),
            _na(fid.get("extractor")), *(fmt_num(fid.get(k)) for k in FIDELITY_KEYS), fmt_num(_get(g, "privacy", "n"))]


LEADERBOARD_NOTE = ("Verdict against the best baseline arm per metric (Holm-adjusted p): helps (green) = significantly "
                    "better, hurts (red) = significantly worse, no evidence (grey) otherwise; the row's colour is the "
                    "first primary metric's verdict. FD: lower is better; MS-SSIM: lower is more varied; NN dist.: median "
                    "distance of synthetic (and of real held-out) images to the nearest training image.")


def leaderboard_tables(bench: dict[str, Any]) -> dict[str, Any]:
    """The leaderboard as text and tables (rendered by :mod:`medbalance.report.html`): ``intro``, ``coverage``,
    ``baselines`` / ``board`` / ``generators`` as ``(header, rows)`` (``board`` also with row and cell classes),
    ``notes`` and ``numbers`` (for report.json)."""
    metrics = [str(m) for m in _list(bench.get("primary_metrics"))]
    cells, best, tests = _dict(bench.get("cells")), _dict(bench.get("best_baseline")), _dict(bench.get("tests"))
    header = ["generator", "arm"]
    for m in metrics:
        header += [f"{m}: mean [CI] / difference vs best baseline ({best.get(m) or 'n/a'}) [CI]",
                   f"{m}: verdict / Holm p"]
    header += ["fidelity: FD / precision / recall", "diversity: MS-SSIM syn / real",
               "privacy: NN dist. syn / real, near copies"]
    sources = [str(s) for s in _list(bench.get("variance_sources"))]
    baselines = [[arm, *(fmt_ci(_get(summ, m)) + (" (best)" if best.get(m) == arm else "") for m in metrics)]
                 for arm, summ in _dict(bench.get("baselines")).items()]
    return {
        "intro": (f"task {_na(bench.get('task'))}; data {_na(bench.get('dataset'))}; rarest training class "
                  f"{_na(bench.get('minority'))}; cells done {fmt_num(cells.get('done'))} of "
                  f"{fmt_num(cells.get('total'))}; {fmt_num(bench.get('seconds'), 0)} s"),
        "coverage": (f"Intervals (95 % CI) cover: {'; '.join(sources) if sources else 'n/a'} "
                     f"({fmt_num(bench.get('n_replicates'))} paired replicates per cell). Test: "
                     f"{_na(tests.get('method'))}; alpha {fmt_num(tests.get('alpha'))}, "
                     f"{fmt_num(tests.get('n_comparisons'))} comparisons."),
        "baselines": (["arm", *metrics], baselines),
        "board": (header, *leaderboard_rows(bench, metrics)),
        "generators": (["generator", "model", "preset", "budget", "train s", "extractor", "FD", "KID", "precision",
                        "recall", "density", "coverage", "privacy n"],
                       [_generator_row(name, _dict(g)) for name, g in _dict(bench.get("generators")).items()]),
        "notes": [LEADERBOARD_NOTE] + ([f"command: {bench['command']}"] if bench.get("command") else []),
        "numbers": {"primary_metrics": metrics, "best_baseline": bench.get("best_baseline"),
                    "rows": [{"generator": _get(r, "generator"), "arm": _get(r, "arm"), "verdict": _get(r, "verdict")}
                             for r in _list(bench.get("leaderboard"))],
                    "variance_sources": bench.get("variance_sources"), "tests": bench.get("tests")},
    }


__all__ = ["FIDELITY_KEYS", "leaderboard_tables"]
