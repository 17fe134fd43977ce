"""Decode image files once into the on-disk pixel cache, and assemble a lazy (disk-backed) dataset from it.

The manifest and class-folder sources call :func:`decode_items`: with ``data.storage: memory`` it decodes every
file into memory as before; with ``disk`` (or ``auto`` when the decoded float32 images would exceed
:func:`memory_budget`) it streams the files in chunks into a cache folder (see :mod:`medbalance.data.cache`) and
:func:`assemble_disk_dataset` builds an :class:`ImageDataset` whose images and masks are :class:`DiskArray` views.

Both paths apply the same per-file checks, the same dataset-level decisions (target size, channels, storage kind,
intensity range, mask values) and the same arithmetic, so they give the same samples, with two documented
exceptions that exist because a streamed row is written before the whole dataset has been seen:

- resized images are rounded to the source's integer type when stored (at most half a grey level, 1/255 of the
  [-1, 1] range for 8-bit), where the in-memory path keeps the float result of the resize;
- padding (``resize_policy: pad``) is source value 0, where the in-memory path pads with the dataset's lowest
  value; the two agree for integer images scaled by their dtype range (the default), where that value is 0.

Peak memory of a build is one chunk of decoded files, whatever the dataset size.
"""

from __future__ import annotations

import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from numpy.lib.format import open_memmap
from PIL import Image

from medbalance.data.cache import (
    CACHE_FORMAT,
    DiskArray,
    ImageConverter,
    MaskConverter,
    atomic_folder,
    cache_base,
    file_stat,
    hash_key,
    memory_budget,
    read_json,
    write_json,
)
from medbalance.data.config import DataConfig
from medbalance.data.dataset import ImageDataset
from medbalance.data.imageio import (
    _TO_RGB_MODES,
    _UINT16_MODES,
    parallel_map,
)
from medbalance.data.manifest import Decoded, Item, Problem, decode_item, raise_or_skip
from medbalance.data.transforms import (
    choose_target_size,
    decide_dataset,
    decide_mask_values,
    fill_chw,
    fit_images,
    fit_masks,
)
from medbalance.errors import ConfigError, DataError
from medbalance.utils.progress import make_progress

CHUNK = 256  # files decoded per chunk: the build's memory bound
_COLOUR_MODES = ("RGB", "RGBA", "RGBa", "P", "PA") + _TO_RGB_MODES
_FLOAT_MODES = ("F", "I")
_GREY_NOTE = "RGB with identical channels -> grayscale"


def choose_storage(cfg: DataConfig, items: Sequence[Item]) -> str:
    """``memory`` or ``disk`` for these items (``auto``: estimated from the first readable file's header)."""
    if cfg.storage != "auto":
        return cfg.storage
    for it in items[:16]:
        try:
            with Image.open(it.image) as im:
                w, h = im.size
                c = 3 if (im.mode in _COLOUR_MODES and cfg.channels != 1) or cfg.channels == 3 else 1
            break
        except Exception:  # noqa: BLE001 - an unreadable file is reported by the decoder itself
            continue
    else:
        return "memory"
    if cfg.image_size is not None:
        h = w = cfg.image_size
    return "disk" if len(items) * c * h * w * 4 > memory_budget() else "memory"


# --------------------------------------------------------------------------- decoding
@dataclass
class DiskRow:
    """What decoding one file found (the disk path's counterpart of :class:`Decoded`)."""

    row: int  # row in the cache's arrays
    kind: str
    lo: float
    hi: float
    gray: bool
    hw: tuple[int, int]
    notes: list[str] = field(default_factory=list)
    mask_values: set[int] | None = None  # None: the item has no mask file

    @property
    def mask(self) -> bool | None:  # truthy when the row has a mask (the loaders test `d.mask is not None`)
        return True if self.mask_values is not None else None


@dataclass
class Pixels:
    """A complete cache folder: its arrays and the decoding record of every item."""

    folder: Path
    meta: dict[str, Any]
    rows: list[dict[str, Any]]
    hit: bool


