"""Stratified / group-disjoint splits and minority subsampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medbalance.data import ImageDataset
from medbalance.data.splits import allocate, split_counts, split_indices, stratified_split, subsample_class
from medbalance.errors import ConfigError, DataError


def _ds(labels, groups=None):
    n = len(labels)
    return ImageDataset(
        images=torch.zeros(n, 1, 2, 2),
        labels=torch.as_tensor(labels),
        class_names=[f"c{i}" for i in range(max(labels) + 1)],
        ids=[str(i) for i in range(n)],
        groups=groups,
    )


def _check_partition(sp, n):
    allidx = np.concatenate([sp["train"], sp["val"], sp["test"]])
    assert sorted(allidx.tolist()) == list(range(n))  # disjoint and complete


def test_stratified_no_groups():
    labels = [0] * 700 + [1] * 200 + [2] * 23
    ds = _ds(labels)
    sp = stratified_split(ds, (0.7, 0.15, 0.15), seed=0)
    _check_partition(sp, len(labels))
    counts = split_counts(sp, ds.labels, ds.class_names)
    # independent expectation: largest-remainder rounding of f * n_c
    assert counts["train"] == {"c0": 490, "c1": 140, "c2": 16}
    assert counts["val"]["c0"] == 105 and counts["test"]["c0"] == 105
    assert counts["val"]["c1"] == 30 and counts["test"]["c1"] == 30
    assert counts["val"]["c2"] + counts["test"]["c2"] == 7 and min(counts["val"]["c2"], counts["test"]["c2"]) == 3
    again = stratified_split(ds, (0.7, 0.15, 0.15), seed=0)
    assert all(np.array_equal(sp[k], again[k]) for k in sp)
    other = stratified_split(ds, (0.7, 0.15, 0.15), seed=1)
    assert not np.array_equal(sp["test"], other["test"])


def test_allocate():
    assert allocate(10, np.array([0.7, 0.15, 0.15])).tolist() == [7, 2, 1]
    assert allocate(3, np.array([0.8, 0.1, 0.1])).tolist() == [1, 1, 1]
    assert allocate(5, np.array([0.8, 0.2, 0.0])).tolist() == [4, 1, 0]


def test_group_split_disjoint_and_stratified():
    rng = np.random.default_rng(0)
    labels, groups = [], []
    for p in range(120):  # patients with 1..12 slices; class mix per patient
        n = int(rng.integers(1, 13))
        major = 0 if p < 80 else 1
        for _ in range(n):
            labels.append(major if rng.random() < 0.85 else 2)
            groups.append(f"p{p:03d}")
    ds = _ds(labels, groups)
    sp = stratified_split(ds, (0.7, 0.15, 0.15), seed=3)
    _check_partition(sp, len(labels))
    g = np.array(groups)
    sides = [set(g[sp[k]]) for k in ("train", "val", "test")]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    y = np.array(labels)
    for c in range(3):
        tot = (y == c).sum()
        for k, f in zip(("train", "val", "test"), (0.7, 0.15, 0.15)):
            frac = (y[sp[k]] == c).sum() / tot
            assert abs(frac - f) < 0.03, (c, k, frac)
    again = stratified_split(ds, (0.7, 0.15, 0.15), seed=3)
    assert all(np.array_equal(sp[k], again[k]) for k in sp)
    other = stratified_split(ds, (0.7, 0.15, 0.15), seed=4)
    assert not np.array_equal(sp["test"], other["test"])


def test_split_errors():
    with pytest.raises(DataError, match=r"class 'c1' has only 2 sample\(s\); cannot split it into train, val, test"):
        stratified_split(_ds([0] * 10 + [1] * 2))
    # two classes-1 samples in one patient: cannot reach three sides
    labels = [0] * 30 + [1] * 6
    groups = [f"a{i}" for i in range(30)] + ["x", "x", "y", "y", "y", "y"]
    with pytest.raises(DataError, match=r"class 'c1' occurs in only 2 group\(s\) \(patients\)"):
        stratified_split(_ds(labels, groups))
    # but a train/test split only needs two
    sp = split_indices(labels, groups, fractions=(0.5, 0.0, 0.5))
    assert sp["val"].size == 0 and {groups[i] for i in sp["train"]}.isdisjoint({groups[i] for i in sp["test"]})
    with pytest.raises(ConfigError, match="fractions must sum to 1"):
        stratified_split(_ds([0] * 10), (0.5, 0.2, 0.2))
    with pytest.raises(ConfigError, match="three numbers"):
        stratified_split(_ds([0] * 10), (0.5, 0.5))


def test_subsample_class():
    labels = torch.tensor([0] * 50 + [1] * 40)
    idx = np.arange(10, 90)  # a training split: 40 of class 0, 40 of class 1
    sub = subsample_class(idx, labels, class_index=1, fraction=0.1, seed=0)
    y = labels.numpy()[sub]
    assert (y == 1).sum() == 4 and (y == 0).sum() == 40
    assert set(sub.tolist()) <= set(idx.tolist()) and np.all(np.diff(sub) > 0)
    assert np.array_equal(sub, subsample_class(idx, labels, 1, 0.1, seed=0))
    assert not np.array_equal(sub, subsample_class(idx, labels, 1, 0.1, seed=5))
    assert (labels.numpy()[subsample_class(idx, labels, 1, 0.01)] == 1).sum() == 1  # at least one kept
    with pytest.raises(ConfigError, match=r"fraction must be in \(0, 1\]"):
        subsample_class(idx, labels, 1, 0.0)
    with pytest.raises(DataError, match="class index 2 has no samples"):
        subsample_class(idx, labels, 2, 0.5)
