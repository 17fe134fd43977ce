"""BraTS-style NIfTI volumes -> 2-D axial slices or whole 3-D volumes (source ``nifti``).

Layout: one folder per case under ``cfg.path`` (any depth, filtered by ``nifti.case_glob``);
a *case folder* is a folder that directly holds ``.nii``/``.nii.gz`` files. Inside it, each
modality (``nifti.modalities``, channel order), the label volume (``nifti.label_pattern``)
and an optional brain mask (``nifti.brain_mask_pattern``) are found by glob patterns matched
case-insensitively against NIfTI file names; every pattern must match exactly one file.

Geometry
    Volumes are reoriented to the closest canonical RAS orientation
    (``nibabel.as_closest_canonical``; axis 0 -> patient right, 1 -> anterior, 2 -> superior),
    then cut into axial slices along the last axis. A slice is stored as an image of shape
    ``(Y, X)`` with row 0 = most anterior and column 0 = patient left (neurological view):
    ``image[h, w] = volume[w, Y - 1 - h, z]``; the inverse is
    ``volume[:, :, z] = image[::-1, :].T``. ``z`` in the sample id ``{case}_z{z:03d}`` is the
    canonical axial index (unchanged for the usual LPS/RAS files).

Brain and slice filter
    The brain is the brain mask ``> 0.5`` when a brain-mask pattern is given, otherwise the
    voxels where any modality differs from its background value (the most common value of the
    volume's eight corner voxels: 0 for raw skull-stripped scans, ``-mean/std`` for volumes
    already z-scored inside the brain). With ``brain_only`` a slice is kept when it holds at
    least ``min_brain_voxels`` brain voxels (BraTS 2015 sample: 830 slices, exactly the rows of
    its ``axial_slices.csv``). Lesion = label value ``> 0``. Slices with
    ``0 < lesion voxels < min_lesion_voxels`` are dropped as ambiguous; a kept slice is class
    ``lesion`` when it has ``>= max(1, min_lesion_voxels)`` lesion voxels, else ``no_lesion``.

Intensities (per volume and modality, statistics over brain voxels only)
    ``zscore``: ``(x - mean) / std``, clipped to [-5, 5], background = -5;
    ``IntensityInfo(kind="float", lo=-5, hi=5)`` maps z = -5..5 linearly to [-1, 1].
    ``minmax``: ``(x - min) / (max - min)`` in [0, 1], background 0; ``IntensityInfo(float, 0, 1)``.
    ``percentile``: clip to the brain's ``percentiles`` then min-max to [0, 1], background 0.
    ``none``: raw values; ``IntensityInfo(float, lo, hi)`` with the dataset's min and max.
    ``IntensityInfo.unscale`` gives back these normalised units (used by NIfTI/float exports).

Labels
    ``slice_label='has_lesion'``: classes ``["no_lesion", "lesion"]``; a ``labels_csv``
    (case, label) then gives a per-sample *condition* (e.g. grade or site).
    ``slice_label='case'``: the class of every slice is its case's label in ``labels_csv``.
    Masks are the label-volume slices as indices into ``mask_values`` (the sorted label values
    present, e.g. BraTS ``[0, 1, 2, 3, 4]`` -> indices 0..4).

Volume mode (``nifti.mode: volume``)
    One sample per case (id = case id): the normalised volumes (statistics over the brain, as above) are cropped
    to the bounding box of the brain (``nifti.volume_margin`` voxels around it, clipped to the volume) and
    resampled to ``nifti.volume_shape`` (X, Y, Z) with MONAI ``CropForegroundd`` + ``Resized`` (images trilinear,
    the label map ``nearest-exact``), then stored as ``(C, Z, Y, X)`` with the slices' in-plane convention:
    ``t[c, z, h, w] = v[c, w, Y - 1 - h, z]`` (:func:`volume_to_tensor`; inverse :func:`tensor_to_volume`).
    The affine of the resampled volume (the source's canonical affine adjusted for the crop and the resample) is
    kept per case in ``meta["volume_affines"]`` and ``meta["cases"][i]["resampled_affine"]``; the NIfTI export
    writes volumes with it. ``has_lesion`` classes are per volume; ``min_lesion_voxels`` drops a volume with
    ``0 < lesion voxels < min_lesion_voxels``. ``data.image_size`` does not apply (an error).

Cache
    Extracted slices (or volumes) are cached as ``.npy`` files (memory-mapped on load) in
    ``nifti.cache_dir`` or ``$MEDBALANCE_CACHE/nifti`` or ``~/.cache/medbalance/nifti``, keyed by
    a sha256 of the input files (path, size, mtime) and every option that changes the result.
    The cache folder is written atomically; a second load does not read any volume.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medbalance.data.cache import atomic_folder, cache_base, file_stat
from medbalance.data.config import DataConfig, NiftiConfig
from medbalance.data.dataset import ImageDataset, IntensityInfo
from medbalance.data.sources import SOURCES
from medbalance.errors import ConfigError, DataError
from medbalance.utils.progress import track

CACHE_VERSION = 1
ZSCORE_CLIP = 5.0
HAS_LESION_CLASSES = ["no_lesion", "lesion"]
_NII_SUFFIXES = (".nii", ".nii.gz")


# ----------------------------------------------------------------------------- discovery
@dataclass
class CaseFiles:
    case: str  # case id (folder name, made unique)
    folder: Path
    modalities: list[Path]
    label: Path | None
    brain_mask: Path | None

    def all_files(self) -> list[Path]:
        out = list(self.modalities)
        if self.label is not None:
            out.append(self.label)
        if self.brain_mask is not None:
            out.append(self.brain_mask)
        return out


def _is_nifti(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(_NII_SUFFIXES)


def find_case_folders(root: Path, case_glob: str = "**") -> list[Path]:
    """Folders under ``root`` (matching ``case_glob``) that directly hold NIfTI files."""
    if not root.exists():
        raise DataError("no such folder", path=root)
    if not root.is_dir():
        raise DataError("the nifti source needs a folder of case folders, not a file", path=root)
    candidates = {root} | {p for p in root.glob(case_glob) if p.is_dir()}
    cases = sorted(
        (d for d in candidates if any(_is_nifti(f) for f in d.iterdir())),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not cases:
        raise DataError(
            f"no case folders found (no folder matching {case_glob!r} holds .nii/.nii.gz files)", path=root
        )
    return cases


def _match_one(folder: Path, files: list[Path], pattern: str, role: str) -> Path:
    pat = pattern.lower()
    hits = [f for f in files if fnmatch.fnmatch(f.name.lower(), pat)]
    if not hits:
        raise DataError(f"{role} pattern {pattern!r} matches no NIfTI file in this case folder", path=folder)
    if len(hits) > 1:
        names = ", ".join(f.name for f in hits[:4])
        raise DataError(
            f"{role} pattern {pattern!r} matches {len(hits)} files ({names}); make it more specific", path=folder
        )
    return hits[0]


def resolve_case(folder: Path, case: str, opts: NiftiConfig) -> CaseFiles:
    files = sorted(f for f in folder.iterdir() if _is_nifti(f))
    mods = [_match_one(folder, files, p, "modality") for p in opts.modalities]
    label = _match_one(folder, files, opts.label_pattern, "label") if opts.label_pattern else None
    brain = _match_one(folder, files, opts.brain_mask_pattern, "brain mask") if opts.brain_mask_pattern else None
    roles = mods + [x for x in (label, brain) if x is not None]
    dup = [f.name for f, c in Counter(roles).items() if c > 1]
    if dup:
        raise DataError(f"file {dup[0]} is matched by two patterns (modality/label/brain mask)", path=folder)
    return CaseFiles(case=case, folder=folder, modalities=mods, label=label, brain_mask=brain)


def _case_ids(root: Path, folders: list[Path]) -> list[str]:
    names = [f.name if f != root else root.name for f in folders]
    if len(set(names)) == len(names):
        return names
    return [f.relative_to(root).as_posix().replace("/", "_") or root.name for f in folders]


# ----------------------------------------------------------------------------- reading
def _read_volume(path: Path, role: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Read one 3-D volume in canonical RAS orientation -> (float32 array, affine, source dtype)."""
    import nibabel

    try:
        img = nibabel.load(str(path))
        img = nibabel.as_closest_canonical(img)
        dtype = str(img.get_data_dtype())
        data = np.asarray(img.dataobj, dtype=np.float32)
    except DataError:
        raise
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        raise DataError(f"cannot read NIfTI file ({type(e).__name__}: {msg})", path=path) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{role} is not a 3-D volume (shape {tuple(data.shape)})", path=path)
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise DataError(f"{role} volume contains {bad} NaN/inf values", path=path)
    return data, img.affine, dtype


