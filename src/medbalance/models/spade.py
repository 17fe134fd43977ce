"""SPADE (Park et al., CVPR 2019) as used by Red-GAN: mask-conditioned image synthesis.

This is the *two-player* baseline of Red-GAN (Qasim et al., MIDL 2020, reference code IvanEz/Red-GAN; "vanilla SPADE" =
the reference code run with ``--segmentator None``). :mod:`medbalance.models.redgan` adds the
global class and the frozen segmentor on top of the classes defined here.

Generator (reference ``generator.py``): the label map (one-hot, ``info.num_mask_labels`` channels) is resized
(nearest) to the latent grid ``H/2**num_up x W/2**num_up`` and convolved to the top width, then
SPADE residual blocks, each modulated by the label map, upsample it (nearest, x2) to full
size; LeakyReLU(0.2) -> conv3x3 -> tanh. No noise by default (G is deterministic given the
mask); ``z_dim > 0`` replaces the first conv by ``Linear(z) -> map`` (SPADE's noise input).
SPADE normalisation: parameter-free BatchNorm (``affine=False``) then
``x_hat * (1 + gamma(mask)) + beta(mask)`` with gamma, beta from a 2-layer conv net on the mask.
All residual-block convs carry spectral norm.

Discriminator (reference ``discriminator.py``): ``num_d`` spectral-norm PatchGANs (``n_layers_d``, ndf, k4, p2, stride
2 throughout as in the Red-GAN fork, InstanceNorm without affine), scale i+1 sees the input
average-pooled by 2; input = concat(one-hot mask, image); every layer's features are returned
for the feature-matching loss.

Objective (reference ``loss.py``): hinge GAN loss averaged over scales + lambda_fm * feature matching (sum over
scales and intermediate layers of L1 / num_d), Adam with TTUR (G 1e-4, D 4e-4, betas (0, 0.9)),
one G step then one D step per iteration; fake and real go through D in one batch.

Building blocks are our own (MONAI's ``SPADE``/``SPADENetResBlock``/``MultiScalePatchDiscriminator``
differ from the reference code: LeakyReLU in the SPADE MLP, no spectral norm, multi-scale by depth instead
of by input pooling, stride 1 in the last hidden layer); see docs/models/spade_redgan.md.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from medbalance.config import BaseConfig
from medbalance.data.dataset import DataInfo
from medbalance.errors import ConfigError, DataError
from medbalance.models.base import GANMethod, set_requires_grad
from medbalance.models.layers import cpu_noise, eval_mode, module_device
from medbalance.models.losses import R1_HELP, feature_matching_loss, g_loss, r1_input, with_r1
from medbalance.models.registry import MODELS, ModelSpec


# ============================================================================ params
class SPADEParams(BaseConfig):
    """Parameters of the SPADE baseline (``paper`` preset = the Red-GAN reference code)."""

    ngf: int = Field(64, ge=1, description="generator base width (top width = ngf * min(16, 2**(num_up-1)))")
    num_up: int = Field(5, ge=1, le=8, description="x2 upsamplings; latent grid = image size / 2**num_up")
    spade_hidden: int = Field(128, ge=1, description="hidden width of the SPADE mask MLP")
    z_dim: int = Field(0, ge=0, description="0 = deterministic G (reference); >0 = noise vector input")
    ndf: int = Field(64, ge=1, description="discriminator base width")
    num_d: int = Field(2, ge=1, description="number of discriminator scales")
    n_layers_d: int = Field(3, ge=1, description="layers of each PatchGAN")
    lambda_fm: float = Field(10.0, ge=0, description="feature-matching weight (0 = off)")
    r1_gamma: float = Field(
        0.0, ge=0, description=R1_HELP + "; the gradient is taken with respect to D's whole real input (mask, image[, S(image)])"
    )
    lr_g: float = Field(1e-4, ge=0, description="generator Adam lr (TTUR)")
    lr_d: float = Field(4e-4, ge=0, description="discriminator Adam lr (TTUR)")
    beta1: float = Field(0.0, ge=0, lt=1)
    beta2: float = Field(0.9, ge=0, lt=1)
    init_gain: float = Field(0.02, gt=0, description="xavier_normal gain of conv/linear weights")


# ============================================================================ building blocks
def _init(m: nn.Module, gain: float) -> nn.Module:
    """Reference init (``init_type='xavier'``, ``init_variance=0.02``): xavier_normal weights, zero bias."""
    nn.init.xavier_normal_(m.weight, gain=gain)
    if getattr(m, "bias", None) is not None:
        nn.init.zeros_(m.bias)
    return m


def _sn(m: nn.Module) -> nn.Module:
    return spectral_norm(m)


def one_hot_mask(mask: torch.Tensor, num_labels: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B,H,W) int64 label indices -> (B,num_labels,H,W) one-hot float."""
    return F.one_hot(mask.long(), num_labels).permute(0, 3, 1, 2).to(dtype)


