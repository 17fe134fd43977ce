"""Shared test fixtures. Real data under ../shared/datasets is optional: tests that need it skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MEDBALANCE_QUIET", "1")
torch.set_num_threads(1)  # pytest -n 2 runs two workers; small convs are slower with 2 threads each

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDBALANCE_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


def shared_path(*parts: str) -> Path:
    """Path inside ../shared/datasets, or skip the test cleanly when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared dataset not available: {p}")
    return p


@pytest.fixture
def shared():
    return shared_path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A SPADE run trained for a few steps on a tiny phantom (32 px), with held-out ids recorded."""
    from medbalance.training.config import RunConfig
    from medbalance.training.engine import train

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    cfg = RunConfig.from_dict(
        {
            "out_dir": str(out),
            "data": {"path": "phantom", "phantom": {"n": 72, "size": 32, "seed": 1, "imbalance": [3, 2, 1]}},
            "model": {"name": "spade", "preset": "cpu"},
            "train": {"steps": 4, "batch_size": 8, "checkpoint_every": 4, "sample_every": 4, "val_fraction": 0.25,
                      "tensorboard": False},
        }
    )
    train(cfg)
    return out
