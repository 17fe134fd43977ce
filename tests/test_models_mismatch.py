"""Matching-aware discriminator (GAN-CLS, Reed et al. 2016) of the conditional DCGAN: the wrong-class labels, the
D loss against a hand computation (on and off), and the errors."""

from __future__ import annotations

import copy

import pytest
import torch

import medbalance.models.dcgan as dcgan_mod
import medbalance.models.lapgan as lapgan_mod
from medbalance.data.dataset import DataInfo
from medbalance.errors import ConfigError
from medbalance.models.losses import d_loss, mismatched_labels
from medbalance.models.registry import build_method

TINY = {"z_dim": 8, "ngf": 8, "ndf": 8, "max_mult": 4, "augment": [], "conditional": True}


def _info(c: int = 1, k: int = 3) -> DataInfo:
    return DataInfo(channels=c, spatial_shape=(32, 32), class_names=[f"c{i}" for i in range(k)], mask_values=[0])


def test_mismatched_labels_are_another_class_uniformly():
    torch.manual_seed(0)
    y = torch.arange(4).repeat(3000)
    w = mismatched_labels(y, 4)
    assert w.shape == y.shape and w.dtype == y.dtype
    assert not (w == y).any()
    for c in range(4):  # each of the 3 other classes about 1/3 of the time
        counts = torch.bincount(w[y == c], minlength=4).float() / 3000
        assert counts[c] == 0
        assert torch.allclose(counts[torch.arange(4) != c], torch.full((3,), 1 / 3), atol=0.03)
    with pytest.raises(ConfigError, match="at least 2 classes"):
        mismatched_labels(torch.zeros(3, dtype=torch.long), 1)


@pytest.mark.parametrize("kind,channels", [("bce", 1), ("bce", 3), ("hinge", 3), ("lsgan", 1)])
def test_d_loss_with_mismatch_against_hand_computation(monkeypatch, kind, channels):
    info = _info(c=channels)
    torch.manual_seed(0)
    m = build_method("dcgan", "cpu", {**TINY, "mismatch": True, "loss": kind}, info)
    m.setup_optimizers()
    ref = copy.deepcopy(m)
    wrong = torch.tensor([1, 2, 0, 1])
    monkeypatch.setattr(dcgan_mod, "mismatched_labels", lambda y, k: wrong)
    batch = {"image": torch.rand(4, channels, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1,
             "label": torch.tensor([0, 1, 2, 0])}
    torch.manual_seed(5)
    out = m.training_step(batch, 0)
    torch.manual_seed(5)
    z = torch.randn(4, 8)
    with torch.no_grad():
        fake = ref.G(z, batch["label"])
        h = ref.D.features(batch["image"])
        r = ref.D.logits(h, batch["label"])
        f = ref.D(fake, batch["label"])
        w = ref.D.logits(h, wrong)
    # Reed et al.: real-right is real; the fake side averages (fake, right) and (real, wrong) with equal weight
    F = torch.nn.functional
    real_side = {"bce": lambda t: F.softplus(-t).mean(), "hinge": lambda t: torch.relu(1 - t).mean(),
                 "lsgan": lambda t: 0.5 * ((t - 1) ** 2).mean()}[kind]
    fake_side = {"bce": lambda t: F.softplus(t).mean(), "hinge": lambda t: torch.relu(1 + t).mean(),
                 "lsgan": lambda t: 0.5 * (t**2).mean()}[kind]
    expected = real_side(r) + 0.5 * (fake_side(f) + fake_side(w))
    assert torch.allclose(out["loss_d"], expected, atol=1e-5)
    # off: the fake side is (fake, right) only
    torch.manual_seed(0)
    m0 = build_method("dcgan", "cpu", {**TINY, "loss": kind, "mismatch": False}, info)
    m0.setup_optimizers()
    torch.manual_seed(5)
    out0 = m0.training_step(batch, 0)
    assert torch.allclose(out0["loss_d"], real_side(r) + fake_side(f), atol=1e-5)


def test_mismatch_is_ignored_by_an_unconditional_model_and_needs_two_classes():
    torch.manual_seed(0)
    m = build_method("dcgan", "cpu", {**TINY, "conditional": False, "mismatch": True}, _info())
    assert not m.mismatch
    m.setup_optimizers()
    torch.manual_seed(5)
    out = m.training_step({"image": torch.zeros(4, 1, 32, 32), "label": torch.tensor([0, 1, 2, 0])}, 0)
    assert torch.isfinite(out["loss_d"])
    with pytest.raises(ConfigError, match="at least 2 classes"):
        build_method("dcgan", "cpu", {**TINY, "mismatch": True}, _info(k=1))


LAP_TINY = {"z_dim": 8, "ngf": 8, "ndf": 8, "max_mult": 4, "ref_ngf": 8, "ref_layers": 2, "base_size": 8,
            "augment": [], "conditional": True, "mismatch": True}


@pytest.mark.parametrize("name,channels", [("lapgan", 1), ("lapgan-joint", 3)])
def test_lapgan_mismatch_at_every_level(monkeypatch, name, channels):
    """Every level's D loss is d_loss(real-right, [fake-right, real-wrong]): the logits each level's D returned in the
    D step (recorded by hooks, in call order) give back the logged per-level losses."""
    torch.manual_seed(0)
    m = build_method(name, "cpu", LAP_TINY, _info(c=channels))
    m.setup_optimizers()
    wrong = torch.tensor([2, 0, 1, 2])
    monkeypatch.setattr(lapgan_mod, "mismatched_labels", lambda y, k: wrong)
    calls: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    dks = [m.D.coarse, *m.D.refiners]
    for i, dk in enumerate(dks):
        dk.register_forward_hook(lambda mod, args, out, i=i: calls.append((i, args[1], out.detach())))
    batch = {"image": torch.rand(4, channels, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1,
             "label": torch.tensor([0, 1, 2, 0])}
    out = m.training_step(batch, 0)
    d_calls = calls[: 3 * len(dks)]  # the D step: per level real-right, fake-right, real-wrong
    for lvl, size in enumerate(m.G.sizes):
        (i1, y1, r), (i2, y2, f), (i3, y3, w) = d_calls[3 * lvl : 3 * lvl + 3]
        assert i1 == i2 == i3 == lvl
        assert torch.equal(y1, batch["label"]) and torch.equal(y2, batch["label"]) and torch.equal(y3, wrong)
        assert torch.allclose(out[f"loss_d_{size}"], d_loss(r, torch.cat([f, w]), "bce"), atol=1e-5)
