"""Helpers shared by the image and feature experiments and the CLI: class targets, oversampling, synthetic
counts, the leakage check, the "mean [95 % CI]" table and the manifest reader behind the synthetic flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from medbalance.data.dataset import ImageDataset
from medbalance.errors import ConfigError, DataError
from medbalance.experiments.downstream import (
    DownstreamConfig,
    Split,
    arm_training_set,
    balanced_targets,
    check_arms,
    check_seen_ids,
    class_targets,
    make_split,
    oversample_indices,
    parse_arm,
    synthetic_counts,
)
from medbalance.experiments.feature_downstream import arm_feature_set, feature_arm
from medbalance.utils.tables import ci_table, fmt_ci


def _ds(counts=(30, 9, 6), size=8) -> ImageDataset:
    labels = torch.cat([torch.full((n,), k, dtype=torch.long) for k, n in enumerate(counts)])
    n = len(labels)
    imgs = torch.linspace(-1, 1, n).view(n, 1, 1, 1).expand(n, 1, size, size).contiguous()
    return ImageDataset(images=imgs, labels=labels, class_names=["a", "b", "c"], ids=[f"s{i}" for i in range(n)],
                        groups=[f"p{i}" for i in range(n)])


# ------------------------------------------------------------------------------------------- targets, oversampling
def test_class_targets_is_balanced_targets_on_labels():
    ds = _ds()
    assert class_targets(ds.labels.numpy(), ds.class_names, "auto") == balanced_targets(ds, "auto") \
        == {"a": 30, "b": 30, "c": 30}
    assert class_targets(ds.labels, ds.class_names, {"c": 10}) == {"a": 30, "b": 9, "c": 10}
    # a class with no sample stays at 0 and is listed
    assert class_targets(np.array([0, 0, 1]), ["a", "b", "z"], "auto") == {"a": 2, "b": 2, "z": 0}


def test_oversample_indices_reach_targets_within_class_and_are_seeded():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 1)
    extra = oversample_indices(labels, {0: 10, 1: 8, 2: 4}, seed=5)
    assert np.bincount(labels[extra], minlength=3).tolist() == [0, 5, 3]
    assert set(extra[labels[extra] == 1]) <= {10, 11, 12} and set(extra[labels[extra] == 2]) == {13}
    np.testing.assert_array_equal(extra, oversample_indices(labels, {0: 10, 1: 8, 2: 4}, seed=5))
    assert not np.array_equal(extra, oversample_indices(labels, {0: 10, 1: 8, 2: 4}, seed=6))
    # nothing to add, or no sample to duplicate
    assert oversample_indices(labels, {0: 5, 1: 3}, seed=0).shape == (0,)
    assert oversample_indices(np.array([0, 0]), {1: 4}, seed=0).shape == (0,)


def test_image_and_feature_oversampling_draw_the_same_samples():
    ds = _ds()
    targets = balanced_targets(ds, "auto")
    cfg = DownstreamConfig(arms=["real", "oversample"])
    over, opts = arm_training_set("oversample", Split(ds, ds, ds), cfg, 3, None)
    assert opts == {}
    extra = oversample_indices(ds.labels.numpy(), {k: targets[c] for k, c in enumerate(ds.class_names)}, seed=3)
    assert len(over) == len(ds) + len(extra) and over.class_counts() == targets
    assert over.ids[len(ds):] == [f"s{i}#dup{j}" for j, i in enumerate(extra)]
    x = torch.randn(len(ds), 2, 3, 3)
    xo, yo, so, _, _ = arm_feature_set("oversample", x, ds.labels, ds.class_names, "auto", 3)
    assert torch.equal(xo[len(ds):], x[torch.from_numpy(extra)]) and not so.any()
    assert torch.equal(yo, over.labels)


def test_synthetic_counts_follow_the_arm_grammar():
    counts, targets = {"a": 30, "b": 9, "c": 6}, {"a": 30, "b": 30, "c": 30}
    assert synthetic_counts(parse_arm("real+synthetic"), counts, targets) == {"a": 0, "b": 21, "c": 24}
    assert synthetic_counts(parse_arm("real+synthetic@0.5"), counts, targets) == {"a": 15, "b": 4, "c": 3}
    assert synthetic_counts(parse_arm("real+synthetic@2x"), counts, targets) == {"a": 0, "b": 18, "c": 12}
    assert synthetic_counts(parse_arm("synthetic-only"), counts, targets) == targets


# ------------------------------------------------------------------------------------------- feature arm grammar
def test_feature_arms_use_the_image_grammar_restricted_to_their_bases():
    assert feature_arm("real+synthetic@1x+class-weight").class_weight
    check_arms(["real", "oversample", "real+synthetic@0.5"], feature_arm)
    for bad in ("augment", "synthetic-only", "real+synthetic|filter=discriminator", "nope"):
        with pytest.raises(ConfigError, match="unknown feature arm"):
            feature_arm(bad)
    with pytest.raises(ConfigError, match="must include 'real'"):
        check_arms(["oversample"], feature_arm)
    x, y = torch.randn(12, 2, 2, 2), torch.tensor([0] * 9 + [1] * 3)
    _, _, _, opts, _ = arm_feature_set("real+synthetic@1x+class-weight", x, y, ["a", "b"], "auto", 0,
                                       acgan=_ConstantACGAN())
    assert opts == {"class_weights": True}


class _ConstantACGAN:
    def generate(self, labels, g):
        return torch.ones(labels.shape[0], 2, 2, 2)

    def classify(self, f):
        return torch.tensor([[0.0, 1.0]]).expand(f.shape[0], 2)


def test_feature_ratio_arm_adds_ratio_times_the_minority():
    x, y = torch.randn(12, 2, 2, 2), torch.tensor([0] * 9 + [1] * 3)
    _, ys, ss, _, st = arm_feature_set("real+synthetic@1x", x, y, ["a", "b"], "auto", 0, acgan=_ConstantACGAN())
    assert int(ss.sum()) == 3 and (ys[ss] == 1).all() and st["b"]["kept"] == 3


# ------------------------------------------------------------------------------------------- leakage check
def test_check_seen_ids_names_the_model_and_unit():
    split = make_split(_ds(), DownstreamConfig(seeds=[0]))
    assert check_seen_ids(split.train.ids, split, model="segmentor", unit="slices") == []
    with pytest.raises(DataError, match="leakage: the segmentor was trained on 1 of the .* test slices"):
        check_seen_ids([*split.train.ids, split.test.ids[0]], split, model="segmentor", unit="slices")
    warn = check_seen_ids([*split.train.ids, split.val.ids[0]], split, model="segmentor", unit="slices")
    assert warn == ["the segmentor saw 1 validation slices (model selection may be optimistic)"]
    with pytest.raises(DataError, match="leakage: the generator saw 1 validation samples"):
        check_seen_ids([split.val.ids[0]], split, allow_val_overlap=False)
    with pytest.raises(DataError, match="the segmentor records no training ids"):
        check_seen_ids(None, split, model="segmentor", path=Path("seg"))


# ------------------------------------------------------------------------------------------- CI table
def _render(table) -> str:
    con = Console(record=True, width=200)
    con.print(table)
    return con.export_text()


def test_fmt_ci_and_p_values():
    e = {"mean": 0.5, "ci_low": 0.41, "ci_high": 0.6, "vs_real_seeds": {"p": 0.0625}}
    assert fmt_ci(e) == "0.500 [0.410, 0.600]"
    assert fmt_ci(e, p=True) == "0.500 [0.410, 0.600] p=0.0625"
    assert fmt_ci({**e, "vs_real_seeds": {"p": float("nan")}}, p=True) == "0.500 [0.410, 0.600]"
    assert fmt_ci({**e, "vs_real_seeds": {"p": None}}, p=True) == "0.500 [0.410, 0.600]"
    assert fmt_ci({"mean": float("nan"), "ci_low": None, "ci_high": 1.0}) == "n/a [n/a, 1.000]"
    assert fmt_ci(None) == "n/a"


def test_ci_table_rows_columns_and_missing_cells():
    summary = {
        "real": {"balanced_accuracy": {"mean": 0.7, "ci_low": 0.6, "ci_high": 0.8}},
        "oversample": {"balanced_accuracy": {"mean": 0.75, "ci_low": 0.7, "ci_high": 0.8,
                                             "vs_real_seeds": {"p": 0.25}}},
        "_min_attainable_p_seeds": 0.5,
    }
    t = ci_table(summary, ["balanced_accuracy", "macro_f1"], "title here", metric_header="metric (x)", p=True)
    assert [c.header for c in t.columns] == ["metric (x)", "real", "oversample"] and t.row_count == 2
    text = _render(t)
    assert "title here" in text and "0.750 [0.700, 0.800] p=0.25" in text and "0.700 [0.600, 0.800]" in text
    assert text.splitlines()[[i for i, line in enumerate(text.splitlines()) if "macro_f1" in line][0]].count("n/a") == 2
    assert [c.header for c in ci_table(summary, [], "t", arms=["oversample"]).columns] == ["metric", "oversample"]


# ------------------------------------------------------------------------------------------- manifest reader
def test_manifest_loader_reads_the_synthetic_column_of_a_tsv(tmp_path):
    """The one reading of the ``synthetic`` column (``evaluate --synthetic`` and ``downstream --synthetic``)."""
    from PIL import Image

    from medbalance.data import load_dataset

    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / f"s{i}.png")
    tsv = tmp_path / "m.tsv"
    tsv.write_text("id\timage\tlabel\tsynthetic\n" + "".join(
        f" s{i} \ts{i}.png\t{'ab'[i % 2]}\t{f}\n" for i, f in enumerate(["yes", "0", " TRUE ", ""])))
    assert load_dataset(tsv).synthetic.tolist() == [True, False, True, False]
    bad = tmp_path / "bad.csv"
    bad.write_text("id,image,label,synthetic\ns0,s0.png,a,maybe\ns1,s1.png,b,1\n")
    with pytest.raises(DataError, match="'synthetic' cell 'maybe'"):
        load_dataset(bad)
    plain = tmp_path / "plain.csv"
    plain.write_text("id,image,label\ns0,s0.png,a\ns1,s1.png,b\n")
    assert load_dataset(plain).synthetic is None