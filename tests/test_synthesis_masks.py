"""Mask sources: labels stay inside anatomy; lesion area and position change as requested."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from medbalance.data.dataset import ImageDataset
from medbalance.errors import ConfigError, DataError
from medbalance.synthesis.masks import MaskSampler, _affine_labels


def _dataset(n=6, size=48, anatomy=True):
    """Disc-shaped 'brain' (label 1) with a square lesion (label 2) per sample; classes alternate."""
    yy, xx = np.mgrid[:size, :size]
    images, masks = [], []
    rng = np.random.default_rng(0)
    for i in range(n):
        r = 15 + i % 3
        brain = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < r**2
        m = np.where(brain, 1, 0)
        y0, x0 = 18 + rng.integers(0, 6), 18 + rng.integers(0, 6)
        m[y0 : y0 + 6, x0 : x0 + 6] = 2
        masks.append(m)
        img = np.where(brain, 0.2, -1.0) + (m == 2) * 0.6
        images.append(img[None])
    masks = np.stack(masks)
    values = [0, 1, 2]
    if not anatomy:  # binary lesion masks, anatomy only in the image
        masks = (masks == 2).astype(np.int64)
        values = [0, 255]
    return ImageDataset(
        images=torch.tensor(np.stack(images), dtype=torch.float32),
        labels=torch.tensor([i % 2 for i in range(n)]),
        class_names=["a", "b"],
        ids=[f"s{i}" for i in range(n)],
        masks=torch.tensor(masks, dtype=torch.int64),
        mask_values=values,
        meta={"anatomy_values": [1]} if anatomy else {},
    )


def test_real_masks_same_class_and_cycle():
    ds = _dataset()
    s = MaskSampler(ds, source="real")
    drawn = s.draw(6, cls=1, rng=np.random.default_rng(0))
    ids = [d.parent_id for d in drawn]
    assert set(ids) == {"s1", "s3", "s5"} and all(ids.count(x) == 2 for x in set(ids))
    for d in drawn:
        assert np.array_equal(d.mask, ds.masks[ds.ids.index(d.parent_id)].numpy())
    assert {d.parent_id for d in MaskSampler(ds, source="real", pool="any").draw(6, 1, np.random.default_rng(1))} > {"s1"}


@pytest.mark.parametrize("anatomy", [True, False])
def test_elastic_lesion_inside_anatomy(anatomy):
    ds = _dataset(anatomy=anatomy)
    s = MaskSampler(ds, source="elastic", elastic_alpha=4)
    for d in s.draw(8, cls=0, rng=np.random.default_rng(2)):
        parent = ds.ids.index(d.parent_id)
        tissue = s.tissue_of(parent)
        lesion = s.lesion_of(d.mask)
        assert lesion.any()
        assert not (lesion & ~tissue).any()  # lesion labels only inside anatomy
        orig_lesion = s.lesion_of(ds.masks[parent].numpy())
        assert not np.array_equal(lesion, orig_lesion)  # it was deformed
        if anatomy:  # anatomy outside the lesion is the parent's
            assert np.array_equal(d.mask[~lesion] > 0, tissue[~lesion])


def test_edit_move_keeps_area_changes_position():
    ds = _dataset()
    s = MaskSampler(ds, source="edited", edit_ops=["move"])
    moved = 0
    for d in s.draw(10, cls=None, rng=np.random.default_rng(3)):
        p = ds.ids.index(d.parent_id)
        before, after = s.lesion_of(ds.masks[p].numpy()), s.lesion_of(d.mask)
        assert not (after & ~s.tissue_of(p)).any()
        assert abs(int(after.sum()) - int(before.sum())) <= 0.15 * before.sum()
        shift = np.subtract(ndimage.center_of_mass(after), ndimage.center_of_mass(before))
        np.testing.assert_allclose(shift, d.ops["shift"], atol=1.0)
        moved += np.hypot(*shift) > 1
    assert moved >= 7


def test_edit_scale_changes_area_as_recorded():
    ds = _dataset()
    s = MaskSampler(ds, source="edited", edit_ops=["scale"], scale_range=(0.5, 1.6))
    for d in s.draw(8, cls=None, rng=np.random.default_rng(4)):
        p = ds.ids.index(d.parent_id)
        ratio = s.lesion_of(d.mask).sum() / s.lesion_of(ds.masks[p].numpy()).sum()
        assert ratio == pytest.approx(d.ops["scale"] ** 2, rel=0.35)


def test_edit_rotate_and_transplant_into_host_tissue():
    ds = _dataset()
    s = MaskSampler(ds, source="edited", edit_ops=["transplant"])
    for d in s.draw(8, cls=None, rng=np.random.default_rng(5)):
        host = ds.ids.index(d.host_id)
        assert d.host_id != d.parent_id
        lesion = s.lesion_of(d.mask)
        assert lesion.any() and not (lesion & ~s.tissue_of(host)).any()
        # the host's anatomy is kept outside the lesion
        assert np.array_equal(d.mask[~lesion] > 0, s.tissue_of(host)[~lesion])
    r = MaskSampler(ds, source="edited", edit_ops=["rotate"]).draw(4, None, np.random.default_rng(6))
    assert all(d.ops["op"] == "rotate" for d in r)


def test_affine_identity_and_translation():
    lab = np.zeros((20, 20), dtype=np.int64)
    lab[5:8, 5:9] = 2
    assert np.array_equal(_affine_labels(lab, (6, 7), (6, 7), 0.0, 1.0), lab)
    shifted = _affine_labels(lab, (6, 7), (10, 12), 0.0, 1.0)
    assert np.array_equal(shifted[9:12, 10:14], lab[5:8, 5:9])


def test_folder_source_and_errors(tmp_path):
    ds = _dataset()
    m = ds.masks[0].numpy().astype(np.uint8)
    Image.fromarray(m).save(tmp_path / "m1.png")
    got = MaskSampler(ds, source="folder", folder=str(tmp_path)).draw(3, None, np.random.default_rng(0))
    assert all(d.parent_id == "m1" and np.array_equal(d.mask, m) for d in got)
    Image.fromarray(np.full((48, 48), 7, np.uint8)).save(tmp_path / "bad.png")
    with pytest.raises(DataError, match=r"bad\.png.*outside"):
        MaskSampler(ds, source="folder", folder=str(tmp_path))
    with pytest.raises(DataError, match="no mask images"):
        MaskSampler(ds, source="folder", folder=str(tmp_path / "empty_missing"))


def test_bad_options():
    ds = _dataset()
    with pytest.raises(ConfigError, match="allowed: real, elastic, edited, folder"):
        MaskSampler(ds, source="warp")
    with pytest.raises(ConfigError, match="edit operation"):
        MaskSampler(ds, source="edited", edit_ops=["shear"])
    with pytest.raises(ConfigError, match="anatomy values"):
        MaskSampler(ds, anatomy_values=[9])


def test_add_anatomy_label_from_image():
    from medbalance.data.anatomy import add_anatomy_label

    ds = _dataset(anatomy=False)  # binary lesion masks [0, 255], brain visible in the image
    out = add_anatomy_label(ds, 1)
    assert out.mask_values == [0, 1, 255] and out.meta["anatomy_values"] == [1]
    m = out.masks.numpy()
    brain = ds.images.numpy()[:, 0] > -0.8
    lesion = ds.masks.numpy() == 1
    assert np.array_equal(m == 2, lesion)  # lesion keeps its (re-indexed) label
    anat = m == 1  # the rest of the brain gets the anatomy label (up to the opening at the rim)
    assert not (anat & lesion).any() and not (anat & ~brain).any()
    assert (anat | lesion).sum() / brain.sum() > 0.97
    with pytest.raises(ConfigError, match="already a mask value"):
        add_anatomy_label(ds, 255)
    s = MaskSampler(out, source="edited", edit_ops=["move"])
    for d in s.draw(4, None, np.random.default_rng(0)):
        assert not (s.lesion_of(d.mask) & ~s.tissue_of(out.ids.index(d.parent_id))).any()


def test_anatomy_levels_split_tissue_by_intensity_quantiles():
    from medbalance.data.anatomy import add_anatomy_label

    ds = _dataset(anatomy=False)
    size = ds.images.shape[-1]
    # brain intensity ramps from left (dark) to right (bright)
    ramp = torch.linspace(-0.5, 0.5, size).expand(size, size)
    brain = ds.images[:, 0] > -0.8
    ds.images[:, 0] = torch.where(brain, ramp, ds.images[:, 0])
    out = add_anatomy_label(ds, 1, levels=3)
    assert out.mask_values == [0, 1, 2, 3, 255] and out.meta["anatomy_values"] == [1, 2, 3]
    m = out.masks.numpy()
    assert np.array_equal(m == 4, ds.masks.numpy() == 1)  # lesion kept, re-indexed
    for i in range(len(ds)):
        counts = [(m[i] == j).sum() for j in (1, 2, 3)]
        assert min(counts) > 0.25 * sum(counts)  # quantile levels: about a third of the tissue each
        cols = [np.nonzero(m[i] == j)[1].mean() for j in (1, 2, 3)]
        assert cols[0] < cols[1] < cols[2]  # level increases with intensity (left to right)
    with pytest.raises(ConfigError, match=r"already a mask value"):
        add_anatomy_label(ds, 253, levels=3)  # 253, 254, 255 would clash with the lesion's 255
    with pytest.raises(ConfigError, match="anatomy_levels"):
        add_anatomy_label(ds, 1, levels=0)
