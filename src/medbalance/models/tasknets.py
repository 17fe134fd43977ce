"""Downstream task networks: a segmentation U-Net and an image classifier, plus safe save/load.

* :class:`SegmentationUNet` wraps MONAI's ``UNet`` / ``BasicUNet``. ``mode="softmax"``: mutually
  exclusive labels, one output channel per mask index (background included), loss CE + Dice.
  ``mode="sigmoid"``: one independent channel per foreground mask index (Red-GAN's BraTS
  segmentor, reference code IvanEz/Red-GAN ``unet/``), loss BCE + (1 - soft Jaccard).
* :class:`Classifier`: a small CNN for CPU, or MONAI DenseNet121 / ResNet18/34 on request.
  ``features(x)`` is the penultimate layer (B, d), reused as a domain feature extractor.
* :func:`save_task_model` / :func:`load_task_model`: ``model.safetensors`` + ``model.json``
  (architecture name, constructor kwargs, metadata). Never unpickles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from medbalance.config import BaseConfig
from medbalance.errors import CheckpointError, ConfigError
from medbalance.utils.io import atomic_write_json, load_safetensors, read_json, save_safetensors

FORMAT = "medbalance-task-model"
FORMAT_VERSION = 1


class SegmentationUNet(nn.Module):
    """Segmentation U-Net on MONAI.

    ``num_labels`` = output channels: for ``softmax`` the number of mask indices including
    background; for ``sigmoid`` the number of foreground indices (channel j <-> mask index j+1).
    """

    arch_name = "unet"

    def __init__(
        self,
        in_channels: int,
        num_labels: int,
        mode: Literal["softmax", "sigmoid"] = "softmax",
        spatial_dims: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128),
        num_res_units: int = 1,
        norm: str = "batch",
        dropout: float = 0.0,
        backbone: Literal["unet", "basic_unet"] = "unet",
    ):
        super().__init__()
        if mode not in ("softmax", "sigmoid"):
            raise ConfigError(f"unknown segmentation mode {mode!r}; allowed: softmax, sigmoid")
        if mode == "softmax" and num_labels < 2:
            raise ConfigError("softmax segmentation needs >= 2 labels (background + foreground)")
        if num_labels < 1:
            raise ConfigError("segmentation needs at least one output label")
        self.kwargs = dict(
            in_channels=int(in_channels), num_labels=int(num_labels), mode=mode, spatial_dims=int(spatial_dims),
            channels=[int(c) for c in channels], num_res_units=int(num_res_units), norm=norm,
            dropout=float(dropout), backbone=backbone,
        )
        self.mode = mode
        self.num_labels = num_labels
        if backbone == "unet":
            from monai.networks.nets import UNet

            self.net = UNet(
                spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_labels,
                channels=tuple(channels), strides=tuple([2] * (len(channels) - 1)),
                num_res_units=num_res_units, norm=norm, dropout=dropout,
            )
        elif backbone == "basic_unet":
            from monai.networks.nets import BasicUNet

            if len(channels) != 6:
                raise ConfigError("basic_unet needs 6 channel widths (5 encoder levels + final), e.g. 16,16,32,64,128,16")
            self.net = BasicUNet(
                spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_labels,
                features=tuple(channels), norm=norm, dropout=dropout,
            )
        else:
            raise ConfigError(f"unknown segmentation backbone {backbone!r}; allowed: unet, basic_unet")
        from monai.losses import DiceLoss

        if mode == "softmax":
            self._dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
        else:
            # (2I + 2) / (2(|A|+|B|-I) + 2) = (I + 1) / (U + 1): Red-GAN's soft Jaccard with eps = 1,
            # over the whole batch per channel.
            self._dice = DiceLoss(sigmoid=True, jaccard=True, batch=True, smooth_nr=2.0, smooth_dr=2.0)

    @property
    def min_divisor(self) -> int:
        """Input spatial sizes must be divisible by this."""
        return 2 ** (len(self.kwargs["channels"]) - 1) if self.kwargs["backbone"] == "unet" else 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def targets(self, masks: torch.Tensor) -> torch.Tensor:
        """Sigmoid mode: (B, *sp) indices -> (B, L, *sp) float, channel j = (mask == j + 1)."""
        idx = torch.arange(1, self.num_labels + 1, device=masks.device).view(1, -1, *([1] * (masks.dim() - 1)))
        return (masks.unsqueeze(1) == idx).float()

    def loss(self, logits: torch.Tensor, masks: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
        """softmax: CE (optionally class-weighted) + Dice over foreground; sigmoid: BCE + (1 - soft Jaccard)."""
        logits = logits.float()
        if self.mode == "softmax":
            ce = F.cross_entropy(logits, masks.long(), weight=class_weights)
            return ce + self._dice(logits, masks.unsqueeze(1))
        t = self.targets(masks)
        pos_weight = None
        if class_weights is not None:
            pos_weight = class_weights.view(1, -1, *([1] * (masks.dim() - 1)))
        bce = F.binary_cross_entropy_with_logits(logits, t, pos_weight=pos_weight)
        return bce + self._dice(logits, t)

    @torch.no_grad()
    def predict_labels(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> label-map indices (B, *sp): argmax (softmax) or, for sigmoid, the most
        probable channel whose probability exceeds 0.5 (background otherwise)."""
        if self.mode == "softmax":
            return logits.argmax(1)
        p = torch.sigmoid(logits.float())
        best, arg = p.max(1)
        return torch.where(best > 0.5, arg + 1, torch.zeros_like(arg))


