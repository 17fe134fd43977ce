"""Training of the downstream task networks (classifier, segmentation U-Net).

Built for being called many times by the downstream experiments: the whole dataset stays as
tensors, batches are index slices (no DataLoader workers), augmentation is vectorised on the
batch, evaluation runs in large no-grad batches. Deterministic for a given seed on CPU.

Model selection uses the validation set: balanced accuracy (classification) or mean
foreground Dice (segmentation). Without a validation set the last epoch is kept.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from medbalance.config import BaseConfig
from medbalance.data.dataset import ImageDataset
from medbalance.errors import ConfigError, DataError
from medbalance.models.feature_acgan import FeatureACGAN
from medbalance.models.tasknets import (
    Classifier,
    FeatureClassifier,
    FeatureClassifierConfig,
    SegmentationUNet,
    save_task_model,
)
from medbalance.training.metrics import (
    classification_metrics,
    segmentation_metrics,
    selection_score,
)
from medbalance.utils.device import autocast, resolve_precision, select_device
from medbalance.utils.io import atomic_write_json
from medbalance.utils.progress import make_progress
from medbalance.utils.seed import seed_everything

CLASSIFIER_ARCHES = Classifier.ARCHES
SEGMENTOR_ARCHES = ("unet", "basic_unet")


class TaskConfig(BaseConfig):
    """How to train a downstream task network."""

    task: Literal["classification", "segmentation"] = "classification"
    arch: Optional[str] = Field(
        None, description="classification: small_cnn | densenet121 | resnet18 | resnet34; "
        "segmentation: unet | basic_unet; null = small_cnn / unet"
    )
    channels: Optional[list[int]] = Field(None, description="network widths; null = the architecture's small default")
    seg_mode: Literal["softmax", "sigmoid"] = Field(
        "softmax", description="softmax: exclusive labels, CE + Dice; sigmoid: independent channels, BCE + soft Jaccard"
    )
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    dropout: float = Field(0.2, ge=0, lt=1, description="classifier dropout before the last layer / U-Net dropout")
    class_weights: bool = Field(False, description="inverse-frequency class weights in the loss")
    augment: bool = Field(True, description="random left-right flip and small in-plane affine")
    augment_all_flips: bool = Field(False, description="also flip the other spatial axes (e.g. up-down)")
    augment_rot90: bool = Field(False, description="also rotate square images by multiples of 90 degrees")
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"
    patience: Optional[int] = Field(None, ge=1, description="stop after this many epochs without improvement")
    channels_last: bool = Field(
        True, description="NHWC memory layout for 2D networks (1.2-1.3x faster training on this CPU's oneDNN; "
        "also the layout CUDA's tensor-core convolutions prefer); ignored for 3D"
    )
    progress: bool = True


@dataclass
class TaskResult:
    model: nn.Module
    history: list[dict[str, Any]]
    best_epoch: int
    val_metrics: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- helpers
def compute_class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights ``n / (C * n_c)`` (scikit-learn 'balanced'); absent classes get 0."""
    counts = torch.bincount(labels.reshape(-1).long(), minlength=num_classes)[:num_classes].double()
    present = counts > 0
    w = torch.zeros(num_classes, dtype=torch.float64)
    n, c = counts.sum(), present.sum()
    w[present] = n / (c * counts[present])
    return w.float()


def build_task_model(cfg: TaskConfig, ds: ImageDataset) -> nn.Module:
    dims = len(ds.spatial_shape)
    if cfg.task == "classification":
        arch = cfg.arch or "small_cnn"
        if arch not in CLASSIFIER_ARCHES:
            raise ConfigError(f"unknown classification arch {arch!r}; allowed: {', '.join(CLASSIFIER_ARCHES)}")
        kw: dict[str, Any] = {}
        if cfg.channels:
            kw["channels"] = cfg.channels
        return Classifier(ds.channels, ds.num_classes, arch=arch, spatial_dims=dims, dropout=cfg.dropout, **kw)
    arch = cfg.arch or "unet"
    if arch not in SEGMENTOR_ARCHES:
        raise ConfigError(f"unknown segmentation arch {arch!r}; allowed: {', '.join(SEGMENTOR_ARCHES)}")
    K = ds.num_mask_labels
    nl = K if cfg.seg_mode == "softmax" else K - 1
    channels = cfg.channels or ([16, 32, 64, 128] if arch == "unet" else [16, 16, 32, 64, 128, 16])
    model = SegmentationUNet(
        ds.channels, nl, mode=cfg.seg_mode, spatial_dims=dims, channels=channels,
        dropout=cfg.dropout if arch == "unet" else 0.0, backbone=arch,
    )
    bad = [s for s in ds.spatial_shape if s % model.min_divisor]
    if bad:
        raise ConfigError(
            f"segmentation {arch} with {len(channels)} levels needs image sizes divisible by {model.min_divisor}, "
            f"got {ds.spatial_shape} (change --image-size or channels)"
        )
    return model


