"""The built-in procedural phantom: counts, determinism, label map, class differences, files, atomicity."""

from __future__ import annotations

import csv
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

import medbalance.data.phantom as ph
from medbalance.data.config import DataConfig, PhantomConfig
from medbalance.data.sources import SOURCES
from medbalance.errors import ConfigError

S = 64


def _make(**kw) -> "ph.ImageDataset":
    image_size = kw.pop("image_size", None)
    return ph.make_phantom(DataConfig(source="phantom", image_size=image_size, phantom=PhantomConfig(**kw)))


@pytest.fixture(scope="module")
def five():
    """All five lesion types, 10 slices each, at 128 px (the skull is resolved), with the head geometry."""
    return ph.render_phantom(PhantomConfig(n=50, imbalance=[1, 1, 1, 1, 1], size=128, seed=3), return_geometry=True)


# ---------------------------------------------------------------------------------- class sizes
def test_class_counts_largest_remainder_and_minimum_one():
    assert ph.class_counts(420, [10, 3, 1]) == [300, 90, 30]
    assert ph.class_counts(14, [10, 3, 1]) == [10, 3, 1]
    # quotas 7.14 / 2.14 / 0.71 -> floors 7, 2, 0; one left goes to the largest remainder (0.71)
    assert ph.class_counts(10, [10, 3, 1]) == [7, 2, 1]
    # 4.9 / 0.05 / 0.05 -> 5, 0, 0 -> empty classes take one each from the largest
    assert ph.class_counts(5, [100, 1, 1]) == [3, 1, 1]
    assert sum(ph.class_counts(1001, [5, 4, 3, 2, 1])) == 1001


@pytest.mark.parametrize(
    "n,imb,msg",
    [(10, [1.0], "2 to 5"), (10, [1, 1, 1, 1, 1, 1], "2 to 5"), (10, [3, -1], "positive"), (4, [1, 1, 1, 1, 1], "smaller")],
)
def test_bad_imbalance_is_config_error(n, imb, msg):
    with pytest.raises(ConfigError, match=msg):
        _make(n=n, imbalance=imb, size=32)


def test_dataset_counts_ids_groups_and_meta():
    ds = _make(n=70, imbalance=[10, 3, 1], size=32, seed=1)
    assert ds.class_names == ["homogeneous", "ring_enhancing", "extra_axial"]
    assert ds.class_counts() == {"homogeneous": 50, "ring_enhancing": 15, "extra_axial": 5}
    assert ds.ids[0] == "phantom_00001" and ds.ids[-1] == "phantom_00070" and len(set(ds.ids)) == 70
    assert ds.mask_values == [0, 1, 2, 3, 4]
    assert ds.intensity.to_dict() == {"kind": "uint8", "lo": 0.0, "hi": 255.0}
    assert ds.meta["source"] == "phantom" and ds.meta["conversions"] == [] and ds.meta["warnings"] == []
    assert ds.meta["config"]["n"] == 70 and ds.meta["original_shapes"][0] == [32, 32]
    assert "phantom" in SOURCES
    # subjects: 1-3 slices, one class each, fewer subjects than slices
    by_group: dict[str, set[int]] = {}
    sizes: dict[str, int] = {}
    for g, lab in zip(ds.groups, ds.labels.tolist()):
        by_group.setdefault(g, set()).add(lab)
        sizes[g] = sizes.get(g, 0) + 1
    assert all(len(v) == 1 for v in by_group.values())
    assert set(sizes.values()) <= {1, 2, 3} and len(sizes) < 70 / 1.9


def test_value_ranges_and_8bit_grid():
    ds = _make(n=12, imbalance=[2, 1], size=S, seed=0)
    x = ds.images
    assert x.dtype == torch.float32 and x.shape == (12, 1, S, S)
    assert x.min() >= -1 and x.max() <= 1
    u8 = (x + 1) * 127.5
    assert torch.allclose(u8, u8.round(), atol=1e-3)  # rendered as 8-bit
    assert ds.masks.dtype == torch.int64 and set(ds.masks.unique().tolist()) <= {0, 1, 2, 3, 4}
    assert x.min() < -0.9 and x.max() > 0.5  # air is dark, fat/enhancement bright


def test_deterministic_by_seed():
    a = _make(n=20, size=32, seed=5)
    b = _make(n=20, size=32, seed=5)
    c = _make(n=20, size=32, seed=6)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert a.groups == b.groups and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert (a.images - c.images).abs().mean() > 0.05


