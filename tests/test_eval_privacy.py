"""Privacy: DCR share, memorisation, duplicates, membership inference, montage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medbalance.evaluation.privacy import (
    dcr_analysis,
    distance_attack_auc,
    privacy_metrics,
    score_attack_auc,
)


def _images(n: int, seed: int, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size // 4, size // 4, generator=g)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear")
    return (x * 2 - 1 + 0.05 * torch.randn(n, 1, size, size, generator=g)).clamp(-1, 1)


def _auc_pairs(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney AUC by a plain double loop (independent of sklearn)."""
    s = 0.0
    for p in pos:
        for q in neg:
            s += 1.0 if p > q else 0.5 if p == q else 0.0
    return s / (len(pos) * len(neg))


def test_heldout_like_synthetic_is_not_flagged():
    train, holdout, other = _images(300, 0), _images(300, 1), _images(200, 2)
    res = dcr_analysis(train=train, holdout=holdout, synthetic=other)
    assert 0.38 <= res["dcr_share"] <= 0.62
    assert res["memorization_rate"] <= 0.04  # ~1 % expected by construction
    auc = distance_attack_auc(train=train, holdout=holdout, synthetic=other)
    assert 0.4 <= auc <= 0.6


def test_planted_copies_are_flagged(tmp_path):
    train, holdout = _images(200, 3), _images(200, 4)
    fresh = _images(70, 5)
    copies = train[:30].clone()
    copies[:10] += 0.5 / 255  # within a quantisation step: still an exact duplicate
    syn = torch.cat([fresh, copies])
    ids = [f"s{i}" for i in range(100)]
    res = privacy_metrics(
        train=train, holdout=holdout, synthetic=syn,
        train_features=train.flatten(1)[:, ::4].numpy(), holdout_features=holdout.flatten(1)[:, ::4].numpy(),
        synthetic_features=syn.flatten(1)[:, ::4].numpy(),
        montage_path=tmp_path / "pairs.png", synthetic_ids=ids,
    )
    px = res["pixels"]
    assert px["exact_duplicates"] == 30
    assert px["memorization_rate"] >= 0.3
    assert px["dcr_share"] >= 0.3 + 0.5 * 0.7 - 0.12
    assert res["features"]["memorization_rate"] >= 0.3
    img = Image.open(tmp_path / "pairs.png")
    assert img.size[0] > 100 and img.size[1] > 100
    assert not list(tmp_path.glob("*.tmp"))


def test_membership_inference_auc_against_manual_auc():
    train, holdout = _images(60, 6), _images(60, 7)
    syn = train.clone()  # a generator that memorised everything
    auc = distance_attack_auc(train=train, holdout=holdout, synthetic=syn)
    assert auc == pytest.approx(1.0)
    syn2 = _images(80, 8)
    auc2 = distance_attack_auc(train=train, holdout=holdout, synthetic=syn2)
    d = lambda a: torch.cdist(a.flatten(1).double(), syn2.flatten(1).double()).min(1).values.numpy()  # noqa: E731
    assert auc2 == pytest.approx(_auc_pairs(-d(train), -d(holdout)), abs=1e-12)
    # a score-function attack (e.g. a discriminator): here brightness, training images are brighter
    score = lambda x: x.mean(dim=(1, 2, 3))  # noqa: E731
    bright = (train + 0.5).clamp(-1, 1)
    assert score_attack_auc(score, train=bright, holdout=holdout) > 0.95
    ref = _auc_pairs(score(train).numpy(), score(holdout).numpy())
    assert score_attack_auc(score, train=train, holdout=holdout) == pytest.approx(ref, abs=1e-12)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="one shape"):
        privacy_metrics(train=_images(5, 0), holdout=_images(5, 1), synthetic=_images(5, 2, size=32))