class _SmallCNN(nn.Module):
    def __init__(self, in_channels: int, spatial_dims: int, channels: Sequence[int], dropout: float):
        super().__init__()
        Conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        BN = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
        Pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
        GAP = nn.AdaptiveAvgPool2d if spatial_dims == 2 else nn.AdaptiveAvgPool3d
        layers: list[nn.Module] = []
        prev = in_channels
        for i, c in enumerate(channels):
            layers += [Conv(prev, c, 3, padding=1, bias=False), BN(c), nn.ReLU(True)]
            layers += [Conv(c, c, 3, padding=1, bias=False), BN(c), nn.ReLU(True)]
            if i < len(channels) - 1:
                layers.append(Pool(2))
            prev = c
        layers += [GAP(1), nn.Flatten(1), nn.Dropout(dropout)]
        self.body = nn.Sequential(*layers)
        self.dim = prev

    def forward(self, x):
        return self.body(x)


class Classifier(nn.Module):
    """Image classifier with an exposed penultimate feature layer.

    ``arch``: ``small_cnn`` (default; conv-BN-ReLU x2 per stage, max-pool, global average pool),
    ``densenet121`` (MONAI), ``resnet18`` / ``resnet34`` (MONAI). All random init.
    """

    arch_name = "classifier"
    ARCHES = ("small_cnn", "densenet121", "resnet18", "resnet34")

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        arch: str = "small_cnn",
        spatial_dims: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128),
        dropout: float = 0.2,
    ):
        super().__init__()
        if arch not in self.ARCHES:
            raise ConfigError(f"unknown classifier arch {arch!r}; allowed: {', '.join(self.ARCHES)}")
        if num_classes < 2:
            raise ConfigError("classification needs at least 2 classes")
        self.kwargs = dict(
            in_channels=int(in_channels), num_classes=int(num_classes), arch=arch, spatial_dims=int(spatial_dims),
            channels=[int(c) for c in channels], dropout=float(dropout),
        )
        self.arch = arch
        self.num_classes = num_classes
        if arch == "small_cnn":
            self.backbone = _SmallCNN(in_channels, spatial_dims, channels, dropout)
            self.head = nn.Linear(self.backbone.dim, num_classes)
            self.feature_dim = self.backbone.dim
        elif arch == "densenet121":
            from monai.networks.nets import DenseNet121

            net = DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes)
            self.head = net.class_layers.out
            net.class_layers.out = nn.Identity()
            self.backbone = net
            self.feature_dim = self.head.in_features
        else:
            from monai.networks import nets

            net = getattr(nets, arch)(spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=num_classes)
            self.head = net.fc
            net.fc = nn.Identity()
            self.backbone = net
            self.feature_dim = self.head.in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features (B, feature_dim)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class FeatureClassifierConfig(BaseConfig):
    """The downstream feature classifier (paper 2.8: widths, lr and epochs are not given; these are choices)."""

    channels: list[int] = Field(default_factory=lambda: [64, 64], min_length=2, max_length=2)
    hidden: int = Field(256, ge=1, description="width of the first fully connected layer")
    dropout: float = Field(0.5, ge=0, lt=1, description="before and after the first FC layer (paper: 0.5)")
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)


