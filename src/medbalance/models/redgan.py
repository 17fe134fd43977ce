"""Red-GAN (Qasim et al., MIDL 2020): SPADE + global class + a frozen segmentor as third player.

Additions to :class:`~medbalance.models.spade.SPADE` (Qasim et al., MIDL 2020; reference code IvanEz/Red-GAN):

(a) global conditioning (reference ``generator.py``): ``Embedding(num_classes, embed_dim) -> Linear ->
    (class_map_channels, h/2**num_up, w/2**num_up)`` concatenated to the head input. The class
    is the batch ``label`` (lesion type) or, with ``global_condition="condition"``, the
    ``condition`` column (acquisition site / institution, as in the paper's BraTS setting);
(b) the passive player (reference ``pix2pix_model.py``): D judges ``concat(mask one-hot, image, S(image))`` where S is a
    frozen pretrained segmentor returning logits (B,K,H,W). S is never trained (no optimizer,
    ``requires_grad=False``, always in eval mode so its BatchNorm statistics never move), but G's
    loss is back-propagated *through* S.

S comes from ``params.segmentor`` (a folder written by ``medbalance train-task segmentation``) or is
attached in Python with :meth:`RedGAN.attach_segmentor`. Its input scale is explicit:
``segmentor_input_range`` is the range S was trained on; images in [-1, 1] are mapped linearly to
it (default (-1, 1): identity, which is what ``medbalance train-task`` models expect).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import torch
from pydantic import Field
from torch import nn

from medbalance.data.dataset import DataInfo
from medbalance.errors import ConfigError
from medbalance.models.layers import binomial_blur, check_labels, module_device
from medbalance.models.registry import MODELS, ModelSpec
from medbalance.models.spade import SPADE, SPADE_CPU, SPADE_PAPER, SPADEGenerator, SPADEParams, one_hot_mask


class RedGANParams(SPADEParams):
    embed_dim: int = Field(1024, ge=1, description="class embedding width (reference: 1024)")
    class_map_channels: int = Field(1024, ge=1, description="channels of the class map at the lowest resolution")
    global_condition: Literal["label", "condition"] = Field(
        "label", description="global class: the class label, or the dataset's condition column (e.g. site)"
    )
    segmentor: Optional[str] = Field(
        None, description="folder of a segmentation model saved by `medbalance train-task segmentation`"
    )
    segmentor_input_range: tuple[float, float] = Field(
        (-1.0, 1.0), description="intensity range S expects; images in [-1,1] are mapped linearly onto it"
    )
    seg_loss_weight: float = Field(
        0.0, ge=0, description="weight of a DiceCE loss between S(fake) and the input mask (0 = off, as the reference)"
    )
    segmentor_blur: bool = Field(
        False,
        description="blur images with a 3x3 binomial kernel before S (real and fake alike): S then cannot see "
        "period-2 patterns, so G gains nothing by painting them (not in the reference code)",
    )


NO_SEGMENTOR = (
    "Red-GAN needs a pretrained segmentor as its third player: train one with "
    "`medbalance train-task segmentation ...` and set model.params.segmentor=<that folder> "
    "(or call RedGAN.attach_segmentor(module) in Python); without a segmentor this model is the "
    "SPADE baseline, model name 'spade'"
)


class FrozenSegmentor(nn.Module):
    """Wraps S: maps [-1, 1] images to S's input range, keeps S in eval mode and frozen for good."""

    def __init__(self, net: nn.Module, input_range: tuple[float, float] = (-1.0, 1.0), blur: bool = False):
        super().__init__()
        self.net = net
        self.blur = blur
        self.lo, self.hi = float(input_range[0]), float(input_range[1])
        for p in self.net.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenSegmentor":
        # model.train() on the parent must never switch S's BatchNorm/Dropout to training.
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.blur:  # [1 2 1]^T [1 2 1] / 16: zero response at the Nyquist frequency (period 2 px)
            images = binomial_blur(images, 3, pad_mode="replicate")
        if (self.lo, self.hi) != (-1.0, 1.0):
            images = (images + 1.0) * ((self.hi - self.lo) / 2.0) + self.lo
        return self.net(images)


