"""The dataset every stage works on.

One sample = image tensor ``(C, H, W)`` float32 scaled to ``[-1, 1]``, optional label map
``(H, W)`` int64, class label, optional global condition (e.g. acquisition site), id, group
id (patient) and source metadata. Small datasets (thousands of slices) are held as tensors, so
training and evaluation never wait on decoding. Large ones (``data.storage: disk``, or ``auto``
above the memory budget) keep images and masks as lazy :class:`~medbalance.data.cache.DiskArray`
views of an on-disk cache: ``images[idx]`` reads and converts only those rows, so every consumer
that indexes rows (batches, chunks) works unchanged in bounded memory.

Label maps are stored as *indices* into :attr:`ImageDataset.mask_values` (index 0 is
background), so ``0/255`` binary masks become ``0/1`` and BraTS ``{0,1,2,4}`` become
``{0,1,2,3}``; ``mask_values`` maps them back for export.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from medbalance.data.cache import cat_rows, take_rows
from medbalance.errors import DataError


@dataclass(frozen=True)
class IntensityInfo:
    """How source intensities map to [-1, 1]: ``x_scaled = 2 * (x - lo) / (hi - lo) - 1``.

    ``kind`` is the source storage: ``uint8``, ``uint16`` or ``float`` (NIfTI, npz float).
    """

    kind: str = "uint8"
    lo: float = 0.0
    hi: float = 255.0

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.lo) * (2.0 / (self.hi - self.lo)) - 1.0

    def unscale(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`scale` (float result, clamped to [lo, hi])."""
        y = (x.float().clamp(-1, 1) + 1.0) * ((self.hi - self.lo) / 2.0) + self.lo
        return y

    def to_storage(self, x: torch.Tensor) -> np.ndarray:
        """[-1, 1] tensor -> numpy array in the source storage type (rounded for integers)."""
        y = self.unscale(x)
        if self.kind == "uint8":
            return y.round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        if self.kind == "uint16":
            return y.round().clamp(0, 65535).cpu().numpy().astype(np.uint16)
        return y.cpu().numpy().astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "lo": self.lo, "hi": self.hi}


