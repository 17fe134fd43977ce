from __future__ import annotations

from typing import Any

from pydantic import Field

from medbalance.config import BaseConfig


class ModelConfig(BaseConfig):
    """``model:`` section: which method, which preset, and per-method parameter overrides."""

    name: str = Field("dcgan", description="registered model name (see `medbalance train --list-models`)")
    preset: str = Field("cpu", description="'paper' (as published) or 'cpu' (small, trains in minutes)")
    params: dict[str, Any] = Field(default_factory=dict, description="overrides of the preset's parameters")
