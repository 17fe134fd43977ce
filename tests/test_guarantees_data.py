"""Guarantees on bad input (docs/guarantees.md): the per-image pixel limit, a target size no outlier sets, and
groups of identical images never on both sides of a split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medbalance.data.dataset import ImageDataset
from medbalance.data.imageio import DEFAULT_MAX_IMAGE_PIXELS, read_image
from medbalance.data.splits import duplicate_groups, stratified_split
from medbalance.data.transforms import choose_target_size
from medbalance.errors import DataError


def test_pixel_limit_refuses_before_decoding(tmp_path, monkeypatch):
    big = tmp_path / "big.png"
    Image.new("1", (7000, 7000)).save(big)  # 49 M pixels, a few KB on disk, under Pillow's own limit
    assert big.stat().st_size < 200_000 and 7000 * 7000 > DEFAULT_MAX_IMAGE_PIXELS
    with pytest.raises(DataError, match=f"over the per-image limit of {DEFAULT_MAX_IMAGE_PIXELS:,} pixels"):
        read_image(big)
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(small)
    assert read_image(small).array.shape[:2] == (40, 40)
    monkeypatch.setenv("MEDBALANCE_MAX_IMAGE_PIXELS", "1000")  # configurable
    with pytest.raises(DataError, match="40 x 40 = 1,600 pixels, over the per-image limit of 1,000"):
        read_image(small)


def test_target_size_is_never_an_outliers():
    warnings: list[str] = []
    # every size once: the old rule (ties -> larger area) chose the 12000 x 12000 outlier
    t = choose_target_size([(8, 8), (10, 10), (12, 12), (12000, 12000)], None, warnings)
    assert t == (10, 10)
    assert "never an outlier's" in warnings[0] and "largest image 12000x12000" in warnings[0]
    assert choose_target_size([(8, 8), (8, 8), (64, 64)], None, []) == (8, 8)
    assert choose_target_size([(64, 64), (64, 64), (8, 8)], None, []) == (64, 64)  # the common size still wins


def _dup_dataset(seed: int, n_groups: int = 12, copies: int = 3, n_single: int = 40) -> ImageDataset:
    rng = np.random.default_rng(seed)
    imgs, labels, ids = [], [], []
    for g in range(n_groups):
        x = rng.normal(size=(1, 8, 8))
        for c in range(copies):
            imgs.append(x)
            labels.append(g % 2)
            ids.append(f"g{g}_{c}")
    for i in range(n_single):
        imgs.append(rng.normal(size=(1, 8, 8)))
        labels.append(i % 2)
        ids.append(f"s{i}")
    return ImageDataset(images=torch.tensor(np.stack(imgs), dtype=torch.float32), labels=torch.tensor(labels),
                        class_names=["a", "b"], ids=ids)


def _straddling(ds: ImageDataset, sp: dict) -> int:
    side = np.empty(len(ds), dtype=object)
    for k, v in sp.items():
        side[v] = k
    return sum(len({side[i] for i in g}) > 1 for g in duplicate_groups(ds)["exact"])


def test_identical_images_never_on_both_sides_of_a_split():
    ungrouped = 0
    for seed in range(8):
        ds = _dup_dataset(seed)
        stats: dict = {}
        sp = stratified_split(ds, (0.6, 0.2, 0.2), seed=seed, group_duplicates=True, stats=stats)
        assert _straddling(ds, sp) == 0
        assert stats == {"groups": 12, "images": 36, "near_duplicate_groups": 0}
        ungrouped += _straddling(ds, stratified_split(ds, (0.6, 0.2, 0.2), seed=seed))
    assert ungrouped > 0  # without grouping, copies do straddle: the check above can fail


def test_downstream_split_groups_duplicates_and_conflicting_labels_are_bad_input():
    from medbalance.experiments.downstream import DownstreamConfig, make_split

    ds = _dup_dataset(0)
    split = make_split(ds, DownstreamConfig(fractions=(0.6, 0.2, 0.2)))
    assert split.duplicates["groups"] == 12
    sides = [{i.split("_")[0] for i in getattr(split, k).ids if i.startswith("g")} for k in ("train", "val", "test")]
    assert not (sides[0] & sides[1]) and not (sides[0] & sides[2]) and not (sides[1] & sides[2])
    bad = _dup_dataset(1)
    bad.labels[1] = 1 - bad.labels[0]  # a copy of g0 with the other label
    with pytest.raises(DataError, match="identical images with conflicting labels"):
        make_split(bad, DownstreamConfig(fractions=(0.6, 0.2, 0.2)))


def test_near_duplicates_by_perceptual_hash_are_grouped_on_request():
    ds = _dup_dataset(2, n_groups=0, n_single=30)
    ds.images[1] = ds.images[0] + 0.001  # not byte-identical, perceptually the same
    assert duplicate_groups(ds)["exact"] == []
    assert [0, 1] in duplicate_groups(ds, near_duplicates=True)["near"]
    sp = stratified_split(ds, (0.6, 0.2, 0.2), seed=0, group_duplicates=True, near_duplicates=True)
    assert sum(0 in v for v in sp.values()) == 1 and [k for k, v in sp.items() if 0 in v] == [
        k for k, v in sp.items() if 1 in v]


def test_train_task_validation_split_groups_identical_images():
    from medbalance.data.splits import split_train_val

    groups_in_val = 0
    for seed in range(8):
        ds = _dup_dataset(seed, n_groups=30)  # more copies than the training side can hold
        train, val = split_train_val(ds, 0.3, seed)
        tr = {i.split("_")[0] for i in train.ids if i.startswith("g")}
        va = {i.split("_")[0] for i in val.ids if i.startswith("g")}
        assert not (tr & va)
        groups_in_val += len(va)
    assert groups_in_val > 0  # copies did land in validation: the disjointness check above can fail


def test_generator_heldout_split_keeps_identical_images_together():
    from medbalance.data.splits import split_train_heldout

    held_groups = 0
    for seed in range(6):
        ds = _dup_dataset(seed, n_groups=20)
        tr, held, kind = split_train_heldout(ds, 0.3, seed)
        tr_g = {ds.ids[i].split("_")[0] for i in tr if ds.ids[i].startswith("g")}
        held_g = {ds.ids[i].split("_")[0] for i in held if ds.ids[i].startswith("g")}
        assert not (tr_g & held_g) and "identical" in kind
        held_groups += len(held_g)
    assert held_groups > 0
    no_copies = _dup_dataset(0, n_groups=0)  # a dataset without copies keeps the split it always had
    assert split_train_heldout(no_copies, 0.3, 0)[2] == "stratified"
