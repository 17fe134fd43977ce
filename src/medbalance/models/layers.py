"""Small building blocks shared by the GAN methods: size checks, DCGAN weight init, class
conditioning (embedding concatenated to z, embedding broadcast to planes, projection head),
a binomial low-pass filter, noise drawing for reproducible generation and a chunked no-grad
evaluation helper."""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from medbalance.data.dataset import DataInfo
from medbalance.errors import ConfigError


# ---------------------------------------------------------------------------- filtering
def binomial_blur(
    x: torch.Tensor, taps: int = 5, gain: float = 1.0, stride: int = 1, pad_mode: str = "reflect"
) -> torch.Tensor:
    """Depthwise separable binomial low-pass of ``(B, C, H, W)`` images with 'same' padding.

    The 1-D kernel is a row of Pascal's triangle normalised to sum 1 (``taps`` 3: [1 2 1]/4, zero response
    at period 2 px; 5: [1 4 6 4 1]/16, Burt & Adelson's pyramid kernel), times ``gain`` in 2-D."""
    c, r = x.shape[1], taps // 2
    k1 = torch.tensor([math.comb(taps - 1, i) for i in range(taps)], device=x.device, dtype=x.dtype)
    k1 = k1 / k1.sum()
    k = (torch.outer(k1, k1) * gain).expand(c, 1, taps, taps).contiguous()
    return F.conv2d(F.pad(x, (r, r, r, r), mode=pad_mode), k, stride=stride, groups=c)


# ---------------------------------------------------------------------------- checks
def is_power_of_two(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def square_pow2_size(info: DataInfo, model: str, min_size: int = 32) -> int:
    """Side of the square 2D images a DCGAN-style model is built for, or :class:`ConfigError`."""
    shape = tuple(int(s) for s in info.spatial_shape)
    hint = "resize with data.image_size (e.g. 64, 128 or 256)"
    if len(shape) != 2:
        raise ConfigError(f"model {model!r} needs 2D images; got spatial shape {shape}")
    h, w = shape
    if h != w or not is_power_of_two(h) or h < min_size:
        raise ConfigError(
            f"model {model!r} needs square images whose side is a power of two >= {min_size}; got {h}x{w} ({hint})"
        )
    return h


def log2i(n: int) -> int:
    return int(round(math.log2(n)))


# ---------------------------------------------------------------------------- init
def dcgan_init_(module: nn.Module) -> nn.Module:
    """DCGAN initialisation (Radford et al. 2016): conv/linear weights N(0, 0.02), norm scales
    N(1, 0.02), biases 0, embeddings N(0, 1) (PyTorch default, left as is)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return module


# ---------------------------------------------------------------------------- conditioning
class ClassPlanes(nn.Module):
    """Class label -> learned embedding broadcast to ``(B, dim, H, W)`` planes (to concatenate
    with a convolutional input)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.embed = nn.Embedding(num_classes, dim)

    def forward(self, labels: torch.Tensor, size: tuple[int, int], dtype: torch.dtype | None = None) -> torch.Tensor:
        e = self.embed(labels)
        if dtype is not None:
            e = e.to(dtype)
        return e[:, :, None, None].expand(-1, -1, size[0], size[1])


class ClassBatchNorm2d(nn.Module):
    """Class-conditional BatchNorm (de Vries et al. 2017; the generator of Miyato & Koyama 2018):
    ``BN(x)`` without its own affine, then a per-class gain and bias, ``gain[y] * BN(x) + bias[y]``.
    Gains start at 1 and biases at 0, so at initialisation it is a plain BatchNorm."""

    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, affine=False)
        self.gain = nn.Embedding(num_classes, num_features)
        self.bias = nn.Embedding(num_classes, num_features)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.bn(x)
        return self.gain(labels).to(h.dtype)[:, :, None, None] * h + self.bias(labels).to(h.dtype)[:, :, None, None]


class ProjectionHead(nn.Module):
    """Class-projection term of a conditional discriminator (Miyato & Koyama 2018):
    ``<embed(y), sum_xy h>`` added to the unconditional logit."""

    def __init__(self, num_classes: int, channels: int):
        super().__init__()
        self.embed = nn.Embedding(num_classes, channels)
        nn.init.normal_(self.embed.weight, 0.0, 0.02)

    def forward(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pooled = h.sum(dim=(2, 3))
        return (self.embed(labels).to(pooled.dtype) * pooled).sum(dim=1)


def minibatch_stddev(h: torch.Tensor, group_size: int = 4) -> torch.Tensor:
    """Minibatch standard deviation (Karras et al. 2018, ProGAN): append one feature map holding, for each
    image, the std across its group of ``group_size`` images (averaged over channels and positions).

    ``(B, C, H, W) -> (B, C + 1, H, W)``. Images are grouped by position ``i % (B // g)`` with ``g`` the largest
    divisor of ``B`` not above ``group_size``, so a batch of near-identical images (a collapsed generator) gets a
    map near 0 that the discriminator can tell from a real batch's. A batch of one gets zeros.
    """
    b = h.shape[0]
    g = max(d for d in range(1, min(group_size, b) + 1) if b % d == 0)
    y = h.float().reshape(g, b // g, *h.shape[1:])
    std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (B // g,)
    feat = std.repeat(g).view(b, 1, 1, 1).expand(b, 1, *h.shape[2:]).to(h.dtype)
    return torch.cat([h, feat], dim=1)


def check_labels(labels: torch.Tensor | None, num_classes: int, what: str) -> torch.Tensor:
    if labels is None:
        raise ConfigError(f"{what}: this model is class-conditional, labels are required")
    if labels.ndim != 1:
        raise ConfigError(f"{what}: labels must be a 1-D tensor of class indices, got shape {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ConfigError(f"{what}: class index out of range 0..{num_classes - 1}")
    return labels.long()


# ---------------------------------------------------------------------------- utilities
def module_device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def cpu_noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard normal noise drawn on CPU with ``generator`` (reproducible on any device), then moved."""
    return torch.randn(shape, generator=generator, device="cpu").to(device)


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Temporarily put modules in eval mode (BatchNorm uses running statistics), then restore."""
    states = [[(m, m.training) for m in mod.modules()] for mod in modules]
    for mod in modules:
        mod.eval()
    try:
        yield
    finally:
        for st in states:
            for m, flag in st:
                m.training = flag


def chunked(
    fn: Callable[..., torch.Tensor], tensors: list[torch.Tensor | None], device: torch.device, batch_size: int = 256
) -> torch.Tensor:
    """Apply ``fn`` to aligned chunks of ``tensors`` (``None`` entries passed through) on ``device``,
    concatenating float32 results on the device of the first tensor."""
    first = tensors[0]
    assert first is not None
    outs = []
    for i in range(0, first.shape[0], batch_size):
        args = [None if t is None else t[i : i + batch_size].to(device) for t in tensors]
        outs.append(fn(*args).float())
    if not outs:
        return torch.zeros(0, device=first.device)
    return torch.cat(outs).to(first.device)