def _header(item: Item) -> tuple[tuple[int, int], str, str | None] | None:
    try:
        with Image.open(item.image) as im:
            hw, mode = (im.size[1], im.size[0]), im.mode
        mmode = None
        if item.mask is not None:
            with Image.open(item.mask) as m:
                mmode = m.mode
        return hw, mode, mmode
    except Exception:  # noqa: BLE001 - decoding reports the problem with the file's name
        return None


def _cache_key(cfg: DataConfig, items: Sequence[Item]) -> str:
    return hash_key({
        "format": CACHE_FORMAT,
        "files": [[file_stat(it.image), file_stat(it.mask) if it.mask is not None else None] for it in items],
        "image_size": cfg.image_size,
        "resize_policy": cfg.resize_policy,
        "channels": cfg.channels,
        "mask_values": cfg.mask_values,
    })


class NpyWriter:
    """A ``.npy`` file of known shape, written row block by row block with positioned writes (no memory map, so
    written pages never count in the process's resident memory)."""

    def __init__(self, path: Path, dtype: Any, shape: tuple[int, ...]):
        head = open_memmap(path, mode="w+", dtype=dtype, shape=shape)  # header + a sparse file; no page touched
        self.offset = int(head.offset)
        del head
        self.row_bytes = np.dtype(dtype).itemsize * int(np.prod(shape[1:], dtype=np.int64))
        self.fd = os.open(path, os.O_WRONLY | getattr(os, "O_BINARY", 0))

    def write(self, first_row: int, block: np.ndarray) -> None:
        data = np.ascontiguousarray(block).tobytes()
        pos = self.offset + first_row * self.row_bytes
        view = memoryview(data)
        while view:
            if hasattr(os, "pwrite"):
                k = os.pwrite(self.fd, view, pos)
            else:  # pragma: no cover - Windows
                os.lseek(self.fd, pos, os.SEEK_SET)
                k = os.write(self.fd, view)
            view, pos = view[k:], pos + k

    def close(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)


def _store_image(dst: np.ndarray, x: np.ndarray) -> None:
    if np.issubdtype(dst.dtype, np.integer):
        info = np.iinfo(dst.dtype)
        np.clip(np.rint(x), info.min, info.max, out=x)
    dst[...] = x


