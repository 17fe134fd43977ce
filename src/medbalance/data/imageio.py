"""Reading and writing 2D images and label maps with Pillow.

Images
    PNG, JPEG, BMP and TIFF; 8-bit (``L``, ``P``, ``RGB``, ...), 16-bit (``I;16``, ``I;16B``,
    ``I;16L``, ``I`` with values in 0..65535) and float (``F``, ``I`` outside 0..65535).
    :func:`read_image` returns the image in its *native* form (grayscale ``(H, W)`` or colour
    ``(H, W, 3)``) and the list of per-image conversions applied:

    * ``1`` (bilevel) -> 8-bit 0/255
    * ``P`` (palette) -> grayscale when every used palette entry has R == G == B, else RGB
    * ``LA`` / ``RGBA`` / palette transparency -> the alpha channel is dropped
    * ``RGB`` whose three channels are identical -> grayscale (no information is lost)
    * ``CMYK`` / ``YCbCr`` / ``LAB`` / ``HSV`` -> RGB

    :func:`unify_channels` then makes the dataset all 1-channel or all 3-channel
    (``channels='auto'``: 1 if every image is grayscale, else 3 with grayscale replicated;
    ``channels=1``: colour -> ITU-R 601 luma ``0.299 R + 0.587 G + 0.114 B``).

Masks
    :func:`read_mask` returns an integer ``(H, W)`` label map (binary 0/255, 0/1 or
    multi-label). :func:`encode_masks` checks the values against the declared set (or infers
    the union over the dataset) and stores them as indices into ``mask_values``
    (``mask_values[0] == 0`` is background).

Writers (used by export)
    :func:`write_png` (8/16-bit, atomic) and :func:`write_mask_png`.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from medbalance.errors import ConfigError, DataError
from medbalance.utils.imaging import png_bytes
from medbalance.utils.io import atomic_write_bytes
from medbalance.utils.progress import make_progress

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601

_UINT16_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_TO_RGB_MODES = ("CMYK", "YCbCr", "LAB", "HSV", "RGBX")

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class LoadedImage:
    """One decoded image in native form.

    ``array`` is ``(H, W)`` (grayscale) or ``(H, W, 3)`` (colour) with dtype uint8
    (``kind='uint8'``), uint16 (``kind='uint16'``) or float32 (``kind='float'``).
    ``notes`` lists the conversions applied while reading (aggregated into
    ``meta["conversions"]`` by the dataset builders).
    """

    array: np.ndarray
    kind: str
    mode: str
    notes: list[str] = field(default_factory=list)

    @property
    def gray(self) -> bool:
        return self.array.ndim == 2

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.array.shape[0]), int(self.array.shape[1])


def _problem(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"{type(e).__name__}: {msg}"


DEFAULT_MAX_IMAGE_PIXELS = 40_000_000  # well below Pillow's decompression-bomb limit (~179 M pixels)


def max_image_pixels() -> int:
    """The per-image pixel limit: ``MEDBALANCE_MAX_IMAGE_PIXELS`` (environment) or 40 M pixels (e.g. 6300 x 6300).
    A larger image is refused before it is decoded (a 12000 x 12000 PNG of 445 KB would take 144 MB per
    channel as uint8 and 0.6 GB as float32)."""
    raw = os.environ.get("MEDBALANCE_MAX_IMAGE_PIXELS", "").strip()
    if not raw:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        v = int(float(raw))
    except ValueError:
        raise DataError(f"MEDBALANCE_MAX_IMAGE_PIXELS={raw!r} is not a number") from None
    if v < 1:
        raise DataError(f"MEDBALANCE_MAX_IMAGE_PIXELS={raw!r} must be positive")
    return v


def _open(path: Path, what: str) -> Image.Image:
    if not path.exists():
        raise DataError(f"{what} file not found", path=path)
    if not path.is_file():
        raise DataError(f"{what} path is not a file", path=path)
    try:
        img = Image.open(path)
        w, h = img.size  # from the header: checked before any pixel is decoded
        limit = max_image_pixels()
        if w * h > limit:
            raise DataError(
                f"{what} is {w} x {h} = {w * h:,} pixels, over the per-image limit of {limit:,} pixels "
                f"(raise it with MEDBALANCE_MAX_IMAGE_PIXELS if this image is genuine)", path=path)
        img.load()
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read {what}: not a readable image ({_problem(e)})", path=path) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise DataError(f"cannot read {what}: corrupt or truncated file ({_problem(e)})", path=path) from None
    n_frames = getattr(img, "n_frames", 1)
    if n_frames > 1:
        raise DataError(f"{what} has {n_frames} frames; 2D single-frame images expected", path=path)
    return img


def _palette_lut(img: Image.Image) -> np.ndarray:
    pal = img.getpalette("RGB") or []
    pal = np.asarray(pal, dtype=np.uint8)
    pal = np.pad(pal, (0, max(0, 768 - pal.size)))[:768]
    return pal.reshape(256, 3)


def _equal_channels(rgb: np.ndarray) -> bool:
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))


def decode_image(img: Image.Image, path: Path | str = "<image>") -> LoadedImage:
    """Convert an opened Pillow image to :class:`LoadedImage` (see module doc for the rules)."""
    mode = img.mode
    notes: list[str] = []
    if mode == "L":
        arr, kind = np.asarray(img, dtype=np.uint8), "uint8"
    elif mode == "1":
        arr, kind = np.asarray(img, dtype=bool).astype(np.uint8) * 255, "uint8"
        notes.append("1-bit image -> 8-bit 0/255")
    elif mode == "P" or mode == "PA":
        idx = np.asarray(img.convert("P") if mode == "PA" else img, dtype=np.uint8)
        lut = _palette_lut(img)
        used = lut[np.unique(idx)]
        has_alpha = mode == "PA" or "transparency" in img.info
        if np.all(used[:, 0] == used[:, 1]) and np.all(used[:, 0] == used[:, 2]):
            arr = lut[:, 0][idx]
            notes.append("palette image with grey palette -> grayscale")
        else:
            arr = lut[idx]
            notes.append("palette image with colour palette -> RGB")
        kind = "uint8"
        if has_alpha:
            notes.append("palette transparency dropped")
    elif mode == "LA" or mode == "La":
        arr, kind = np.asarray(img, dtype=np.uint8)[..., 0].copy(), "uint8"
        notes.append("LA -> grayscale (alpha channel dropped)")
    elif mode in ("RGB", "RGBA", "RGBa") or mode in _TO_RGB_MODES:
        if mode in _TO_RGB_MODES:
            notes.append(f"{mode} -> RGB")
            img = img.convert("RGB")
        a = np.asarray(img, dtype=np.uint8)
        if a.shape[-1] == 4:
            notes.append(f"{mode} -> RGB (alpha channel dropped)")
            a = a[..., :3]
        if _equal_channels(a):
            arr = a[..., 0].copy()
            notes.append("RGB with identical channels -> grayscale")
        else:
            arr = np.ascontiguousarray(a)
        kind = "uint8"
    elif mode in _UINT16_MODES:
        arr, kind = np.asarray(img).astype(np.uint16), "uint16"  # astype: native byte order
    elif mode == "I":
        a = np.asarray(img, dtype=np.int32)
        if a.size and a.min() >= 0 and a.max() <= 65535:
            arr, kind = a.astype(np.uint16), "uint16"
            notes.append("32-bit integer image with values in 0..65535 -> 16-bit")
        else:
            arr, kind = a.astype(np.float32), "float"
            notes.append("32-bit integer image with values outside 0..65535 -> float")
    elif mode == "F":
        arr, kind = np.asarray(img, dtype=np.float32).copy(), "float"
    else:
        raise DataError(f"unsupported image mode {mode!r}", path=path)
    if kind == "float" and not np.all(np.isfinite(arr)):
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(np.isinf(arr).sum())
        raise DataError(f"image contains {n_nan} NaN and {n_inf} infinite values", path=path)
    if arr.size == 0:
        raise DataError(f"image is empty (size {img.size})", path=path)
    return LoadedImage(array=arr, kind=kind, mode=mode, notes=notes)


def read_image(path: str | Path) -> LoadedImage:
    """Read one image (PNG/JPEG/BMP/TIFF, 8/16-bit/float). Raises :class:`DataError` naming the file."""
    path = Path(path)
    with _open(path, "image") as img:
        return decode_image(img, path)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a label map as an integer ``(H, W)`` array of the stored label values.

    Palette masks give their palette *indices* (the usual convention for label PNGs), bilevel
    masks 0/255. Colour masks are accepted only when all channels are equal.
    """
    path = Path(path)
    with _open(path, "mask") as img:
        mode = img.mode
        if mode in ("L", "P"):
            return np.asarray(img, dtype=np.uint8)
        if mode == "1":
            return np.asarray(img, dtype=bool).astype(np.uint8) * 255
        if mode in _UINT16_MODES:
            return np.asarray(img).astype(np.uint16)
        if mode == "I":
            return np.asarray(img, dtype=np.int32).astype(np.int64)
        if mode == "F":
            a = np.asarray(img, dtype=np.float32)
            if not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a)):
                raise DataError("float mask with non-integer values; masks must be integer label maps", path=path)
            return a.astype(np.int64)
        if mode in ("LA", "RGB", "RGBA", "PA"):
            a = np.asarray(img.convert("RGB") if mode == "PA" else img, dtype=np.uint8)
            a = a[..., :1] if mode == "LA" else a[..., :3]
            if a.shape[-1] == 3 and not _equal_channels(a):
                raise DataError(
                    f"colour mask ({mode}, channels differ); masks must be single-channel integer label maps",
                    path=path,
                )
            return a[..., 0].copy()
        raise DataError(f"unsupported mask mode {mode!r}", path=path)


