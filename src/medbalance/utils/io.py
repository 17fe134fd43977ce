"""Atomic writes, safetensors checkpoints with JSON metadata, hashing.

Nothing is ever unpickled: weights are safetensors, everything else JSON/CSV/PNG.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from medbalance.errors import CheckpointError


def _tmp_sibling(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_sibling(path)
    except OSError as e:
        raise _with_path(e, path) from None
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _with_path(e, path) from None
        raise
    return path


def _with_path(e: OSError, path: Path) -> OSError:
    """The same OS error, naming ``path`` when the system call did not (write/fsync on a full disk)."""
    if e.filename is not None:
        return e
    return type(e)(e.errno, e.strerror or str(e), str(path))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@contextlib.contextmanager
def atomic_directory(final: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``final``; rename it to ``final`` only on success.

    On any exception the temporary folder is removed, so a half-written output never appears
    under the final name.
    """
    final = Path(final)
    if final.exists() and not overwrite and any(final.iterdir()):
        from medbalance.errors import ConfigError

        raise ConfigError("output folder exists and is not empty (use --overwrite)", path=final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(final, lock_path=final.parent / f".{final.name}.lock"):
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
        try:
            yield tmp
            if final.exists():
                old = final.with_name(f".{final.name}.old-{os.getpid()}")
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


# --------------------------------------------------------------------------- one writer per folder
LOCK_NAME = ".medbalance.lock"
_HELD: dict[str, int] = {}  # lock path -> open fd (this process)


def lock_holder(lock_path: str | Path) -> int | None:
    """The pid written in a lock file (None when absent or unreadable)."""
    try:
        return int(Path(lock_path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def acquire_folder_lock(folder: str | Path, lock_path: str | Path | None = None) -> Path:
    """Take the exclusive writer lock of ``folder`` (``folder/.medbalance.lock`` unless ``lock_path``).

    The lock is an ``fcntl.flock`` on the lock file, which holds this process's pid. The kernel drops the
    lock when the process ends (also on ``kill -9``), so a lock file left by a dead process is stale: it is
    taken over (and its pid rewritten). A live holder -> :class:`~medbalance.errors.ConfigError` naming its
    pid. Held until :func:`release_folder_lock` or the end of the process.
    """
    from medbalance.errors import ConfigError

    folder = Path(folder)
    lock = Path(lock_path) if lock_path is not None else folder / LOCK_NAME
    key = str(lock.resolve())
    if key in _HELD:
        raise ConfigError(f"this process already writes into this folder (lock {lock.name})", path=folder)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                pid = lock_holder(lock)
                raise ConfigError(
                    f"another medbalance process (pid {pid if pid is not None else 'unknown'}) is writing into this "
                    f"folder (lock {lock}); wait for it to finish or choose another output",
                    path=folder,
                ) from None
            raise
        try:  # the holder may have released (and unlinked) the file between our open and flock: retry
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())  # no fsync: the pid is only read while we live
    except OSError as e:
        os.close(fd)
        raise _with_path(e, lock) from None
    _HELD[key] = fd
    return lock


def release_folder_lock(folder: str | Path, lock_path: str | Path | None = None) -> None:
    lock = Path(lock_path) if lock_path is not None else Path(folder) / LOCK_NAME
    fd = _HELD.pop(str(lock.resolve()), None)
    if fd is None:
        return
    with contextlib.suppress(OSError):
        lock.unlink()  # still ours: nobody else can hold it while we do
    os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: str | Path, lock_path: str | Path | None = None) -> Iterator[Path]:
    """:func:`acquire_folder_lock` for the duration of a ``with`` block."""
    lock = acquire_folder_lock(folder, lock_path)
    try:
        yield lock
    finally:
        release_folder_lock(folder, lock_path)


def save_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None) -> Path:
    """Save tensors atomically; ``metadata`` (JSON-able) is stored in the safetensors header as JSON."""
    from safetensors.torch import save

    meta = {"medbalance": json.dumps(metadata or {}, default=_json_default)}
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write_bytes(path, save(flat, metadata=meta))


def load_safetensors(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint file not found", path=path)
    try:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta_raw = (f.metadata() or {}).get("medbalance", "{}")
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    except CheckpointError:
        raise
    except Exception as e:  # corrupt / truncated file
        raise CheckpointError(f"cannot read safetensors file ({type(e).__name__}: {e})", path=path) from None
    return tensors, json.loads(meta_raw)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError("file not found", path=path) from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"invalid JSON ({e})", path=path) from None


def ids_digest(ids: list[str] | tuple[str, ...]) -> str:
    """sha256 of a set of sample ids (sorted, one per line): the training-ids digest that ties a synthetic
    manifest to the ``train_ids.json`` of the run that made it."""
    return hashlib.sha256("\n".join(sorted(str(i) for i in ids)).encode("utf-8")).hexdigest()