class SPADENorm(nn.Module):
    """Spatially-adaptive normalisation: param-free BN, then ``*(1+gamma(seg)) + beta(seg)``."""

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 128, gain: float = 0.02):
        super().__init__()
        self.norm = nn.BatchNorm2d(norm_nc, affine=False)
        self.shared = nn.Sequential(_init(nn.Conv2d(label_nc, hidden, 3, padding=1), gain), nn.ReLU())
        self.gamma = _init(nn.Conv2d(hidden, norm_nc, 3, padding=1), gain)
        self.beta = _init(nn.Conv2d(hidden, norm_nc, 3, padding=1), gain)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        normed = self.norm(x)
        if seg.shape[2:] != x.shape[2:]:
            seg = F.interpolate(seg, size=x.shape[2:], mode="nearest")
        a = self.shared(seg)
        return normed * (1 + self.gamma(a)) + self.beta(a)


class SPADEResBlock(nn.Module):
    """SPADE -> LReLU -> SN-conv3x3 (fin->fmid) -> SPADE -> LReLU -> SN-conv3x3 (fmid->fout),
    plus a learned shortcut (SPADE -> SN-conv1x1, no bias) when fin != fout."""

    def __init__(self, fin: int, fout: int, label_nc: int, hidden: int = 128, gain: float = 0.02):
        super().__init__()
        fmid = min(fin, fout)
        self.learned_shortcut = fin != fout
        self.conv_0 = _sn(_init(nn.Conv2d(fin, fmid, 3, padding=1), gain))
        self.conv_1 = _sn(_init(nn.Conv2d(fmid, fout, 3, padding=1), gain))
        self.norm_0 = SPADENorm(fin, label_nc, hidden, gain)
        self.norm_1 = SPADENorm(fmid, label_nc, hidden, gain)
        if self.learned_shortcut:
            self.conv_s = _sn(_init(nn.Conv2d(fin, fout, 1, bias=False), gain))
            self.norm_s = SPADENorm(fin, label_nc, hidden, gain)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        xs = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return xs + dx


