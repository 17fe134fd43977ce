from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from medbalance.config import BaseConfig, read_yaml
from medbalance.data.config import DataConfig
from medbalance.errors import ConfigError
from medbalance.models.config import ModelConfig


class TrainConfig(BaseConfig):
    """``train:`` section of a run config."""

    steps: Optional[int] = Field(
        None,
        ge=1,
        description="training iterations (global batches); give steps or epochs, not both; both null = the model "
        "preset's training length (`medbalance train --list-models`; 2000 steps unless the preset names one)",
    )
    epochs: Optional[int] = Field(
        None,
        ge=1,
        description="training length in passes over the training set: steps = epochs * floor(n_train / batch_size) "
        "(n_train after val_fraction is held out; global batch; the last partial batch of an epoch is dropped)",
    )
    batch_size: Optional[int] = Field(
        None,
        ge=1,
        description="global batch size (split across processes); null = the model preset's "
        "(`medbalance train --list-models`; 32 unless the preset names one)",
    )
    seed: int = 0
    sampling: Optional[Literal["uniform", "class_balanced"]] = Field(
        None,
        description="data order: 'uniform' = a shuffled pass over the training set per epoch; 'class_balanced' = "
        "draws with replacement so that every class fills about the same share of each batch (rare classes are "
        "seen more often); null = the model preset's (uniform unless the preset names one; acgan cpu: class_balanced)",
    )
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    flip: Optional[bool] = Field(
        None,
        description="random horizontal (left-right) flip of each training sample, image and label map together, "
        "p = 0.5, seeded by (train.seed, step) so that a resumed run flips the same samples; null = the model "
        "preset's (on in the paper presets of pix2pix, spade and redgan; off elsewhere)",
    )
    channels_last: Optional[bool] = Field(
        None,
        description="train the networks and batches in the channels-last (NHWC) memory layout (2D data only); "
        "null = the model's choice: on for dcgan, acgan, lapgan, lapgan-joint, pix2pix and redgan (1.05-1.30x per "
        "step on the CPU, docs/performance.md), off for spade and the diffusion models (no gain); the saved "
        "config.yaml states the value used",
    )
    num_workers: Optional[int] = Field(
        None,
        ge=0,
        description="DataLoader worker processes reading training batches ahead of the step (batches are a pure "
        "function of the step, so any value gives the same run); null = chosen for the machine: 0 for an in-memory "
        "dataset on the CPU, else half the cores (1 to 4)",
    )
    ema_decay: Optional[float] = Field(
        None,
        ge=0,
        lt=1,
        description="EMA of G's weights (used for sampling); 0 = off; null = the model preset's "
        "(off unless the preset names one; diffusion models: on)",
    )
    checkpoint_every: int = Field(500, ge=1)
    keep_last: int = Field(2, ge=1)
    sample_every: int = Field(250, ge=1)
    log_every: int = Field(10, ge=1)
    val_fraction: float = Field(0.0, ge=0, lt=1, description="held out from generator training (ids recorded)")
    tensorboard: bool = True
    threads: Optional[int] = Field(
        None, ge=1, description="CPU threads for torch (null = torch's default); 1 is often faster on a busy machine"
    )
    best_metric: Optional[str] = Field(
        None,
        description="logged loss whose lowest checkpoint-interval mean marks the 'best' checkpoint; "
        "null = the generator's loss (first loss named G/loss_G/G_*), else the first loss",
    )
    sample_columns: int = Field(8, ge=1, le=64, description="images per class row in sample grids")

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> "TrainConfig":
        if self.steps is not None and self.epochs is not None:
            raise ConfigError(
                f"train.steps={self.steps} and train.epochs={self.epochs} are both set; give one of them "
                "(set the other to null)"
            )
        return self


