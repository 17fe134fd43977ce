"""pix2pix (2D/3D): shapes, paper sizes, training signal, dropout-noise reproducibility, errors."""

from __future__ import annotations

import pytest
import torch

from medbalance.data.dataset import DataInfo
from medbalance.errors import ConfigError, DataError
from medbalance.models.pix2pix import Pix2Pix, auto_strides
from medbalance.models.registry import MODELS, build_method, ensure_registered



def info2d(c=1, s=32, k=2, classes=("a", "b")):
    return DataInfo(channels=c, spatial_shape=(s, s), class_names=list(classes), mask_values=list(range(k)))


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def patch_side(s, n_layers=3):
    # k4 s2 p1 halves n_layers times, then two k4 s1 p1 convs each remove one pixel
    for _ in range(n_layers):
        s = s // 2
    return s - 2


def test_registered_with_presets():
    ensure_registered()
    assert "pix2pix" in MODELS
    spec = MODELS.get("pix2pix")
    assert spec.method is Pix2Pix
    assert set(spec.presets) == {"paper", "cpu"}
    assert spec.presets["paper"]["lambda_l1"] == 100.0 and spec.presets["paper"]["lr_g"] == 2e-4


def test_paper_sizes_match_isola_reference():
    # pytorch-CycleGAN-and-pix2pix prints 54.414 M (unet_256) and 2.769 M (basic D) for 3 -> 3 channels.
    info = DataInfo(channels=3, spatial_shape=(256, 256), class_names=["a"], mask_values=[0, 1, 2])
    m = build_method("pix2pix", "paper", {}, info)
    assert len(m.strides) == 8
    assert round(n_params(m.G) / 1e6, 3) == 54.414
    assert round(n_params(m.D) / 1e6, 3) == 2.769


@pytest.mark.parametrize("c,s", [(1, 64), (3, 64), (4, 128)])
def test_shapes_2d(c, s):
    torch.manual_seed(0)
    m = build_method("pix2pix", "cpu", {"ngf": 8, "ndf": 8}, info2d(c, s, k=3))
    assert len(m.strides) == 6  # cpu: depth follows the image, capped at 6
    masks = torch.randint(0, 3, (2, s, s))
    out = m.generate(torch.tensor([0, 1]), masks)
    assert out.shape == (2, c, s, s) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    logits = m.discriminate(out, masks)
    assert logits.shape == (2, 1, patch_side(s), patch_side(s))


def test_paper_depth_generator_forward_256():
    m = build_method("pix2pix", "paper", {"ngf": 4, "ndf": 4}, info2d(1, 256))
    out = m.generate(torch.tensor([0]), torch.zeros(1, 256, 256, dtype=torch.long))
    assert out.shape == (1, 1, 256, 256)
    assert m.discriminate(out, torch.zeros(1, 256, 256, dtype=torch.long)).shape == (1, 1, 30, 30)


def test_3d_anisotropic_strides():
    info = DataInfo(channels=2, spatial_shape=(4, 32, 32), class_names=["a", "b"], mask_values=[0, 1, 2])
    strides = [[1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]]
    m = build_method("pix2pix", "cpu", {"spatial_dims": 3, "ngf": 4, "ndf": 4, "strides": strides}, info)
    assert [list(s) for s in m.strides] == strides
    masks = torch.randint(0, 3, (2, 4, 32, 32))
    out = m.generate(torch.tensor([0, 1]), masks)
    assert out.shape == (2, 2, 4, 32, 32)
    # D keeps stride 1 on the 4-slice axis once it is too thin to halve
    assert m.discriminate(out, masks).shape[:2] == (2, 1)
    # automatic strides stop halving an axis once it reaches 1
    assert auto_strides((4, 32, 32), None, 8) == [(2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2), (1, 2, 2)]
    m.setup_optimizers()
    logs = m.training_step({"image": torch.rand(2, 2, 4, 32, 32) * 2 - 1, "mask": masks, "label": torch.tensor([0, 1])}, 0)
    assert all(v.dim() == 0 and not v.requires_grad for v in logs.values())


