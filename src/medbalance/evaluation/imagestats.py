"""Image statistics of real vs synthetic images (as MelanoGANs compares them).

- Per-channel intensity histograms over the whole set (``bins`` bins on ``[-1, 1]``), compared
  with the Wasserstein-1 distance (:func:`scipy.stats.wasserstein_distance` on the bin centres
  weighted by the histograms; in ``[-1, 1]`` intensity units, so 0.01 = 0.5 % of the range).
- Mean and standard deviation per channel.
- Radially averaged power spectrum (mean over images of ``|FFT2|^2`` of the mean-subtracted
  image, averaged over rings of integer radius), and the distance between the real and synthetic
  spectra: mean absolute difference of ``log10`` power over radii (1 = one decade on average).
- For mask-conditioned data: intensity mean/std inside the lesion (mask index > 0, or the given
  label indices) vs outside, per channel, for both sets.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from scipy.stats import wasserstein_distance


def channel_histograms(images: torch.Tensor, bins: int = 64) -> np.ndarray:
    """``(C, bins)`` normalised histograms of all pixels per channel on ``[-1, 1]``."""
    x = images.float().clamp(-1, 1)
    out = np.empty((x.shape[1], bins), dtype=np.float64)
    for c in range(x.shape[1]):
        h = torch.histc(x[:, c].reshape(-1), bins=bins, min=-1.0, max=1.0).double()
        out[c] = (h / h.sum().clamp_min(1)).numpy()
    return out


def histogram_distances(real_hist: np.ndarray, syn_hist: np.ndarray) -> list[float]:
    bins = real_hist.shape[1]
    centres = -1.0 + (np.arange(bins) + 0.5) * (2.0 / bins)
    return [float(wasserstein_distance(centres, centres, real_hist[c], syn_hist[c])) for c in range(real_hist.shape[0])]


def radial_power_spectrum(images: torch.Tensor, batch: int = 256) -> np.ndarray:
    """Radially averaged power spectrum (mean over images), index = integer radius in cycles/image."""
    h, w = images.shape[-2:]
    fy = torch.fft.fftfreq(h) * h
    fx = torch.fft.fftfreq(w) * w
    r = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2).round().long()
    rmax = min(h, w) // 2
    keep = r <= rmax
    rk = r[keep]
    counts = torch.bincount(rk, minlength=rmax + 1).double()
    total = torch.zeros(rmax + 1, dtype=torch.float64)
    n = 0
    for s in range(0, images.shape[0], batch):
        x = images[s : s + batch].double()
        x = x - x.mean(dim=(-2, -1), keepdim=True)
        p = torch.fft.fft2(x).abs().pow(2).mean(1).sum(0) / (h * w)  # summed over images, mean over channels
        total += torch.bincount(rk, weights=p[keep], minlength=rmax + 1)
        n += x.shape[0]
    return (total / counts.clamp_min(1) / max(n, 1)).numpy()


def spectrum_distance(real_ps: np.ndarray, syn_ps: np.ndarray) -> float:
    """Mean |log10 P_real - log10 P_syn| over radii 1..rmax (DC excluded)."""
    m = min(len(real_ps), len(syn_ps))
    a = np.log10(np.maximum(real_ps[1:m], 1e-20))
    b = np.log10(np.maximum(syn_ps[1:m], 1e-20))
    return float(np.abs(a - b).mean())


def _masked_stats(images: torch.Tensor, lesion: torch.Tensor) -> dict[str, list[float | None]]:
    out: dict[str, list[float | None]] = {"inside_mean": [], "inside_std": [], "outside_mean": [], "outside_std": []}
    for c in range(images.shape[1]):
        x = images[:, c].double()
        for key, sel in (("inside", lesion), ("outside", ~lesion)):
            v = x[sel]
            out[f"{key}_mean"].append(float(v.mean()) if v.numel() else None)
            out[f"{key}_std"].append(float(v.std()) if v.numel() > 1 else None)
    return out


def image_statistics(
    *,
    real: torch.Tensor,
    synthetic: torch.Tensor,
    real_masks: torch.Tensor | None = None,
    synthetic_masks: torch.Tensor | None = None,
    lesion_labels: Sequence[int] | None = None,
    bins: int = 64,
) -> dict[str, Any]:
    """Histogram W1 distance, channel mean/std, power spectra and (with masks) lesion statistics."""
    if real.shape[1] != synthetic.shape[1]:
        raise ValueError(f"real images have {real.shape[1]} channels, synthetic {synthetic.shape[1]}")
    hr, hs = channel_histograms(real, bins), channel_histograms(synthetic, bins)
    out: dict[str, Any] = {
        "histogram_w1": histogram_distances(hr, hs),
        "real_mean": real.double().mean(dim=(0, 2, 3)).tolist(),
        "real_std": real.double().std(dim=(0, 2, 3)).tolist(),
        "synthetic_mean": synthetic.double().mean(dim=(0, 2, 3)).tolist(),
        "synthetic_std": synthetic.double().std(dim=(0, 2, 3)).tolist(),
    }
    ps_r, ps_s = radial_power_spectrum(real), radial_power_spectrum(synthetic)
    out["power_spectrum_real"] = ps_r.tolist()
    out["power_spectrum_synthetic"] = ps_s.tolist()
    out["spectrum_log10_distance"] = spectrum_distance(ps_r, ps_s)
    if real_masks is not None and synthetic_masks is not None:

        def lesion_of(m: torch.Tensor) -> torch.Tensor:
            if lesion_labels is None:
                return m > 0
            return torch.isin(m, torch.as_tensor(list(lesion_labels), dtype=m.dtype))

        out["lesion_real"] = _masked_stats(real, lesion_of(real_masks))
        out["lesion_synthetic"] = _masked_stats(synthetic, lesion_of(synthetic_masks))
    return out
