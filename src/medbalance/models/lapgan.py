"""LAPGAN (Denton, Chintala, Szlam & Fergus 2015) and a jointly trained variant, as compared in
MelanoGANs (Baur et al. 2018).

Laplacian pyramid: ``pyr_down`` = 5-tap binomial blur + subsample by 2, ``pyr_up`` = zero
insertion + 4x the same blur (Burt & Adelson 1983). For a Gaussian pyramid ``I_0 = x``,
``I_{k+1} = down(I_k)``, the band-pass levels are ``h_k = I_k - up(I_{k+1})`` and
``I_k = up(I_{k+1}) + h_k`` reconstructs the image exactly.

Generators (all held by one :class:`LaplacianGenerator`, so EMA and sampling see one module):
a DCGAN generator at the coarsest level (``base_size``), and for each finer level a
conditional conv net ``G_k(z_k, up(I_{k+1}), y) -> h_k`` (noise and class embedding are extra
input planes). Discriminators: a DCGAN D at the coarsest level, and per finer level a DCGAN D
(``ref_d: dcgan``) or a pix2pix PatchGAN (``ref_d: patch``) on ``concat(I_k, up(I_{k+1}))`` (+ class
projection / class planes when conditional).

- ``lapgan``: levels trained independently on *real* pyramids (Denton et al.): level k's
  generator is conditioned on ``up(real I_{k+1})``. The per-level losses are summed and share
  one Adam per player; since no parameter appears in two levels' losses this is exactly
  independent training.
- ``lapgan-joint``: the levels are chained end to end (``I_k~ = up(I_{k+1}~) + G_k(...)`` from the
  coarsest *generated* image), with a discriminator at every scale and the losses summed, so
  gradients of finer levels reach the coarser generators. This is our reading of MelanoGANs'
  "modification of LAPGAN" ([MEM], unverified; see docs/models/dcgan_family.md).

Sampling always chains the levels from a generated coarsest image.

Small-data options (not in the papers; on in the ``cpu`` preset): ``augment`` (DiffAugment of every D's input),
``ref_zero_init`` (refiners start as the identity on the upsampled coarser image), ``upsample: resize``
(resize-convolution in the coarse G) and ``ref_d: patch`` (PatchGAN discriminators at the finer levels); see
docs/models/dcgan_family.md.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from medbalance.config import BaseConfig
from medbalance.data.dataset import DataInfo
from medbalance.errors import ConfigError
from medbalance.models.augment import Policy, diff_augment
from medbalance.models.base import GANMethod, set_requires_grad
from medbalance.models.dcgan import UPSAMPLE_HELP, DCGANDiscriminator, DCGANGenerator, UpsampleMode
from medbalance.models.layers import (
    ClassPlanes,
    binomial_blur,
    check_labels,
    chunked,
    cpu_noise,
    dcgan_init_,
    eval_mode,
    is_power_of_two,
    log2i,
    module_device,
    square_pow2_size,
)
from medbalance.models.losses import (
    MISMATCH_HELP,
    R1_HELP,
    d_loss,
    g_loss,
    mismatch_enabled,
    mismatched_labels,
    r1_input,
    with_r1,
)
from medbalance.models.pix2pix import PatchDiscriminator, init_weights
from medbalance.models.registry import MODELS, ModelSpec

# ---------------------------------------------------------------------------- pyramid
def pyr_down(x: torch.Tensor) -> torch.Tensor:
    """Blur with the 5-tap binomial kernel and keep every second pixel: (B,C,H,W) -> (B,C,H/2,W/2)."""
    return binomial_blur(x, 5, stride=2)


def pyr_up(x: torch.Tensor) -> torch.Tensor:
    """Insert zeros between pixels and blur with 4x the binomial kernel: (B,C,H,W) -> (B,C,2H,2W)."""
    b, c, h, w = x.shape
    up = x.new_zeros(b, c, 2 * h, 2 * w)
    up[:, :, ::2, ::2] = x
    return binomial_blur(up, 5, gain=4.0)


def laplacian_pyramid(x: torch.Tensor, levels: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``(bands, coarsest)``: ``bands[k] = I_k - up(I_{k+1})`` from finest (k=0) to coarsest
    band-pass level, and the low-pass image ``I_levels``."""
    bands = []
    cur = x
    for _ in range(levels):
        low = pyr_down(cur)
        bands.append(cur - pyr_up(low))
        cur = low
    return bands, cur


