"""HTML assembly: :func:`build_report` writes ``report.html`` (one file: images embedded as base64 PNG, inline CSS,
no external resources) and ``report.json`` (every number the HTML shows), one function per section (:data:`SECTIONS`).

Each section appears only when its data exists; its ``<section id>`` is stable. Colours always come with words
(:mod:`medbalance.report.verdicts`): green "better", red "worse", neutral "no evidence" against real-only.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbalance.report import figures
from medbalance.report.discover import Results, load_results
from medbalance.report.leaderboard import FIDELITY_KEYS, leaderboard_tables
from medbalance.report.verdicts import ALPHA, compare, make_verdicts, word_class
from medbalance.utils.imaging import png_data_uri
from medbalance.utils.io import atomic_write_json, atomic_write_text
from medbalance.utils.tables import finite, fmt_num

GRID_ZOOM = 1.7  # display zoom of the sample grids (small images)
GRID_MAX_WIDTH = 520

CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1f3b5a;color:#fff;padding:18px 32px} header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.85;font-size:13px} main{max-width:1180px;margin:0 auto;padding:12px 24px 40px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:14px 22px 18px;margin:16px 0;overflow-x:auto}
h2{font-size:18px;margin:4px 0 10px;color:#1f3b5a;border-bottom:1px solid #e3e6ea;padding-bottom:6px}
h3{font-size:14px;margin:14px 0 6px;color:#33435a} table{border-collapse:collapse;font-size:12.5px;margin:6px 0}
th,td{border:1px solid #dde1e6;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#eef1f5;text-align:center} td.l,th.l{text-align:left} td.w,li.good,li.bad{font-weight:600}
tr.good td{background:#e3f4e6} tr.bad td{background:#fbe5e5}
tr.good td.w,li.good{color:#17692b} tr.bad td.w,li.bad{color:#a11d1d} tr.neutral td.w,li.neutral{color:#5b6470}
tr td.w.good{color:#17692b} tr td.w.bad{color:#a11d1d} tr td.w.neutral{color:#5b6470}
table.lb th{white-space:normal;max-width:160px} table.lb td,table.lb th{padding:3px 6px}
img{max-width:100%;height:auto;display:block;margin:6px 0} img.px{image-rendering:pixelated}
.grid{display:flex;flex-wrap:wrap;gap:18px} .grid figure{margin:0} ul.verdicts li{margin:5px 0;line-height:1.4}
.warn{color:#8a5a00;font-size:13px} figcaption,.note{font-size:12px;color:#55606e}
dl.kv{display:grid;grid-template-columns:max-content auto;gap:2px 16px;font-size:13px;margin:4px 0}
dl.kv dt{font-weight:600;color:#33435a} dl.kv dd{margin:0}
"""


# ============================================================================================ HTML pieces
def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def img_tag(data: bytes, alt: str, pixelated: bool = False, width: int | None = None) -> str:
    cls = ' class="px"' if pixelated else ""
    w = f' style="width:{int(width)}px"' if width else ""
    return f'<img{cls}{w} alt="{esc(alt)}" src="{png_data_uri(data)}">'


def table(header: list[str], rows: list[list[Any]], left: int = 1, row_classes: list[str] | None = None,
          word_column: int | None = None, cell_classes: list[dict[int, str]] | None = None,
          css_class: str | None = None) -> str:
    """A table; the first ``left`` columns left-aligned; ``word_column`` is styled with the row's colour;
    ``cell_classes[r][i]`` adds CSS classes to one cell; a cell given as a tuple is shown as lines."""
    def cell(r_i: int, i: int, c: Any) -> str:
        extra = (cell_classes[r_i].get(i, "") if cell_classes else "")
        cls = " ".join(k for k, on in (("l", i < left), ("w", i == word_column), (extra, bool(extra))) if on)
        text = "<br>".join(esc(x) for x in c) if isinstance(c, tuple) else esc(c)
        return f'<td class="{cls}">{text}</td>' if cls else f"<td>{text}</td>"

    th = "".join(f'<th class="l">{esc(h)}</th>' if i < left else f"<th>{esc(h)}</th>" for i, h in enumerate(header))
    body = []
    for r_i, row in enumerate(rows):
        cls = f' class="{row_classes[r_i]}"' if row_classes and row_classes[r_i] else ""
        body.append(f"<tr{cls}>{''.join(cell(r_i, i, c) for i, c in enumerate(row))}</tr>")
    tcls = f' class="{css_class}"' if css_class else ""
    return f"<table{tcls}><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def h3(title: str) -> str:
    return f"<h3>{esc(title)}</h3>"


