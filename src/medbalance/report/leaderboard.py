"""The "Benchmark leaderboard" section from ``benchmark.json`` (written by ``medbalance benchmark``).

Shows the baseline arms, then one row per (generator, synthetic arm): the primary metrics (mean [95 % CI]), the
difference to the best baseline arm with its CI and Holm-adjusted p, the verdict as a word and a colour
(helps green, hurts red, no evidence grey), and the generator's fidelity, diversity and privacy numbers beside
it; then one line naming the variance sources the intervals cover and the test used. Any missing or null value
is shown as ``n/a``.
"""

from __future__ import annotations

from typing import Any

from medbalance.report.verdicts import fmt_ci, fmt_num, word_class


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


def _diff(c: Any) -> str:
    """``+0.012 [-0.020, 0.050]`` of a comparison dict."""
    if not isinstance(c, dict) or c.get("diff") is None:
        return "n/a"
    d = c["diff"]
    sign = "+" if isinstance(d, (int, float)) and d > 0 else ""
    return f"{sign}{fmt_num(d)} [{fmt_num(c.get('ci_low'))}, {fmt_num(c.get('ci_high'))}]"


def _pair(a: Any, b: Any) -> str:
    return "n/a" if a is None and b is None else f"{fmt_num(a)} / {fmt_num(b)}"


GENERATOR_COLUMNS = ["fidelity: FD / precision / recall", "diversity: MS-SSIM syn / real",
                     "privacy: NN dist. syn / real, near copies"]


def generator_cells(gen: Any) -> list[Any]:
    """The fidelity / diversity / privacy cells shown beside each leaderboard row."""
    fid, div, priv = _get(gen, "fidelity"), _get(gen, "diversity"), _get(gen, "privacy")
    fid_txt = "n/a" if fid is None else " / ".join(fmt_num(_get(fid, k)) for k in ("fd", "precision", "recall"))
    priv_txt = "n/a" if priv is None else (_pair(_get(priv, "nn_distance_median"), _get(priv, "real_nn_distance_median")),
                                            f"{fmt_num(_get(priv, 'near_copies'))} near copies")
    return [fid_txt, _pair(_get(div, "ms_ssim"), _get(div, "ms_ssim_real")), priv_txt]


def baselines_rows(bench: dict[str, Any], metrics: list[str]) -> list[list[str]]:
    best = _dict(bench.get("best_baseline"))
    rows = []
    for arm, summ in _dict(bench.get("baselines")).items():
        cells = [fmt_ci(_get(summ, m)) + (" (best)" if best.get(m) == arm else "") for m in metrics]
        rows.append([arm, *cells])
    return rows


def leaderboard_rows(bench: dict[str, Any], metrics: list[str]) -> tuple[list[list[Any]], list[str], list[dict[int, str]]]:
    """Rows (a tuple cell is shown as lines), row classes (overall verdict) and per-cell classes (metric verdicts)."""
    gens, best = _dict(bench.get("generators")), _dict(bench.get("best_baseline"))
    rows, classes, cell_classes = [], [], []
    for r in _list(bench.get("leaderboard")):
        r = _dict(r)
        arm = str(r.get("arm") or "n/a")
        cells: list[Any] = [str(r.get("generator") or "n/a"), (arm, "feature level") if r.get("kind") == "feature" else arm]
        marks: dict[int, str] = {}
        for m in metrics:
            c = _get(r, "vs_best_baseline", m)
            base = _get(c, "baseline")
            vs = () if base is not None and base == best.get(m) else (f"vs {base or 'n/a'}",)
            verdict = _get(c, "verdict") or "n/a"
            cells += [(fmt_ci(_get(r, "metrics", m)), _diff(c)), (verdict, f"p {fmt_num(_get(c, 'p_holm'))}", *vs)]
            marks[len(cells) - 1] = "w " + word_class(verdict)
        cells += generator_cells(gens.get(r.get("generator")))
        rows.append(cells)
        classes.append(word_class(r.get("verdict") or "no evidence"))
        cell_classes.append(marks)
    return rows, classes, cell_classes


