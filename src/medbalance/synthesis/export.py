"""Write a rebalanced (or purely synthetic) dataset to disk with provenance.

Layout of an output folder (appears complete or not at all: written to a temporary sibling and renamed)::

    OUT/
      manifest.csv      # the data layer reads it: `medbalance inspect OUT/manifest.csv` works
      images/real/<id>.png       images/synthetic/<id>.png
      masks/real/<id>.png        masks/synthetic/<id>.png      (when the data has label maps)
      model_card.json   # the generator: method, config, training-data summary (counts only), steps, metrics
      synthesis.json    # the plan (sampling_strategy_), the filter report, options, timing

Images are PNG, 8 or 16 bit to match the input (``IntensityInfo.kind``); float data (NIfTI-derived slices) are
written losslessly as (C, H, W) float32 ``.npy`` in the source units; volumes as NIfTI. Masks hold the original label values.

Manifest columns: ``id,image,mask,label,group,condition,synthetic,generator,checkpoint_sha256,seed,class,
mask_source,parent_mask_id,filter_scores`` (provenance cells are empty for real rows).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from medbalance.data.dataset import ImageDataset
from medbalance.data.imageio import write_mask_png, write_png
from medbalance.utils.io import atomic_directory, atomic_write_bytes, atomic_write_json, atomic_write_text
from medbalance.utils.progress import track

MANIFEST_COLUMNS = [
    "id", "image", "mask", "label", "group", "condition", "synthetic", "generator", "checkpoint_sha256",
    "seed", "class", "mask_source", "parent_mask_id", "filter_scores",
]


def _image_ext(ds: ImageDataset) -> str:
    if ds.images.ndim == 5:
        return ".nii.gz"
    return ".npy" if ds.intensity.kind == "float" else ".png"


def _write_image(path: Path, image: torch.Tensor, ds: ImageDataset) -> None:
    arr = ds.intensity.to_storage(image)  # (C, H, W) or (C, D, H, W) in source units
    if image.ndim == 4:  # volume -> NIfTI (channels last)
        import nibabel as nib

        vol = np.moveaxis(arr, 0, -1) if arr.shape[0] > 1 else arr[0]
        buf = nib.Nifti1Image(vol.astype(np.float32), np.eye(4))
        tmp = path.with_name(path.name + ".tmp.nii.gz")
        nib.save(buf, str(tmp))
        tmp.replace(path)
        return
    hwc = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    if ds.intensity.kind == "float":  # lossless: (C, H, W) float32 .npy in source units
        b = io.BytesIO()
        np.save(b, arr.astype(np.float32), allow_pickle=False)
        atomic_write_bytes(path, b.getvalue())
        return
    write_png(path, hwc, bits=16 if ds.intensity.kind == "uint16" else 8)


def _write_mask(path: Path, mask: torch.Tensor, ds: ImageDataset) -> None:
    values = np.asarray(ds.mask_values, dtype=np.int64)
    orig = values[mask.cpu().numpy()]
    if mask.ndim == 3:
        import nibabel as nib

        tmp = path.with_name(path.name + ".tmp.nii.gz")
        nib.save(nib.Nifti1Image(orig.astype(np.int16), np.eye(4)), str(tmp))
        tmp.replace(path)
        return
    write_mask_png(path, orig)


def _mask_ext(ds: ImageDataset) -> str:
    return ".nii.gz" if ds.images.ndim == 5 else ".png"


def write_samples(
    root: Path, ds: ImageDataset, kind: str, rows_extra: Sequence[dict[str, Any]] | None = None, description: str = ""
) -> list[dict[str, str]]:
    """Write images (and masks) of ``ds`` under ``root/images/<kind>/``; return manifest rows."""
    rows = []
    ext, mext = _image_ext(ds), _mask_ext(ds)
    for i in track(range(len(ds)), description or f"writing {kind} samples"):
        sid = ds.ids[i]
        img_rel = f"images/{kind}/{sid}{ext}"
        _write_image(root / img_rel, ds.images[i], ds)
        mask_rel = ""
        if ds.masks is not None:
            mask_rel = f"masks/{kind}/{sid}{mext}"
            _write_mask(root / mask_rel, ds.masks[i], ds)
        extra = dict(rows_extra[i]) if rows_extra is not None else {}
        cond = ""
        if ds.conditions is not None and ds.condition_names is not None:
            cond = ds.condition_names[int(ds.conditions[i])]
        row = {
            "id": sid,
            "image": img_rel,
            "mask": mask_rel,
            "label": ds.class_names[int(ds.labels[i])],
            "group": ds.groups[i] if ds.groups is not None else sid,
            "condition": extra.pop("condition", None) or cond,
            "synthetic": "1" if kind == "synthetic" else "0",
        }
        for col in MANIFEST_COLUMNS:
            row.setdefault(col, "" if extra.get(col) is None else str(extra.get(col)))
        rows.append(row)
    return rows


def manifest_text(rows: Sequence[dict[str, str]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in MANIFEST_COLUMNS})
    return buf.getvalue()


def export_dataset(
    out_dir: str | Path,
    synthetic: ImageDataset,
    provenance: Sequence[dict[str, Any]],
    *,
    real: ImageDataset | None = None,
    generator_name: str = "",
    checkpoint_sha256: str = "",
    model_card: dict[str, Any] | None = None,
    synthesis_info: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write real (optional) + synthetic samples, ``manifest.csv``, ``model_card.json`` and ``synthesis.json``.

    Returns the manifest path. Nothing is visible under ``out_dir`` until everything is written.
    """
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        rows: list[dict[str, str]] = []
        if real is not None:
            rows += write_samples(tmp, real, "real", description="writing real samples")
        extra = []
        for p in provenance:
            e = dict(p)
            e.update({"generator": generator_name, "checkpoint_sha256": checkpoint_sha256})
            extra.append(e)
        rows += write_samples(tmp, synthetic, "synthetic", extra, description="writing synthetic samples")
        atomic_write_text(tmp / "manifest.csv", manifest_text(rows))
        if model_card is not None:
            atomic_write_json(tmp / "model_card.json", model_card)
        if synthesis_info is not None:
            atomic_write_json(tmp / "synthesis.json", synthesis_info)
    return out_dir / "manifest.csv"