def test_l1_decreases_on_fixed_batch():
    torch.manual_seed(0)
    m = build_method("pix2pix", "cpu", {"ngf": 8, "ndf": 8, "dropout": 0.0, "lr_g": 2e-3, "lr_d": 2e-3}, info2d(1, 32, k=2))
    m.setup_optimizers()
    masks = torch.zeros(4, 32, 32, dtype=torch.long)
    for i in range(4):
        masks[i, 4 + 3 * i : 16 + 3 * i, 6:20] = 1
    batch = {"image": masks[:, None].float() * 1.6 - 0.8, "mask": masks, "label": torch.zeros(4, dtype=torch.long)}
    l1 = []
    for step in range(15):
        logs = m.training_step(batch, step)
        l1.append(float(logs["loss_g_l1"]))
        assert torch.isfinite(logs["loss_d"])
    assert l1[-1] < 0.7 * l1[0]
    assert all(b < a for a, b in zip(l1, l1[1:]))


def test_dropout_noise_reproducible_and_state_untouched():
    torch.manual_seed(0)
    m = build_method("pix2pix", "cpu", {"ngf": 8, "ndf": 8}, info2d(1, 32, k=2))
    m.train()
    bn_before = {k: v.clone() for k, v in m.G.state_dict().items() if "running" in k}
    masks = torch.randint(0, 2, (3, 32, 32))
    lab = torch.zeros(3, dtype=torch.long)
    a = m.generate(lab, masks, generator=torch.Generator().manual_seed(7))
    b = m.generate(lab, masks, generator=torch.Generator().manual_seed(7))
    c = m.generate(lab, masks, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-4  # dropout is the noise source
    # the global RNG is not consumed by seeded generation
    torch.manual_seed(123)
    m.generate(lab, masks, generator=torch.Generator().manual_seed(7))
    x1 = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), x1)
    # no batchnorm buffer changed, training flags restored
    for k, v in m.G.state_dict().items():
        if "running" in k:
            assert torch.equal(v, bn_before[k]), k
    assert all(mod.training for mod in m.G.modules())
    # batch-statistics mode must not touch the running buffers either
    m2 = build_method("pix2pix", "cpu", {"ngf": 8, "ndf": 8, "batch_stats_at_generation": True}, info2d(1, 32, k=2))
    rb = {k: v.clone() for k, v in m2.G.state_dict().items() if "running" in k}
    m2.generate(lab, masks, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(v, rb[k]) for k, v in m2.G.state_dict().items() if "running" in k)
    # without dropout at generation the output is deterministic regardless of the seed
    m3 = build_method("pix2pix", "cpu", {"ngf": 8, "ndf": 8, "dropout_at_generation": False}, info2d(1, 32, k=2))
    d1 = m3.generate(lab, masks, generator=torch.Generator().manual_seed(1))
    d2 = m3.generate(lab, masks, generator=torch.Generator().manual_seed(2))
    assert torch.equal(d1, d2)


def test_class_conditional():
    torch.manual_seed(0)
    m = build_method("pix2pix", "cpu", {"ngf": 8, "ndf": 8, "class_conditional": True}, info2d(1, 32, k=2))
    assert "label" in m.needs and "mask" in m.needs
    masks = torch.randint(0, 2, (2, 32, 32))
    m.G.embed.weight.data.normal_(0, 1.0)
    a = m.generate(torch.tensor([0, 0]), masks, generator=torch.Generator().manual_seed(0))
    b = m.generate(torch.tensor([1, 1]), masks, generator=torch.Generator().manual_seed(0))
    assert (a - b).abs().max() > 1e-4


def test_errors():
    no_masks = DataInfo(channels=1, spatial_shape=(32, 32), class_names=["a", "b"])
    with pytest.raises(ConfigError, match="label maps"):
        build_method("pix2pix", "cpu", {}, no_masks)
    with pytest.raises(ConfigError, match="spatial_dims"):
        build_method("pix2pix", "cpu", {"spatial_dims": 3}, info2d())
    with pytest.raises(ConfigError, match="divisible"):
        build_method("pix2pix", "cpu", {"strides": [[2, 2]] * 6}, info2d(1, 48))
    with pytest.raises(ConfigError, match="strides"):
        build_method("pix2pix", "cpu", {"strides": [[3, 2]]}, info2d())
    m = build_method("pix2pix", "cpu", {"ngf": 4, "ndf": 4}, info2d(1, 32, k=2))
    with pytest.raises(ConfigError, match="masks are required"):
        m.generate(torch.tensor([0]))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        m.generate(torch.tensor([0]), torch.full((1, 32, 32), 2))
    with pytest.raises(DataError, match="shape"):
        m.generate(torch.tensor([0, 1]), torch.zeros(1, 32, 32, dtype=torch.long))
