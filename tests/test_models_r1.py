"""R1 gradient penalty (Mescheder et al. 2018): the penalty against a hand computation, and the ``r1_gamma``
option of every GAN method (logged, reaches D's update, off by default)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medbalance.data.dataset import DataInfo
from medbalance.models.losses import r1_input, r1_penalty, with_r1
from medbalance.models.redgan import RedGAN
from medbalance.models.registry import build_method, resolve_params


def test_r1_penalty_against_hand_computation():
    a = torch.tensor(0.7, requires_grad=True)
    x = torch.randn(5, 2, 3, 3)
    xin = r1_input(x, 1.0)
    assert xin.requires_grad and not x.requires_grad
    logits = (a * xin.pow(2)).sum(dim=(1, 2, 3))  # D(x) = a * sum x^2  ->  grad = 2 a x
    pen = r1_penalty(logits, xin)
    ref = (2 * 0.7 * x).pow(2).flatten(1).sum(1).mean()
    assert torch.allclose(pen, ref, rtol=1e-5)
    (g,) = torch.autograd.grad(pen, a)  # create_graph: D's parameters get the penalty's gradient
    assert torch.allclose(g, (8 * 0.7 * x.pow(2)).flatten(1).sum(1).mean(), rtol=1e-5)
    # a list of scales (patch maps): the logits of all scales are summed per image
    x2 = r1_input(torch.randn(3, 1, 4, 4), 1.0)
    w = torch.randn(1, 1, 4, 4)
    maps = [x2 * w, (x2 * w).mean(dim=(2, 3), keepdim=True)]  # a patch map and a pooled "scale"
    grad_ref = w * (1 + 1 / 16)
    assert torch.allclose(r1_penalty(maps, x2), grad_ref.pow(2).sum().expand(3).mean(), rtol=1e-5)
    # gamma = 0: unchanged loss, nothing logged, no leaf created
    loss = torch.tensor(1.5)
    assert with_r1(loss, logits, xin, 0.0) == (loss, {}) and r1_input(x, 0.0) is x
    total, logs = with_r1(loss, (a * xin.pow(2)).sum(dim=(1, 2, 3)), xin, 4.0)
    assert torch.allclose(total, 1.5 + 2.0 * ref, rtol=1e-5) and torch.allclose(logs["r1"], ref, rtol=1e-5)


class _Seg(nn.Module):
    def __init__(self, c: int, k: int):
        super().__init__()
        self.c1, self.bn, self.c2 = nn.Conv2d(c, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, k, 1)

    def forward(self, x):
        return self.c2(F.relu(self.bn(self.c1(x))))


GAN_TINY = {"z_dim": 8, "ngf": 8, "ndf": 8, "max_mult": 4}
LAP_TINY = {**GAN_TINY, "ref_ngf": 8, "ref_layers": 2, "base_size": 8}
SPADE_TINY = {"ngf": 4, "num_up": 3, "spade_hidden": 8, "ndf": 8}
CASES = {
    "dcgan": {**GAN_TINY, "conditional": True},
    "acgan": GAN_TINY,
    "lapgan": {**LAP_TINY, "conditional": True},
    "lapgan-joint": LAP_TINY,
    "pix2pix": {"ngf": 8, "ndf": 8},
    "spade": SPADE_TINY,
    "redgan": {**SPADE_TINY, "embed_dim": 8, "class_map_channels": 8},
}


def _build(name: str, gamma: float, c: int):
    info = DataInfo(channels=c, spatial_shape=(32, 32), class_names=["a", "b", "c"], mask_values=[0, 1])
    params = {**CASES[name], "r1_gamma": gamma}
    torch.manual_seed(0)
    if name == "redgan":
        m = RedGAN(resolve_params("redgan", "cpu", params), info, segmentor=_Seg(c, 2))
    else:
        m = build_method(name, "cpu", params, info)
    m.setup_optimizers()
    return m


def _batch(c: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "image": torch.rand(4, c, 32, 32, generator=g) * 2 - 1,
        "label": torch.tensor([0, 1, 2, 0]),
        "mask": torch.randint(0, 2, (4, 32, 32), generator=g),
    }


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("c", [1, 3])
def test_r1_option_in_every_gan(name, c):
    off, on = _build(name, 0.0, c), _build(name, 10.0, c)
    torch.manual_seed(5)
    logs_off = off.training_step(_batch(c), 0)
    torch.manual_seed(5)
    logs_on = on.training_step(_batch(c), 0)
    assert not any(k.startswith("r1") for k in logs_off)
    pens = {k: v for k, v in logs_on.items() if k.startswith("r1")}
    assert pens and all(torch.isfinite(v) and v > 0 for v in pens.values()), pens
    if name.startswith("lapgan"):
        assert sorted(pens) == ["r1_16", "r1_32", "r1_8"]  # one per pyramid level: 8 px coarse, 2 refiners
    d_off, d_on = off.networks()["D"].state_dict(), on.networks()["D"].state_dict()
    assert any(not torch.equal(d_off[k], d_on[k]) for k in d_off if d_off[k].is_floating_point())