def kv_list(items: list[tuple[str, Any]]) -> str:
    return '<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items) + "</dl>"


def note(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{esc(text)}</p>'


def notes(texts: list[str]) -> str:
    return "".join(note(t) for t in texts)


def pairs_txt(d: dict[str, Any], sep: str = " ") -> str:
    return ", ".join(f"{k}{sep}{v}" for k, v in d.items())


@dataclass
class Page:
    """The sections written so far and the numbers behind them (``report.json``)."""

    numbers: dict[str, Any]
    sections: list[str] = field(default_factory=list)

    def add(self, sid: str, title: str, body: str) -> None:
        self.sections.append(f'<section id="{esc(sid)}"><h2>{esc(title)}</h2>{body}</section>')


# ============================================================================================ sections
def data_method_section(res: Results, page: Page) -> None:
    kv: list[tuple[str, Any]] = []
    dm: dict[str, Any] = {}
    warnings: list[str] = []
    demo, evaluation, bench = res.get("demo"), res.get("evaluation"), res.get("benchmark")
    if demo:
        dm["dataset"] = demo.get("dataset")
        kv += [("dataset", (demo.get("dataset") or {}).get("description", "")),
               ("all images per class", pairs_txt((demo.get("dataset") or {}).get("class_counts") or {}))]
    elif bench:
        kv.append(("dataset", f"{bench.get('dataset')} ({bench.get('task')}; rarest training class {bench.get('minority')})"))
    ds = res.get("downstream") or res.get("feature")
    if ds:
        dm["split"], dm["split_class_counts"] = ds.get("split"), ds.get("split_class_counts")
        kv += [(f"{part} split", f"{sum(counts.values())} images: {pairs_txt(counts)}")
               for part, counts in (ds.get("split_class_counts") or {}).items()]
        cfg = ds.get("config") or {}
        dm["seeds"], dm["arms"] = cfg.get("seeds"), cfg.get("arms")
        kv.append(("downstream task", (f"{ds.get('task')}; arms {', '.join(cfg.get('arms') or [])}; "
                   f"{len(cfg.get('seeds') or [])} seeds {cfg.get('seeds')}; {cfg.get('epochs', 'preset')} epochs per "
                   "model; epoch selected on real validation data, tested on real test data only")))
        dups = ds.get("duplicates")
        if dups is not None:  # identical (and near-duplicate) images kept on one side of the split
            kv.append(("duplicates grouped in the split", (f"{dups.get('groups', 0)} groups of identical images "
                       f"({dups.get('images', 0)} images), {dups.get('near_duplicate_groups', 0)} near-duplicate "
                       "groups; each group kept on one side")))
        prov = ds.get("synthetic_provenance")
        if prov is not None:
            kv.append(("synthetic provenance", "verified: the generator's training ids include no test id"
                       if prov.get("verified") else "UNVERIFIED (--allow-unverified-synthetic)"))
    for key in ("downstream", "feature"):
        warnings += [(f"feature level: {w}" if key == "feature" else w) for w in (res.get(key) or {}).get("warnings") or []]
    gen_cfg = res.run_config or res.model_card
    if gen_cfg:
        model, train_c = gen_cfg.get("model") or {}, gen_cfg.get("train") or {}
        dm["generator"] = {"name": model.get("name"), "preset": model.get("preset"), "params": model.get("params"),
                           "steps": train_c.get("steps"), "epochs": train_c.get("epochs"),
                           "batch_size": train_c.get("batch_size")}
        length = f"{train_c.get('steps')} steps" if train_c.get("steps") is not None else f"{train_c.get('epochs')} epochs"
        kv += [("generator", (f"{model.get('name')} (preset {model.get('preset')}; "
                              f"{pairs_txt(model.get('params') or {}, '=') or 'preset defaults'})")),
               ("generator training", f"{length}, batch {train_c.get('batch_size')}, seed {train_c.get('seed')}")]
    if res.train_ids is not None:
        n_tr, n_ho = len(res.train_ids.get("train", [])), len(res.train_ids.get("heldout", []))
        dm["generator_train_images"], dm["generator_heldout_images"] = n_tr, n_ho
        kv.append(("generator trained on", f"{n_tr} images ({n_ho} held out)"))
    if res.synthesis:
        dm["synthesis_plan"] = res.synthesis.get("plan")
        kv.append(("synthesis plan (new images per class)", pairs_txt(res.synthesis.get("plan") or {})))
        if res.synthesis.get("options"):
            kv.append(("synthesis options", pairs_txt(res.synthesis["options"], "=")))
        if (res.synthesis.get("report") or {}).get("shortfall"):
            warnings.append(f"the requested synthetic counts were not reached: {res.synthesis['report']['shortfall']}")
    if evaluation:
        warnings += [f"evaluation: {w}" for w in evaluation.get("warnings", [])]
    same = (demo or {}).get("same_synthetic_set") or (res.get("downstream") or {}).get("evaluated_synthetic_set")
    if same:
        dm["same_synthetic_set"] = same
        kv.append(("synthetic images measured", (same["statement"] if same.get("same", True) else
                                                 "NOT the same synthetic images for fidelity/privacy and utility: "
                                                 + same["statement"])))
    if demo:
        kv.append(("stage times (s)", ", ".join(f"{k} {v:.0f}" for k, v in (demo.get("stage_seconds") or {}).items())))
        dm["stage_seconds"] = demo.get("stage_seconds")
        warnings += list(demo.get("warnings") or [])
    page.numbers["data_method"], page.numbers["warnings"] = dm, warnings
    body = kv_list(kv)
    if warnings:
        body += h3("warnings") + "<ul>" + "".join(f'<li class="warn">{esc(w)}</li>' for w in warnings) + "</ul>"
    page.add("data-method", "Data & method", body)


def leaderboard_section(res: Results, page: Page) -> None:
    bench = res.get("benchmark")
    if not bench:
        return
    lb = leaderboard_tables(bench)
    page.numbers["leaderboard"] = lb["numbers"]
    header, rows, classes, cell_classes = lb["board"]
    page.add("leaderboard", "Benchmark leaderboard", (
        notes([lb["intro"], lb["coverage"]]) + h3("baselines (mean [95 % CI])") + table(*lb["baselines"])
        + h3("generators x arms, best first")
        + table(header, rows, left=2, row_classes=classes, cell_classes=cell_classes, css_class="lb")
        + notes(lb["notes"]) + h3("generators") + table(*lb["generators"])))


VERDICT_NOTE = ("Significant = two-sided Wilcoxon signed-rank p < 0.05 against the real-only arm; per-class results "
                "use the test across test cases (each case's correctness averaged over seeds) when available, "
                "otherwise across seeds. No correction for multiple comparisons. Green: better, red: worse.")


def verdict_list(verdicts: list[dict[str, Any]]) -> str:
    items = "".join(f'<li class="{word_class(v["direction"])}">[{esc(v["direction"])}] {esc(v["text"])}</li>'
                    for v in verdicts)
    return f'<ul class="verdicts">{items}</ul>{note(VERDICT_NOTE)}'


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
            before = (ds.get("split_class_counts") or {}).get("train") or None
            if before:
                after = {c: before.get(c, 0) + after.get(c, 0) for c in before}
    elif ds:
        comps = ds.get("arm_training_sets") or {}
        before = (comps.get("real") or {}).get("class_counts")
        syn_arm = next((a for a in comps if a.startswith("real+synthetic")), None)
        after = (comps.get(syn_arm) or {}).get("class_counts") if syn_arm else None
    if not before:
        return
    page.numbers["class_distribution"] = {"before": before, "after": after}
    rows = [[c, before[c], (after or {}).get(c, before[c]), (after or {}).get(c, before[c]) - before[c]] for c in before]
    tbl = table(["class", "before (real)", "after (real + synthetic)", "synthetic added"], rows)
    page.add("class-distribution", "Class distribution before and after rebalancing",
             img_tag(figures.class_distribution_png(before, after), "class distribution") + tbl)


def sample_grids_section(res: Results, page: Page) -> None:
    if res.export is None:
        return
    grids, grid_notes = figures.sample_grids(res.export)

    def figure(g: dict[str, Any], kind: str) -> str:
        width, alt = min(int(g[f"{kind}_width"] * GRID_ZOOM), GRID_MAX_WIDTH), f"{kind} {g['class']}"
        return (f"<figure>{img_tag(g[kind], alt, pixelated=True, width=width)}"
                f"<figcaption>{esc(kind)} ({g.get('n_' + kind, 0)} in the set)</figcaption></figure>")

    parts = [h3(g["class"]) + f'<div class="grid">{"".join(figure(g, k) for k in ("real", "synthetic") if k in g)}</div>'
             for g in grids]
    if parts:
        page.add("sample-grids", "Real and synthetic samples per class", "".join(parts) + notes(grid_notes))
    page.numbers["sample_grids"] = {g["class"]: {"real_in_set": g.get("n_real", 0),
                                                 "synthetic_in_set": g.get("n_synthetic", 0)} for g in grids}


def training_section(res: Results, page: Page) -> None:
    if not res.losses:
        return
    last = res.losses[-1]
    page.numbers["training"] = {"steps_logged": len(res.losses), "last": last}
    body = img_tag(figures.losses_png(res.losses), "training losses")
    body += table(["loss", f"last logged value (step {last['step']})"],
                  [[k, fmt_num(v, 4)] for k, v in last.items() if k != "step"])
    samples_dir = res.run_dir / "samples"
    samples = sorted(samples_dir.glob("step_*.png")) if samples_dir.is_dir() else []
    if samples:
        body += h3(f"generator samples at the last checkpoint ({samples[-1].stem}), one row per class (mask-conditioned "
                   "models: the real images the masks come from, over the fakes made from those masks), fixed inputs")
        body += img_tag(samples[-1].read_bytes(), "generator samples", pixelated=True, width=640)
    page.add("training-curves", "Generator training", body)


def evaluation_sections(res: Results, page: Page) -> None:
    """``fidelity`` (fidelity, diversity, image statistics) and ``privacy`` from ``evaluation.json``."""
    from medbalance.evaluation.evaluate import summary_rows

    ev = res.get("evaluation")
    if not ev:
        return
    rows = summary_rows(ev)
    page.numbers["evaluation"] = {k: ev.get(k) for k in ("fidelity", "diversity", "image_stats", "extractor",
                                                         "n_real", "n_synthetic") if k in ev}
    cells = {(sc, m): v for sc, m, v in rows if not sc.startswith("privacy") and m in FIDELITY_KEYS}
    other = [[sc, m, v] for sc, m, v in rows if not sc.startswith("privacy") and m not in FIDELITY_KEYS]
    if cells or other:
        ext = ev.get("extractor") or {}
        body = note(f"{ev.get('n_real')} real vs {ev.get('n_synthetic')} synthetic images; features: "
                    f"{ext.get('name', 'n/a')} ({ext.get('dim', '?')}-d). Lower FD/KID is better; precision ~ fidelity, "
                    "recall/coverage ~ diversity (0..1); MS-SSIM syn/real near 1 means as varied as the real data "
                    "(above 1: less varied).")
        scopes = list(dict.fromkeys(sc for sc, _ in cells))
        cols = [k for k in FIDELITY_KEYS if any((sc, k) in cells for sc in scopes)]
        shown = [sc for sc in scopes if any(cells.get((sc, k), "n/a") != "n/a" for k in cols)]
        if shown:
            body += table(["scope", *cols], [[sc, *[cells.get((sc, k), "") for k in cols]] for sc in shown])
        if len(shown) < len(scopes):
            body += note("classes without synthetic images are left out.")
        if other:
            body += h3("diversity and image statistics") + table(["scope", "metric", "value"], other, left=2)
        page.add("fidelity", "Fidelity, diversity and image statistics", body)
    if not ev.get("privacy"):
        return
    page.numbers["privacy"] = ev["privacy"]
    body = note("DCR share: fraction of synthetic images closer to a training image than to a held-out one (0.5 = no "
                "memorisation). MIA AUC 0.5 = an attacker cannot tell training from held-out images.")
    body += table(["space", "metric", "value"], [list(r) for r in rows if r[0].startswith("privacy")], left=2)
    if res.export is not None and res.export.conditioned_on_real_masks:
        body += note("The synthetic images were generated from label maps of training cases (see parent_mask_id in "
                     "the manifest), so they reproduce those cases' anatomy: closeness to the training images is "
                     "expected and means these images are not anonymous copies of new patients.")
    dcr = (ev["privacy"].get("pixels") or {}).get("dcr_share")
    if finite(dcr) and dcr > 0.6:
        body += note(f"DCR share {fmt_num(dcr, 2)}: that fraction of the synthetic images is closer to a training "
                     "image than to any held-out image; do not share them as anonymised data.", "warn")
    mont = ev["privacy"].get("montage")
    if mont:
        base = res.found["evaluation"].parent
        mp = Path(mont) if Path(mont).is_absolute() else base / mont
        mp = mp if mp.is_file() else base / Path(mont).name
        body += (h3("closest synthetic / training pairs") + img_tag(mp.read_bytes(), "nearest pairs") if mp.is_file()
                 else note(f"privacy montage not found: {mont}", "warn"))
    page.add("privacy", "Privacy (memorisation)", body)


def downstream_table(ds: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Mean, std, CI and p-values of every arm and metric; rows coloured and labelled better / worse / no evidence
    against real-only."""
    summ, classes = ds["summary"], ds["class_names"]
    arms = [a for a in summ if not a.startswith("_")]
    if ds.get("task") == "classification":
        metrics = ["balanced_accuracy", "macro_f1", "auroc", *(f"recall/{c}" for c in classes),
                   *(f"precision/{c}" for c in classes)]
    else:
        metrics = ["dice_foreground", *(f"dice/{c}" for c in classes), *(f"brats/{k}" for k in ("WT", "TC", "ET"))]
    header = ["metric", "arm", "mean", "std", "95 % CI", "p vs real (seeds)", "p vs real (test cases)", "vs real"]
    rows, classes_row, numbers = [], [], {}
    for m in metrics:
        for arm in (a for a in arms if summ[a].get(m)):
            e = summ[arm][m]
            p_seed = (e.get("vs_real_seeds") or {}).get("p")
            cls = m.split("/", 1)[1] if m.startswith(("recall/", "dice/")) else None
            case = (summ[arm].get("_cases") or {}).get(cls) if cls is not None and arm != "real" else None
            p_case = case.get("p") if isinstance(case, dict) else None
            base = (summ.get("real") or {}).get(m) or {}
            word = None if arm == "real" else compare(e["mean"], base.get("mean"), [p_seed, p_case])
            rows.append([m, arm, fmt_num(e["mean"]), fmt_num(e["std"]), f"{fmt_num(e['ci_low'])} – {fmt_num(e['ci_high'])}",
                         "—" if arm == "real" else fmt_num(p_seed), "—" if p_case is None else fmt_num(p_case),
                         word or "—"])
            classes_row.append(word_class(word) if word else "")
            numbers.setdefault(m, {})[arm] = {**{k: e[k] for k in ("mean", "std", "ci_low", "ci_high")}, "n": e.get("n"),
                                              "p_vs_real_seeds": p_seed, "p_vs_real_cases": p_case, "vs_real": word}
    return table(header, rows, left=2, row_classes=classes_row, word_column=len(header) - 1), numbers


def _downstream_body(ds: dict[str, Any], page: Page, key: str) -> str:
    tbl, page.numbers[key] = downstream_table(ds)
    seeds = (ds.get("config") or {}).get("seeds") or []
    min_p = ds["summary"].get("_min_attainable_p_seeds")
    txt = (f"{len(seeds)} seeds; mean, sample std and 95 % percentile-bootstrap CI over seeds; p: two-sided Wilcoxon "
           f"signed-rank vs real, paired by seed (smallest attainable with this many seeds: {fmt_num(min_p)}) and "
           f"by test case. Green rows: significantly better than real-only (p < {ALPHA} in either test); red rows: "
           "significantly worse; the last column says which.")
    comp_rows = [[a, c.get("n"), c.get("synthetic"), pairs_txt(c.get("class_counts", {}))]
                 for a, c in (ds.get("arm_training_sets") or {}).items()]
    return (note(txt) + tbl + h3("training set of each arm (seed 0)")
            + table(["arm", "images", "synthetic", "per class"], comp_rows))


def downstream_section(res: Results, page: Page) -> None:
    ds = res.get("downstream")
    if not ds or not ds.get("summary"):
        return
    body = _downstream_body(ds, page, "downstream")
    page.numbers["arm_training_sets"] = ds.get("arm_training_sets") or {}
    page.add("downstream", f"Downstream {ds.get('task')} on real test data", body)
    seg = ds.get("task") != "classification"
    page.add("per-class-recall", "Per-class Dice per arm" if seg else "Per-class recall (sensitivity) per arm",
             img_tag(figures.per_class_png(ds, *(("dice", "Dice") if seg else ("recall", "recall"))),
                     "per-class Dice" if seg else "per-class recall"))


def feature_section(res: Results, page: Page) -> None:
    ds = res.get("feature")
    if not ds or not ds.get("summary"):
        return

    def txt(v: Any) -> str:
        return ", ".join(f"{k} {txt(x)}" for k, x in v.items()) if isinstance(v, dict) else fmt_num(v)

    fa = ds.get("feature_augment") or {}
    seg, ac = fa.get("segmentor") or {}, fa.get("acgan") or {}
    kv = [("features", f"U-Net bottleneck {fa.get('feature_shape')} of images {fa.get('image_shape')}"),
          ("segmentor", f"{seg.get('source', 'n/a')}; test whole-lesion Dice {txt(seg.get('test_dice_whole_lesion'))}")]
    if "d_class_accuracy_generated" in ac:
        kv.append(("ACGAN D class accuracy on generated features", txt(ac["d_class_accuracy_generated"])))
    if "timings_seconds" in fa:
        kv.append(("timings (s)", txt(fa["timings_seconds"])))
    body = kv_list(kv) + notes(ds.get("notes") or []) + _downstream_body(ds, page, "feature_downstream")
    page.numbers["feature_verdicts"] = verdicts = make_verdicts(ds)
    body += h3("verdicts") + verdict_list(verdicts) + img_tag(figures.per_class_png(ds, "recall", "recall"),
                                                             "feature-level per-class recall")
    page.add("feature-downstream", "Feature-level downstream classification (feature-augment) on real test data", body)


SECTIONS: list[Callable[[Results, Page], None]] = [
    data_method_section, leaderboard_section, verdicts_section, class_distribution_section, sample_grids_section,
    training_section, evaluation_sections, downstream_section, feature_section,
]


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
           f"<p>medbalance {esc(__version__)} · generated {esc(page.numbers['generated'])} · every number below comes "
           f"from the files in {esc(res.root.resolve())}</p></header><main>{''.join(page.sections)}</main></body></html>\n")
    page.numbers["seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_json(out_html.with_suffix(".json"), page.numbers)
    atomic_write_text(out_html, doc)
    return out_html


__all__ = ["CSS", "SECTIONS", "Page", "build_report", "downstream_table", "esc", "img_tag", "kv_list", "note", "table"]