def _build(cfg: DataConfig, items: Sequence[Item], folder: Path, description: str) -> None:
    """Decode ``items`` in chunks into ``folder`` (written atomically). Raises the first problem unless skip_bad."""
    declared = cfg.mask_values
    warnings: list[str] = []
    headers = parallel_map(_header, items, f"reading headers ({description})")
    ok_h = [h for h in headers if h is not None]
    if not ok_h:  # every file unreadable: let the decoder name the first one
        shapes = [(1, 1)]
    else:
        shapes = [h[0] for h in ok_h]
    target = choose_target_size(shapes, cfg.image_size, warnings)
    modes = {h[1] for h in ok_h}
    if cfg.channels in (1, 3):
        c_store = int(cfg.channels)
    elif cfg.channels == "auto":
        c_store = 3 if modes & set(_COLOUR_MODES) else 1
    else:
        raise ConfigError(f"channels must be 'auto', 1 or 3, got {cfg.channels!r}")
    if modes & set(_FLOAT_MODES):
        dtype = np.float32
    elif modes & set(_UINT16_MODES):
        dtype = np.uint16
    else:
        dtype = np.uint8
    has_masks = any(it.mask is not None for it in items)
    mmodes = {h[2] for h in ok_h if h[2] is not None}
    mdtype = np.uint8 if mmodes <= {"L", "P", "1", "LA", "RGB", "RGBA", "PA"} else np.int32

    n = len(items)
    rows: list[dict[str, Any]] = [{} for _ in range(n)]
    with atomic_folder(folder) as tmp:
        images = NpyWriter(tmp / "images.npy", dtype, (n, c_store, *target))
        masks = NpyWriter(tmp / "masks.npy", mdtype, (n, *target)) if has_masks else None
        workers = min(8, 2 * (os.cpu_count() or 1))
        with make_progress() as prog, ThreadPoolExecutor(max_workers=workers) as pool:
            task = prog.add_task(f"caching {description}", total=n)
            for s in range(0, n, CHUNK):
                chunk = list(range(s, min(n, s + CHUNK)))
                decoded: list[Decoded] = list(pool.map(lambda i: decode_item(items[i], declared), chunk))
                problems = [d.problem for d in decoded if d.problem is not None]
                if problems and not cfg.skip_bad:
                    raise_or_skip(problems, cfg, {})
                by_hw: dict[tuple[int, int], list[int]] = defaultdict(list)
                for i, d in zip(chunk, decoded):
                    if d.problem is not None:
                        rows[i] = {"problem": d.problem.to_dict()}
                        continue
                    im = d.image
                    a = im.array
                    rows[i] = {"kind": im.kind, "lo": float(a.min()), "hi": float(a.max()), "gray": im.gray,
                               "hw": list(im.hw), "notes": list(im.notes),
                               "mask_values": None if d.mask is None else sorted(int(v) for v in d.mask_values)}
                    by_hw[im.hw].append(i)
                img_chunk = np.zeros((len(chunk), c_store, *target), dtype=dtype)
                mask_chunk = np.zeros((len(chunk), *target), dtype=mdtype) if masks is not None else None
                for hw, idx in by_hw.items():
                    buf = np.empty((len(idx), c_store, *hw), dtype=np.float32)
                    for j, i in enumerate(idx):
                        d = decoded[i - s]
                        fill_chw(buf[j], d.image.array, c_store, dtype == np.uint16 and d.image.kind == "uint8")
                    if tuple(hw) != tuple(target):
                        buf = fit_images(torch.from_numpy(buf), target, cfg.resize_policy, fill=0.0).numpy()
                    for j, i in enumerate(idx):
                        _store_image(img_chunk[i - s], buf[j])
                    if masks is not None:
                        for i in idx:
                            m = decoded[i - s].mask
                            if m is None:
                                continue  # all background (the file was created zero-filled)
                            if tuple(m.shape) != tuple(target):
                                raw = np.array(m, dtype=m.dtype if m.dtype in (np.uint8, np.int32, np.int64) else np.int64)
                                m = fit_masks(torch.from_numpy(raw[None]), target, cfg.resize_policy)[0].numpy()
                            mask_chunk[i - s] = m
                images.write(s, img_chunk)  # one positioned write per chunk: no mapped pages in this process
                if masks is not None:
                    masks.write(s, mask_chunk)
                prog.advance(task, len(chunk))
        images.close()
        if masks is not None:
            masks.close()
        write_json(tmp / "rows.json", rows)
        write_json(tmp / "meta.json", {"format": CACHE_FORMAT, "target": list(target), "channels_stored": c_store,
                                       "dtype": np.dtype(dtype).name, "has_masks": has_masks, "warnings": warnings,
                                       "n": n})


def decode_to_cache(cfg: DataConfig, items: Sequence[Item], description: str) -> Pixels:
    """The cache folder of ``items`` (built on the first call; reused while no source file changes)."""
    folder = cache_base(cfg.cache_dir) / "pixels" / _cache_key(cfg, items)
    meta = read_json(folder / "meta.json")
    hit = meta is not None and meta.get("format") == CACHE_FORMAT and (folder / "rows.json").is_file()
    if not hit:
        try:
            _build(cfg, items, folder, description)
        except OSError as e:
            raise DataError(f"cannot write the pixel cache ({e.strerror or e}); set data.cache_dir or "
                            "MEDBALANCE_CACHE to a writable folder, or data.storage: memory", path=folder) from None
        meta = read_json(folder / "meta.json")
    rows = read_json(folder / "rows.json")
    if meta is None or rows is None:
        raise DataError("the pixel cache folder is incomplete; delete it to rebuild", path=folder)
    return Pixels(folder=folder, meta=meta, rows=rows, hit=hit)