class SPADEGenerator(nn.Module):
    """SPADE generator (Park et al. 2019, as in the Red-GAN code), optionally with Red-GAN's global class branch.

    ``num_classes > 0`` adds ``Embedding(num_classes, embed_dim) -> Linear -> (class_map_channels,
    sh, sw)`` concatenated to the head input (Red-GAN code, ``generator.py``).
    """

    def __init__(
        self,
        out_nc: int,
        label_nc: int,
        spatial: tuple[int, int],
        ngf: int = 64,
        num_up: int = 5,
        spade_hidden: int = 128,
        z_dim: int = 0,
        num_classes: int = 0,
        embed_dim: int = 0,
        class_map_channels: int = 0,
        gain: float = 0.02,
    ):
        super().__init__()
        h, w = spatial
        self.sh, self.sw = h // 2**num_up, w // 2**num_up
        self.label_nc, self.z_dim, self.num_classes = label_nc, z_dim, num_classes
        self.top = top = ngf * min(16, 2 ** (num_up - 1))
        self.class_map_channels = class_map_channels if num_classes else 0
        if z_dim:
            self.fc = _init(nn.Linear(z_dim, top * self.sh * self.sw), gain)
        else:
            self.fc = _init(nn.Conv2d(label_nc, top, 3, padding=1), gain)
        if num_classes:
            self.embed = nn.Embedding(num_classes, embed_dim)
            self.class_fc = _init(nn.Linear(embed_dim, class_map_channels * self.sh * self.sw), gain)
        self.head_0 = SPADEResBlock(top + self.class_map_channels, top, label_nc, spade_hidden, gain)
        self.middle_0 = SPADEResBlock(top, top, label_nc, spade_hidden, gain)
        self.middle_1 = SPADEResBlock(top, top, label_nc, spade_hidden, gain)
        ups, cin = [], top
        for i in range(num_up - 1):
            cout = min(top, ngf * 2 ** (num_up - 2 - i))
            ups.append(SPADEResBlock(cin, cout, label_nc, spade_hidden, gain))
            cin = cout
        self.ups = nn.ModuleList(ups)
        self.conv_img = _init(nn.Conv2d(cin, out_nc, 3, padding=1), gain)

    def forward(
        self, seg: torch.Tensor, classes: torch.Tensor | None = None, z: torch.Tensor | None = None
    ) -> torch.Tensor:
        b = seg.shape[0]
        if self.z_dim:
            if z is None:
                raise ValueError("this generator takes a noise vector z (z_dim > 0)")
            x = self.fc(z).view(b, self.top, self.sh, self.sw)
        else:
            x = self.fc(F.interpolate(seg, size=(self.sh, self.sw), mode="nearest"))
        if self.num_classes:
            if classes is None:
                raise ValueError("this generator is class-conditional: classes are required")
            y = self.class_fc(self.embed(classes)).view(b, self.class_map_channels, self.sh, self.sw)
            x = torch.cat([x, y.to(x.dtype)], dim=1)
        x = self.head_0(x, seg)
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = self.middle_0(x, seg)
        x = self.middle_1(x, seg)
        for blk in self.ups:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = blk(x, seg)
        return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))


class NLayerDiscriminator(nn.Module):
    """PatchGAN (reference ``discriminator.py``): Conv(in,ndf,s2)+LReLU, then (n_layers-1) x [SN-Conv s2 + InstanceNorm + LReLU],
    then Conv(.,1,s1); k=4, padding 2. Returns every layer's output (last = patch logits)."""

    def __init__(self, in_nc: int, ndf: int = 64, n_layers: int = 3, gain: float = 0.02):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Sequential(_init(nn.Conv2d(in_nc, ndf, 4, stride=2, padding=2), gain), nn.LeakyReLU(0.2))
        ]
        nf = ndf
        for _ in range(1, n_layers):
            prev, nf = nf, min(nf * 2, 512)
            layers.append(
                nn.Sequential(
                    _sn(_init(nn.Conv2d(prev, nf, 4, stride=2, padding=2, bias=False), gain)),
                    nn.InstanceNorm2d(nf, affine=False),
                    nn.LeakyReLU(0.2),
                )
            )
        layers.append(_init(nn.Conv2d(nf, 1, 4, stride=1, padding=2), gain))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


class MultiscaleDiscriminator(nn.Module):
    """``num_d`` PatchGANs; scale i+1 sees the input avg-pooled (k3, s2, p1, count_include_pad=False)."""

    def __init__(self, in_nc: int, ndf: int = 64, n_layers: int = 3, num_d: int = 2, gain: float = 0.02):
        super().__init__()
        self.nets = nn.ModuleList(NLayerDiscriminator(in_nc, ndf, n_layers, gain) for _ in range(num_d))

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        out = []
        for i, net in enumerate(self.nets):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            out.append(net(x))
        return out


