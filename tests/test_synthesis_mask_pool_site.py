"""Issue 16: Red-GAN's mask pool (``same_class`` | ``any``) and the site (condition column) as the rebalanced target."""

from __future__ import annotations

import json
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from medbalance.cli.main import app
from medbalance.data.dataset import ImageDataset
from medbalance.errors import ConfigError
from medbalance.experiments.downstream import DownstreamConfig, Split, SyntheticSource, parse_arm
from medbalance.synthesis.oversampler import GenerativeOverSampler, resolve_mask_pool

runner = CliRunner()
SITE_COUNTS = (10, 4, 2)  # site a, b, c


def _data() -> ImageDataset:
    """3 classes x 3 sites; every mask is unique to its image (a square whose position encodes the index)."""
    rng = np.random.default_rng(0)
    n = sum(SITE_COUNTS)
    conds = np.repeat(np.arange(3), SITE_COUNTS)
    labels = np.arange(n) % 3
    masks = np.zeros((n, 16, 16), np.int64)
    for i in range(n):
        masks[i, i % 4 * 4 : i % 4 * 4 + 3, i // 4 : i // 4 + 3] = 1
    return ImageDataset(
        images=torch.tensor(rng.uniform(-1, 1, (n, 1, 16, 16)), dtype=torch.float32),
        labels=torch.tensor(labels),
        class_names=["c0", "c1", "c2"],
        ids=[f"r{i:02d}" for i in range(n)],
        masks=torch.tensor(masks),
        mask_values=[0, 1],
        conditions=torch.tensor(conds),
        condition_names=["site_a", "site_b", "site_c"],
    )


class _Method(nn.Module):
    """Image = the fed condition (site index / 10) everywhere, plus the mask: enough to see what G was given."""

    def __init__(self, name, needs):
        super().__init__()
        self.name, self.needs = name, needs
        self.G = nn.Conv2d(1, 1, 1)

    def generate(self, labels, masks=None, conditions=None, generator=None, G=None):
        base = torch.zeros(len(labels)) if conditions is None else conditions.float() / 10
        return base.view(-1, 1, 1, 1) + 0.5 * masks[:, None].float()


def _run(ds, name="fake", needs=("label", "mask")):
    return SimpleNamespace(method=_Method(name, needs), G=nn.Conv2d(1, 1, 1), info=ds.info())


def _parent_classes(ds, prov):
    idx = {k: i for i, k in enumerate(ds.ids)}
    return [int(ds.labels[idx[p["parent_mask_id"]]]) for p in prov]


def test_mask_pool_any_draws_other_classes_same_class_does_not():
    ds = _data()
    for pool in ("same_class", "any"):
        s = GenerativeOverSampler(_run(ds), sampling_strategy={"c0": 16, "c1": 16, "c2": 16}, mask_pool=pool,
                                  progress=False, random_state=1)
        syn = s.fit(ds).sample()
        parents = _parent_classes(ds, s.provenance_)
        same = [p == int(lab) for p, lab in zip(parents, syn.labels.tolist())]
        assert len(syn) > 10
        if pool == "same_class":
            assert all(same)
        else:
            assert not all(same) and len(set(parents)) == 3
    # in downstream's generator arms too
    owners = {tuple(ds.masks[i].flatten().tolist()): int(ds.labels[i]) for i in range(len(ds))}
    src = SyntheticSource(run=_run(ds), mask_pool="same_class")
    syn = src.take(Split(ds, ds, ds), parse_arm("real+synthetic"), {"c1": 6}, 0, "real")
    assert all(owners[tuple(m.flatten().tolist())] == 1 for m in syn.masks)
    assert DownstreamConfig(mask_pool="any").mask_pool == "any"


def test_mask_pool_auto_is_any_for_class_conditioned_redgan():
    ds = _data()
    assert resolve_mask_pool(_Method("redgan", ("label", "mask")), "auto") == "any"
    assert resolve_mask_pool(_Method("redgan", ("mask", "condition")), "auto") == "same_class"
    assert resolve_mask_pool(_Method("spade", ("mask",)), "auto") == "same_class"
    assert resolve_mask_pool(_Method("spade", ("mask",)), "any") == "any"
    with pytest.raises(ConfigError, match="unknown mask pool 'bogus'"):
        GenerativeOverSampler(_run(ds), mask_pool="bogus", progress=False).fit(ds)


def test_site_rebalancing_plans_by_site_and_feeds_the_planned_sites():
    ds = _data()
    run = _run(ds, "redgan", ("mask", "condition"))
    s = GenerativeOverSampler(run, sampling_strategy="auto", target="condition", mask_pool="any", progress=False)
    syn = s.fit(ds).sample()
    assert dict(s.sampling_strategy_) == {"site_b": 6, "site_c": 8}  # imbalanced-learn 'auto' on the sites
    out = ds.concat(syn)
    assert Counter(out.conditions.tolist()) == {0: 10, 1: 10, 2: 10}
    # G was given the planned site (image level = site / 10 outside the lesion)
    for k in range(len(syn)):
        outside = syn.images[k, 0][syn.masks[k] == 0]
        assert torch.allclose(outside, torch.full_like(outside, int(syn.conditions[k]) / 10))
    # the class label is that of the mask's source image, and the masks come from every site
    assert syn.labels.tolist() == _parent_classes(ds, s.provenance_)
    idx = {k: i for i, k in enumerate(ds.ids)}
    assert len({int(ds.conditions[idx[p["parent_mask_id"]]]) for p in s.provenance_}) > 1
    assert {p["condition"] for p in s.provenance_} == {"site_b", "site_c"}
    # dict strategies name sites
    s2 = GenerativeOverSampler(run, sampling_strategy={"site_c": 5}, target="condition", progress=False).fit(ds)
    assert dict(s2.sampling_strategy_) == {"site_c": 3}
    # downstream's generator arms plan by site with target='condition'
    src = SyntheticSource(run=run, target="condition", strategy="auto")
    got = src.take(Split(ds, ds, ds), parse_arm("real+synthetic"), {"c0": 1}, 0, "real")
    assert Counter(got.conditions.tolist()) == {1: 6, 2: 8}


def test_site_target_refusals():
    ds = _data()
    with pytest.raises(ConfigError, match="does not condition on the condition column"):
        GenerativeOverSampler(_run(ds), target="condition", progress=False).fit(ds)
    with pytest.raises(ConfigError, match="unknown target 'site'"):
        GenerativeOverSampler(_run(ds), target="site", progress=False).fit(ds)
    with pytest.raises(ConfigError, match="needs a mask-conditioned model"):
        GenerativeOverSampler(_run(ds, "x", ("condition",)), target="condition", progress=False).fit(ds)


def test_cli_exposes_mask_pool_and_target(tiny_run, tmp_path):
    out = tmp_path / "g"
    r = runner.invoke(app, ["generate", str(tiny_run), "--n", "2", "--class", "homogeneous", "--mask-pool",
                            "same_class", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "synthesis.json").read_text())["options"]["mask_pool"] == "same_class"
    # SPADE has no class input: masks of any class would make the label a lie
    r = runner.invoke(app, ["generate", str(tiny_run), "--n", "2", "--class", "homogeneous", "--mask-pool", "any",
                            "--out", str(tmp_path / "h")])
    assert r.exit_code == 2 and "not class-conditional" in r.output, r.output
    r = runner.invoke(app, ["rebalance", "phantom", str(tmp_path / "r"), "--run", str(tiny_run), "--target", "condition"])
    assert r.exit_code == 2 and "does not condition on the condition column" in r.output, r.output
    r = runner.invoke(app, ["generate", str(tiny_run), "--n", "2", "--class", "site_a", "--target", "condition"])
    assert r.exit_code == 2 and "unknown site 'site_a'" in r.output, r.output
    r = runner.invoke(app, ["downstream", "phantom", str(tmp_path / "d"), "--mask-pool", "bogus", "--seeds", "1"])
    assert r.exit_code == 2, r.output
