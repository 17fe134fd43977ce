"""DCGAN, ACGAN, LAPGAN and jointly trained LAPGAN: shapes, losses, pyramid, optimisation, sampling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medbalance.data.dataset import DataInfo
from medbalance.errors import ConfigError
from medbalance.models.dcgan import DCGANDiscriminator, DCGANGenerator
from medbalance.models.lapgan import gaussian_pyramid, laplacian_pyramid, pyr_down, pyr_up, reconstruct
from medbalance.models.losses import class_loss, d_loss, feature_matching_loss, g_loss
from medbalance.models.registry import MODELS, build_method, ensure_registered, resolve_params



TINY = {"z_dim": 8, "ngf": 8, "ndf": 8, "max_mult": 4, "embed_dim": 4}
TINY_LAP = {"z_dim": 8, "ngf": 8, "ndf": 8, "max_mult": 4, "ref_ngf": 8, "ref_layers": 2, "base_size": 8}


def info(c=3, size=32, k=3) -> DataInfo:
    return DataInfo(channels=c, spatial_shape=(size, size), class_names=[f"c{i}" for i in range(k)])


def tiny(name: str, c=3, size=32, k=3, **extra):
    base = TINY_LAP if name.startswith("lapgan") else TINY
    torch.manual_seed(0)
    m = build_method(name, "cpu", {**base, **extra}, info(c, size, k))
    m.setup_optimizers()
    return m


def batch(n=4, c=3, size=32, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(n, c, size, size, generator=g) * 2 - 1, "label": torch.arange(n) % k}


# ---------------------------------------------------------------------------- registry
def test_registered_with_presets():
    ensure_registered()
    for name in ("dcgan", "acgan", "lapgan", "lapgan-joint"):
        spec = MODELS.get(name)
        assert set(spec.presets) >= {"paper", "cpu"} and spec.paper and spec.description
        for preset in ("paper", "cpu"):
            resolve_params(name, preset, {})
    assert resolve_params("dcgan", "paper", {}).ngf == 64
    assert resolve_params("dcgan", "paper", {}).z_dim == 100
    with pytest.raises(ConfigError, match="unknown key"):
        resolve_params("dcgan", "cpu", {"ngff": 3})


# ---------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("c", [1, 3, 4])
@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("k", [0, 3])
def test_dcgan_network_shapes(c, size, k):
    G = DCGANGenerator(8, c, size, ngf=8, max_mult=4, num_classes=k, embed_dim=4)
    D = DCGANDiscriminator(c, size, ndf=8, max_mult=4, num_classes=k, aux_classes=5)
    y = torch.tensor([0, 2]) if k else None
    x = G(torch.randn(2, 8), y)
    assert x.shape == (2, c, size, size) and x.abs().max() <= 1
    assert D(x, y).shape == (2,)
    assert D.features(x).shape[-2:] == (4, 4)
    assert D.class_logits(D.features(x)).shape == (2, 5)
    # one ConvTranspose per doubling from 4x4 (the first maps z to 4x4)
    n_convt = sum(isinstance(m, torch.nn.ConvTranspose2d) for m in G.modules())
    assert n_convt == int(math.log2(size)) - 1


@pytest.mark.parametrize("c", [1, 3, 4])
@pytest.mark.parametrize("size", [16, 64, 256])
def test_dcgan_resize_convolution_generator(c, size):
    """``upsample='resize'``: only the z -> 4x4 layer is transposed; every doubling is nearest x2 + conv k3."""
    G = DCGANGenerator(8, c, size, ngf=4, max_mult=4, num_classes=3, embed_dim=4, upsample="resize")
    x = G(torch.randn(2, 8), torch.tensor([0, 2]))
    assert x.shape == (2, c, size, size) and x.abs().max() <= 1
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in G.modules()) == 1
    ups = [m for m in G.modules() if isinstance(m, torch.nn.Upsample)]
    assert len(ups) == int(math.log2(size)) - 2
    with pytest.raises(ConfigError, match="allowed: convt, resize"):
        DCGANGenerator(8, c, 32, upsample="bilinear")
    m = tiny("acgan", c=c, size=32, upsample="resize")
    assert sum(isinstance(mod, torch.nn.Upsample) for mod in m.G.modules()) == 3
    lap = tiny("lapgan", c=c, size=32, upsample="resize")
    assert sum(isinstance(mod, torch.nn.Upsample) for mod in lap.G.coarse.modules()) == 1


@pytest.mark.parametrize("norm", ["spectral", "none"])
@pytest.mark.parametrize("k", [0, 3])
def test_discriminator_norm_options(norm, k):
    D = DCGANDiscriminator(1, 32, ndf=8, max_mult=4, num_classes=k, aux_classes=3, norm=norm)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())
    x, y = torch.randn(3, 1, 32, 32), (torch.tensor([0, 1, 2]) if k else None)
    assert D(x, y).shape == (3,) and D.class_logits(D.features(x)).shape == (3, 3)
    sn_weights = [n for n, _ in D.named_parameters() if n.endswith("parametrizations.weight.original")]
    if norm == "spectral":
        # every trunk conv, the output conv and the class projection; not the auxiliary classifier
        n_conv = sum(isinstance(m, torch.nn.Conv2d) for m in D.modules())
        assert len(sn_weights) == n_conv + (1 if k else 0)
        assert not any(n.startswith("aux.") for n in sn_weights)
        D.train()
        for _ in range(30):  # power iteration converges: largest singular value of each weight -> 1
            D(x, y)
        w = D.out.weight.reshape(D.out.weight.shape[0], -1)
        assert torch.linalg.matrix_norm(w.detach(), ord=2).item() == pytest.approx(1.0, abs=0.05)
    else:
        assert sn_weights == []


def test_discriminator_norm_unknown_lists_allowed():
    with pytest.raises(ConfigError, match="allowed: batch, spectral, none"):
        DCGANDiscriminator(1, 32, ndf=8, norm="layer")
    with pytest.raises(ConfigError, match="d_norm"):
        resolve_params("dcgan", "cpu", {"d_norm": "layer"})
    m = tiny("acgan", d_norm="spectral")
    assert not any(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.D.modules())


def test_generator_256_forward():
    G = DCGANGenerator(8, 3, 256, ngf=4, max_mult=4)
    assert G(torch.randn(1, 8)).shape == (1, 3, 256, 256)


@pytest.mark.parametrize("name", ["dcgan", "acgan", "lapgan", "lapgan-joint"])
@pytest.mark.parametrize("c", [1, 4])
def test_methods_generate_and_discriminate_shapes(name, c):
    extra = {} if name == "acgan" else {"conditional": True}
    m = tiny(name, c=c, size=32, **extra)
    x = m.generate(torch.tensor([0, 1, 2, 2, 1]), generator=torch.Generator().manual_seed(1))
    assert x.shape == (5, c, 32, 32) and x.dtype == torch.float32
    assert -1 <= x.min() and x.max() <= 1
    assert m.discriminate(x, torch.tensor([0, 1, 2, 2, 1])).shape == (5,)
    assert set(m.networks()) == {"G", "D"}
    if name == "acgan":
        assert m.classify(x).shape == (5, 3)


def test_lapgan_levels_64():
    m = tiny("lapgan", c=1, size=64)
    assert m.G.sizes == [8, 16, 32, 64] and len(m.D.refiners) == 3
    levels = m.generate_pyramid(torch.zeros(2, dtype=torch.long), generator=torch.Generator().manual_seed(0))
    assert [t.shape[-1] for t in levels] == [8, 16, 32, 64]


@pytest.mark.parametrize("shape", [(48, 48), (16, 16), (32, 64), (8, 32, 32)])
def test_bad_image_size_is_config_error(shape):
    bad = DataInfo(channels=1, spatial_shape=shape, class_names=["a", "b"])
    for name in ("dcgan", "acgan", "lapgan"):
        with pytest.raises(ConfigError, match="power of two|2D"):
            build_method(name, "cpu", {}, bad)


@pytest.mark.parametrize("name", ["lapgan", "lapgan-joint"])
def test_lapgan_patch_refiner_discriminators(name):
    """``ref_d: patch``: every finer level is judged by a PatchGAN on (image, upsampled coarser image)
    with one logit per patch; discriminate() still returns one score per image."""
    from medbalance.models.pix2pix import PatchDiscriminator

    m = tiny(name, c=1, size=64, conditional=True, ref_d="patch", ref_d_layers=2)
    assert all(isinstance(d, PatchDiscriminator) for d in m.D.refiners) and len(m.D.refiners) == 3
    x = torch.rand(3, 2, 32, 32) * 2 - 1
    assert m.D.refiners[1](x, torch.tensor([0, 1, 2])).shape == (3, 1, 6, 6)  # 34 px patches of a 32 px level
    imgs = m.generate(torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(0))
    assert m.discriminate(imgs, torch.tensor([0, 1, 2])).shape == (3,)
    out = m.training_step(batch(n=4, c=1, size=64), 0)
    assert all(torch.isfinite(v) for v in out.values()) and set(out) >= {"loss_d_64", "loss_g_64"}


@pytest.mark.parametrize("size", [32, 64, 128])
def test_lapgan_cpu_preset_base_is_half_the_image(size):
    """The cpu preset's ``base_size: null`` means one refinement level from half the image side."""
    m = build_method("lapgan", "cpu", {"ngf": 4, "ndf": 4, "ref_ngf": 4}, info(c=1, size=size))
    assert m.G.sizes == [size // 2, size] and m.levels == 1 and m.G.base_size == size // 2
    assert build_method("lapgan", "paper", {"ngf": 4, "ndf": 4, "ref_ngf": 4}, info(c=1, size=64)).G.sizes == [16, 32, 64]


def test_lapgan_base_size_must_be_smaller():
    with pytest.raises(ConfigError, match="base_size"):
        build_method("lapgan", "cpu", {"base_size": 32}, info(size=32))


# ---------------------------------------------------------------------------- losses
def test_class_loss_hand_computation():
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    labels = torch.tensor([0, 1])
    expected = 0.5 * (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-3)))
    assert class_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    # softmax-then-NLL (the reference-code bug) gives a different, wrong number
    wrong = F.nll_loss(F.softmax(logits, 1), labels).item()
    assert abs(wrong - expected) > 0.5


