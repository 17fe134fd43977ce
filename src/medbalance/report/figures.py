"""The report's figures as PNG bytes: class distribution, losses, per-class metric bars, sample grids (images read
with :mod:`medbalance.data.imageio`, drawn with :mod:`medbalance.utils.imaging`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medbalance.report.discover import ExportManifest
from medbalance.utils import imaging

GRID_COLUMNS = 5  # images per class and kind in the sample grids
ANATOMY_AREA = 0.2  # labels covering more of the image than this (on average) are anatomy: not outlined
ARM_COLOURS = {"real": "#4a78a8", "oversample": "#9cb8d6", "class-weight": "#8a8a8a", "augment": "#6aa56a",
               "real+synthetic": "#e08a3c", "synthetic-only": "#b0558a"}
EXTRA_COLOURS = ["#c9b037", "#5bb5b5", "#7d5ba6", "#d4726a"]
VOLUME_SUFFIXES = (".nii", ".nii.gz")  # not shown in the sample grids


def _axes(size: tuple[float, float], n: int = 1) -> tuple[Any, list[Any]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    return fig, [fig.add_subplot(1, n, i + 1) for i in range(n)]


def _style(ax, title: str, legend: dict[str, Any], names: list[str] | None = None, ylabel: str = "",
           ymax: float | None = None, **title_kw) -> None:
    """Title, frameless legend, no top/right spines; bar charts: one x tick per name, y label and range."""
    if names is not None:
        ax.set_xticks(np.arange(len(names)), names, fontsize=9)
        ax.set(ylabel=ylabel, ylim=(0, ymax))
    ax.legend(frameon=False, **legend)
    ax.set_title(title, fontsize=10, **title_kw)
    ax.spines[["top", "right"]].set_visible(False)


def class_distribution_png(before: dict[str, int], after: dict[str, int] | None) -> bytes:
    names, x = list(before), np.arange(len(before))
    fig, (ax,) = _axes((max(4.5, 1.3 * len(names) + 2), 3.2))
    w = 0.38 if after else 0.6
    b1 = ax.bar(x - (w / 2 if after else 0), [before[n] for n in names], w, label="before (real)", color="#4a78a8")
    ax.bar_label(b1, fontsize=8)
    if after:
        real_part = [before[n] for n in names]
        syn_part = [max(0, after.get(n, 0) - before[n]) for n in names]
        ax.bar(x + w / 2, real_part, w, color="#9cb8d6", label="after: real")
        b3 = ax.bar(x + w / 2, syn_part, w, bottom=real_part, color="#e08a3c", label="after: synthetic")
        ax.bar_label(b3, labels=[str(after.get(n, 0)) for n in names], fontsize=8)
    _style(ax, "training-set class distribution", {"fontsize": 8, "loc": "upper left", "bbox_to_anchor": (1.0, 1.0)},
           names, "images", 1.12 * max([*before.values(), *(after or {}).values(), 1]), pad=12)
    return imaging.figure_png(fig, dpi=100)


def losses_png(rows: list[dict[str, float]]) -> bytes:
    keys = [k for k in rows[0] if k not in ("step", "images_per_s")]
    gen = [k for k in keys if k.lower().startswith(("g", "loss_g"))]
    disc = [k for k in keys if k.lower().startswith(("d", "loss_d"))]
    groups = {g: ks for g, ks in (("generator", gen), ("discriminator", disc),
                                  ("other", [k for k in keys if k not in gen + disc])) if ks}
    fig, axes = _axes((4.2 * len(groups), 3.0), len(groups))
    for ax, (g, ks) in zip(axes, groups.items()):
        for k in ks:
            ax.plot([r["step"] for r in rows], [r[k] for r in rows], label=k, lw=1.2)
        ax.set_xlabel("step", fontsize=9)
        _style(ax, f"{g} losses", {"fontsize": 7})
    fig.tight_layout()
    return imaging.figure_png(fig, dpi=100)


def per_class_png(downstream: dict[str, Any], metric_prefix: str, label: str) -> bytes:
    """Bars of ``metric_prefix/<class>`` per arm with 95 % CI error bars."""
    summ = downstream["summary"]
    arms = [a for a in summ if not a.startswith("_")]
    classes = list(downstream["class_names"])
    x, w = np.arange(len(classes)), 0.8 / max(len(arms), 1)
    fig, (ax,) = _axes((max(5.0, 1.6 * len(classes) + 2.5), 3.4))
    for i, arm in enumerate(arms):
        entries = [summ[arm].get(f"{metric_prefix}/{c}") for c in classes]
        means = [float(e["mean"]) if e else float("nan") for e in entries]
        lo = [max(0.0, m - float(e["ci_low"])) if e else 0.0 for m, e in zip(means, entries)]
        hi = [max(0.0, float(e["ci_high"]) - m) if e else 0.0 for m, e in zip(means, entries)]
        ax.bar(x - 0.4 + w * (i + 0.5), means, w, yerr=[lo, hi], capsize=3, label=arm,
               color=ARM_COLOURS.get(arm) or EXTRA_COLOURS[i % len(EXTRA_COLOURS)], error_kw={"lw": 1})
    _style(ax, f"per-class {label} on the real test set, error bars: 95 % bootstrap CI over seeds",
           {"fontsize": 8, "ncol": min(len(arms), 4), "loc": "upper center", "bbox_to_anchor": (0.5, -0.12)},
           classes, f"{label} (mean over seeds)", 1.05)
    return imaging.figure_png(fig, dpi=100)


# ------------------------------------------------------------------------------------------- sample grids
def _read_tile(folder: Path, row: dict[str, str]) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(H, W, 3) uint8 display image and label map (or None) of one manifest row; None for a volume."""
    from medbalance.data.imageio import read_image, read_mask

    path, mp = folder / row["image"], folder / row.get("mask", "")
    if path.name.lower().endswith(VOLUME_SUFFIXES):
        return None
    if path.suffix.lower() == ".npy":  # float exports: (C, H, W) float32 in source units (see synthesis.export)
        img = imaging.array_to_display(np.load(path, allow_pickle=False), "float")
    else:
        li = read_image(path)
        img = imaging.array_to_display(li.array, li.kind)
    has_mask = row.get("mask") and mp.is_file() and not mp.name.lower().endswith(VOLUME_SUFFIXES)
    return img, read_mask(mp).astype(np.int64) if has_mask else None