def load_segmentor(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load a task model saved by ``medbalance train-task segmentation``: ``(module, meta)``."""
    from medbalance.models.tasknets import load_task_model

    net, meta = load_task_model(path)
    meta = dict(meta or {})
    task = meta.get("task")
    if task is not None and task != "segmentation":
        raise ConfigError(
            f"Red-GAN's segmentor must be a segmentation model; this is a {task!r} model "
            "(train one with `medbalance train-task segmentation ...`)",
            path=path,
        )
    return net, meta


class RedGAN(SPADE):
    """Red-GAN: SPADE conditioned on a global class, with a frozen segmentor S in the discriminator's input."""

    name = "redgan"
    needs = ("label", "mask")
    channels_last = True  # measured 1.22x per step (SPADE without the segmentor player: 1.00x)

    def __init__(self, params: RedGANParams, info: DataInfo, segmentor: nn.Module | None = None):
        if params.global_condition == "condition":
            if info.num_conditions < 1:
                raise ConfigError(
                    "global_condition='condition' but the dataset has no condition column "
                    "(set data.condition_column, e.g. the acquisition site)"
                )
            self.needs = ("mask", "condition")
        self.S: Optional[FrozenSegmentor] = None
        self.seg_channels: int | None = None
        super().__init__(params, info)  # builds G; D waits for S (its input width depends on S)
        if segmentor is not None:
            self.attach_segmentor(segmentor)
        elif params.segmentor is not None:
            net, meta = load_segmentor(params.segmentor)
            seg_values = meta.get("mask_values")
            if seg_values is not None and list(seg_values) != list(info.mask_values or []):
                raise ConfigError(
                    f"the segmentor was trained on label values {list(seg_values)} but this dataset's masks have "
                    f"{list(info.mask_values or [])}; its outputs would not mean the same structures",
                    path=params.segmentor,
                )
            self.attach_segmentor(net, source=params.segmentor)

    # ------------------------------------------------------------------ construction
    def _class_count(self) -> int:
        return self.info.num_conditions if self.params.global_condition == "condition" else self.info.num_classes

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
            num_classes=self._class_count(),
            embed_dim=p.embed_dim,
            class_map_channels=p.class_map_channels,
            gain=p.init_gain,
        )

    def _d_extra_channels(self) -> int | None:
        return self.seg_channels  # None until S is attached

    def attach_segmentor(self, module: nn.Module, source: str | Path | None = None) -> "RedGAN":
        """Attach a frozen segmentor S (any module: (B,C,H,W) image -> (B,K,H,W) logits).

        Checks S's output shape on a dummy batch, freezes it, and builds D for K extra channels
        (or checks K against an existing D). S is moved to G's device.
        """
        if not isinstance(module, nn.Module):
            raise ConfigError(f"segmentor must be a torch nn.Module, got {type(module).__name__}", path=source)
        device = module_device(self.G)
        wrapped = FrozenSegmentor(module, self.params.segmentor_input_range, self.params.segmentor_blur).to(device)
        h, w = self.info.spatial_shape
        probe = torch.zeros(2, self.info.channels, h, w, device=device)
        try:
            with torch.no_grad():
                out = wrapped(probe)
        except Exception as e:
            raise ConfigError(
                f"the segmentor cannot process a ({self.info.channels}, {h}, {w}) image batch: {type(e).__name__}: {e}",
                path=source,
            ) from None
        if not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[0] != 2 or tuple(out.shape[2:]) != (h, w):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(
                f"the segmentor must return logits of shape (B, K, {h}, {w}) for (B, {self.info.channels}, {h}, {w}) "
                f"images; got {shape}",
                path=source,
            )
        k = int(out.shape[1])
        if self.params.seg_loss_weight > 0 and k not in (self.label_nc, self.label_nc - 1):
            raise ConfigError(
                f"seg_loss_weight > 0 needs a segmentor with {self.label_nc} (softmax) or {self.label_nc - 1} "
                f"(sigmoid, no background) output channels to compare with the masks; it has {k}",
                path=source,
            )
        if self.D is not None and self.seg_channels != k:
            raise ConfigError(f"the discriminator was built for a {self.seg_channels}-channel segmentor; this one has {k}", path=source)
        self.S = wrapped
        self.seg_channels = k
        if self.D is None:
            self.D = self._build_discriminator(k).to(device)  # type: ignore[union-attr]
        if self.params.seg_loss_weight > 0:
            from monai.losses import DiceCELoss

            if k == self.label_nc:
                self._seg_loss = DiceCELoss(to_onehot_y=True, softmax=True)
            else:
                self._seg_loss = DiceCELoss(sigmoid=True)
        return self

    def _require_d(self) -> None:
        if self.S is None or self.D is None:
            raise ConfigError(NO_SEGMENTOR)

    def train(self, mode: bool = True) -> "RedGAN":
        super().train(mode)
        if self.S is not None:
            self.S.eval()
        return self

    # ------------------------------------------------------------------ hooks used by SPADE's step
    def _seg_out(self, images: torch.Tensor) -> torch.Tensor | None:
        return self.S(images) if self.S is not None else None

    def _classes_from_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        key = self.params.global_condition
        if key not in batch:
            raise ConfigError(f"Red-GAN's global class is {key!r} but the batch has no {key!r} entry")
        return batch[key].long()

    def _extra_g_losses(self, s_fake: torch.Tensor | None, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.params.seg_loss_weight <= 0 or s_fake is None:
            return {}
        logits = s_fake.float()
        if self.seg_channels == self.label_nc:  # softmax over all labels incl. background
            return {"G_seg": self._seg_loss(logits, mask[:, None])}
        target = one_hot_mask(mask, self.label_nc)[:, 1:]  # sigmoid channels = foreground labels
        return {"G_seg": self._seg_loss(logits, target)}

    def _extra_weight(self, key: str) -> float:
        return self.params.seg_loss_weight if key == "G_seg" else 0.0

    def _classes_for_generation(
        self, labels: torch.Tensor | None, conditions: torch.Tensor | None, n: int, device: torch.device
    ) -> torch.Tensor | None:
        if self.params.global_condition == "condition":
            cls = check_labels(conditions, self.info.num_conditions, "Red-GAN (global_condition='condition')")
        else:
            cls = check_labels(labels, self.info.num_classes, "Red-GAN")
        if cls.shape[0] != n:
            raise ConfigError(f"{cls.shape[0]} global classes for {n} masks")
        return cls.to(device)


RED_GAN_PAPER: dict[str, Any] = {**SPADE_PAPER, "embed_dim": 1024, "class_map_channels": 1024, "seg_loss_weight": 0.0}
# cpu: + segmentor_blur (not in the reference): without it every 5-minute run on brain MRI showed vertical period-2
# stripes; with it two seeds showed none, with tumours at the mask (docs/models/spade_redgan.md)
RED_GAN_CPU: dict[str, Any] = {
    **SPADE_CPU, "embed_dim": 64, "class_map_channels": 64, "seg_loss_weight": 0.0, "segmentor_blur": True,
}

MODELS.add(
    "redgan",
    ModelSpec(
        method=RedGAN,
        params=RedGANParams,
        presets={"paper": RED_GAN_PAPER, "cpu": RED_GAN_CPU},
        description="Red-GAN: SPADE + global class (lesion type or site) + frozen pretrained segmentor as third player",
        paper="Qasim et al., Red-GAN: Attacking class imbalance via conditioned generation, MIDL 2020",
        batch_sizes={"paper": 8, "cpu": 8},  # reference README --batchSize 8 (see spade.py)
        # reference train_options niter=50 (the ISIC README example uses --niter 100), constant lr; horizontal flip
        # unless --no_flip
        train_lengths={"paper": {"epochs": 50}},
        flips={"paper": True},
    ),
    help="Red-GAN (SPADE + class + frozen segmentor); needs model.params.segmentor",
)