# ============================================================================ losses
def hinge_d(pred_real: list[list[torch.Tensor]], pred_fake: list[list[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(D_real, D_fake) hinge terms, each averaged over scales (last output of each scale)."""
    n = len(pred_real)
    # the two halves of medbalance.models.losses.d_loss(kind="hinge"), kept apart for logging
    real = sum(F.relu(1.0 - r[-1].float()).mean() for r in pred_real) / n
    fake = sum(F.relu(1.0 + f[-1].float()).mean() for f in pred_fake) / n
    return real, fake


def hinge_g(pred_fake: list[list[torch.Tensor]]) -> torch.Tensor:
    return sum(g_loss(f[-1], "hinge") for f in pred_fake) / len(pred_fake)


def fm_loss(pred_real: list[list[torch.Tensor]], pred_fake: list[list[torch.Tensor]]) -> torch.Tensor:
    """SPADE's GAN feature loss without lambda: sum over scales i and intermediate layers j of
    ``L1(D_ij(fake), D_ij(real).detach()) / num_d`` (the final logits are excluded)."""
    real = [t for scale in pred_real for t in scale[:-1]]
    fake = [t for scale in pred_fake for t in scale[:-1]]
    # medbalance.models.losses.feature_matching_loss averages over the list; rescale to SPADE's sum / num_d.
    return feature_matching_loss(real, fake) * (len(real) / len(pred_real))


# ============================================================================ method
class SPADE(GANMethod):
    """SPADE: mask-conditioned generator (no class input), hinge + feature matching, TTUR."""

    name = "spade"
    needs = ("mask",)

    def __init__(self, params: SPADEParams, info: DataInfo):
        super().__init__(params, info)
        self.label_nc = self._check_info(info)
        self.G = self._build_generator()
        self.D: Optional[MultiscaleDiscriminator] = self._build_discriminator(self._d_extra_channels())

    # ------------------------------------------------------------------ construction
    def _check_info(self, info: DataInfo) -> int:
        p = self.params
        shape = tuple(int(s) for s in info.spatial_shape)
        if len(shape) != 2:
            raise ConfigError(f"model {self.name!r} needs 2D images; got spatial shape {shape}")
        if info.num_mask_labels < 2:
            raise ConfigError(
                f"model {self.name!r} is conditioned on label maps: the dataset needs masks "
                "(manifest mask column or NIfTI labels) with at least 2 label values"
            )
        f = 2**p.num_up
        if shape[0] % f or shape[1] % f:
            raise ConfigError(
                f"model {self.name!r} with num_up={p.num_up} needs image sides divisible by {f}; got "
                f"{shape[0]}x{shape[1]} (resize with data.image_size, e.g. 256 as in the paper, or lower num_up)"
            )
        return info.num_mask_labels

    def _class_count(self) -> int:
        return 0

    def _build_generator(self) -> SPADEGenerator:
        p = self.params
        return SPADEGenerator(
            self.info.channels,
            self.label_nc,
            tuple(self.info.spatial_shape),  # type: ignore[arg-type]
            ngf=p.ngf,
            num_up=p.num_up,
            spade_hidden=p.spade_hidden,
            z_dim=p.z_dim,
            gain=p.init_gain,
        )

    def _d_extra_channels(self) -> int | None:
        return 0

    def _build_discriminator(self, extra: int | None) -> Optional[MultiscaleDiscriminator]:
        if extra is None:
            return None
        p = self.params
        return MultiscaleDiscriminator(self.label_nc + self.info.channels + extra, p.ndf, p.n_layers_d, p.num_d, p.init_gain)

    def networks(self) -> dict[str, nn.Module]:
        nets: dict[str, nn.Module] = {"G": self.G}
        if self.D is not None:
            nets["D"] = self.D
        return nets

    def configure_optimizers(self) -> dict[str, tuple[torch.optim.Optimizer, nn.Module]]:
        self._require_d()
        p = self.params
        betas = (p.beta1, p.beta2)
        return {
            "G": (torch.optim.Adam(self.G.parameters(), lr=p.lr_g, betas=betas), self.G),
            "D": (torch.optim.Adam(self.D.parameters(), lr=p.lr_d, betas=betas), self.D),  # type: ignore[union-attr]
        }

    def _require_d(self) -> None:
        """Hook: Red-GAN raises when its segmentor is missing."""

    # ------------------------------------------------------------------ conditioning helpers
    def _classes_from_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return None

    def _noise(self, b: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor | None:
        if not self.params.z_dim:
            return None
        if generator is None:
            return torch.randn(b, self.params.z_dim, device=device)
        return cpu_noise((b, self.params.z_dim), generator, device)

    def _seg_out(self, images: torch.Tensor) -> torch.Tensor | None:
        """Hook: Red-GAN's segmentor logits S(images) (gradients flow through); None for SPADE."""
        return None

    def _d_input(self, seg: torch.Tensor, images: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
        parts = [seg.to(images.dtype), images] + ([s.to(images.dtype)] if s is not None else [])
        return torch.cat(parts, dim=1)

    def _extra_g_losses(self, s_fake: torch.Tensor | None, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    # ------------------------------------------------------------------ training
    def generator_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """G objective on a batch: (total loss, detached parts, fake images). D is not updated."""
        real, mask = batch["image"], batch["mask"]
        seg = one_hot_mask(mask, self.label_nc, real.dtype)
        cls = self._classes_from_batch(batch)
        z = self._noise(real.shape[0], real.device)
        with self.autocast():
            fake = self.G(seg, cls, z)
            s_fake = self._seg_out(fake)
            with torch.no_grad():
                s_real = self._seg_out(real)
            pred = self.D(torch.cat([self._d_input(seg, fake, s_fake), self._d_input(seg, real, s_real)]))  # type: ignore[misc]
        b = real.shape[0]
        pf = [[t[:b] for t in scale] for scale in pred]
        pr = [[t[b:] for t in scale] for scale in pred]
        parts = {"G_gan": hinge_g(pf)}
        total = parts["G_gan"]
        if self.params.lambda_fm > 0:
            parts["G_fm"] = fm_loss(pr, pf)
            total = total + self.params.lambda_fm * parts["G_fm"]
        for k, v in self._extra_g_losses(s_fake, mask).items():
            parts[k] = v
            total = total + self._extra_weight(k) * v
        return total, {k: v.detach() for k, v in parts.items()}, fake

    def _extra_weight(self, key: str) -> float:
        return 0.0

    def discriminator_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """D objective: hinge on (real, freshly generated fake), fake and real in one D batch."""
        real, mask = batch["image"], batch["mask"]
        seg = one_hot_mask(mask, self.label_nc, real.dtype)
        cls = self._classes_from_batch(batch)
        z = self._noise(real.shape[0], real.device)
        with self.autocast():
            with torch.no_grad():
                fake = self.G(seg, cls, z)
                s_fake = self._seg_out(fake)
                s_real = self._seg_out(real)
            gamma = self.params.r1_gamma
            real_in = r1_input(self._d_input(seg, real, s_real), gamma)
            pred = self.D(torch.cat([self._d_input(seg, fake.detach(), s_fake), real_in]))  # type: ignore[misc]
        b = real.shape[0]
        pf = [[scale[-1][:b]] for scale in pred]
        pr = [[scale[-1][b:]] for scale in pred]
        d_real, d_fake = hinge_d(pr, pf)
        total, r1 = with_r1(d_real + d_fake, [r[-1] for r in pr], real_in, gamma)
        return total, {"D_real": d_real.detach(), "D_fake": d_fake.detach(), **r1}

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        self._require_d()
        if "mask" not in batch:
            raise DataError(f"model {self.name!r} needs label maps: the batch has no 'mask'")
        # G step first (reference order), D frozen so no gradient is computed for it.
        set_requires_grad(self.D, False)  # type: ignore[arg-type]
        g_total, logs, _ = self.generator_loss(batch)
        self.optimize("G", g_total)
        set_requires_grad(self.D, True)  # type: ignore[arg-type]
        d_total, d_logs = self.discriminator_loss(batch)
        self.optimize("D", d_total)
        logs.update(d_logs)
        logs["G"] = g_total.detach()
        logs["D"] = d_total.detach()
        return logs

    # ------------------------------------------------------------------ inference
    def _prepare_masks(self, masks: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        if masks is None:
            raise ConfigError(f"model {self.name!r} generates from label maps: masks are required")
        if masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(self.info.spatial_shape):
            raise ConfigError(
                f"masks must have shape (B, {', '.join(map(str, self.info.spatial_shape))}); got {tuple(masks.shape)}"
            )
        if masks.is_floating_point():
            raise ConfigError("masks must be integer label indices (indices into info.mask_values)")
        if masks.numel() and (int(masks.min()) < 0 or int(masks.max()) >= self.label_nc):
            raise ConfigError(f"mask index out of range 0..{self.label_nc - 1} (indices into info.mask_values)")
        return masks.to(device).long()

    def _classes_for_generation(
        self, labels: torch.Tensor | None, conditions: torch.Tensor | None, n: int, device: torch.device
    ) -> torch.Tensor | None:
        return None

    @torch.no_grad()
    def generate(
        self,
        labels: torch.Tensor | None,
        masks: torch.Tensor | None = None,
        conditions: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        G: nn.Module | None = None,
    ) -> torch.Tensor:
        """Images in [-1, 1] for the given label maps. BatchNorm uses its running statistics (G is
        put in eval mode for the call and restored), as the reference's test mode does."""
        net = G if G is not None else self.G
        device = module_device(net)
        m = self._prepare_masks(masks, device)
        seg = one_hot_mask(m, self.label_nc)
        cls = self._classes_for_generation(labels, conditions, m.shape[0], device)
        z = self._noise(m.shape[0], device, generator)
        with eval_mode(net), self.autocast():
            out = net(seg, cls, z)
        return out.float().clamp(-1, 1)

    def discriminate(
        self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Per-scale patch logits of D for (images, masks): a list of ``num_d`` float tensors
        (B,1,h_i,w_i). ``labels`` is accepted for a uniform API (SPADE's D is not class-conditional)."""
        self._require_d()
        device = module_device(self.D)  # type: ignore[arg-type]
        m = self._prepare_masks(masks, device)
        images = images.to(device)
        seg = one_hot_mask(m, self.label_nc, images.dtype)
        with self.autocast():
            pred = self.D(self._d_input(seg, images, self._seg_out(images)))  # type: ignore[misc]
        return [scale[-1].float() for scale in pred]


SPADE_PAPER: dict[str, Any] = {
    "ngf": 64, "num_up": 5, "spade_hidden": 128, "z_dim": 0, "ndf": 64, "num_d": 2, "n_layers_d": 3,
    "lambda_fm": 10.0, "lr_g": 1e-4, "lr_d": 4e-4, "beta1": 0.0, "beta2": 0.9,
}  # fmt: skip
# spade_hidden 16: the full-resolution SPADE convs dominate the cost (32 -> 16: 9.3 -> 15.3 img/s at 64 px, 1 thread)
SPADE_CPU: dict[str, Any] = {**SPADE_PAPER, "ngf": 16, "num_up": 4, "spade_hidden": 16, "ndf": 32}

MODELS.add(
    "spade",
    ModelSpec(
        method=SPADE,
        params=SPADEParams,
        presets={"paper": SPADE_PAPER, "cpu": SPADE_CPU},
        description="SPADE: label-map-conditioned GAN (Red-GAN's two-player baseline, no class, no segmentor)",
        paper="Park et al., CVPR 2019; as configured in Red-GAN (Qasim et al., MIDL 2020) reference code",
        # Red-GAN README (ISIC) uses --batchSize 8; on CPU, 8 reached recognisable MRI in 5 min where 32 did not
        batch_sizes={"paper": 8, "cpu": 8},
        # Red-GAN reference train_options: niter=50 epochs, niter_decay=0 (constant lr); random horizontal flip unless
        # --no_flip (base_dataset.py)
        train_lengths={"paper": {"epochs": 50}},
        flips={"paper": True},
    ),
    help="SPADE mask-to-image GAN (Red-GAN's baseline)",
)