def test_gan_losses_hand_computation():
    r, f = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0])
    sig = torch.sigmoid
    bce_d = -(torch.log(sig(r)).mean() + torch.log(1 - sig(f)).mean())
    assert d_loss(r, f, "bce").item() == pytest.approx(bce_d.item(), rel=1e-5)
    assert g_loss(f, "bce").item() == pytest.approx(-torch.log(sig(f)).mean().item(), rel=1e-5)
    assert d_loss(r, f, "hinge").item() == pytest.approx((0 + 3) / 2 + (1.5 + 4) / 2)
    assert g_loss(f, "hinge").item() == pytest.approx(-1.75)
    assert d_loss(r, f, "lsgan").item() == pytest.approx(0.5 * (0 + 9) / 2 + 0.5 * (0.25 + 9) / 2)
    a, b = [torch.ones(2, 3)], [torch.zeros(2, 3)]
    assert feature_matching_loss(a, b).item() == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        d_loss(r, f, "wgan")


# ---------------------------------------------------------------------------- pyramid
def test_laplacian_pyramid_reconstructs_exactly():
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64) * 2 - 1
    bands, low = laplacian_pyramid(x, 2)
    assert [b.shape[-1] for b in bands] == [32, 16] and low.shape[-1] == 8
    assert torch.allclose(reconstruct(bands, low), x, atol=1e-12)
    # the band-pass levels are not trivial (the low-pass really loses detail)
    assert bands[0].abs().mean() > 0.05
    gauss = gaussian_pyramid(x, 2)
    assert [g.shape[-1] for g in gauss] == [8, 16, 32] and torch.equal(gauss[0], low)


