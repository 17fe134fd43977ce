"""DCGAN (Radford et al. 2016), unconditional or class-conditional, the MelanoGANs baseline.

Generator: ``z`` (+ class embedding, concatenated) -> ConvT 4x4 -> one [ConvT k4 s2 p1 + BN + ReLU]
block per doubling -> ConvT to ``C`` channels + tanh. Discriminator mirrored: Conv k4 s2 p1 +
LeakyReLU(0.2) (BatchNorm from the second block) down to 4x4, then a Conv k4 -> one logit; the
conditional D adds a class-projection term (Miyato & Koyama 2018) on the 4x4 features. Widths
double per halving of the resolution up to ``max_mult * ngf``. Loss: standard GAN (BCE) with the
non-saturating G loss; Adam 2e-4, beta1 0.5. See docs/models/dcgan_family.md.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from medbalance.config import BaseConfig
from medbalance.data.dataset import DataInfo
from medbalance.errors import ConfigError
from medbalance.models.augment import Policy, diff_augment
from medbalance.models.base import GANMethod, set_requires_grad
from medbalance.models.layers import (
    ClassBatchNorm2d,
    ProjectionHead,
    check_labels,
    chunked,
    cpu_noise,
    dcgan_init_,
    eval_mode,
    is_power_of_two,
    log2i,
    minibatch_stddev,
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
from medbalance.models.registry import MODELS, ModelSpec


# ---------------------------------------------------------------------------- networks
UpsampleMode = Literal["convt", "resize"]
UPSAMPLES: tuple[str, ...] = get_args(UpsampleMode)
UPSAMPLE_HELP = (
    "generator upsampling: 'convt' (transposed conv k4 s2, the DCGAN paper) or 'resize' (nearest x2 + conv k3: no "
    "checkerboard pattern, Odena et al. 2016; not in the DCGAN/ACGAN/LAPGAN papers)"
)


class DCGANGenerator(nn.Module):
    """``forward(z (B, z_dim), labels (B,) | None) -> (B, C, size, size)`` in [-1, 1].

    ``upsample``: ``"convt"`` (ConvT k4 s2 p1 per doubling, as in the DCGAN paper) or ``"resize"``
    (nearest-neighbour x2 then Conv k3 s1 p1: resize-convolution, Odena, Dumoulin & Olah 2016)."""

    def __init__(
        self,
        z_dim: int,
        out_channels: int,
        size: int,
        ngf: int = 64,
        max_mult: int = 8,
        num_classes: int = 0,
        embed_dim: int = 0,
        tanh: bool = True,
        upsample: str = "convt",
        class_bn: bool = False,
    ):
        super().__init__()
        if not is_power_of_two(size) or size < 8:
            raise ConfigError(f"DCGAN generator size must be a power of two >= 8, got {size}")
        if upsample not in UPSAMPLES:
            raise ConfigError(f"unknown generator upsampling {upsample!r}; allowed: {', '.join(UPSAMPLES)}")
        if class_bn and num_classes < 1:
            raise ConfigError("class_bn needs a class-conditional generator (num_classes > 0)")
        self.z_dim, self.size, self.num_classes = z_dim, size, num_classes
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes > 0 and embed_dim > 0 else None
        n_up = log2i(size) - 2  # 4x4 -> size
        widths = [ngf * min(max_mult, 2 ** (n_up - 1 - i)) for i in range(n_up)]  # at 4, 8, ..., size/2
        zin = z_dim + (embed_dim if self.embed is not None else 0)

        def norm(c: int) -> nn.Module:
            return ClassBatchNorm2d(c, num_classes) if class_bn else nn.BatchNorm2d(c)

        def up2(cin: int, cout: int) -> list[nn.Module]:
            if upsample == "resize":  # Odena et al. 2016: no uneven kernel overlap, so no checkerboard pattern
                return [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, 1, 1, bias=False)]
            return [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False)]

        layers: list[nn.Module] = [nn.ConvTranspose2d(zin, widths[0], 4, 1, 0, bias=False), norm(widths[0]), nn.ReLU(True)]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [*up2(cin, cout), norm(cout), nn.ReLU(True)]
        layers += up2(widths[-1], out_channels)
        if tanh:
            layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)
        dcgan_init_(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if labels is None:
                raise ConfigError("conditional generator needs labels")
            z = torch.cat([z, self.embed(labels).to(z.dtype)], dim=1)
        h = z[:, :, None, None]
        for m in self.net:
            h = m(h, labels) if isinstance(m, ClassBatchNorm2d) else m(h)
        return h


D_NORMS: tuple[str, ...] = ("batch", "spectral", "none")


class DCGANDiscriminator(nn.Module):
    """``forward(x, labels | None) -> (B,)`` real/fake logits; ``features(x) -> (B, F, 4, 4)``.

    ``num_classes > 0`` adds a projection term (class-conditional D); ``aux_classes > 0`` adds
    the ACGAN auxiliary classifier head (``classify``), a linear layer on the 4x4 features.
    """

    def __init__(
        self,
        in_channels: int,
        size: int,
        ndf: int = 64,
        max_mult: int = 8,
        num_classes: int = 0,
        aux_classes: int = 0,
        norm: str = "batch",
        mbstd: bool = False,
    ):
        super().__init__()
        if not is_power_of_two(size) or size < 8:
            raise ConfigError(f"DCGAN discriminator size must be a power of two >= 8, got {size}")
        if norm not in D_NORMS:
            raise ConfigError(f"unknown discriminator norm {norm!r}; allowed: {', '.join(D_NORMS)}")
        n_down = log2i(size) - 2  # size -> 4x4
        widths = [ndf * min(max_mult, 2**j) for j in range(n_down)]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for cin, cout in zip(widths[:-1], widths[1:]):
            if norm == "batch":
                layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, True)]
            else:
                layers += [nn.Conv2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        self.trunk = nn.Sequential(*layers)
        self.mbstd = mbstd
        self.out = nn.Conv2d(widths[-1] + int(mbstd), 1, 4, 1, 0)
        self.proj = ProjectionHead(num_classes, widths[-1]) if num_classes > 0 else None
        self.aux = nn.Linear(widths[-1] * 16, aux_classes) if aux_classes > 0 else None
        self.twin: nn.Linear | None = None  # TAC-GAN's twin classifier (ACGAN with aux_loss="tac")
        self.feat_channels = widths[-1]
        dcgan_init_(self)
        if norm == "spectral":  # Miyato et al. 2018: every weight layer of D except the auxiliary classifier
            for m in list(self.trunk) + [self.out]:
                if isinstance(m, nn.Conv2d):
                    spectral_norm(m)
            if self.proj is not None:
                spectral_norm(self.proj.embed)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def logits(self, h: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        out = self.out(minibatch_stddev(h) if self.mbstd else h).flatten()
        if self.proj is not None:
            if labels is None:
                raise ConfigError("conditional discriminator needs labels")
            out = out + self.proj(h, labels)
        return out

    def class_logits(self, h: torch.Tensor) -> torch.Tensor:
        if self.aux is None:
            raise ConfigError("this discriminator has no auxiliary classifier head")
        return self.aux(h.flatten(1))

    def add_twin_classifier(self) -> None:
        """Add TAC-GAN's twin auxiliary classifier (same shape as ``aux``), trained on generated images."""
        if self.aux is None:
            raise ConfigError("a twin classifier needs the auxiliary classifier head (aux_classes > 0)")
        self.twin = nn.Linear(self.aux.in_features, self.aux.out_features)
        dcgan_init_(self.twin)

    def twin_logits(self, h: torch.Tensor) -> torch.Tensor:
        if self.twin is None:
            raise ConfigError("this discriminator has no twin classifier head")
        return self.twin(h.flatten(1))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits(self.features(x), labels)