def _background_value(v: np.ndarray) -> float:
    corners = v[np.ix_([0, -1], [0, -1], [0, -1])].ravel()
    vals, counts = np.unique(corners, return_counts=True)
    return float(vals[np.argmax(counts)])


def _normalise(v: np.ndarray, brain: np.ndarray, opts: NiftiConfig, path: Path) -> np.ndarray:
    """Per-volume intensity normalisation (statistics over brain voxels)."""
    mode = opts.normalization
    if mode == "none":
        return v
    vb = v[brain]
    if vb.size == 0:
        raise DataError("brain mask is empty in this volume", path=path)
    if mode == "zscore":
        mean, std = float(vb.mean(dtype=np.float64)), float(vb.std(dtype=np.float64))
        if std == 0:
            raise DataError("volume is constant inside the brain (std 0)", path=path)
        out = np.clip((v - mean) / std, -ZSCORE_CLIP, ZSCORE_CLIP)
        out[~brain] = -ZSCORE_CLIP
        return out.astype(np.float32, copy=False)
    if mode == "minmax":
        lo, hi = float(vb.min()), float(vb.max())
    else:  # percentile
        lo, hi = (float(x) for x in np.percentile(vb, list(opts.percentiles)))
    if hi <= lo:
        raise DataError(f"volume is constant inside the brain ({mode} range {lo:g}..{hi:g})", path=path)
    out = np.clip((v - lo) / (hi - lo), 0.0, 1.0)
    out[~brain] = 0.0
    return out.astype(np.float32, copy=False)


