"""Registry of data sources and the one entry point :func:`load_dataset`.

A source is a function ``(cfg: DataConfig) -> ImageDataset``. ``source='auto'`` picks by path:
``phantom`` -> phantom, ``*.csv`` -> manifest, ``*.npz`` -> medmnist, a folder containing
``*.nii``/``*.nii.gz`` files -> nifti, any other folder -> class folders.
"""

from __future__ import annotations

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
    if cfg is None or isinstance(cfg, str):
        cfg = DataConfig(path=cfg, **overrides)
    elif overrides:
        cfg = cfg.model_copy(update=overrides)
    source = cfg.source if cfg.source != "auto" else detect_source(cfg.path)
    return SOURCES.get(source)(cfg)
