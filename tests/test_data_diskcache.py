"""The on-disk pixel cache and lazy (disk-backed) datasets: same samples as in memory, cache reuse and
invalidation, bad files, lazy views, and the consumers that walk a dataset (inspect, training batches)."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medbalance.data import load_dataset
from medbalance.data.cache import ConcatRows, DiskArray, ImageConverter
from medbalance.data.inspect import inspect_dataset
from medbalance.errors import DataError

RNG = np.random.default_rng(7)


def _manifest(root: Path, n: int = 24, size=(16, 16), colour_every: int = 3, masks: bool = True,
              extra_cols: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = ["id,image,mask,label,site,group" if extra_cols else "image,mask,label"]
    for i in range(n):
        shape = (*size, 3) if colour_every and i % colour_every == 0 else size
        Image.fromarray(RNG.integers(0, 256, shape, dtype=np.uint8)).save(root / f"i{i}.png")
        m = np.zeros(size, np.uint8)
        m[RNG.random(size) > 0.6] = 1 + i % 3  # values 1..3
        if masks:
            Image.fromarray(m).save(root / f"m{i}.png")
        label = "rare" if i % 5 == 0 else "common"
        if extra_cols:
            rows.append(f"s{i},i{i}.png,{'m%d.png' % i if masks and i % 7 else ''},{label},site{i % 2},p{i // 4}")
        else:
            rows.append(f"i{i}.png,{'m%d.png' % i if masks else ''},{label}")
    p = root / "labels.csv"
    p.write_text("\n".join(rows) + "\n")
    return p


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDBALANCE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _all(x):
    return x[torch.arange(len(x))] if isinstance(x, (DiskArray, ConcatRows)) else x


def test_disk_dataset_gives_the_in_memory_samples(tmp_path, cache_env):
    p = _manifest(tmp_path / "d")
    kw = dict(condition_column="site")
    mem = load_dataset(str(p), storage="memory", **kw)
    disk = load_dataset(str(p), storage="disk", **kw)
    assert isinstance(disk.images, DiskArray) and isinstance(disk.masks, DiskArray)
    assert isinstance(mem.images, torch.Tensor)
    assert disk.meta["storage"] == "disk" and disk.meta["cache"]["hit"] is False
    assert disk.images.shape == mem.images.shape and disk.masks.shape == mem.masks.shape
    assert torch.equal(_all(disk.images), mem.images)  # native size: bit-identical
    assert torch.equal(_all(disk.masks), mem.masks)
    for k in ("ids", "class_names", "mask_values", "condition_names", "groups", "intensity"):
        assert getattr(disk, k) == getattr(mem, k), k
    assert torch.equal(disk.labels, mem.labels) and torch.equal(disk.conditions, mem.conditions)
    for k in ("conversions", "warnings", "original_shapes", "source_dtype", "channels", "image_size", "skipped"):
        assert disk.meta[k] == mem.meta[k], k
    # per-sample access, as the DataLoader collate uses it
    for i in (0, 5, len(mem) - 1):
        a, b = disk[i], mem[i]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resized_disk_samples_are_within_half_a_grey_level(tmp_path, cache_env):
    p = _manifest(tmp_path / "d", size=(20, 20))
    mem = load_dataset(str(p), storage="memory", image_size=12)
    disk = load_dataset(str(p), storage="disk", image_size=12)
    diff = (_all(disk.images) - mem.images).abs().max().item()
    assert 0 < diff <= 1.0 / 255 + 1e-6  # rounded to uint8 when stored: at most half a level of 2/255
    assert torch.equal(_all(disk.masks), mem.masks)  # nearest neighbour: exact


def test_cache_is_reused_and_invalidated_when_a_file_changes(tmp_path, cache_env, monkeypatch):
    p = _manifest(tmp_path / "d", masks=False, extra_cols=False)
    first = load_dataset(str(p), storage="disk")
    assert first.meta["cache"]["hit"] is False
    import medbalance.data.diskset as diskset

    def no_decoding(*a, **k):
        raise AssertionError("a cache hit must not decode any file")

    monkeypatch.setattr(diskset, "decode_item", no_decoding)
    again = load_dataset(str(p), storage="disk")
    assert again.meta["cache"] == {"path": first.meta["cache"]["path"], "hit": True}
    assert torch.equal(_all(again.images), _all(first.images))
    monkeypatch.undo()
    monkeypatch.setenv("MEDBALANCE_CACHE", str(cache_env))
    # change one file: new content (and a newer mtime) -> a new cache, never the stale one
    new = np.full((16, 16), 200, np.uint8)
    time.sleep(0.01)
    Image.fromarray(new).save(tmp_path / "d" / "i1.png")
    changed = load_dataset(str(p), storage="disk")
    assert changed.meta["cache"]["hit"] is False and changed.meta["cache"]["path"] != first.meta["cache"]["path"]
    assert torch.allclose(changed.images[1], torch.full((1, 16, 16), 200 / 127.5 - 1))
    # different decoding options -> a different cache as well
    resized = load_dataset(str(p), storage="disk", image_size=8)
    assert resized.meta["cache"]["path"] not in (first.meta["cache"]["path"], changed.meta["cache"]["path"])
    complete = [d for d in (cache_env / "pixels").iterdir() if not d.name.startswith(".")]
    assert len(complete) == 3 and not any(d.name.endswith(".partial") for d in (cache_env / "pixels").iterdir())


def test_bad_file_one_error_no_cache_left_and_skip_bad_matches_memory(tmp_path, cache_env):
    p = _manifest(tmp_path / "d", n=40, masks=False, extra_cols=False)
    (tmp_path / "d" / "i3.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as e:
        load_dataset(str(p), storage="disk")
    assert "i3.png" in str(e.value)
    pixels = cache_env / "pixels"
    assert not pixels.exists() or not any(pixels.iterdir())  # nothing that looks like a finished cache
    mem = load_dataset(str(p), storage="memory", skip_bad=True)
    disk = load_dataset(str(p), storage="disk", skip_bad=True)
    assert disk.meta["skipped"] == mem.meta["skipped"] and len(disk.meta["skipped"]) == 1
    assert disk.ids == mem.ids and torch.equal(_all(disk.images), mem.images)
    # the cache records the bad row: without skip_bad, a cache hit still refuses it with the same line
    with pytest.raises(DataError) as e2:
        load_dataset(str(p), storage="disk")
    assert str(e2.value) == str(e.value)


def test_auto_storage_follows_the_memory_budget(tmp_path, cache_env, monkeypatch):
    p = _manifest(tmp_path / "d", n=8, masks=False, extra_cols=False)
    assert load_dataset(str(p)).meta["storage"] == "memory"
    monkeypatch.setenv("MEDBALANCE_MEMORY_BUDGET_GB", "0.000001")  # ~1 KB: 8 x 3 x 16 x 16 x 4 B is more
    assert isinstance(load_dataset(str(p)).images, DiskArray)


def test_disk_array_indexing_views_pickling_and_concat(tmp_path):
    raw = RNG.integers(0, 256, (10, 2, 3, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", raw)
    ref = torch.from_numpy(raw.astype(np.float32)).sub_(0).mul_(2 / 255).sub_(1)
    d = DiskArray(tmp_path / "a.npy", ImageConverter(0, 255), (2, 3, 3), torch.float32)
    assert d.shape == ref.shape and len(d) == 10 and d.ndim == 4 and d.dim() == 4
    assert torch.equal(d[3], ref[3]) and torch.equal(d[-1], ref[-1])
    assert torch.equal(d[2:7:2], ref[2:7:2])
    idx = torch.tensor([9, 0, 4, 4])
    assert torch.equal(d[idx], ref[idx])
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[1, 8]] = True
    assert torch.equal(d[mask], ref[mask])
    assert torch.equal(d[idx, 1], ref[idx, 1]) and torch.equal(d[2, 0, 1], ref[2, 0, 1])
    with pytest.raises(IndexError):
        d[10]
    v = d.take([7, 2, 5]).take([2, 0])  # views compose without reading
    assert torch.equal(v[torch.arange(2)], ref[[5, 7]])
    w = pickle.loads(pickle.dumps(v))  # DataLoader workers receive the view, not the data
    assert w.file._fd is None and torch.equal(w.materialize(), ref[[5, 7]])
    assert len(pickle.dumps(d)) < 2000
    extra = torch.randn(4, 2, 3, 3)
    c = ConcatRows([d, extra])
    both = torch.cat([ref, extra])
    sel = torch.tensor([13, 0, 11, 5])
    assert c.shape == both.shape and torch.equal(c[sel], both[sel]) and torch.equal(c.materialize(), both)
    assert torch.equal(c.take([12, 1])[torch.arange(2)], both[[12, 1]])
    # anything else a tensor offers materialises (correct, not lazy): methods, torch functions, numpy
    assert d.min() == ref.min() and torch.equal(d.mean(0), ref.mean(0))
    assert torch.equal(torch.cat([d, extra]), both) and torch.equal(torch.stack([d[0], ref[0]]), ref[[0, 0]])
    np.testing.assert_array_equal(np.asarray(d), ref.numpy())
    assert torch.equal(d > 0, ref > 0) and torch.equal(1 - d, 1 - ref) and torch.equal(-d * 2, -ref * 2)


def test_materialising_more_than_the_budget_warns(tmp_path, monkeypatch):
    np.save(tmp_path / "a.npy", np.zeros((64, 1, 8, 8), np.uint8))
    d = DiskArray(tmp_path / "a.npy", ImageConverter(0, 255), (1, 8, 8), torch.float32)
    monkeypatch.setenv("MEDBALANCE_MEMORY_BUDGET_GB", "0.000001")
    with pytest.warns(ResourceWarning, match="materialising"):
        d.max()


def test_subset_concat_and_inspect_on_disk_data(tmp_path, cache_env):
    p = _manifest(tmp_path / "d")
    mem = load_dataset(str(p), storage="memory")
    disk = load_dataset(str(p), storage="disk")
    sub_m, sub_d = mem.subset([5, 2, 9]), disk.subset([5, 2, 9])
    assert isinstance(sub_d.images, DiskArray) and torch.equal(_all(sub_d.images), sub_m.images)
    cat_m, cat_d = sub_m.concat(mem.subset([0])), sub_d.concat(mem.subset([0]))
    assert torch.equal(_all(cat_d.images), cat_m.images) and torch.equal(_all(cat_d.masks), cat_m.masks)
    a, b = inspect_dataset(mem), inspect_dataset(disk)
    assert a["classes"] == b["classes"] and a["masks"] == b["masks"]
    for k in ("scaled_min", "scaled_max", "source_min", "source_max"):
        assert a["intensity"][k] == b["intensity"][k]
    for ca, cb in zip(a["intensity"]["per_channel"], b["intensity"]["per_channel"]):
        assert ca["source_mean"] == pytest.approx(cb["source_mean"], abs=1e-3)


def test_training_batches_from_disk_equal_in_memory(tmp_path, cache_env):
    from medbalance.training.config import RunConfig
    from medbalance.training.engine import Trainer

    p = _manifest(tmp_path / "d", n=40, colour_every=0, size=(32, 32))
    base = {"model": {"name": "dcgan", "preset": "cpu", "params": {"conditional": True}},
            "train": {"steps": 2, "batch_size": 8, "device": "cpu", "precision": "fp32", "seed": 3, "flip": True}}
    batches = []
    for storage in ("memory", "disk"):
        cfg = RunConfig.from_dict({**base, "out_dir": str(tmp_path / storage), "data": {"path": str(p)}})
        ds = load_dataset(str(p), storage=storage)
        t = Trainer(cfg, ds)
        batches.append([t.get_batch(s) for s in range(4)])
    for a, b in zip(*batches):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_nifti_cache_shares_the_cache_root(monkeypatch, tmp_path):
    from medbalance.data.config import NiftiConfig
    from medbalance.data.nifti import cache_root

    monkeypatch.setenv("MEDBALANCE_CACHE", str(tmp_path))
    assert cache_root(NiftiConfig()) == tmp_path / "nifti"
    assert os.fspath(cache_root(NiftiConfig(cache_dir=str(tmp_path / "x")))) == os.fspath(tmp_path / "x")


def test_commands_run_on_disk_backed_data(tmp_path, cache_env):
    """inspect, train-task, train, rebalance, evaluate and downstream with --storage disk (tiny data)."""
    from typer.testing import CliRunner

    from medbalance.cli.main import app

    p = _manifest(tmp_path / "d", n=36, size=(32, 32), colour_every=0, extra_cols=False)
    run = CliRunner().invoke

    def ok(*args: str) -> None:
        r = run(app, [*args, "--storage", "disk"])
        assert r.exit_code == 0, (args[0], r.output[-800:])

    ok("inspect", str(p), "--json-out", str(tmp_path / "inspect.json"))
    ok("train-task", "segmentation", str(p), str(tmp_path / "seg"), "--epochs", "1")
    ok("train", "--model", "dcgan", "--data", str(p), "--steps", "2", "--out", str(tmp_path / "g"), "--device", "cpu",
       "--set", "model.params.conditional=true", "--set", "train.batch_size=8")
    ok("rebalance", str(p), str(tmp_path / "reb"), "--run", str(tmp_path / "g"), "--inject", "rare=6")
    ok("evaluate", "--real", str(p), "--synthetic", str(tmp_path / "reb" / "manifest.csv"))
    ok("downstream", str(p), str(tmp_path / "ds"), "--arms", "real,oversample", "--seeds", "1", "--epochs", "1")
    assert run(app, ["inspect", str(p), "--storage", "fast"]).exit_code == 2
