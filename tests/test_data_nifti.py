"""NIfTI source: discovery, orientation, filters, normalisation, labels CSV, errors, cache."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import shared_path
from medbalance.data.config import DataConfig, NiftiConfig
from medbalance.data.nifti import load_nifti
from medbalance.errors import ConfigError, DataError

X, Y, Z = 10, 12, 6
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _brain() -> np.ndarray:
    b = np.zeros((X, Y, Z), bool)
    b[2:8, 2:10, 1:5] = True  # brain in z = 1..4 only
    return b


def make_case(root: Path, name: str, seed: int, affine=None, background: float = 0.0) -> dict[str, np.ndarray]:
    """One BraTS-like case: flair, t1ce, seg (values 0/1/2/4) and a brain mask, as written on disk."""
    rng = np.random.default_rng(seed)
    d = root / name
    d.mkdir(parents=True)
    brain = _brain()
    vols = {}
    for mod, mean in (("flair", 100.0), ("t1ce", 300.0)):
        v = np.full((X, Y, Z), background, np.float32)
        v[brain] = rng.normal(mean, 20.0, int(brain.sum())).astype(np.float32)
        vols[mod] = v
    seg = np.zeros((X, Y, Z), np.float32)
    seg[3:5, 4:6, 2] = [[1, 2], [2, 4]]  # 4 lesion voxels in z = 2
    seg[5, 6, 2] = 2  # -> 5 in z = 2
    seg[6, 7, 3] = 1  # 1 lesion voxel in z = 3 (tiny)
    vols["seg"] = seg
    vols["brainmask"] = brain.astype(np.float32)
    aff = np.eye(4) if affine is None else affine
    for k, v in vols.items():
        nib.save(nib.Nifti1Image(v, aff), str(d / f"{name}_{k}.nii.gz"))
    return vols


@pytest.fixture
def cases(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDBALANCE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    a = make_case(root, "caseA", 0)
    b = make_case(root / "sub", "caseB", 1, affine=LPS)  # nested, stored in LPS orientation
    return root, a, b


def cfg_for(root: Path, **nifti) -> DataConfig:
    return DataConfig(path=str(root), source="nifti", nifti=NiftiConfig(**nifti))


def test_discovery_filter_orientation_masks(cases):
    root, a, b = cases
    ds = load_nifti(cfg_for(root))
    # brain in z = 1..4 for both cases; lesion in z = 2 (5 voxels) and z = 3 (1 voxel)
    assert ds.ids == [f"case{c}_z{z:03d}" for c in "AB" for z in (1, 2, 3, 4)]
    assert ds.groups == ["caseA"] * 4 + ["caseB"] * 4
    assert ds.class_names == ["no_lesion", "lesion"]
    assert ds.labels.tolist() == [0, 1, 1, 0] * 2
    assert ds.images.shape == (8, 2, Y, X) and ds.masks.shape == (8, Y, X)
    assert ds.mask_values == [0, 1, 2, 4]
    assert ds.meta["original_shapes"] == {f"{Y}x{X}": 8}
    assert ds.meta["source_dtype"] == "float32"
    # RAS file: image[h, w] = vol[w, Y-1-h, z]
    vals = np.asarray(ds.mask_values)
    exp_a = a["seg"][:, :, 2].T[::-1, :]
    assert np.array_equal(vals[ds.masks[1].numpy()], exp_a)
    assert int(ds.masks[1, Y - 1 - 5, 4]) == 3  # seg[4, 5, 2] = 4 -> index 3
    # LPS file: canonical flips x and y -> image[h, w] = file[X-1-w, h, z]
    exp_b = b["seg"][::-1, :, 2].T
    assert np.array_equal(vals[ds.masks[5].numpy()], exp_b)
    assert (exp_b > 0).sum() == 5 and not np.array_equal(exp_b, exp_a)  # the flip is visible
    # same orientation for the images (brain box position)
    brain_img_a = ds.images[1, 0] > -1
    assert np.array_equal(brain_img_a.numpy(), _brain()[:, :, 2].T[::-1, :])


def test_min_lesion_voxels_and_brain_only(cases):
    root, _, _ = cases
    ds = load_nifti(cfg_for(root, min_lesion_voxels=2))
    # z = 3 has a single lesion voxel: ambiguous -> dropped
    assert ds.ids == [f"case{c}_z{z:03d}" for c in "AB" for z in (1, 2, 4)]
    assert ds.labels.tolist() == [0, 1, 0] * 2
    assert ds.meta["cases"][0]["slices_dropped_small_lesion"] == 1
    ds = load_nifti(cfg_for(root, brain_only=False))
    assert len(ds) == 2 * Z


def test_no_slice_passes_filter(cases):
    root, _, _ = cases
    with pytest.raises(DataError, match="no axial slice passed"):
        load_nifti(cfg_for(root, min_brain_voxels=49))  # brain box is 6x8 = 48 voxels per slice


def _brain_z(vol, z):
    return vol[:, :, z].T[::-1, :], _brain()[:, :, z].T[::-1, :]


def test_zscore_normalisation(cases):
    root, a, _ = cases
    ds = load_nifti(cfg_for(root))
    assert ds.intensity.to_dict() == {"kind": "float", "lo": -5.0, "hi": 5.0}
    v = a["flair"].astype(np.float64)
    br = _brain()
    z = (v - v[br].mean()) / v[br].std()
    img, bmask = _brain_z(z, 2)
    got = ds.intensity.unscale(ds.images[1, 0]).numpy()
    np.testing.assert_allclose(got[bmask], np.clip(img[bmask], -5, 5), atol=1e-4)
    assert np.all(got[~bmask] == -5.0)
    assert float(ds.images[1, 0][torch.from_numpy(~bmask.copy())].max()) == -1.0


def test_minmax_and_percentile_normalisation(cases):
    root, a, _ = cases
    v = a["t1ce"].astype(np.float64)
    br = _brain()
    ds = load_nifti(cfg_for(root, normalization="minmax"))
    assert (ds.intensity.lo, ds.intensity.hi) == (0.0, 1.0)
    img, bmask = _brain_z((v - v[br].min()) / (v[br].max() - v[br].min()), 3)
    got = ds.intensity.unscale(ds.images[2, 1]).numpy()
    np.testing.assert_allclose(got[bmask], img[bmask], atol=1e-5)
    assert np.all(got[~bmask] == 0)

    ds = load_nifti(cfg_for(root, normalization="percentile", percentiles=(5.0, 95.0)))
    lo, hi = np.percentile(v[br], [5, 95])
    img, bmask = _brain_z(np.clip((v - lo) / (hi - lo), 0, 1), 3)
    got = ds.intensity.unscale(ds.images[2, 1]).numpy()
    np.testing.assert_allclose(got[bmask], img[bmask], atol=1e-5)
    assert got[bmask].min() == 0 and got[bmask].max() == pytest.approx(1.0)

    ds = load_nifti(cfg_for(root, normalization="none"))
    allv = np.concatenate([a["flair"].ravel(), a["t1ce"].ravel()])
    assert ds.intensity.lo <= allv.min() + 1e-6 and ds.intensity.hi >= allv.max() - 1e-3
    np.testing.assert_allclose(ds.intensity.unscale(ds.images[2, 1]).numpy(), v[:, :, 3].T[::-1, :], rtol=1e-5, atol=1e-3)


def test_background_detection_without_brain_mask(tmp_path, monkeypatch):
    # volumes already z-scored: background is a constant non-zero value
    monkeypatch.setenv("MEDBALANCE_CACHE", str(tmp_path / "cache"))
    make_case(tmp_path / "d", "caseC", 2, background=-0.7)
    ds = load_nifti(cfg_for(tmp_path / "d", brain_mask_pattern=None))
    assert ds.ids == [f"caseC_z{z:03d}" for z in (1, 2, 3, 4)]
    ds2 = load_nifti(cfg_for(tmp_path / "d", brain_mask_pattern="*brainmask*"))
    assert torch.equal(ds.images, ds2.images)


def test_labels_csv_case_labels_and_conditions(cases, tmp_path):
    root, _, _ = cases
    p = tmp_path / "grades.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "label"])
        w.writerows([["caseA", "LGG"], ["caseB", "HGG"]])
    ds = load_nifti(cfg_for(root, slice_label="case", labels_csv=str(p)))
    assert ds.class_names == ["HGG", "LGG"]
    assert ds.labels.tolist() == [1] * 4 + [0] * 4
    ds = load_nifti(cfg_for(root, labels_csv=str(p)))  # has_lesion + CSV -> conditions
    assert ds.class_names == ["no_lesion", "lesion"]
    assert ds.condition_names == ["HGG", "LGG"] and ds.conditions.tolist() == [1] * 4 + [0] * 4
    p.write_text("case,label\ncaseA,LGG\n")
    with pytest.raises(DataError, match="grades.csv.*caseB.*no row"):
        load_nifti(cfg_for(root, slice_label="case", labels_csv=str(p)))
    p.write_text("patient,grade\ncaseA,LGG\n")
    with pytest.raises(DataError, match="grades.csv.*no column 'case'"):
        load_nifti(cfg_for(root, slice_label="case", labels_csv=str(p)))
    with pytest.raises(ConfigError, match="labels_csv"):
        load_nifti(cfg_for(root, slice_label="case"))


def _save(path: Path, arr, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(arr), np.eye(4) if affine is None else affine), str(path))


def test_errors_name_the_file(cases, tmp_path):
    root, a, _ = cases
    A = root / "caseA"
    empty = tmp_path / "empty"
    (empty / "x").mkdir(parents=True)
    with pytest.raises(DataError, match="empty: no case folders found"):
        load_nifti(cfg_for(empty))
    with pytest.raises(DataError, match=r"caseA: modality pattern '\*t2\*' matches no NIfTI file"):
        load_nifti(cfg_for(root, modalities=["*flair*", "*t2*"]))
    with pytest.raises(DataError, match=r"caseA: modality pattern '\*' matches 4 files"):
        load_nifti(cfg_for(root, modalities=["*"]))

    def expect(name, arr, match):
        orig = (A / name).read_bytes()
        if isinstance(arr, bytes):
            (A / name).write_bytes(arr)
        else:
            _save(A / name, arr)
        try:
            with pytest.raises(DataError, match=match):
                load_nifti(cfg_for(root, brain_mask_pattern="*brainmask*"))
        finally:
            (A / name).write_bytes(orig)

    expect("caseA_t1ce.nii.gz", b"not a nifti file at all", r"caseA_t1ce.nii.gz: cannot read NIfTI file")
    expect("caseA_t1ce.nii.gz", np.zeros((X, Y, Z + 1), np.float32) + a["t1ce"].mean(),
           r"caseA_t1ce.nii.gz: shape \(10, 12, 7\) differs from caseA_flair")
    expect("caseA_seg.nii.gz", np.zeros((X, Y, 5), np.float32), r"caseA_seg.nii.gz: label shape")
    expect("caseA_brainmask.nii.gz", np.ones((X, 11, Z), np.float32), r"caseA_brainmask.nii.gz: brain mask shape")
    nan = a["flair"].copy()
    nan[4, 4, 2] = np.nan
    expect("caseA_flair.nii.gz", nan, r"caseA_flair.nii.gz: modality volume contains 1 NaN/inf")
    expect("caseA_flair.nii.gz", np.full((X, Y, Z), 3.0, np.float32), r"caseA_flair.nii.gz: volume is constant")
    seg = a["seg"].copy()
    seg[0, 0, 0] = 0.5
    expect("caseA_seg.nii.gz", seg, r"caseA_seg.nii.gz: label volume has non-integer values \(e.g. 0.5\)")

    # --skip-bad: the broken case is listed, the other one loads
    (A / "caseA_t1ce.nii.gz").write_bytes(b"garbage")
    ds = load_nifti(DataConfig(path=str(root), source="nifti", skip_bad=True))
    assert set(ds.groups) == {"caseB"}
    assert ds.meta["skipped"][0]["path"].endswith("caseA_t1ce.nii.gz")
    assert "cannot read NIfTI file" in ds.meta["skipped"][0]["problem"]


def test_cache_hit_and_miss(cases, monkeypatch):
    root, _, _ = cases
    calls = []
    real_load = nib.load

    def counting_load(*args, **kw):
        calls.append(args[0])
        return real_load(*args, **kw)

    monkeypatch.setattr(nib, "load", counting_load)
    cfg = cfg_for(root)
    ds1 = load_nifti(cfg)
    assert len(calls) == 6 and ds1.meta["cache"]["hit"] is False  # 2 cases x (flair, t1ce, seg)
    cache_dir = Path(ds1.meta["cache"]["path"])
    assert {p.name for p in cache_dir.iterdir()} >= {"images.npy", "labels.npy", "masks.npy", "meta.json"}
    assert not [p for p in cache_dir.parent.iterdir() if p.name.endswith(".partial")]

    ds2 = load_nifti(cfg)
    assert len(calls) == 6 and ds2.meta["cache"]["hit"] is True  # no volume re-read
    assert torch.equal(ds1.images, ds2.images) and torch.equal(ds1.masks, ds2.masks)
    assert ds1.ids == ds2.ids and ds1.groups == ds2.groups and ds1.labels.tolist() == ds2.labels.tolist()
    ds2.images.mul_(0)  # copy-on-write map: the cache file is untouched
    assert torch.equal(load_nifti(cfg).images, ds1.images)

    load_nifti(cfg_for(root, min_lesion_voxels=2))  # option changed -> miss
    assert len(calls) == 12
    f = root / "caseA" / "caseA_flair.nii.gz"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # file changed -> miss
    load_nifti(cfg)
    assert len(calls) == 18


def test_resize_with_image_size(cases):
    root, _, _ = cases
    ds = load_nifti(DataConfig(path=str(root), source="nifti", image_size=8))
    assert ds.images.shape == (8, 2, 8, 8) and ds.masks.shape == (8, 8, 8)
    assert set(ds.masks.unique().tolist()) <= {0, 1, 2, 3}
    assert ds.meta["original_shapes"] == {f"{Y}x{X}": 8}
    assert any("resized" in c for c in ds.meta["conversions"])


def test_brats2015_sample_counts(tmp_path, monkeypatch):
    root = shared_path("brats2015-sample")
    cfg = DataConfig(
        path=str(root),
        source="nifti",
        nifti=NiftiConfig(
            modalities=["Flair_*", "T1c_*"],
            label_pattern="OTMultiClass*",
            brain_mask_pattern="brainmask*",
            cache_dir=str(tmp_path / "cache"),
        ),
    )
    t = time.perf_counter()
    ds = load_nifti(cfg)
    t_first = time.perf_counter() - t
    assert ds.class_counts() == {"no_lesion": 380, "lesion": 450}
    assert ds.images.shape == (830, 2, 240, 240)
    assert ds.mask_values == [0, 1, 2, 3, 4]
    with open(root / "axial_slices.csv") as f:
        rows = list(csv.DictReader(f))
    expected = {f"{r['case_dir'].split('/')[-1]}_z{int(r['z']):03d}": int(r["has_tumour"]) for r in rows}
    assert dict(zip(ds.ids, ds.labels.tolist())) == expected
    # tumour voxel counts per slice match the CSV too
    vox = {f"{r['case_dir'].split('/')[-1]}_z{int(r['z']):03d}": int(r["tumour_voxels"]) for r in rows}
    got = (ds.masks > 0).sum(dim=(1, 2)).tolist()
    assert dict(zip(ds.ids, got)) == vox
    # the second load is a cache hit that reads no volume at all; timing only as a ratio to the first load
    # (absolute times drift several-fold on a loaded CI machine)
    import medbalance.data.nifti as nifti_mod

    def no_read(path, role):
        raise AssertionError(f"cache hit read {path}")

    monkeypatch.setattr(nifti_mod, "_read_volume", no_read)
    t = time.perf_counter()
    ds2 = load_nifti(cfg)
    t_hit = time.perf_counter() - t
    assert ds2.meta["cache"]["hit"]
    assert t_hit < 0.25 * t_first, (t_hit, t_first)
    assert torch.equal(ds2.images, ds.images) and torch.equal(ds2.masks, ds.masks) and ds2.ids == ds.ids
