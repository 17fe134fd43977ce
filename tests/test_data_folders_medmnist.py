"""Class-folder and MedMNIST .npz sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medbalance.data import load_dataset
from medbalance.errors import DataError

RNG = np.random.default_rng(2)


def _tree(root, spec):
    """spec: {class: n_images}; writes 6x6 PNGs (and one JPEG per class)."""
    for c, n in spec.items():
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        for k in range(n):
            Image.fromarray(RNG.integers(0, 256, (6, 6), dtype=np.uint8)).save(d / f"im{k}.png")
    return root


def test_folders_basic(tmp_path):
    root = _tree(tmp_path / "data", {"normal": 3, "tumor": 2, "10": 0})
    (root / "10").rmdir()
    (root / "normal" / ".hidden.png").write_bytes(b"junk")  # ignored silently
    (root / ".DS_Store").write_bytes(b"junk")
    (root / "tumor" / "notes.txt").write_text("ignore me")
    sub = root / "tumor" / "scan2"
    sub.mkdir()
    a = RNG.integers(0, 256, (6, 6), dtype=np.uint8)
    Image.fromarray(np.stack([a, a, a], -1)).save(sub / "x.bmp")  # grey RGB BMP in a sub-folder
    ds = load_dataset(str(root))  # auto-detected as class folders
    assert ds.meta["source"] == "folders"
    assert ds.class_names == ["normal", "tumor"] and ds.class_counts() == {"normal": 3, "tumor": 3}
    assert ds.ids == ["normal/im0", "normal/im1", "normal/im2", "tumor/im0", "tumor/im1", "tumor/scan2/x"]
    assert ds.masks is None and ds.channels == 1
    torch.testing.assert_close(ds.images[5, 0], torch.from_numpy(a.astype(np.float32) / 127.5 - 1))
    assert "ignored 1 non-image file(s) inside class folders" in ds.meta["warnings"]
    assert "RGB with identical channels -> grayscale: 1 image" in ds.meta["conversions"]


def test_folders_errors(tmp_path):
    root = _tree(tmp_path / "data", {"a": 2, "b": 0})
    with pytest.raises(DataError, match=r"data/b: empty class 'b': no image files"):
        load_dataset(str(root))
    ds = load_dataset(str(root), skip_bad=True)
    assert ds.class_names == ["a"] and "dropped empty class(es) b" in ds.meta["warnings"]
    assert ds.meta["skipped"][0]["problem"].startswith("empty class 'b'")
    with pytest.raises(DataError, match=r"no folder for declared class\(es\) \['c'\]"):
        load_dataset(str(root), classes=["a", "c"])
    (root / "a" / "im0.png").write_bytes(b"broken")
    with pytest.raises(DataError, match=r"a/im0\.png: cannot read image"):
        load_dataset(str(root), classes=["a"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no class folders found"):
        load_dataset(str(empty))


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_medmnist_basic(tmp_path):
    imgs = RNG.integers(0, 256, (7, 5, 5), dtype=np.uint8)
    labels = np.array([[0], [2], [2], [1], [0], [2], [2]], np.uint8)
    p = _npz(tmp_path / "m.npz", train_images=imgs, train_labels=labels, val_images=imgs[:4], val_labels=labels[:4, 0])
    ds = load_dataset(p)
    assert ds.meta["source"] == "medmnist" and ds.class_names == ["0", "1", "2"]
    assert ds.class_counts() == {"0": 2, "1": 1, "2": 4}
    assert ds.ids[:2] == ["train_000000", "train_000001"]
    torch.testing.assert_close(ds.images[:, 0], torch.from_numpy(imgs.astype(np.float32) / 127.5 - 1))
    dv = load_dataset(p, split="val", classes=["normal", "benign", "malignant"], image_size=10)
    assert dv.class_names == ["normal", "benign", "malignant"] and dv.ids[-1] == "val_000003"
    assert dv.class_counts() == {"normal": 1, "benign": 1, "malignant": 2}
    assert dv.images.shape == (4, 1, 10, 10)
    # label outside declared classes
    with pytest.raises(DataError, match=r"label 2 at index 1 .* outside the 2 declared classes"):
        load_dataset(p, classes=["a", "b"])


def test_medmnist_rgb_and_errors(tmp_path):
    rgb = RNG.integers(0, 256, (4, 5, 5, 3), dtype=np.uint8)
    p = _npz(tmp_path / "c.npz", test_images=rgb, test_labels=np.array([0, 1, 1, 0]))
    ds = load_dataset(p, split="test")
    assert ds.channels == 3
    torch.testing.assert_close(ds.images[2], torch.from_numpy(rgb[2].transpose(2, 0, 1).astype(np.float32) / 127.5 - 1))
    with pytest.raises(DataError, match=r"c\.npz: missing key\(s\) train_images, train_labels for split 'train' "
                       r"\(keys present: test_images, test_labels; splits: test\)"):
        load_dataset(p)
    p2 = _npz(tmp_path / "d.npz", train_images=rgb[..., 0], train_labels=np.zeros((4, 3)))
    with pytest.raises(DataError, match="multi-label is not supported"):
        load_dataset(p2)
    p3 = _npz(tmp_path / "e.npz", train_images=rgb[..., 0], train_labels=np.zeros(3, np.int64))
    with pytest.raises(DataError, match="4 train_images but 3 train_labels"):
        load_dataset(p3)
    p4 = _npz(tmp_path / "f.npz", train_images=rgb[..., 0].astype(np.float32), train_labels=np.zeros(4, np.int64))
    with pytest.raises(DataError, match="dtype float32; MedMNIST images are uint8"):
        load_dataset(p4)
    (tmp_path / "g.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"g\.npz: cannot read \.npz"):
        load_dataset(str(tmp_path / "g.npz"))


def test_medmnist_declared_empty_class(tmp_path):
    imgs = RNG.integers(0, 256, (3, 4, 4), dtype=np.uint8)
    p = _npz(tmp_path / "m.npz", train_images=imgs, train_labels=np.array([0, 2, 2]))
    with pytest.raises(DataError, match=r"empty class\(es\) \['b'\]: declared but no samples in split 'train'"):
        load_dataset(p, classes=["a", "b", "c"])
    ds = load_dataset(p)
    assert ds.class_counts() == {"0": 1, "1": 0, "2": 2}
    assert "class(es) 1 have no samples in split 'train'" in ds.meta["warnings"]


def test_real_pneumoniamnist(shared):
    p = shared("pneumoniamnist-imbalanced", "pneumoniamnist.npz")
    ds = load_dataset(str(p))
    assert ds.class_counts() == {"0": 388, "1": 3494}
    assert ds.images.shape == (3882, 1, 28, 28) and ds.intensity.kind == "uint8"
    raw = np.load(p)["train_images"][17].astype(np.float32)
    torch.testing.assert_close(ds.images[17, 0], torch.from_numpy(raw / 127.5 - 1))
