"""What is in a dataset: class balance, sizes, intensities, masks, groups and red flags.

:func:`inspect_dataset` returns a JSON-able dict (``medbalance inspect --json``),
:func:`render_inspection` turns it into rich tables, :func:`plot_dataset` draws the class
distribution and example images per class with mask outlines.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medbalance.data.cache import iter_rows
from medbalance.data.dataset import ImageDataset
from medbalance.utils.imaging import figure_png, to_display
from medbalance.utils.io import atomic_write_bytes

TINY_CLASS = 50  # below this many samples, per-class numbers mean little


def _finite(x: float) -> float | None:
    return None if (x is None or math.isnan(x) or math.isinf(x)) else float(x)


def _content_duplicates(ds: ImageDataset) -> list[list[int]]:
    """Groups (size >= 2) of sample indices whose image tensors are byte-identical (SHA-1 of the bytes)."""
    seen: dict[str, list[int]] = defaultdict(list)
    for i in range(len(ds)):
        a = ds.images[i].detach().cpu().contiguous().numpy()
        seen[hashlib.sha1(memoryview(a).cast("B")).hexdigest()].append(i)
    return [v for v in seen.values() if len(v) > 1]


def _mask_fractions(masks: torch.Tensor, n_values: int, chunk: int = 64) -> torch.Tensor:
    """(N, H, W) index masks -> (N, n_values) fraction of pixels holding each mask index."""
    n = masks.shape[0]
    pix = int(np.prod(masks.shape[1:]))
    out = torch.zeros(n, n_values, dtype=torch.float64)
    for s in range(0, n, chunk):
        m = masks[s : s + chunk].reshape(min(chunk, n - s), -1)
        for j in range(1, n_values):
            out[s : s + m.shape[0], j] = (m == j).sum(1).double()
    out /= pix
    out[:, 0] = 1.0 - out[:, 1:].sum(1)
    return out


def _channel_stats(imgs: Any, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-channel min, max and mean over all images, streamed in chunks (bounded memory for disk-backed data;
    the mean is accumulated in float64)."""
    n = len(imgs)
    if not n:
        return torch.zeros(0), torch.zeros(0), torch.zeros(0)
    lo = hi = total = None
    count = 0
    for x in iter_rows(imgs, chunk):
        dims = tuple(d for d in range(x.dim()) if d != 1)
        a, b, m = x.amin(dim=dims), x.amax(dim=dims), x.double().sum(dim=dims)
        lo = a if lo is None else torch.minimum(lo, a)
        hi = b if hi is None else torch.maximum(hi, b)
        total = m if total is None else total + m
        count += x.numel() // x.shape[1]
    return lo, hi, (total / count).float()