def _slices(v: np.ndarray, zs: np.ndarray) -> np.ndarray:
    """(X, Y, Z) volume -> (k, Y, X) axial slices, anterior at the top, patient left on the left."""
    return np.ascontiguousarray(v[:, :, zs].transpose(2, 1, 0)[:, ::-1, :])


@dataclass
class _CaseResult:
    case: str
    images: np.ndarray  # (k, C, H, W) float32 normalised units
    labels_raw: np.ndarray | None  # (k, H, W) int32 label values
    zs: np.ndarray
    has_lesion: np.ndarray
    info: dict[str, Any]
    dtype: str


@dataclass
class _CaseArrays:
    vols: list[np.ndarray]  # per modality, (X, Y, Z) float32 in canonical RAS
    lab: np.ndarray | None  # (X, Y, Z) int32 label values
    brain: np.ndarray  # (X, Y, Z) bool
    affine: np.ndarray  # canonical affine of the first modality
    dtype: str
    warnings: list[str]


def _load_case_arrays(cf: CaseFiles, opts: NiftiConfig) -> _CaseArrays:
    """Every volume of one case in canonical RAS, checked for matching shapes, plus its brain."""
    vols, dtypes, affines = [], [], []
    for p in cf.modalities:
        v, aff, dt = _read_volume(p, "modality")
        if vols and v.shape != vols[0].shape:
            raise DataError(
                f"shape {tuple(v.shape)} differs from {cf.modalities[0].name} {tuple(vols[0].shape)}", path=p
            )
        if float(v.max()) == float(v.min()):
            raise DataError(f"volume is constant (every voxel = {float(v.min()):g})", path=p)
        vols.append(v)
        dtypes.append(dt)
        affines.append(aff)
    shape = vols[0].shape
    warnings: list[str] = []
    if any(not np.allclose(a, affines[0], atol=1e-3) for a in affines[1:]):
        warnings.append(f"{cf.case}: modality affines differ (volumes assumed co-registered)")

    lab = None
    if cf.label is not None:
        lv, _, _ = _read_volume(cf.label, "label")
        if lv.shape != shape:
            raise DataError(
                f"label shape {tuple(lv.shape)} differs from {cf.modalities[0].name} {tuple(shape)}", path=cf.label
            )
        if not np.array_equal(lv, np.round(lv)):
            bad = lv[lv != np.round(lv)][0]
            raise DataError(f"label volume has non-integer values (e.g. {float(bad):g})", path=cf.label)
        lab = lv.astype(np.int32)

    if cf.brain_mask is not None:
        bv, _, _ = _read_volume(cf.brain_mask, "brain mask")
        if bv.shape != shape:
            raise DataError(
                f"brain mask shape {tuple(bv.shape)} differs from {cf.modalities[0].name} {tuple(shape)}",
                path=cf.brain_mask,
            )
        brain = bv > 0.5
    else:
        brain = np.zeros(shape, dtype=bool)
        for v in vols:
            brain |= v != _background_value(v)
    return _CaseArrays(vols, lab, brain, np.asarray(affines[0], dtype=np.float64), dtypes[0], warnings)