def test_subject_slices_share_the_head():
    imgs, labs, labels, subj = ph.render_phantom(PhantomConfig(n=40, size=S, seed=2))
    ic = (labs > 0).numpy()

    def iou(i, j):
        return (ic[i] & ic[j]).sum() / (ic[i] | ic[j]).sum()

    same = [iou(i, j) for i in range(40) for j in range(i + 1, 40) if subj[i] == subj[j]]
    diff = [iou(i, j) for i in range(40) for j in range(i + 1, 40) if subj[i] != subj[j]]
    assert same and np.mean(same) > 0.9 and np.mean(same) > np.mean(diff) + 0.05


# ---------------------------------------------------------------------------------- label map
def test_label_map_matches_geometry_and_image(five):
    imgs, labs, labels, _, geom = five
    labs_np, imgs_np, geom_np = labs.numpy(), imgs.numpy().astype(float), geom.numpy()
    for i in range(len(labels)):
        L, I = labs_np[i], imgs_np[i]
        # label > 0 is exactly the intracranial space of the head geometry: lesions never leak out
        assert np.array_equal(L > 0, geom_np[i])
        ic = L > 0
        assert ndimage.label(ic)[1] == 1 and not ic[0].any() and not ic[-1].any()
        # the 1-pixel band just outside the intracranial label is skull: darker than the brain
        ring = ndimage.binary_dilation(ic) & ~ic
        assert I[ring].mean() < 0.6 * I[L == 1].mean()
        touches_skull = (ndimage.binary_dilation(L == 0) & (L >= 3)).any()
        if ph.CLASS_TYPES[labels[i]] == "extra_axial":
            assert touches_skull  # dural-based
        elif ph.CLASS_TYPES[labels[i]] != "infiltrative":
            assert not touches_skull  # intra-axial: enclosed by brain
            assert (L >= 2).any()


def test_classes_differ_as_designed(five):
    imgs, labs, labels, _, _ = five
    L, I = labs.numpy(), imgs.numpy().astype(float)
    stats: dict[str, dict[str, list[float]]] = {}
    for i, c in enumerate(labels):
        name = ph.CLASS_TYPES[c]
        d = stats.setdefault(name, {k: [] for k in ("area", "has2", "has3", "has4", "ncomp", "contrast")})
        les = L[i] >= 2
        d["area"].append(les.sum())
        for k in (2, 3, 4):
            d[f"has{k}"].append((L[i] == k).any())
        d["ncomp"].append(ndimage.label(L[i] == 3)[1])
        d["contrast"].append(I[i][les].mean() / I[i][L[i] == 1].mean())
    m = {k: {f: float(np.mean(v)) for f, v in d.items()} for k, d in stats.items()}
    # size: homogeneous is small, ring-enhancing (with oedema) and infiltrative are large
    assert m["homogeneous"]["area"] * 2 < m["extra_axial"]["area"] < m["ring_enhancing"]["area"]
    assert m["homogeneous"]["area"] * 5 < m["infiltrative"]["area"]
    # composition: necrosis only in ring-enhancing / multifocal; oedema never in homogeneous / extra-axial
    assert m["ring_enhancing"]["has4"] == 1 and m["ring_enhancing"]["has2"] == 1
    assert m["homogeneous"]["has2"] == 0 and m["homogeneous"]["has4"] == 0
    assert m["extra_axial"]["has2"] == 0 and m["extra_axial"]["has4"] == 0
    assert m["infiltrative"]["has3"] == 0 and m["infiltrative"]["has2"] == 1
    assert m["multifocal"]["ncomp"] >= 1.8 and m["homogeneous"]["ncomp"] == 1
    # intensity: enhancing lesions are brighter than brain, the infiltrative one darker
    assert m["homogeneous"]["contrast"] > 1.3 and m["extra_axial"]["contrast"] > 1.2
    assert m["infiltrative"]["contrast"] < 0.95
    # ring: necrotic core much darker than the enhancing rim in every sample
    for i in np.flatnonzero(labels == 1):
        assert I[i][L[i] == 4].mean() < 0.5 * I[i][L[i] == 3].mean()


def test_image_size_resizes_images_and_masks():
    ds = _make(n=8, imbalance=[1, 1], size=64, seed=0, image_size=32)
    big = _make(n=8, imbalance=[1, 1], size=64, seed=0)
    assert ds.images.shape == (8, 1, 32, 32) and ds.masks.shape == (8, 32, 32)
    assert set(ds.masks.unique().tolist()) <= {0, 1, 2, 3, 4} and ds.meta["conversions"]
    # area downsampling of the same rendering, kept on the 8-bit grid
    ref = torch.nn.functional.avg_pool2d((big.images + 1) * 127.5, 2).round() / 127.5 - 1
    assert torch.allclose(ds.images, ref, atol=1e-5)