def reconstruct(bands: list[torch.Tensor], coarsest: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`laplacian_pyramid`: ``I_k = up(I_{k+1}) + h_k`` from coarse to fine."""
    cur = coarsest
    for h in reversed(bands):
        cur = pyr_up(cur) + h
    return cur


def gaussian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """``[I_levels, ..., I_1, I_0 = x]`` (coarse to fine)."""
    out = [x]
    for _ in range(levels):
        out.append(pyr_down(out[-1]))
    return out[::-1]


# ---------------------------------------------------------------------------- networks
class LaplacianRefiner(nn.Module):
    """``G_k``: ``(noise planes (B,nz,H,W), low (B,C,H,W), labels) -> band-pass residual (B,C,H,W)``.

    ``layers`` hidden [Conv3x3 + BN + ReLU] at full resolution, then a linear Conv3x3 (residuals
    are signed, no tanh)."""

    def __init__(
        self,
        channels: int,
        nz: int,
        width: int,
        layers: int,
        num_classes: int = 0,
        class_planes: int = 0,
        zero_init: bool = False,
    ):
        super().__init__()
        self.nz = nz
        self.planes = ClassPlanes(num_classes, class_planes) if num_classes > 0 and class_planes > 0 else None
        cin = channels + nz + (class_planes if self.planes is not None else 0)
        mods: list[nn.Module] = []
        for i in range(layers):
            mods += [nn.Conv2d(cin if i == 0 else width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(True)]
        mods.append(nn.Conv2d(width if layers > 0 else cin, channels, 3, 1, 1))
        self.net = nn.Sequential(*mods)
        dcgan_init_(self)
        if zero_init:  # the residual starts at 0: an untrained level passes up(coarser) through unchanged
            nn.init.zeros_(mods[-1].weight)
            nn.init.zeros_(mods[-1].bias)

    def forward(self, noise: torch.Tensor, low: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        parts = [low, noise.to(low.dtype)]
        if self.planes is not None:
            if labels is None:
                raise ConfigError("conditional LAPGAN generator needs labels")
            parts.append(self.planes(labels, low.shape[-2:], dtype=low.dtype))
        return self.net(torch.cat(parts, dim=1))


class LaplacianGenerator(nn.Module):
    """All LAPGAN generators: the coarse DCGAN generator and one refiner per finer level.

    ``forward(z, noises, labels)`` chains them and returns the images of every level, coarse to
    fine (``noises[i]`` feeds ``refiners[i]``, whose output side is ``base_size * 2**(i+1)``)."""

    def __init__(self, coarse: DCGANGenerator, refiners: list[LaplacianRefiner], base_size: int):
        super().__init__()
        self.coarse = coarse
        self.refiners = nn.ModuleList(refiners)
        self.base_size = base_size

    @property
    def sizes(self) -> list[int]:
        return [self.base_size * 2**i for i in range(len(self.refiners) + 1)]

    def forward(
        self, z: torch.Tensor, noises: list[torch.Tensor], labels: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        imgs = [self.coarse(z, labels)]
        for ref, nz in zip(self.refiners, noises):
            low = pyr_up(imgs[-1])
            imgs.append(low + ref(nz, low, labels))
        return imgs


class LaplacianDiscriminator(nn.Module):
    """The coarse DCGAN discriminator and one conditional discriminator per finer level
    (``refiners[i]`` scores ``concat(I, up(I_coarser))`` at side ``base_size * 2**(i+1)``)."""

    def __init__(self, coarse: DCGANDiscriminator, refiners: list[nn.Module]):
        super().__init__()
        self.coarse = coarse
        self.refiners = nn.ModuleList(refiners)


# ---------------------------------------------------------------------------- params
class LAPGANParams(BaseConfig):
    base_size: int | None = Field(
        8,
        ge=8,
        description="side of the coarsest pyramid level (power of two < image size); null = half the image side "
        "(one refinement level)",
    )
    z_dim: int = Field(100, ge=1, description="latent dimension of the coarse DCGAN")
    ngf: int = Field(64, ge=1, description="coarse DCGAN generator width")
    ndf: int = Field(64, ge=1, description="coarse DCGAN discriminator width (and per-level D width)")
    max_mult: int = Field(8, ge=1, description="DCGAN width multiplier cap")
    ref_ngf: int = Field(64, ge=1, description="width of each refinement generator")
    ref_layers: int = Field(3, ge=1, description="hidden conv layers per refinement generator")
    ref_nz: int = Field(1, ge=1, description="noise planes fed to each refinement generator")
    conditional: bool = Field(
        False, description="class-conditional: embedding->z (coarse G), embedding planes (refiners), projection (all D)"
    )
    embed_dim: int = Field(8, ge=1, description="class embedding concatenated to z in the coarse G")
    class_planes: int = Field(4, ge=1, description="class-embedding planes fed to each refinement generator")
    ref_zero_init: bool = Field(
        False,
        description="initialise each refiner's output conv to zero, so training starts from the upsampled "
        "coarser image instead of adding random band-pass noise (not in Denton et al.)",
    )
    upsample: UpsampleMode = Field("convt", description=f"the coarse DCGAN's {UPSAMPLE_HELP}")
    ref_d: Literal["dcgan", "patch"] = Field(
        "dcgan",
        description="discriminator of each finer level: 'dcgan' (one logit per image, as the coarse level) or "
        "'patch' (pix2pix PatchGAN with ref_d_layers strided layers: one logit per patch; not in Denton et al.)",
    )
    ref_d_layers: int = Field(2, ge=1, le=4, description="strided layers of the 'patch' refiner D (2: 34 px patches)")
    loss: Literal["bce", "hinge", "lsgan"] = "bce"
    augment: list[Policy] = Field(
        default_factory=list,
        description="DiffAugment policies applied to every discriminator's input in D and G steps; a finer "
        "level's (image, upsampled coarser image) pair is transformed jointly (Zhao et al. 2020; not in "
        "LAPGAN/MelanoGANs; [] = off)",
    )
    r1_gamma: float = Field(0.0, ge=0, description=R1_HELP + "; applied to every level's discriminator")
    mismatch: bool = Field(False, description=MISMATCH_HELP + "; at every level")
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)


# ---------------------------------------------------------------------------- method
class LAPGAN(GANMethod):
    """LAPGAN: Laplacian-pyramid GAN, levels trained independently on real pyramids."""

    name = "lapgan"
    needs = ("label",)
    joint = False
    channels_last = True

    def __init__(self, params: LAPGANParams, info: DataInfo):
        super().__init__(params, info)
        p = params
        self.size = square_pow2_size(info, self.name)
        base = p.base_size if p.base_size is not None else self.size // 2
        if not is_power_of_two(base) or base < 8 or base >= self.size:
            raise ConfigError(
                f"{self.name}: base_size must be a power of two >= 8 and smaller than the image side "
                f"{self.size}; got {base}"
            )
        self.levels = log2i(self.size // base)
        self.num_classes = max(1, info.num_classes)
        self.conditional = bool(p.conditional)
        self.mismatch = mismatch_enabled(p.mismatch, self.conditional, info.num_classes)
        k = self.num_classes if self.conditional else 0
        c = info.channels
        sizes = [base * 2**i for i in range(self.levels + 1)]
        coarse_g = DCGANGenerator(
            p.z_dim, c, base, p.ngf, p.max_mult, num_classes=k, embed_dim=p.embed_dim, upsample=p.upsample
        )
        refs = [
            LaplacianRefiner(c, p.ref_nz, p.ref_ngf, p.ref_layers, k, p.class_planes, p.ref_zero_init) for _ in sizes[1:]
        ]
        self.G = LaplacianGenerator(coarse_g, refs, base)
        if p.ref_d == "patch":
            ref_ds: list[nn.Module] = [
                PatchDiscriminator(2 * c, (s, s), p.ndf, p.ref_d_layers, "batch", p.max_mult, num_classes=k)
                for s in sizes[1:]
            ]
            for d in ref_ds:
                d.apply(init_weights)
        else:
            ref_ds = [DCGANDiscriminator(2 * c, s, p.ndf, p.max_mult, num_classes=k) for s in sizes[1:]]
        self.D = LaplacianDiscriminator(DCGANDiscriminator(c, base, p.ndf, p.max_mult, num_classes=k), ref_ds)

    def networks(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D}

    def configure_optimizers(self):
        p = self.params
        betas = (p.beta1, p.beta2)
        return {
            "D": (torch.optim.Adam(self.D.parameters(), lr=p.lr_d, betas=betas), self.D),
            "G": (torch.optim.Adam(self.G.parameters(), lr=p.lr_g, betas=betas), self.G),
        }

    def _noises(self, n: int, device, generator=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        p = self.params
        if generator is None:
            z = torch.randn(n, p.z_dim, device=device)
            planes = [torch.randn(n, p.ref_nz, s, s, device=device) for s in self.G.sizes[1:]]
        else:
            z = cpu_noise((n, p.z_dim), generator, device)
            planes = [cpu_noise((n, p.ref_nz, s, s), generator, device) for s in self.G.sizes[1:]]
        return z, planes

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        real = batch["image"]
        y = batch["label"] if self.conditional else None
        kind = self.params.loss
        G, D = self.G, self.D

        def aug(x: torch.Tensor) -> torch.Tensor:
            return diff_augment(x, self.params.augment)

        with torch.no_grad():
            gauss = gaussian_pyramid(real.float(), self.levels)  # coarse -> fine
            real_lows = [pyr_up(g) for g in gauss[:-1]]  # real_lows[i] conditions refiners[i]
        z, planes = self._noises(real.shape[0], real.device)
        with self.autocast():
            fakes = [G.coarse(z, y)]
            fake_lows = []
            for i, ref in enumerate(G.refiners):
                low = pyr_up(fakes[-1]) if self.joint else real_lows[i]
                fake_lows.append(low)
                fakes.append(low + ref(planes[i], low, y))
            # per level: (its D, real input, fake input); finer levels see (image, upsampled coarser image)
            levels = [(D.coarse, gauss[0], fakes[0].detach())] + [
                (dk, torch.cat([gauss[i + 1], real_lows[i]], 1), torch.cat([fakes[i + 1], fake_lows[i]], 1).detach())
                for i, dk in enumerate(D.refiners)
            ]
            gamma = self.params.r1_gamma
            wrong = mismatched_labels(y, self.num_classes) if self.mismatch else None
            per_d, totals, pens = [], [], []
            for dk, real_x, fake_x in levels:
                real_in = r1_input(aug(real_x), gamma)
                r = dk(real_in, y)
                f = dk(aug(fake_x), y)
                if wrong is not None:  # GAN-CLS: (real, wrong class) joins the fake side
                    f = torch.cat([f, dk(real_in, wrong)])
                per_d.append(d_loss(r, f, kind))
                total, r1 = with_r1(per_d[-1], r, real_in, gamma)
                totals.append(total)
                pens.append(r1.get("r1"))
            loss_d = torch.stack(totals).sum()
        self.optimize("D", loss_d)
        set_requires_grad(D, False)
        try:
            with self.autocast():
                per_g = [g_loss(D.coarse(aug(fakes[0]), y), kind)]
                for i, dk in enumerate(D.refiners):
                    per_g.append(g_loss(dk(aug(torch.cat([fakes[i + 1], fake_lows[i]], 1)), y), kind))
                loss_g = torch.stack(per_g).sum()
            self.optimize("G", loss_g)
        finally:
            set_requires_grad(D, True)
        out = {"loss_d": loss_d.detach(), "loss_g": loss_g.detach()}
        for s, ld, lg, pen in zip(G.sizes, per_d, per_g, pens):
            out[f"loss_d_{s}"] = ld.detach()
            out[f"loss_g_{s}"] = lg.detach()
            if pen is not None:
                out[f"r1_{s}"] = pen
        return out

    def _labels(self, labels, what: str, device) -> torch.Tensor | None:
        if not self.conditional:
            return None
        return check_labels(None if labels is None else torch.as_tensor(labels), self.num_classes, what).to(device)

    @torch.no_grad()
    def generate(self, labels, masks=None, conditions=None, generator=None, G=None) -> torch.Tensor:
        G = G or self.G
        device = module_device(G)
        labels = torch.as_tensor(labels)
        if labels.ndim != 1:
            raise ConfigError(f"generate: labels must be 1-D, got shape {tuple(labels.shape)}")
        y = self._labels(labels, "generate", device)
        p = self.params
        n = labels.shape[0]
        z = cpu_noise((n, p.z_dim), generator, device)
        planes = [cpu_noise((n, p.ref_nz, s, s), generator, device) for s in G.sizes[1:]]
        with eval_mode(G), self.autocast():
            out = G(z, planes, y)[-1]
        return out.float().clamp(-1, 1)

    @torch.no_grad()
    def generate_pyramid(self, labels, generator=None, G=None) -> list[torch.Tensor]:
        """Generated images at every level, coarse to fine (for inspection)."""
        G = G or self.G
        device = module_device(G)
        labels = torch.as_tensor(labels)
        y = self._labels(labels, "generate", device)
        n = labels.shape[0]
        z = cpu_noise((n, self.params.z_dim), generator, device)
        planes = [cpu_noise((n, self.params.ref_nz, s, s), generator, device) for s in G.sizes[1:]]
        with eval_mode(G), self.autocast():
            return [im.float() for im in G(z, planes, y)]

    @torch.no_grad()
    def discriminate(self, images: torch.Tensor, labels: torch.Tensor | None = None, batch_size: int = 256) -> torch.Tensor:
        """Sum over scales of the discriminators' logits on the images' own pyramid, ``(N,)``."""
        y = None
        if self.conditional:
            y = check_labels(None if labels is None else torch.as_tensor(labels), self.num_classes, "discriminate")

        def score(x: torch.Tensor, yy: torch.Tensor | None) -> torch.Tensor:
            gauss = gaussian_pyramid(x.float(), self.levels)
            s = self.D.coarse(gauss[0], yy)
            for i, dk in enumerate(self.D.refiners):
                d = dk(torch.cat([gauss[i + 1], pyr_up(gauss[i])], 1), yy)
                s = s + (d.flatten(1).mean(1) if d.dim() > 1 else d)  # PatchGAN: mean over patches
            return s

        with eval_mode(self.D):
            return chunked(score, [images, y], module_device(self.D), batch_size)


class LAPGANJoint(LAPGAN):
    """LAPGAN with all levels trained end to end on generated coarser images (MelanoGANs' modified LAPGAN, [MEM])."""

    name = "lapgan-joint"
    joint = True


_PRESETS = {
    # Denton et al. 2015 / MelanoGANs [INF]: DCGAN at the coarsest level, small conv refiners
    "paper": {"base_size": 16, "z_dim": 100, "ngf": 64, "ndf": 64, "ref_ngf": 64, "ref_layers": 3},
    # small-data / few-minutes choices, each measured on brain-tumor-mri at 64 px (docs/models/dcgan_family.md):
    # coarsest level half the image side (32 px at 64; a 16 px DCGAN stayed a featureless blob after 800 steps),
    # resize-convolution in the coarse G, PatchGAN refiner Ds, DiffAugment and zero-initialised refiners
    "cpu": {
        "base_size": None, "z_dim": 64, "ngf": 32, "ndf": 32, "ref_ngf": 32, "ref_layers": 3,
        "augment": ["translation", "cutout"], "ref_zero_init": True, "upsample": "resize", "ref_d": "patch",
    },
}
MODELS.add(
    "lapgan",
    ModelSpec(
        method=LAPGAN,
        params=LAPGANParams,
        presets=_PRESETS,
        description="LAPGAN: Laplacian-pyramid GAN, levels trained independently on real pyramids",
        paper="Denton et al. 2015 (arXiv 1506.05751); compared in MelanoGANs (arXiv 1804.04338)",
        batch_sizes={"cpu": 16},  # as dcgan's: twice the updates of batch 32 in the same minutes
    ),
)
MODELS.add(
    "lapgan-joint",
    ModelSpec(
        method=LAPGANJoint,
        params=LAPGANParams,
        presets=_PRESETS,
        description="LAPGAN with all levels trained end to end (discriminator at every scale)",
        paper="Baur et al. MelanoGANs 2018 (arXiv 1804.04338), 'modified LAPGAN' [unverified reading]",
        batch_sizes={"cpu": 16},
    ),
)
