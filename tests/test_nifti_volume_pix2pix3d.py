"""NIfTI volume mode (crop to the brain, resample, label map alongside, cache), 3-D pix2pix on volumes, and NIfTI
export with the source's affine adjusted for crop and resample. Tiny self-made volumes, plus the BraTS sample."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import shared_path
from medbalance.cli.main import app
from medbalance.data.config import DataConfig
from medbalance.data.nifti import load_nifti, tensor_to_volume, volume_to_tensor
from medbalance.errors import ConfigError
from medbalance.synthesis.export import export_dataset
from medbalance.training.run import load_run

X, Y, Z = 20, 24, 12
SHAPE = (8, 8, 4)  # X, Y, Z after resampling
LPS = np.array([[-1.5, 0, 0, 30.0], [0, -1.2, 0, 20.0], [0, 0, 2.0, -10.0], [0, 0, 0, 1]])


def _make_case(root: Path, name: str, seed: int, affine: np.ndarray) -> None:
    rng = np.random.default_rng(seed)
    d = root / name
    d.mkdir(parents=True)
    brain = np.zeros((X, Y, Z), bool)
    brain[3 + seed : 17, 4:21 - seed, 2:10] = True
    flair = np.zeros((X, Y, Z), np.float32)
    flair[brain] = rng.normal(100, 10, int(brain.sum()))
    seg = np.zeros((X, Y, Z), np.float32)
    seg[6:10, 8:12, 4:7] = 2
    seg[7:9, 9:11, 5] = 4
    flair[seg > 0] += 80  # the lesion is bright
    for k, v in (("flair", flair), ("seg", seg), ("brainmask", brain.astype(np.float32))):
        nib.save(nib.Nifti1Image(v, affine), str(d / f"{name}_{k}.nii.gz"))


@pytest.fixture
def volumes(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDBALANCE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    for i in range(3):
        _make_case(root, f"case{i}", i, LPS if i == 1 else np.diag([1.5, 1.2, 2.0, 1.0]))
    return root


def _cfg(root, **nifti) -> DataConfig:
    n = {"modalities": ["*flair*"], "label_pattern": "*seg*", "brain_mask_pattern": "*brainmask*", "mode": "volume",
         "volume_shape": list(SHAPE)}
    n.update(nifti)
    return DataConfig.from_dict({"path": str(root), "source": "nifti", "nifti": n})


def _expected(case_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: the resampled label volume (X, Y, Z) and its affine, with nibabel + numpy only."""
    name = case_dir.name
    seg = nib.as_closest_canonical(nib.load(str(case_dir / f"{name}_seg.nii.gz")))
    brain = np.asarray(nib.as_closest_canonical(nib.load(str(case_dir / f"{name}_brainmask.nii.gz"))).dataobj) > 0.5
    lab = np.asarray(seg.dataobj)
    idx = np.nonzero(brain)
    start = np.array([i.min() for i in idx])
    size = np.array([i.max() + 1 for i in idx]) - start
    scale = size / np.array(SHAPE)
    # nearest sample of output voxel i: source voxel start + floor((i + 0.5) * scale)
    axes = [start[a] + np.floor((np.arange(SHAPE[a]) + 0.5) * scale[a]).astype(int) for a in range(3)]
    want_lab = lab[np.ix_(*axes)]
    m = np.eye(4)
    m[:3, :3] = np.diag(scale)
    m[:3, 3] = start + 0.5 * scale - 0.5  # voxel centre i -> source voxel start + (i + 0.5) * scale - 0.5
    return want_lab, seg.affine @ m


