"""Acceptance filters applied to generated samples before export.

A filter sees a batch of generated images with the classes they were asked for and returns which to keep,
plus a score per sample (recorded in the manifest's ``filter_scores``):

- :class:`DiscriminatorFilter`: the generator's own discriminator. For methods with an auxiliary classifier
  (ACGAN, the feature ACGAN) it keeps samples that the classifier assigns to the requested class, as the
  feature-ACGAN paper does; otherwise it keeps samples whose real/fake score is above a threshold.
- :class:`ClassifierFilter`: a trained task classifier (``medbalance train-task classification``); keeps samples
  whose probability of the requested class is at least ``min_confidence``.
- :class:`MemorizationGate`: rejects samples closer to their nearest training image than a threshold derived
  from real held-out images (the ``percentile``-th percentile of held-out nearest-training distances), and
  exact copies of training images. Distances: :func:`medbalance.utils.neighbors.knn` (the search evaluation uses).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from medbalance.errors import ConfigError
from medbalance.utils.neighbors import knn


@dataclass
class FilterContext:
    labels: torch.Tensor  # (B,) requested classes
    masks: torch.Tensor | None = None  # (B, H, W) conditioning label maps
    conditions: torch.Tensor | None = None


class SampleFilter(Protocol):
    name: str

    def __call__(self, images: torch.Tensor, ctx: FilterContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (keep: bool (B,), score: float (B,))."""
        ...


@dataclass
class DiscriminatorFilter:
    """The trained discriminator's verdict (class head if the method has one, else real/fake score)."""

    method: Any  # a GANMethod with classify() and/or discriminate()
    mode: str = "auto"  # auto | class | realness
    threshold: float = 0.0  # realness: keep if the (mean) logit >= threshold
    name: str = "discriminator"

    def __post_init__(self) -> None:
        has_cls = callable(getattr(self.method, "classify", None))
        has_disc = callable(getattr(self.method, "discriminate", None))
        if self.mode == "auto":
            self.mode = "class" if has_cls else "realness"
        if self.mode not in ("class", "realness"):
            raise ConfigError(f"unknown discriminator filter mode {self.mode!r}; allowed: auto, class, realness")
        if self.mode == "class" and not has_cls:
            raise ConfigError(f"model {self.method.name!r} has no auxiliary classifier; use mode 'realness'")
        if self.mode == "realness" and not has_disc:
            raise ConfigError(f"model {self.method.name!r} exposes no discriminator score")

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, ctx: FilterContext) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "class":
            logits = self.method.classify(images).float()
            prob = logits.softmax(1).gather(1, ctx.labels.view(-1, 1).to(logits.device)).squeeze(1)
            keep = logits.argmax(1) == ctx.labels.to(logits.device)
            return keep.cpu(), prob.cpu()
        out = _call_discriminate(self.method, images, ctx)
        score = _realness(out)
        return (score >= self.threshold).cpu(), score.cpu()


def _call_discriminate(method: Any, images: torch.Tensor, ctx: FilterContext):
    needs = getattr(method, "needs", ())
    if "mask" in needs and ctx.masks is not None:
        try:
            return method.discriminate(images, ctx.masks, ctx.labels)
        except TypeError:
            return method.discriminate(images, ctx.masks)
    try:
        return method.discriminate(images, ctx.labels)
    except TypeError:
        return method.discriminate(images)


def _realness(out: Any) -> torch.Tensor:
    """Mean logit per sample from a tensor or a (nested) list of per-scale outputs."""
    if isinstance(out, (list, tuple)):
        parts = [_realness(o) for o in out]
        return torch.stack(parts).mean(0)
    t = out.float()
    return t.reshape(t.shape[0], -1).mean(1)


@dataclass
class ClassifierFilter:
    """A trained task classifier's confidence in the requested class."""

    model: torch.nn.Module
    min_confidence: float = 0.5
    name: str = "classifier"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, ctx: FilterContext) -> tuple[torch.Tensor, torch.Tensor]:
        dev = next(self.model.parameters()).device
        logits = self.model(images.to(dev)).float()
        prob = logits.softmax(1).gather(1, ctx.labels.view(-1, 1).to(dev)).squeeze(1).cpu()
        return prob >= self.min_confidence, prob


def _flat(images: torch.Tensor, size: int | None) -> torch.Tensor:
    x = images.float()
    if size is not None and x.shape[-1] > size:
        x = F.adaptive_avg_pool2d(x, size)
    return x.reshape(x.shape[0], -1)


@dataclass
class MemorizationGate:
    """Reject samples closer to the training set than real held-out images usually are.

    threshold = ``percentile``-th percentile of the nearest-training distances of held-out real images
    (pixel space, images average-pooled to ``pixel_size``). Exact copies (distance ~0) are always rejected.
    """

    train_images: torch.Tensor
    heldout_images: torch.Tensor
    percentile: float = 1.0
    pixel_size: int | None = 32
    name: str = "memorization"
    threshold: float = field(init=False)

    def __post_init__(self) -> None:
        if len(self.heldout_images) < 2:
            raise ConfigError("memorization gate needs at least 2 held-out real images to set its threshold")
        self._train = _flat(self.train_images, self.pixel_size)
        d = knn(_flat(self.heldout_images, self.pixel_size), self._train, 1)[0][:, 0]
        self.threshold = float(np.percentile(d, self.percentile))

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, ctx: FilterContext) -> tuple[torch.Tensor, torch.Tensor]:
        d = torch.from_numpy(knn(_flat(images.cpu(), self.pixel_size), self._train, 1)[0][:, 0]).float()
        keep = (d >= self.threshold) & (d > 1e-6)
        return keep, d