def mask_value_set(mask: np.ndarray) -> set[int]:
    """Distinct values of an integer mask (bincount for 8/16-bit masks: fast)."""
    if mask.dtype in (np.uint8, np.uint16):
        return set(np.flatnonzero(np.bincount(mask.ravel())).tolist())
    return set(np.unique(mask).tolist())


# --------------------------------------------------------------------------- dataset-wide steps
def count_notes(notes: Iterable[str]) -> list[str]:
    """``["a", "a", "b"]`` -> ``["a: 2 images", "b: 1 image"]`` (first-seen order)."""
    c = Counter(notes)
    return [f"{k}: {v} image{'s' if v != 1 else ''}" for k, v in c.items()]


def decide_channels(images: Sequence[LoadedImage], channels: str | int) -> int:
    if channels == "auto":
        return 1 if all(im.gray for im in images) else 3
    if channels in (1, 3):
        return int(channels)
    raise ConfigError(f"channels must be 'auto', 1 or 3, got {channels!r}")


def to_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """Native ``(H, W)`` / ``(H, W, 3)`` array -> float32 ``(C, H, W)`` with ``C == channels``."""
    a = arr.astype(np.float32, copy=False)
    if a.ndim == 2:
        a = a[None]
        return np.repeat(a, 3, axis=0) if channels == 3 else a
    if channels == 1:
        return np.tensordot(_LUMA, a, axes=([0], [2]))[None].astype(np.float32, copy=False)
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def channel_notes(images: Sequence[LoadedImage], channels: int) -> list[str]:
    """Per-image notes of the dataset-level channel conversion."""
    out = []
    for im in images:
        if channels == 3 and im.gray:
            out.append("grayscale replicated to 3 channels")
        elif channels == 1 and not im.gray:
            out.append("RGB -> grayscale (ITU-R 601 luma 0.299R+0.587G+0.114B)")
    return out


