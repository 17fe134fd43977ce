"""Geometry and intensity transforms applied while building an :class:`ImageDataset`.

Geometry (vectorised on batches of same-sized images):

* non-square / off-aspect policy: ``pad`` (to the target aspect with background: -1 for
  images, index 0 for masks), ``stretch`` (plain resize) or ``crop`` (centre crop);
* resize to ``image_size`` (square): images bilinear with antialiasing
  (:func:`torch.nn.functional.interpolate`), masks always nearest (``nearest-exact``);
* mixed sizes and no ``image_size``: every image goes to the most common size (pad policy
  unless another is configured) and a warning is added to ``meta["warnings"]``.
  ``meta["original_shapes"]`` always records ``{"HxW": count}``.

Intensity: ``x_scaled = 2 (x - lo) / (hi - lo) - 1`` with :class:`IntensityInfo`
(``intensity_range='dtype'``: uint8 0..255, uint16 0..65535; ``'data'``: the dataset's
min..max; float images always use the data range). :meth:`IntensityInfo.unscale` /
:meth:`IntensityInfo.to_storage` invert it for export.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medbalance.data.config import DataConfig
from medbalance.data.dataset import ImageDataset, IntensityInfo
from medbalance.data.imageio import (
    LoadedImage,
    MaskEncoder,
    channel_notes,
    count_notes,
    decide_channels,
    infer_mask_values,
    parallel_map,
)
from medbalance.errors import ConfigError, DataError

_LUMA_NP = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601
POLICIES = ("pad", "stretch", "crop")


# --------------------------------------------------------------------------- geometry
def _aspect_box(h: int, w: int, th: int, tw: int, grow: bool) -> tuple[int, int]:
    """Smallest box containing (grow=True) / largest box inside (grow=False) h x w with aspect tw/th."""
    if h * tw == w * th:
        return h, w
    wider = w * th > h * tw  # image is wider than the target aspect
    if grow:
        return (int(round(w * th / tw)), w) if wider else (h, int(round(h * tw / th)))
    return (h, int(round(h * tw / th))) if wider else (int(round(w * th / tw)), w)


def pad_to_aspect(x: torch.Tensor, target_hw: tuple[int, int], fill: float) -> torch.Tensor:
    """Pad ``(..., H, W)`` symmetrically with ``fill`` to the aspect ratio of ``target_hw``."""
    h, w = x.shape[-2:]
    nh, nw = _aspect_box(h, w, *target_hw, grow=True)
    if (nh, nw) == (h, w):
        return x
    top, left = (nh - h) // 2, (nw - w) // 2
    return F.pad(x, (left, nw - w - left, top, nh - h - top), value=fill)


def center_crop_to_aspect(x: torch.Tensor, target_hw: tuple[int, int]) -> torch.Tensor:
    """Centre-crop ``(..., H, W)`` to the aspect ratio of ``target_hw``."""
    h, w = x.shape[-2:]
    nh, nw = _aspect_box(h, w, *target_hw, grow=False)
    top, left = (h - nh) // 2, (w - nw) // 2
    return x[..., top : top + nh, left : left + nw]


def resize_images(x: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize with antialiasing of a float ``(N, C, H, W)`` batch."""
    if tuple(x.shape[-2:]) == tuple(size_hw):
        return x
    return F.interpolate(x, size=size_hw, mode="bilinear", antialias=True, align_corners=False)


def nearest_index(n_in: int, n_out: int) -> torch.Tensor:
    """Source index of each output pixel for ``nearest-exact`` resizing (pixel centres aligned)."""
    src = torch.floor((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out)).long()
    return src.clamp_(0, n_in - 1)