def _read_case(cf: CaseFiles, opts: NiftiConfig) -> _CaseResult:
    a = _load_case_arrays(cf, opts)
    if opts.mode == "volume":
        return _read_case_volume(cf, opts, a)
    vols, lab, brain, warnings = a.vols, a.lab, a.brain, a.warnings
    shape = vols[0].shape

    brain_per_slice = brain.sum(axis=(0, 1))
    lesion_per_slice = (lab > 0).sum(axis=(0, 1)) if lab is not None else np.zeros(shape[2], dtype=np.int64)
    keep = np.ones(shape[2], dtype=bool)
    if opts.brain_only:
        keep &= brain_per_slice >= opts.min_brain_voxels
    ambiguous = keep & (lesion_per_slice > 0) & (lesion_per_slice < opts.min_lesion_voxels)
    keep &= ~ambiguous
    zs = np.nonzero(keep)[0]
    has_lesion = lesion_per_slice[zs] >= max(1, opts.min_lesion_voxels)

    normed = [_normalise(v, brain, opts, p) for v, p in zip(vols, cf.modalities)]
    images = np.stack([_slices(v, zs) for v in normed], axis=1) if len(zs) else np.zeros(
        (0, len(vols), shape[1], shape[0]), np.float32
    )
    labels_raw = _slices(lab, zs) if lab is not None else None
    info = {
        **_case_info(cf, shape, a.affine),
        "slices_total": int(shape[2]),
        "slices_with_brain": int((brain_per_slice >= opts.min_brain_voxels).sum()),
        "slices_dropped_small_lesion": int(ambiguous.sum()),
        "slices_kept": int(len(zs)),
        "slices_with_lesion": int(has_lesion.sum()),
        "warnings": warnings,
    }
    return _CaseResult(cf.case, images, labels_raw, zs, has_lesion, info, a.dtype)


def _case_info(cf: CaseFiles, shape: Any, affine: np.ndarray) -> dict[str, Any]:
    """What every cached case records about its source: case, folder, files, volume shape and affine."""
    return {"case": cf.case, "folder": str(cf.folder), "files": [str(p) for p in cf.all_files()],
            "volume_shape": list(shape), "affine": affine.round(6).tolist()}


# ----------------------------------------------------------------------------- volumes
def volume_to_tensor(v: np.ndarray) -> np.ndarray:
    """``(..., X, Y, Z)`` canonical-RAS volume -> ``(..., Z, Y, X)`` sample layout with the in-plane convention of
    the slices: ``t[..., z, h, w] = v[..., w, Y - 1 - h, z]`` (anterior at the top, patient left on the left)."""
    n = v.ndim
    t = np.swapaxes(v, n - 3, n - 1)  # (..., Z, Y, X)
    return np.ascontiguousarray(t[..., ::-1, :])


def tensor_to_volume(t: np.ndarray) -> np.ndarray:
    """Inverse of :func:`volume_to_tensor`: ``(..., Z, Y, X)`` -> ``(..., X, Y, Z)``."""
    n = t.ndim
    return np.ascontiguousarray(np.swapaxes(t[..., ::-1, :], n - 3, n - 1))


