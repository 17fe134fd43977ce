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


def _figure(size: tuple[float, float]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    return fig, fig.add_subplot(111)


def _bar_png(fig, ax, names: list[str], ylabel: str, ymax: float, legend: dict[str, Any], title: str, **kw) -> bytes:
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels(names, fontsize=9)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, ymax)
    ax.legend(fontsize=8, frameon=False, **legend)
    ax.set_title(title, fontsize=10, **kw)
    ax.spines[["top", "right"]].set_visible(False)
    return imaging.figure_png(fig, dpi=100)


def class_distribution_png(before: dict[str, int], after: dict[str, int] | None) -> bytes:
    names = list(before)
    x = np.arange(len(names))
    fig, ax = _figure((max(4.5, 1.3 * len(names) + 2), 3.2))
    w = 0.38 if after else 0.6
    b1 = ax.bar(x - (w / 2 if after else 0), [before[n] for n in names], w, label="before (real)", color="#4a78a8")
    ax.bar_label(b1, fontsize=8)
    if after:
        real_part = [before[n] for n in names]
        syn_part = [max(0, after.get(n, 0) - before[n]) for n in names]
        ax.bar(x + w / 2, real_part, w, color="#9cb8d6", label="after: real")
        b3 = ax.bar(x + w / 2, syn_part, w, bottom=real_part, color="#e08a3c", label="after: synthetic")
        ax.bar_label(b3, labels=[str(after.get(n, 0)) for n in names], fontsize=8)
    return _bar_png(fig, ax, names, "images", 1.12 * max([*before.values(), *(after or {}).values(), 1]),
                    {"loc": "upper left", "bbox_to_anchor": (1.0, 1.0)}, "training-set class distribution", pad=12)


def losses_png(rows: list[dict[str, float]]) -> bytes:
    from matplotlib.figure import Figure

    keys = [k for k in rows[0] if k not in ("step", "images_per_s")]
    steps = [r["step"] for r in rows]
    gen = [k for k in keys if k.lower().startswith(("g", "loss_g"))]
    disc = [k for k in keys if k.lower().startswith(("d", "loss_d"))]
    groups = {"generator": gen, "discriminator": disc, "other": [k for k in keys if k not in gen + disc]}
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
    return imaging.figure_png(fig, dpi=100)


def per_class_png(downstream: dict[str, Any], metric_prefix: str, label: str) -> bytes:
    """Bars of ``metric_prefix/<class>`` per arm with 95 % CI error bars."""
    summ = downstream["summary"]
    arms = [a for a in summ if not a.startswith("_")]
    classes = list(downstream["class_names"])
    x = np.arange(len(classes))
    w = 0.8 / max(len(arms), 1)
    fig, ax = _figure((max(5.0, 1.6 * len(classes) + 2.5), 3.4))
    for i, arm in enumerate(arms):
        entries = [summ[arm].get(f"{metric_prefix}/{c}") for c in classes]
        means = [float(e["mean"]) if e else float("nan") for e in entries]
        lo = [max(0.0, m - float(e["ci_low"])) if e else 0.0 for m, e in zip(means, entries)]
        hi = [max(0.0, float(e["ci_high"]) - m) if e else 0.0 for m, e in zip(means, entries)]
        ax.bar(x - 0.4 + w * (i + 0.5), means, w, yerr=[lo, hi], capsize=3, label=arm,
               color=ARM_COLOURS.get(arm) or EXTRA_COLOURS[i % len(EXTRA_COLOURS)], error_kw={"lw": 1})
    return _bar_png(fig, ax, classes, f"{label} (mean over seeds)", 1.05,
                    {"ncol": min(len(arms), 4), "loc": "upper center", "bbox_to_anchor": (0.5, -0.12)},
                    f"per-class {label} on the real test set, error bars: 95 % bootstrap CI over seeds")


# ------------------------------------------------------------------------------------------- sample grids
def _is_volume(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def _read_display(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 of one exported (non-volume) image."""
    from medbalance.data.imageio import read_image

    if path.suffix.lower() == ".npy":  # float exports: (C, H, W) float32 in source units (see synthesis.export)
        return imaging.array_to_display(np.load(path, allow_pickle=False), "float")
    li = read_image(path)
    return imaging.array_to_display(li.array, li.kind)


def sample_grids(export: ExportManifest, per_class: int = GRID_COLUMNS) -> tuple[list[dict[str, Any]], list[str]]:
    """Real and synthetic examples per class from an export: ``[{class, real, synthetic, n_real, ...}]``, notes.

    Picks are evenly spaced over each class's rows (deterministic). Label-map regions are outlined, except labels
    that cover more than :data:`ANATOMY_AREA` of the image on average (anatomy such as the brain)."""
    import torch

    from medbalance.data.imageio import read_mask

    by: dict[tuple[str, str], list[dict[str, str]]] = {}  # rows per (class, kind), classes in first-seen order
    for r, syn in zip(export.rows, export.synthetic):
        by.setdefault((r.get("label", ""), "synthetic" if syn else "real"), []).append(r)
    classes = list(dict.fromkeys(c for c, _ in by))
    picked: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray | None]]] = {}
    for key, rs in by.items():
        idx = np.unique(np.linspace(0, len(rs) - 1, num=min(per_class, len(rs))).round().astype(int))
        items = []
        for r in (rs[int(i)] for i in idx):
            if _is_volume(export.folder / r["image"]):
                continue
            img = _read_display(export.folder / r["image"])
            mp = export.folder / r["mask"] if r.get("mask") else None
            m = read_mask(mp).astype(np.int64) if mp is not None and mp.is_file() and not _is_volume(mp) else None
            items.append((img, m))
        picked[key] = items
    notes = ["volumes are not shown in the sample grids"] if not picked or any(not v for v in picked.values()) else []
    masks_shown = [m for items in picked.values() for _, m in items if m is not None]
    vals = sorted(set().union(*(np.unique(m).tolist() for m in masks_shown))) if masks_shown else []
    anatomy = {v for v in vals if v != 0 and np.mean([(m == v).mean() for m in masks_shown]) > ANATOMY_AREA}
    drawn = [v for v in vals if v != 0 and v not in anatomy]
    lut = np.zeros(max(vals, default=0) + 1, np.int64)
    for k, v in enumerate(drawn):
        lut[v] = k + 1  # outline colour index
    out = []
    for c in classes:
        entry: dict[str, Any] = {"class": c}
        for kind in ("real", "synthetic"):
            items = picked.get((c, kind)) or []
            if not items:
                continue
            tiles = []
            for im, m in items:
                if m is not None and m.shape == im.shape[:2] and drawn:
                    outl = imaging.mask_outlines(torch.from_numpy(lut[m])[None])
                    im = imaging.paint_outlines(torch.from_numpy(im)[None], outl)[0].numpy()
                tiles.append(im)
            canvas = imaging.tile_row(tiles)
            entry.update({kind: imaging.png_bytes(canvas), f"{kind}_width": canvas.shape[1],
                          f"n_{kind}": len(by[(c, kind)])})
        out.append(entry)
    if drawn:
        colours = imaging.MASK_COLOUR_NAMES
        names = ", ".join(f"value {v} ({colours[k % len(colours)]})" for k, v in enumerate(drawn))
        txt = f"outlines: label-map regions {names}"
        if anatomy:
            txt += f"; large anatomy label(s) {sorted(anatomy)} not outlined"
        notes.append(txt + ". Synthetic images are generated from the label maps shown.")
    return out, notes


__all__ = ["class_distribution_png", "losses_png", "per_class_png", "sample_grids"]
