"""A tiny conditional GAN used only by the training-engine tests (registered as 'tiny-test').

No BatchNorm (so multi-process runs equal single-process ones). ``noise='rng'`` draws noise
from the global torch RNG (exercises RNG-state checkpointing); ``noise='index'`` derives each
sample's noise from (step, dataset index), so the noise of a global batch does not depend on
how it is split across processes.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medbalance.config import BaseConfig
from medbalance.data.dataset import DataInfo, ImageDataset, IntensityInfo
from medbalance.models.base import GANMethod, set_requires_grad
from medbalance.models.registry import MODELS, ModelSpec, ensure_registered


class TinyParams(BaseConfig):
    nz: int = 8
    hidden: int = 32
    lr: float = 2e-3
    noise: Literal["rng", "index"] = "rng"


class _G(nn.Module):
    def __init__(self, info: DataInfo, p: TinyParams, use_mask: bool):
        super().__init__()
        self.shape = (info.channels, *info.spatial_shape)
        npix = int(np.prod(info.spatial_shape))
        self.use_mask = use_mask
        self.emb = nn.Embedding(info.num_classes, 8)
        self.net = nn.Sequential(
            nn.Linear(p.nz + 8 + (npix if use_mask else 0), p.hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(p.hidden, int(np.prod(self.shape))),
            nn.Tanh(),
        )

    def forward(self, z, labels, masks=None):
        h = [z, self.emb(labels)]
        if self.use_mask:
            h.append((masks > 0).float().flatten(1))
        return self.net(torch.cat(h, 1)).view(-1, *self.shape)


class _D(nn.Module):
    def __init__(self, info: DataInfo, p: TinyParams):
        super().__init__()
        n = info.channels * int(np.prod(info.spatial_shape))
        self.emb = nn.Embedding(info.num_classes, 8)
        self.net = nn.Sequential(nn.Linear(n + 8, p.hidden), nn.LeakyReLU(0.2), nn.Linear(p.hidden, 1))

    def forward(self, x, labels):
        return self.net(torch.cat([x.flatten(1), self.emb(labels)], 1)).squeeze(1)


def index_noise(index: torch.Tensor, step: int, nz: int) -> torch.Tensor:
    """Deterministic pseudo-noise in [-1, 1] from (dataset index, step), vectorised."""
    j = torch.arange(nz, dtype=torch.float64, device=index.device)
    v = torch.sin(index.double()[:, None] * 12.9898 + step * 78.233 + j * 37.719) * 43758.5453
    return (2 * torch.frac(v).abs() - 1).float()


class TinyGAN(GANMethod):
    name = "tiny-test"
    needs = ("label",)
    use_mask = False

    def __init__(self, params: TinyParams, info: DataInfo):
        super().__init__(params, info)
        self.G = _G(info, params, self.use_mask)
        self.D = _D(info, params)

    def networks(self):
        return {"G": self.G, "D": self.D}

    def configure_optimizers(self):
        p = self.params
        return {
            "D": (torch.optim.Adam(self.D.parameters(), lr=p.lr, betas=(0.5, 0.999)), self.D),
            "G": (torch.optim.Adam(self.G.parameters(), lr=p.lr, betas=(0.5, 0.999)), self.G),
        }

    def _noise(self, batch, step):
        x = batch["image"]
        if self.params.noise == "index":
            return index_noise(batch["index"], step, self.params.nz).to(x.device)
        return torch.randn(len(x), self.params.nz, device=x.device)

    def training_step(self, batch, step):
        x, y = batch["image"], batch["label"]
        m = batch.get("mask")
        z = self._noise(batch, step)
        set_requires_grad(self.D, True)
        with self.autocast():
            fake = self.G(z, y, m)
            loss_D = F.softplus(-self.D(x, y)).mean() + F.softplus(self.D(fake.detach(), y)).mean()
        self.optimize("D", loss_D)
        set_requires_grad(self.D, False)
        with self.autocast():
            loss_G = F.softplus(-self.D(fake, y)).mean()
        self.optimize("G", loss_G)
        set_requires_grad(self.D, True)
        return {"loss_D": loss_D.detach(), "loss_G": loss_G.detach()}

    @torch.no_grad()
    def generate(self, labels, masks=None, conditions=None, generator=None, G=None):
        G = G if G is not None else self.G
        z = torch.randn(len(labels), self.params.nz, generator=generator).to(labels.device)
        return G(z, labels, masks).float()


class TinyMaskGAN(TinyGAN):
    name = "tiny-mask-test"
    needs = ("label", "mask")
    use_mask = True


def register() -> None:
    ensure_registered()
    if "tiny-test" not in MODELS:
        MODELS.add("tiny-test", ModelSpec(TinyGAN, TinyParams, {"cpu": {}, "paper": {}}, "test-only tiny GAN"))
    if "tiny-mask-test" not in MODELS:
        MODELS.add(
            "tiny-mask-test", ModelSpec(TinyMaskGAN, TinyParams, {"cpu": {}, "paper": {}}, "test-only tiny mask GAN")
        )


register()


def tiny_dataset(n: int = 24, size: int = 8, num_classes: int = 3, masks: bool = True, groups: bool = False,
                 seed: int = 0) -> ImageDataset:
    """Small synthetic dataset: class-dependent blobs with matching binary masks."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    cx = (labels.float() + 1) * size / (num_classes + 1)
    r = size / 4
    m = ((xx[None] - cx[:, None, None]) ** 2 + (yy[None] - size / 2) ** 2) <= r * r
    imgs = (m.float() * 1.6 - 0.8)[:, None] + 0.1 * torch.randn(n, 1, size, size, generator=g)
    return ImageDataset(
        images=imgs.clamp(-1, 1),
        labels=labels.long(),
        class_names=[f"c{i}" for i in range(num_classes)],
        ids=[f"s{i:03d}" for i in range(n)],
        masks=m.long() if masks else None,
        mask_values=[0, 255] if masks else None,
        groups=[f"p{i // 2}" for i in range(n)] if groups else None,
        intensity=IntensityInfo(),
    )
