"""HTML assembly: :func:`build_report` and one function per report section.

``build_report(root)`` reads what medbalance wrote under ``root`` (:mod:`medbalance.report.discover`) and writes

- ``report.html``: one file, images embedded as base64 PNG, inline CSS, no external resources (opens
  offline, can be mailed or attached to a paper's supplement);
- ``report.json``: every number the HTML shows, for checking and for other tools.

Sections (each only when its data exists; the ``id`` of each ``<section>`` is stable): ``data-method``,
``leaderboard``, ``verdicts``, ``class-distribution``, ``sample-grids``, ``training-curves``, ``fidelity``,
``privacy``, ``downstream``, ``per-class-recall``, ``feature-downstream``.

Colours always come with words: in the downstream tables a row is green and says "better" when the arm is
significantly better than real-only (p < 0.05), red and "worse" when significantly worse, neutral and
"no evidence" otherwise (:mod:`medbalance.report.verdicts`).
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medbalance.report.discover import Results, load_results
from medbalance.report.figures import (
    class_distribution_png,
    losses_png,
    per_class_png,
    sample_grids,
)
from medbalance.report.leaderboard import leaderboard_tables
from medbalance.report.verdicts import (
    ALPHA,
    compare,
    finite,
    fmt_num,
    make_verdicts,
    word_class,
)
from medbalance.utils.imaging import png_data_uri
from medbalance.utils.io import atomic_write_json, atomic_write_text

GRID_ZOOM = 1.7  # display zoom of the sample grids (small images)
GRID_MAX_WIDTH = 520

CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1f3b5a;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.85;font-size:13px}
main{max-width:1180px;margin:0 auto;padding:12px 24px 40px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:14px 22px 18px;margin:16px 0;overflow-x:auto}
h2{font-size:18px;margin:4px 0 10px;color:#1f3b5a;border-bottom:1px solid #e3e6ea;padding-bottom:6px}
h3{font-size:14px;margin:14px 0 6px;color:#33435a}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0}
th,td{border:1px solid #dde1e6;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#eef1f5;text-align:center}
td.l,th.l{text-align:left}
tr.good td{background:#e3f4e6}
tr.bad td{background:#fbe5e5}
td.w{font-weight:600}
tr.good td.w,li.good{color:#17692b}
tr.bad td.w,li.bad{color:#a11d1d}
tr.neutral td.w,li.neutral{color:#5b6470}
tr td.w.good{color:#17692b}
tr td.w.bad{color:#a11d1d}
tr td.w.neutral{color:#5b6470}
table.lb th{white-space:normal;max-width:160px}
table.lb td,table.lb th{padding:3px 6px}
li.good,li.bad{font-weight:600}
img{max-width:100%;height:auto;display:block;margin:6px 0}
img.px{image-rendering:pixelated}
.grid{display:flex;flex-wrap:wrap;gap:18px}
.grid figure{margin:0}
figcaption{font-size:12px;color:#55606e}
ul.verdicts li{margin:5px 0;line-height:1.4}
.warn{color:#8a5a00;font-size:13px}
.note{font-size:12px;color:#55606e}
dl.kv{display:grid;grid-template-columns:max-content auto;gap:2px 16px;font-size:13px;margin:4px 0}
dl.kv dt{font-weight:600;color:#33435a}
dl.kv dd{margin:0}
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


def section(sid: str, title: str, body: str) -> str:
    return f'<section id="{esc(sid)}"><h2>{esc(title)}</h2>{body}</section>'


def kv_list(items: list[tuple[str, Any]]) -> str:
    return '<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items) + "</dl>"


def note(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{esc(text)}</p>'


def counts_txt(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items())


@dataclass
class Page:
    """The sections written so far and the numbers behind them (``report.json``)."""

    numbers: dict[str, Any]
    sections: list[str] = field(default_factory=list)

    def add(self, sid: str, title: str, body: str) -> None:
        self.sections.append(section(sid, title, body))


# ============================================================================================ sections
def _downstream_kv(ds: dict[str, Any], dm: dict[str, Any]) -> list[tuple[str, Any]]:
    kv = []
    dm["split"], dm["split_class_counts"] = ds.get("split"), ds.get("split_class_counts")
    for part, counts in (ds.get("split_class_counts") or {}).items():
        kv.append((f"{part} split", f"{sum(counts.values())} images: {counts_txt(counts)}"))
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
    return kv


def _generator_kv(gen_cfg: dict[str, Any], dm: dict[str, Any]) -> list[tuple[str, Any]]:
    model, train_c = gen_cfg.get("model") or {}, gen_cfg.get("train") or {}
    dm["generator"] = {"name": model.get("name"), "preset": model.get("preset"), "params": model.get("params"),
                       "steps": train_c.get("steps"), "epochs": train_c.get("epochs"),
                       "batch_size": train_c.get("batch_size")}
    params = ", ".join(f"{k}={v}" for k, v in (model.get("params") or {}).items()) or "preset defaults"
    length = f"{train_c.get('steps')} steps" if train_c.get("steps") is not None else f"{train_c.get('epochs')} epochs"
    return [("generator", f"{model.get('name')} (preset {model.get('preset')}; {params})"),
            ("generator training", f"{length}, batch {train_c.get('batch_size')}, seed {train_c.get('seed')}")]


def data_method_section(res: Results, page: Page) -> None:
    kv: list[tuple[str, Any]] = []
    dm: dict[str, Any] = {}
    warnings: list[str] = []
    demo, evaluation, bench = res.get("demo"), res.get("evaluation"), res.get("benchmark")
    if demo:
        dm["dataset"] = demo.get("dataset")
        kv.append(("dataset", (demo.get("dataset") or {}).get("description", "")))
        kv.append(("all images per class", counts_txt((demo.get("dataset") or {}).get("class_counts") or {})))
    if bench and not demo:
        kv.append(("dataset", (f"{bench.get('dataset')} ({bench.get('task')}; rarest training class "
                              f"{bench.get('minority')})")))
    ds = res.get("downstream") or res.get("feature")
    if ds:
        kv += _downstream_kv(ds, dm)
    for key in ("downstream", "feature"):
        warnings += [(f"feature level: {w}" if key == "feature" else w) for w in (res.get(key) or {}).get("warnings") or []]
    gen_cfg = res.run_config or res.model_card
    if gen_cfg:
        kv += _generator_kv(gen_cfg, dm)
    if res.train_ids is not None:
        n_tr, n_ho = len(res.train_ids.get("train", [])), len(res.train_ids.get("heldout", []))
        dm["generator_train_images"], dm["generator_heldout_images"] = n_tr, n_ho
        kv.append(("generator trained on", f"{n_tr} images ({n_ho} held out)"))
    if res.synthesis:
        dm["synthesis_plan"] = res.synthesis.get("plan")
        kv.append(("synthesis plan (new images per class)", counts_txt(res.synthesis.get("plan") or {})))
        if res.synthesis.get("options"):
            kv.append(("synthesis options", ", ".join(f"{k}={v}" for k, v in res.synthesis["options"].items())))
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
        body += "<h3>warnings</h3><ul>" + "".join(f'<li class="warn">{esc(w)}</li>' for w in warnings) + "</ul>"
    page.add("data-method", "Data & method", body)


def leaderboard_section(res: Results, page: Page) -> None:
    bench = res.get("benchmark")
    if not bench:
        return
    lb = leaderboard_tables(bench)
    page.numbers["leaderboard"] = lb["numbers"]
    header, rows, classes, cell_classes = lb["board"]
    body = note(lb["intro"]) + note(lb["coverage"])
    body += "<h3>baselines (mean [95 % CI])</h3>" + table(*lb["baselines"])
    body += "<h3>generators x arms, best first</h3>" + table(header, rows, left=2, row_classes=classes,
                                                             cell_classes=cell_classes, css_class="lb")
    body += "".join(note(n) for n in lb["notes"]) + "<h3>generators</h3>" + table(*lb["generators"])
    page.add("leaderboard", "Benchmark leaderboard", body)


def _verdict_items(verdicts: list[dict[str, Any]]) -> str:
    return "".join(f'<li class="{word_class(v["direction"])}">[{esc(v["direction"])}] {esc(v["text"])}</li>'
                   for v in verdicts)


VERDICT_NOTE = ("Significant = two-sided Wilcoxon signed-rank p < 0.05 against the real-only arm; per-class results "
                "use the test across test cases (each case's correctness averaged over seeds) when available, "
                "otherwise across seeds. No correction for multiple comparisons. Green: better, red: worse.")


def verdicts_section(res: Results, page: Page) -> None:
    ds = res.get("downstream")
    if ds and ds.get("summary"):
        verdicts = make_verdicts(ds)
        page.numbers["verdicts"] = verdicts
        page.add("verdicts", "Verdicts", f'<ul class="verdicts">{_verdict_items(verdicts)}</ul>{note(VERDICT_NOTE)}')


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
             img_tag(class_distribution_png(before, after), "class distribution") + tbl)


def sample_grids_section(res: Results, page: Page) -> None:
    if res.export is None:
        return
    grids, notes = sample_grids(res.export)
    parts = []
    for g in grids:
        figs = []
        for kind in (k for k in ("real", "synthetic") if k in g):
            width = min(int(g[f"{kind}_width"] * GRID_ZOOM), GRID_MAX_WIDTH)
            alt = f"{kind} {g['class']}"
            figs.append(f"<figure>{img_tag(g[kind], alt, pixelated=True, width=width)}"
                        f"<figcaption>{esc(kind)} ({g.get('n_' + kind, 0)} in the set)</figcaption></figure>")
        parts.append(f"<h3>{esc(g['class'])}</h3><div class=\"grid\">{''.join(figs)}</div>")
    if parts:
        page.add("sample-grids", "Real and synthetic samples per class", "".join(parts) + "".join(note(n) for n in notes))
    page.numbers["sample_grids"] = {g["class"]: {"real_in_set": g.get("n_real", 0),
                                                 "synthetic_in_set": g.get("n_synthetic", 0)} for g in grids}


def training_section(res: Results, page: Page) -> None:
    if not res.losses:
        return
    last = res.losses[-1]
    page.numbers["training"] = {"steps_logged": len(res.losses), "last": last}
    body = img_tag(losses_png(res.losses), "training losses")
    body += table(["loss", f"last logged value (step {last['step']})"],
                  [[k, fmt_num(v, 4)] for k, v in last.items() if k != "step"])
    samples_dir = res.run_dir / "samples"
    samples = sorted(samples_dir.glob("step_*.png")) if samples_dir.is_dir() else []
    if samples:
        body += (f"<h3>generator samples at the last checkpoint ({esc(samples[-1].stem)}), one row per class "
                 "(mask-conditioned models: the real images the masks come from, over the fakes made from those "
                 "masks), fixed inputs</h3>")
        body += img_tag(samples[-1].read_bytes(), "generator samples", pixelated=True, width=640)
    page.add("training-curves", "Generator training", body)


FIDELITY_KEYS = ["fd", "kid", "precision", "recall", "density", "coverage"]


def fidelity_section(res: Results, page: Page) -> None:
    from medbalance.evaluation.evaluate import summary_rows

    ev = res.get("evaluation")
    if not ev:
        return
    rows = [r for r in summary_rows(ev) if not r[0].startswith("privacy")]
    page.numbers["evaluation"] = {k: ev.get(k) for k in ("fidelity", "diversity", "image_stats", "extractor",
                                                         "n_real", "n_synthetic") if k in ev}
    if not rows:
        return
    ext = ev.get("extractor") or {}
    body = note(f"{ev.get('n_real')} real vs {ev.get('n_synthetic')} synthetic images; features: "
                f"{ext.get('name', 'n/a')} ({ext.get('dim', '?')}-d). Lower FD/KID is better; precision ~ fidelity, "
                "recall/coverage ~ diversity (0..1); MS-SSIM syn/real near 1 means as varied as the real data "
                "(above 1: less varied).")
    scopes: list[str] = []
    cells: dict[tuple[str, str], str] = {}
    other = []
    for scope, metric, value in rows:
        if metric in FIDELITY_KEYS:
            scopes += [scope] if scope not in scopes else []
            cells[(scope, metric)] = value
        else:
            other.append([scope, metric, value])
    cols = [k for k in FIDELITY_KEYS if any((sc, k) in cells for sc in scopes)]
    shown = [sc for sc in scopes if any(cells.get((sc, k), "n/a") != "n/a" for k in cols)]
    if shown:
        body += table(["scope", *cols], [[sc, *[cells.get((sc, k), "") for k in cols]] for sc in shown])
    if len(shown) < len(scopes):
        body += note("classes without synthetic images are left out.")
    if other:
        body += "<h3>diversity and image statistics</h3>" + table(["scope", "metric", "value"], other, left=2)
    page.add("fidelity", "Fidelity, diversity and image statistics", body)


def _montage(res: Results, mont: str) -> str:
    base = res.found["evaluation"].parent
    mp = Path(mont) if Path(mont).is_absolute() else base / mont
    mp = mp if mp.is_file() else base / Path(mont).name
    if mp.is_file():
        return "<h3>closest synthetic / training pairs</h3>" + img_tag(mp.read_bytes(), "nearest pairs")
    return note(f"privacy montage not found: {mont}", "warn")


def privacy_section(res: Results, page: Page) -> None:
    from medbalance.evaluation.evaluate import summary_rows

    ev = res.get("evaluation")
    if not ev or not ev.get("privacy"):
        return
    page.numbers["privacy"] = ev["privacy"]
    body = note("DCR share: fraction of synthetic images closer to a training image than to a held-out one (0.5 = no "
                "memorisation). MIA AUC 0.5 = an attacker cannot tell training from held-out images.")
    body += table(["space", "metric", "value"], [list(r) for r in summary_rows(ev) if r[0].startswith("privacy")], left=2)
    if res.export is not None and res.export.conditioned_on_real_masks:
        body += note("The synthetic images were generated from label maps of training cases (see parent_mask_id in "
                     "the manifest), so they reproduce those cases' anatomy: closeness to the training images is "
                     "expected and means these images are not anonymous copies of new patients.")
    dcr = (ev["privacy"].get("pixels") or {}).get("dcr_share")
    if finite(dcr) and dcr > 0.6:
        body += note(f"DCR share {fmt_num(dcr, 2)}: that fraction of the synthetic images is closer to a training "
                     "image than to any held-out image; do not share them as anonymised data.", "warn")
    if ev["privacy"].get("montage"):
        body += _montage(res, ev["privacy"]["montage"])
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
        for arm in arms:
            e = summ[arm].get(m)
            if not e:
                continue
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
            numbers.setdefault(m, {})[arm] = {
                "mean": e["mean"], "std": e["std"], "ci_low": e["ci_low"], "ci_high": e["ci_high"], "n": e.get("n"),
                "p_vs_real_seeds": p_seed, "p_vs_real_cases": p_case, "vs_real": word,
            }
    return table(header, rows, left=2, row_classes=classes_row, word_column=len(header) - 1), numbers


def _downstream_body(ds: dict[str, Any], page: Page, key: str) -> str:
    tbl, page.numbers[key] = downstream_table(ds)
    seeds = (ds.get("config") or {}).get("seeds") or []
    min_p = ds["summary"].get("_min_attainable_p_seeds")
    txt = (f"{len(seeds)} seeds; mean, sample std and 95 % percentile-bootstrap CI over seeds; p: two-sided Wilcoxon "
           f"signed-rank vs real, paired by seed (smallest attainable with this many seeds: {fmt_num(min_p)}) and "
           f"by test case. Green rows: significantly better than real-only (p < {ALPHA} in either test); red rows: "
           "significantly worse; the last column says which.")
    comps = ds.get("arm_training_sets") or {}
    comp_rows = [[a, c.get("n"), c.get("synthetic"), counts_txt(c.get("class_counts", {}))] for a, c in comps.items()]
    return (note(txt) + tbl + "<h3>training set of each arm (seed 0)</h3>"
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
             img_tag(per_class_png(ds, "dice", "Dice") if seg else per_class_png(ds, "recall", "recall"),
                     "per-class Dice" if seg else "per-class recall"))


def _feature_kv(fa: dict[str, Any]) -> list[tuple[str, Any]]:
    def txt(v: Any) -> str:
        return ", ".join(f"{k} {txt(x)}" for k, x in v.items()) if isinstance(v, dict) else fmt_num(v)

    seg, ac = fa.get("segmentor") or {}, fa.get("acgan") or {}
    kv = [("features", f"U-Net bottleneck {fa.get('feature_shape')} of images {fa.get('image_shape')}"),
          ("segmentor", f"{seg.get('source', 'n/a')}; test whole-lesion Dice {txt(seg.get('test_dice_whole_lesion'))}")]
    if "d_class_accuracy_generated" in ac:
        kv.append(("ACGAN D class accuracy on generated features", txt(ac["d_class_accuracy_generated"])))
    if "timings_seconds" in fa:
        kv.append(("timings (s)", txt(fa["timings_seconds"])))
    return kv


def feature_section(res: Results, page: Page) -> None:
    ds = res.get("feature")
    if not ds or not ds.get("summary"):
        return
    body = kv_list(_feature_kv(ds.get("feature_augment") or {}))
    body += "".join(note(n) for n in ds.get("notes") or [])
    body += _downstream_body(ds, page, "feature_downstream")
    verdicts = make_verdicts(ds)
    page.numbers["feature_verdicts"] = verdicts
    body += f'<h3>verdicts</h3><ul class="verdicts">{_verdict_items(verdicts)}</ul>{note(VERDICT_NOTE)}'
    body += img_tag(per_class_png(ds, "recall", "recall"), "feature-level per-class recall")
    page.add("feature-downstream", "Feature-level downstream classification (feature-augment) on real test data", body)


SECTIONS: list[Callable[[Results, Page], None]] = [
    data_method_section, leaderboard_section, verdicts_section, class_distribution_section, sample_grids_section,
    training_section, fidelity_section, privacy_section, downstream_section, feature_section,
]


def render_page(page: Page, root: Path) -> str:
    from medbalance import __version__

    title = f"medbalance report: {root.resolve().name}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
        f"<style>{CSS}</style></head><body><header><h1>{esc(title)}</h1>"
        f"<p>medbalance {esc(__version__)} · generated {esc(page.numbers['generated'])} · every number below comes "
        f"from the files in {esc(root.resolve())}</p></header><main>{''.join(page.sections)}</main></body></html>\n"
    )


def build_report(root: str | Path, out_html: str | Path | None = None) -> Path:
    """Write ``report.html`` (self-contained) and ``report.json`` for the results under ``root``."""
    t0 = time.perf_counter()
    res = load_results(Path(root))
    out_html = Path(out_html) if out_html is not None else res.root / "report.html"
    page = Page(numbers={"sources": {k: str(v) for k, v in res.found.items()}})
    for add_section in SECTIONS:
        add_section(res, page)
    page.numbers["generated"] = time.strftime("%Y-%m-%d %H:%M:%S")
    page.numbers["sections"] = [s.split('"', 2)[1] for s in page.sections]
    doc = render_page(page, res.root)
    page.numbers["seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_json(out_html.with_suffix(".json"), page.numbers)
    atomic_write_text(out_html, doc)
    return out_html


__all__ = [
    "CSS",
    "SECTIONS",
    "Page",
    "build_report",
    "downstream_table",
    "esc",
    "img_tag",
    "kv_list",
    "note",
    "section",
    "table",
]