def inspect_dataset(ds: ImageDataset) -> dict[str, Any]:
    """Summarise a dataset as a JSON-able dict (see the module docstring)."""
    meta = ds.meta or {}
    n = len(ds)
    counts = ds.class_counts()
    nz = [c for c in counts.values() if c > 0]
    ratio = ds.imbalance_ratio()
    labels = ds.labels.cpu()

    # sizes
    loaded = list(ds.images.shape[1:])
    original = dict(meta.get("original_shapes") or {})
    # intensity, in source units (IntensityInfo.unscale inverts the [-1, 1] scaling)
    ch_min, ch_max, ch_mean = _channel_stats(ds.images)
    un = ds.intensity.unscale
    intensity = {
        "kind": ds.intensity.kind,
        "scaling": ds.intensity.to_dict(),
        "scaled_min": float(ch_min.min()) if n else None,
        "scaled_max": float(ch_max.max()) if n else None,
        "source_min": float(un(ch_min.min())) if n else None,
        "source_max": float(un(ch_max.max())) if n else None,
        "per_channel": [
            {"channel": c, "source_min": float(un(ch_min[c])), "source_max": float(un(ch_max[c])),
             "source_mean": float(un(ch_mean[c]))}
            for c in range(len(ch_min))
        ],
    }

    classes = []
    for k, name in enumerate(ds.class_names):
        classes.append({"index": k, "name": name, "count": counts[name], "fraction": counts[name] / n if n else 0.0})

    # masks
    masks_rep: dict[str, Any] | None = None
    if ds.masks is not None and ds.mask_values is not None:
        frac = _mask_fractions(ds.masks, len(ds.mask_values))  # chunked: lazy masks stay lazy
        fg = 1.0 - frac[:, 0]
        per_class = {}
        for k, name in enumerate(ds.class_names):
            sel = labels == k
            if int(sel.sum()) == 0:
                per_class[name] = None
                continue
            f = frac[sel]
            per_class[name] = {
                "foreground_fraction": float(fg[sel].mean()),
                "empty_masks": int((fg[sel] == 0).sum()),
                "value_fractions": {str(v): float(f[:, j].mean()) for j, v in enumerate(ds.mask_values)},
            }
        masks_rep = {
            "mask_values": list(ds.mask_values),
            "foreground_fraction": float(fg.mean()) if n else 0.0,
            "empty_masks": int((fg == 0).sum()),
            "value_fractions": {str(v): float(frac[:, j].mean()) for j, v in enumerate(ds.mask_values)} if n else {},
            "per_class": per_class,
        }
        for c in classes:
            pc = per_class.get(c["name"])
            c["mask_foreground_fraction"] = None if pc is None else pc["foreground_fraction"]

    # groups
    groups_rep: dict[str, Any] | None = None
    if ds.groups is not None:
        by_class: dict[str, set] = {name: set() for name in ds.class_names}
        classes_of_group: dict[str, set] = defaultdict(set)
        for g, lab in zip(ds.groups, labels.tolist()):
            by_class[ds.class_names[lab]].add(g)
            classes_of_group[g].add(lab)
        groups_rep = {
            "n_groups": len(classes_of_group),
            "per_class": {k: len(v) for k, v in by_class.items()},
            "groups_in_several_classes": sum(1 for v in classes_of_group.values() if len(v) > 1),
        }
        for c in classes:
            c["groups"] = groups_rep["per_class"][c["name"]]

    conditions_rep = None
    if ds.conditions is not None and ds.condition_names is not None:
        cc = Counter(ds.conditions.tolist())
        conditions_rep = {name: int(cc.get(i, 0)) for i, name in enumerate(ds.condition_names)}

    # warnings
    warnings: list[str] = []
    dups = _content_duplicates(ds) if n else []
    if dups:
        n_extra = sum(len(g) - 1 for g in dups)
        conflicting = [g for g in dups if len({int(labels[i]) for i in g}) > 1]
        ex = ", ".join(ds.ids[i] for i in dups[0][:3])
        warnings.append(
            f"{n_extra} duplicate images by content ({len(dups)} groups, e.g. {ex})"
            + (f"; {len(conflicting)} groups have conflicting labels (bad input: downstream refuses them)"
               if conflicting else "; downstream keeps each group on one side of the split")
        )
    for name, c in counts.items():
        if c == 0:
            warnings.append(f"class {name!r} has no samples")
        elif c < TINY_CLASS:
            warnings.append(f"class {name!r} has only {c} samples (< {TINY_CLASS}): per-class numbers mean little")
    if len(original) > 1:
        shown = ", ".join(f"{k} ({v})" for k, v in sorted(original.items(), key=lambda kv: -kv[1])[:4])
        warnings.append(f"mixed image sizes in the source: {shown}")
    skipped = list(meta.get("skipped") or [])
    if skipped:
        first = skipped[0]
        warnings.append(f"{len(skipped)} files skipped (first: {first.get('path')}: {first.get('problem')})")
    warnings.extend(str(w) for w in meta.get("warnings") or [])
    if ds.synthetic is not None and bool(ds.synthetic.any()):
        warnings.append(f"{int(ds.synthetic.sum())} samples are synthetic")

    return {
        "source": meta.get("source"),
        "path": meta.get("path"),
        "n_samples": n,
        "classes": classes,
        "class_counts": counts,
        "imbalance_ratio": _finite(ratio),
        "majority_class": max(counts, key=counts.get) if nz else None,
        "minority_class": min((k for k in counts if counts[k] > 0), key=counts.get) if nz else None,
        "channels": ds.channels,
        "loaded_shape": loaded,
        "original_shapes": original,
        "source_dtype": meta.get("source_dtype"),
        "intensity": intensity,
        "masks": masks_rep,
        "groups": groups_rep,
        "conditions": conditions_rep,
        "conversions": list(meta.get("conversions") or []),
        "skipped": skipped,
        "warnings": warnings,
    }