def test_pyramid_ops_preserve_constants_and_smooth_signals():
    c = torch.full((1, 2, 16, 16), 0.3, dtype=torch.float64)
    assert torch.allclose(pyr_down(c), torch.full((1, 2, 8, 8), 0.3, dtype=torch.float64))
    assert torch.allclose(pyr_up(c), torch.full((1, 2, 32, 32), 0.3, dtype=torch.float64))
    # a slow ramp survives down+up nearly unchanged in the interior
    ramp = torch.linspace(-1, 1, 32, dtype=torch.float64).expand(1, 1, 32, 32)
    rec = pyr_up(pyr_down(ramp))
    assert (rec - ramp)[..., 4:-4, 4:-4].abs().max() < 1e-9


# ---------------------------------------------------------------------------- optimisation
def test_dcgan_discriminator_learns_fixed_batch():
    m = tiny("dcgan", conditional=True)
    b = batch()
    with torch.no_grad():
        fake = m.G(torch.randn(4, 8), b["label"])
    losses = []
    for _ in range(15):
        loss = d_loss(m.D(b["image"], b["label"]), m.D(fake, b["label"]))
        m.optimize("D", loss)
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_acgan_class_loss_decreases():
    m = tiny("acgan", fake_labels="batch")
    n = 8
    y = torch.arange(n) % 2
    g = torch.Generator().manual_seed(0)
    img = torch.rand(n, 3, 32, 32, generator=g) * 0.4 - 0.2 + torch.where(y == 0, 0.6, -0.6)[:, None, None, None]
    b = {"image": img, "label": y}

    def real_cls_loss():
        with torch.no_grad():
            return class_loss(m.D.class_logits(m.D.features(img)), y).item()

    before = real_cls_loss()
    outs = [m.training_step(b, s) for s in range(12)]
    assert all(torch.isfinite(v).all() for o in outs for v in o.values())
    assert all(v.ndim == 0 and not v.requires_grad for v in outs[-1].values())
    assert real_cls_loss() < 0.5 * before