def test_volume_mode_crops_resamples_and_keeps_geometry(volumes, tmp_path):
    ds = load_nifti(_cfg(volumes))
    assert ds.images.shape == (3, 1, SHAPE[2], SHAPE[1], SHAPE[0]) and ds.masks.shape == (3, 4, 8, 8)
    assert ds.ids == ["case0", "case1", "case2"] and ds.groups == ds.ids
    assert ds.class_names == ["no_lesion", "lesion"] and ds.labels.tolist() == [1, 1, 1]
    assert ds.mask_values == [0, 2, 4]
    assert ds.images.min() >= -1 and ds.images.max() <= 1
    for i, case in enumerate(ds.ids):
        want_lab, want_aff = _expected(volumes / case)
        np.testing.assert_allclose(ds.meta["volume_affines"][case], want_aff, atol=1e-5)
        got = np.asarray(ds.mask_values)[tensor_to_volume(ds.masks[i].numpy())]
        assert np.array_equal(got, want_lab), case
    # the lesion is bright in the resampled image too (image and label map stay aligned)
    img = ds.images[:, 0]
    assert img[ds.masks > 0].mean() > img[(ds.masks == 0) & (img > -0.9)].mean() + 0.2
    # layout helpers are inverse to each other
    v = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    assert np.array_equal(tensor_to_volume(volume_to_tensor(v)), v)
    assert volume_to_tensor(v)[0, 4, 0, 1] == v[0, 1, 4 - 1 - 0, 4]  # t[c, z, h, w] = v[c, w, Y-1-h, z]
    # export: NIfTI in RAS voxel order with the adjusted affine; the label map comes back unchanged
    manifest = export_dataset(tmp_path / "out", ds.subset([1]), [{"parent_mask_id": "case1"}], real=ds)
    rows = list(csv.DictReader(open(manifest)))
    syn = [r for r in rows if r["synthetic"] == "1"][0]
    want_lab, want_aff = _expected(volumes / "case1")
    for key in ("image", "mask"):
        img_nii = nib.load(str(tmp_path / "out" / syn[key]))
        np.testing.assert_allclose(img_nii.affine, want_aff, atol=1e-5)
        assert img_nii.shape == SHAPE
    assert np.array_equal(np.asarray(nib.load(str(tmp_path / "out" / syn["mask"])).dataobj), want_lab)
    back = np.asarray(nib.load(str(tmp_path / "out" / syn["image"])).dataobj)
    np.testing.assert_allclose(volume_to_tensor(back), ds.intensity.unscale(ds.images[1, 0]).numpy(), atol=1e-5)


def test_volume_cache_and_errors(volumes):
    cfg = _cfg(volumes)
    a = load_nifti(cfg)
    assert a.meta["cache"]["hit"] is False
    b = load_nifti(cfg)
    assert b.meta["cache"]["hit"] is True and torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert b.meta["volume_affines"] == a.meta["volume_affines"]
    c = load_nifti(_cfg(volumes, volume_shape=[4, 4, 2]))  # another shape: another cache entry
    assert c.meta["cache"]["hit"] is False and c.images.shape[2:] == (2, 4, 4)
    # slice mode ignores the volume options: its cache entry is shared whatever they are
    s1 = load_nifti(_cfg(volumes, mode="slices"))
    s2 = load_nifti(_cfg(volumes, mode="slices", volume_shape=[4, 4, 2]))
    assert s2.meta["cache"]["hit"] is True and s1.images.dim() == 4
    with pytest.raises(ConfigError, match="volume_shape"):
        _cfg(volumes, volume_shape=[8, 0, 4])
    cfg = DataConfig.from_dict({**_cfg(volumes).model_dump(), "image_size": 16})
    with pytest.raises(ConfigError, match="nifti.volume_shape"):
        load_nifti(cfg)


def _train_and_generate(tmp_path: Path, data_cfg: dict, cls: str = "lesion") -> tuple[Path, Path]:
    cfg = {"out_dir": str(tmp_path / "run"), "data": data_cfg,
           "model": {"name": "pix2pix", "preset": "paper",
                     "params": {"spatial_dims": 3, "num_downs": None, "ngf": 4, "ndf": 4}},
           "train": {"steps": 3, "batch_size": 2, "checkpoint_every": 3, "sample_every": 3, "tensorboard": False,
                     "device": "cpu", "precision": "fp32"}}
    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    r = runner.invoke(app, ["train", "--config", str(p)])
    assert r.exit_code == 0, r.output
    run = load_run(tmp_path / "run")
    assert run.config.train.flip is True and run.config.model.params["spatial_dims"] == 3
    assert (tmp_path / "run" / "samples" / "step_000003.png").is_file()  # middle-slice grid of the volumes
    out = tmp_path / "gen"
    r = runner.invoke(app, ["generate", str(tmp_path / "run"), "--n", "2", "--class", cls, "--out", str(out),
                            "--device", "cpu"])
    assert r.exit_code == 0, r.output
    return tmp_path / "run", out


