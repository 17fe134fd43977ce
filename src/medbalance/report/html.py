"""HTML assembly: :func:`build_report` writes ``report.html`` (one file: images embedded as base64 PNG, inline CSS,
no external resources) and ``report.json`` (every number the HTML shows), one function per section (:data:`SECTIONS`).

Each section appears only when its data exists; its ``<section id>`` is stable. Colours always come with words
(:mod:`medbalance.report.verdicts`): green "better" / red "worse" / grey "no evidence" against real-only; in the
benchmark leaderboard green "helps" / red "hurts" against the best baseline arm."""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbalance.report import figures
from medbalance.report.discover import Results, dig, load_results
from medbalance.report.verdicts import ALPHA, compare, make_verdicts, word_class
from medbalance.utils.imaging import png_data_uri
from medbalance.utils.io import atomic_write_json, atomic_write_text
from medbalance.utils.tables import finite, fmt_ci, fmt_num

GRID_ZOOM, GRID_MAX_WIDTH = 1.7, 520  # display zoom and widest width (px) of the sample grids (small images)
FIDELITY_KEYS = ["fd", "kid", "precision", "recall", "density", "coverage"]
CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1f3b5a;color:#fff;padding:18px 32px} header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.85;font-size:13px} main{max-width:1180px;margin:0 auto;padding:12px 24px 40px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:14px 22px 18px;margin:16px 0}
section{overflow-x:auto} h2{font-size:18px;margin:4px 0 10px;color:#1f3b5a;border-bottom:1px solid #e3e6ea}
h2{padding-bottom:6px} h3{font-size:14px;margin:14px 0 6px;color:#33435a}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0} td.l,th.l{text-align:left}
th,td{border:1px solid #dde1e6;padding:3px 8px;text-align:right;white-space:nowrap} th{text-align:center}
th{background:#eef1f5} tr.good td{background:#e3f4e6} tr.bad td{background:#fbe5e5} td.w,li.good,li.bad{font-weight:600}
td.w.good,li.good{color:#17692b} td.w.bad,li.bad{color:#a11d1d} td.w.neutral,li.neutral{color:#5b6470}
table.lb{font-size:11.5px} table.lb td,table.lb th{padding:3px 5px;white-space:normal} table.lb th{max-width:140px}
table.lb td.l{overflow-wrap:anywhere;min-width:6em} img{max-width:100%;height:auto;display:block;margin:6px 0}
img.px{image-rendering:pixelated} .grid{display:flex;flex-wrap:wrap;gap:18px} .grid figure{margin:0}
ul.verdicts li{margin:5px 0;line-height:1.4} .warn{color:#8a5a00;font-size:13px}
figcaption,.note{font-size:12px;color:#55606e} dl.kv dt{font-weight:600;color:#33435a} dl.kv dd{margin:0}
dl.kv{display:grid;grid-template-columns:max-content auto;gap:2px 16px;font-size:13px;margin:4px 0}
"""


# ============================================================================================ HTML pieces
def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def tag(name: str, inner: str, cls: str = "") -> str:
    """``<name class="cls">inner</name>``; ``inner`` is HTML (escape text with :func:`esc`)."""
    return f'<{name} class="{cls}">{inner}</{name}>' if cls else f"<{name}>{inner}</{name}>"


def h3(title: str) -> str:
    return tag("h3", esc(title))


def notes(*texts: str, cls: str = "note") -> str:
    return "".join(tag("p", esc(t), cls) for t in texts)


def img_tag(data: bytes, alt: str, pixelated: bool = False, width: int | None = None) -> str:
    attrs = (' class="px"' if pixelated else "") + (f' style="width:{int(width)}px"' if width else "")
    return f'<img{attrs} alt="{esc(alt)}" src="{png_data_uri(data)}">'


def table(header: list[str], rows: list[list[Any]], left: int = 1, row_classes: list[str] | None = None,
          cell_classes: list[dict[int, str]] | None = None, css_class: str = "") -> str:
    """A table; the first ``left`` columns left-aligned; ``row_classes[r]`` colours row ``r``; ``cell_classes[r][i]``
    adds CSS classes to one cell (``w``: the verdict word); a cell given as a tuple is shown as lines."""
    def td(r: int, i: int, c: Any) -> str:
        cls = " ".join(k for k in ("l" if i < left else "", cell_classes[r].get(i, "") if cell_classes else "") if k)
        return tag("td", "<br>".join(map(esc, c)) if isinstance(c, tuple) else esc(c), cls)

    head = tag("tr", "".join(tag("th", esc(h), "l" if i < left else "") for i, h in enumerate(header)))
    body = "".join(tag("tr", "".join(td(r, i, c) for i, c in enumerate(row)), row_classes[r] if row_classes else "")
                   for r, row in enumerate(rows))
    return tag("table", tag("thead", head) + tag("tbody", body), css_class)


def kv_list(items: list[tuple[str, Any]]) -> str:
    return tag("dl", "".join(tag("dt", esc(k)) + tag("dd", esc(v)) for k, v in items), "kv")


def pairs_txt(d: Any, sep: str = " ") -> str:
    """A dict as ``k1 v1, k2 v2`` (values alike: nested dicts as their pairs, numbers through :func:`fmt_num`)."""
    return ", ".join(f"{k}{sep}{pairs_txt(v)}" for k, v in d.items()) if isinstance(d, dict) else fmt_num(d)


@dataclass
class Page:
    """The sections written so far and the numbers behind them (``report.json``)."""

    numbers: dict[str, Any]
    sections: list[str] = field(default_factory=list)

    def add(self, sid: str, title: str, body: str) -> None:
        self.sections.append(f'<section id="{esc(sid)}"><h2>{esc(title)}</h2>{body}</section>')


# ============================================================================================ sections
def data_method_section(res: Results, page: Page) -> None:
    demo, bench, ds = res.get("demo") or {}, res.get("benchmark"), res.get("downstream") or res.get("feature") or {}
    gen_cfg, ids, syn = res.run_config or res.get("model_card") or {}, res.get("train_ids"), res.get("synthesis") or {}
    cfg, model, tc = ds.get("config") or {}, gen_cfg.get("model") or {}, gen_cfg.get("train") or {}
    same = demo.get("same_synthetic_set") or dig(res.json, "downstream", "evaluated_synthetic_set")
    n_ids = {k: len(ids.get(k, [])) for k in ("train", "heldout")} if ids is not None else None
    kv: list[tuple[str, Any]] = []
    if demo:
        kv += [("dataset", dig(demo, "dataset", "description") or ""),
               ("all images per class", pairs_txt(dig(demo, "dataset", "class_counts") or {}))]
    elif bench:
        rare = f"; rarest training class {bench['minority']}" if bench.get("minority") else ""
        kv.append(("dataset", f"{bench.get('dataset')} ({bench.get('task')}{rare})"))
    if ds:
        dups, prov = ds.get("duplicates"), ds.get("synthetic_provenance")
        kv += [(f"{part} split", f"{sum(counts.values())} images: {pairs_txt(counts)}")
               for part, counts in (ds.get("split_class_counts") or {}).items()]
        kv.append(("downstream task", (f"{ds.get('task')}; arms {', '.join(cfg.get('arms') or [])}; "
                   f"{len(cfg.get('seeds') or [])} seeds {cfg.get('seeds')}; {cfg.get('epochs', 'preset')} epochs per "
                   "model; epoch selected on real validation data, tested on real test data only")))
        if dups is not None:  # identical (and near-duplicate) images kept on one side of the split
            kv.append(("duplicates grouped in the split", (f"{dups.get('groups', 0)} groups of identical images "
                       f"({dups.get('images', 0)} images), {dups.get('near_duplicate_groups', 0)} near-duplicate "
                       "groups; each group kept on one side")))
        if prov is not None:
            kv.append(("synthetic provenance", "verified: the generator's training ids include no test id"
                       if prov.get("verified") else "UNVERIFIED (--allow-unverified-synthetic)"))
    if gen_cfg:
        length = f"{tc.get('steps')} steps" if tc.get("steps") is not None else f"{tc.get('epochs')} epochs"
        kv += [("generator", (f"{model.get('name')} (preset {model.get('preset')}; "
                              f"{pairs_txt(model.get('params') or {}, '=') or 'preset defaults'})")),
               ("generator training", f"{length}, batch {tc.get('batch_size')}, seed {tc.get('seed')}")]
    if n_ids is not None:
        kv.append(("generator trained on", f"{n_ids['train']} images ({n_ids['heldout']} held out)"))
    if syn:
        kv.append(("synthesis plan (new images per class)", pairs_txt(syn.get("plan") or {})))
        if syn.get("options"):
            kv.append(("synthesis options", pairs_txt(syn["options"], "=")))
    if same:
        kv.append(("synthetic images measured", same["statement"] if same.get("same", True) else
                   "NOT the same synthetic images for fidelity/privacy and utility: " + same["statement"]))
    if demo:
        kv.append(("stage times (s)", ", ".join(f"{k} {v:.0f}" for k, v in (demo.get("stage_seconds") or {}).items())))
    shortfall = dig(syn, "report", "shortfall")
    page.numbers["warnings"] = warnings = [
        *(dig(res.json, "downstream", "warnings") or []),
        *(f"feature level: {w}" for w in dig(res.json, "feature", "warnings") or []),
        *([f"the requested synthetic counts were not reached: {shortfall}"] if shortfall else []),
        *(f"evaluation: {w}" for w in dig(res.json, "evaluation", "warnings") or []), *(demo.get("warnings") or [])]
    dm = {"dataset": demo.get("dataset"), "split": ds.get("split"), "split_class_counts": ds.get("split_class_counts"),
          "seeds": cfg.get("seeds"), "generator": {"model": model, "train": tc} if gen_cfg else None,
          "arms": cfg.get("arms"), "generator_images": n_ids, "synthesis_plan": syn.get("plan"),
          "same_synthetic_set": same, "stage_seconds": demo.get("stage_seconds")}
    page.numbers["data_method"] = {k: v for k, v in dm.items() if v is not None}
    page.add("data-method", "Data & method", kv_list(kv) + (
        h3("warnings") + tag("ul", "".join(tag("li", esc(w), "warn") for w in warnings)) if warnings else ""))


LEADERBOARD_NOTE = ("Per metric: mean [95 % CI] over the difference to the best baseline arm [95 % CI] (or to the "
                    "arm named under the verdict); verdict against that arm (Holm-adjusted p): helps (green) / hurts "
                    "(red) = significantly better / worse, else no evidence (grey); the row has the first metric's "
                    "colour. Generators (below): FD, KID lower is better; MS-SSIM lower is more varied; NN dist.: "
                    "median distance of synthetic (and real held-out) images to the nearest training image.")
GENERATOR_COLUMNS = {  # heading -> path in a generator's benchmark.json entry
    "model": "model", "preset": "preset", "extractor": "fidelity.extractor",
    **{k.upper() if k in ("fd", "kid") else k: f"fidelity.{k}" for k in FIDELITY_KEYS},
    "MS-SSIM syn": "diversity.ms_ssim", "MS-SSIM real": "diversity.ms_ssim_real",
    "NN dist. syn": "privacy.nn_distance_median", "NN dist. real": "privacy.real_nn_distance_median",
    "near copies": "privacy.near_copies", "privacy n": "privacy.n"}


def _board_row(r: dict[str, Any], metrics: list[str], best: dict[str, Any]) -> tuple[list[Any], str, dict[int, str]]:
    """(cells, row class, cell classes) of a leaderboard row: per metric mean [CI] / difference [CI], verdict / p."""
    arm = fmt_num(r.get("arm"))
    cells: list[Any] = [fmt_num(r.get("generator")), (arm, "feature level") if r.get("kind") == "feature" else arm]
    marks: dict[int, str] = {}
    for m in metrics:
        c = dig(r, "vs_best_baseline", m)
        base, verdict, diff = dig(c, "baseline"), dig(c, "verdict") or "n/a", dig(c, "diff")
        vs = () if base is not None and base == best.get(m) else (f"vs {base or 'n/a'}",)
        diff_txt = "n/a" if diff is None else ("+" if finite(diff) and diff > 0 else "") + fmt_ci({**c, "mean": diff})
        cells += [(fmt_ci(dig(r, "metrics", m)), diff_txt), (verdict, f"p {fmt_num(dig(c, 'p_holm'))}", *vs)]
        marks[len(cells) - 1] = "w " + word_class(verdict)
    return cells, word_class(r.get("verdict") or "no evidence"), marks


def leaderboard_section(res: Results, page: Page) -> None:
    """Baseline arms, one row per (generator, synthetic arm) best first, and the generators (``benchmark.json``);
    missing or null values show as ``n/a``."""
    bench = res.get("benchmark")
    if not bench:
        return
    metrics, rows = [str(m) for m in bench.get("primary_metrics") or []], bench.get("leaderboard") or []
    best, gens, tests, cells = (bench.get(k) or {} for k in ("best_baseline", "generators", "tests", "cells"))
    header = ["generator", "arm"]
    for m in metrics:
        header += [f"{m}: mean [CI] / diff. vs {best.get(m) or 'n/a'} [CI]", f"{m}: verdict, Holm p"]
    board = [_board_row(r if isinstance(r, dict) else {}, metrics, best) for r in rows]
    baselines = [[arm, *(fmt_ci(dig(s, m)) + (" (best)" if best.get(m) == arm else "") for m in metrics)]
                 for arm, s in (bench.get("baselines") or {}).items()]
    generators = [[name, next((f"{fmt_num(g[k])} {k}" for k in ("steps", "epochs", "minutes") if g.get(k) is not None),
                              "n/a"), fmt_num(g.get("train_seconds"), 1),
                   *(fmt_num(dig(g, *path.split("."))) for path in GENERATOR_COLUMNS.values())]
                  for name, g in ((n, g or {}) for n, g in gens.items())]
    times = "".join(f"; {what} {fmt_num(bench[k], 0)} s" for k, what in (
        ("seconds", "wall time"), ("cell_seconds_total", "cell time (sum)")) if finite(bench.get(k)))
    sources = "; ".join(str(s) for s in bench.get("variance_sources") or []) or "n/a"
    rare = f"rarest training class {bench['minority']}; " if bench.get("minority") else ""
    intro = (f"task {fmt_num(bench.get('task'))}; data {fmt_num(bench.get('dataset'))}; {rare}"
             f"cells done {fmt_num(cells.get('done'))} of "
             f"{fmt_num(cells.get('total'))}{times}")  # after --summarize only the summed cell time is known
    coverage = (f"Intervals (95 % CI) cover: {sources} ({fmt_num(bench.get('n_replicates'))} paired replicates per "
                f"cell). Test: {fmt_num(tests.get('method'))}; alpha {fmt_num(tests.get('alpha'))}, "
                f"{fmt_num(tests.get('n_comparisons'))} comparisons.")
    page.numbers["leaderboard"] = {
        "primary_metrics": metrics, "rows": [{k: dig(r, k) for k in ("generator", "arm", "verdict")} for r in rows],
        **{k: bench.get(k) for k in ("best_baseline", "variance_sources", "tests", "seconds", "cell_seconds_total")}}
    page.add("leaderboard", "Benchmark leaderboard", (
        notes(intro, coverage) + h3("baselines (mean [95 % CI])") + table(["arm", *metrics], baselines)
        + h3("generators x arms, best first")
        + table(header, [b[0] for b in board], 2, [b[1] for b in board], [b[2] for b in board], css_class="lb")
        + notes(LEADERBOARD_NOTE, *([f"command: {bench['command']}"] if bench.get("command") else []))
        + h3("generators") + table(["generator", "budget", "train s", *GENERATOR_COLUMNS], generators, css_class="lb")))


VERDICT_NOTE = ("Significant = two-sided Wilcoxon signed-rank p < 0.05 against the real-only arm; per-class results "
                "use the test across test cases (each case's correctness averaged over seeds) when available, "
                "otherwise across seeds. No correction for multiple comparisons. Green: better, red: worse.")


def verdict_list(verdicts: list[dict[str, Any]]) -> str:
    items = "".join(tag("li", esc(f"[{v['direction']}] {v['text']}"), word_class(v["direction"])) for v in verdicts)
    return tag("ul", items, "verdicts") + notes(VERDICT_NOTE)


def verdicts_section(res: Results, page: Page) -> None:
    ds = res.get("downstream")
    if ds and ds.get("summary"):
        page.numbers["verdicts"] = verdicts = make_verdicts(ds)
        page.add("verdicts", "Verdicts", verdict_list(verdicts))


def class_distribution_section(res: Results, page: Page) -> None:
    ds = res.get("downstream") or {}
    before = after = None
    if res.export is not None:
        before, after = res.export.class_counts()
        if sum(before.values()) == 0:  # synthetic-only export: before from the downstream train split
            before = dig(ds, "split_class_counts", "train") or None
            after = {c: n + after.get(c, 0) for c, n in (before or {}).items()}
    elif ds:
        comps = ds.get("arm_training_sets") or {}
        before = dig(comps, "real", "class_counts")
        after = dig(comps, next((a for a in comps if a.startswith("real+synthetic")), ""), "class_counts")
    if not before:
        return
    page.numbers["class_distribution"] = {"before": before, "after": after}
    rows = [[c, n, (after or {}).get(c, n), (after or {}).get(c, n) - n] for c, n in before.items()]
    page.add("class-distribution", "Class distribution before and after rebalancing",
             img_tag(figures.class_distribution_png(before, after), "class distribution")
             + table(["class", "before (real)", "after (real + synthetic)", "synthetic added"], rows))


def sample_grids_section(res: Results, page: Page) -> None:
    if res.export is None:
        return
    grids, grid_notes = figures.sample_grids(res.export)
    page.numbers["sample_grids"] = {g["class"]: {"real_in_set": g.get("n_real", 0),
                                                 "synthetic_in_set": g.get("n_synthetic", 0)} for g in grids}
    parts = [h3(g["class"]) + tag("div", "".join(
        tag("figure", img_tag(g[k], f"{k} {g['class']}", True, min(int(g[f"{k}_width"] * GRID_ZOOM), GRID_MAX_WIDTH))
            + tag("figcaption", esc(f"{k} ({g.get('n_' + k, 0)} in the set)")))
        for k in ("real", "synthetic") if k in g), "grid") for g in grids]
    if parts:
        page.add("sample-grids", "Real and synthetic samples per class", "".join(parts) + notes(*grid_notes))


def training_section(res: Results, page: Page) -> None:
    if not res.losses or res.run_dir is None:
        return
    last = res.losses[-1]
    page.numbers["training"] = {"steps_logged": len(res.losses), "last": last}
    rows = [[k, fmt_num(v, 4)] for k, v in last.items() if k != "step"]
    body = img_tag(figures.losses_png(res.losses), "training losses")
    body += table(["loss", f"last logged value (step {last['step']})"], rows)
    samples = sorted((res.run_dir / "samples").glob("step_*.png"))
    if samples:
        body += h3(f"generator samples at the last checkpoint ({samples[-1].stem}), one row per class (mask-"
                   "conditioned models: the real images the masks come from, over the fakes made from those masks), "
                   "fixed inputs") + img_tag(samples[-1].read_bytes(), "generator samples", pixelated=True, width=640)
    page.add("training-curves", "Generator training", body)


def evaluation_sections(res: Results, page: Page) -> None:
    """``fidelity`` (fidelity, diversity, image statistics) and ``privacy`` from ``evaluation.json``."""
    from medbalance.evaluation.evaluate import summary_rows

    ev = res.get("evaluation")
    if not ev:
        return
    rows = summary_rows(ev)
    page.numbers["evaluation"] = {k: ev[k] for k in ("fidelity", "diversity", "image_stats", "extractor", "n_real",
                                                     "n_synthetic") if k in ev}
    cells = {(sc, m): v for sc, m, v in rows if not sc.startswith("privacy") and m in FIDELITY_KEYS}
    other = [[sc, m, v] for sc, m, v in rows if not sc.startswith("privacy") and m not in FIDELITY_KEYS]
    if cells or other:
        scopes = list(dict.fromkeys(sc for sc, _ in cells))
        cols = [k for k in FIDELITY_KEYS if any((sc, k) in cells for sc in scopes)]
        shown = [sc for sc in scopes if any(cells.get((sc, k), "n/a") != "n/a" for k in cols)]
        body = notes(f"{ev.get('n_real')} real vs {ev.get('n_synthetic')} synthetic images; features: "
                     f"{dig(ev, 'extractor', 'name') or 'n/a'} ({dig(ev, 'extractor', 'dim') or '?'}-d). Lower FD/KID "
                     "is better; precision ~ fidelity, recall/coverage ~ diversity (0..1); MS-SSIM syn/real near 1 "
                     "means as varied as the real data (above 1: less varied).")
        if shown:
            body += table(["scope", *cols], [[sc, *(cells.get((sc, k), "") for k in cols)] for sc in shown])
        body += notes("classes without synthetic images are left out.") if len(shown) < len(scopes) else ""
        if other:
            body += h3("diversity and image statistics") + table(["scope", "metric", "value"], other, left=2)
        page.add("fidelity", "Fidelity, diversity and image statistics", body)
    priv = ev.get("privacy")
    if not priv:
        return
    page.numbers["privacy"] = priv
    body = notes("DCR share: fraction of synthetic images closer to a training image than to a held-out one (0.5 = no "
                 "memorisation). MIA AUC 0.5 = an attacker cannot tell training from held-out images.")
    body += table(["space", "metric", "value"], [list(r) for r in rows if r[0].startswith("privacy")], left=2)
    if res.export is not None and any(r.get("parent_mask_id") for r in res.export.rows):
        body += notes("The synthetic images were generated from label maps of training cases (see parent_mask_id in "
                      "the manifest), so they reproduce those cases' anatomy: closeness to the training images is "
                      "expected and means these images are not anonymous copies of new patients.")
    dcr = dig(priv, "pixels", "dcr_share")
    if finite(dcr) and dcr > 0.6:
        body += notes(f"DCR share {fmt_num(dcr, 2)}: that fraction of the synthetic images is closer to a training "
                      "image than to any held-out image; do not share them as anonymised data.", cls="warn")
    if priv.get("montage"):
        mont, base = Path(priv["montage"]), res.found["evaluation"].parent
        mp = next((p for p in (mont if mont.is_absolute() else base / mont, base / mont.name) if p.is_file()), None)
        body += (h3("closest synthetic / training pairs") + img_tag(mp.read_bytes(), "nearest pairs") if mp else
                 notes(f"privacy montage not found: {priv['montage']}", cls="warn"))
    page.add("privacy", "Privacy (memorisation)", body)


def downstream_table(ds: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Mean, std, CI and p-values of every arm and metric; rows coloured and labelled better / worse / no evidence
    against real-only."""
    summ, classes = ds["summary"], ds["class_names"]
    if ds.get("task") == "classification":
        metrics = ["balanced_accuracy", "macro_f1", "auroc",
                   *(f"{k}/{c}" for k in ("recall", "precision") for c in classes)]
    else:
        metrics = ["dice_foreground", *(f"dice/{c}" for c in classes), *(f"brats/{k}" for k in ("WT", "TC", "ET"))]
    header = ["metric", "arm", "mean [95 % CI]", "std", "p vs real (seeds)", "p vs real (test cases)", "vs real"]
    rows, row_classes, numbers = [], [], {}
    for m, arm in ((m, a) for m in metrics for a in summ if not a.startswith("_") and summ[a].get(m)):
        e, cls = summ[arm][m], m.split("/", 1)[1] if m.startswith(("recall/", "dice/")) else None
        p_seed = dig(e, "vs_real_seeds", "p")
        p_case = dig(summ[arm], "_cases", cls, "p") if cls is not None and arm != "real" else None
        word = None if arm == "real" else compare(e["mean"], dig(summ, "real", m, "mean"), [p_seed, p_case])
        rows.append([m, arm, fmt_ci(e), fmt_num(e["std"]), "—" if arm == "real" else fmt_num(p_seed),
                     "—" if p_case is None else fmt_num(p_case), word or "—"])
        row_classes.append(word_class(word) if word else "")
        numbers.setdefault(m, {})[arm] = {**{k: e[k] for k in ("mean", "std", "ci_low", "ci_high")}, "n": e.get("n"),
                                          "p_vs_real_seeds": p_seed, "p_vs_real_cases": p_case, "vs_real": word}
    return table(header, rows, 2, row_classes, [{len(header) - 1: f"w {c}".strip()} for c in row_classes]), numbers


def _downstream_body(ds: dict[str, Any], page: Page, key: str) -> str:
    """The downstream table (numbers to ``report.json`` under ``key``) with its note and each arm's training set."""
    tbl, page.numbers[key] = downstream_table(ds)
    txt = (f"{len(dig(ds, 'config', 'seeds') or [])} seeds; mean, sample std and 95 % percentile-bootstrap CI over "
           "seeds; p: two-sided Wilcoxon signed-rank vs real, paired by seed (smallest attainable with this many "
           f"seeds: {fmt_num(ds['summary'].get('_min_attainable_p_seeds'))}) and by test case. Green rows: "
           f"significantly better than real-only (p < {ALPHA} in either test); red rows: significantly worse; the "
           "last column says which.")
    comp_rows = [[a, c.get("n"), c.get("synthetic"), pairs_txt(c.get("class_counts", {}))]
                 for a, c in (ds.get("arm_training_sets") or {}).items()]
    return (notes(txt) + tbl + h3("training set of each arm (seed 0)")
            + table(["arm", "images", "synthetic", "per class"], comp_rows))


def downstream_section(res: Results, page: Page) -> None:
    ds = res.get("downstream")
    if not ds or not ds.get("summary"):
        return
    page.numbers["arm_training_sets"] = ds.get("arm_training_sets") or {}
    page.add("downstream", f"Downstream {ds.get('task')} on real test data", _downstream_body(ds, page, "downstream"))
    prefix, label = ("recall", "recall") if ds.get("task") == "classification" else ("dice", "Dice")
    page.add("per-class-recall", f"Per-class {label}{' (sensitivity)' if prefix == 'recall' else ''} per arm",
             img_tag(figures.per_class_png(ds, prefix, label), f"per-class {label}"))


def feature_section(res: Results, page: Page) -> None:
    ds = res.get("feature")
    if not ds or not ds.get("summary"):
        return
    fa = ds.get("feature_augment") or {}
    seg, ac = fa.get("segmentor") or {}, fa.get("acgan") or {}
    kv = [("features", f"U-Net bottleneck {fa.get('feature_shape')} of images {fa.get('image_shape')}"),
          ("segmentor", (f"{seg.get('source', 'n/a')}; test whole-lesion Dice "
                         f"{pairs_txt(seg.get('test_dice_whole_lesion'))}"))]
    if "d_class_accuracy_generated" in ac:
        kv.append(("ACGAN D class accuracy on generated features", pairs_txt(ac["d_class_accuracy_generated"])))
    if "timings_seconds" in fa:
        kv.append(("timings (s)", pairs_txt(fa["timings_seconds"])))
    page.numbers["feature_verdicts"] = verdicts = make_verdicts(ds)
    page.add("feature-downstream", "Feature-level downstream classification (feature-augment) on real test data",
             kv_list(kv) + notes(*ds.get("notes") or []) + _downstream_body(ds, page, "feature_downstream")
             + h3("verdicts") + verdict_list(verdicts)
             + img_tag(figures.per_class_png(ds, "recall", "recall"), "feature-level per-class recall"))


SECTIONS = (data_method_section, leaderboard_section, verdicts_section, class_distribution_section,
            sample_grids_section, training_section, evaluation_sections, downstream_section, feature_section)


def build_report(root: str | Path, out_html: str | Path | None = None) -> Path:
    """Write ``report.html`` (self-contained) and ``report.json`` for the results under ``root``."""
    from medbalance import __version__

    t0 = time.perf_counter()
    res = load_results(Path(root))
    out_html = Path(out_html) if out_html is not None else res.root / "report.html"
    page = Page(numbers={"sources": {k: str(v) for k, v in res.found.items()}})
    for add_section in SECTIONS:
        add_section(res, page)
    page.numbers["generated"] = time.strftime("%Y-%m-%d %H:%M:%S")
    page.numbers["sections"] = [s.split('"', 2)[1] for s in page.sections]
    title = f"medbalance report: {res.root.resolve().name}"
    doc = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
           f"<style>{CSS}</style></head><body><header><h1>{esc(title)}</h1>"
           f"<p>medbalance {esc(__version__)} · generated {esc(page.numbers['generated'])} · every number below "
           f"comes from the files in {esc(res.root.resolve())}</p></header><main>{''.join(page.sections)}</main>"
           "</body></html>\n")
    page.numbers["seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_json(out_html.with_suffix(".json"), page.numbers)
    atomic_write_text(out_html, doc)
    return out_html
