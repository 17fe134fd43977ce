"""GAN objectives shared by every method.

All functions take raw discriminator *logits* (any shape; averaged over every element, so
PatchGAN maps and per-image logits both work) and compute in float32 even when the
forward pass ran under bf16/fp16 autocast.

``kind``:

- ``"bce"``: the standard GAN (Goodfellow et al. 2014) with the non-saturating generator
  loss ``-log D(G(z))``, as in DCGAN / ACGAN / LAPGAN;
- ``"hinge"``: ``D: relu(1 - d_real) + relu(1 + d_fake)``, ``G: -d_fake`` (SAGAN, SPADE, Red-GAN);
- ``"lsgan"``: least squares (Mao et al. 2017), targets 1 (real) / 0 (fake).
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from medbalance.errors import ConfigError

GanLossKind = Literal["bce", "hinge", "lsgan"]
GAN_LOSSES: tuple[str, ...] = ("bce", "hinge", "lsgan")


def _check(kind: str) -> None:
    if kind not in GAN_LOSSES:
        raise ConfigError(f"unknown GAN loss {kind!r}; allowed: {', '.join(GAN_LOSSES)}")


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """Discriminator loss (to minimise): real logits should be 'real', fake logits 'fake'."""
    _check(kind)
    r, f = real_logits.float(), fake_logits.float()
    if kind == "bce":
        # -log sigmoid(r) - log(1 - sigmoid(f)), numerically stable via softplus
        return F.softplus(-r).mean() + F.softplus(f).mean()
    if kind == "hinge":
        return F.relu(1.0 - r).mean() + F.relu(1.0 + f).mean()
    return 0.5 * ((r - 1.0) ** 2).mean() + 0.5 * (f**2).mean()


def g_loss(fake_logits: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """Generator loss (to minimise) on the discriminator's logits for generated samples."""
    _check(kind)
    f = fake_logits.float()
    if kind == "bce":
        return F.softplus(-f).mean()  # non-saturating: -log sigmoid(f)
    if kind == "hinge":
        return -f.mean()
    return 0.5 * ((f - 1.0) ** 2).mean()


def class_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Auxiliary-classifier loss: cross-entropy on *logits* (log-softmax + NLL in one stable op).

    The popular ACGAN reference code applies ``nn.Softmax`` and then ``nn.NLLLoss`` (a bug:
    NLLLoss expects log-probabilities); this is the correct form.
    """
    return F.cross_entropy(logits.float(), labels)


def feature_matching_loss(real_feats: Sequence[torch.Tensor], fake_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean L1 distance between discriminator features of real (detached) and fake images.

    ``real_feats`` / ``fake_feats`` are lists of intermediate feature maps (pix2pixHD / SPADE
    style, averaged over layers). Multi-scale discriminators: concatenate the lists.
    """
    if len(real_feats) != len(fake_feats) or not real_feats:
        raise ValueError("feature lists must be non-empty and of equal length")
    total = sum(F.l1_loss(f.float(), r.detach().float()) for r, f in zip(real_feats, fake_feats))
    return total / len(real_feats)


# ---------------------------------------------------------------------------- matching-aware discriminator
MISMATCH_HELP = (
    "matching-aware discriminator (GAN-CLS, Reed et al. 2016): D also sees each real image with a wrong class "
    "as fake, so its fake side is the mean of (fake, its class) and (real, a wrong class); D must then read the "
    "class from the image, which gives G a class signal (ignored by an unconditional model; not in the "
    "DCGAN/MelanoGANs papers)"
)


def mismatch_enabled(requested: bool, conditional: bool, num_classes: int) -> bool:
    """Whether a model trains a matching-aware D: ``requested`` and class-conditional (an unconditional model ignores
    the option, so a preset may switch it on for both); a conditional model needs at least 2 classes for it."""
    enabled = bool(requested) and conditional
    if enabled and num_classes < 2:
        raise ConfigError(f"mismatch (matching-aware D) needs at least 2 classes; the data has {num_classes}")
    return enabled


def mismatched_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """For each label, a different class drawn uniformly from the other ``num_classes - 1`` (torch's global RNG,
    so it is reproduced by the seed and resumed with the RNG state)."""
    if num_classes < 2:
        raise ConfigError(f"wrong-class labels need at least 2 classes, got {num_classes}")
    shift = torch.randint(1, num_classes, labels.shape, device=labels.device)
    return (labels + shift) % num_classes


# ---------------------------------------------------------------------------- gradient penalty
R1_HELP = (
    "R1 gradient penalty weight gamma (Mescheder et al. 2018): D's loss gets gamma/2 * E_real ||grad_x D(x)||^2, "
    "the gradient of D's real/fake logits (summed over patches and scales) with respect to its real input "
    "(0 = off; not in the papers of the four methods)"
)


def r1_input(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """``x`` as a leaf that records gradients when the R1 penalty is on (``gamma > 0``), else ``x`` itself."""
    return x.detach().requires_grad_(True) if gamma > 0 else x


def r1_penalty(real_logits: torch.Tensor | Sequence[torch.Tensor], real_input: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): ``E_x ||d sum(D(x)) / dx||^2`` over the real batch, in float32, with
    ``create_graph`` so that D's parameters receive its gradient. ``real_logits`` may be a list (scales); each
    image's logits are summed. Multiply by ``gamma / 2``; ``real_input`` must come from :func:`r1_input`."""
    logits = [real_logits] if isinstance(real_logits, torch.Tensor) else list(real_logits)
    total = sum(t.float().sum() for t in logits)
    (grad,) = torch.autograd.grad(total, real_input, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


def with_r1(
    loss_d: torch.Tensor, real_logits: torch.Tensor | Sequence[torch.Tensor], real_input: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``loss_d + gamma/2 * R1`` and the logged ``r1`` (unchanged loss and nothing logged when ``gamma == 0``)."""
    if gamma <= 0:
        return loss_d, {}
    pen = r1_penalty(real_logits, real_input)
    return loss_d + 0.5 * gamma * pen, {"r1": pen.detach()}
