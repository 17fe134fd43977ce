"""One self-contained HTML report of an experiment: :func:`build_report`.

``build_report(root)`` collects whatever medbalance wrote under ``root`` (a ``medbalance demo`` folder,
a generator run folder, a ``medbalance downstream`` folder, a rebalanced export, an ``evaluate --json``
file named ``evaluation.json``) and writes

- ``report.html``: one file, images embedded as base64 PNG, inline CSS, no external resources (opens
  offline, can be mailed or attached to a paper's supplement);
- ``report.json``: every number the HTML shows, for checking and for other tools.

Sections (each only when its data exists; the ``id`` of each ``<section>`` is stable):
``data-method``, ``verdicts``, ``class-distribution``, ``sample-grids``, ``training-curves``,
``fidelity``, ``privacy``, ``downstream``, ``per-class-recall``.

Verdicts are plain sentences built from the downstream summary. A change is called significant only when
its Wilcoxon p-value is below 0.05; per-class recall uses the across-test-case test when the experiment has
it (``_cases``), otherwise the across-seed test, and the report says when the number of seeds makes a
significant seed-level result impossible (:func:`medbalance.evaluation.stats.min_attainable_p`).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from medbalance.errors import DataError
from medbalance.utils.io import atomic_write_json, atomic_write_text

ALPHA = 0.05
GRID_COLUMNS = 5  # images per class and kind in the sample grids
GRID_ZOOM = 1.7  # display zoom of the sample grids (small images)
ANATOMY_AREA = 0.2  # labels covering more of the image than this (on average) are anatomy: not outlined

ARM_PHRASES = {
    "oversample": "random oversampling",
    "class-weight": "class-weighted training",
    "augment": "classic augmentation",
    "synthetic-only": "training on synthetic images only",
}

CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1f3b5a;color:#fff;padding:18px 32px}
header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.85;font-size:13px}
main{max-width:1180px;margin:0 auto;padding:12px 24px 40px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:14px 22px 18px;margin:16px 0}
h2{font-size:18px;margin:4px 0 10px;color:#1f3b5a;border-bottom:1px solid #e3e6ea;padding-bottom:6px}
h3{font-size:14px;margin:14px 0 6px;color:#33435a}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0}
th,td{border:1px solid #dde1e6;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#eef1f5;text-align:center}
td.l,th.l{text-align:left}
tr.sig td{background:#eaf6ec}
img{max-width:100%;height:auto;display:block;margin:6px 0}
img.px{image-rendering:pixelated}
.grid{display:flex;flex-wrap:wrap;gap:18px}
.grid figure{margin:0}
figcaption{font-size:12px;color:#55606e}
ul.verdicts li{margin:5px 0;line-height:1.4}
.sig-yes{color:#17692b;font-weight:600}
.sig-worse{color:#a11d1d;font-weight:600}
.sig-no{color:#5b6470}
.warn{color:#8a5a00;font-size:13px}
.note{font-size:12px;color:#55606e}
dl.kv{display:grid;grid-template-columns:max-content auto;gap:2px 16px;font-size:13px;margin:4px 0}
dl.kv dt{font-weight:600;color:#33435a}
dl.kv dd{margin:0}
"""


# ============================================================================================ helpers
def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def fmt_num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        return f"{v:.{digits}f}" if abs(v) >= 10 ** (-digits) or v == 0 else f"{v:.2g}"
    return str(v)


def fmt_p(p: Any) -> str:
    if not _finite(p):
        return "n/a"
    p = float(p)
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def png_bytes_to_img(data: bytes, alt: str, pixelated: bool = False, width: int | None = None) -> str:
    b64 = base64.b64encode(data).decode("ascii")
    cls = ' class="px"' if pixelated else ""
    w = f' style="width:{int(width)}px"' if width else ""
    return f'<img{cls}{w} alt="{esc(alt)}" src="data:image/png;base64,{b64}">'


def _fig_png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", dpi=100)
    return buf.getvalue()


def _rgb_png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb.astype(np.uint8))).save(buf, format="PNG")
    return buf.getvalue()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read JSON ({e})", path=path) from None


