"""Registry of data sources and the one entry point :func:`load_dataset`.

A source is a function ``(cfg: DataConfig) -> ImageDataset``. ``source='auto'`` picks by path:
``phantom`` -> phantom, ``*.csv`` -> manifest, ``*.npz`` -> medmnist, a folder containing
``*.nii``/``*.nii.gz`` files -> nifti, any other folder -> class folders.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from medbalance.data.config import DataConfig
from medbalance.data.dataset import ImageDataset
from medbalance.errors import DataError
from medbalance.registry import Registry

SourceFn = Callable[[DataConfig], ImageDataset]
SOURCES: Registry[SourceFn] = Registry("data source")

_LOADED = False


def _ensure_registered() -> None:
    global _LOADED
    if _LOADED:
        return
    # Each module registers itself on import.
    from medbalance.data import folders, manifest, medmnist, nifti, phantom  # noqa: F401

    _LOADED = True


def detect_source(path: str | None) -> str:
    if path is None or path == "phantom":
        return "phantom"
    p = Path(path)
    if not p.exists():
        raise DataError("no such file or folder", path=p)
    if p.is_file():
        suf = p.suffix.lower()
        if suf in (".csv", ".tsv"):
            return "manifest"
        if suf == ".npz":
            return "medmnist"
        raise DataError(f"cannot tell the data source from the extension {suf!r} (expected .csv or .npz)", path=p)
    if next(p.rglob("*.nii.gz"), None) is not None or next(p.rglob("*.nii"), None) is not None:
        return "nifti"
    return "folders"


def load_dataset(cfg: DataConfig | str | None = None, **overrides) -> ImageDataset:
    """Load a dataset from a config, or from a path with keyword overrides of :class:`DataConfig`."""
    _ensure_registered()
    if cfg is None or isinstance(cfg, (str, os.PathLike)):
        cfg = DataConfig(path=None if cfg is None else str(cfg), **overrides)
    elif overrides:
        cfg = cfg.model_copy(update=overrides)
    source = cfg.source if cfg.source != "auto" else detect_source(cfg.path)
    ds = SOURCES.get(source)(cfg)
    if cfg.anatomy_values is not None:
        missing = set(cfg.anatomy_values) - set(ds.mask_values or [])
        if missing:
            raise DataError(f"anatomy_values {sorted(missing)} are not mask values {ds.mask_values}", path=cfg.path)
        ds.meta["anatomy_values"] = list(cfg.anatomy_values)
    if cfg.anatomy_label is not None:
        from medbalance.data.anatomy import add_anatomy_label

        ds = add_anatomy_label(ds, cfg.anatomy_label, cfg.anatomy_threshold, cfg.anatomy_levels)
    return ds