# ---------------------------------------------------------------------------- params
class GANCommonParams(BaseConfig):
    z_dim: int = Field(100, ge=1, description="latent dimension")
    ngf: int = Field(64, ge=1, description="generator width at the last (largest) block")
    ndf: int = Field(64, ge=1, description="discriminator width at the first block")
    max_mult: int = Field(8, ge=1, description="widths grow x2 per halving of resolution up to max_mult * ngf/ndf")
    embed_dim: int = Field(8, ge=1, description="class-embedding size concatenated to z (conditional G; 50 made every class collapse to one image in our 64 px check)")
    loss: Literal["bce", "hinge", "lsgan"] = Field("bce", description="GAN objective (bce = standard, non-saturating G)")
    d_norm: Literal["batch", "spectral", "none"] = Field(
        "batch",
        description="discriminator normalisation: BatchNorm from the 2nd block (DCGAN paper) or spectral "
        "normalisation of every D weight (Miyato et al. 2018; no BatchNorm)",
    )
    augment: list[Policy] = Field(
        default_factory=list,
        description="DiffAugment policies applied to real and fake images before D, in D and G steps "
        "(Zhao et al. 2020; not in the DCGAN/ACGAN papers; [] = off)",
    )
    mbstd: bool = Field(
        False,
        description="minibatch-stddev feature before D's real/fake output (Karras et al. 2018; not in the "
        "DCGAN/ACGAN papers): lets D see a collapsed batch",
    )
    upsample: UpsampleMode = Field("convt", description=UPSAMPLE_HELP)
    mode_seeking: float = Field(
        0.0,
        ge=0,
        description="weight of the mode-seeking term (MSGAN, Mao et al. 2019): G also minimises "
        "1 / (mean|G(z1,y) - G(z2,y)| / mean|z1 - z2|), pairing the two halves of each fake batch under the same "
        "labels (0 = off; not in the DCGAN/ACGAN papers)",
    )
    class_bn: bool = Field(
        False,
        description="class-conditional BatchNorm in G: a per-class gain and bias at every BatchNorm (de Vries et al. "
        "2017; the generator paired with the projection discriminator in Miyato & Koyama 2018), on top of the "
        "embedding concatenated to z; ignored by an unconditional model (not in the DCGAN/ACGAN papers)",
    )
    r1_gamma: float = Field(0.0, ge=0, description=R1_HELP)
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)