def _check_data(ds: ImageDataset, cfg: TaskConfig, what: str) -> None:
    if len(ds) == 0:
        raise DataError(f"the {what} set is empty")
    if cfg.task == "segmentation":
        if ds.masks is None or ds.num_mask_labels < 2:
            raise DataError(f"segmentation needs label maps, but the {what} set has no masks")
    elif ds.num_classes < 2:
        raise DataError(f"classification needs >= 2 classes, the {what} set has {ds.class_names}")


def augment_batch(
    x: torch.Tensor,
    m: torch.Tensor | None,
    gen: torch.Generator,
    all_flips: bool = False,
    rot90: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-sample random left-right flip (last axis; every axis with ``all_flips``), rot90
    in-plane (square images, with ``rot90``), and a small in-plane affine (rotation +-10 deg,
    scale 0.9-1.1, shift +-5 %); masks use nearest.

    Flips other than left-right and rot90 are off by default: on mixed-view MRI (axial /
    coronal / sagittal) they destroy the orientation cue and cost accuracy (brain-tumor-mri,
    64 px: see docs/models/pix2pix.md). Random numbers come from ``gen`` (CPU), so the result
    is reproducible.
    """
    B = x.shape[0]
    dims = x.dim() - 2
    dev = x.device

    def coin(p: float = 0.5) -> torch.Tensor:
        return (torch.rand(B, generator=gen) < p).to(dev)

    for ax in range(dims) if all_flips else [dims - 1]:
        f = coin()
        shape = (B,) + (1,) * (x.dim() - 1)
        x = torch.where(f.view(shape), x.flip(2 + ax), x)
        if m is not None:
            m = torch.where(f.view((B,) + (1,) * (m.dim() - 1)), m.flip(1 + ax), m)
    if rot90 and x.shape[-1] == x.shape[-2]:
        k = torch.randint(0, 4, (B,), generator=gen).to(dev)
        xs = [x] + [x.rot90(r, dims=(-2, -1)) for r in (1, 2, 3)]
        x = torch.stack(xs)[k, torch.arange(B, device=dev)]
        if m is not None:
            ms = [m] + [m.rot90(r, dims=(-2, -1)) for r in (1, 2, 3)]
            m = torch.stack(ms)[k, torch.arange(B, device=dev)]
    # small affine in the (H, W) plane
    ang = (torch.rand(B, generator=gen) * 2 - 1) * math.radians(10)
    sc = 1 + (torch.rand(B, generator=gen) * 2 - 1) * 0.1
    sh = (torch.rand(B, 2, generator=gen) * 2 - 1) * 0.1  # grid units: 0.1 = 5 % of the side
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    if dims == 2:
        theta = torch.stack(
            [torch.stack([cos, -sin, sh[:, 0]], 1), torch.stack([sin, cos, sh[:, 1]], 1)], 1
        )
    else:  # rotate x/y, keep depth (z is the first grid coordinate in the last slot: x, y, z)
        z, o = torch.zeros(B), torch.ones(B)
        theta = torch.stack(
            [torch.stack([cos, -sin, z, sh[:, 0]], 1), torch.stack([sin, cos, z, sh[:, 1]], 1), torch.stack([z, z, o, z], 1)],
            1,
        )
    theta = theta.to(dev, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # pad with the background intensity of each image (its minimum), not zero (= mid-grey in [-1, 1])
    bg = x.flatten(1).amin(1).view((B,) + (1,) * (x.dim() - 1))
    x = F.grid_sample(x - bg, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + bg
    if m is not None:
        m = F.grid_sample(m.unsqueeze(1).to(x.dtype), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        m = m.squeeze(1).round().long()
    return x, m


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _logits(model: nn.Module, images: torch.Tensor, batch_size: int, amp) -> list[torch.Tensor]:
    dev = _device_of(model)
    out = []
    for s in range(0, images.shape[0], batch_size):
        with amp():
            out.append(model(images[s : s + batch_size].to(dev)).float().cpu())
    return out


def _eval_ctx(model: nn.Module, precision: str | None):
    dev = _device_of(model)
    prec = resolve_precision(precision or "fp32", dev)
    return lambda: autocast(dev, prec)


@torch.no_grad()
def predict_classifier(
    model: nn.Module, ds: ImageDataset | torch.Tensor, batch_size: int = 256, precision: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities (N, C) float32 and predicted class indices (N,) int64 (on CPU)."""
    images = ds.images if isinstance(ds, ImageDataset) else ds
    was = model.training
    model.eval()
    try:
        logits = torch.cat(_logits(model, images, batch_size, _eval_ctx(model, precision)))
    finally:
        model.train(was)
    probs = logits.softmax(1)
    return probs, probs.argmax(1)


@torch.no_grad()
def predict_segmentor(
    model: SegmentationUNet, ds: ImageDataset | torch.Tensor, batch_size: int = 64, precision: str | None = None
) -> torch.Tensor:
    """Label maps (N, *spatial) int64 (indices into the dataset's ``mask_values``), on CPU."""
    images = ds.images if isinstance(ds, ImageDataset) else ds
    was = model.training
    model.eval()
    try:
        parts = [model.predict_labels(lg) for lg in _logits(model, images, batch_size, _eval_ctx(model, precision))]
    finally:
        model.train(was)
    return torch.cat(parts)


def evaluate_task_model(model: nn.Module, ds: ImageDataset, task: str, batch_size: int = 128) -> dict[str, Any]:
    """Metrics of a task model on ``ds`` (training.metrics; segmentation scores lesion labels only)."""
    if task == "classification":
        probs, _ = predict_classifier(model, ds, batch_size)
        return classification_metrics(ds.labels, probs, ds.class_names)
    pred = predict_segmentor(model, ds, batch_size)
    return segmentation_metrics(pred, ds.masks, ds.mask_values, ds.meta.get("anatomy_values"))


# ---------------------------------------------------------------------------- training
def fit_epochs(
    model: nn.Module,
    tensors: Sequence[torch.Tensor | None],
    batch_loss: Callable[[list[torch.Tensor | None], torch.Generator], Any],
    optimizer: torch.optim.Optimizer | None,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    schedule: str = "constant",
    evaluate: Callable[[], dict[str, Any]] | None = None,
    task: str = "classification",
    patience: int | None = None,
    progress: str | None = None,
) -> tuple[list[dict[str, Any]], int, dict[str, Any]]:
    """The one epoch loop (image classifiers, segmentors, feature classifiers, the feature ACGAN).

    Each epoch draws ``torch.randperm(n, generator=gen)`` (``gen`` seeded with ``seed``, also passed to
    ``batch_loss`` for augmentation) and walks it in ``n // batch_size`` batches (the ragged last batch is dropped:
    BatchNorm needs > 1 sample). A batch is ``[t[idx] on the model's device for t in tensors]`` (None stays None);
    ``batch_loss(batch, gen)`` returns the loss. ``schedule``: ``cosine`` (over all steps) or ``constant``.
    With ``optimizer=None`` (adversarial training), ``batch_loss`` makes its own optimiser steps and returns a dict of
    detached scalar statistics; each epoch's record holds their means instead of ``train_loss``.

    After each epoch ``evaluate()`` (validation metrics, :mod:`medbalance.training.metrics`) is scored with
    :func:`~medbalance.training.metrics.selection_score` for ``task``; the best epoch's weights are restored at the
    end (the last epoch's without ``evaluate``). ``patience`` stops after that many epochs without improvement.

    Returns (history, best epoch (1-based), best epoch's metrics); the model is left in eval mode.
    """
    device = _device_of(model)
    n = int(tensors[0].shape[0])
    bs = min(batch_size, n)
    steps_per_epoch = n // bs
    total = epochs * steps_per_epoch
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
             if schedule == "cosine" and optimizer is not None else None)
    gen = torch.Generator().manual_seed(seed)
    history: list[dict[str, Any]] = []
    best_score, best_epoch, best_state, best_metrics = float("-inf"), -1, None, {}
    since_best = 0
    with make_progress(enabled=progress is not None) as bar:
        t = bar.add_task(progress, total=total) if progress is not None else None
        for epoch in range(1, epochs + 1):
            model.train()
            t0 = time.perf_counter()
            perm = torch.randperm(n, generator=gen)
            sums: dict[str, torch.Tensor] = {}
            for b in range(steps_per_epoch):
                idx = perm[b * bs : (b + 1) * bs]
                out = batch_loss([None if x is None else x[idx].to(device, non_blocking=True) for x in tensors], gen)
                if optimizer is not None:
                    optimizer.zero_grad(set_to_none=True)
                    out.backward()
                    optimizer.step()
                    if sched is not None:
                        sched.step()
                    out = {"train_loss": out.detach()}
                for k, v in out.items():
                    sums[k] = sums[k] + v if k in sums else v.clone()
                if t is not None:
                    bar.advance(t)
            rec: dict[str, Any] = {"epoch": epoch, **{k: float(v) / max(steps_per_epoch, 1) for k, v in sums.items()}}
            if optimizer is not None:
                rec["lr"] = optimizer.param_groups[0]["lr"]
            if evaluate is not None:
                m = evaluate()
                rec.update({f"val_{k}": v for k, v in m.items()})
                score = selection_score(m, task)
                if score > best_score or best_state is None:
                    best_score, best_epoch, best_metrics = score, epoch, m
                    best_state = copy.deepcopy(model.state_dict())
                    since_best = 0
                else:
                    since_best += 1
            rec["seconds"] = round(time.perf_counter() - t0, 3)
            history.append(rec)
            if t is not None:
                key = "val_balanced_accuracy" if task == "classification" else "val_dice"
                shown = rec.get(key)
                bar.update(
                    t,
                    description=f"{progress} ep {epoch}/{epochs} "
                    + " ".join(f"{k} {rec[k]:.3f}" for k in list(sums)[:2])
                    + (f" {key[4:]} {shown:.3f}" if isinstance(shown, float) else ""),
                )
            if patience is not None and evaluate is not None and since_best >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = len(history)
    model.eval()
    return history, best_epoch, best_metrics


