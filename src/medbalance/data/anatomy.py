"""Anatomy labels in label maps.

Mask-conditioned generators (SPADE, Red-GAN, pix2pix) are deterministic or nearly so given the label map. With
tumour-only masks the map says nothing about the head outline or the slice orientation, so a generator can only
learn an average anatomy. Red-GAN's BraTS preprocessing therefore adds a "healthy brain" label to every mask
(Red-GAN code, ``generate_dataset.py``: connected component of the image, label 3). :func:`add_anatomy_label` does the same for
any dataset: background pixels whose image intensity is above a threshold (holes filled, specks removed) get a
new label value, recorded in ``meta["anatomy_values"]`` so that mask sources keep lesions inside the anatomy.

With ``levels > 1`` the anatomy is split into ``levels`` labels (``value, value+1, ...``) by per-image intensity
quantiles of the lightly smoothed image inside the tissue: a crude tissue map (dark / mid / bright tissue) standing
in for the anatomical label maps (grey matter, white matter, CSF, ...) that Shin et al. 2018 condition on. It tells
a mask-conditioned generator where the ventricles, skull and brain are, at the cost of revealing more of the
source image's layout than a single label (relevant when the synthetic set is meant to anonymise).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

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


def lesion_indices(mask_values: Sequence[int], anatomy_values: Iterable[int] | None) -> list[int]:
    """Indices (into ``mask_values``) of the lesion labels: every non-background label that is not anatomy."""
    anat = set(anatomy_values or [])
    return [i for i, v in enumerate(mask_values) if i > 0 and v not in anat]


def tissue_levels(images: torch.Tensor, tissue: np.ndarray, levels: int, sigma: float = 1.0) -> np.ndarray:
    """Integer (N, H, W) level in ``0..levels-1`` of every tissue pixel: per-image intensity quantiles (equal
    pixel counts per level) of the channel mean smoothed with a Gaussian of ``sigma`` pixels; -1 outside tissue."""
    x = images.float().mean(1).numpy()
    out = np.full(x.shape, -1, dtype=np.int64)
    qs = np.linspace(0, 1, levels + 1)[1:-1]
    for i in range(x.shape[0]):
        t = tissue[i]
        if not t.any():
            continue
        sm = ndimage.gaussian_filter(x[i], sigma) if sigma > 0 else x[i]
        edges = np.quantile(sm[t], qs)
        out[i][t] = np.searchsorted(edges, sm[t], side="right")
    return out


def add_anatomy_label(ds: ImageDataset, value: int, threshold: float = -0.8, levels: int = 1) -> ImageDataset:
    """Give background pixels inside the anatomy the label ``value`` (a new mask value), or, with ``levels`` > 1,
    the labels ``value .. value+levels-1`` by intensity level (see the module docstring)."""
    if ds.masks is None or ds.mask_values is None:
        raise DataError("anatomy_label needs a dataset with label maps", path=ds.meta.get("path"))
    if levels < 1:
        raise ConfigError(f"anatomy_levels must be >= 1, got {levels}")
    if value <= 0:
        raise ConfigError("anatomy_label must be a positive integer (0 is background)")
    added = list(range(value, value + levels))
    clash = sorted(set(added) & set(ds.mask_values))
    if clash:
        what = (f"anatomy_label {value}" if levels == 1 else
                f"anatomy_label {value} with anatomy_levels {levels} needs {value}..{added[-1]}, but {clash}")
        raise ConfigError(f"{what} {'is already a mask value' if len(clash) == 1 else 'are already mask values'} "
                          f"({ds.mask_values}); choose another value")
    new_values = sorted(list(ds.mask_values) + added)
    lut = torch.tensor([new_values.index(v) for v in ds.mask_values], dtype=torch.int64)
    masks = lut[ds.masks.long()]
    tissue = tissue_masks(ds.images, threshold)
    free = (masks == 0) & torch.from_numpy(tissue)
    # level of every free tissue pixel (all 0 with one level), mapped to the index of its new mask value
    lvl = torch.from_numpy(tissue_levels(ds.images, tissue, levels)) if levels > 1 else torch.zeros_like(masks)
    masks[free] = torch.tensor([new_values.index(v) for v in added])[lvl[free]]
    how = (f"added anatomy label {value}" if levels == 1 else
           f"added anatomy labels {value}..{added[-1]} ({levels} per-image intensity quantile levels)")
    meta = dict(ds.meta)
    meta["anatomy_values"] = sorted(set(meta.get("anatomy_values", [])) | set(added))
    meta.setdefault("conversions", []).append(
        f"{how} (image > {threshold} in [-1, 1], holes filled) to every label map"
    )
    from dataclasses import replace

    return replace(ds, masks=masks, mask_values=new_values, meta=meta)


def whole_lesion(ds: ImageDataset) -> ImageDataset:
    """Masks -> binary whole lesion (every lesion label; anatomy labels count as background), mask_values [0, 1]
    (the paper's 'all' task)."""
    if ds.masks is None:
        raise DataError("feature augmentation trains its segmentor on lesion masks, but the dataset has none "
                        "(give a trained segmentor with --segmentor)", path=ds.meta.get("path"))
    lesion = torch.tensor(lesion_indices(ds.mask_values or [], ds.meta.get("anatomy_values")), dtype=torch.long)
    # anatomy labels (e.g. the phantom's intracranial space, Red-GAN's brain label) are background here
    meta = {k: v for k, v in ds.meta.items() if k != "anatomy_values"}
    return replace(ds, masks=torch.isin(ds.masks, lesion).long(), mask_values=[0, 1], meta=meta)
