"""MS-SSIM diversity and image statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from medbalance.evaluation.diversity import ms_ssim, ms_ssim_diversity, ms_ssim_settings
from medbalance.evaluation.imagestats import image_statistics, radial_power_spectrum


def _smooth(n: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size // 4, size // 4, generator=g)
    return (torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear") * 2 - 1).clamp(-1, 1)


@pytest.mark.parametrize("size", [16, 32, 64, 128])
def test_ms_ssim_self_is_one_and_settings_valid(size):
    x = _smooth(3, size, 0)
    v = ms_ssim(x, x)
    np.testing.assert_allclose(v.numpy(), 1.0, atol=1e-5)
    y = _smooth(3, size, 1)
    assert float(ms_ssim(x, y).max()) < 0.95
    assert ms_ssim_settings(size)["kernel_size"] <= size


def test_ms_ssim_settings_choice():
    assert ms_ssim_settings(256)["scales"] == 5
    assert ms_ssim_settings(64)["scales"] == 3
    assert sum(ms_ssim_settings(64)["weights"]) == pytest.approx(1.0)


def test_collapsed_synthetic_set_flags_low_diversity():
    real = _smooth(40, 32, 2)
    labels = torch.arange(40) % 2
    g = torch.Generator().manual_seed(3)
    base = real[:2]
    collapsed = (base.repeat(20, 1, 1, 1) + 0.02 * torch.randn(40, 1, 32, 32, generator=g)).clamp(-1, 1)
    res = ms_ssim_diversity(real=real, synthetic=collapsed, real_labels=labels, synthetic_labels=labels, class_names=["a", "b"], pairs=30)
    assert res["synthetic"] > 0.9 > res["real"]
    assert res["ratio"] > 2 and set(res["per_class"]) == {"a", "b"}
    same = ms_ssim_diversity(real=real, synthetic=real.clone(), real_labels=labels, synthetic_labels=labels, pairs=30)
    assert abs(same["real"] - same["synthetic"]) < 0.1 and same["synthetic"] < 0.3


def test_histograms_means_and_w1():
    g = torch.Generator().manual_seed(0)
    real = (torch.rand(20, 2, 16, 16, generator=g) * 1.2 - 0.8)
    syn = real + 0.2
    st = image_statistics(real=real, synthetic=syn, bins=200)
    # W1 of a pure shift is the shift; compare with scipy on the raw pixels too
    for c in range(2):
        raw = wasserstein_distance(real[:, c].flatten().numpy(), syn[:, c].flatten().numpy())
        assert st["histogram_w1"][c] == pytest.approx(raw, abs=2.0 / 200)
        assert st["histogram_w1"][c] == pytest.approx(0.2, abs=0.011)
        assert st["real_mean"][c] == pytest.approx(float(real[:, c].double().mean()), abs=1e-9)
        assert st["synthetic_std"][c] == pytest.approx(float(syn[:, c].double().std()), abs=1e-9)
    assert st["spectrum_log10_distance"] == pytest.approx(0.0, abs=1e-9)  # a shift does not change the spectrum


def test_power_spectrum_peak_and_blur_distance():
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    wave = torch.cos(2 * torch.pi * 5 * xx / 32)[None, None].repeat(4, 1, 1, 1)
    ps = radial_power_spectrum(wave)
    assert int(np.argmax(ps)) == 5
    g = torch.Generator().manual_seed(1)
    noise = torch.rand(16, 1, 32, 32, generator=g) * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(noise, 3, stride=1, padding=1)
    st = image_statistics(real=noise, synthetic=blurred)
    assert st["spectrum_log10_distance"] > 0.3
    ps_n = radial_power_spectrum(noise)
    assert ps_n[1:].max() / ps_n[1:].min() < 2.0  # white noise: flat spectrum


def test_lesion_statistics():
    masks = torch.zeros(4, 8, 8, dtype=torch.int64)
    masks[:, 2:5, 2:5] = 1
    masks[:, 6, 6] = 2
    img = torch.full((4, 1, 8, 8), -0.5)
    img[:, 0][masks > 0] = 0.5
    st = image_statistics(real=img, synthetic=img, real_masks=masks, synthetic_masks=masks)
    assert st["lesion_real"]["inside_mean"] == [pytest.approx(0.5)]
    assert st["lesion_real"]["outside_mean"] == [pytest.approx(-0.5)]
    only1 = image_statistics(real=img, synthetic=img, real_masks=masks, synthetic_masks=masks, lesion_labels=[2])
    assert only1["lesion_synthetic"]["outside_mean"][0] == pytest.approx((9 * 0.5 - 54 * 0.5) / 63)