def crop_and_resample(
    images: np.ndarray, lab: np.ndarray | None, brain: np.ndarray, affine: np.ndarray, shape: tuple[int, int, int],
    margin: int = 0,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, list[list[int]]]:
    """Crop ``(C, X, Y, Z)`` images and the ``(X, Y, Z)`` label volume to the bounding box of ``brain`` (plus
    ``margin`` voxels, within the volume), then resample to ``shape`` (images trilinear, labels nearest), with MONAI
    (``CropForegroundd``, ``Resized``; MetaTensors carry the affine). Returns the images, labels, the affine of the
    result (voxel -> world, adjusted for crop and resample: voxel ``i`` of an axis sits at source voxel
    ``start + (i + 0.5) * crop / shape - 0.5``) and the crop box ``[[start, end), ...]`` in source voxels."""
    from monai.data import MetaTensor
    from monai.transforms import CropForegroundd, Resized

    aff = torch.as_tensor(affine, dtype=torch.float64)
    d: dict[str, Any] = {
        "image": MetaTensor(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)), affine=aff),
        "brain": MetaTensor(torch.from_numpy(brain[None].astype(np.float32)), affine=aff),
    }
    keys = ["image"]
    if lab is not None:
        d["label"] = MetaTensor(torch.from_numpy(lab[None].astype(np.float32)), affine=aff)
        keys.append("label")
    crop = CropForegroundd(keys=keys, source_key="brain", margin=int(margin), allow_smaller=True)
    d = crop(d)
    cropped = tuple(int(x) for x in d["image"].shape[1:])
    nz = np.nonzero(brain)
    lo = [max(int(ix.min()) - int(margin), 0) for ix in nz]
    box = [[s, s + c] for s, c in zip(lo, cropped)]
    d = Resized(keys=["image"], spatial_size=tuple(int(x) for x in shape), mode="trilinear")(d)
    if lab is not None:
        d = Resized(keys=["label"], spatial_size=tuple(int(x) for x in shape), mode="nearest-exact")(d)
    out_img = d["image"].as_tensor().numpy().astype(np.float32)
    out_lab = None if lab is None else np.rint(d["label"].as_tensor().numpy()[0]).astype(np.int32)
    new_aff = np.asarray(d["image"].affine, dtype=np.float64)
    return out_img, out_lab, new_aff, box


def _read_case_volume(cf: CaseFiles, opts: NiftiConfig, a: _CaseArrays) -> _CaseResult:
    """One case as one sample: normalised, cropped to the brain, resampled to ``opts.volume_shape``."""
    shape = a.vols[0].shape
    normed = np.stack([_normalise(v, a.brain, opts, p) for v, p in zip(a.vols, cf.modalities)])
    lesion = int((a.lab > 0).sum()) if a.lab is not None else 0
    ambiguous = 0 < lesion < opts.min_lesion_voxels
    imgs, lab, aff, box = crop_and_resample(normed, a.lab, a.brain, a.affine, opts.volume_shape, opts.volume_margin)
    images = volume_to_tensor(imgs)[None]  # (1, C, Z, Y, X)
    labels_raw = None if lab is None else volume_to_tensor(lab)[None]
    keep = np.array([not ambiguous])
    info = {
        **_case_info(cf, shape, a.affine),
        "crop_box": box,
        "resampled_shape": list(opts.volume_shape),
        "resampled_affine": aff.round(6).tolist(),
        "lesion_voxels": lesion,
        "dropped_small_lesion": bool(ambiguous),
        "warnings": list(a.warnings),
    }
    if ambiguous:
        images, labels_raw = images[:0], None if labels_raw is None else labels_raw[:0]
    return _CaseResult(
        cf.case, images, labels_raw, np.nonzero(keep)[0], np.array([lesion >= max(1, opts.min_lesion_voxels)])[keep],
        info, a.dtype,
    )


# ----------------------------------------------------------------------------- labels CSV
def _read_labels_csv(opts: NiftiConfig) -> dict[str, str]:
    path = Path(opts.labels_csv)  # type: ignore[arg-type]
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            for c in (opts.labels_csv_case_column, opts.labels_csv_label_column):
                if c not in cols:
                    raise DataError(f"labels CSV has no column {c!r} (columns: {', '.join(cols)})", path=path)
            out: dict[str, str] = {}
            for row in reader:
                case = (row[opts.labels_csv_case_column] or "").strip()
                lab = (row[opts.labels_csv_label_column] or "").strip()
                if not case:
                    continue
                if case in out and out[case] != lab:
                    raise DataError(f"case {case!r} has two labels ({out[case]!r}, {lab!r})", path=path)
                out[case] = lab
    except FileNotFoundError:
        raise DataError("labels CSV not found", path=path) from None
    except UnicodeDecodeError:
        raise DataError("labels CSV is not UTF-8 text", path=path) from None
    if not out:
        raise DataError("labels CSV has no rows", path=path)
    return out


def _case_label(table: dict[str, str], cf: CaseFiles, root: Path) -> str | None:
    for key in (cf.case, cf.folder.name, cf.folder.relative_to(root).as_posix()):
        if key in table:
            return table[key]
    return None


# ----------------------------------------------------------------------------- cache
def cache_root(opts: NiftiConfig) -> Path:
    if opts.cache_dir:
        return Path(opts.cache_dir).expanduser()
    return cache_base() / "nifti"