def _check_synthetic_niftis(out: Path, ds, shape_xyz: tuple[int, int, int]) -> None:
    rows = [r for r in csv.DictReader(open(out / "manifest.csv")) if r["synthetic"] == "1"]
    assert rows
    for r in rows:
        parent = r["parent_mask_id"]
        assert parent in ds.meta["volume_affines"]
        img = nib.load(str(out / r["image"]))
        msk = nib.load(str(out / r["mask"]))
        assert img.shape[:3] == shape_xyz and msk.shape == shape_xyz
        np.testing.assert_allclose(img.affine, ds.meta["volume_affines"][parent], atol=1e-5)
        np.testing.assert_allclose(msk.affine, ds.meta["volume_affines"][parent], atol=1e-5)
        # the label map is the parent's: a real mask rendered by the generator
        i = ds.ids.index(parent)
        want = np.asarray(ds.mask_values)[tensor_to_volume(ds.masks[i].numpy())]
        assert np.array_equal(np.asarray(msk.dataobj), want)
        assert np.isfinite(np.asarray(img.dataobj)).all()


def test_pix2pix_3d_trains_and_generates_niftis_on_tiny_volumes(volumes, tmp_path):
    data = _cfg(volumes).model_dump(mode="json")
    run, out = _train_and_generate(tmp_path, data)
    _check_synthetic_niftis(out, load_nifti(_cfg(volumes)), SHAPE)


def test_pix2pix_3d_on_the_brats_sample(tmp_path, monkeypatch):
    root = shared_path("brats2015-sample")
    monkeypatch.setenv("MEDBALANCE_CACHE", str(tmp_path / "cache"))
    shape = (32, 32, 16)
    # two made-up case classes (4 : 2), so that there is something to rebalance
    labels = tmp_path / "labels.csv"
    labels.write_text("case,label\n" + "".join(f"brats_2013_pat000{i}_1,{'a' if i <= 4 else 'b'}\n" for i in range(1, 7)))
    data = {"path": str(root), "source": "nifti",
            "nifti": {"modalities": ["Flair*", "T1c*"], "label_pattern": "OTMulti*", "brain_mask_pattern": "brainmask*",
                      "mode": "volume", "volume_shape": list(shape), "slice_label": "case", "labels_csv": str(labels)}}
    ds = load_nifti(DataConfig.from_dict(data))
    assert ds.images.shape == (6, 2, 16, 32, 32) and ds.mask_values == [0, 1, 2, 3, 4]
    assert ds.class_names == ["a", "b"] and ds.labels.tolist().count(1) == 2
    # the affine is the source's (1 mm, RAS) adjusted for the brain crop and the resample
    case = ds.meta["cases"][0]
    (x0, x1), (y0, y1), (z0, z1) = case["crop_box"]
    src = np.asarray(case["affine"])
    scale = np.array([x1 - x0, y1 - y0, z1 - z0]) / np.array(shape)
    want = src.copy()
    want[:3, :3] = src[:3, :3] @ np.diag(scale)
    want[:3, 3] = src[:3, :3] @ (np.array([x0, y0, z0]) + 0.5 * scale - 0.5) + src[:3, 3]
    np.testing.assert_allclose(ds.meta["volume_affines"][case["case"]], want, atol=1e-5)
    run, out = _train_and_generate(tmp_path, data, cls="b")
    _check_synthetic_niftis(out, ds, shape)
    # rebalance writes real and synthetic volumes, each with its own / its parent's affine
    r = CliRunner().invoke(app, ["rebalance", str(root), str(tmp_path / "reb"), "--run", str(run),
                                 "--device", "cpu"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(open(tmp_path / "reb" / "manifest.csv")))
    assert sum(r["synthetic"] == "1" for r in rows) == 2 and sum(r["synthetic"] == "0" for r in rows) == 6
    real = next(r for r in rows if r["synthetic"] == "0")
    np.testing.assert_allclose(nib.load(str(tmp_path / "reb" / real["image"])).affine,
                               ds.meta["volume_affines"][real["id"]], atol=1e-5)
    _check_synthetic_niftis(tmp_path / "reb", ds, shape)


def test_inspect_cli_volume_mode(volumes, tmp_path):
    args = ["inspect", str(volumes), "--source", "nifti", "--modality", "*flair*", "--label-pattern", "*seg*",
            "--brain-mask-pattern", "*brainmask*", "--nifti-mode", "volume", "--volume-shape", "8,8,4"]
    r = CliRunner().invoke(app, args + ["--json", "--plot", str(tmp_path / "p.png")])
    assert r.exit_code == 0, r.output
    assert '"n_samples": 3' in r.output and (tmp_path / "p.png").is_file()
    r = CliRunner().invoke(app, args[:-1] + ["8,8"])
    assert r.exit_code == 2 and "--volume-shape must be three integers" in r.output
