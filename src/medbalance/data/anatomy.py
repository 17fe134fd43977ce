"""Anatomy labels in label maps.

Mask-conditioned generators (SPADE, Red-GAN, pix2pix) are deterministic or nearly so given the label map. With
tumour-only masks the map says nothing about the head outline or the slice orientation, so a generator can only
learn an average anatomy. Red-GAN's BraTS preprocessing therefore adds a "healthy brain" label to every mask
(seed-methods.md 1.2: connected component of the image, label 3). :func:`add_anatomy_label` does the same for
any dataset: background pixels whose image intensity is above a threshold (holes filled, specks removed) get a
new label value, recorded in ``meta["anatomy_values"]`` so that mask sources keep lesions inside the anatomy.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from medbalance.data.dataset import ImageDataset
from medbalance.errors import ConfigError, DataError


def tissue_masks(images: torch.Tensor, threshold: float = -0.8) -> np.ndarray:
    """Boolean (N, H, W) tissue maps: mean over channels > threshold, opened, largest component, holes filled."""
    x = images.float().mean(1).numpy() > threshold
    out = np.zeros_like(x)
    for i in range(x.shape[0]):
        t = ndimage.binary_opening(x[i], iterations=1)
        lab, n = ndimage.label(t)
        if n > 1:
            sizes = ndimage.sum(t, lab, index=range(1, n + 1))
            t = lab == (int(np.argmax(sizes)) + 1)
        out[i] = ndimage.binary_fill_holes(t)
    return out


def add_anatomy_label(ds: ImageDataset, value: int, threshold: float = -0.8) -> ImageDataset:
    """Give background pixels inside the anatomy the label ``value`` (a new mask value)."""
    if ds.masks is None or ds.mask_values is None:
        raise DataError("anatomy_label needs a dataset with label maps", path=ds.meta.get("path"))
    if value in ds.mask_values:
        raise ConfigError(f"anatomy_label {value} is already a mask value ({ds.mask_values}); choose another value")
    if value <= 0:
        raise ConfigError("anatomy_label must be a positive integer (0 is background)")
    new_values = sorted(list(ds.mask_values) + [value])
    lut = torch.tensor([new_values.index(v) for v in ds.mask_values], dtype=torch.int64)
    masks = lut[ds.masks.long()]
    tissue = torch.from_numpy(tissue_masks(ds.images, threshold))
    masks[(masks == 0) & tissue] = new_values.index(value)
    meta = dict(ds.meta)
    meta["anatomy_values"] = sorted(set(meta.get("anatomy_values", [])) | {value})
    meta.setdefault("conversions", []).append(
        f"added anatomy label {value} (image > {threshold} in [-1, 1], holes filled) to every label map"
    )
    from dataclasses import replace

    return replace(ds, masks=masks, mask_values=new_values, meta=meta)