_stat = file_stat


def cache_key(cfg: DataConfig, cases: list[CaseFiles], skipped: list[dict[str, str]]) -> str:
    # the volume options change nothing in slice mode: left out there, so that slice caches stay valid
    volume_keys = {"mode", "volume_shape", "volume_margin"} if cfg.nifti.mode == "slices" else set()
    opts = cfg.nifti.model_dump(mode="json", exclude={"cache_dir"} | volume_keys)
    payload = {
        "version": CACHE_VERSION,
        "root": str(Path(cfg.path).resolve()),  # type: ignore[arg-type]
        "files": [[c.case] + [_stat(p) for p in c.all_files()] for c in cases],
        "skipped": skipped,
        "labels_csv": _stat(Path(cfg.nifti.labels_csv)) if cfg.nifti.labels_csv else None,
        "nifti": opts,
        "image_size": cfg.image_size,
        "resize_policy": cfg.resize_policy,
        "classes": cfg.classes,
        "mask_values": cfg.mask_values,
        "skip_bad": cfg.skip_bad,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _write_cache(folder: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write the cache folder atomically (temporary sibling folder, then rename)."""
    with atomic_folder(folder) as tmp:
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(meta))


def _read_cache(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        # copy-on-write map: lazily read, and an in-place tensor op never writes the cache file
        arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="c", allow_pickle=False) for n in meta["arrays"]}
    except (OSError, ValueError, KeyError):
        return None
    return arrays, meta


def _dataset_from_arrays(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> ImageDataset:
    masks = None
    if "masks" in arrays:
        masks = torch.from_numpy(np.asarray(arrays["masks"])).long()
    conditions = torch.from_numpy(np.asarray(arrays["conditions"])).long() if "conditions" in arrays else None
    return ImageDataset(
        images=torch.from_numpy(arrays["images"]),
        labels=torch.from_numpy(np.asarray(arrays["labels"])).long(),
        class_names=meta["class_names"],
        ids=meta["ids"],
        masks=masks,
        mask_values=meta["mask_values"],
        conditions=conditions,
        condition_names=meta["condition_names"],
        groups=meta["groups"],
        intensity=IntensityInfo(**meta["intensity"]),
        meta=meta["meta"],
    )


# ----------------------------------------------------------------------------- source
@SOURCES.register("nifti", help="BraTS-style NIfTI case folders -> axial 2-D slices (or whole volumes)")
def load_nifti(cfg: DataConfig) -> ImageDataset:
    """Load axial slices (``nifti.mode: slices``) or whole cropped, resampled volumes (``nifti.mode: volume``) of
    BraTS-style NIfTI case folders (see the module docstring)."""
    opts = cfg.nifti
    if cfg.path is None:
        raise ConfigError("data.path is required for the nifti source")
    root = Path(cfg.path)
    if not opts.modalities:
        raise ConfigError("nifti.modalities must list at least one modality pattern")
    if cfg.channels != "auto" and cfg.channels != len(opts.modalities):
        raise ConfigError(f"data.channels={cfg.channels} but {len(opts.modalities)} modality patterns are given")
    if opts.slice_label == "has_lesion":
        if opts.label_pattern is None:
            raise ConfigError("nifti.slice_label='has_lesion' needs nifti.label_pattern (the lesion label volume)")
        if cfg.classes is not None and list(cfg.classes) != HAS_LESION_CLASSES:
            raise ConfigError(f"nifti slice_label 'has_lesion' has the classes {HAS_LESION_CLASSES}, not {cfg.classes}")
    elif opts.labels_csv is None:
        raise ConfigError("nifti.slice_label='case' needs nifti.labels_csv (case,label)")

    folders = find_case_folders(root, opts.case_glob)
    skipped: list[dict[str, str]] = []
    cases: list[CaseFiles] = []
    for folder, case in zip(folders, _case_ids(root, folders)):
        try:
            cases.append(resolve_case(folder, case, opts))
        except DataError as e:
            if not cfg.skip_bad:
                raise
            skipped.append({"path": str(folder), "problem": e.problem})
    if not cases:
        raise DataError(f"no usable case folders ({len(skipped)} skipped: {skipped[0]['problem']})", path=root)

    key = cache_key(cfg, cases, skipped)
    folder = cache_root(opts) / key
    if folder.is_dir():
        hit = _read_cache(folder)
        if hit is not None:
            arrays, meta = hit
            meta["meta"]["cache"] = {"path": str(folder), "hit": True}
            return _dataset_from_arrays(arrays, meta)

    arrays, meta = _build(cfg, root, cases, skipped)
    try:
        _write_cache(folder, arrays, meta)
        meta["meta"]["cache"] = {"path": str(folder), "hit": False}
    except OSError as e:
        meta["meta"]["warnings"].append(f"could not write the slice cache {folder} ({e.strerror or e})")
        meta["meta"]["cache"] = None
    return _dataset_from_arrays(arrays, meta)


def _build(cfg: DataConfig, root: Path, cases: list[CaseFiles], skipped: list[dict[str, str]]):
    opts = cfg.nifti
    table = _read_labels_csv(opts) if opts.labels_csv else None
    results: list[_CaseResult] = []
    case_labels: list[str | None] = []
    for cf in track(cases, description=f"reading {len(cases)} NIfTI cases"):
        lab = None
        if table is not None:
            lab = _case_label(table, cf, root)
            if lab is None:
                msg = f"case {cf.case!r} has no row in the labels CSV"
                if not cfg.skip_bad:
                    raise DataError(msg, path=opts.labels_csv)
                skipped.append({"path": str(cf.folder), "problem": msg})
                continue
        try:
            res = _read_case(cf, opts)
        except DataError as e:
            if not cfg.skip_bad:
                raise
            skipped.append({"path": e.path or str(cf.folder), "problem": e.problem})
            continue
        results.append(res)
        case_labels.append(lab)
    if not results:
        raise DataError(f"every case was skipped (first problem: {skipped[0]['problem']})", path=root)
    if sum(len(r.zs) for r in results) == 0:
        if opts.mode == "volume":
            raise DataError("no volume passed the filter (min_lesion_voxels)", path=root)
        raise DataError("no axial slice passed the filter (brain_only / min_lesion_voxels)", path=root)

    # classes / conditions
    condition_names = None
    conditions = None
    if opts.slice_label == "has_lesion":
        class_names = list(HAS_LESION_CLASSES)
        labels = np.concatenate([r.has_lesion.astype(np.int64) for r in results])
        if table is not None:
            condition_names = sorted({lab for lab in case_labels if lab is not None})
            conditions = np.concatenate(
                [np.full(len(r.zs), condition_names.index(lab), np.int64) for r, lab in zip(results, case_labels)]
            )
    else:
        present = sorted(set(table.values()))  # type: ignore[union-attr]
        class_names = list(cfg.classes) if cfg.classes else present
        unknown = sorted(set(case_labels) - set(class_names))
        if unknown:
            raise DataError(f"labels {unknown} are not among the declared classes {class_names}", path=opts.labels_csv)
        labels = np.concatenate(
            [np.full(len(r.zs), class_names.index(lab), np.int64) for r, lab in zip(results, case_labels)]
        )

    # masks -> indices into the label values present
    mask_values = None
    masks_idx = None
    if results[0].labels_raw is not None:
        present_vals = sorted(set().union(*(np.unique(r.labels_raw).tolist() for r in results)) | {0})
        if cfg.mask_values is not None:
            extra = sorted(set(present_vals) - set(cfg.mask_values))
            if extra:
                raise DataError(f"label values {extra} are not among the declared mask_values {cfg.mask_values}", path=root)
            mask_values = sorted(set(cfg.mask_values) | {0})
        else:
            mask_values = present_vals
        vals = np.asarray(mask_values)
        dt = np.uint8 if len(vals) <= 256 else np.int16
        masks_idx = np.concatenate([np.searchsorted(vals, r.labels_raw).astype(dt) for r in results])

    images = np.concatenate([r.images for r in results])
    if opts.normalization == "zscore":
        intensity = IntensityInfo("float", -ZSCORE_CLIP, ZSCORE_CLIP)
    elif opts.normalization in ("minmax", "percentile"):
        intensity = IntensityInfo("float", 0.0, 1.0)
    else:
        lo, hi = float(images.min()), float(images.max())
        intensity = IntensityInfo("float", lo, hi if hi > lo else lo + 1.0)

    if opts.mode == "volume":
        vx, vy, vz = opts.volume_shape
        conversions = [
            "reoriented to canonical RAS (nibabel.as_closest_canonical); one sample per case",
            f"cropped to the brain's bounding box (margin {opts.volume_margin}) and resampled to {vx}x{vy}x{vz} "
            "(X x Y x Z; MONAI CropForegroundd + Resized: images trilinear, label map nearest)",
        ]
    else:
        conversions = ["reoriented to canonical RAS (nibabel.as_closest_canonical); axial slices along the last axis"]
    conversions.append(
        {
            "zscore": f"per-volume z-score inside the brain, clipped to [-{ZSCORE_CLIP:g}, {ZSCORE_CLIP:g}], "
            f"background set to -{ZSCORE_CLIP:g}",
            "minmax": "per-volume min-max inside the brain to [0, 1], background set to 0",
            "percentile": f"per-volume clip to brain percentiles {list(opts.percentiles)} then min-max to [0, 1], "
            "background set to 0",
            "none": "no intensity normalisation (raw values)",
        }[opts.normalization]
    )
    conversions.append(f"intensity {intensity.lo:g}..{intensity.hi:g} mapped linearly to [-1, 1]")
    if mask_values is not None and mask_values != list(range(len(mask_values))):
        conversions.append(f"label values {mask_values} stored as indices 0..{len(mask_values) - 1}")

    t_images = torch.from_numpy(intensity.scale(torch.from_numpy(images)).numpy())
    t_masks = None if masks_idx is None else torch.from_numpy(masks_idx)
    h, w = images.shape[-2:]
    if cfg.image_size is not None and opts.mode == "volume":
        raise ConfigError("data.image_size resizes 2-D slices; in nifti.mode 'volume' set nifti.volume_shape")
    if cfg.image_size is not None and (h, w) != (cfg.image_size, cfg.image_size):
        from medbalance.data.transforms import fit_images, fit_masks

        target = (cfg.image_size, cfg.image_size)
        t_images = fit_images(t_images, target, cfg.resize_policy, fill=-1.0)
        t_masks = None if t_masks is None else fit_masks(t_masks, target, cfg.resize_policy)
        conversions.append(
            f"resized {h}x{w} -> {cfg.image_size}x{cfg.image_size} ({cfg.resize_policy}; bilinear, masks nearest)"
        )

    if opts.mode == "volume":
        ids = [r.case for r in results for _ in r.zs]
    else:
        ids = [f"{r.case}_z{int(z):03d}" for r in results for z in r.zs]
    groups = [r.case for r in results for _ in r.zs]
    warnings = [w for r in results for w in r.info.pop("warnings")]
    dtypes = sorted({r.dtype for r in results})
    meta_ds = {
        "source": "nifti",
        "path": str(root),
        "original_shapes": (
            dict(Counter("x".join(str(x) for x in r.info["volume_shape"]) for r in results if len(r.zs)))
            if opts.mode == "volume"
            else {f"{h}x{w}": int(len(ids))}
        ),
        "source_dtype": dtypes[0] if len(dtypes) == 1 else ",".join(dtypes),
        "conversions": conversions,
        "skipped": skipped,
        "warnings": warnings,
        "modalities": list(opts.modalities),
        "slice_orientation": "RAS canonical; image[h, w] = volume[w, Y-1-h, z] (anterior up, patient left on the left)",
        "mode": opts.mode,
        "normalization": opts.normalization,
        "cases": [r.info for r in results],
    }
    if opts.mode == "volume":
        meta_ds["volume_layout"] = (
            "sample (C, Z, Y, X) of the resampled RAS volume v (X, Y, Z): t[c, z, h, w] = v[c, w, Y-1-h, z]"
        )
        # per sample id: the affine (voxel -> world mm) of the resampled (X, Y, Z) volume (crop and resample applied)
        meta_ds["volume_affines"] = {r.case: r.info["resampled_affine"] for r in results if len(r.zs)}
    arrays: dict[str, np.ndarray] = {
        "images": np.ascontiguousarray(t_images.numpy(), dtype=np.float32),
        "labels": labels.astype(np.int64),
    }
    if t_masks is not None:
        arrays["masks"] = np.ascontiguousarray(t_masks.numpy())
    if conditions is not None:
        arrays["conditions"] = conditions
    meta = {
        "arrays": sorted(arrays),
        "class_names": class_names,
        "ids": ids,
        "groups": groups,
        "mask_values": mask_values,
        "condition_names": condition_names,
        "intensity": intensity.to_dict(),
        "meta": meta_ds,
    }
    return arrays, meta