def render_inspection(report: dict[str, Any]):
    """Rich renderable (tables) of an :func:`inspect_dataset` report."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    parts = []
    summary = Table(title="dataset", show_header=False, title_justify="left")
    summary.add_column("key", style="bold")
    summary.add_column("value")
    ir = report["imbalance_ratio"]
    rows = [
        ("source", f"{report['source']}  {report['path'] or ''}"),
        ("samples", str(report["n_samples"])),
        ("imbalance (majority/minority)",
         "undefined (an empty class)" if ir is None else f"{ir:.2f}:1 ({report['majority_class']} / {report['minority_class']})"),
        ("loaded shape (C, H, W)", " x ".join(str(s) for s in report["loaded_shape"])),
        ("source sizes", ", ".join(f"{k} ({v})" for k, v in report["original_shapes"].items()) or "?"),
        ("source dtype", str(report["source_dtype"])),
    ]
    it = report["intensity"]
    if it["source_min"] is not None:
        rows.append(("intensity (source units)", f"{it['source_min']:.4g} .. {it['source_max']:.4g} ({it['kind']})"))
    if report["groups"]:
        rows.append(("groups (patients/cases)", str(report["groups"]["n_groups"])))
    if report["masks"]:
        m = report["masks"]
        rows.append(("mask values", str(m["mask_values"])))
        rows.append(("mask foreground (mean)", f"{100 * m['foreground_fraction']:.2f}% ({m['empty_masks']} empty masks)"))
    for k, v in rows:
        summary.add_row(k, v)
    parts.append(summary)

    ct = Table(title="classes", title_justify="left")
    for col in ("#", "class", "count", "%"):
        ct.add_column(col, justify="right" if col != "class" else "left")
    if report["groups"]:
        ct.add_column("groups", justify="right")
    if report["masks"]:
        ct.add_column("mask fg %", justify="right")
    for c in report["classes"]:
        row = [str(c["index"]), c["name"], str(c["count"]), f"{100 * c['fraction']:.1f}"]
        if report["groups"]:
            row.append(str(c.get("groups", "")))
        if report["masks"]:
            f = c.get("mask_foreground_fraction")
            row.append("-" if f is None else f"{100 * f:.2f}")
        ct.add_row(*row)
    parts.append(ct)

    if report["masks"]:
        mt = Table(title="mask value fractions per class (% of pixels)", title_justify="left")
        mt.add_column("class")
        vals = report["masks"]["mask_values"]
        for v in vals:
            mt.add_column(str(v), justify="right")
        for name, pc in report["masks"]["per_class"].items():
            if pc is None:
                continue
            mt.add_row(name, *[f"{100 * pc['value_fractions'][str(v)]:.2f}" for v in vals])
        parts.append(mt)

    if report["conditions"]:
        cdt = Table(title="conditions", title_justify="left")
        cdt.add_column("condition")
        cdt.add_column("count", justify="right")
        for k, v in report["conditions"].items():
            cdt.add_row(k, str(v))
        parts.append(cdt)

    if report["warnings"]:
        parts.append(Text("warnings:", style="bold yellow"))
        for w in report["warnings"]:
            parts.append(Text(f"  ! {w}", style="yellow"))
    else:
        parts.append(Text("no warnings", style="green"))
    return Group(*parts)


def plot_dataset(ds: ImageDataset, path: str | Path, per_class: int = 6, dpi: int = 100) -> Path:
    """Bar chart of the class distribution + example images per class (mask outlines), as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    if ds.images.dim() != 4:
        raise ValueError("plot_dataset draws 2-D images (N, C, H, W)")
    counts = ds.class_counts()
    k = len(ds.class_names)
    fig = Figure(figsize=(max(8.0, 1.6 * per_class), 2.6 + 1.7 * k))
    gs = fig.add_gridspec(k + 1, per_class, height_ratios=[1.6] + [1.0] * k, hspace=0.35, wspace=0.05)
    ax = fig.add_subplot(gs[0, :])
    bars = ax.bar(range(k), list(counts.values()), color="tab:blue")
    ax.set_xticks(range(k), list(counts.keys()))
    ax.set_ylabel("samples")
    ir = ds.imbalance_ratio()
    ax.set_title(f"class distribution (n={len(ds)}, imbalance {ir:.2f}:1)" if math.isfinite(ir) else "class distribution")
    ax.bar_label(bars, labels=[str(v) for v in counts.values()])
    ax.margins(y=0.18)
    labels = ds.labels.cpu()
    n_lab = ds.num_mask_labels
    cmap = matplotlib.colormaps["autumn"]
    for ci, name in enumerate(ds.class_names):
        idx = torch.nonzero(labels == ci).flatten()
        if len(idx) > per_class:  # evenly spread, deterministic
            idx = idx[torch.linspace(0, len(idx) - 1, per_class).round().long()]
        for j in range(per_class):
            a = fig.add_subplot(gs[ci + 1, j])
            a.set_xticks([])
            a.set_yticks([])
            if j == 0:
                a.set_ylabel(name, fontsize=9)
            if j >= len(idx):
                a.axis("off")
                continue
            i = int(idx[j])
            x = ds.images[i] if ds.images.shape[1] == 3 else ds.images[i][:1]  # RGB, else channel 0 grey
            a.imshow(to_display(x[None])[0].numpy(), interpolation="nearest")
            if ds.masks is not None:
                m = ds.masks[i].cpu().numpy()
                for v in range(1, n_lab):
                    if (m == v).any():
                        a.contour(m == v, levels=[0.5], colors=[cmap(v / max(1, n_lab - 1))], linewidths=0.8)
            a.set_title(ds.ids[i][-24:], fontsize=6)
    return atomic_write_bytes(path, figure_png(fig, dpi=dpi))
