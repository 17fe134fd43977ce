"""``medbalance inspect`` / ``datasets make phantom`` end to end, and inspect_dataset numbers."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import medbalance.cli.data_cmds  # noqa: F401  (registers the commands)
from conftest import shared_path
from medbalance.cli.app import app
from medbalance.data.dataset import ImageDataset, IntensityInfo
from medbalance.data.inspect import inspect_dataset, render_inspection
from test_data_nifti import LPS, make_case

runner = CliRunner()


@pytest.fixture
def nifti_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDBALANCE_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "data"
    make_case(root, "caseA", 0)
    make_case(root, "caseB", 1, affine=LPS)
    return root


def test_inspect_numbers_on_a_hand_made_dataset():
    # 5 + 2 samples, one exact duplicate pair, masks with known coverage, uint8 intensity
    imgs = torch.linspace(-1, 1, 7)[:, None, None, None].expand(7, 1, 4, 4).clone()
    imgs[6] = imgs[0]
    masks = torch.zeros(7, 4, 4, dtype=torch.int64)
    masks[5, :2, :] = 1  # 8/16 pixels of value index 1
    masks[6, 0, 0] = 2  # 1/16 pixels of index 2
    ds = ImageDataset(
        images=imgs,
        labels=torch.tensor([0, 0, 0, 0, 0, 1, 1]),
        class_names=["a", "b"],
        ids=[f"s{i}" for i in range(7)],
        masks=masks,
        mask_values=[0, 128, 255],
        groups=["p1", "p1", "p2", "p3", "p3", "p3", "p4"],
        intensity=IntensityInfo("uint8", 0, 255),
        meta={"original_shapes": {"4x4": 6, "8x8": 1}, "skipped": [{"path": "x.png", "problem": "bad"}],
              "warnings": ["from the source"]},
    )
    r = inspect_dataset(ds)
    json.dumps(r)
    assert r["class_counts"] == {"a": 5, "b": 2}
    assert r["imbalance_ratio"] == pytest.approx(2.5)
    assert r["intensity"]["source_min"] == pytest.approx(0.0) and r["intensity"]["source_max"] == pytest.approx(212.5)  # image 5: 2*5/6-1
    pc = r["masks"]["per_class"]
    assert pc["a"]["foreground_fraction"] == 0.0
    assert pc["b"]["foreground_fraction"] == pytest.approx((8 / 16 + 1 / 16) / 2)
    assert pc["b"]["value_fractions"] == pytest.approx({"0": (8 / 16 + 15 / 16) / 2, "128": 0.25, "255": 1 / 32})
    assert r["groups"]["per_class"] == {"a": 3, "b": 2} and r["groups"]["groups_in_several_classes"] == 1
    w = " | ".join(r["warnings"])
    assert "1 duplicate images by content" in w and "conflicting labels" in w
    assert "class 'b' has only 2 samples" in w and "mixed image sizes" in w
    assert "1 files skipped (first: x.png: bad)" in w and "from the source" in w
    render_inspection(r)  # renders without error


def test_inspect_cli_table_json_plot(nifti_root, tmp_path):
    png, js = tmp_path / "out" / "plot.png", tmp_path / "rep.json"
    res = runner.invoke(app, ["inspect", str(nifti_root), "--plot", str(png), "--json-out", str(js)])
    assert res.exit_code == 0, res.output
    assert "no_lesion" in res.stdout and "lesion" in res.stdout and "imbalance" in res.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert json.loads(js.read_text())["class_counts"] == {"no_lesion": 4, "lesion": 4}

    res = runner.invoke(app, ["inspect", str(nifti_root), "--json", "--min-lesion-voxels", "2",
                              "--modality", "*t1ce*", "--label-pattern", "*seg*"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["source"] == "nifti" and r["class_counts"] == {"no_lesion": 4, "lesion": 2}
    assert r["channels"] == 1 and r["loaded_shape"] == [1, 12, 10]
    assert r["masks"]["mask_values"] == [0, 1, 2, 4] and r["groups"]["n_groups"] == 2


def test_inspect_cli_config_yaml(nifti_root, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("data:\n  source: nifti\n  image_size: 8\n  nifti:\n    normalization: minmax\n")
    res = runner.invoke(app, ["inspect", str(nifti_root), "--config", str(cfg), "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["loaded_shape"] == [2, 8, 8] and r["intensity"]["scaling"] == {"kind": "float", "lo": 0.0, "hi": 1.0}
    cfg.write_text("data:\n  nifti:\n    normalisation: minmax\n")  # typo -> config error
    res = runner.invoke(app, ["inspect", str(nifti_root), "--config", str(cfg)])
    assert res.exit_code == 2 and "unknown key" in res.stderr


def test_inspect_cli_errors_exit_2_one_line(nifti_root):
    (nifti_root / "caseB" / "caseB_flair.nii.gz").write_bytes(b"broken")
    res = runner.invoke(app, ["inspect", str(nifti_root)])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "caseB_flair.nii.gz" in lines[0]
    assert "cannot read NIfTI file" in lines[0]
    res = runner.invoke(app, ["inspect", str(nifti_root), "--skip-bad", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["groups"]["n_groups"] == 1
    res = runner.invoke(app, ["inspect", str(nifti_root / "missing")])
    assert res.exit_code == 2 and res.stderr.startswith("error: ") and "missing" in res.stderr
    res = runner.invoke(app, ["inspect", str(nifti_root), "--no-such-option"])
    assert res.exit_code == 2
    res = runner.invoke(app, ["inspect", str(nifti_root), "--min-lesion-voxels", "abc"])
    assert res.exit_code == 2


def test_datasets_make_phantom(tmp_path):
    out = tmp_path / "ph"
    res = runner.invoke(app, ["datasets", "make", "phantom", str(out), "--n", "12", "--size", "32",
                              "--imbalance", "3,1", "--seed", "1"])
    assert res.exit_code == 0, res.output
    manifest = out / "manifest.csv"
    assert manifest.is_file() and str(manifest) in res.stdout
    res = runner.invoke(app, ["inspect", str(manifest), "--json"])
    assert res.exit_code == 0, res.output
    counts = json.loads(res.stdout)["class_counts"]
    assert sum(counts.values()) == 12 and sorted(counts.values()) == [3, 9]
    res = runner.invoke(app, ["datasets", "make", "phantom", str(tmp_path / "x"), "--imbalance", "3,a"])
    assert res.exit_code == 2 and res.stderr.startswith("error: --imbalance")


@pytest.mark.slow
def test_inspect_brain_tumor_mri(tmp_path):
    root = shared_path("brain-tumor-mri")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("image_size: 32\n")  # bare DataConfig; small tensors keep this test fast
    res = runner.invoke(app, ["inspect", str(root / "labels.csv"), "--config", str(cfg), "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["class_counts"] == {"glioma": 1426, "meningioma": 708, "pituitary_tumor": 930}
    assert r["imbalance_ratio"] == pytest.approx(1426 / 708)
    assert r["original_shapes"] == {"256x256": 3064}
    m = r["masks"]
    assert m["mask_values"] == [0, 255]
    # tumours cover ~1-3 % of a slice; nearest resize to 32x32 may erase a tiny one or two
    assert 0.005 < m["foreground_fraction"] < 0.05 and m["empty_masks"] <= 3
