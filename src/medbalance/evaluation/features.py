"""Feature caching for evaluation.

Caching
-------
Encoding the real set with a large network is the slow part of evaluation, so features are
cached as ``.npy`` files under a cache folder, keyed by ``sha256(data hash, extractor key,
preprocessing)``. The data hash covers the exact float32 image tensor (shape included), so
any change of images, size or intensity scaling gives a new key. Writes are atomic.

The nearest-neighbour search used on features and pixels is :func:`medbalance.utils.neighbors.knn`.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from medbalance.data.cache import iter_rows
from medbalance.utils.io import atomic_write_bytes

# ---------------------------------------------------------------------------- hashing / cache


def data_hash(images: torch.Tensor) -> str:
    """sha256 of a float32 image tensor (shape and values)."""
    h = hashlib.sha256()
    h.update(str(tuple(images.shape)).encode())
    for x in iter_rows(images, 512):  # chunks: bounded memory for disk-backed images, same digest as one pass
        h.update(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def default_cache_dir() -> Path:
    env = os.environ.get("MEDBALANCE_CACHE_DIR")
    if env:
        return Path(env) / "features"
    return Path.home() / ".cache" / "medbalance" / "features"


def cache_key(data_sha: str, extractor_key: str, preprocessing: str) -> str:
    h = hashlib.sha256(f"{data_sha}|{extractor_key}|{preprocessing}".encode()).hexdigest()
    return h[:32]


class FeatureCache:
    """``.npy`` feature files under ``root`` keyed by (data hash, extractor, preprocessing)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def get(self, key: str) -> np.ndarray | None:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            return np.load(p, allow_pickle=False)
        except (OSError, ValueError):  # truncated / foreign file: recompute
            return None

    def put(self, key: str, feats: np.ndarray) -> Path:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(feats), allow_pickle=False)
        return atomic_write_bytes(self.path(key), buf.getvalue())


def cached_features(
    images: torch.Tensor,
    encode: Callable[[torch.Tensor], np.ndarray],
    extractor_key: str,
    preprocessing: str,
    cache: FeatureCache | None,
) -> tuple[np.ndarray, bool]:
    """Features of ``images`` from the cache or by calling ``encode``; returns (features, hit)."""
    if cache is None:
        return encode(images), False
    key = cache_key(data_hash(images), extractor_key, preprocessing)
    got = cache.get(key)
    if got is not None and got.shape[0] == images.shape[0]:
        return got, True
    feats = encode(images)
    cache.put(key, feats)
    return feats, False