# ---------------------------------------------------------------------------------- files
def test_write_phantom_dataset_files(tmp_path):
    cfg = PhantomConfig(n=9, imbalance=[2, 1], size=32, seed=4)
    out = tmp_path / "ph"
    manifest = ph.write_phantom_dataset(out, cfg)
    assert manifest == out / "manifest.csv" and (out / "README.txt").read_text().startswith("medbalance phantom")
    rows = list(csv.DictReader(open(manifest)))
    assert list(rows[0].keys()) == ["id", "image", "mask", "label", "group"] and len(rows) == 9
    ds = _make(n=9, imbalance=[2, 1], size=32, seed=4)
    for i, r in enumerate(rows):
        assert r["id"] == ds.ids[i] and r["label"] == ds.class_names[int(ds.labels[i])] and r["group"] == ds.groups[i]
        img = np.asarray(Image.open(out / r["image"]))
        msk = np.asarray(Image.open(out / r["mask"]))
        assert img.dtype == np.uint8 and msk.dtype == np.uint8
        assert np.array_equal(img, ((ds.images[i, 0] + 1) * 127.5).round().numpy().astype(np.uint8))
        assert np.array_equal(msk, ds.masks[i].numpy().astype(np.uint8))
    with pytest.raises(ConfigError, match="not empty"):
        ph.write_phantom_dataset(out, cfg)
    ph.write_phantom_dataset(out, cfg.model_copy(update={"seed": 5}), overwrite=True)
    assert len(list((out / "images").iterdir())) == 9


def test_write_is_atomic(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = ph.png_bytes

    def flaky(arr):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full (injected)")
        return real(arr)

    monkeypatch.setattr(ph, "png_bytes", flaky)
    with pytest.raises(OSError, match="injected"):
        ph.write_phantom_dataset(tmp_path / "out", PhantomConfig(n=6, imbalance=[1, 1], size=32))
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a partial temp folder


def test_manifest_round_trip(tmp_path):
    if importlib.util.find_spec("medbalance.data.manifest") is None:
        pytest.skip("manifest source not available")
    from medbalance.data import load_dataset

    cfg = PhantomConfig(n=10, imbalance=[3, 1, 1], size=32, seed=7)
    manifest = ph.write_phantom_dataset(tmp_path / "ph", cfg)
    back = load_dataset(str(manifest), mask_values=[0, 1, 2, 3, 4], classes=ph.class_names(3))
    assert back.class_names == ph.class_names(3)
    ds = _make(n=10, imbalance=[3, 1, 1], size=32, seed=7)
    order = [back.ids.index(i) for i in ds.ids]
    assert torch.equal(back.images[order], ds.images)
    assert torch.equal(back.masks[order], ds.masks)
    assert torch.equal(back.labels[order], ds.labels)
    assert [back.groups[j] for j in order] == ds.groups


def test_mni152_needs_nilearn():
    if importlib.util.find_spec("nilearn") is not None:
        pytest.skip("nilearn is installed")
    with pytest.raises(ConfigError, match="pip install nilearn"):
        _make(n=6, size=32, anatomy="mni152")


def test_mni152_path_with_a_stand_in_template(monkeypatch):
    """The MNI152 path on a stand-in ``nilearn`` (an ellipsoid 'template'): labels follow its brain mask."""
    import sys
    import types

    x, y, z = np.meshgrid(np.arange(91), np.arange(109), np.arange(91), indexing="ij")
    r = ((x - 45) / 34.0) ** 2 + ((y - 54) / 44.0) ** 2 + ((z - 45) / 36.0) ** 2
    vol = np.where(r < 1, 0.6, 0.0) + np.where(r < 0.5, 0.3, 0.0)  # "grey" shell, "white" core
    vol[(np.abs(x - 45) < 3) & (np.abs(y - 54) < 15) & (r < 0.4)] = 0.1  # dark "ventricle"

    class Img:
        def __init__(self, a):
            self.a = a

        def get_fdata(self):
            return self.a

    fake = types.ModuleType("nilearn")
    fake.datasets = types.SimpleNamespace(
        load_mni152_template=lambda resolution=None: Img(vol),
        load_mni152_brain_mask=lambda resolution=None: Img((vol > 0.2).astype(float)),
    )
    monkeypatch.setitem(sys.modules, "nilearn", fake)
    cfg = PhantomConfig(n=12, imbalance=[1, 1, 1], size=48, seed=0, anatomy="mni152")
    imgs, labs, labels, _, geom = ph.render_phantom(cfg, return_geometry=True)
    L = labs.numpy()
    assert np.array_equal(L > 0, geom.numpy())
    for i in range(12):
        ic = L[i] > 0
        assert 0.25 < ic.mean() < 0.75  # the stand-in's brain section, not the procedural head
        assert (L[i] >= 3).any()
        outside = imgs[i].numpy()[~ic].astype(float)
        assert outside.mean() < 15  # skull-stripped: only noise outside the brain