def test_dcgan_training_step_under_bf16_autocast():
    m = tiny("dcgan")
    m.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    before = [p.clone() for p in m.G.parameters()]
    out = m.training_step(batch(), 0)
    assert set(out) >= {"loss_d", "loss_g"} and all(torch.isfinite(v) for v in out.values())
    assert any(not torch.equal(a, p) for a, p in zip(before, m.G.parameters()))


@pytest.mark.parametrize("name,coarse_moves", [("lapgan", False), ("lapgan-joint", True)])
def test_lapgan_joint_backpropagates_through_levels(name, coarse_moves):
    """With the coarse D's output layer zeroed and D frozen, the coarse G gets gradient only
    through the finer levels: joint training moves it, independent training does not."""
    m = tiny(name, conditional=True)
    with torch.no_grad():
        m.D.coarse.out.weight.zero_()
        m.D.coarse.out.bias.zero_()
        m.D.coarse.proj.embed.weight.zero_()
    for grp in m.optimizers["D"].param_groups:
        grp["lr"] = 0.0
    before = [p.clone() for p in m.G.coarse.parameters()]
    ref_before = [p.clone() for p in m.G.refiners.parameters()]
    m.training_step(batch(), 0)
    moved = any(not torch.equal(a, p) for a, p in zip(before, m.G.coarse.parameters()))
    assert moved == coarse_moves
    assert any(not torch.equal(a, p) for a, p in zip(ref_before, m.G.refiners.parameters()))