def model_card(run: Any, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """The generator's model card: method, config, training data summary (counts only), steps, metrics.

    No paths to patient data: the data section keeps options (sizes, columns, normalisation) but not ``path``.
    """
    cfg = run.config.model_dump(mode="json")
    data_cfg = dict(cfg.get("data", {}))
    data_cfg.pop("path", None)
    if isinstance(data_cfg.get("nifti"), dict):
        data_cfg["nifti"] = {k: v for k, v in data_cfg["nifti"].items() if k not in ("labels_csv", "cache_dir")}
    counts: dict[str, int] = {}
    info = run.info
    labels_by_id = getattr(run, "train_class_counts", None)
    if labels_by_id:
        counts = dict(labels_by_id)
    from medbalance import __version__

    return {
        "medbalance_version": __version__,
        "method": cfg.get("model", {}).get("name"),
        "preset": cfg.get("model", {}).get("preset"),
        "model": cfg.get("model"),
        "train": cfg.get("train"),
        "data_options": data_cfg,
        "data_info": info.to_dict(),
        "training_data": {
            "n_train": len(getattr(run, "train_ids", []) or []),
            "n_heldout": len(getattr(run, "heldout_ids", []) or []),
            "class_counts": counts,
        },
        "training_steps": int(getattr(run, "step", 0)),
        "checkpoint_sha256": getattr(run, "checkpoint_sha256", ""),
        "parameters": run.method.describe() if hasattr(run.method, "describe") else {},
        "metrics": metrics or {},
    }