@dataclass
class Sample:
    image: torch.Tensor  # (C, H, W) float32 in [-1, 1]
    label: int
    class_name: str
    id: str
    mask: torch.Tensor | None = None  # (H, W) int64 indices into mask_values
    condition: int | None = None
    group: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImageDataset(Dataset):
    """Images, labels and optional masks/conditions/groups of one dataset, as tensors.

    ``__getitem__`` returns a dict (collates with the default DataLoader collate):
    ``image`` (C,H,W) float32, ``label`` int64, ``index`` int64 and, when present,
    ``mask`` (H,W) int64 and ``condition`` int64.
    """

    images: torch.Tensor  # (N, C, H, W) float32 in [-1, 1] (volumes: (N, C, D, H, W)), or a lazy DiskArray view
    labels: torch.Tensor  # (N,) int64, indices into class_names
    class_names: list[str]
    ids: list[str]
    masks: torch.Tensor | None = None  # (N, H, W) int64 indices into mask_values (tensor or lazy DiskArray)
    mask_values: list[int] | None = None  # original label value of each mask index; [0] is background
    conditions: torch.Tensor | None = None  # (N,) int64 indices into condition_names
    condition_names: list[str] | None = None
    groups: list[str] | None = None  # patient / case id per sample
    intensity: IntensityInfo = field(default_factory=IntensityInfo)
    meta: dict[str, Any] = field(default_factory=dict)  # source, conversions applied, skipped files, ...
    synthetic: torch.Tensor | None = None  # (N,) bool, True for generated samples (None = all real)

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.labels.shape != (n,):
            raise DataError(f"labels has shape {tuple(self.labels.shape)}, expected ({n},)")
        if len(self.ids) != n:
            raise DataError(f"{len(self.ids)} ids for {n} images")
        if self.masks is not None:
            if self.masks.shape[0] != n or self.masks.shape[1:] != self.images.shape[2:]:
                raise DataError(
                    f"masks have shape {tuple(self.masks.shape)}, images {tuple(self.images.shape)}"
                )
            if self.mask_values is None:
                raise DataError("masks given without mask_values")
        if self.conditions is not None and self.conditions.shape != (n,):
            raise DataError("conditions must have one entry per image")
        if self.groups is not None and len(self.groups) != n:
            raise DataError("groups must have one entry per image")

    # ------------------------------------------------------------------ basic views
    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = {"image": self.images[i], "label": self.labels[i], "index": torch.tensor(i)}
        if self.masks is not None:
            item["mask"] = self.masks[i]
        if self.conditions is not None:
            item["condition"] = self.conditions[i]
        return item

    def sample(self, i: int) -> Sample:
        lab = int(self.labels[i])
        return Sample(
            image=self.images[i],
            label=lab,
            class_name=self.class_names[lab],
            id=self.ids[i],
            mask=None if self.masks is None else self.masks[i],
            condition=None if self.conditions is None else int(self.conditions[i]),
            group=None if self.groups is None else self.groups[i],
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.images.shape[2:])

    @property
    def num_mask_labels(self) -> int:
        return 0 if self.mask_values is None else len(self.mask_values)

    @property
    def num_conditions(self) -> int:
        return 0 if self.condition_names is None else len(self.condition_names)

    def class_counts(self) -> dict[str, int]:
        c = Counter(self.labels.tolist())
        return {name: int(c.get(k, 0)) for k, name in enumerate(self.class_names)}

    def imbalance_ratio(self) -> float:
        counts = [v for v in self.class_counts().values()]
        nz = [v for v in counts if v > 0]
        if not nz:
            return float("nan")
        return max(nz) / min(nz) if min(counts) > 0 else float("inf")

    def info(self) -> "DataInfo":
        return DataInfo(
            channels=self.channels,
            spatial_shape=self.spatial_shape,
            class_names=list(self.class_names),
            mask_values=None if self.mask_values is None else list(self.mask_values),
            condition_names=None if self.condition_names is None else list(self.condition_names),
            intensity=self.intensity,
        )

    # ------------------------------------------------------------------ derived datasets
    def subset(self, indices: Sequence[int] | torch.Tensor | np.ndarray) -> "ImageDataset":
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        il = idx.tolist()
        return replace(
            self,
            images=take_rows(self.images, idx),
            labels=self.labels[idx],
            ids=[self.ids[i] for i in il],
            masks=take_rows(self.masks, idx),
            conditions=None if self.conditions is None else self.conditions[idx],
            groups=None if self.groups is None else [self.groups[i] for i in il],
            synthetic=None if self.synthetic is None else self.synthetic[idx],
            meta=dict(self.meta),
        )

    def is_synthetic(self) -> torch.Tensor:
        return self.synthetic if self.synthetic is not None else torch.zeros(len(self), dtype=torch.bool)

    def concat(self, other: "ImageDataset") -> "ImageDataset":
        """Concatenate two datasets with the same classes, channels, size and mask values."""
        if other.class_names != self.class_names:
            raise DataError(f"class names differ: {self.class_names} vs {other.class_names}")
        if other.images.shape[1:] != self.images.shape[1:]:
            raise DataError(f"image shapes differ: {tuple(self.images.shape[1:])} vs {tuple(other.images.shape[1:])}")
        if (self.masks is None) != (other.masks is None) or self.mask_values != other.mask_values:
            raise DataError("one dataset has masks (or mask values) the other lacks")

        cat_opt = cat_rows  # lazy (disk-backed) rows stay lazy

        groups = None
        if self.groups is not None or other.groups is not None:
            groups = (self.groups or list(self.ids)) + (other.groups or list(other.ids))
        return replace(
            self,
            images=cat_rows(self.images, other.images),
            labels=torch.cat([self.labels, other.labels]),
            ids=list(self.ids) + list(other.ids),
            masks=cat_opt(self.masks, other.masks),
            conditions=cat_opt(self.conditions, other.conditions),
            groups=groups,
            synthetic=torch.cat([self.is_synthetic(), other.is_synthetic()]),
            meta=dict(self.meta),
        )


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about the data it is built for (saved with every run)."""

    channels: int
    spatial_shape: tuple[int, ...]
    class_names: list[str]
    mask_values: list[int] | None = None
    condition_names: list[str] | None = None
    intensity: IntensityInfo = field(default_factory=IntensityInfo)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_mask_labels(self) -> int:
        return 0 if self.mask_values is None else len(self.mask_values)

    @property
    def num_conditions(self) -> int:
        return 0 if self.condition_names is None else len(self.condition_names)

    def to_dict(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "spatial_shape": list(self.spatial_shape),
            "class_names": list(self.class_names),
            "mask_values": self.mask_values,
            "condition_names": self.condition_names,
            "intensity": self.intensity.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataInfo":
        return cls(
            channels=int(d["channels"]),
            spatial_shape=tuple(d["spatial_shape"]),
            class_names=list(d["class_names"]),
            mask_values=d.get("mask_values"),
            condition_names=d.get("condition_names"),
            intensity=IntensityInfo(**d.get("intensity", {})),
        )
