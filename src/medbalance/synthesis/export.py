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

Volumes (``nifti.mode: volume``, samples ``(C, Z, Y, X)``) are written as NIfTI in canonical RAS voxel order
``(X, Y, Z[, C])`` (the inverse of :func:`medbalance.data.nifti.volume_to_tensor`), with the affine of the resampled source volume
(``meta["volume_affines"]``: the source's affine adjusted for the brain crop and the resample, so spacing and position
in scanner space are the source's). A synthetic volume takes the affine of the real volume its label map comes from
(``parent_mask_id``); one without a parent (or with a parent outside the table) gets a diagonal affine with the mean
voxel spacing of the table.

Manifest columns: ``id,image,mask,label,group,condition,synthetic,generator,checkpoint_sha256,seed,class,
mask_source,parent_mask_id,filter_scores,sampling,train_ids_sha256`` (provenance cells are empty for real rows;
``sampling``: the model card's ``sampling`` as JSON, e.g. a diffusion model's sampler, steps and guidance scale;
``train_ids_sha256``: digest of the generator's training ids, listed in ``provenance.json``; ``checkpoint_sha256``:
the G weights' hash, verified against the checkpoint's ``state.json`` when the run was loaded).
"""

from __future__ import annotations

import csv
import io
import json
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
    "seed", "class", "mask_source", "parent_mask_id", "filter_scores", "sampling", "train_ids_sha256",
]
PROVENANCE_FILE = "provenance.json"  # the generator's training ids (leakage checks), next to manifest.csv


def read_provenance(manifest: str | Path) -> dict[str, Any] | None:
    """The training-ids provenance of a synthetic manifest, checked, or None when it carries none.

    Returns ``{"train_ids": [...], "train_ids_sha256": ..., "checkpoint_sha256": ...}``. The ids come from
    ``provenance.json`` beside the manifest; their digest must equal the manifest's ``train_ids_sha256``
    column on every synthetic row (else :class:`DataError`: the provenance does not belong to these images).
    """
    from medbalance.data.manifest import parse_synthetic_flag, read_manifest_rows
    from medbalance.errors import DataError
    from medbalance.utils.io import ids_digest

    manifest = Path(manifest)
    if manifest.is_dir():
        manifest = manifest / "manifest.csv"
    prov_path = manifest.parent / PROVENANCE_FILE
    if not manifest.is_file():
        return None
    _, rows = read_manifest_rows(manifest)
    digests = {(r.get("train_ids_sha256") or "") for r in rows if parse_synthetic_flag(r.get("synthetic"))}
    if not prov_path.is_file() or not digests or digests == {""}:
        return None
    try:
        prov = json.loads(prov_path.read_text())
        ids = [str(i) for i in prov["train_ids"]]
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"invalid provenance file ({type(e).__name__}: {e})", path=prov_path) from None
    digest = ids_digest(ids)
    if digests != {digest} or prov.get("train_ids_sha256") != digest:
        raise DataError(
            "the training-ids digest of the synthetic rows does not match provenance.json (mixed or edited "
            "provenance)", path=manifest)
    return {"train_ids": ids, "train_ids_sha256": digest, "checkpoint_sha256": prov.get("checkpoint_sha256", "")}


def _image_ext(ds: ImageDataset) -> str:
    if ds.images.ndim == 5:
        return ".nii.gz"
    return ".npy" if ds.intensity.kind == "float" else ".png"


def volume_affine(affines: dict[str, Any] | None, sid: str, parent: str | None = None) -> np.ndarray:
    """The affine a volume is written with: its own (``sid``), else its label map's source (``parent``), else a
    diagonal one with the mean spacing of ``affines`` (identity when there is no table)."""
    table = affines or {}
    for key in (sid, parent):
        if key and key in table:
            return np.asarray(table[key], dtype=np.float64)
    if not table:
        return np.eye(4)
    spacing = np.mean([np.linalg.norm(np.asarray(a, dtype=np.float64)[:3, :3], axis=0) for a in table.values()], 0)
    return np.diag([*spacing, 1.0])


def _write_image(path: Path, image: torch.Tensor, ds: ImageDataset, affine: np.ndarray | None = None) -> None:
    arr = ds.intensity.to_storage(image)  # (C, H, W) or (C, D, H, W) in source units
    if image.ndim == 4:  # volume (C, Z, Y, X) -> NIfTI in RAS voxel order (X, Y, Z[, C])
        import nibabel as nib

        from medbalance.data.nifti import tensor_to_volume

        arr = tensor_to_volume(arr)
        vol = np.moveaxis(arr, 0, -1) if arr.shape[0] > 1 else arr[0]
        buf = nib.Nifti1Image(vol.astype(np.float32), np.eye(4) if affine is None else affine)
        path.parent.mkdir(parents=True, exist_ok=True)
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


def _write_mask(path: Path, mask: torch.Tensor, ds: ImageDataset, affine: np.ndarray | None = None) -> None:
    values = np.asarray(ds.mask_values, dtype=np.int64)
    orig = values[mask.cpu().numpy()]
    if mask.ndim == 3:
        import nibabel as nib

        from medbalance.data.nifti import tensor_to_volume

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.nii.gz")
        vol = tensor_to_volume(orig).astype(np.int16)
        nib.save(nib.Nifti1Image(vol, np.eye(4) if affine is None else affine), str(tmp))
        tmp.replace(path)
        return
    write_mask_png(path, orig)


def _mask_ext(ds: ImageDataset) -> str:
    return ".nii.gz" if ds.images.ndim == 5 else ".png"


def write_samples(
    root: Path, ds: ImageDataset, kind: str, rows_extra: Sequence[dict[str, Any]] | None = None, description: str = "",
    affines: dict[str, Any] | None = None,
) -> list[dict[str, str]]:
    """Write images (and masks) of ``ds`` under ``root/images/<kind>/``; return manifest rows. ``affines``: id ->
    voxel-to-world affine of volumes (see :func:`volume_affine`; default ``ds.meta["volume_affines"]``)."""
    rows = []
    ext, mext = _image_ext(ds), _mask_ext(ds)
    affines = affines if affines is not None else ds.meta.get("volume_affines")
    for i in track(range(len(ds)), description or f"writing {kind} samples"):
        sid = ds.ids[i]
        extra = dict(rows_extra[i]) if rows_extra is not None else {}
        aff = volume_affine(affines, sid, extra.get("parent_mask_id")) if ds.images.ndim == 5 else None
        img_rel = f"images/{kind}/{sid}{ext}"
        _write_image(root / img_rel, ds.images[i], ds, aff)
        mask_rel = ""
        if ds.masks is not None:
            mask_rel = f"masks/{kind}/{sid}{mext}"
            _write_mask(root / mask_rel, ds.masks[i], ds, aff)
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
    reference: ImageDataset | None = None,
    training_ids: Sequence[str] | None = None,
) -> Path:
    """Write real (optional) + synthetic samples, ``manifest.csv``, ``model_card.json`` and ``synthesis.json``.

    Returns the manifest path. Nothing is visible under ``out_dir`` until everything is written. ``reference``: the
    real data the synthetic samples were made from (its ``meta["volume_affines"]`` places synthetic volumes).
    ``training_ids``: the generator's training ids (the run's ``train_ids.json``): written to ``provenance.json``,
    their digest (:func:`medbalance.utils.io.ids_digest`) to every synthetic row, so that ``downstream
    --synthetic`` can refuse a set whose generator saw a test image (docs/guarantees.md).
    """
    from medbalance.utils.io import ids_digest

    ids_sha = ids_digest(list(training_ids)) if training_ids else ""
    affines: dict[str, Any] = {}
    for ds in (reference, real):
        if ds is not None:
            affines.update(ds.meta.get("volume_affines") or {})
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        rows: list[dict[str, str]] = []
        if real is not None:
            rows += write_samples(tmp, real, "real", description="writing real samples")
        extra = []
        for p in provenance:
            e = dict(p)
            e.update({"generator": generator_name, "checkpoint_sha256": checkpoint_sha256,
                      "train_ids_sha256": ids_sha})
            if (model_card or {}).get("sampling"):  # the sampler's settings (diffusion: sampler, steps, guidance)
                e["sampling"] = json.dumps(model_card["sampling"], sort_keys=True)
            extra.append(e)
        rows += write_samples(tmp, synthetic, "synthetic", extra, description="writing synthetic samples",
                              affines=affines or None)
        atomic_write_text(tmp / "manifest.csv", manifest_text(rows))
        if training_ids:
            atomic_write_json(tmp / PROVENANCE_FILE, {
                "train_ids_sha256": ids_sha, "checkpoint_sha256": checkpoint_sha256, "generator": generator_name,
                "n_train": len(training_ids), "train_ids": sorted(str(i) for i in training_ids),
            })
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
        # how samples were drawn (diffusion models: sampler, steps, guidance scale); absent for one-pass GANs
        **({"sampling": run.method.sampling_provenance()} if hasattr(run.method, "sampling_provenance") else {}),
        "metrics": metrics or {},
    }
