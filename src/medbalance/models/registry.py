"""The model registry: name -> :class:`ModelSpec` (method class, params schema, presets).

Presets: ``paper`` follows the publication; ``cpu`` is a small variant that trains in minutes
on a laptop CPU. ``build_method(cfg, info)`` validates params against the spec's pydantic
class (unknown keys are errors) after merging preset <- user params.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medbalance.config import BaseConfig
from medbalance.data.dataset import DataInfo
from medbalance.errors import ConfigError
from medbalance.models.base import GANMethod
from medbalance.registry import Registry


@dataclass
class ModelSpec:
    method: type[GANMethod]
    params: type[BaseConfig]
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = ""
    paper: str = ""
    # preset -> training batch size used when the run config leaves ``train.batch_size`` unset
    batch_sizes: dict[str, int] = field(default_factory=dict)
    # preset -> data order ('uniform' | 'class_balanced') used when the run config leaves ``train.sampling`` unset
    samplings: dict[str, str] = field(default_factory=dict)
    # preset -> EMA decay of G used when the run config leaves ``train.ema_decay`` unset (none: no EMA)
    ema_decays: dict[str, float] = field(default_factory=dict)
    # preset -> training length, {"epochs": n} or {"steps": n}, used when the run config sets neither
    # ``train.steps`` nor ``train.epochs`` (none: DEFAULT_STEPS steps)
    train_lengths: dict[str, dict[str, int]] = field(default_factory=dict)
    # preset -> random horizontal flip of image and label map (``train.flip``) when the run config leaves it unset
    flips: dict[str, bool] = field(default_factory=dict)


DEFAULT_BATCH_SIZE = 32
DEFAULT_STEPS = 2000


MODELS: Registry[ModelSpec] = Registry("model")

_LOADED = False


def ensure_registered() -> None:
    """Import every model module (each registers itself)."""
    global _LOADED
    if _LOADED:
        return
    import importlib

    for mod in ("dcgan", "acgan", "lapgan", "pix2pix", "spade", "redgan", "diffusion"):
        importlib.import_module(f"medbalance.models.{mod}")
    _LOADED = True


def resolve_params(name: str, preset: str, params: dict[str, Any]) -> BaseConfig:
    ensure_registered()
    spec = MODELS.get(name)
    if preset not in spec.presets:
        raise ConfigError(f"unknown preset {preset!r} for model {name!r}; allowed: {', '.join(sorted(spec.presets))}")
    merged = {**spec.presets[preset], **params}
    return spec.params.from_dict(merged, source=f"model {name} (preset {preset})")


def _preset_value(name: str, preset: str, table: str, default: Any) -> Any:
    """``spec.<table>[preset]`` of a registered model, else ``default`` (also for unknown models/presets:
    building the model reports those with a clear error)."""
    ensure_registered()
    if name not in MODELS:
        return default
    return getattr(MODELS.get(name), table).get(preset, default)


def preset_batch_size(name: str, preset: str) -> int:
    """The batch size a model's preset is tuned for (``DEFAULT_BATCH_SIZE`` when the spec names none)."""
    return _preset_value(name, preset, "batch_sizes", DEFAULT_BATCH_SIZE)


def preset_sampling(name: str, preset: str) -> str:
    """The data order a model's preset is tuned for ('uniform' when the spec names none)."""
    return _preset_value(name, preset, "samplings", "uniform")


def preset_ema_decay(name: str, preset: str) -> float | None:
    """The EMA decay a model's preset is tuned for (None = no EMA when the spec names none)."""
    return _preset_value(name, preset, "ema_decays", None)


def preset_train_length(name: str, preset: str) -> dict[str, int]:
    """The training length a model's preset names: ``{"epochs": n}`` or ``{"steps": n}``
    (``{"steps": DEFAULT_STEPS}`` when the spec names none)."""
    length = dict(_preset_value(name, preset, "train_lengths", {"steps": DEFAULT_STEPS}))
    if len(length) != 1 or next(iter(length)) not in ("steps", "epochs"):
        raise ConfigError(f"model {name!r} preset {preset!r}: train_lengths must be {{'steps': n}} or {{'epochs': n}}")
    return length


def describe_train_length(name: str, preset: str) -> str:
    """``"200 epochs"`` / ``"2000 steps"``: the preset's training length in words (``--list-models``)."""
    ((unit, n),) = preset_train_length(name, preset).items()
    return f"{n} {unit}"


def preset_flip(name: str, preset: str) -> bool:
    """Whether a model's preset trains with random horizontal flips (False when the spec names none)."""
    return bool(_preset_value(name, preset, "flips", False))


def build_method(name: str, preset: str, params: dict[str, Any], info: DataInfo) -> GANMethod:
    spec = MODELS.get(name) if _LOADED else (ensure_registered() or MODELS.get(name))
    p = resolve_params(name, preset, params)
    return spec.method(p, info)
