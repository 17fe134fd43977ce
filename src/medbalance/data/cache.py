"""On-disk caches of decoded pixels, shared by every file-based source, and the lazy arrays that read them.

A dataset too large for memory (``data.storage: disk``, or ``auto`` above the memory budget) is decoded once,
in chunks, into a cache folder under ``data.cache_dir`` / ``$MEDBALANCE_CACHE`` / ``~/.cache/medbalance``:
``images.npy`` in the source's storage type (uint8, uint16, or float32 for float sources) at the dataset's
geometry, ``masks.npy`` with the raw label values, and ``rows.json`` with what every row's decoding found
(kind, value range, conversions, mask values, or the problem that made it unusable). The folder name is a hash of
the decoding options and of every source file's path, size and modification time: a changed, added or removed
file gives a new key, so a stale cache is never read; an unchanged dataset is never decoded twice. Folders are
written under a temporary name and renamed when complete: an interrupted build leaves no cache that looks finished.

:class:`DiskArray` is the read side: a read-only, tensor-like view of rows of a ``.npy`` file, read with
positioned reads rather than a memory map, that converts on access (images: scaled to float32 [-1, 1]; masks: raw values -> int64 mask indices). Only the rows a
batch asks for are read, so memory stays bounded by the batch, not the dataset; the OS page cache keeps hot rows.
The NIfTI slice cache (``data/nifti.py``) uses the same folder primitives.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from medbalance.errors import ConfigError

CACHE_FORMAT = 1  # bump when the layout of a pixel cache folder changes


# --------------------------------------------------------------------------- folders
def cache_base(cache_dir: str | None = None) -> Path:
    """``cache_dir``, else ``$MEDBALANCE_CACHE``, else ``~/.cache/medbalance``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    env = os.environ.get("MEDBALANCE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "medbalance"


def file_stat(p: Path) -> list[Any]:
    """``[resolved path, size, mtime_ns]``: what identifies a source file's content for a cache key."""
    st = p.stat()
    return [str(p.resolve()), st.st_size, st.st_mtime_ns]


def hash_key(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@contextlib.contextmanager
def atomic_folder(folder: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; rename it to ``folder`` when the block ends without error, delete it
    otherwise. If another process completed ``folder`` first, its copy is kept and ours is dropped."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
    try:
        yield tmp
        try:
            os.replace(tmp, folder)
        except OSError:  # folder exists (written by another process meanwhile)
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj))


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- lazy arrays
def _rows(key: Any, n: int) -> np.ndarray | slice | int:
    """Normalise a first-axis index (int, slice, tensor, array, list, bool mask) to int, slice or int64 array."""
    if isinstance(key, (int, np.integer)):
        k = int(key)
        if not -n <= k < n:
            raise IndexError(f"index {k} is out of bounds for {n} rows")
        return k % n
    if isinstance(key, slice):
        return key
    if isinstance(key, torch.Tensor):
        key = key.detach().cpu().numpy()
    a = np.asarray(key)
    if a.dtype == bool:
        if a.shape != (n,):
            raise IndexError(f"boolean index of shape {a.shape} for {n} rows")
        return np.flatnonzero(a)
    if a.ndim == 0:
        return _rows(int(a), n)
    a = a.astype(np.int64, copy=False)
    return np.where(a < 0, a + n, a)


class LazyRows:
    """The tensor-like surface shared by the lazy views: ``shape``, ``len``, ``dim()``, first-axis indexing that
    reads only the requested rows, chunked iteration and explicit :meth:`materialize`.

    Anything else a tensor offers (``x.min()``, ``torch.cat([x, t])``, ``np.asarray(x)``) still works: it
    materialises the whole view first, and warns once when that exceeds the memory budget, so code written for
    in-memory datasets stays correct on disk-backed ones while the hot paths (batches, chunks) stay lazy."""

    row_shape: tuple[int, ...]
    dtype: torch.dtype
    _warned = False

    def read(self, rows: np.ndarray | slice | int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def take(self, indices: Any) -> "LazyRows":  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def shape(self) -> torch.Size:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        return int(self.shape[0])

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    def dim(self) -> int:
        return self.ndim

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def __getitem__(self, key: Any) -> torch.Tensor:
        rest: tuple = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        rows = _rows(key, len(self))
        out = self.read(rows)
        if not rest:
            return out
        return out[rest] if isinstance(rows, int) else out[(slice(None), *rest)]

    def chunks(self, size: int = 256) -> Iterator[torch.Tensor]:
        for s in range(0, len(self), size):
            yield self[s : s + size]

    def materialize(self, chunk: int = 1024) -> torch.Tensor:
        """The whole view as one tensor (reads everything: only for data that fits in memory)."""
        nbytes = int(np.prod(tuple(self.shape))) * torch.empty((), dtype=self.dtype).element_size()
        if not self._warned and nbytes > memory_budget():
            warnings.warn(f"materialising {nbytes / 2**30:.1f} GiB of disk-backed rows ({self!r}) in memory",
                          ResourceWarning, stacklevel=3)
            self._warned = True
        out = torch.empty(tuple(self.shape), dtype=self.dtype)
        for s in range(0, len(self), chunk):
            out[s : s + chunk] = self[s : s + chunk]
        return out

    def contiguous(self, *_: Any, **__: Any) -> torch.Tensor:
        return self.materialize()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self.materialize().numpy()
        return a if dtype is None else a.astype(dtype)

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        def mat(x: Any) -> Any:
            if isinstance(x, LazyRows):
                return x.materialize()
            if isinstance(x, (list, tuple)):
                return type(x)(mat(v) for v in x)
            return x

        return func(*mat(args), **{k: mat(v) for k, v in (kwargs or {}).items()})

    def _op(name: str) -> Any:  # noqa: N805 - builds the operator methods below
        def op(self: "LazyRows", *args: Any) -> Any:
            return getattr(self.materialize(), name)(*args)

        op.__name__ = name
        return op

    # arithmetic and comparison operators materialise too (== and != are left to object identity, so that
    # datasets holding lazy views still compare as dataclasses)
    for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__",
                  "__rtruediv__", "__neg__", "__abs__", "__gt__", "__ge__", "__lt__", "__le__", "__and__", "__or__",
                  "__invert__", "__pow__"):
        locals()[_name] = _op(_name)
    del _name, _op

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("row_shape", "dtype", "index", "parts", "path", "convert", "offsets"):
            raise AttributeError(name)
        return getattr(self.materialize(), name)  # any other tensor method, on the materialised rows


def memory_budget() -> int:
    """Bytes of decoded images above which ``data.storage: auto`` keeps a dataset on disk, and above which
    materialising a lazy view warns: ``MEDBALANCE_MEMORY_BUDGET_GB`` (default 2)."""
    raw = os.environ.get("MEDBALANCE_MEMORY_BUDGET_GB", "").strip()
    try:
        gb = float(raw) if raw else 2.0
    except ValueError:
        raise ConfigError(f"MEDBALANCE_MEMORY_BUDGET_GB={raw!r} is not a number") from None
    return int(gb * (1 << 30))


class NpyRows:
    """Rows of a C-ordered ``.npy`` file read with positioned reads (``os.pread``), not a memory map.

    A memory map would count every row it has touched in the process's resident memory (a full pass over a
    12 GB cache shows as 12 GB RSS); positioned reads copy only the rows asked for, and the file's pages stay in
    the kernel's page cache, shared and reclaimable. Consecutive rows are read in one call."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if fortran:
            raise ValueError(f"{path}: Fortran-ordered arrays are not supported")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.shape[1:], dtype=np.int64))
        self._fd: int | None = None

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fd": None}  # re-opened in the receiving process (DataLoader workers)

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)

    def _pread(self, n_bytes: int, offset: int) -> bytes:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        if hasattr(os, "pread"):
            data = os.pread(self._fd, n_bytes, offset)
        else:  # pragma: no cover - Windows
            os.lseek(self._fd, offset, os.SEEK_SET)
            data = os.read(self._fd, n_bytes)
        if len(data) != n_bytes:
            raise OSError(f"{self.path}: short read ({len(data)} of {n_bytes} bytes); the cache file is truncated")
        return data

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """``array[idx]`` for file rows ``idx`` (int64, any order, repeats allowed)."""
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        if not len(idx):
            return out
        if idx.min() < 0 or idx.max() >= len(self):
            raise IndexError(f"{self.path}: row index out of range for {len(self)} rows")
        order = np.argsort(idx, kind="stable")
        s = idx[order]
        cuts = np.flatnonzero(np.diff(s) != 1) + 1
        flat = out.reshape(len(idx), -1)
        sorted_rows = np.empty_like(flat)
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(s)]):
            data = self._pread(int(b - a) * self.row_bytes, self.offset + int(s[a]) * self.row_bytes)
            sorted_rows[a:b] = np.frombuffer(data, dtype=self.dtype).reshape(int(b - a), -1)
        flat[order] = sorted_rows
        return out


class DiskArray(LazyRows):
    """A read-only view of rows ``index`` of a ``.npy`` file on disk, converted on access.

    ``convert(np.ndarray) -> torch.Tensor`` turns stored rows into what the dataset promises (e.g. float32 in
    [-1, 1]); ``shape`` is the converted shape. Indexing the first axis with an int, slice, index tensor/array
    or boolean mask reads only those rows (:class:`NpyRows`); further axes (``x[i, 0]``) apply to the converted
    result. ``take`` returns a lazy sub-view (no read). Pickles as its file path, so DataLoader workers re-open it.
    """

    def __init__(self, path: str | Path, convert: Callable[[np.ndarray], torch.Tensor], row_shape: Sequence[int],
                 dtype: torch.dtype, index: np.ndarray | None = None):
        self.path = Path(path)
        self.convert = convert
        self.row_shape = tuple(int(s) for s in row_shape)
        self.dtype = dtype
        self.file = NpyRows(self.path)
        n_file = len(self.file)
        self.index = None if index is None else np.asarray(index, dtype=np.int64)
        if self.index is not None and self.index.size and (self.index.min() < 0 or self.index.max() >= n_file):
            raise IndexError(f"{self.path}: row index out of range for {n_file} stored rows")

    @property
    def shape(self) -> torch.Size:
        n = len(self.index) if self.index is not None else len(self.file)
        return torch.Size((n, *self.row_shape))

    def read(self, rows: np.ndarray | slice | int) -> torch.Tensor:
        """Converted rows (``rows`` indexes this view); an int gives one row without the first axis."""
        if isinstance(rows, int):
            return self.read(np.array([rows]))[0]
        if isinstance(rows, slice):
            rows = np.arange(len(self), dtype=np.int64)[rows]
        fr = rows if self.index is None else self.index[rows]
        return self.convert(self.file.rows(np.asarray(fr, dtype=np.int64)))

    def take(self, indices: Any) -> "DiskArray":
        """A lazy view of the given rows (nothing is read)."""
        rows = _rows(indices, len(self))
        if isinstance(rows, int):
            rows = np.array([rows])
        base = np.arange(len(self.file), dtype=np.int64) if self.index is None else self.index
        view = DiskArray.__new__(DiskArray)
        view.__dict__.update(self.__dict__)  # shares the open file
        view.index = base[rows]
        return view

    def __repr__(self) -> str:
        return f"DiskArray({self.path}, shape={tuple(self.shape)}, dtype={self.dtype})"


class ConcatRows(LazyRows):
    """Rows of several tensors / lazy views one after the other (nothing is copied). ``index`` (optional)
    selects and orders rows of the concatenation."""

    def __init__(self, parts: Sequence[Any], index: np.ndarray | None = None):
        flat: list[Any] = []
        for p in parts:
            if isinstance(p, ConcatRows) and p.index is None:
                flat.extend(p.parts)
            else:
                flat.append(p)
        shapes = {tuple(p.shape[1:]) for p in flat}
        if len(shapes) != 1:
            raise ValueError(f"cannot concatenate rows of shapes {sorted(shapes)}")
        self.parts = flat
        self.row_shape = tuple(shapes.pop())
        self.dtype = flat[0].dtype
        self.offsets = np.cumsum([0] + [len(p) for p in flat])
        self.index = None if index is None else np.asarray(index, dtype=np.int64)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.index) if self.index is not None else int(self.offsets[-1]), *self.row_shape))

    def read(self, rows: np.ndarray | slice | int) -> torch.Tensor:
        if isinstance(rows, int):
            return self.read(np.array([rows]))[0]
        glob = np.arange(len(self))[rows] if isinstance(rows, slice) else rows
        if self.index is not None:
            glob = self.index[glob]
        part = np.searchsorted(self.offsets, glob, side="right") - 1
        out = torch.empty((len(glob), *self.row_shape), dtype=self.dtype)
        for k in np.unique(part):
            sel = np.flatnonzero(part == k)
            local = torch.as_tensor(glob[sel] - self.offsets[k])
            out[torch.as_tensor(sel)] = self.parts[k][local]
        return out

    def take(self, indices: Any) -> "ConcatRows":
        rows = _rows(indices, len(self))
        rows = np.array([rows]) if isinstance(rows, int) else rows
        base = np.arange(len(self), dtype=np.int64) if self.index is None else self.index
        return ConcatRows(self.parts, base[rows])

    def __repr__(self) -> str:
        return f"ConcatRows({len(self.parts)} parts, shape={tuple(self.shape)}, dtype={self.dtype})"


def is_lazy(x: Any) -> bool:
    return isinstance(x, LazyRows)


def cat_rows(a: Any, b: Any) -> Any:
    """``torch.cat([a, b])`` for tensors; lazy concatenation when either is a :class:`DiskArray` view."""
    if a is None or b is None:
        return None
    if is_lazy(a) or is_lazy(b):
        return ConcatRows([a, b])
    return torch.cat([a, b])


def take_rows(x: Any, idx: Any) -> Any:
    """``x[idx]`` for tensors; a lazy sub-view for :class:`DiskArray`."""
    if x is None:
        return None
    if is_lazy(x):
        return x.take(idx)
    return x[idx]


def iter_rows(x: Any, chunk: int = 256) -> Iterator[torch.Tensor]:
    """Consecutive chunks of rows of a tensor or :class:`DiskArray` (bounded memory for lazy data)."""
    for s in range(0, len(x), chunk):
        yield x[s : s + chunk]


class ImageConverter:
    """Stored source units -> float32 in [-1, 1] (the arithmetic of :meth:`IntensityInfo.scale` and of the
    in-memory builder, so both give the same values); ``channels`` keeps the first channels only. A class, not a
    closure, so that a :class:`DiskArray` pickles (DataLoader workers started with ``spawn``)."""

    def __init__(self, lo: float, hi: float, channels: int | None = None):
        self.lo, self.scale, self.channels = float(lo), 2.0 / (float(hi) - float(lo)), channels

    def __call__(self, raw: np.ndarray) -> torch.Tensor:
        if self.channels is not None and raw.shape[1] != self.channels:
            raw = raw[:, : self.channels]
        t = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))
        return t.sub_(self.lo).mul_(self.scale).sub_(1.0)


class MaskConverter:
    """Stored raw label values -> int64 indices into ``values`` (every stored value must be in it)."""

    def __init__(self, values: Sequence[int]):
        vals = np.asarray([int(v) for v in values], dtype=np.int64)
        self.lut = np.zeros(int(vals.max()) + 1, dtype=np.int64)
        self.lut[vals] = np.arange(len(vals), dtype=np.int64)

    def __call__(self, raw: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.lut[raw])


__all__ = [
    "CACHE_FORMAT",
    "ConcatRows",
    "DiskArray",
    "NpyRows",
    "LazyRows",
    "atomic_folder",
    "cat_rows",
    "cache_base",
    "file_stat",
    "hash_key",
    "ImageConverter",
    "MaskConverter",
    "is_lazy",
    "memory_budget",
    "iter_rows",
    "read_json",
    "take_rows",
    "write_json",
]
