"""Bottleneck features of a segmentation U-Net, and a memory-mapped store for them.

Feature-level augmentation (Mehra, Soliman & Sahoo, arXiv 2209.14097) does not
generate images but the learned features of a segmentation network. This module extracts the *bottleneck*
(deepest encoder output) of a :class:`~medbalance.models.tasknets.SegmentationUNet`:

* MONAI ``UNet`` (``backbone="unet"``): the bottom layer of the nested ``[down, SkipConnection, up]``
  structure, i.e. ``channels[-1]`` maps at ``H / 2**(len(channels) - 1)`` (128 x 8 x 8 for the default
  ``(16, 32, 64, 128)`` at 64 x 64 input; 1024 x 15 x 15 in the paper at 240 x 240);
* MONAI ``BasicUNet``: the output of ``down_4``, ``channels[4]`` maps at ``H / 16``.

Only the encoder path runs (the decoder is skipped), in eval mode (BatchNorm running statistics), so the
result is deterministic. :func:`bottleneck_module` returns the module whose output this is; a forward hook on it
gives the same tensor (the tests use that as the independent check).

The store (:func:`extract_to_store`, :func:`open_feature_store`) is a folder:

* ``features.npy``: float32 ``(N, C, h, w)`` in ``.npy`` format, opened with ``numpy.load(mmap_mode="r")``;
* ``index.json``: ids, labels (class indices), class names, split per sample (``train`` / ``val`` /
  ``test`` / ``excluded``), groups, the feature shape, whether every feature is ``>= 0`` and free metadata
  (which segmentor, which data). The folder is written atomically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from medbalance.data.dataset import ImageDataset
from medbalance.errors import CheckpointError, ConfigError, DataError
from medbalance.utils.io import atomic_directory, atomic_write_json, read_json
from medbalance.utils.progress import make_progress

STORE_FORMAT = "medbalance-feature-store"
STORE_VERSION = 1
SPLITS = ("train", "val", "test", "excluded")


# ---------------------------------------------------------------------------------------------- extraction
def _unet_levels(model: nn.Module) -> tuple[list[nn.Module], nn.Module]:
    """MONAI UNet: (encoder 'down' modules from the top, bottom module)."""
    from monai.networks.layers.simplelayers import SkipConnection

    node = model.net.model
    downs: list[nn.Module] = []
    while isinstance(node, nn.Sequential) and len(node) == 3 and isinstance(node[1], SkipConnection):
        downs.append(node[0])
        node = node[1].submodule
    if not downs:
        raise ConfigError("unexpected MONAI UNet structure: no [down, skip, up] level found")
    return downs, node


def _backbone(model: nn.Module) -> str:
    kw = getattr(model, "kwargs", None)
    if not isinstance(kw, dict) or "backbone" not in kw:
        raise ConfigError(f"{type(model).__name__} is not a medbalance SegmentationUNet")
    return kw["backbone"]


def bottleneck_module(model: nn.Module) -> nn.Module:
    """The module whose output is the bottleneck feature map (for forward hooks)."""
    bb = _backbone(model)
    if bb == "unet":
        return _unet_levels(model)[1]
    if bb == "basic_unet":
        return model.net.down_4
    raise ConfigError(f"cannot find the bottleneck of backbone {bb!r}")


def encode(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run only the encoder path of the U-Net and return the bottleneck ``(B, C, h, w)``."""
    bb = _backbone(model)
    if bb == "unet":
        downs, bottom = _unet_levels(model)
        for d in downs:
            x = d(x)
        return bottom(x)
    net = model.net
    x = net.conv_0(x)
    for name in ("down_1", "down_2", "down_3", "down_4"):
        x = getattr(net, name)(x)
    return x


@torch.no_grad()
def bottleneck_shape(model: nn.Module, in_shape: Sequence[int]) -> tuple[int, ...]:
    """Feature shape ``(C, h, w)`` for one input of shape ``in_shape`` = ``(channels, H, W)``."""
    was = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        out = encode(model, torch.zeros(1, *in_shape, device=dev))
    finally:
        model.train(was)
    return tuple(int(s) for s in out.shape[1:])


@torch.no_grad()
def extract_features(model: nn.Module, images: torch.Tensor, batch_size: int = 64, progress: bool = True) -> torch.Tensor:
    """Bottleneck features ``(N, C, h, w)`` float32 on CPU, eval mode (deterministic)."""
    out = []
    for _, feats in _iter_features(model, images, batch_size, progress):
        out.append(feats)
    if not out:
        raise DataError("no images to extract features from")
    return torch.cat(out)


def _iter_features(model: nn.Module, images: torch.Tensor, batch_size: int, progress: bool):
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    n = images.shape[0]
    try:
        with make_progress() as bar:
            t = bar.add_task("extract features", total=n) if progress else None
            for s in range(0, n, batch_size):
                xb = images[s : s + batch_size].to(dev)
                with torch.no_grad():  # a generator resumes outside any caller's no_grad
                    feats = encode(model, xb.float()).float().cpu()
                yield s, feats
                if t is not None:
                    bar.advance(t, xb.shape[0])
    finally:
        model.train(was)


