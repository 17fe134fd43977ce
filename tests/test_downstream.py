"""Downstream experiments: arm compositions, leakage guard, metrics, an end-to-end run on tiny data."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medbalance.data.dataset import ImageDataset
from medbalance.errors import ConfigError, DataError
from medbalance.utils.io import ids_digest
from medbalance.experiments.downstream import (
    DownstreamConfig,
    SyntheticSource,
    arm_training_set,
    leakage_guard,
    make_split,
    run_downstream,
)


def _data(n_per=(40, 12, 8), size=16, seed=0):
    """Separable toy classes: class k has a bright square at position k."""
    rng = np.random.default_rng(seed)
    imgs, labels, masks = [], [], []
    for k, n in enumerate(n_per):
        for _ in range(n):
            x = rng.normal(-0.5, 0.1, (1, size, size))
            m = np.zeros((size, size), np.int64)
            y0 = 2 + 4 * k
            x[0, y0 : y0 + 4, 4:8] = 0.8
            m[y0 : y0 + 4, 4:8] = 1
            imgs.append(x)
            labels.append(k)
            masks.append(m)
    n = len(labels)
    return ImageDataset(
        images=torch.tensor(np.stack(imgs), dtype=torch.float32), labels=torch.tensor(labels),
        class_names=["a", "b", "c"], ids=[f"x{i:03d}" for i in range(n)], masks=torch.tensor(np.stack(masks)),
        mask_values=[0, 1], groups=[f"p{i}" for i in range(n)],
    )


def _synthetic_like(ds: ImageDataset, per_class: int) -> ImageDataset:
    parts = [ds.subset(np.nonzero(ds.labels.numpy() == k)[0][:1].repeat(per_class)) for k in range(ds.num_classes)]
    syn = parts[0].concat(parts[1]).concat(parts[2])
    syn.ids = [f"syn{i}" for i in range(len(syn))]
    syn.synthetic = torch.ones(len(syn), dtype=torch.bool)
    return syn


def test_arm_training_set_compositions():
    ds = _data()
    cfg = DownstreamConfig(arms=["real", "oversample", "class-weight", "augment", "real+synthetic",
                                 "real+synthetic@0.5", "synthetic-only"], seeds=[0])
    split = make_split(ds, cfg)
    counts = split.train.class_counts()
    source = SyntheticSource(dataset=_synthetic_like(ds, 50))
    real, o = arm_training_set("real", split, cfg, 0, source)
    assert real.class_counts() == counts and o == {}
    over, _ = arm_training_set("oversample", split, cfg, 0, source)
    m = max(counts.values())
    assert over.class_counts() == {c: m for c in counts} and int(over.is_synthetic().sum()) == 0
    assert set(over.ids) >= set(split.train.ids)
    assert arm_training_set("class-weight", split, cfg, 0, source)[1] == {"class_weights": True}
    assert arm_training_set("augment", split, cfg, 0, source)[1] == {"augment": True}
    bal, _ = arm_training_set("real+synthetic", split, cfg, 0, source)
    assert bal.class_counts() == {c: m for c in counts}
    assert int(bal.is_synthetic().sum()) == sum(m - v for v in counts.values())
    half, _ = arm_training_set("real+synthetic@0.5", split, cfg, 0, source)
    assert half.class_counts() == {c: v + int(round(0.5 * v)) for c, v in counts.items()}
    syn_only, _ = arm_training_set("synthetic-only", split, cfg, 0, source)
    assert bool(syn_only.is_synthetic().all()) and syn_only.class_counts() == {c: m for c in counts}
    with pytest.raises(ConfigError, match="needs synthetic data"):
        arm_training_set("real+synthetic", split, cfg, 0, None)


def test_subsample_only_touches_training_split():
    ds = _data()
    full = make_split(ds, DownstreamConfig(seeds=[0]))
    sub = make_split(ds, DownstreamConfig(seeds=[0], subsample={"a": 0.25}))
    assert sub.train.class_counts()["a"] == max(1, round(0.25 * full.train.class_counts()["a"])) or \
        abs(sub.train.class_counts()["a"] - 0.25 * full.train.class_counts()["a"]) <= 1
    assert sub.test.ids == full.test.ids and sub.val.ids == full.val.ids
    with pytest.raises(ConfigError, match="unknown class"):
        make_split(ds, DownstreamConfig(subsample={"zzz": 0.5}))


def test_leakage_guard():
    ds = _data()
    split = make_split(ds, DownstreamConfig(seeds=[0]))
    ok = SimpleNamespace(train_ids=list(split.train.ids))
    assert leakage_guard(ok, split) == []
    leaky = SimpleNamespace(train_ids=list(split.train.ids) + [split.test.ids[0]])
    with pytest.raises(DataError, match="leakage: the generator was trained on 1 of the"):
        leakage_guard(leaky, split)
    val = SimpleNamespace(train_ids=list(split.train.ids) + [split.val.ids[0]])
    assert "validation" in leakage_guard(val, split)[0]
    with pytest.raises(DataError, match="leakage"):
        leakage_guard(val, split, allow_val_overlap=False)
    with pytest.raises(DataError, match="records no training ids"):
        leakage_guard(SimpleNamespace(train_ids=[]), split)


def test_run_downstream_end_to_end(tmp_path):
    ds = _data()
    cfg = DownstreamConfig(arms=["real", "oversample", "real+synthetic"], seeds=[0, 1], epochs=2, batch_size=16,
                           device="cpu")
    rep = run_downstream(ds, cfg, tmp_path, SyntheticSource(dataset=_synthetic_like(ds, 40),
                                                       provenance={"train_ids": ["generator-only-id"],
                                                                   "train_ids_sha256": ids_digest(["generator-only-id"])}))
    assert (tmp_path / "downstream.json").is_file()
    assert set(rep["results"]) == {"real", "oversample", "real+synthetic"}
    assert all(len(v) == 2 for v in rep["results"].values())
    s = rep["summary"]["real+synthetic"]["recall/c"]
    vals = [r["per_class"]["c"]["recall"] for r in rep["results"]["real+synthetic"]]
    assert s["mean"] == pytest.approx(np.mean(vals)) and "p" in s["vs_real_seeds"]
    assert rep["arm_training_sets"]["real+synthetic"]["synthetic"] > 0