def generators_rows(bench: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, g in _dict(bench.get("generators")).items():
        g = _dict(g)
        budget = next((f"{fmt_num(g[k])} {k}" for k in ("steps", "epochs", "minutes") if g.get(k) is not None), "n/a")
        fid = _dict(g.get("fidelity"))
        rows.append([name, str(g.get("model") or "n/a"), str(g.get("preset") or "n/a"), budget,
                     fmt_num(g.get("train_seconds"), 1), str(fid.get("extractor") or "n/a"),
                     *(fmt_num(fid.get(k)) for k in ("fd", "kid", "precision", "recall", "density", "coverage")),
                     fmt_num(_get(g, "privacy", "n"))])
    return rows


def coverage_statement(bench: dict[str, Any]) -> str:
    """One line: which variance sources the intervals cover, and the test used."""
    sources = [str(s) for s in _list(bench.get("variance_sources"))]
    tests = _dict(bench.get("tests"))
    return (f"Intervals (95 % CI) cover: {'; '.join(sources) if sources else 'n/a'} "
            f"({fmt_num(bench.get('n_replicates'))} paired replicates per cell). Test: {tests.get('method') or 'n/a'}; "
            f"alpha {fmt_num(tests.get('alpha'))}, {fmt_num(tests.get('n_comparisons'))} comparisons.")


LEADERBOARD_NOTE = ("Verdict against the best baseline arm per metric (Holm-adjusted p): helps (green) = significantly "
                    "better, hurts (red) = significantly worse, no evidence (grey) otherwise; the row's colour is the "
                    "first primary metric's verdict. FD: lower is better; MS-SSIM: lower is more varied; NN dist.: median "
                    "distance of synthetic (and of real held-out) images to the nearest training image.")


def leaderboard_tables(bench: dict[str, Any]) -> dict[str, Any]:
    """The leaderboard of a ``benchmark.json`` as text and tables (rendered by :mod:`medbalance.report.html`):
    ``intro``, ``coverage``, ``baselines`` / ``board`` / ``generators`` as ``(header, rows)`` (``board`` also with
    row classes and the verdict column), ``notes`` and ``numbers`` (for report.json)."""
    metrics = [str(m) for m in _list(bench.get("primary_metrics"))]
    cells = _dict(bench.get("cells"))
    best = _dict(bench.get("best_baseline"))
    header = ["generator", "arm"]
    for m in metrics:
        header += [f"{m}: mean [CI] / difference vs best baseline ({best.get(m) or 'n/a'}) [CI]",
                   f"{m}: verdict / Holm p"]
    header += GENERATOR_COLUMNS
    rows, classes, cell_classes = leaderboard_rows(bench, metrics)
    gen_header = ["generator", "model", "preset", "budget", "train s", "extractor", "FD", "KID", "precision", "recall",
                  "density", "coverage", "privacy n"]
    return {
        "intro": (f"task {bench.get('task') or 'n/a'}; data {bench.get('dataset') or 'n/a'}; rarest training class "
                  f"{bench.get('minority') or 'n/a'}; cells done {fmt_num(cells.get('done'))} of "
                  f"{fmt_num(cells.get('total'))}; {fmt_num(bench.get('seconds'), 0)} s"),
        "coverage": coverage_statement(bench),
        "baselines": (["arm", *metrics], baselines_rows(bench, metrics)),
        "board": (header, rows, classes, cell_classes),
        "generators": (gen_header, generators_rows(bench)),
        "notes": [LEADERBOARD_NOTE] + ([f"command: {bench['command']}"] if bench.get("command") else []),
        "numbers": {"primary_metrics": metrics, "best_baseline": bench.get("best_baseline"),
                    "rows": [{"generator": _get(r, "generator"), "arm": _get(r, "arm"), "verdict": _get(r, "verdict")}
                             for r in _list(bench.get("leaderboard"))],
                    "variance_sources": bench.get("variance_sources"), "tests": bench.get("tests")},
    }


__all__ = ["coverage_statement", "leaderboard_tables"]
