"""Diversity: mean MS-SSIM over random pairs of images within each class.

A synthetic set whose within-class MS-SSIM is well above the real set's is less varied than the
real data (mode collapse). MS-SSIM is MONAI's :class:`monai.metrics.MultiScaleSSIMMetric` on images
mapped from ``[-1, 1]`` to ``[0, 1]`` (``data_range=1``), per channel then averaged.

Small images: standard MS-SSIM uses 5 scales and an 11x11 Gaussian window (sigma 1.5), which
needs images larger than 160 px. :func:`ms_ssim_settings` keeps the 11x11 window and uses the
largest number of scales MONAI accepts for the image size (MONAI requires
``size // (scales-1)^2 > kernel-1``; e.g. 256 px -> 5 scales, 128 -> 4, 64 -> 3, 32 -> 2), with
the first ``scales`` standard weights renormalised to sum to 1. From 11 to 21 px a single scale is
used (plain SSIM); below 11 px the window shrinks (7, 5, 3; sigma = window/7). The settings used are returned
with the result, and values are only comparable between sets evaluated with the same settings
(real and synthetic always are).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_settings(size: int) -> dict[str, Any]:
    """Number of scales, window and weights valid for square-ish images of minimal side ``size``."""
    for kernel in (11, 7, 5, 3):
        for scales in range(5, 0, -1):
            div = max(1, (scales - 1)) ** 2
            if size // div > kernel - 1 and size // (2 ** (scales - 1)) >= kernel:
                w = np.asarray(MS_SSIM_WEIGHTS[:scales], dtype=np.float64)
                w = w / w.sum()
                sigma = 1.5 if kernel == 11 else kernel / 7.0
                return {"scales": scales, "kernel_size": kernel, "kernel_sigma": sigma, "weights": [float(v) for v in w]}
    raise ValueError(f"images of side {size} px are too small for MS-SSIM (need at least 3 px)")


def ms_ssim(a: torch.Tensor, b: torch.Tensor, settings: dict[str, Any] | None = None) -> torch.Tensor:
    """Per-pair MS-SSIM of two batches ``(N, C, H, W)`` in ``[-1, 1]`` -> ``(N,)``."""
    from monai.metrics import MultiScaleSSIMMetric

    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    st = settings or ms_ssim_settings(min(a.shape[-2:]))
    metric = MultiScaleSSIMMetric(
        spatial_dims=2,
        data_range=1.0,
        kernel_size=st["kernel_size"],
        kernel_sigma=st["kernel_sigma"],
        weights=tuple(st["weights"]),
        reduction="none",
    )
    x = ((a.float().clamp(-1, 1) + 1) / 2).double()
    y = ((b.float().clamp(-1, 1) + 1) / 2).double()
    vals = metric(y_pred=x, y=y)  # (N, 1): MS-SSIM over all channels jointly
    return vals.reshape(-1).float()


def _random_pairs(idx: np.ndarray, n_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    i = rng.integers(0, len(idx), size=n_pairs)
    j = rng.integers(0, len(idx) - 1, size=n_pairs)
    j = j + (j >= i)  # a different image of the same class
    return idx[i], idx[j]


def mean_pairwise_ms_ssim(
    images: torch.Tensor,
    labels: torch.Tensor | np.ndarray | None = None,
    *,
    pairs: int = 500,
    seed: int = 0,
    batch: int = 64,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Mean MS-SSIM over ``pairs`` random pairs of distinct images within each class.

    Returns ``{"overall": mean over all pairs, "per_class": {label: mean}, "pairs": {label: n}}``.
    """
    n = images.shape[0]
    labs = np.zeros(n, dtype=np.int64) if labels is None else np.asarray(torch.as_tensor(labels).cpu())
    st = settings or ms_ssim_settings(min(images.shape[-2:]))
    rng = np.random.default_rng(seed)
    per_class: dict[int, float] = {}
    counts: dict[int, int] = {}
    all_vals = []
    for c in sorted(set(labs.tolist())):
        idx = np.nonzero(labs == c)[0]
        if len(idx) < 2:
            continue
        ia, ib = _random_pairs(idx, pairs, rng)
        vals = torch.cat([ms_ssim(images[ia[s : s + batch]], images[ib[s : s + batch]], st) for s in range(0, pairs, batch)])
        per_class[int(c)] = float(vals.mean())
        counts[int(c)] = int(pairs)
        all_vals.append(vals)
    overall = float(torch.cat(all_vals).mean()) if all_vals else None
    return {"overall": overall, "per_class": per_class, "pairs": counts, "settings": st}


def ms_ssim_diversity(
    *,
    real: torch.Tensor,
    synthetic: torch.Tensor,
    real_labels: torch.Tensor | np.ndarray | None = None,
    synthetic_labels: torch.Tensor | np.ndarray | None = None,
    class_names: list[str] | None = None,
    pairs: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """Within-class mean MS-SSIM of real and synthetic images (lower = more diverse).

    ``ratio`` = synthetic / real; well above 1 flags mode collapse.
    """
    size = min(min(real.shape[-2:]), min(synthetic.shape[-2:]))
    st = ms_ssim_settings(size)
    r = mean_pairwise_ms_ssim(real, real_labels, pairs=pairs, seed=seed, settings=st)
    s = mean_pairwise_ms_ssim(synthetic, synthetic_labels, pairs=pairs, seed=seed + 1, settings=st)

    def name(c: int) -> str:
        return class_names[c] if class_names is not None else str(c)

    per_class = {}
    for c in sorted(set(r["per_class"]) | set(s["per_class"])):
        rv, sv = r["per_class"].get(c), s["per_class"].get(c)
        per_class[name(c)] = {"real": rv, "synthetic": sv, "ratio": (sv / rv) if rv and sv is not None else None}
    ratio = (s["overall"] / r["overall"]) if r["overall"] and s["overall"] is not None else None
    return {"real": r["overall"], "synthetic": s["overall"], "ratio": ratio, "per_class": per_class, "settings": st, "pairs_per_class": pairs}
