"""Manifest CSV source: columns, classes, masks, geometry, intensity, every bad-input error, real data."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from medbalance.data import load_dataset
from medbalance.errors import DataError

RNG = np.random.default_rng(1)


def _img(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


def _make(tmp_path, n_per_class=(3, 2), size=(8, 8), masks=True, header="id,image,mask,label"):
    """Tiny manifest dataset; returns (csv path, {id: (image array, mask array, label)})."""
    rows, truth = [header], {}
    k = 0
    for c, n in zip(("benign", "malignant"), n_per_class):
        for _ in range(n):
            a = _img(tmp_path / "images" / f"s{k}.png", RNG.integers(0, 256, size, dtype=np.uint8))
            m = np.zeros(size, np.uint8)
            m[: size[0] // 2, : size[1] // 2] = 255
            if masks:
                _img(tmp_path / "masks" / f"s{k}.png", m)
            cells = {"id": f"case{k}", "image": f"images/s{k}.png", "mask": f"masks/s{k}.png", "label": c}
            rows.append(",".join(cells[h] for h in header.split(",")))
            truth[f"case{k}"] = (a, m, c)
            k += 1
    p = tmp_path / "labels.csv"
    p.write_text("\n".join(rows) + "\n")
    return p, truth


def test_basic_load(tmp_path):
    p, truth = _make(tmp_path)
    ds = load_dataset(str(p))
    assert ds.class_names == ["benign", "malignant"]
    assert ds.class_counts() == {"benign": 3, "malignant": 2}
    assert ds.ids == [f"case{k}" for k in range(5)]
    assert ds.images.shape == (5, 1, 8, 8) and ds.images.dtype == torch.float32
    assert ds.mask_values == [0, 255]
    for i, sid in enumerate(ds.ids):
        a, m, c = truth[sid]
        torch.testing.assert_close(ds.images[i, 0], torch.from_numpy(a.astype(np.float32) / 127.5 - 1.0))
        assert torch.equal(ds.masks[i], torch.from_numpy((m == 255).astype(np.int64)))
        assert ds.class_names[int(ds.labels[i])] == c
    assert ds.intensity.kind == "uint8" and (ds.intensity.lo, ds.intensity.hi) == (0.0, 255.0)
    m = ds.meta
    assert m["source"] == "manifest" and m["path"] == str(p)
    assert m["original_shapes"] == {"8x8": 5} and m["source_dtype"] == "uint8"
    assert m["conversions"] == [] and m["skipped"] == [] and m["warnings"] == []
    # inverse scaling restores the stored bytes exactly
    a0 = truth[ds.ids[0]][0]
    np.testing.assert_array_equal(ds.intensity.to_storage(ds.images[0, 0]), a0)


def test_ids_default_to_stem_and_no_mask_column(tmp_path):
    p, _ = _make(tmp_path, masks=False, header="image,label")
    ds = load_dataset(str(p))
    assert ds.ids == [f"s{k}" for k in range(5)] and ds.masks is None and ds.mask_values is None


def test_declared_classes(tmp_path):
    p, _ = _make(tmp_path)
    ds = load_dataset(str(p), classes=["malignant", "benign"])
    assert ds.class_names == ["malignant", "benign"] and ds.class_counts() == {"malignant": 2, "benign": 3}
    with pytest.raises(DataError, match=r"labels\.csv: unknown label 'malignant' \(declared classes: benign\) \(row 5"):
        load_dataset(str(p), classes=["benign"])
    with pytest.raises(DataError, match=r"labels\.csv: empty class\(es\) 'normal': declared but no rows"):
        load_dataset(str(p), classes=["benign", "malignant", "normal"])


def test_missing_column_lists_available(tmp_path):
    p, _ = _make(tmp_path)
    with pytest.raises(DataError, match=r"missing column 'diagnosis' \(available columns: id, image, mask, label\)"):
        load_dataset(str(p), label_column="diagnosis")
    with pytest.raises(DataError, match=r"missing column 'site'"):
        load_dataset(str(p), condition_column="site")


def test_empty_manifest(tmp_path):
    p = tmp_path / "e.csv"
    p.write_text("")
    with pytest.raises(DataError, match=r"e\.csv: empty manifest \(no header"):
        load_dataset(str(p))
    p.write_text("id,image,mask,label\n")
    with pytest.raises(DataError, match=r"e\.csv: empty manifest: the header has no rows"):
        load_dataset(str(p))


def test_duplicate_ids(tmp_path):
    p, _ = _make(tmp_path)
    lines = p.read_text().splitlines()
    lines.append(lines[1])
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"duplicate id 'case0' \(first on row 2\) \(row 7 of labels\.csv\)"):
        load_dataset(str(p))


def test_path_outside_root(tmp_path):
    root = tmp_path / "data"
    p, _ = _make(root)
    _img(tmp_path / "outside.png", np.zeros((8, 8), np.uint8))
    p.write_text(p.read_text() + "x,../outside.png,,benign\n")
    with pytest.raises(DataError, match=r"image path '\.\./outside\.png' resolves outside the manifest folder"):
        load_dataset(str(p))
    p2, _ = _make(tmp_path / "d2")
    p2.write_text(p2.read_text() + f"x,{tmp_path / 'outside.png'},,benign\n")
    with pytest.raises(DataError, match="resolves outside the manifest folder"):
        load_dataset(str(p2))


def test_bad_files(tmp_path):
    p, _ = _make(tmp_path)
    (tmp_path / "images" / "s1.png").unlink()
    with pytest.raises(DataError, match=r"images/s1\.png: image file not found \(row 3 of labels\.csv\)"):
        load_dataset(str(p))
    (tmp_path / "images" / "s1.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"images/s1\.png: cannot read image: not a readable image"):
        load_dataset(str(p))
    _img(tmp_path / "images" / "s1.png", np.zeros((8, 9), np.uint8))
    with pytest.raises(DataError, match=r"masks/s1\.png: mask size 8x8 differs from image size 8x9"):
        load_dataset(str(p))
    _img(tmp_path / "images" / "s1.png", np.full((8, 8), 5, np.uint8))
    _img(tmp_path / "masks" / "s2.png", np.full((8, 8), 7, np.uint8))
    with pytest.raises(DataError, match=r"masks/s2\.png: mask values \{7\} are outside the declared mask_values \[0, 255\]"):
        load_dataset(str(p), mask_values=[0, 255])
    # without a declaration the values are inferred (union), and s1 (constant) only warns
    ds = load_dataset(str(p))
    assert ds.mask_values == [0, 7, 255]
    assert any("constant image" in w and "case1" in w for w in ds.meta["warnings"])


def test_nan_float_image(tmp_path):
    p = tmp_path / "m.csv"
    f = np.ones((4, 4), np.float32)
    Image.fromarray(f).save(tmp_path / "a.tif")
    f[0, 0] = np.nan
    Image.fromarray(f).save(tmp_path / "b.tif")
    p.write_text("image,label\na.tif,x\nb.tif,y\n")
    with pytest.raises(DataError, match=r"b\.tif: image contains 1 NaN and 0 infinite values \(row 3 of m\.csv\)"):
        load_dataset(str(p))


def test_skip_bad(tmp_path):
    p, _ = _make(tmp_path)
    (tmp_path / "images" / "s0.png").write_bytes(b"garbage")
    (tmp_path / "masks" / "s4.png").unlink()
    (tmp_path / "masks" / "s3.png").unlink()
    with pytest.raises(DataError, match=r"s3\.png: mask file not found .*\(and 1 more bad input\); set skip_bad=true"):
        load_dataset(str(p))
    _img(tmp_path / "masks" / "s3.png", np.zeros((8, 8), np.uint8))
    ds = load_dataset(str(p), skip_bad=True)
    assert ds.ids == ["case1", "case2", "case3"]
    skipped = ds.meta["skipped"]
    assert {s["path"].split("/")[-1] for s in skipped} == {"s0.png", "s4.png"}
    assert any("mask file not found" in s["problem"] for s in skipped)
    assert any("skipped 2 bad row(s)" in w for w in ds.meta["warnings"])
    for k in range(5):
        (tmp_path / "images" / f"s{k}.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="no usable rows: all 5 rows were bad"):
        load_dataset(str(p), skip_bad=True)


def test_empty_mask_cells_are_background(tmp_path):
    p, _ = _make(tmp_path)
    lines = p.read_text().splitlines()
    lines[1] = "case0,images/s0.png,,benign"
    p.write_text("\n".join(lines) + "\n")
    ds = load_dataset(str(p))
    assert int(ds.masks[0].sum()) == 0 and int(ds.masks[1].sum()) == 16
    assert any("1 row(s) have no mask" in w for w in ds.meta["warnings"])


def test_conditions_groups(tmp_path):
    p, _ = _make(tmp_path)
    lines = p.read_text().splitlines()
    lines[0] += ",site,patient"
    sites = ["10", "2", "2", "10", "2"]
    for i in range(1, 6):
        lines[i] += f",{sites[i - 1]},p{(i - 1) // 2}"
    p.write_text("\n".join(lines) + "\n")
    ds = load_dataset(str(p), condition_column="site", group_column="patient")
    assert ds.condition_names == ["2", "10"]  # numeric order
    assert ds.conditions.tolist() == [1, 0, 0, 1, 0]
    assert ds.groups == ["p0", "p0", "p1", "p1", "p2"]


def test_mixed_sizes_pad_to_most_common(tmp_path):
    _img(tmp_path / "a.png", np.full((8, 8), 200, np.uint8))
    _img(tmp_path / "b.png", np.full((8, 8), 100, np.uint8))
    _img(tmp_path / "c.png", np.full((4, 8), 255, np.uint8))  # wide: padded top/bottom to 8x8
    Image.fromarray(np.full((4, 8), 255, np.uint8)).save(tmp_path / "cm.png")
    p = tmp_path / "m.csv"
    p.write_text("image,mask,label\na.png,,x\nb.png,,x\nc.png,cm.png,y\n")
    ds = load_dataset(str(p))
    assert ds.meta["original_shapes"] == {"4x8": 1, "8x8": 2}
    assert ds.images.shape == (3, 1, 8, 8)
    assert any("resized to the most common size 8x8" in w for w in ds.meta["warnings"])
    c = ds.images[2, 0]
    assert torch.all(c[:2] == -1) and torch.all(c[6:] == -1) and torch.allclose(c[2:6], torch.ones(4, 8))
    assert ds.masks[2, :2].sum() == 0 and torch.all(ds.masks[2, 2:6] == 1)


def test_resize_policies_and_mask_nearest(tmp_path):
    a = RNG.integers(0, 256, (20, 40), dtype=np.uint8)
    m = (RNG.random((20, 40)) > 0.5).astype(np.uint8) * 3
    _img(tmp_path / "a.png", a)
    _img(tmp_path / "m.png", m)
    p = tmp_path / "m.csv"
    p.write_text("image,mask,label\na.png,m.png,x\n")
    for policy in ("pad", "stretch", "crop"):
        ds = load_dataset(str(p), image_size=16, resize_policy=policy)
        assert ds.images.shape == (1, 1, 16, 16) and ds.masks.shape == (1, 16, 16)
        assert set(ds.masks.unique().tolist()) <= {0, 1} and ds.mask_values == [0, 3]
        assert ds.images.min() >= -1 and ds.images.max() <= 1
        assert any(f"aspect ratio differs from 16x16: {policy}" in c for c in ds.meta["conversions"])
    ds = load_dataset(str(p), image_size=16, resize_policy="crop")
    # independent check: centre crop 20x20 then antialiased bilinear resize
    crop = torch.from_numpy(a[:, 10:30].astype(np.float32))[None, None]
    ref = torch.nn.functional.interpolate(crop, size=(16, 16), mode="bilinear", antialias=True) / 127.5 - 1
    torch.testing.assert_close(ds.images, ref, atol=1e-5, rtol=0)
    ds = load_dataset(str(p), image_size=16, resize_policy="pad")
    assert torch.all(ds.images[0, 0, :3] == -1)  # 20x40 -> 40x40 with 10 rows of background each side


def test_colour_and_gray_mixed(tmp_path):
    g = RNG.integers(0, 256, (6, 6), dtype=np.uint8)
    rgb = np.stack([g, 255 - g, g // 2], -1)
    _img(tmp_path / "g.png", g)
    _img(tmp_path / "c.png", rgb)
    rgba = np.concatenate([rgb, np.full((6, 6, 1), 9, np.uint8)], -1)
    _img(tmp_path / "ca.png", rgba)
    p = tmp_path / "m.csv"
    p.write_text("image,label\ng.png,a\nc.png,a\nca.png,b\n")
    ds = load_dataset(str(p))
    assert ds.channels == 3
    assert torch.equal(ds.images[0, 0], ds.images[0, 2])  # replicated
    assert torch.equal(ds.images[1], ds.images[2])  # alpha dropped
    conv = ds.meta["conversions"]
    assert "RGBA -> RGB (alpha channel dropped): 1 image" in conv
    assert "grayscale replicated to 3 channels: 1 image" in conv
    ds1 = load_dataset(str(p), channels=1)
    luma = (rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])) / 127.5 - 1
    np.testing.assert_allclose(ds1.images[1, 0].numpy(), luma, atol=1e-5)
    assert "RGB -> grayscale (ITU-R 601 luma 0.299R+0.587G+0.114B): 2 images" in ds1.meta["conversions"]


def test_16bit_intensity(tmp_path):
    a = np.array([[0, 1000], [2000, 4000]], np.uint16)
    _img(tmp_path / "a.png", a)
    _img(tmp_path / "b.png", (a // 2).astype(np.uint16))
    p = tmp_path / "m.csv"
    p.write_text("image,label\na.png,x\nb.png,y\n")
    ds = load_dataset(str(p))
    assert ds.intensity.kind == "uint16" and ds.intensity.hi == 65535.0 and ds.meta["source_dtype"] == "uint16"
    torch.testing.assert_close(ds.images[0, 0], torch.from_numpy(a.astype(np.float32) / 32767.5 - 1))
    assert any("intensity_range='data'" in w for w in ds.meta["warnings"])
    ds = load_dataset(str(p), intensity_range="data")
    assert (ds.intensity.lo, ds.intensity.hi) == (0.0, 4000.0)
    torch.testing.assert_close(ds.images[0, 0], torch.from_numpy(a.astype(np.float32) / 2000 - 1))
    np.testing.assert_array_equal(ds.intensity.to_storage(ds.images[1, 0]), a // 2)


def test_real_brain_tumor_manifest(shared):
    p = shared("brain-tumor-mri", "labels.csv")
    t, c = time.perf_counter(), time.process_time()
    ds = load_dataset(str(p), image_size=64)
    dt, dc = time.perf_counter() - t, time.process_time() - c
    print(f"brain-tumor-mri manifest (3064 images + masks, resized to 64): wall {dt:.1f} s, CPU {dc:.1f} s")
    assert ds.class_counts() == {"glioma": 1426, "meningioma": 708, "pituitary_tumor": 930}
    assert ds.mask_values == [0, 255] and ds.masks.shape == (3064, 64, 64)
    assert ds.meta["original_shapes"] == {"256x256": 3064} and ds.meta["skipped"] == []
    assert ds.channels == 1 and ds.images.min() >= -1 and ds.images.max() <= 1
    assert bool((ds.masks.flatten(1).amax(1) == 1).all())  # every image has a non-empty mask