def mode_seeking_pairs(y: torch.Tensor | None, n: int) -> tuple[torch.Tensor | None, int]:
    """Labels for a fake batch whose second half repeats the first half's labels (MSGAN pairs ``i``, ``i + n//2``),
    and the number of pairs. Odd ``n``: the last fake keeps its label and is not paired."""
    h = n // 2
    if y is None or h == 0:
        return y, h
    return torch.cat([y[:h], y[:h], y[2 * h :]]), h


def mode_seeking_loss(fake: torch.Tensor, z: torch.Tensor, pairs: int, eps: float = 1e-5) -> torch.Tensor:
    """MSGAN's term ``1 / (mean|G(z1) - G(z2)| / mean|z1 - z2| + eps)`` over the pairs ``(i, i + pairs)``."""
    a, b = fake[:pairs].float(), fake[pairs : 2 * pairs].float()
    ratio = (a - b).abs().mean() / (z[:pairs] - z[pairs : 2 * pairs]).abs().mean()
    return 1.0 / (ratio + eps)


class DCGANParams(GANCommonParams):
    conditional: bool = Field(
        False, description="class-conditional: label embedding concatenated to z in G, class projection in D"
    )
    mismatch: bool = Field(False, description=MISMATCH_HELP)


# ---------------------------------------------------------------------------- method
class DCGAN(GANMethod):
    """DCGAN (Radford et al. 2016); optional class conditioning (embedding->G, projection->D)."""

    name = "dcgan"
    needs = ("label",)
    channels_last = True

    def __init__(self, params: DCGANParams, info: DataInfo):
        super().__init__(params, info)
        self.size = square_pow2_size(info, self.name)
        self.num_classes = max(1, info.num_classes)
        self.conditional = self._is_conditional()
        # an unconditional DCGAN ignores labels: say so, so that rebalancing refuses it
        self.needs = ("label",) if self.conditional else ()
        # (acgan shares this constructor; its params have no mismatch: its class head reads the class)
        self.mismatch = mismatch_enabled(getattr(params, "mismatch", False), self.conditional, info.num_classes)
        self.G = self.build_generator()
        self.D = self.build_discriminator()

    def _is_conditional(self) -> bool:
        return bool(self.params.conditional)

    def build_generator(self) -> nn.Module:
        p = self.params
        return DCGANGenerator(
            p.z_dim, self.info.channels, self.size, p.ngf, p.max_mult,
            num_classes=self.num_classes if self.conditional else 0, embed_dim=p.embed_dim, upsample=p.upsample,
            class_bn=p.class_bn and self.conditional,
        )

    def build_discriminator(self) -> nn.Module:
        p = self.params
        return DCGANDiscriminator(
            self.info.channels, self.size, p.ndf, p.max_mult,
            num_classes=self.num_classes if self.conditional else 0, norm=p.d_norm, mbstd=p.mbstd,
        )

    def networks(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D}

    def configure_optimizers(self):
        p = self.params
        betas = (p.beta1, p.beta2)
        return {
            "D": (torch.optim.Adam(self.D.parameters(), lr=p.lr_d, betas=betas), self.D),
            "G": (torch.optim.Adam(self.G.parameters(), lr=p.lr_g, betas=betas), self.G),
        }

    def _cond(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return batch["label"] if self.conditional else None

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        real = batch["image"]
        y = self._cond(batch)  # fakes use the batch's labels: same class distribution as the reals
        kind = self.params.loss
        aug = self.params.augment
        z = torch.randn(real.shape[0], self.params.z_dim, device=real.device)
        y, pairs = self._mode_seeking_labels(y, real.shape[0])
        # --- D step
        gamma = self.params.r1_gamma
        with self.autocast():
            fake = self.G(z, y)
            real_in = r1_input(diff_augment(real, aug), gamma)
            h_real = self.D.features(real_in)
            d_real = self.D.logits(h_real, y)
            d_fake = self.D(diff_augment(fake.detach(), aug), y)
            if self.mismatch:  # GAN-CLS: (real, wrong class) joins the fake side, same features, no new pass
                d_fake = torch.cat([d_fake, self.D.logits(h_real, mismatched_labels(y, self.num_classes))])
            loss_d, r1 = with_r1(d_loss(d_real, d_fake, kind), d_real, real_in, gamma)
        self.optimize("D", loss_d)
        # --- G step (D frozen: no weight gradients computed for it)
        set_requires_grad(self.D, False)
        try:
            with self.autocast():
                loss_g, extra = self._with_mode_seeking(g_loss(self.D(diff_augment(fake, aug), y), kind), fake, z, pairs)
            self.optimize("G", loss_g)
        finally:
            set_requires_grad(self.D, True)
        return {
            **extra,
            **r1,
            "loss_d": loss_d.detach(),
            "loss_g": loss_g.detach(),
            "d_real": d_real.detach().float().mean(),
            "d_fake": d_fake.detach().float().mean(),
        }

    def _mode_seeking_labels(self, y: torch.Tensor | None, n: int) -> tuple[torch.Tensor | None, int]:
        """Fake labels and the number of MSGAN pairs (0 when ``mode_seeking`` is off: labels unchanged)."""
        return mode_seeking_pairs(y, n) if self.params.mode_seeking > 0 else (y, 0)

    def _with_mode_seeking(
        self, loss_g: torch.Tensor, fake: torch.Tensor, z: torch.Tensor, pairs: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``loss_g`` plus ``mode_seeking`` x MSGAN's term, and the logged ``loss_ms`` (nothing when no pairs)."""
        if pairs == 0:
            return loss_g, {}
        loss_ms = mode_seeking_loss(fake, z, pairs)
        return loss_g + self.params.mode_seeking * loss_ms, {"loss_ms": loss_ms.detach()}

    # ------------------------------------------------------------------ sampling / scoring
    def _gen_labels(self, labels: torch.Tensor, device: torch.device) -> torch.Tensor | None:
        labels = torch.as_tensor(labels)
        if not self.conditional:
            if labels.ndim != 1:
                raise ConfigError(f"generate: labels must be 1-D, got shape {tuple(labels.shape)}")
            return None
        return check_labels(labels, self.num_classes, "generate").to(device)

    @torch.no_grad()
    def generate(self, labels, masks=None, conditions=None, generator=None, G=None) -> torch.Tensor:
        G = G or self.G
        device = module_device(G)
        labels = torch.as_tensor(labels)
        y = self._gen_labels(labels, device)
        z = cpu_noise((labels.shape[0], self.params.z_dim), generator, device)
        with eval_mode(G), self.autocast():
            out = G(z, y)
        return out.float().clamp(-1, 1)

    @torch.no_grad()
    def discriminate(self, images: torch.Tensor, labels: torch.Tensor | None = None, batch_size: int = 256) -> torch.Tensor:
        """Real/fake logits ``(N,)`` of the discriminator (eval mode; higher = judged real).

        Class-conditional models need ``labels`` (the logit includes the class projection)."""
        y = None
        if self.conditional:
            y = check_labels(None if labels is None else torch.as_tensor(labels), self.num_classes, "discriminate")
        with eval_mode(self.D):
            return chunked(lambda x, yy: self.D(x.float(), yy), [images, y], module_device(self.D), batch_size)


MODELS.add(
    "dcgan",
    ModelSpec(
        method=DCGAN,
        params=DCGANParams,
        presets={
            # Radford et al.; MelanoGANs' 256 px DCGAN [INF]: 4x4x1024 at 256 px -> max_mult 16
            "paper": {"z_dim": 100, "ngf": 64, "ndf": 64, "max_mult": 16},
            # + DiffAugment: with a few thousand images D saturates within ~100 steps; + resize-convolution in G: no
            # checkerboard noise in the first thousand steps; + matching-aware D (acts only with conditional: true):
            # without it conditional DCGAN drew one image for every class on the phantom (docs/models/dcgan_family.md)
            "cpu": {
                "z_dim": 64, "ngf": 32, "ndf": 32, "max_mult": 8, "augment": ["translation", "cutout"], "upsample": "resize",
                "mismatch": True,
            },
        },
        description="DCGAN, unconditional or class-conditional (MelanoGANs baseline)",
        paper="Radford et al. 2016 (arXiv 1511.06434); Baur et al. MelanoGANs 2018 (arXiv 1804.04338)",
        # Radford et al.: batch 128; cpu 16: twice the updates in the same minutes (docs/models/dcgan_family.md)
        batch_sizes={"paper": 128, "cpu": 16},
    ),
)