# ---------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("name", ["dcgan", "acgan", "lapgan-joint"])
def test_generate_reproducible_and_label_dependent(name):
    extra = {} if name == "acgan" else {"conditional": True}
    m = tiny(name, **extra)
    labels = torch.tensor([0, 0, 1, 2])
    a = m.generate(labels, generator=torch.Generator().manual_seed(7))
    b = m.generate(labels, generator=torch.Generator().manual_seed(7))
    c = m.generate(labels, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    other = m.generate(torch.tensor([1, 2, 0, 0]), generator=torch.Generator().manual_seed(7))
    assert not torch.allclose(a, other)  # same noise, different classes -> different images
    assert m.G.training  # generate() restored the mode
    with pytest.raises(ConfigError, match="out of range"):
        m.generate(torch.tensor([3]))
    if name != "acgan":
        with pytest.raises(ConfigError, match="labels are required"):
            m.discriminate(a)


def test_unconditional_generate_ignores_label_values():
    m = tiny("dcgan")
    a = m.generate(torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(3))
    b = m.generate(torch.tensor([2, 2, 2]), generator=torch.Generator().manual_seed(3))
    assert a.shape == (3, 3, 32, 32) and torch.equal(a, b)
    assert m.generate(torch.zeros(0, dtype=torch.long)).shape == (0, 3, 32, 32)


# ---------------------------------------------------------------------------- DiffAugment
def test_translation_matches_roll_with_background_fill():
    from medbalance.models.augment import translation

    torch.manual_seed(3)
    x = torch.randn(6, 2, 16, 16)
    torch.manual_seed(7)
    out = translation(x)
    torch.manual_seed(7)  # the same offsets, drawn as translation() draws them
    dy = torch.randint(-2, 3, (6, 1, 1))
    dx = torch.randint(-2, 3, (6, 1, 1))
    for i in range(6):
        a, b = int(dy[i]), int(dx[i])
        ref = torch.full_like(x[i], -1.0)
        src = x[i][:, max(0, -a): 16 - max(0, a), max(0, -b): 16 - max(0, b)]
        ref[:, max(0, a): 16 - max(0, -a), max(0, b): 16 - max(0, -b)] = src
        assert torch.equal(out[i], ref)


def test_cutout_and_gradients():
    from medbalance.models.augment import cutout, diff_augment

    x = torch.zeros(50, 1, 16, 16, requires_grad=True)
    out = cutout(x)
    cut = (out == -1).flatten(1).sum(1)
    assert (cut > 0).all() and (cut <= 64).all()  # one square of side 8, possibly clipped by the border
    assert (cut == 64).any()
    y = diff_augment(x, ["translation", "cutout"])
    y.sum().backward()  # differentiable w.r.t. the images (G's gradients pass through)
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert diff_augment(x, []) is x


@pytest.mark.parametrize("name", ["dcgan", "acgan", "lapgan", "lapgan-joint"])
def test_augment_option_trains(name):
    m = tiny(name, augment=["translation", "cutout"], **({} if name == "acgan" else {"conditional": True}))
    out = m.training_step(batch(), 0)
    assert all(torch.isfinite(v) for v in out.values())
    with pytest.raises(ConfigError):
        resolve_params(name, "cpu", {"augment": ["colour"]})


# ---------------------------------------------------------------------------- minibatch stddev
def test_minibatch_stddev_matches_per_group_reference():
    from medbalance.models.layers import minibatch_stddev

    g = torch.Generator().manual_seed(0)
    h = torch.randn(12, 5, 4, 4, generator=g)
    out = minibatch_stddev(h, group_size=4)
    assert out.shape == (12, 6, 4, 4) and torch.equal(out[:, :5], h)
    # groups: images with the same index modulo 12 // 4 = 3; population std over the group, mean over C, H, W
    for i in range(12):
        grp = h[torch.arange(i % 3, 12, 3)]
        ref = grp.std(dim=0, unbiased=False).mean()
        assert torch.allclose(out[i, 5], ref.expand(4, 4), atol=1e-5)
    # a collapsed batch (identical images) gets ~0; batch sizes not divisible by 4 use a smaller group
    same = h[:1].expand(6, -1, -1, -1)
    assert minibatch_stddev(same)[:, 5].abs().max() < 1e-3
    assert minibatch_stddev(h[:7]).shape == (7, 6, 4, 4)  # 7 is prime: groups of 1, map of zeros
    assert minibatch_stddev(h[:7])[:, 5].abs().max() < 1e-3


@pytest.mark.parametrize("name", ["dcgan", "acgan"])
def test_mbstd_option(name):
    m = tiny(name, mbstd=True, **({} if name == "acgan" else {"conditional": True}))
    assert m.D.out.in_channels == m.D.feat_channels + 1
    out = m.training_step(batch(n=8), 0)
    assert all(torch.isfinite(v) for v in out.values())
    assert m.discriminate(batch(n=5)["image"], torch.arange(5) % 3).shape == (5,)


@pytest.mark.parametrize("aux_loss", ["acgan", "tac"])
def test_acgan_losses_match_hand_computation(aux_loss):
    """D and G losses of one ACGAN / TAC-GAN step against the formulas, recomputed on a copy of the model."""
    import copy

    m = tiny("acgan", aux_loss=aux_loss, augment=[])  # no DiffAugment draws
    assert (m.D.twin is not None) == (aux_loss == "tac")
    ref = copy.deepcopy(m)
    b = batch(n=6)
    torch.manual_seed(3)
    out = m.training_step(b, 0)
    torch.manual_seed(3)  # same draws: fake labels, then z
    y_fake = torch.randint(0, 3, (6,))
    z = torch.randn(6, 8)
    fake = ref.G(z, y_fake)
    h_r, h_f = ref.D.features(b["image"]), ref.D.features(fake)
    bce = F.binary_cross_entropy_with_logits
    src = bce(ref.D.logits(h_r), torch.ones(6)) + bce(ref.D.logits(h_f), torch.zeros(6))
    ce = F.cross_entropy
    if aux_loss == "tac":
        cls = ce(ref.D.class_logits(h_r), b["label"]) + ce(ref.D.twin_logits(h_f), y_fake)
    else:
        cls = ce(ref.D.class_logits(h_r), b["label"]) + ce(ref.D.class_logits(h_f), y_fake)
    assert out["loss_d"].item() == pytest.approx((src + cls).item(), rel=1e-5)
    # G step: D has been updated once; use the updated D on the same fakes
    ref.D.load_state_dict(m.D.state_dict())
    h = ref.D.features(fake)
    g_cls = ce(ref.D.class_logits(h), y_fake)
    if aux_loss == "tac":
        g_cls = g_cls - ce(ref.D.twin_logits(h), y_fake)
    g = bce(ref.D.logits(h), torch.ones(6)) + g_cls
    assert out["loss_g"].item() == pytest.approx(g.item(), rel=1e-5)


def test_lapgan_zero_init_refiners_start_from_the_upsampled_coarse_image():
    m = tiny("lapgan-joint", c=1, size=32, ref_zero_init=True, conditional=True)
    pyr = m.generate_pyramid(torch.tensor([0, 1, 2]), generator=torch.Generator().manual_seed(0))
    for coarse, fine in zip(pyr[:-1], pyr[1:]):
        assert torch.allclose(fine, pyr_up(coarse), atol=1e-6)  # untrained: the residual is exactly 0
    m.training_step(batch(n=4, c=1, size=32), 0)  # the output convs get gradients and move off zero
    assert all(r.net[-1].weight.abs().sum() > 0 for r in m.G.refiners)


# ---------------------------------------------------------------------------- mode seeking (MSGAN)
def test_mode_seeking_pairs_and_loss_against_hand_computation():
    from medbalance.models.dcgan import mode_seeking_loss, mode_seeking_pairs

    y, pairs = mode_seeking_pairs(torch.tensor([2, 0, 1, 1, 0]), 5)
    assert pairs == 2 and y.tolist() == [2, 0, 2, 0, 0]  # (i, i+2) share a label; the odd last one is unpaired
    assert mode_seeking_pairs(None, 4) == (None, 2)
    g = torch.Generator().manual_seed(0)
    fake, z = torch.randn(5, 1, 4, 4, generator=g), torch.randn(5, 3, generator=g)
    num = sum((fake[i] - fake[i + 2]).abs().sum() for i in range(2)) / (2 * 16)
    den = sum((z[i] - z[i + 2]).abs().sum() for i in range(2)) / (2 * 3)
    torch.testing.assert_close(mode_seeking_loss(fake, z, 2), 1.0 / (num / den + 1e-5))


@pytest.mark.parametrize("name", ["dcgan", "acgan"])
def test_mode_seeking_term_in_the_generator_step(name):
    extra = {} if name == "acgan" else {"conditional": True}
    m = tiny(name, mode_seeking=1.0, **extra)
    out = m.training_step(batch(n=6), 0)
    assert "loss_ms" in out and torch.isfinite(out["loss_ms"]) and out["loss_ms"] > 0
    assert "loss_ms" not in tiny(name, **extra).training_step(batch(n=6), 0)


def test_class_batchnorm_against_manual_computation():
    from medbalance.models.layers import ClassBatchNorm2d

    torch.manual_seed(0)
    cbn = ClassBatchNorm2d(5, 3)
    x, y = torch.randn(6, 5, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.allclose(cbn(x, y), torch.nn.BatchNorm2d(5, affine=False)(x), atol=1e-6)  # starts as plain BN
    with torch.no_grad():
        cbn.gain.weight.uniform_(0.5, 2)
        cbn.bias.weight.normal_()
    mu, var = x.mean(dim=(0, 2, 3), keepdim=True), x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    ref = (x - mu) / torch.sqrt(var + 1e-5) * cbn.gain.weight[y][:, :, None, None] + cbn.bias.weight[y][:, :, None, None]
    assert torch.allclose(cbn(x, y), ref, atol=1e-5)


@pytest.mark.parametrize("name", ["dcgan", "acgan"])
@pytest.mark.parametrize("c", [1, 3, 4])
def test_class_bn_generator(name, c):
    """``class_bn``: every G BatchNorm becomes class-conditional; the class changes the image for the same z."""
    from medbalance.models.layers import ClassBatchNorm2d

    extra = {} if name == "acgan" else {"conditional": True}
    m = tiny(name, c=c, class_bn=True, **extra)
    n_bn = sum(isinstance(mod, ClassBatchNorm2d) for mod in m.G.modules())
    assert n_bn == 3 and not any(isinstance(mod, torch.nn.BatchNorm2d) and mod.affine for mod in m.G.modules())
    with torch.no_grad():
        for mod in m.G.modules():
            if isinstance(mod, ClassBatchNorm2d):
                mod.bias.weight.normal_()
    m.G.eval()
    z = torch.randn(1, 8).repeat(3, 1)
    x = m.G(z, torch.tensor([0, 1, 2]))
    assert x.shape == (3, c, 32, 32) and (x[0] - x[1]).abs().max() > 1e-3 and (x[1] - x[2]).abs().max() > 1e-3
    out = m.training_step(batch(c=c), 0)
    assert all(torch.isfinite(v) for v in out.values())
    # an unconditional DCGAN ignores the option (nothing to condition on)
    plain = tiny("dcgan", c=c, class_bn=True)
    assert not any(isinstance(mod, ClassBatchNorm2d) for mod in plain.G.modules())
    with pytest.raises(ConfigError, match="class_bn needs a class-conditional"):
        DCGANGenerator(8, c, 32, class_bn=True)
