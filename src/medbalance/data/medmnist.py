"""MedMNIST ``.npz`` source: ``{split}_images`` / ``{split}_labels`` with the split from ``cfg.split``.

Images ``(N, H, W)``, ``(N, H, W, 1)`` or ``(N, H, W, 3)`` uint8; labels ``(N,)`` or ``(N, 1)``
integers (multi-label ``(N, K>1)`` is rejected). Class names: ``cfg.classes`` or
``"0", "1", ...`` up to the largest label. Ids: ``{split}_{index:06d}``. Loaded with
``allow_pickle=False``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from medbalance.data.config import DataConfig
from medbalance.data.dataset import ImageDataset
from medbalance.data.imageio import LoadedImage
from medbalance.data.sources import SOURCES
from medbalance.data.transforms import assemble_dataset
from medbalance.errors import DataError


def read_npz_split(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` of one split, validated (shapes, dtypes, lengths)."""
    if not path.is_file():
        raise DataError("MedMNIST .npz file not found", path=path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            ki, kl = f"{split}_images", f"{split}_labels"
            missing = [k for k in (ki, kl) if k not in keys]
            if missing:
                splits = sorted({k.rsplit("_", 1)[0] for k in keys if k.endswith(("_images", "_labels"))})
                raise DataError(
                    f"missing key(s) {', '.join(missing)} for split {split!r} "
                    f"(keys present: {', '.join(keys) or 'none'}; splits: {', '.join(splits) or 'none'})",
                    path=path,
                )
            images, labels = npz[ki], npz[kl]
    except DataError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise DataError(f"cannot read .npz ({type(e).__name__}: {e})", path=path) from None

    if images.dtype != np.uint8:
        raise DataError(f"{split}_images has dtype {images.dtype}; MedMNIST images are uint8", path=path)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
        raise DataError(
            f"{split}_images has shape {images.shape}; expected (N, H, W) or (N, H, W, 3) "
            "(3D MedMNIST volumes are not supported)",
            path=path,
        )
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(
            f"{split}_labels has shape {labels.shape}; expected (N,) or (N, 1) (multi-label is not supported)",
            path=path,
        )
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.array_equal(labels, np.round(labels)):
            labels = labels.astype(np.int64)
        else:
            raise DataError(f"{split}_labels has dtype {labels.dtype}; expected integer class labels", path=path)
    labels = labels.astype(np.int64)
    if len(images) != len(labels):
        raise DataError(f"{len(images)} {split}_images but {len(labels)} {split}_labels", path=path)
    if len(images) == 0:
        raise DataError(f"split {split!r} is empty", path=path)
    if labels.min() < 0:
        raise DataError(f"{split}_labels has negative values (min {labels.min()})", path=path)
    return images, labels


@SOURCES.register("medmnist", help="MedMNIST .npz ({split}_images, {split}_labels)")
def load_medmnist(cfg: DataConfig) -> ImageDataset:
    if cfg.path is None:
        raise DataError("no .npz path given (data.path)")
    path = Path(cfg.path)
    split = cfg.split
    images, labels = read_npz_split(path, split)
    meta: dict[str, Any] = {
        "source": "medmnist",
        "path": str(path),
        "split": split,
        "skipped": [],
        "warnings": [],
        "conversions": [],
    }
    n_lab = int(labels.max()) + 1
    if cfg.classes is not None:
        class_names = list(cfg.classes)
        if n_lab > len(class_names):
            bad = np.flatnonzero(labels >= len(class_names))
            raise DataError(
                f"label {int(labels[bad[0]])} at index {int(bad[0])} ({bad.size} sample(s)) is outside the "
                f"{len(class_names)} declared classes {class_names}",
                path=path,
            )
    else:
        class_names = [str(i) for i in range(n_lab)]
    counts = np.bincount(labels, minlength=len(class_names))
    empty = [class_names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        if cfg.classes is not None:
            raise DataError(f"empty class(es) {empty}: declared but no samples in split {split!r}", path=path)
        meta["warnings"].append(f"class(es) {', '.join(empty)} have no samples in split {split!r}")

    notes: list[str] = []
    if images.ndim == 4:
        eq = (images[..., 0] == images[..., 1]).all(axis=(1, 2)) & (images[..., 0] == images[..., 2]).all(axis=(1, 2))
        loaded = [
            LoadedImage(array=images[i, ..., 0] if eq[i] else images[i], kind="uint8", mode="npz")
            for i in range(len(images))
        ]
        notes += ["RGB with identical channels -> grayscale"] * int(eq.sum())
    else:
        loaded = [LoadedImage(array=images[i], kind="uint8", mode="npz") for i in range(len(images))]
    return assemble_dataset(
        cfg,
        images=loaded,
        labels=labels.tolist(),
        class_names=class_names,
        ids=[f"{split}_{i:06d}" for i in range(len(images))],
        meta=meta,
        notes=notes,
    )


__all__ = ["load_medmnist", "read_npz_split"]