def train_task_model(
    train: ImageDataset, val: ImageDataset | None, cfg: TaskConfig, out_dir: str | Path | None = None,
    init_model: nn.Module | None = None,
) -> TaskResult:
    """Train a classifier or segmentor on ``train`` with :func:`fit_epochs`; select the best epoch on ``val``.

    ``init_model`` starts from a copy of that model's weights (fine-tuning, e.g. after pre-training on synthetic
    data) instead of a fresh initialisation; it must have the architecture ``cfg`` builds for ``train``.

    With ``out_dir``, writes ``model.safetensors`` + ``model.json`` (meta: task, class names, mask
    values, input channels/size, train/val ids, metrics) and ``history.json`` there.
    """
    _check_data(train, cfg, "training")
    if val is not None:
        _check_data(val, cfg, "validation")
        if val.class_names != train.class_names or val.images.shape[1:] != train.images.shape[1:]:
            raise DataError("validation set differs from the training set in classes, channels or size")
        if cfg.task == "segmentation" and val.mask_values != train.mask_values:
            raise DataError(f"validation mask values {val.mask_values} differ from training {train.mask_values}")
    device = select_device(cfg.device)
    prec = resolve_precision(cfg.precision, device)
    seed_everything(cfg.seed)
    model = build_task_model(cfg, train)
    if init_model is not None:
        model.load_state_dict(init_model.state_dict())
    model = model.to(device)
    if cfg.channels_last and len(train.spatial_shape) == 2:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    cw = None
    if cfg.class_weights:
        if cfg.task == "classification":
            cw = compute_class_weights(train.labels, train.num_classes)
        else:
            K = train.num_mask_labels
            cw = compute_class_weights(train.masks, K)
            if cfg.seg_mode == "sigmoid":  # pos_weight per foreground channel: negatives / positives
                counts = torch.bincount(train.masks.reshape(-1), minlength=K)[:K].double()
                tot = counts.sum()
                cw = torch.where(counts[1:] > 0, (tot - counts[1:]) / counts[1:].clamp_min(1), torch.ones(K - 1)).float()
        cw = cw.to(device)

    def batch_loss(batch: list[torch.Tensor | None], gen: torch.Generator) -> torch.Tensor:
        xb, yb, mb = batch
        if cfg.augment:
            xb, mb = augment_batch(xb, mb, gen, cfg.augment_all_flips, cfg.augment_rot90)
        with autocast(device, prec):
            logits = model(xb)
        if cfg.task == "classification":
            return F.cross_entropy(logits.float(), yb, weight=cw)
        return model.loss(logits, mb, class_weights=cw)

    history, best_epoch, best_metrics = fit_epochs(
        model, [train.images, train.labels, train.masks if cfg.task == "segmentation" else None], batch_loss, opt,
        epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed, schedule=cfg.schedule,
        evaluate=None if val is None else (lambda: evaluate_task_model(model, val, cfg.task, cfg.eval_batch_size)),
        task=cfg.task, patience=cfg.patience, progress=f"train {cfg.task}" if cfg.progress else None,
    )
    # back to the default layout: the returned model then computes exactly what the same weights loaded from disk do
    model = model.to(memory_format=torch.contiguous_format)
    result = TaskResult(model=model, history=history, best_epoch=best_epoch, val_metrics=best_metrics)
    if out_dir is not None:
        save_task_model(out_dir, model, task_model_meta(train, val, cfg, result))
        atomic_write_json(Path(out_dir) / "history.json", history)
    return result


