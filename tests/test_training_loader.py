"""Training batches through the DataLoader: the same batches with any number of workers, exact resume with
workers, disk-backed data, and the default worker count."""

from __future__ import annotations

from pathlib import Path

import _tiny_method as tm
import pytest
import torch

from medbalance.training.config import RunConfig
from medbalance.training.engine import Trainer, train
from medbalance.training.loader import BatchPlan, default_workers, read_batch
from medbalance.training.logging import read_losses_csv


def make_cfg(out: Path, **train_kw) -> RunConfig:
    t = {"steps": 6, "batch_size": 5, "precision": "fp32", "checkpoint_every": 3, "sample_every": 3,
         "log_every": 1, "tensorboard": False, "seed": 2, "flip": True, "device": "cpu"}
    t.update(train_kw)
    return RunConfig.from_dict({"out_dir": str(out), "model": {"name": "tiny-test", "params": {}}, "train": t})


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("sampling", ["uniform", "class_balanced"])
def test_worker_batches_equal_the_in_process_batches(tmp_path, sampling):
    ds = tm.tiny_dataset(n=24)
    t = Trainer(make_cfg(tmp_path / "r", num_workers=2, sampling=sampling), ds)
    assert t.num_workers == 2
    streamed = list(t.batch_stream(3, 14))  # crosses epoch boundaries (4 batches per epoch)
    assert len(streamed) == 11
    for s, b in zip(range(3, 14), streamed):
        assert _same(b, t.get_batch(s)), s
    assert list(t.batch_stream(5, 5)) == []


def test_training_with_workers_equals_without_and_resumes_exactly(tmp_path):
    ds = tm.tiny_dataset(n=24)
    kw = dict(steps=7, checkpoint_every=3, ema_decay=0.9)
    plain = train(make_cfg(tmp_path / "plain", num_workers=0, **kw), ds)
    workers = train(make_cfg(tmp_path / "workers", num_workers=2, **kw), ds)
    train(make_cfg(tmp_path / "part", num_workers=2, **{**kw, "steps": 3}), ds)  # interrupted at step 3...
    resumed = train(make_cfg(tmp_path / "part", num_workers=1, **kw), ds, resume=True)  # ...resumed, other workers

    def losses(name):
        return [{k: v for k, v in r.items() if k != "images_per_s"} for r in read_losses_csv(tmp_path / name / "losses.csv")]

    assert losses("plain") == losses("workers") == losses("part") and len(losses("plain")) == 7
    for other in (workers, resumed):
        for name in ("G", "D"):
            for k, v in plain.method.networks()[name].state_dict().items():
                assert torch.equal(v, other.method.networks()[name].state_dict()[k]), (name, k)


def test_disk_backed_batches_through_workers(tmp_path, monkeypatch):
    """A disk-backed dataset pickles to the workers as its file and gives the same batches."""
    import numpy as np
    from PIL import Image

    from medbalance.data import load_dataset

    monkeypatch.setenv("MEDBALANCE_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    rows = ["image,label"]
    for i in range(30):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{'abc'[i % 3]}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    disk = load_dataset(str(tmp_path / "m.csv"), storage="disk")
    mem = load_dataset(str(tmp_path / "m.csv"), storage="memory")
    td = Trainer(make_cfg(tmp_path / "d"), disk)
    tm_ = Trainer(make_cfg(tmp_path / "m"), mem)
    assert td.num_workers >= 1 and tm_.num_workers == 0  # the default: workers only where reading costs something
    for s, (a, b) in enumerate(zip(td.batch_stream(0, 9), tm_.batch_stream(0, 9))):
        assert _same(a, b), s


def test_plan_shards_cover_the_global_batch():
    ds = tm.tiny_dataset(n=24)
    idx = torch.arange(24)
    plan = BatchPlan(seed=0, sampling="uniform", train_idx=idx, train_labels=ds.labels, batch_size=8, world_size=2)
    one = BatchPlan(seed=0, sampling="uniform", train_idx=idx, train_labels=ds.labels, batch_size=8)
    for s in range(5):
        shards = [plan.indices(s, r) for r in (0, 1)]
        assert torch.equal(torch.cat(shards), one.indices(s, 0))
        assert _same(read_batch(ds, one, s, 0), {k: torch.cat([read_batch(ds, plan, s, r)[k] for r in (0, 1)])
                                                for k in read_batch(ds, one, s, 0)})


def test_default_workers(monkeypatch):
    ds = tm.tiny_dataset(n=24)
    assert default_workers(ds, torch.device("cpu")) == 0
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(16)), raising=False)
    assert default_workers(ds, torch.device("cuda")) == 4
