"""pix2pix (Isola et al. 2017) as used by Shin et al. 2018 to synthesise MRI from label maps.

Label map (one-hot, ``info.num_mask_labels`` channels) [+ optional class-embedding map]
-> U-Net generator with skip connections -> image in [-1, 1]. The only noise source is
dropout, kept active at generation time as in pix2pix. A PatchGAN discriminator (3 strided
layers = 70x70 receptive field in 2D) scores concat(label map, image). Loss: BCE GAN loss +
lambda * L1 (lambda = 100); Adam 2e-4, beta1 = 0.5 for both networks.

2D (images (B,C,H,W), masks (B,H,W)) and 3D (volumes (B,C,D,H,W), masks (B,D,H,W)) share the
code; each down block has its own per-axis stride (1 or 2), so thin slabs can be downsampled
in-plane only, e.g. ``(1, 2, 2)``. See docs/models/pix2pix.md for what follows the paper
(Shin et al. 2018, arXiv 1807.10225, and the pix2pix 3D code of its authors) and what is ours.
"""

from __future__ import annotations

import contextlib
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from medbalance.config import BaseConfig
from medbalance.data.dataset import DataInfo
from medbalance.errors import ConfigError, DataError
from medbalance.models.base import GANMethod, set_requires_grad
from medbalance.models.losses import R1_HELP, d_loss, g_loss, r1_input, with_r1
from medbalance.models.registry import MODELS, ModelSpec