def _outlined(img: np.ndarray, mask: np.ndarray | None, drawn: list[int]) -> np.ndarray:
    """``img`` with the regions of ``mask`` whose value is in ``drawn`` outlined, in colour by value (as in the
    training sample grids, :func:`medbalance.utils.imaging.render_grid`)."""
    if mask is None or mask.shape != img.shape[:2] or not drawn:
        return img
    import torch

    outl = imaging.mask_outlines(torch.from_numpy(np.where(np.isin(mask, drawn), mask, 0))[None])
    return imaging.paint_outlines(torch.from_numpy(img)[None], outl)[0].numpy()


def sample_grids(export: ExportManifest, per_class: int = GRID_COLUMNS) -> tuple[list[dict[str, Any]], list[str]]:
    """Real and synthetic examples per class from an export: ``[{class, real, synthetic, n_real, ...}]``, notes.

    Picks are evenly spaced over each class's rows (deterministic). Label-map regions are outlined, except labels
    that cover more than :data:`ANATOMY_AREA` of the image on average (anatomy such as the brain)."""
    by: dict[tuple[str, str], list[dict[str, str]]] = {}  # rows per (class, kind), classes in first-seen order
    for r, syn in zip(export.rows, export.synthetic):
        by.setdefault((r.get("label", ""), "synthetic" if syn else "real"), []).append(r)
    picked: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray | None]]] = {}
    for key, rs in by.items():
        idx = np.unique(np.linspace(0, len(rs) - 1, num=min(per_class, len(rs))).round().astype(int))
        picked[key] = [t for t in (_read_tile(export.folder, rs[int(i)]) for i in idx) if t is not None]
    notes = ["volumes are not shown in the sample grids"] if not picked or any(not v for v in picked.values()) else []
    masks = [m for items in picked.values() for _, m in items if m is not None]
    vals = sorted(set().union(*(np.unique(m).tolist() for m in masks)))
    anatomy = {v for v in vals if v != 0 and np.mean([(m == v).mean() for m in masks]) > ANATOMY_AREA}
    drawn = [v for v in vals if v != 0 and v not in anatomy]
    out = []
    for c in dict.fromkeys(c for c, _ in by):
        entry: dict[str, Any] = {"class": c}
        for kind in ("real", "synthetic"):
            if picked.get((c, kind)):
                canvas = imaging.tile_row([_outlined(im, m, drawn) for im, m in picked[(c, kind)]])
                entry.update({kind: imaging.png_bytes(canvas), f"{kind}_width": canvas.shape[1],
                              f"n_{kind}": len(by[(c, kind)])})
        out.append(entry)
    if drawn:
        colours = imaging.MASK_COLOUR_NAMES
        names = ", ".join(f"value {v} ({colours[(v - 1) % len(colours)]})" for v in drawn)
        skipped = f"; large anatomy label(s) {sorted(anatomy)} not outlined" if anatomy else ""
        notes.append(f"outlines: label-map regions {names}{skipped}. Synthetic images are generated from the label "
                     "maps shown.")
    return out, notes
