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
from medbalance.errors import ConfigError, DataError
from medbalance.registry import Registry

SourceFn = Callable[[DataConfig], ImageDataset]
SOURCES: Registry[SourceFn] = Registry("data source")

_LOADED = False


MANIFEST_COLUMNS = ("image_column", "mask_column", "label_column", "id_column", "condition_column", "group_column")


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
    if source != "manifest":  # the column options name CSV columns: elsewhere they would silently do nothing
        defaults = DataConfig.model_fields
        given = [k for k in MANIFEST_COLUMNS if getattr(cfg, k) != defaults[k].default]
        if given:
            raise ConfigError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to CSV manifests only; "
                              f"this is a {source} dataset", path=cfg.path)
    ds = SOURCES.get(source)(cfg)
    if cfg.class_subset is not None:
        ds = select_classes(ds, cfg.class_subset, where=cfg.path)
    if cfg.anatomy_values is not None:
        missing = set(cfg.anatomy_values) - set(ds.mask_values or [])
        if missing:
            raise DataError(f"anatomy_values {sorted(missing)} are not mask values {ds.mask_values}", path=cfg.path)
        ds.meta["anatomy_values"] = list(cfg.anatomy_values)
    if cfg.anatomy_label is not None:
        from medbalance.data.anatomy import add_anatomy_label

        ds = add_anatomy_label(ds, cfg.anatomy_label, cfg.anatomy_threshold, cfg.anatomy_levels)
    return ds


def select_classes(ds: ImageDataset, classes: list[str], where: str | None = None) -> ImageDataset:
    """Only the rows of ``classes``, relabelled so that class index = position in ``classes``."""
    from dataclasses import replace

    import torch

    classes = [str(c) for c in classes]
    if not classes or len(set(classes)) != len(classes):
        raise DataError(f"class_subset must list distinct classes; got {classes}", path=where)
    unknown = [c for c in classes if c not in ds.class_names]
    if unknown:
        raise DataError(
            f"class_subset: unknown class(es) {', '.join(unknown)}; the classes present are "
            f"{', '.join(ds.class_names)}",
            path=where,
        )
    old = [ds.class_names.index(c) for c in classes]
    keep = [i for i, lab in enumerate(ds.labels.tolist()) if lab in old]
    if not keep:
        raise DataError(f"class_subset {classes}: no rows of these classes", path=where)
    sub = ds.subset(keep)
    remap = {o: n for n, o in enumerate(old)}
    labels = torch.tensor([remap[int(v)] for v in sub.labels.tolist()], dtype=torch.long)
    meta = dict(sub.meta)
    meta["class_subset"] = list(classes)
    meta["classes_before_subset"] = list(ds.class_names)
    return replace(sub, labels=labels, class_names=list(classes), meta=meta)