class Pix2PixParams(BaseConfig):
    spatial_dims: Literal[2, 3] = Field(2, description="2 = images (B,C,H,W); 3 = volumes (B,C,D,H,W)")
    ngf: int = Field(64, ge=1, description="generator width of the first block")
    ndf: int = Field(64, ge=1, description="discriminator width of the first block")
    num_downs: Optional[int] = Field(
        None, ge=2, description="U-Net down blocks; null = as many as halve the image (capped by max_downs)"
    )
    max_downs: int = Field(8, ge=2, description="cap on the automatic depth")
    strides: Optional[list[list[int]]] = Field(
        None,
        description="per down block, one stride per spatial axis (1 or 2), e.g. [[1,2,2], ...] for thin slabs; "
        "null = 2 on every axis that can still be halved",
    )
    max_mult: int = Field(8, ge=1, description="channel cap = ngf * max_mult (pix2pix: 8 -> 512)")
    norm: Literal["batch", "instance"] = "batch"
    dropout: float = Field(0.5, ge=0, lt=1, description="dropout of the decoder blocks after the bottleneck")
    dropout_blocks: int = Field(3, ge=0, description="how many decoder blocks after the bottleneck use dropout")
    dropout_at_generation: bool = Field(True, description="keep dropout active when generating (pix2pix noise)")
    batch_stats_at_generation: bool = Field(
        False, description="normalise with batch statistics at generation (pix2pix test mode) instead of running stats"
    )
    n_layers_d: int = Field(3, ge=1, description="strided PatchGAN layers (3 = 70x70 patches in 2D)")
    lambda_l1: float = Field(100.0, ge=0)
    r1_gamma: float = Field(0.0, ge=0, description=R1_HELP + "; the gradient is taken with respect to the image, not the label map")
    lr_g: float = Field(2e-4, gt=0)
    lr_d: float = Field(2e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    class_conditional: bool = Field(
        False, description="add a learned class-embedding map to G's and D's input (beyond the paper)"
    )
    class_embed_dim: int = Field(8, ge=1)

    @field_validator("strides")
    @classmethod
    def _check_strides(cls, v):
        if v is not None:
            for s in v:
                if any(x not in (1, 2) for x in s):
                    raise ValueError("strides must be 1 or 2")
        return v


# ---------------------------------------------------------------------------- building blocks
def _conv(dims: int):
    return nn.Conv2d if dims == 2 else nn.Conv3d


def _convT(dims: int):
    return nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d


def _norm(kind: str, dims: int, ch: int) -> nn.Module:
    if kind == "batch":
        return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(ch)
    return (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(ch, affine=True)


def _geom(strides: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Kernel/padding per axis: k4 p1 halves (stride 2, as pix2pix), k3 p1 keeps size (stride 1)."""
    return tuple(4 if s == 2 else 3 for s in strides), tuple(1 for _ in strides)


def auto_strides(shape: tuple[int, ...], num_downs: int | None, max_downs: int) -> list[tuple[int, ...]]:
    """Stride 2 on every axis that can still be halved (even size), until all axes are 1."""
    cur = list(shape)
    out: list[tuple[int, ...]] = []
    while True:
        s = tuple(2 if (c >= 2 and c % 2 == 0) else 1 for c in cur)
        if num_downs is None and (all(x == 1 for x in s) or len(out) >= max_downs):
            break
        if num_downs is not None and len(out) >= num_downs:
            break
        out.append(s)
        cur = [c // x for c, x in zip(cur, s)]
    return out


class UNetGenerator(nn.Module):
    """pix2pix U-Net (Isola et al. ``UnetGenerator``), 2D or 3D, with per-block strides.

    Down: conv (no norm on the first and the innermost), LeakyReLU 0.2 before every conv but the
    first. Up: ReLU, transposed conv, norm, dropout on the first ``dropout_blocks`` blocks after
    the bottleneck, concat skip. Output: tanh.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        strides: list[tuple[int, ...]],
        ngf: int = 64,
        max_mult: int = 8,
        norm: str = "batch",
        dropout: float = 0.5,
        dropout_blocks: int = 3,
        num_classes: int = 0,
        class_embed_dim: int = 8,
    ):
        super().__init__()
        dims = len(strides[0])
        n = len(strides)
        ch = [ngf * min(2**i, max_mult) for i in range(n)]
        self.embed = nn.Embedding(num_classes, class_embed_dim) if num_classes > 0 else None
        cin = in_channels + (class_embed_dim if self.embed is not None else 0)
        Conv, ConvT = _conv(dims), _convT(dims)
        downs = []
        for i, s in enumerate(strides):
            k, p = _geom(s)
            layers: list[nn.Module] = [] if i == 0 else [nn.LeakyReLU(0.2, True)]
            layers.append(Conv(cin if i == 0 else ch[i - 1], ch[i], k, s, p, bias=norm == "instance"))
            if 0 < i < n - 1:
                layers.append(_norm(norm, dims, ch[i]))
            downs.append(nn.Sequential(*layers))
        self.downs = nn.ModuleList(downs)
        ups = []
        drop_levels = set(range(max(1, n - 1 - dropout_blocks), n - 1)) if dropout > 0 else set()
        for i in range(n - 1, -1, -1):
            k, p = _geom(strides[i])
            cin_up = ch[i] if i == n - 1 else 2 * ch[i]
            if i == 0:
                layers = [nn.ReLU(True), ConvT(cin_up, out_channels, k, strides[i], p), nn.Tanh()]
            else:
                layers = [nn.ReLU(True), ConvT(cin_up, ch[i - 1], k, strides[i], p, bias=norm == "instance")]
                layers.append(_norm(norm, dims, ch[i - 1]))
                if i in drop_levels:
                    layers.append(nn.Dropout(dropout))
            ups.append(nn.Sequential(*layers))
        self.ups = nn.ModuleList(ups)  # ups[0] = innermost ... ups[-1] = outermost

    def forward(self, seg: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = seg
        if self.embed is not None:
            if labels is None:
                raise ConfigError("this pix2pix model is class-conditional: class labels are required")
            e = self.embed(labels).view(labels.shape[0], -1, *([1] * (seg.dim() - 2)))
            x = torch.cat([x, e.expand(-1, -1, *seg.shape[2:]).to(seg.dtype)], 1)
        skips = []
        for d in self.downs:
            x = d(x)
            skips.append(x)
        h = self.ups[0](skips[-1])
        for j, up in enumerate(self.ups[1:], start=2):
            h = up(torch.cat([skips[-j], h], 1))
        return h


class PatchDiscriminator(nn.Module):
    """pix2pix ``NLayerDiscriminator`` (PatchGAN), 2D or 3D; axes too small to halve use stride 1."""

    def __init__(
        self,
        in_channels: int,
        shape: tuple[int, ...],
        ndf: int = 64,
        n_layers: int = 3,
        norm: str = "batch",
        max_mult: int = 8,
        num_classes: int = 0,
        class_embed_dim: int = 8,
    ):
        super().__init__()
        dims = len(shape)
        Conv = _conv(dims)
        self.embed = nn.Embedding(num_classes, class_embed_dim) if num_classes > 0 else None
        cin = in_channels + (class_embed_dim if self.embed is not None else 0)
        cur = list(shape)
        layers: list[nn.Module] = []
        prev = cin
        for i in range(n_layers + 2):
            strided = i < n_layers
            s = tuple(2 if (strided and c >= 4) else 1 for c in cur)
            k = tuple(4 if (c >= 4 or st == 2) else 3 for c, st in zip(cur, s))
            out = 1 if i == n_layers + 1 else ndf * min(2**i, max_mult)
            layers.append(Conv(prev, out, k, s, 1, bias=(i == 0 or i == n_layers + 1 or norm == "instance")))
            if 0 < i <= n_layers:
                layers.append(_norm(norm, dims, out))
            if i <= n_layers:
                layers.append(nn.LeakyReLU(0.2, True))
            cur = [(c + 2 - kk) // st + 1 for c, kk, st in zip(cur, k, s)]
            prev = out
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if labels is None:
                raise ConfigError("this pix2pix model is class-conditional: class labels are required")
            e = self.embed(labels).view(labels.shape[0], -1, *([1] * (x.dim() - 2)))
            x = torch.cat([x, e.expand(-1, -1, *x.shape[2:]).to(x.dtype)], 1)
        return self.net(x)


def init_weights(m: nn.Module) -> None:
    """pix2pix init: conv N(0, 0.02), norm weight N(1, 0.02), biases 0."""
    if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm2d, nn.InstanceNorm3d)):
        if m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


@contextlib.contextmanager
def generation_mode(G: nn.Module, dropout: bool, batch_stats: bool):
    """Eval mode, except dropout (noise) stays on and, optionally, norms use batch statistics
    without touching the running buffers. Restores every module's previous state."""
    saved = [(m, m.training) for m in G.modules()]
    bn_saved = []
    G.eval()
    for m in G.modules():
        if dropout and isinstance(m, nn.Dropout):
            m.train()
        if batch_stats and isinstance(m, nn.modules.batchnorm._BatchNorm):
            bn_saved.append((m, m.track_running_stats))
            m.track_running_stats = False
            m.train()
    try:
        yield
    finally:
        for m, t in bn_saved:
            m.track_running_stats = t
        for m, t in saved:
            m.training = t


# ---------------------------------------------------------------------------- the method
class Pix2Pix(GANMethod):
    """pix2pix label map -> image (Shin et al. 2018's synthesiser), 2D or 3D."""

    name = "pix2pix"
    needs = ("mask",)
    channels_last = True

    def __init__(self, params: Pix2PixParams, info: DataInfo):
        super().__init__(params, info)
        p = params
        if info.num_mask_labels < 2:
            raise ConfigError("pix2pix needs label maps: the dataset has no masks (mask_values)")
        shape = tuple(int(s) for s in info.spatial_shape)
        if len(shape) != p.spatial_dims:
            raise ConfigError(
                f"pix2pix spatial_dims={p.spatial_dims} but the data has {len(shape)} spatial axes {shape}"
            )
        if p.strides is not None:
            strides = [tuple(s) for s in p.strides]
            if any(len(s) != p.spatial_dims for s in strides):
                raise ConfigError(f"pix2pix strides need {p.spatial_dims} values per block, got {p.strides}")
            if p.num_downs is not None and p.num_downs != len(strides):
                raise ConfigError(f"pix2pix num_downs={p.num_downs} but {len(strides)} strides are given")
        else:
            strides = auto_strides(shape, p.num_downs, p.max_downs)
        total = [1] * len(shape)
        for s in strides:
            total = [t * x for t, x in zip(total, s)]
        bad = [(d, t) for d, t in zip(shape, total) if d % t]
        if len(strides) < 2 or bad:
            raise ConfigError(
                f"pix2pix: image size {shape} cannot be downsampled by the strides {strides} "
                f"(each axis must be divisible by the product of its strides, and >= 2 blocks are needed)"
            )
        self.strides = strides
        self.num_classes = info.num_classes if p.class_conditional else 0
        if p.class_conditional:
            self.needs = ("mask", "label")
        K = info.num_mask_labels
        self.G = UNetGenerator(
            K, info.channels, strides, p.ngf, p.max_mult, p.norm, p.dropout, p.dropout_blocks,
            self.num_classes, p.class_embed_dim,
        )
        self.D = PatchDiscriminator(
            K + info.channels, shape, p.ndf, p.n_layers_d, p.norm, p.max_mult, self.num_classes, p.class_embed_dim
        )
        self.G.apply(init_weights)
        self.D.apply(init_weights)

    # -------------------------------------------------------------- engine contract
    def networks(self) -> dict[str, nn.Module]:
        return {"G": self.G, "D": self.D}

    def configure_optimizers(self):
        p = self.params
        return {
            "G": (torch.optim.Adam(self.G.parameters(), lr=p.lr_g, betas=(p.beta1, p.beta2)), self.G),
            "D": (torch.optim.Adam(self.D.parameters(), lr=p.lr_d, betas=(p.beta1, p.beta2)), self.D),
        }

    def onehot(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, *spatial) int label indices -> (B, K, *spatial) float one-hot."""
        return F.one_hot(masks.long(), self.info.num_mask_labels).movedim(-1, 1).float()

    def _labels(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        return labels.long() if self.num_classes else None

    def training_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        real = batch["image"]
        seg = self.onehot(batch["mask"])
        lab = self._labels(batch.get("label"))
        with self.autocast():
            fake = self.G(seg, lab)
        # D: real pairs -> 1, fake pairs -> 0 (pix2pix halves D's loss).
        gamma = self.params.r1_gamma
        with self.autocast():
            real_in = r1_input(real, gamma)
            d_real = self.D(torch.cat([seg, real_in], 1), lab).float()
            d_fake = self.D(torch.cat([seg, fake.detach()], 1), lab).float()
            loss_d, r1 = with_r1(0.5 * d_loss(d_real, d_fake, "bce"), d_real, real_in, gamma)
        self.optimize("D", loss_d)
        # G: fool D + lambda * L1 to the real image.
        set_requires_grad(self.D, False)
        try:
            with self.autocast():
                g_fake = self.D(torch.cat([seg, fake], 1), lab).float()
                loss_gan = g_loss(g_fake, "bce")
                loss_l1 = F.l1_loss(fake.float(), real.float())
                loss_g = loss_gan + self.params.lambda_l1 * loss_l1
            self.optimize("G", loss_g)
        finally:
            set_requires_grad(self.D, True)
        return {
            **r1,
            "loss_d": loss_d.detach(),
            "loss_g": loss_g.detach(),
            "loss_g_gan": loss_gan.detach(),
            "loss_g_l1": loss_l1.detach(),
            "d_real": torch.sigmoid(d_real.detach()).mean(),
            "d_fake": torch.sigmoid(d_fake.detach()).mean(),
        }

    def _check_masks(self, masks: torch.Tensor | None, n: int) -> torch.Tensor:
        if masks is None:
            raise ConfigError("pix2pix generates from label maps: masks are required")
        if masks.dim() != 1 + self.params.spatial_dims or masks.shape[0] != n:
            raise DataError(
                f"masks must have shape (B, *spatial) with B={n} and {self.params.spatial_dims} spatial axes, "
                f"got {tuple(masks.shape)}"
            )
        if masks.is_floating_point():
            raise DataError("masks must be integer label indices (0 = background), not floats")
        K = self.info.num_mask_labels
        if masks.numel() and (int(masks.min()) < 0 or int(masks.max()) >= K):
            raise DataError(f"mask indices must lie in [0, {K - 1}] (mask_values {self.info.mask_values})")
        return masks

    @torch.no_grad()
    def generate(
        self,
        labels: torch.Tensor,
        masks: torch.Tensor | None = None,
        conditions: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        G: nn.Module | None = None,
    ) -> torch.Tensor:
        G = self.G if G is None else G
        dev = next(G.parameters()).device
        masks = self._check_masks(masks, int(labels.shape[0])).to(dev)
        seg = self.onehot(masks)
        lab = self._labels(labels.to(dev))
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item()) if generator is not None else None
        devices = [dev] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            with generation_mode(G, self.params.dropout_at_generation, self.params.batch_stats_at_generation):
                with self.autocast():
                    out = G(seg, lab)
        return out.float().clamp_(-1, 1)

    @torch.no_grad()
    def discriminate(self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """PatchGAN logits (B, 1, *patch_grid) for (label map, image) pairs (D in eval mode)."""
        dev = next(self.D.parameters()).device
        seg = self.onehot(masks.to(dev))
        was = self.D.training
        self.D.eval()
        try:
            with self.autocast():
                out = self.D(torch.cat([seg, images.to(dev)], 1), self._labels(labels.to(dev)) if labels is not None else None)
        finally:
            self.D.train(was)
        return out.float()

    def describe(self):
        d = super().describe()
        d["strides"] = [list(s) for s in self.strides]
        return d


PAPER = dict(
    spatial_dims=2, ngf=64, ndf=64, num_downs=8, norm="batch", dropout=0.5, dropout_blocks=3, n_layers_d=3,
    lambda_l1=100.0, lr_g=2e-4, lr_d=2e-4, beta1=0.5, class_conditional=False,
)
CPU = dict(
    spatial_dims=2, ngf=32, ndf=32, num_downs=None, max_downs=6, norm="batch", dropout=0.5, dropout_blocks=3,
    n_layers_d=3, lambda_l1=100.0, lr_g=2e-4, lr_d=2e-4, beta1=0.5, class_conditional=False,
)

MODELS.add(
    "pix2pix",
    ModelSpec(
        method=Pix2Pix,
        params=Pix2PixParams,
        presets={"paper": PAPER, "cpu": CPU},
        description="pix2pix label map -> image (U-Net G with dropout noise, PatchGAN D, BCE + 100 L1); 2D or 3D",
        paper="Shin et al. 2018 (arXiv 1807.10225), pix2pix: Isola et al. 2017",
        batch_sizes={"paper": 1},  # Isola et al. and the DLI code Shin et al. used: batch 1
        # the pix2pix 3D code of Shin et al.'s fork: 200 epochs, random left-right flip of input and target together.
        # Volumes (data.nifti.mode: volume): this preset with params spatial_dims: 3, num_downs: null (the 8 fixed
        # blocks need 256 voxels on every axis; null = stride 2 on every axis that can still be halved)
        train_lengths={"paper": {"epochs": 200}},
        flips={"paper": True},
    ),
    help="pix2pix label map -> image synthesiser (Shin et al. 2018), 2D/3D",
)