CLASSIFIER_PRESETS: dict[str, dict[str, Any]] = {
    # paper (TF notebook variant): Adam 1e-3, batch 10, 20 epochs; widths are our choice for 1024-channel input
    "paper": {"channels": [256, 256], "hidden": 1024, "epochs": 20, "batch_size": 10, "lr": 1e-3},
    "cpu": {"channels": [64, 64], "hidden": 256, "epochs": 15, "batch_size": 64, "lr": 1e-3},
}


class FeatureClassifier(nn.Module):
    """2 x [Conv3x3 -> BatchNorm -> ReLU -> MaxPool2] -> Dropout -> FC -> ReLU -> Dropout -> FC (logits).

    The paper's output is a sigmoid for HGG vs LGG; softmax cross-entropy over K classes is the same model
    for K = 2 and works for any number of classes. Max-pooling uses ``ceil_mode`` so odd maps (15 x 15) work.
    """

    def __init__(self, shape: tuple[int, int, int], num_classes: int, channels: list[int] = (64, 64),
                 hidden: int = 256, dropout: float = 0.5):
        super().__init__()
        C = int(shape[0])
        c1, c2 = (int(c) for c in channels)
        self.body = nn.Sequential(
            nn.Conv2d(C, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(True),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(True),
            nn.MaxPool2d(2, ceil_mode=True), nn.Flatten(1),
        )
        with torch.no_grad():
            d = int(self.body(torch.zeros(2, *shape)).shape[1])
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(d, hidden), nn.ReLU(True), nn.Dropout(dropout),
                                  nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


ARCHITECTURES: dict[str, type[nn.Module]] = {"unet": SegmentationUNet, "classifier": Classifier}


def save_task_model(out_dir: str | Path, model: nn.Module, meta: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` and ``model.json`` (architecture + kwargs + meta) atomically into ``out_dir``."""
    name = getattr(model, "arch_name", None)
    if name not in ARCHITECTURES or not hasattr(model, "kwargs"):
        raise ConfigError(f"cannot save {type(model).__name__}: not a medbalance task network")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in model.state_dict().items()}
    save_safetensors(out / "model.safetensors", state, {"architecture": name})
    atomic_write_json(
        out / "model.json",
        {"format": FORMAT, "version": FORMAT_VERSION, "architecture": name, "kwargs": model.kwargs, "meta": meta or {}},
    )
    return out


def load_task_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a task model from ``model.json`` + ``model.safetensors`` (a folder or either file).

    Returns ``(model in eval mode, meta)``. Raises :class:`CheckpointError` for missing or corrupt
    files, unknown architectures and weights that do not fit the architecture.
    """
    p = Path(path)
    folder = p.parent if p.suffix in (".json", ".safetensors") else p
    jpath, wpath = folder / "model.json", folder / "model.safetensors"
    if not folder.exists():
        raise CheckpointError("task model folder not found", path=folder)
    if not jpath.is_file():
        raise CheckpointError("model.json missing (not a task-model folder?)", path=jpath)
    spec = read_json(jpath)
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise CheckpointError(f"not a {FORMAT} file", path=jpath)
    arch = spec.get("architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"unknown architecture {arch!r}; allowed: {', '.join(sorted(ARCHITECTURES))}", path=jpath)
    try:
        model = ARCHITECTURES[arch](**spec.get("kwargs", {}))
    except (TypeError, ConfigError) as e:
        raise CheckpointError(f"cannot rebuild {arch} from its kwargs ({e})", path=jpath) from None
    state, _ = load_safetensors(wpath)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(f"weights do not match the {arch} architecture ({' '.join(first[:2])[:300]})", path=wpath) from None
    model.to(device).eval()
    return model, dict(spec.get("meta", {}))
