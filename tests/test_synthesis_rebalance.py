"""GenerativeOverSampler, filters, export: counts, provenance, determinism, atomic output."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from medbalance.data.dataset import ImageDataset
from medbalance.errors import ConfigError
from medbalance.synthesis.export import MANIFEST_COLUMNS, export_dataset
from medbalance.synthesis.filters import DiscriminatorFilter, FilterContext, MemorizationGate
from medbalance.synthesis.oversampler import GenerativeOverSampler


class FakeMethod(nn.Module):
    """A 'generator' whose output depends on class, mask and seeded noise (enough to test the plumbing)."""

    name = "fake"
    needs = ("label", "mask")

    def __init__(self):
        super().__init__()
        self.G = nn.Conv2d(1, 1, 1)

    def generate(self, labels, masks=None, conditions=None, generator=None, G=None):
        b = labels.shape[0]
        noise = torch.rand((b, 1, 16, 16), generator=generator) * 0.1
        base = (labels.float() * 0.5 - 0.5).view(-1, 1, 1, 1)
        return (base + noise + 0.3 * (masks[:, None] > 0).float()).clamp(-1, 1)

    def classify(self, images):  # a class head that always says class 0
        return torch.stack([torch.ones(len(images)), torch.zeros(len(images)), torch.zeros(len(images))], 1)

    def discriminate(self, images, masks=None, labels=None):
        return images.mean((1, 2, 3))


def _real(n_per=(12, 4, 2)):
    imgs, masks, labels = [], [], []
    rng = np.random.default_rng(0)
    for c, n in enumerate(n_per):
        for _ in range(n):
            m = np.zeros((16, 16), np.int64)
            y, x = rng.integers(2, 10, 2)
            m[y : y + 4, x : x + 4] = 1
            masks.append(m)
            imgs.append(rng.uniform(-1, 1, (1, 16, 16)).round(2))
            labels.append(c)
    n = len(labels)
    return ImageDataset(
        images=torch.tensor(np.stack(imgs), dtype=torch.float32),
        labels=torch.tensor(labels),
        class_names=["common", "rare", "rarest"],
        ids=[f"r{i:03d}" for i in range(n)],
        masks=torch.tensor(np.stack(masks)),
        mask_values=[0, 255],
        groups=[f"p{i // 2}" for i in range(n)],
    )


def _run():
    method = FakeMethod()
    info = SimpleNamespace(class_names=["common", "rare", "rarest"])
    return SimpleNamespace(method=method, G=method.G, info=info, checkpoint_sha256="abc", train_ids=[], heldout_ids=[])


def test_auto_strategy_equalises_counts_with_provenance():
    real = _real()
    s = GenerativeOverSampler(_run(), sampling_strategy="auto", random_state=3, batch_size=5)
    both = s.fit_resample(real)
    assert dict(s.sampling_strategy_) == {"rare": 8, "rarest": 10}
    assert both.class_counts() == {"common": 12, "rare": 12, "rarest": 12}
    assert int(both.is_synthetic().sum()) == 18
    parents = {p["parent_mask_id"] for p in s.provenance_}
    assert parents <= set(real.ids)
    # masks pool same_class: a 'rarest' sample's mask comes from a 'rarest' real sample
    for p in s.provenance_:
        assert real.class_names[int(real.labels[real.ids.index(p["parent_mask_id"])])] == p["class"]
    assert s.report_.to_dict()["kept"] == 18 and s.report_.shortfall() == {}


def test_dict_strategy_and_determinism():
    real = _run()
    a = GenerativeOverSampler(real, sampling_strategy={"rare": 6, "rarest": 9}, random_state=1).fit(_real()).sample()
    b = GenerativeOverSampler(real, sampling_strategy={"rare": 6, "rarest": 9}, random_state=1).fit(_real()).sample()
    c = GenerativeOverSampler(real, sampling_strategy={"rare": 6, "rarest": 9}, random_state=2).fit(_real()).sample()
    assert a.class_counts() == {"common": 0, "rare": 2, "rarest": 7}
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.images, c.images)


def test_filter_rejecting_everything_keeps_zero_and_says_so():
    s = GenerativeOverSampler(_run(), filters=[DiscriminatorFilter(FakeMethod(), mode="class")], max_rounds=2)
    s.fit(_real())
    syn = s.sample()
    # the fake class head assigns everything to class 0; 'rare' and 'rarest' are requested
    assert len(syn) == 0
    rep = s.report_.to_dict()
    assert rep["kept"] == 0 and rep["rejected"]["discriminator"] == rep["generated"] > 0
    assert rep["shortfall"] == {"rare": 8, "rarest": 10}
    assert "NOT reached" in s.report_.summary()


def test_memorization_gate_rejects_exact_copy():
    real = _real()
    gate = MemorizationGate(real.images[:12], real.images[12:], percentile=1.0, pixel_size=None)
    copies = real.images[:3]
    fresh = torch.ones(3, 1, 16, 16)  # far from every training image
    keep, d = gate(torch.cat([copies, fresh]), FilterContext(labels=torch.zeros(6, dtype=torch.long)))
    assert keep.tolist() == [False] * 3 + [True] * 3
    assert torch.allclose(d[:3], torch.zeros(3), atol=1e-5)


def test_unconditional_model_is_refused():
    run = _run()
    run.method.needs = ("mask",)
    GenerativeOverSampler(run).fit(_real())  # class carried by same-class masks: allowed
    with pytest.raises(ConfigError, match="not class-conditional"):
        GenerativeOverSampler(run, mask_pool="any").fit(_real())
    run.method.needs = ()
    with pytest.raises(ConfigError, match="not class-conditional"):
        GenerativeOverSampler(run).fit(_real())


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_export_manifest_determinism_and_atomicity(tmp_path, monkeypatch):
    real = _real()

    def run_once(out):
        s = GenerativeOverSampler(_run(), random_state=7)
        s.fit(real)
        syn = s.sample()
        return export_dataset(out, syn, s.provenance_, real=real, generator_name="fake", checkpoint_sha256="abc",
                              model_card={"method": "fake"}, synthesis_info={"plan": dict(s.sampling_strategy_)})

    m1 = run_once(tmp_path / "a")
    m2 = run_once(tmp_path / "b")
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    rows = list(csv.DictReader(open(m1)))
    assert list(rows[0]) == MANIFEST_COLUMNS
    syn_rows = [r for r in rows if r["synthetic"] == "1"]
    assert len(rows) == len(real) + 18 and len(syn_rows) == 18
    assert all(r["generator"] == "fake" and r["checkpoint_sha256"] == "abc" and r["parent_mask_id"] for r in syn_rows)
    assert all((tmp_path / "a" / r["image"]).is_file() and (tmp_path / "a" / r["mask"]).is_file() for r in rows)
    assert m2.exists()

    # an exception in the middle leaves nothing under the final name
    import medbalance.synthesis.export as ex

    calls = {"n": 0}
    orig = ex.write_png

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("disk full")
        return orig(*a, **k)

    monkeypatch.setattr(ex, "write_png", flaky)
    with pytest.raises(RuntimeError):
        run_once(tmp_path / "c")
    assert not (tmp_path / "c").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".c")] == []


def test_export_reads_back_through_the_manifest_source(tmp_path):
    pytest.importorskip("medbalance.data.manifest")
    from medbalance.data import load_dataset

    real = _real()
    s = GenerativeOverSampler(_run(), random_state=0)
    s.fit(real)
    m = export_dataset(tmp_path / "out", s.sample(), s.provenance_, real=real)
    back = load_dataset(str(m))
    assert back.class_counts() == {"common": 12, "rare": 12, "rarest": 12}
    assert back.mask_values == [0, 255]