def infer_mask_values(value_sets: Iterable[set[int]], declared: Sequence[int] | None) -> list[int]:
    """``declared`` (validated: starts with background 0) or the sorted union of ``value_sets`` with 0 first."""
    if declared is not None:
        return validate_declared_mask_values(declared)
    union: set[int] = {0}
    for s in value_sets:
        union |= s
    return sorted(union)


class MaskEncoder:
    """Maps label values to indices into ``values`` (lookup table for small non-negative values)."""

    def __init__(self, values: Sequence[int]):
        self.values = [int(v) for v in values]
        vmin, vmax = min(self.values), max(self.values)
        self.lut = None
        if vmin >= 0 and vmax < (1 << 20):
            self.lut = np.zeros(vmax + 1, dtype=np.int64)
            self.lut[np.asarray(self.values)] = np.arange(len(self.values), dtype=np.int64)
        else:
            self.order = np.argsort(self.values)
            self.sorted = np.asarray(self.values)[self.order]

    def __call__(self, mask: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Indices of ``mask`` (int64), written into ``out`` when given. Values must be in ``values``."""
        if len(self.values) == 2 and self.values[0] == 0:  # binary: index = (value != 0), fastest path
            res = mask != 0
        elif self.lut is not None:
            res = self.lut[mask]
        else:
            res = self.order[np.searchsorted(self.sorted, mask)]
        if out is None:
            return res.astype(np.int64, copy=False)
        np.copyto(out, res, casting="unsafe")
        return out


def encode_masks(
    masks: Sequence[np.ndarray],
    value_sets: Sequence[set[int]],
    declared: Sequence[int] | None,
) -> tuple[list[int], list[np.ndarray]]:
    """Map label values to indices into ``mask_values`` (see :func:`infer_mask_values`).

    Values outside a declared set must have been rejected per file already (see
    :func:`check_mask_values`). Returns ``(mask_values, int64 index arrays)``.
    """
    values = infer_mask_values(value_sets, declared)
    enc = MaskEncoder(values)
    return values, [enc(m) for m in masks]


def validate_declared_mask_values(declared: Sequence[int]) -> list[int]:
    values = [int(v) for v in declared]
    if not values or values[0] != 0:
        raise ConfigError(f"mask_values must start with the background value 0, got {values}")
    if len(set(values)) != len(values):
        raise ConfigError(f"mask_values has duplicates: {values}")
    return values


def check_mask_values(values: set[int], declared: Sequence[int] | None, path: Path | str) -> None:
    if declared is None:
        return
    extra = sorted(values - set(int(v) for v in declared))
    if extra:
        shown = ", ".join(str(v) for v in extra[:10]) + (" ..." if len(extra) > 10 else "")
        raise DataError(
            f"mask values {{{shown}}} are outside the declared mask_values {list(declared)}", path=path
        )


# --------------------------------------------------------------------------- parallel map
def parallel_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    description: str,
    workers: int | None = None,
) -> list[R]:
    """``[fn(x) for x in items]`` on a thread pool (Pillow/numpy release the GIL), with progress.

    Results keep the input order. ``fn`` should catch its own expected errors; any exception
    propagates.
    """
    n = len(items)
    if workers is None:
        workers = min(8, 2 * (os.cpu_count() or 1))
    if n == 0:
        return []
    if workers <= 1 or n < 16:
        return [fn(x) for x in items]
    results: list[R] = [None] * n  # type: ignore[list-item]
    chunk = max(1, min(64, n // (workers * 4) or 1))
    starts = list(range(0, n, chunk))

    def run(s: int) -> int:
        for i in range(s, min(n, s + chunk)):
            results[i] = fn(items[i])
        return min(n, s + chunk) - s

    with ThreadPoolExecutor(max_workers=workers) as ex, make_progress() as prog:
        task = prog.add_task(description, total=n)
        for done in ex.map(run, starts):
            prog.advance(task, done)
    return results


# --------------------------------------------------------------------------- writers
def _hw_c(array: np.ndarray, path: Path) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] != 3):
        raise DataError(f"cannot write array of shape {a.shape} as PNG; expected (H, W) or (H, W, 3)", path=path)
    return a


def _check_range(a: np.ndarray, hi: int, path: Path) -> None:
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)):
            raise DataError("cannot write PNG: array has NaN/inf values", path=path)
        if not np.array_equal(a, np.round(a)):
            raise DataError("cannot write PNG: float array with non-integer values (round first)", path=path)
    elif a.dtype.kind not in "uib":
        raise DataError(f"cannot write PNG from dtype {a.dtype}", path=path)
    if a.size and (a.min() < 0 or a.max() > hi):
        raise DataError(f"cannot write PNG: values {a.min()}..{a.max()} outside 0..{hi}", path=path)


def write_png(path: str | Path, array: np.ndarray, bits: int = 8) -> Path:
    """Write an (H, W) grayscale or (H, W, 3) RGB integer array as an 8- or 16-bit PNG, atomically.

    Values must already be integers in 0..255 (bits=8) or 0..65535 (bits=16); 16-bit is
    grayscale only (Pillow cannot write 48-bit RGB PNGs).
    """
    path = Path(path)
    if bits not in (8, 16):
        raise ConfigError(f"bits must be 8 or 16, got {bits}")
    a = _hw_c(array, path)
    _check_range(a, 255 if bits == 8 else 65535, path)
    if bits == 16 and a.ndim == 3:
        raise DataError("16-bit PNG export supports grayscale only (got RGB)", path=path)
    return atomic_write_bytes(path, png_bytes(a.astype(np.uint8 if bits == 8 else np.uint16)))  # L/RGB or I;16


def write_mask_png(path: str | Path, mask_values_array: np.ndarray) -> Path:
    """Write a label map of *original label values* (not indices): 8-bit if all values <= 255, else 16-bit."""
    path = Path(path)
    a = np.asarray(mask_values_array)
    if a.ndim != 2:
        raise DataError(f"mask must be (H, W), got shape {a.shape}", path=path)
    _check_range(a, 65535, path)
    bits = 8 if (a.size == 0 or a.max() <= 255) else 16
    return write_png(path, a, bits=bits)


__all__ = [
    "IMAGE_EXTENSIONS",
    "LoadedImage",
    "channel_notes",
    "check_mask_values",
    "count_notes",
    "decide_channels",
    "decode_image",
    "MaskEncoder",
    "encode_masks",
    "infer_mask_values",
    "mask_value_set",
    "parallel_map",
    "read_image",
    "read_mask",
    "to_channels",
    "validate_declared_mask_values",
    "write_mask_png",
    "write_png",
]