# ---------------------------------------------------------------------------------------------- store
@dataclass
class FeatureStore:
    """A memory-mapped feature store (read-only ``features``)."""

    path: Path
    features: np.ndarray  # (N, C, h, w) float32, memory-mapped
    ids: list[str]
    labels: np.ndarray  # (N,) int64
    class_names: list[str]
    splits: list[str]
    groups: list[str] | None = None
    nonnegative: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.features.shape[1:])

    def indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
        return np.asarray([i for i, s in enumerate(self.splits) if s == split], dtype=np.int64)

    def select(self, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(features (n, C, h, w) float32 tensor in memory, labels (n,) int64, ids) of one split."""
        idx = self.indices(split)
        x = torch.from_numpy(np.ascontiguousarray(self.features[idx], dtype=np.float32))
        return x, torch.from_numpy(self.labels[idx].astype(np.int64)), [self.ids[i] for i in idx]


def extract_to_store(
    model: nn.Module,
    data: ImageDataset,
    splits: Sequence[str],
    out_dir: str | Path,
    batch_size: int = 64,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    overwrite: bool = True,
) -> FeatureStore:
    """Extract the bottleneck of every image of ``data`` into a memory-mapped store at ``out_dir``.

    ``splits[i]`` names the split of sample ``i`` (``train``/``val``/``test``/``excluded``). Batches are
    streamed into the ``.npy`` memmap, so the whole feature array never has to sit in memory.
    """
    if len(splits) != len(data):
        raise DataError(f"{len(splits)} split names for {len(data)} samples")
    bad = sorted(set(splits) - set(SPLITS))
    if bad:
        raise ConfigError(f"unknown split names {bad}; allowed: {', '.join(SPLITS)}")
    shape = bottleneck_shape(model, data.images.shape[1:])
    n = len(data)
    out_dir = Path(out_dir)
    nonneg = True
    fmin, fmax = float("inf"), float("-inf")
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        arr = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=np.float32, shape=(n, *shape))
        for s, feats in _iter_features(model, data.images, batch_size, progress):
            arr[s : s + feats.shape[0]] = feats.numpy()
            fmin, fmax = min(fmin, float(feats.min())), max(fmax, float(feats.max()))
        nonneg = fmin >= 0
        arr.flush()
        del arr
        atomic_write_json(
            tmp / "index.json",
            {
                "format": STORE_FORMAT,
                "version": STORE_VERSION,
                "shape": [n, *shape],
                "dtype": "float32",
                "ids": list(data.ids),
                "labels": data.labels.tolist(),
                "class_names": list(data.class_names),
                "splits": list(splits),
                "groups": None if data.groups is None else list(data.groups),
                "nonnegative": bool(nonneg),
                "min": fmin,
                "max": fmax,
                "meta": meta or {},
            },
        )
    return open_feature_store(out_dir)


def open_feature_store(path: str | Path) -> FeatureStore:
    """Open a store written by :func:`extract_to_store` (features memory-mapped, read-only)."""
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError("feature store folder not found", path=p)
    idx = read_json(p / "index.json")
    if not isinstance(idx, dict) or idx.get("format") != STORE_FORMAT:
        raise CheckpointError(f"not a {STORE_FORMAT} index", path=p / "index.json")
    fpath = p / "features.npy"
    if not fpath.is_file():
        raise CheckpointError("features.npy missing", path=fpath)
    try:
        feats = np.load(fpath, mmap_mode="r")
    except (ValueError, OSError) as e:
        raise CheckpointError(f"cannot memory-map the features ({e})", path=fpath) from None
    if list(feats.shape) != list(idx["shape"]) or feats.dtype != np.float32:
        raise CheckpointError(
            f"features.npy has shape {list(feats.shape)} {feats.dtype}, index.json says {idx['shape']} float32", path=fpath
        )
    n = feats.shape[0]
    if not (len(idx["ids"]) == len(idx["labels"]) == len(idx["splits"]) == n):
        raise CheckpointError("index.json lists a different number of ids/labels/splits than features.npy", path=p)
    return FeatureStore(
        path=p,
        features=feats,
        ids=list(idx["ids"]),
        labels=np.asarray(idx["labels"], dtype=np.int64),
        class_names=list(idx["class_names"]),
        splits=list(idx["splits"]),
        groups=idx.get("groups"),
        nonnegative=bool(idx.get("nonnegative", False)),
        meta=dict(idx.get("meta") or {}),
    )


__all__ = [
    "FeatureStore",
    "bottleneck_module",
    "bottleneck_shape",
    "encode",
    "extract_features",
    "extract_to_store",
    "open_feature_store",
]
