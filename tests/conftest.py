"""Shared test fixtures. Real data under ../shared/datasets is optional: tests that need it skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MEDBALANCE_QUIET", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

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
