"""Feature extractors (registry ``EXTRACTORS``), usable from the CLI by name.

Every extractor maps images ``(N, C, H, W)`` float32 in ``[-1, 1]`` (the :class:`ImageDataset`
convention) to features ``(N, D)`` float32, and has a ``key`` (weights identity) and a
``preprocessing`` string used for the feature cache.

- ``inception-v3``: the Inception-v3 variant used for standard FID (pytorch-fid's FIDInceptionA/C/E
  blocks, 2048-d pool features), with the standard FID weights
  ``pt_inception-2015-12-05-6726825d.pth`` loaded from a local file (option ``weights=`` or env var
  ``MEDBALANCE_INCEPTION_WEIGHTS``). Nothing is downloaded; without weights the extractor raises
  :class:`ExtractorUnavailable`, it never falls back to random weights. Preprocessing: grayscale is
  replicated to 3 channels, images are resized to 299x299 with bilinear interpolation
  (``align_corners=False``, as pytorch-fid), and stay in ``[-1, 1]`` (the range the network expects).
  The ``.pth`` file is a pickled state dict: it is read only with ``torch.load(path,
  weights_only=True)`` (PyTorch's restricted tensor-only unpickler) — the single exception to
  medbalance's "never unpickle" rule — or from a ``.safetensors`` conversion.
- ``domain``: the penultimate layer (``Classifier.features``) of a classifier trained by
  medbalance on the real training data (``weights=`` a task-model folder, trained by
  :func:`medbalance.training.task.train_domain_encoder`). Meaningful distances for medical images without
  ImageNet weights.
- ``pixels``: images area-downsampled to ``size x size`` (default 32) and flattened.
- ``torchscript:PATH``: a user TorchScript module (``torch.jit.load``, not pickle) mapping images in
  ``[-1, 1]`` to features.
- any Python callable registered with :func:`register_extractor`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medbalance.errors import CheckpointError, ConfigError
from medbalance.registry import Registry

INCEPTION_WEIGHTS_ENV = "MEDBALANCE_INCEPTION_WEIGHTS"
INCEPTION_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"


class ExtractorUnavailable(ConfigError):
    """The extractor cannot be used here (e.g. its weights are not on this machine)."""


class Extractor:
    """Base class: batched, no-grad encoding of ``[-1, 1]`` images to ``(N, D)`` float32 features."""

    name: str = "extractor"
    key: str = ""  # identity of the weights (for the cache)
    preprocessing: str = ""
    batch_size: int = 64

    def encode_batch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, progress: str | None = None) -> np.ndarray:
        if images.ndim != 4:
            raise ConfigError(f"extractor {self.name!r} takes 2D images (N, C, H, W), got shape {tuple(images.shape)}")
        starts = range(0, images.shape[0], self.batch_size)
        if progress:
            from medbalance.utils.progress import track

            starts = track(starts, progress, total=len(starts))
        out = []
        for s in starts:
            f = self.encode_batch(images[s : s + self.batch_size].float())
            out.append(f.reshape(f.shape[0], -1).float().cpu())
        if not out:
            return np.zeros((0, 0), dtype=np.float32)
        return torch.cat(out).numpy()


ExtractorFactory = Callable[..., Extractor]
EXTRACTORS: Registry[ExtractorFactory] = Registry("feature extractor")


# ============================================================================ pixels


class PixelExtractor(Extractor):
    name = "pixels"

    def __init__(self, size: int = 32, **_: Any):
        self.size = int(size)
        self.key = f"pixels-{self.size}"
        self.preprocessing = f"area-resize-{self.size}"
        self.batch_size = 512

    def encode_batch(self, x: torch.Tensor) -> torch.Tensor:
        # area-downsample to size x size; smaller images are used as they are (never upsampled)
        h, w = x.shape[-2:]
        target = (min(self.size, h), min(self.size, w))
        if (h, w) != target:
            x = F.interpolate(x, size=target, mode="area")
        return x.flatten(1)


EXTRACTORS.add("pixels", PixelExtractor, help="raw pixels area-downsampled to 32x32 (never upsampled) and flattened")


# ============================================================================ Inception v3 (FID)


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm(eps=1e-3) + ReLU, named ``conv`` / ``bn`` as in the FID weights."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg3(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool ignores the zero padding (count_include_pad=False)
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg3(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class FIDInceptionC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for m in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = m(bd)
        bp = self.branch_pool(_avg3(x))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class FIDInceptionE(nn.Module):
    """InceptionE; ``pool='avg'`` (Mixed_7b, padding-excluding average) or ``'max'`` (Mixed_7c)."""

    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        b1 = self.branch1x1(x)
        t = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(t), self.branch3x3_2b(t)], 1)
        t = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(t), self.branch3x3dbl_3b(t)], 1)
        if self.pool == "max":
            p = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            p = _avg3(x)
        return torch.cat([b1, b3, bd, self.branch_pool(p)], 1)


class FIDInceptionV3(nn.Module):
    """Inception v3 as used for standard FID (TF 2015-12-05 graph), returning 2048-d pool features.

    Module names match the keys of ``pt_inception-2015-12-05-6726825d.pth`` (no AuxLogits;
    ``fc`` has 1008 outputs and is loaded but not used for features).
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = FIDInceptionA(192, 32)
        self.Mixed_5c = FIDInceptionA(256, 64)
        self.Mixed_5d = FIDInceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, 128)
        self.Mixed_6c = FIDInceptionC(768, 160)
        self.Mixed_6d = FIDInceptionC(768, 160)
        self.Mixed_6e = FIDInceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, pool="avg")
        self.Mixed_7c = FIDInceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (N, 3, 299, 299) in [-1, 1] -> (N, 2048) pool features."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ExtractorUnavailable("Inception weights file not found", path=path)
    if path.suffix == ".safetensors":
        from medbalance.utils.io import load_safetensors

        return load_safetensors(path)[0]
    try:
        # The single exception to "never unpickle": PyTorch's restricted, tensor-only unpickler.
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # not a (safe) state dict
        raise CheckpointError(f"cannot read Inception weights ({type(e).__name__}: {str(e).splitlines()[0]})", path=path) from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError("Inception weights file is not a flat state dict of tensors", path=path)
    return sd


