from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, model_validator

from medbalance.config import BaseConfig, read_yaml
from medbalance.data.config import DataConfig
from medbalance.models.config import ModelConfig


class TrainConfig(BaseConfig):
    """``train:`` section of a run config."""

    steps: int = Field(2000, ge=1, description="training iterations")
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
    channels_last: bool = False
    num_workers: int = Field(0, ge=0)
    ema_decay: Optional[float] = Field(None, gt=0, lt=1, description="EMA of G's weights (used for sampling)")
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
            preset_sampling,
            resolve_params,
        )

        if self.train.batch_size is None:
            self.train.batch_size = preset_batch_size(self.model.name, self.model.preset)
        if self.train.sampling is None:
            self.train.sampling = preset_sampling(self.model.name, self.model.preset)
        ensure_registered()
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
}


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
    """The ``config.yaml`` of a run folder, with the keys it predates filled in as they were meant."""
    return RunConfig.from_dict(fill_keys_added_later(read_yaml(path)), source=path)