class RunConfig(BaseConfig):
    """A whole training run: data, model, training. Saved resolved as ``config.yaml`` in the run folder."""

    out_dir: str = "runs/run"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _resolve_preset(self) -> "RunConfig":
        """Fill in what the preset decides, so that the saved config.yaml states every value used: the batch size,
        the data order, and every model parameter (preset merged under the overrides). A run folder then rebuilds the same
        networks even after a preset changes (``load_run``, ``--resume``). Unknown models are left for
        ``build_method`` to report."""
        from medbalance.models.registry import (
            MODELS,
            ensure_registered,
            preset_batch_size,
            preset_ema_decay,
            preset_flip,
            preset_sampling,
            preset_train_length,
            resolve_params,
        )

        if self.train.batch_size is None:
            self.train.batch_size = preset_batch_size(self.model.name, self.model.preset)
        if self.train.sampling is None:
            self.train.sampling = preset_sampling(self.model.name, self.model.preset)
        if self.train.steps is None and self.train.epochs is None:
            length = preset_train_length(self.model.name, self.model.preset)
            self.train.steps, self.train.epochs = length.get("steps"), length.get("epochs")
        if self.train.flip is None:
            self.train.flip = preset_flip(self.model.name, self.model.preset)
        if self.train.ema_decay is None:
            self.train.ema_decay = preset_ema_decay(self.model.name, self.model.preset)
        ensure_registered()
        if self.model.name in MODELS and self.train.channels_last is None:
            self.train.channels_last = bool(MODELS.get(self.model.name).method.channels_last)
        if self.model.name in MODELS:
            resolved = resolve_params(self.model.name, self.model.preset, dict(self.model.params))
            self.model.params = resolved.model_dump(mode="json")
        return self


# Keys added after run folders were already being written, with the value that a saved config.yaml without the key
# meant (the behaviour of the code that wrote it). Filled in when a saved run is read back (``--resume``,
# ``load_run``), so that neither silently takes a newer preset's value. A ``model.params.<key>`` is filled in only for
# models whose parameters have that key.
KEYS_ADDED_LATER: dict[str, Any] = {
    "train.sampling": "uniform",  # uniform batches
    "model.params.mismatch": False,  # no wrong-class pairs in D (dcgan, lapgan, lapgan-joint)
    "train.epochs": None,  # the length was train.steps (always written then)
    "train.flip": False,  # no flip augmentation
}


# Keys that saved run folders may hold but that no longer exist (they had no effect when they were written): dropped
# when a saved run is read back, so that old run folders still load. A new config that sets one is refused as unknown.
KEYS_REMOVED: tuple[str, ...] = ()  # (train.num_workers was here while it had no effect; it now has one)


def drop_removed_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` without the keys of :data:`KEYS_REMOVED` (a copy; ``raw`` is not changed)."""
    out = copy.deepcopy(raw)
    for key in KEYS_REMOVED:
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def fill_keys_added_later(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` (a saved run config as read from YAML) with every key of :data:`KEYS_ADDED_LATER` it lacks set to
    the value it meant when it was written (a new dict; ``raw`` is not changed)."""
    from medbalance.models.registry import MODELS, ensure_registered

    ensure_registered()
    name = (raw.get("model") or {}).get("name")
    fields = MODELS.get(name).params.model_fields if name in MODELS else {}
    out = dict(raw)
    for key, value in KEYS_ADDED_LATER.items():
        *parents, leaf = key.split(".")
        if parents == ["model", "params"] and leaf not in fields:
            continue
        node = out
        for part in parents:  # copy the path down to the key, so that raw is not changed
            node[part] = dict(node.get(part) or {})
            node = node[part]
        node.setdefault(leaf, value)
    return out


def read_saved_run_config(path: str | Path) -> RunConfig:
    """The ``config.yaml`` of a run folder, with the keys it predates filled in as they were meant and the keys
    removed since then (:data:`KEYS_REMOVED`) dropped."""
    return RunConfig.from_dict(fill_keys_added_later(drop_removed_keys(read_yaml(path))), source=path)