def train_feature_classifier(
    x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor, num_classes: int,
    cfg: FeatureClassifierConfig, seed: int, class_weights: bool = False, device: str = "auto",
    eval_batch_size: int = 512,
) -> tuple[nn.Module, int, list[dict[str, Any]]]:
    """Train on (standardised) features with the task-training loop (:func:`~medbalance.training.task.fit_epochs`:
    Adam, constant rate); keep the epoch with the best validation balanced accuracy."""
    n = x_train.shape[0]
    if n < 2:
        raise DataError(f"the feature classifier needs at least 2 training samples, got {n}")
    dev = select_device(device)
    seed_everything(seed)
    model = FeatureClassifier(tuple(x_train.shape[1:]), num_classes, cfg.channels, cfg.hidden, cfg.dropout).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    w = compute_class_weights(y_train, num_classes).to(dev) if class_weights else None
    names = [str(k) for k in range(num_classes)]

    def batch_loss(batch: list[torch.Tensor | None], _gen: torch.Generator) -> torch.Tensor:
        xb, yb = batch
        return F.cross_entropy(model(xb).float(), yb, weight=w)

    def evaluate() -> dict[str, Any]:
        return classification_metrics(y_val, predict_classifier(model, x_val, eval_batch_size)[0], names)

    history, best_epoch, _ = fit_epochs(model, [x_train, y_train], batch_loss, opt, epochs=cfg.epochs,
                                        batch_size=cfg.batch_size, seed=seed, evaluate=evaluate)
    return model, best_epoch, history