def resize_masks(m: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of an integer ``(N, H, W)`` label batch (values are never mixed).

    Same result as ``F.interpolate(mode="nearest-exact")`` but done by indexing, so it works
    on any integer dtype without a float round trip.
    """
    h, w = m.shape[-2:]
    if (h, w) == tuple(size_hw):
        return m
    rows, cols = nearest_index(h, size_hw[0]), nearest_index(w, size_hw[1])
    if m.device.type == "cpu":  # numpy gather: no intra-op thread pool overhead for this memory-bound op
        a = m.numpy()
        return torch.from_numpy(np.ascontiguousarray(a[..., rows.numpy(), :][..., cols.numpy()]))
    return m.index_select(-2, rows.to(m.device)).index_select(-1, cols.to(m.device))


def fit_images(x: torch.Tensor, target_hw: tuple[int, int], policy: str, fill: float = -1.0) -> torch.Tensor:
    """Apply the aspect policy then resize a float ``(N, C, H, W)`` batch to ``target_hw``."""
    _check_policy(policy)
    if policy == "pad":
        x = pad_to_aspect(x, target_hw, fill)
    elif policy == "crop":
        x = center_crop_to_aspect(x, target_hw)
    return resize_images(x, target_hw)


def fit_masks(m: torch.Tensor, target_hw: tuple[int, int], policy: str) -> torch.Tensor:
    """Same geometry as :func:`fit_images` for an index ``(N, H, W)`` batch (pad with background 0)."""
    _check_policy(policy)
    if policy == "pad":
        m = pad_to_aspect(m, target_hw, 0)
    elif policy == "crop":
        m = center_crop_to_aspect(m, target_hw)
    return resize_masks(m, target_hw)


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ConfigError(f"resize_policy must be one of {', '.join(POLICIES)}, got {policy!r}")


def shape_key(hw: tuple[int, int]) -> str:
    return f"{hw[0]}x{hw[1]}"


def choose_target_size(
    shapes: Sequence[tuple[int, int]], image_size: int | None, warnings: list[str]
) -> tuple[int, int]:
    """``image_size`` as a square, else the common size; mixed sizes -> chosen robustly (with a warning).

    Robust: the most common size, ties broken by the area nearest the median area (then the smaller), so a
    few outliers (one huge scan among small images) never set the size of the whole dataset. A size no other
    image shares is never chosen above the median area."""
    if image_size is not None:
        return int(image_size), int(image_size)
    counts = Counter(shapes)
    areas = sorted(h * w for h, w in shapes)
    median = float(areas[(len(areas) - 1) // 2])  # the lower median: an actual image's area

    def closeness(s: tuple[int, int]) -> float:
        return -abs(math.log(max(s[0] * s[1], 1)) - math.log(max(median, 1.0)))

    target = max(counts, key=lambda s: (counts[s], closeness(s), -(s[0] * s[1]), s))
    if counts[target] == 1 and target[0] * target[1] > median:
        target = min((s for s in counts if s[0] * s[1] <= median), key=lambda s: -closeness(s), default=target)
    if len(counts) > 1:
        n_other = len(shapes) - counts[target]
        big = max(counts, key=lambda s: s[0] * s[1])
        top = max(counts.values())
        how = (f"the most common size {shape_key(target)}" if counts[target] == top
               and sum(1 for v in counts.values() if v == top) == 1 else
               f"{shape_key(target)} (no single most common size: the size nearest the median area, never an "
               f"outlier's)")
        warnings.append(
            f"images have {len(counts)} different sizes and no image_size was given: "
            f"{n_other} image(s) resized to {how}; largest image {shape_key(big)}; set data.image_size to choose"
        )
    return target


# --------------------------------------------------------------------------- intensity
def unify_kind(images: Sequence[LoadedImage]) -> tuple[str, list[str]]:
    """Storage kind of the dataset and notes: uint8+uint16 -> uint16 (8-bit x257), any float -> float."""
    kinds = Counter(im.kind for im in images)
    if set(kinds) <= {"uint8"}:
        return "uint8", []
    if set(kinds) == {"uint16"}:
        return "uint16", []
    if set(kinds) == {"uint8", "uint16"}:
        return "uint16", ["8-bit image rescaled to 16-bit (x257) to match 16-bit images"] * kinds["uint8"]
    n_int = len(images) - kinds["float"]
    return "float", ["integer image treated as float (dataset contains float images)"] * n_int


def intensity_for(
    kind: str, data_lo: float, data_hi: float, intensity_range: str, warnings: list[str]
) -> IntensityInfo:
    """The :class:`IntensityInfo` of a dataset of storage ``kind`` with data range ``data_lo..data_hi``."""
    if intensity_range not in ("dtype", "data"):
        raise ConfigError(f"intensity_range must be 'dtype' or 'data', got {intensity_range!r}")
    if intensity_range == "dtype" and kind in ("uint8", "uint16"):
        hi = 255.0 if kind == "uint8" else 65535.0
        if kind == "uint16" and data_hi < 4096:
            warnings.append(
                f"16-bit images only use values {data_lo:g}..{data_hi:g} of 0..65535, so they occupy a small "
                "part of [-1, 1]; consider intensity_range='data'"
            )
        return IntensityInfo(kind=kind, lo=0.0, hi=hi)
    if kind == "float" and intensity_range == "dtype":
        warnings.append("float images have no dtype range: scaled by the dataset's min..max instead")
    if not data_hi > data_lo:
        raise DataError(f"every image has the same constant value {data_lo:g}; cannot scale intensities")
    return IntensityInfo(kind=kind, lo=float(data_lo), hi=float(data_hi))


def fill_chw(dst: np.ndarray, arr: np.ndarray, channels: int, rescale16: bool = False) -> None:
    """Write a native ``(H, W)`` / ``(H, W, 3)`` array into float32 ``dst`` ``(C, H, W)`` (source units)."""
    if arr.ndim == 2:
        dst[...] = arr  # broadcasts over channels (grayscale replicated)
    elif channels == 1:
        dst[0] = arr @ _LUMA_NP  # ITU-R 601 luma
    else:
        dst[...] = arr.transpose(2, 0, 1)
    if rescale16:
        dst *= 257.0


def build_image_tensor(
    images: Sequence[LoadedImage],
    channels: int,
    target_hw: tuple[int, int],
    policy: str,
    intensity: IntensityInfo,
    kind: str,
    chunk: int = 64,
) -> torch.Tensor:
    """Convert, fit and scale every image into one float32 ``(N, C, th, tw)`` tensor in [-1, 1].

    Geometry is done in source units (padding with ``intensity.lo``, which scales to -1).
    Images already at the target size are copied straight into the output (numpy, on a
    thread pool); the others are resized in vectorised chunks grouped by size. The final
    scaling (same arithmetic as :meth:`IntensityInfo.scale`) runs in place on the whole tensor.
    """
    n = len(images)
    out = torch.empty((n, channels, *target_hw), dtype=torch.float32)
    on = out.numpy()
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, im in enumerate(images):
        groups[im.hw].append(i)

    def rescale(i: int) -> bool:
        return kind == "uint16" and images[i].kind == "uint8"

    def direct(i: int) -> None:
        fill_chw(on[i], images[i].array, channels, rescale(i))

    same = groups.pop(tuple(target_hw), [])
    parallel_map(direct, same, "preparing images")
    for hw, idx in groups.items():
        for s in range(0, len(idx), chunk):
            sel = idx[s : s + chunk]
            buf = np.empty((len(sel), channels, *hw), dtype=np.float32)
            for j, i in enumerate(sel):
                fill_chw(buf[j], images[i].array, channels, rescale(i))
            fitted = fit_images(torch.from_numpy(buf), target_hw, policy, fill=intensity.lo)
            on[sel] = fitted.numpy()
    # in place, same arithmetic as IntensityInfo.scale
    out.sub_(intensity.lo).mul_(2.0 / (intensity.hi - intensity.lo)).sub_(1.0)
    return out


def build_mask_tensor(
    masks: Sequence[np.ndarray],
    mask_values: Sequence[int],
    target_hw: tuple[int, int],
    policy: str,
    chunk: int = 64,
) -> torch.Tensor:
    """Encode raw label maps as indices into ``mask_values`` and fit them into one int64 ``(N, th, tw)``
    tensor (nearest neighbour, padding with background index 0)."""
    enc = MaskEncoder(mask_values)
    n = len(masks)
    out = torch.empty((n, *target_hw), dtype=torch.int64)
    on = out.numpy()
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, m in enumerate(masks):
        groups[m.shape].append(i)
    same = groups.pop(tuple(target_hw), [])
    parallel_map(lambda i: enc(masks[i], out=on[i]), same, "preparing masks")
    for idx in groups.values():
        for s in range(0, len(idx), chunk):
            sel = idx[s : s + chunk]
            raw = np.stack([masks[i] for i in sel])
            if raw.dtype not in (np.uint8, np.int32, np.int64):
                raw = raw.astype(np.int64)
            # geometry on raw values: padding with 0 == background (mask_values[0] is 0)
            fitted = fit_masks(torch.from_numpy(raw), target_hw, policy).numpy()
            for j, i in enumerate(sel):
                enc(fitted[j], out=on[i])
    return out


# --------------------------------------------------------------------------- dataset-level decisions
def decide_dataset(
    cfg: DataConfig,
    images: Sequence[Any],
    shapes: Sequence[tuple[int, int]],
    mins: Sequence[float],
    maxs: Sequence[float],
    ids: Sequence[str],
    meta: dict[str, Any],
    notes: Sequence[str] = (),
) -> tuple[tuple[int, int], int, str, IntensityInfo]:
    """Target size, channels, storage kind and intensity scaling of a dataset, from what decoding found per image
    (``images[i]`` has ``kind``, ``gray`` and ``notes``; ``mins``/``maxs`` in the image's own units). Shared by the
    in-memory builder and the disk cache (``data/diskset.py``), so both decide alike.

    Fills ``meta``: ``original_shapes``, ``source_dtype``, ``channels``, ``image_size``, ``conversions`` (appended,
    with counts) and ``warnings`` (appended)."""
    warnings: list[str] = meta.setdefault("warnings", [])
    conversions: list[str] = meta.setdefault("conversions", [])
    meta["original_shapes"] = {shape_key(k): v for k, v in sorted(Counter(shapes).items())}
    target = choose_target_size(shapes, cfg.image_size, warnings)
    non_square = sum(1 for h, w in shapes if h * target[1] != w * target[0])
    if non_square:
        conversions.append(
            f"aspect ratio differs from {shape_key(target)}: {cfg.resize_policy} "
            f"({non_square} image{'s' if non_square != 1 else ''})"
        )
    channels = decide_channels(images, cfg.channels)
    kind, kind_notes = unify_kind(images)
    all_notes = list(notes) + [n for im in images for n in im.notes] + channel_notes(images, channels) + kind_notes
    conversions.extend(count_notes(all_notes))

    # per-image ranges: data intensity range and constant-image warning
    lo, hi = np.asarray(mins, dtype=np.float64), np.asarray(maxs, dtype=np.float64)
    if kind == "uint16":
        scale8 = np.array([257.0 if im.kind == "uint8" else 1.0 for im in images])
        lo, hi = lo * scale8, hi * scale8
    const = np.flatnonzero(lo == hi)
    if const.size:
        ex = ", ".join(ids[i] for i in const[:3]) + (" ..." if const.size > 3 else "")
        warnings.append(f"{const.size} constant image(s) (every pixel the same value): {ex}")
    intensity = intensity_for(kind, float(lo.min()), float(hi.max()), cfg.intensity_range, warnings)
    meta["source_dtype"] = kind
    meta["channels"] = channels
    meta["image_size"] = list(target)
    return target, channels, kind, intensity


def decide_mask_values(cfg: DataConfig, sets: Sequence[set[int]], warnings: list[str]) -> list[int]:
    """The dataset's mask values (declared, or the union of every mask's values), with the warnings they call for."""
    mask_values = infer_mask_values(sets, cfg.mask_values)
    if {1, 255} <= set(mask_values) and len(mask_values) == 3 and cfg.mask_values is None:
        warnings.append("masks mix 0/1 and 0/255 binary encodings: inferred 3 mask values [0, 1, 255]")
    if len(mask_values) == 1:
        warnings.append("every mask is empty (background only)")
    return mask_values


# --------------------------------------------------------------------------- assembly
def assemble_dataset(
    cfg: DataConfig,
    *,
    images: Sequence[LoadedImage],
    labels: Sequence[int],
    class_names: list[str],
    ids: list[str],
    meta: dict[str, Any],
    masks: Sequence[np.ndarray] | None = None,
    mask_value_sets: Sequence[set[int]] | None = None,
    conditions: Sequence[int] | None = None,
    condition_names: list[str] | None = None,
    groups: list[str] | None = None,
    notes: Sequence[str] = (),
) -> ImageDataset:
    """Channels, geometry, intensity and masks of decoded samples -> :class:`ImageDataset`.

    Fills ``meta``: ``original_shapes``, ``source_dtype``, ``channels``, ``image_size``,
    ``conversions`` (appended, with counts) and ``warnings`` (appended).
    """
    if not images:
        raise DataError("no images left to load", path=meta.get("path"))
    mins = [float(im.array.min()) for im in images]
    maxs = [float(im.array.max()) for im in images]
    target, channels, kind, intensity = decide_dataset(cfg, images, [im.hw for im in images], mins, maxs, ids, meta,
                                                       notes)

    img_t = build_image_tensor(images, channels, target, cfg.resize_policy, intensity, kind)

    mask_t, mask_values = None, None
    if masks is not None:
        sets = mask_value_sets if mask_value_sets is not None else [set(np.unique(m).tolist()) for m in masks]
        mask_values = decide_mask_values(cfg, sets, meta.setdefault("warnings", []))
        mask_t = build_mask_tensor(masks, mask_values, target, cfg.resize_policy)

    cond_t = None if conditions is None else torch.as_tensor(list(conditions), dtype=torch.int64)
    return ImageDataset(
        images=img_t,
        labels=torch.as_tensor(list(labels), dtype=torch.int64),
        class_names=list(class_names),
        ids=list(ids),
        masks=mask_t,
        mask_values=mask_values,
        conditions=cond_t,
        condition_names=condition_names,
        groups=groups,
        intensity=intensity,
        meta=meta,
    )


__all__ = [
    "assemble_dataset",
    "build_image_tensor",
    "build_mask_tensor",
    "center_crop_to_aspect",
    "choose_target_size",
    "decide_dataset",
    "decide_mask_values",
    "fit_images",
    "fit_masks",
    "intensity_for",
    "pad_to_aspect",
    "resize_images",
    "resize_masks",
    "unify_kind",
]