def _table(header: list[str], rows: list[list[Any]], left: int = 1, row_classes: list[str] | None = None) -> str:
    th = "".join(f'<th class="l">{esc(h)}</th>' if i < left else f"<th>{esc(h)}</th>" for i, h in enumerate(header))
    body = []
    for r_i, row in enumerate(rows):
        cls = f' class="{row_classes[r_i]}"' if row_classes and row_classes[r_i] else ""
        tds = "".join(f'<td class="l">{esc(c)}</td>' if i < left else f"<td>{esc(c)}</td>" for i, c in enumerate(row))
        body.append(f"<tr{cls}>{tds}</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# ============================================================================================ discovery
def _is_run_dir(p: Path) -> bool:
    return (p / "config.yaml").is_file() and ((p / "losses.csv").is_file() or (p / "checkpoints").is_dir())


def discover(root: Path) -> dict[str, Path]:
    """Find the files the report uses under ``root`` (itself and up to two levels below)."""
    found: dict[str, Path] = {}
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    deeper = []
    for c in candidates[1:]:
        deeper += sorted(p for p in c.iterdir() if p.is_dir() and not p.name.startswith("."))
    for d in candidates + deeper:
        if "downstream" not in found and (d / "downstream.json").is_file():
            found["downstream"] = d / "downstream.json"
        if "run" not in found and _is_run_dir(d):
            found["run"] = d
        if "export" not in found and (d / "manifest.csv").is_file() and (
            (d / "synthesis.json").is_file() or (d / "model_card.json").is_file()
        ):
            found["export"] = d
        if "evaluation" not in found and (d / "evaluation.json").is_file():
            found["evaluation"] = d / "evaluation.json"
        if "demo" not in found and (d / "demo.json").is_file():
            found["demo"] = d / "demo.json"
    return found


# ============================================================================================ verdicts
def _arm_subject(arm: str, cls: str | None, added: int | None) -> str:
    if arm.startswith("real+synthetic") or arm == "synthetic-only":
        if arm == "synthetic-only":
            return ARM_PHRASES[arm]
        ratio = arm.partition("@")[2]
        how = f" ({ratio} x the real count per class)" if ratio else ""
        if cls is not None and added is not None:
            if added > 0:
                return f"adding {added} synthetic {cls} images{how}"
            return f"adding synthetic images of the other classes{how} (none of {cls})"
        return f"adding synthetic images{how}"
    return ARM_PHRASES.get(arm, f"arm {arm!r}")


def make_verdicts(downstream: dict[str, Any]) -> list[dict[str, Any]]:
    """Plain-language verdicts (with the numbers behind them) for every non-``real`` arm.

    Classification: one per class (recall) and one for balanced accuracy; segmentation: one per class (Dice)
    and one for foreground Dice.
    """
    summary = downstream.get("summary") or {}
    if "real" not in summary:
        return []
    task = downstream.get("task", "classification")
    class_names = list(downstream.get("class_names") or [])
    seeds_n = len((downstream.get("config") or {}).get("seeds") or []) or None
    min_p_seeds = summary.get("_min_attainable_p_seeds")
    comps = downstream.get("arm_training_sets") or {}
    real_counts = (comps.get("real") or {}).get("class_counts") or (downstream.get("split_class_counts") or {}).get("train", {})
    per_class_key, overall_key, what = (
        ("recall/{c}", "balanced_accuracy", "recall") if task == "classification" else ("dice/{c}", "dice_foreground", "Dice")
    )
    out: list[dict[str, Any]] = []
    arms = [a for a in summary if not a.startswith("_") and a != "real"]
    order = list(arms)
    arms.sort(key=lambda a: (not (a.startswith("real+synthetic") or a == "synthetic-only"), order.index(a)))
    for arm in arms:
        arm_sum = summary[arm]
        cases = arm_sum.get("_cases") or {}
        items = [(c, per_class_key.format(c=c)) for c in class_names] + [(None, overall_key)]
        for cls, metric in items:
            e, b = arm_sum.get(metric), summary["real"].get(metric)
            if not e or not b:
                continue
            added = None
            if cls is not None and arm in comps and cls in real_counts:
                added = int(comps[arm].get("class_counts", {}).get(cls, 0)) - int(real_counts[cls])
            test, p, n_pairs, min_p = "seeds", None, None, None
            if cls is not None and isinstance(cases.get(cls), dict) and _finite(cases[cls].get("p")):
                test, p = "cases", float(cases[cls]["p"])
                n_pairs = int(cases[cls].get("n", 0))
                min_p = cases[cls].get("min_attainable_p")
            elif isinstance(e.get("vs_real_seeds"), dict):
                vs = e["vs_real_seeds"]
                p = float(vs["p"]) if _finite(vs.get("p")) else None
                n_pairs = int(vs.get("n", 0))
                min_p = min_p_seeds if min_p_seeds is not None else vs.get("min_attainable_p")
            label = f"{cls} {what}" if cls is not None else overall_key.replace("_", " ")
            subject = _arm_subject(arm, cls, added)
            a_mean, b_mean = float(e["mean"]), float(b["mean"])
            ci = f"95 % CI {fmt_num(e['ci_low'], 2)}–{fmt_num(e['ci_high'], 2)}"
            test_txt = (
                f"Wilcoxon signed-rank across {n_pairs} test cases (mean over seeds)" if test == "cases"
                else f"Wilcoxon signed-rank across {n_pairs} seeds"
            )
            significant = p is not None and p < ALPHA
            impossible = test == "seeds" and _finite(min_p) and float(min_p) >= ALPHA
            if significant:
                verb = "raised" if a_mean > b_mean else "lowered"
                text = (
                    f"{subject} {verb} {label} from {fmt_num(b_mean, 2)} to {fmt_num(a_mean, 2)} ({ci}), "
                    f"{fmt_p(p)} ({test_txt})."
                )
            else:
                text = (
                    f"{subject}: no significant change in {label} ({fmt_num(b_mean, 2)} with real data only vs "
                    f"{fmt_num(a_mean, 2)}, {ci}; {fmt_p(p)}, {test_txt})."
                )
                if impossible:
                    text += (
                        f" With {n_pairs if n_pairs else seeds_n} seeds the smallest attainable p-value is "
                        f"{fmt_num(float(min_p), 3)}, so a significant result across seeds is impossible; "
                        f"run more seeds."
                    )
            out.append({
                "arm": arm, "class": cls, "metric": metric, "baseline_mean": b_mean, "mean": a_mean,
                "ci_low": float(e["ci_low"]), "ci_high": float(e["ci_high"]), "p": p, "test": test,
                "n_pairs": n_pairs, "min_attainable_p": None if min_p is None else float(min_p),
                "significant": bool(significant), "significance_impossible": bool(impossible),
                "synthetic_added": added, "text": text[0].upper() + text[1:],
            })
    return out


# ============================================================================================ plots
def class_distribution_png(before: dict[str, int], after: dict[str, int] | None) -> bytes:
    from matplotlib.figure import Figure

    names = list(before)
    x = np.arange(len(names))
    fig = Figure(figsize=(max(4.5, 1.3 * len(names) + 2), 3.2))
    ax = fig.add_subplot(111)
    w = 0.38 if after else 0.6
    b1 = ax.bar(x - (w / 2 if after else 0), [before[n] for n in names], w, label="before (real)", color="#4a78a8")
    ax.bar_label(b1, fontsize=8)
    if after:
        real_part = [before[n] for n in names]
        syn_part = [max(0, after.get(n, 0) - before[n]) for n in names]
        ax.bar(x + w / 2, real_part, w, color="#9cb8d6", label="after: real")
        b3 = ax.bar(x + w / 2, syn_part, w, bottom=real_part, color="#e08a3c", label="after: synthetic")
        ax.bar_label(b3, labels=[str(after.get(n, 0)) for n in names], fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(names, fontsize=9)
    ax.set_ylabel("images")
    ax.set_ylim(0, 1.12 * max([*before.values(), *(after or {}).values(), 1]))
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("training-set class distribution", fontsize=10, pad=12)
    ax.spines[["top", "right"]].set_visible(False)
    return _fig_png(fig)


def losses_png(rows: list[dict[str, float]]) -> bytes:
    from matplotlib.figure import Figure

    keys = [k for k in rows[0] if k not in ("step", "images_per_s")]
    steps = [r["step"] for r in rows]
    groups = {
        "generator": [k for k in keys if k.lower().startswith(("g", "loss_g"))],
        "discriminator": [k for k in keys if k.lower().startswith(("d", "loss_d"))],
    }
    groups["other"] = [k for k in keys if k not in groups["generator"] + groups["discriminator"]]
    groups = {g: ks for g, ks in groups.items() if ks}
    fig = Figure(figsize=(4.2 * len(groups), 3.0))
    for i, (g, ks) in enumerate(groups.items()):
        ax = fig.add_subplot(1, len(groups), i + 1)
        for k in ks:
            ax.plot(steps, [r[k] for r in rows], label=k, lw=1.2)
        ax.set_title(f"{g} losses", fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.legend(fontsize=7, frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _fig_png(fig)


def recall_png(downstream: dict[str, Any], metric_prefix: str, label: str) -> bytes:
    from matplotlib.figure import Figure

    summ = downstream["summary"]
    arms = [a for a in summ if not a.startswith("_")]
    classes = list(downstream["class_names"])
    x = np.arange(len(classes))
    w = 0.8 / max(len(arms), 1)
    fig = Figure(figsize=(max(5.0, 1.6 * len(classes) + 2.5), 3.4))
    ax = fig.add_subplot(111)
    fixed = {"real": "#4a78a8", "oversample": "#9cb8d6", "class-weight": "#8a8a8a", "augment": "#6aa56a",
             "real+synthetic": "#e08a3c", "synthetic-only": "#b0558a"}
    extra = ["#c9b037", "#5bb5b5", "#7d5ba6", "#d4726a"]
    for i, arm in enumerate(arms):
        colour = fixed.get(arm) or extra[i % len(extra)]
        means, lo, hi = [], [], []
        for c in classes:
            e = summ[arm].get(f"{metric_prefix}/{c}")
            m = float(e["mean"]) if e else float("nan")
            means.append(m)
            lo.append(max(0.0, m - float(e["ci_low"])) if e else 0.0)
            hi.append(max(0.0, float(e["ci_high"]) - m) if e else 0.0)
        ax.bar(x - 0.4 + w * (i + 0.5), means, w, yerr=[lo, hi], capsize=3, label=arm,
               color=colour, error_kw={"lw": 1})
    ax.set_xticks(x)
    ax.set_xticklabels(classes, fontsize=9)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"{label} (mean over seeds)")
    ax.legend(fontsize=8, frameon=False, ncol=min(len(arms), 4), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    ax.set_title(f"per-class {label} on the real test set, error bars: 95 % bootstrap CI over seeds", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return _fig_png(fig)


# ============================================================================================ sample grids
def _display_image(path: Path) -> np.ndarray | None:
    """(H, W, 3) uint8 for display, or None for formats not shown (volumes)."""
    from medbalance.data.imageio import read_image

    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return None
    if name.endswith(".npy"):
        a = np.load(path, allow_pickle=False).astype(np.float32)
        a = a[0] if a.ndim == 3 and a.shape[0] == 1 else (np.moveaxis(a[:3], 0, -1) if a.ndim == 3 else a)
        lo, hi = float(np.percentile(a, 0.5)), float(np.percentile(a, 99.5))
        a = np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1) * 255
    else:
        li = read_image(path)
        a = li.array.astype(np.float32)
        if li.kind == "uint16":
            a = a / 257.0
        elif li.kind == "float":
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) / max(hi - lo, 1e-12) * 255
    a = a.round().clip(0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    return a


def sample_grids(export_dir: Path, per_class: int = GRID_COLUMNS) -> tuple[list[dict[str, Any]], list[str]]:
    """Real and synthetic examples per class from an export's manifest: [{class, real_png, synthetic_png}]."""
    import torch

    from medbalance.data.imageio import read_mask
    from medbalance.training.logging import mask_outlines, MASK_COLOURS

    manifest = export_dir / "manifest.csv"
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    notes: list[str] = []
    by: dict[tuple[str, str], list[dict[str, str]]] = {}
    for r in rows:
        kind = "synthetic" if r.get("synthetic", "0") in ("1", "true", "True") else "real"
        by.setdefault((r.get("label", ""), kind), []).append(r)
    classes = []
    for r in rows:
        if r.get("label", "") not in classes:
            classes.append(r.get("label", ""))
    # evenly spaced picks (deterministic, spread over the list)
    picked: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray | None]]] = {}
    all_vals: set[int] = set()
    for key, rs in by.items():
        idx = np.unique(np.linspace(0, len(rs) - 1, num=min(per_class, len(rs))).round().astype(int))
        items = []
        for i in idx:
            r = rs[int(i)]
            img = _display_image(export_dir / r["image"])
            if img is None:
                continue
            m = None
            if r.get("mask"):
                mp = export_dir / r["mask"]
                if mp.is_file() and not mp.name.lower().endswith((".nii", ".nii.gz")):
                    m = read_mask(mp).astype(np.int64)
                    all_vals |= set(np.unique(m).tolist())
            items.append((img, m))
        picked[key] = items
    if any(not v for v in picked.values()) or not picked:
        notes.append("volumes are not shown in the sample grids")
    vals = sorted(all_vals)
    # labels covering a large part of the image (e.g. the phantom's intracranial label) are anatomy: outlining
    # them would hide the image; only the smaller (lesion) labels are drawn
    masks_shown = [m for items in picked.values() for _, m in items if m is not None]
    anatomy = {v for v in vals if v != 0 and np.mean([(m == v).mean() for m in masks_shown]) > ANATOMY_AREA}
    drawn = [v for v in vals if v != 0 and v not in anatomy]
    lut = {v: (i + 1 if v in drawn else 0) for i, v in enumerate(vals)}
    lut.update({v: drawn.index(v) + 1 for v in drawn})
    out = []
    for c in classes:
        entry: dict[str, Any] = {"class": c}
        for kind in ("real", "synthetic"):
            items = picked.get((c, kind)) or []
            if not items:
                continue
            h = max(im.shape[0] for im, _ in items)
            w = max(im.shape[1] for im, _ in items)
            tiles = []
            for im, m in items:
                t = np.full((h, w, 3), 32, np.uint8)
                t[: im.shape[0], : im.shape[1]] = im
                if m is not None and m.shape == im.shape[:2]:
                    idx_m = torch.from_numpy(np.vectorize(lambda v: lut.get(int(v), 0))(m).astype(np.int64))[None]
                    outl = mask_outlines(idx_m)[0].numpy()
                    col = MASK_COLOURS[(np.clip(outl - 1, 0, None)) % len(MASK_COLOURS)]
                    sub = t[: im.shape[0], : im.shape[1]]
                    sub[outl > 0] = col[outl > 0]
                tiles.append(t)
            pad = 2
            canvas = np.full((h + 2 * pad, len(tiles) * (w + pad) + pad, 3), 255, np.uint8)
            for j, t in enumerate(tiles):
                canvas[pad : pad + h, pad + j * (w + pad) : pad + j * (w + pad) + w] = t
            entry[kind] = _rgb_png(canvas)
            entry[f"{kind}_width"] = canvas.shape[1]
            entry[f"n_{kind}"] = len(by.get((c, kind), []))
        out.append(entry)
    if drawn:
        names = ", ".join(
            f"value {v} ({['red', 'green', 'blue', 'yellow', 'magenta', 'cyan'][(drawn.index(v)) % 6]})" for v in drawn
        )
        txt = f"outlines: label-map regions {names}"
        if anatomy:
            txt += f"; large anatomy label(s) {sorted(anatomy)} not outlined"
        notes.append(txt + ". Synthetic images are generated from the label maps shown.")
    return out, notes


# ============================================================================================ sections
def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{esc(sid)}"><h2>{esc(title)}</h2>{body}</section>'


def _counts_txt(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items())


def _kv(items: list[tuple[str, Any]]) -> str:
    return '<dl class="kv">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items) + "</dl>"


def _downstream_table(ds: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    summ = ds["summary"]
    arms = [a for a in summ if not a.startswith("_")]
    classes = ds["class_names"]
    if ds.get("task") == "classification":
        metrics = ["balanced_accuracy", "macro_f1", "auroc"] + [f"recall/{c}" for c in classes] + [
            f"precision/{c}" for c in classes
        ]
    else:
        metrics = ["dice_foreground"] + [f"dice/{c}" for c in classes] + [f"brats/{k}" for k in ("WT", "TC", "ET")]
    header = ["metric", "arm", "mean", "std", "95 % CI", "p vs real (seeds)", "p vs real (test cases)"]
    rows, classes_row, numbers = [], [], {}
    for m in metrics:
        for arm in arms:
            e = summ[arm].get(m)
            if not e:
                continue
            p_seed = (e.get("vs_real_seeds") or {}).get("p")
            p_case = None
            cls = m.split("/", 1)[1] if m.startswith(("recall/", "dice/")) else None
            if cls is not None and arm != "real":
                c = (summ[arm].get("_cases") or {}).get(cls)
                if isinstance(c, dict):
                    p_case = c.get("p")
            rows.append([
                m, arm, fmt_num(e["mean"]), fmt_num(e["std"]), f"{fmt_num(e['ci_low'])} – {fmt_num(e['ci_high'])}",
                "—" if arm == "real" else fmt_num(p_seed), "—" if p_case is None else fmt_num(p_case),
            ])
            sig = any(_finite(p) and float(p) < ALPHA for p in (p_seed, p_case))
            classes_row.append("sig" if sig and arm != "real" else "")
            numbers.setdefault(m, {})[arm] = {
                "mean": e["mean"], "std": e["std"], "ci_low": e["ci_low"], "ci_high": e["ci_high"], "n": e.get("n"),
                "p_vs_real_seeds": p_seed, "p_vs_real_cases": p_case,
            }
    return _table(header, rows, left=2, row_classes=classes_row), numbers


def _conditioned_on_real_masks(export_dir: Path) -> bool:
    with open(export_dir / "manifest.csv", newline="") as f:
        return any(r.get("parent_mask_id") for r in csv.DictReader(f))


def _export_counts(export_dir: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(real, real + synthetic) class counts from an export manifest, in first-seen class order."""
    with open(export_dir / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    real: dict[str, int] = {}
    after: dict[str, int] = {}
    for r in rows:
        c = r.get("label", "")
        real.setdefault(c, 0)
        after.setdefault(c, 0)
        after[c] += 1
        if r.get("synthetic", "0") not in ("1", "true", "True"):
            real[c] += 1
    return real, after


# ============================================================================================ main entry
def build_report(root: str | Path, out_html: str | Path | None = None) -> Path:
    """Write ``report.html`` (self-contained) and ``report.json`` for the results under ``root``."""
    t0 = time.perf_counter()
    root = Path(root)
    if not root.is_dir():
        raise DataError("report: folder not found", path=root)
    found = discover(root)
    if not found:
        raise DataError(
            "no medbalance results found here (looked for downstream.json, a generator run folder, "
            "evaluation.json, a rebalanced export with manifest.csv + synthesis.json)",
            path=root,
        )
    out_html = Path(out_html) if out_html is not None else root / "report.html"
    numbers: dict[str, Any] = {"sources": {k: str(v) for k, v in found.items()}}
    sections: list[str] = []
    warnings: list[str] = []

    demo = _read_json(found["demo"]) if "demo" in found else None
    downstream = _read_json(found["downstream"]) if "downstream" in found else None
    evaluation = _read_json(found["evaluation"]) if "evaluation" in found else None
    run_dir = found.get("run")
    export_dir = found.get("export")
    synthesis = _read_json(export_dir / "synthesis.json") if export_dir and (export_dir / "synthesis.json").is_file() else None
    card = _read_json(export_dir / "model_card.json") if export_dir and (export_dir / "model_card.json").is_file() else None
    run_cfg = None
    if run_dir is not None:
        import yaml

        try:
            run_cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise DataError(f"cannot read run config ({e})", path=run_dir / "config.yaml") from None

    # ------------------------------------------------------------------ data & method
    kv: list[tuple[str, Any]] = []
    dm: dict[str, Any] = {}
    if demo:
        dm["dataset"] = demo.get("dataset")
        kv.append(("dataset", demo.get("dataset", {}).get("description", "")))
        kv.append(("all images per class", _counts_txt(demo.get("dataset", {}).get("class_counts") or {})))
    if downstream:
        dm["split"] = downstream.get("split")
        dm["split_class_counts"] = downstream.get("split_class_counts")
        sc = downstream.get("split_class_counts") or {}
        for part in ("train", "val", "test"):
            if part in sc:
                kv.append((f"{part} split", f"{sum(sc[part].values())} images: " + ", ".join(f"{c} {n}" for c, n in sc[part].items())))
        cfg = downstream.get("config") or {}
        dm["seeds"] = cfg.get("seeds")
        dm["arms"] = cfg.get("arms")
        kv.append(("downstream task", f"{downstream.get('task')}; arms {', '.join(cfg.get('arms', []))}; "
                   f"{len(cfg.get('seeds', []))} seeds {cfg.get('seeds')}; {cfg.get('epochs')} epochs per model; "
                   "epoch selected on real validation data, tested on real test data only"))
        warnings += list(downstream.get("warnings") or [])
        dups = downstream.get("duplicates")
        if dups is not None:  # identical (and near-duplicate) images kept on one side of the split
            kv.append(("duplicates grouped in the split", f"{dups.get('groups', 0)} groups of identical images "
                       f"({dups.get('images', 0)} images), {dups.get('near_duplicate_groups', 0)} near-duplicate "
                       "groups; each group kept on one side"))
        prov = downstream.get("synthetic_provenance")
        if prov is not None:
            kv.append(("synthetic provenance", ("verified: the generator's training ids include no test id"
                       if prov.get("verified") else "UNVERIFIED (--allow-unverified-synthetic)")))
    gen_cfg = run_cfg or (card or {})
    if gen_cfg:
        model = gen_cfg.get("model") or {}
        train_c = gen_cfg.get("train") or {}
        dm["generator"] = {"name": model.get("name"), "preset": model.get("preset"), "params": model.get("params"),
                           "steps": train_c.get("steps"), "epochs": train_c.get("epochs"), "batch_size": train_c.get("batch_size")}
        params = ", ".join(f"{k}={v}" for k, v in (model.get("params") or {}).items()) or "preset defaults"
        kv.append(("generator", f"{model.get('name')} (preset {model.get('preset')}; {params})"))
        length = (f"{train_c.get('steps')} steps" if train_c.get("steps") is not None
                  else f"{train_c.get('epochs')} epochs")
        kv.append(("generator training", f"{length}, batch {train_c.get('batch_size')}, seed {train_c.get('seed')}"))
    if run_dir is not None and (run_dir / "train_ids.json").is_file():
        ids = _read_json(run_dir / "train_ids.json")
        dm["generator_train_images"] = len(ids.get("train", []))
        dm["generator_heldout_images"] = len(ids.get("heldout", []))
        kv.append(("generator trained on", f"{len(ids.get('train', []))} images ({len(ids.get('heldout', []))} held out)"))
    if synthesis:
        dm["synthesis_plan"] = synthesis.get("plan")
        rep = synthesis.get("report") or {}
        kv.append(("synthesis plan (new images per class)", _counts_txt(synthesis.get("plan") or {})))
        if synthesis.get("options"):
            kv.append(("synthesis options", ", ".join(f"{k}={v}" for k, v in synthesis["options"].items())))
        if rep.get("shortfall"):
            warnings.append(f"the requested synthetic counts were not reached: {rep['shortfall']}")
    if evaluation:
        warnings += [f"evaluation: {w}" for w in evaluation.get("warnings", [])]
    if demo:
        kv.append(("stage times (s)", ", ".join(f"{k} {v:.0f}" for k, v in (demo.get("stage_seconds") or {}).items())))
        dm["stage_seconds"] = demo.get("stage_seconds")
        warnings += list(demo.get("warnings") or [])
    numbers["data_method"] = dm
    numbers["warnings"] = warnings
    body = _kv(kv)
    if warnings:
        body += "<h3>warnings</h3><ul>" + "".join(f'<li class="warn">{esc(w)}</li>' for w in warnings) + "</ul>"
    sections.append(_section("data-method", "Data & method", body))

    # ------------------------------------------------------------------ verdicts
    if downstream and downstream.get("summary"):
        verdicts = make_verdicts(downstream)
        numbers["verdicts"] = verdicts
        def vclass(v: dict[str, Any]) -> str:
            if not v["significant"]:
                return "sig-no"
            return "sig-yes" if v["mean"] > v["baseline_mean"] else "sig-worse"

        items = "".join(f'<li class="{vclass(v)}">{esc(v["text"])}</li>' for v in verdicts)
        note = (
            '<p class="note">Significant = two-sided Wilcoxon signed-rank p &lt; 0.05 against the real-only arm; '
            "per-class results use the test across test cases (each case's correctness averaged over seeds) when "
            "available, otherwise across seeds. No correction for multiple comparisons.</p>"
        )
        sections.append(_section("verdicts", "Verdicts", f'<ul class="verdicts">{items}</ul>{note}'))

    # ------------------------------------------------------------------ class distribution
    before = after = None
    if export_dir is not None:
        before, after = _export_counts(export_dir)
        if sum(before.values()) == 0:  # synthetic-only export: before from the downstream train split
            before = (downstream or {}).get("split_class_counts", {}).get("train") or None
            if before:
                after = {c: before.get(c, 0) + after.get(c, 0) for c in before}
    elif downstream:
        comps = downstream.get("arm_training_sets") or {}
        before = (comps.get("real") or {}).get("class_counts")
        syn_arm = next((a for a in comps if a.startswith("real+synthetic")), None)
        after = (comps.get(syn_arm) or {}).get("class_counts") if syn_arm else None
    if before:
        numbers["class_distribution"] = {"before": before, "after": after}
        tbl = _table(["class", "before (real)", "after (real + synthetic)", "synthetic added"],
                     [[c, before[c], (after or {}).get(c, before[c]), (after or {}).get(c, before[c]) - before[c]] for c in before])
        sections.append(_section(
            "class-distribution", "Class distribution before and after rebalancing",
            png_bytes_to_img(class_distribution_png(before, after), "class distribution") + tbl,
        ))

    # ------------------------------------------------------------------ sample grids
    if export_dir is not None:
        grids, notes = sample_grids(export_dir)
        parts = []
        for g in grids:
            figs = []
            for kind in ("real", "synthetic"):
                if kind in g:
                    alt = f"{kind} {g['class']}"
                    width = int(g[f"{kind}_width"] * GRID_ZOOM) if g[f"{kind}_width"] * GRID_ZOOM <= 520 else 520
                    figs.append(f"<figure>{png_bytes_to_img(g[kind], alt, pixelated=True, width=width)}"
                                f"<figcaption>{esc(kind)} ({g.get('n_' + kind, 0)} in the set)</figcaption></figure>")
            parts.append(f"<h3>{esc(g['class'])}</h3><div class=\"grid\">{''.join(figs)}</div>")
        if parts:
            note = "".join(f'<p class="note">{esc(n)}</p>' for n in notes)
            sections.append(_section("sample-grids", "Real and synthetic samples per class", "".join(parts) + note))
        numbers["sample_grids"] = {g["class"]: {"real_in_set": g.get("n_real", 0), "synthetic_in_set": g.get("n_synthetic", 0)} for g in grids}

    # ------------------------------------------------------------------ training curves
    if run_dir is not None and (run_dir / "losses.csv").is_file():
        from medbalance.training.logging import read_losses_csv

        try:
            rows = read_losses_csv(run_dir / "losses.csv")
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"cannot read losses ({e})", path=run_dir / "losses.csv") from None
        if rows:
            last = rows[-1]
            numbers["training"] = {"steps_logged": len(rows), "last": last}
            body = png_bytes_to_img(losses_png(rows), "training losses")
            body += _table(["loss", f"last logged value (step {last['step']})"],
                           [[k, fmt_num(v, 4)] for k, v in last.items() if k != "step"])
            samples = sorted((run_dir / "samples").glob("step_*.png")) if (run_dir / "samples").is_dir() else []
            if samples:
                body += (f"<h3>generator samples at the last checkpoint ({esc(samples[-1].stem)}), "
                         f"one row per class (mask-conditioned models: the real images the masks come from, "
                         f"over the fakes made from those masks), fixed inputs</h3>")
                body += png_bytes_to_img(samples[-1].read_bytes(), "generator samples", pixelated=True, width=640)
            sections.append(_section("training-curves", "Generator training", body))

    # ------------------------------------------------------------------ fidelity / diversity / stats
    if evaluation:
        from medbalance.evaluation.evaluate import summary_rows

        rows = [r for r in summary_rows(evaluation) if not r[0].startswith("privacy")]
        numbers["evaluation"] = {k: evaluation.get(k) for k in ("fidelity", "diversity", "image_stats", "extractor",
                                                                  "n_real", "n_synthetic") if k in evaluation}
        if rows:
            ext = evaluation.get("extractor") or {}
            intro = (f'<p class="note">{evaluation.get("n_real")} real vs {evaluation.get("n_synthetic")} synthetic '
                     f"images; features: {esc(ext.get('name', 'n/a'))} ({ext.get('dim', '?')}-d). Lower FD/KID is "
                     "better; precision ~ fidelity, recall/coverage ~ diversity (0..1); MS-SSIM syn/real near 1 "
                     "means as varied as the real data (above 1: less varied).</p>")
            fid_keys = ["fd", "kid", "precision", "recall", "density", "coverage"]
            scopes: list[str] = []
            cells: dict[tuple[str, str], str] = {}
            other = []
            for scope, metric, value in rows:
                if metric in fid_keys:
                    if scope not in scopes:
                        scopes.append(scope)
                    cells[(scope, metric)] = value
                else:
                    other.append([scope, metric, value])
            cols = [k for k in fid_keys if any((sc, k) for sc in scopes if (sc, k) in cells)]
            body = intro
            if scopes:
                shown = [sc for sc in scopes if any(cells.get((sc, k), "n/a") != "n/a" for k in cols)]
                body += _table(["scope", *cols], [[sc, *[cells.get((sc, k), "") for k in cols]] for sc in shown])
                if len(shown) < len(scopes):
                    body += '<p class="note">classes without synthetic images are left out.</p>'

            if other:
                body += "<h3>diversity and image statistics</h3>" + _table(["scope", "metric", "value"], other, left=2)
            sections.append(_section("fidelity", "Fidelity, diversity and image statistics", body))
        if evaluation.get("privacy"):
            prow = [r for r in summary_rows(evaluation) if r[0].startswith("privacy")]
            numbers["privacy"] = evaluation["privacy"]
            body = ('<p class="note">DCR share: fraction of synthetic images closer to a training image than to a '
                    "held-out one (0.5 = no memorisation). MIA AUC 0.5 = an attacker cannot tell training from "
                    "held-out images.</p>")
            body += _table(["space", "metric", "value"], [list(r) for r in prow], left=2)
            pix = evaluation["privacy"].get("pixels") or {}
            if export_dir is not None and _conditioned_on_real_masks(export_dir):
                body += ('<p class="note">The synthetic images were generated from label maps of training cases '
                         "(see parent_mask_id in the manifest), so they reproduce those cases' anatomy: closeness to "
                         "the training images is expected and means these images are not anonymous copies of new "
                         "patients.</p>")
            if _finite(pix.get("dcr_share")) and pix["dcr_share"] > 0.6:
                body += (f'<p class="warn">DCR share {fmt_num(pix["dcr_share"], 2)}: that fraction of the synthetic '
                         "images is closer to a training image than to any held-out image; do not share them as "
                         "anonymised data.</p>")
            mont = evaluation["privacy"].get("montage")
            if mont:
                mp = Path(mont)
                if not mp.is_absolute():
                    mp = found["evaluation"].parent / mp
                if not mp.is_file():
                    mp = found["evaluation"].parent / Path(mont).name
                if mp.is_file():
                    body += "<h3>closest synthetic / training pairs</h3>" + png_bytes_to_img(mp.read_bytes(), "nearest pairs")
                else:
                    warnings.append(f"privacy montage not found: {mont}")
            sections.append(_section("privacy", "Privacy (memorisation)", body))

    # ------------------------------------------------------------------ downstream
    if downstream and downstream.get("summary"):
        tbl, dnum = _downstream_table(downstream)
        numbers["downstream"] = dnum
        cfg = downstream.get("config") or {}
        min_p = downstream["summary"].get("_min_attainable_p_seeds")
        note = (f'<p class="note">{len(cfg.get("seeds", []))} seeds; mean, sample std and 95 % percentile-bootstrap '
                f"CI over seeds; p: two-sided Wilcoxon signed-rank vs real, paired by seed (smallest attainable "
                f"with this many seeds: {fmt_num(min_p)}) and by test case. Green rows: p &lt; 0.05.</p>")
        comps = downstream.get("arm_training_sets") or {}
        comp_rows = [[a, c.get("n"), c.get("synthetic"), ", ".join(f"{k} {v}" for k, v in c.get("class_counts", {}).items())]
                     for a, c in comps.items()]
        numbers["arm_training_sets"] = comps
        ctab = "<h3>training set of each arm (seed 0)</h3>" + _table(["arm", "images", "synthetic", "per class"], comp_rows, left=1)
        sections.append(_section("downstream", f"Downstream {downstream.get('task')} on real test data", note + tbl + ctab))
        if downstream.get("task") == "classification":
            img = png_bytes_to_img(recall_png(downstream, "recall", "recall"), "per-class recall")
            sections.append(_section("per-class-recall", "Per-class recall (sensitivity) per arm", img))
        else:
            img = png_bytes_to_img(recall_png(downstream, "dice", "Dice"), "per-class Dice")
            sections.append(_section("per-class-recall", "Per-class Dice per arm", img))

    # ------------------------------------------------------------------ assemble
    title = f"medbalance report: {root.resolve().name}"
    gen_time = time.strftime("%Y-%m-%d %H:%M:%S")
    from medbalance import __version__

    doc = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
        f"<style>{CSS}</style></head><body><header><h1>{esc(title)}</h1>"
        f"<p>medbalance {esc(__version__)} · generated {esc(gen_time)} · every number below comes from the files in "
        f"{esc(root.resolve())}</p></header><main>{''.join(sections)}</main></body></html>\n"
    )
    numbers["generated"] = gen_time
    numbers["seconds"] = round(time.perf_counter() - t0, 2)
    numbers["sections"] = [s.split('"', 2)[1] for s in sections]
    atomic_write_json(out_html.with_suffix(".json"), numbers)
    atomic_write_text(out_html, doc)
    return out_html