def load_inception_state(model: FIDInceptionV3, sd: dict[str, torch.Tensor], path: str | Path | None = None) -> None:
    """Load ``sd`` into ``model`` after checking every key and shape (clear error on a wrong file)."""
    expected = model.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in sd and k not in optional]
    unexpected = [k for k in sd if k not in expected]
    if missing:
        raise CheckpointError(
            f"not FID Inception-v3 weights: {len(missing)} missing keys (e.g. {', '.join(missing[:3])})", path=path
        )
    if unexpected:
        raise CheckpointError(
            f"not FID Inception-v3 weights: {len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})",
            path=path,
        )
    for k, v in sd.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(
                f"not FID Inception-v3 weights: {k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}",
                path=path,
            )
    full = {k: sd[k].to(expected[k].dtype) if k in sd else torch.zeros((), dtype=torch.long) for k in expected}
    model.load_state_dict(full, strict=True, assign=True)


class InceptionExtractor(Extractor):
    name = "inception-v3"

    def __init__(self, weights: str | Path | None = None, batch_size: int = 32, **_: Any):
        src = weights or os.environ.get(INCEPTION_WEIGHTS_ENV)
        if not src:
            raise ExtractorUnavailable(
                f"inception-v3 needs the standard FID weights ({INCEPTION_WEIGHTS_NAME}) on this machine: "
                f"pass --extractor-weights PATH or set {INCEPTION_WEIGHTS_ENV} (nothing is downloaded)"
            )
        path = Path(src)
        sd = _read_state_dict(path)
        with torch.device("meta"):  # no random init: every tensor comes from the file
            model = FIDInceptionV3()
        load_inception_state(model, sd, path=path)
        self.model = model.eval()
        from medbalance.utils.io import sha256_file

        self.key = f"inception-v3-{sha256_file(path)[:16]}"
        self.preprocessing = "gray-to-rgb,bilinear-299,range[-1,1]"
        self.batch_size = batch_size

    def encode_batch(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ConfigError(f"inception-v3 takes 1- or 3-channel images, got {x.shape[1]} channels")
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return self.model(x)


EXTRACTORS.add(
    "inception-v3",
    InceptionExtractor,
    help=f"standard FID Inception-v3 (2048-d); weights from --extractor-weights or ${INCEPTION_WEIGHTS_ENV}",
)


# ============================================================================ domain encoder


class DomainExtractor(Extractor):
    name = "domain"

    def __init__(self, weights: str | Path | None = None, batch_size: int = 128, **_: Any):
        if not weights:
            raise ExtractorUnavailable(
                "the domain extractor needs a task-model folder (--extractor-weights DIR, "
                "or --train-domain-encoder to train one on the real data)"
            )
        from medbalance.models.tasknets import load_task_model

        path = Path(weights)
        if not path.exists():
            raise ExtractorUnavailable("task-model folder not found", path=path)
        self.model, meta = load_task_model(path)
        self.model.eval()
        if not hasattr(self.model, "features"):
            raise CheckpointError("task model has no `features` (penultimate layer): not a classifier", path=path)
        self.input_shape = tuple(int(v) for v in (meta.get("spatial_shape") or ()))
        self.in_channels = meta.get("in_channels")
        from medbalance.utils.io import sha256_file

        wfile = path / "model.safetensors" if path.is_dir() else path
        digest = sha256_file(wfile)[:16] if wfile.is_file() else str(path.resolve())
        self.key = f"domain-{digest}"
        self.preprocessing = f"resize-{self.input_shape}" if self.input_shape else "as-is"
        self.batch_size = batch_size

    def encode_batch(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels is not None and x.shape[1] != self.in_channels:
            raise ConfigError(f"domain encoder takes {self.in_channels}-channel images, got {x.shape[1]} channels")
        if self.input_shape and tuple(x.shape[-2:]) != self.input_shape:
            x = F.interpolate(x, size=self.input_shape, mode="bilinear", align_corners=False, antialias=True)
        return self.model.features(x)


EXTRACTORS.add("domain", DomainExtractor, help="penultimate layer of a medbalance classifier trained on the real data")


# ============================================================================ user extractors


class TorchScriptExtractor(Extractor):
    name = "torchscript"

    def __init__(self, path: str | Path, batch_size: int = 64, **_: Any):
        p = Path(path)
        if not p.is_file():
            raise ExtractorUnavailable("TorchScript extractor file not found", path=p)
        try:
            self.model = torch.jit.load(str(p), map_location="cpu").eval()
        except Exception as e:
            raise CheckpointError(f"cannot load TorchScript module ({type(e).__name__})", path=p) from None
        from medbalance.utils.io import sha256_file

        self.key = f"torchscript-{sha256_file(p)[:16]}"
        self.preprocessing = "range[-1,1]"
        self.batch_size = batch_size

    def encode_batch(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class CallableExtractor(Extractor):
    def __init__(self, name: str, fn: Callable[[torch.Tensor], Any], batch_size: int = 64):
        self.name = name
        self.fn = fn
        self.key = f"callable-{name}"
        self.preprocessing = "range[-1,1]"
        self.batch_size = batch_size

    def encode_batch(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fn(x)
        return y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y, dtype=np.float32))


def register_extractor(name: str, fn: Callable[[torch.Tensor], Any], help: str = "", batch_size: int = 64) -> None:
    """Register a Python callable ``images (N,C,H,W) in [-1,1] -> features (N, D)`` under ``name``.

    Cached features are keyed by the name: give a new name when the function changes.
    """
    EXTRACTORS.add(name, lambda **_: CallableExtractor(name, fn, batch_size=batch_size), help=help or f"user callable {name}")


def get_extractor(name: str, **options: Any) -> Extractor:
    """Build an extractor by name (``torchscript:PATH`` included). Options: ``weights``, ``size``, ..."""
    if name.startswith("torchscript:"):
        return TorchScriptExtractor(name.split(":", 1)[1], **options)
    factory = EXTRACTORS.get(name)
    return factory(**{k: v for k, v in options.items() if v is not None})


def extractor_status() -> dict[str, str]:
    """``{name: "available" | "unavailable: reason"}`` for every registered extractor with default options."""
    out: dict[str, str] = {}
    for name in EXTRACTORS.names():
        try:
            get_extractor(name)
            out[name] = "available"
        except ConfigError as e:
            out[name] = f"unavailable: {e}"
    return out