def train_feature_acgan(acgan: FeatureACGAN, feats: torch.Tensor, labels: torch.Tensor) -> list[dict[str, Any]]:
    """Train the feature ACGAN on raw features ``(N, C, h, w)`` and labels ``(N,)`` with :func:`fit_epochs`
    (its ``train_step`` per batch, the config's epochs / batch size / seed); returns and keeps the per-epoch history."""
    cfg = acgan.cfg
    acgan.check_training_data(feats, labels)
    seed_everything(cfg.seed)
    acgan.to(select_device(cfg.device))
    acgan.set_scaling(feats, cfg.nonnegative)
    opt_g, opt_d = acgan.optimizers()
    acgan.history, _, _ = fit_epochs(
        acgan, [acgan.standardise(feats.float()), labels.long()],
        lambda batch, gen: acgan.train_step(batch[0], batch[1], gen, opt_g, opt_d), None,
        epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed, task="classification",
        progress="train feature ACGAN" if cfg.progress else None)
    return acgan.history


def train_domain_encoder(real_train: ImageDataset, out_dir: str | Path, epochs: int = 10, **task_options: Any) -> Path:
    """Train a classifier on ``real_train`` for the ``domain`` feature extractor
    (:mod:`medbalance.evaluation.extractors`): :func:`train_task_model` without validation set (``task_options``
    are :class:`TaskConfig` fields); returns the task-model folder."""
    cfg = TaskConfig(task="classification", epochs=epochs, **task_options)
    train_task_model(real_train, None, cfg, out_dir=out_dir)
    return Path(out_dir)


def task_model_meta(train: ImageDataset, val: ImageDataset | None, cfg: TaskConfig, result: TaskResult) -> dict[str, Any]:
    """Metadata stored in model.json: what the model was trained on and how well it did."""
    return {
        "task": cfg.task,
        "class_names": list(train.class_names),
        "mask_values": train.mask_values,
        "seg_mode": cfg.seg_mode if cfg.task == "segmentation" else None,
        "in_channels": train.channels,
        "spatial_shape": list(train.spatial_shape),
        "intensity": train.intensity.to_dict(),
        "train_ids": list(train.ids),
        "val_ids": None if val is None else list(val.ids),
        "n_train_synthetic": int(train.is_synthetic().sum()),
        "best_epoch": result.best_epoch,
        "val_metrics": result.val_metrics,
        "config": cfg.model_dump(mode="json"),
    }