def decode_items(cfg: DataConfig, items: Sequence[Item], description: str, meta: dict[str, Any],
                 declared_mask_values: Sequence[int] | None = None) -> list[tuple[Item, Any]]:
    """``(item, decoded)`` for every usable item, problems raised (or recorded with skip_bad) as the loaders did.

    ``decoded`` is a :class:`Decoded` (in memory) or a :class:`DiskRow` (disk storage; ``meta['storage']``
    says which and ``meta['cache']`` where the cache is)."""
    storage = choose_storage(cfg, items)
    meta["storage"] = storage
    if storage == "memory":
        decoded = parallel_map(lambda it: decode_item(it, declared_mask_values), items, f"loading {description}")
        raise_or_skip([d.problem for d in decoded if d.problem is not None], cfg, meta)
        return [(it, d) for it, d in zip(items, decoded) if d.problem is None]
    px = decode_to_cache(cfg, items, description)
    meta["cache"] = {"path": str(px.folder), "hit": px.hit}
    meta["_pixels"] = px
    problems = [Problem(r["problem"]["path"], r["problem"]["problem"]) for r in px.rows if "problem" in r]
    raise_or_skip(problems, cfg, meta)
    out = []
    for i, (it, r) in enumerate(zip(items, px.rows)):
        if "problem" in r:
            continue
        out.append((it, DiskRow(row=i, kind=r["kind"], lo=r["lo"], hi=r["hi"], gray=r["gray"], hw=tuple(r["hw"]),
                                notes=r["notes"],
                                mask_values=None if r["mask_values"] is None else set(r["mask_values"]))))
    return out


# --------------------------------------------------------------------------- assembly
def assemble_disk_dataset(
    cfg: DataConfig,
    *,
    rows: Sequence[DiskRow],
    labels: Sequence[int],
    class_names: list[str],
    ids: list[str],
    meta: dict[str, Any],
    with_masks: bool = False,
    conditions: Sequence[int] | None = None,
    condition_names: list[str] | None = None,
    groups: list[str] | None = None,
) -> ImageDataset:
    """The disk-path counterpart of :func:`medbalance.data.transforms.assemble_dataset` (same meta fields and
    dataset-level decisions), with :class:`DiskArray` images (and masks)."""
    px: Pixels = meta.pop("_pixels")
    if not rows:
        raise DataError("no images left to load", path=meta.get("path"))
    pm = px.meta
    target, channels, kind, intensity = decide_dataset(cfg, rows, [r.hw for r in rows], [r.lo for r in rows],
                                                       [r.hi for r in rows], ids, meta)
    if list(target) != list(pm["target"]):  # only if skipped files changed the choice of size
        raise DataError(f"the pixel cache was built at {pm['target']}, the usable images call for {list(target)}; "
                        "set data.image_size", path=px.folder)
    if kind == "uint16" and pm["dtype"] == "uint8" or channels > int(pm["channels_stored"]):
        raise DataError("the pixel cache does not match its images; delete it to rebuild", path=px.folder)

    index = np.array([r.row for r in rows], dtype=np.int64)
    images = DiskArray(px.folder / "images.npy", ImageConverter(intensity.lo, intensity.hi, channels),
                       (channels, *target), torch.float32, index=None if len(index) == pm["n"] else index)

    mask_arr, mask_values = None, None
    if with_masks:
        sets = [r.mask_values if r.mask_values is not None else {0} for r in rows]
        mask_values = decide_mask_values(cfg, sets, meta.setdefault("warnings", []))
        mask_arr = DiskArray(px.folder / "masks.npy", MaskConverter(mask_values), target, torch.int64,
                             index=None if len(index) == pm["n"] else index)
    cond_t = None if conditions is None else torch.as_tensor(list(conditions), dtype=torch.int64)
    return ImageDataset(
        images=images,
        labels=torch.as_tensor(list(labels), dtype=torch.int64),
        class_names=list(class_names),
        ids=list(ids),
        masks=mask_arr,
        mask_values=mask_values,
        conditions=cond_t,
        condition_names=condition_names,
        groups=groups,
        intensity=intensity,
        meta=meta,
    )


__all__ = ["DiskRow", "Pixels", "assemble_disk_dataset", "choose_storage", "decode_items", "decode_to_cache",
           "memory_budget"]
