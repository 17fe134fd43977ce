"""downstream: the synthetic-pretrain+finetune arm (Shin et al.) and per-site metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from medbalance.cli.main import app
from medbalance.data.dataset import ImageDataset
from medbalance.experiments import downstream as D
from medbalance.utils.io import ids_digest

runner = CliRunner()


def _data(n_per=(30, 12, 10), size=16, seed=0, sites=False):
    rng = np.random.default_rng(seed)
    imgs, labels, masks = [], [], []
    for k, n in enumerate(n_per):
        for _ in range(n):
            x = rng.normal(-0.5, 0.1, (1, size, size))
            m = np.zeros((size, size), np.int64)
            x[0, 2 + 4 * k : 6 + 4 * k, 4:8] = 0.8
            m[2 + 4 * k : 6 + 4 * k, 4:8] = 1
            imgs.append(x), labels.append(k), masks.append(m)
    n = len(labels)
    ds = ImageDataset(images=torch.tensor(np.stack(imgs), dtype=torch.float32), labels=torch.tensor(labels),
                      class_names=["a", "b", "c"], ids=[f"x{i:03d}" for i in range(n)],
                      masks=torch.tensor(np.stack(masks)), mask_values=[0, 1], groups=[f"p{i}" for i in range(n)])
    if sites:
        ds.conditions = torch.tensor(rng.integers(0, 2, n))
        ds.condition_names = ["site_A", "site_B"]
    return ds


def _synthetic(ds: ImageDataset, per_class: int) -> D.SyntheticSource:
    parts = [ds.subset(np.nonzero(ds.labels.numpy() == k)[0][:2].repeat(per_class // 2)) for k in range(3)]
    syn = parts[0].concat(parts[1]).concat(parts[2])
    syn.ids = [f"syn{i}" for i in range(len(syn))]
    syn.synthetic = torch.ones(len(syn), dtype=torch.bool)
    ids = ["gen-only"]
    return D.SyntheticSource(dataset=syn, provenance={"train_ids": ids, "train_ids_sha256": ids_digest(ids)})


def test_pretrain_finetune_trains_on_synthetic_then_on_real(tmp_path, monkeypatch):
    from medbalance.training import task as T

    calls = []
    real_train = T.train_task_model

    def spy(train, val, cfg, out_dir=None, init_model=None):
        calls.append({"n": len(train), "synthetic": int(train.is_synthetic().sum()), "init": init_model is not None,
                      "epochs": cfg.epochs})
        return real_train(train, val, cfg, out_dir, init_model)

    monkeypatch.setattr(T, "train_task_model", spy)
    ds = _data()
    cfg = D.DownstreamConfig(arms=["real", "synthetic-pretrain+finetune"], seeds=[0], epochs=2, batch_size=8,
                             device="cpu")
    rep = D.run_downstream(ds, cfg, tmp_path, _synthetic(ds, 20))
    real_call, pre, fine = calls
    assert pre["synthetic"] == pre["n"] and not pre["init"]  # synthetic only, fresh weights
    assert fine["synthetic"] == 0 and fine["init"] and fine["n"] == real_call["n"]  # real set, from the pretrained
    assert pre["epochs"] == fine["epochs"] == real_call["epochs"] == 2  # the same real-data budget as other arms
    comp = rep["arm_training_sets"]["synthetic-pretrain+finetune"]
    assert comp["pretrain"]["synthetic"] == pre["n"] and comp["finetune"]["synthetic"] == 0
    assert "balanced_accuracy" in rep["summary"]["synthetic-pretrain+finetune"]


def test_finetune_starts_from_the_pretrained_weights():
    from medbalance.training.task import TaskConfig, train_task_model

    ds = _data()
    cfg = TaskConfig(task="classification", epochs=1, batch_size=8, augment=False, progress=False, lr=1e-12,
                     schedule="constant", device="cpu", weight_decay=0.0)
    pre = train_task_model(ds, None, cfg.model_copy(update={"lr": 1e-2, "seed": 3}))
    fine = train_task_model(ds, None, cfg, init_model=pre.model)
    fresh = train_task_model(ds, None, cfg)
    w_pre = torch.cat([p.detach().flatten() for p in pre.model.parameters()])
    w_fine = torch.cat([p.detach().flatten() for p in fine.model.parameters()])
    w_fresh = torch.cat([p.detach().flatten() for p in fresh.model.parameters()])
    assert torch.allclose(w_fine, w_pre, atol=1e-6) and not torch.allclose(w_fresh, w_pre, atol=1e-3)


def test_per_site_metrics(tmp_path):
    ds = _data(sites=True)
    cfg = D.DownstreamConfig(arms=["real", "oversample"], seeds=[0, 1], epochs=1, batch_size=8, device="cpu")
    rep = D.run_downstream(ds, cfg, tmp_path)
    split = D.make_split(ds, cfg)
    test_sites = split.test.conditions.numpy()
    run = rep["results"]["real"][0]
    assert set(run["per_site"]) == {ds.condition_names[k] for k in np.unique(test_sites)}
    for k, site in enumerate(ds.condition_names):
        if site not in run["per_site"]:
            continue
        assert run["per_site"][site]["n"] == int((test_sites == k).sum())
        correct = np.asarray(run["per_case_correct"])[test_sites == k]
        y = split.test.labels.numpy()[test_sites == k]
        recalls = [correct[y == c].mean() for c in np.unique(y)]
        assert run["per_site"][site]["balanced_accuracy"] == pytest.approx(np.mean(recalls))
        assert f"balanced_accuracy@{site}" in rep["summary"]["oversample"]


def test_per_site_dice_in_segmentation(tmp_path):
    ds = _data(sites=True)
    cfg = D.DownstreamConfig(task="segmentation", arms=["real"], seeds=[0], epochs=1, batch_size=8, device="cpu")
    rep = D.run_downstream(ds, cfg, tmp_path)
    run = rep["results"]["real"][0]
    split = D.make_split(ds, cfg)
    sites = split.test.conditions.numpy()
    per_case = np.asarray(run["per_case_dice_foreground"])
    for k, site in enumerate(ds.condition_names):
        if (sites == k).any():
            assert run["per_site"][site]["dice_foreground"] == pytest.approx(per_case[sites == k].mean())


@pytest.mark.slow
def test_cli_pretrain_finetune_end_to_end(tmp_path):
    gen = tmp_path / "gen.yaml"
    gen.write_text(yaml.safe_dump({
        "data": {"path": "phantom", "phantom": {"n": 60, "size": 32, "seed": 2}},
        "model": {"name": "spade", "preset": "cpu"},
        "train": {"steps": 2, "batch_size": 8, "checkpoint_every": 2, "sample_every": 2, "tensorboard": False},
    }))
    out = tmp_path / "exp"
    r = runner.invoke(app, ["downstream", "phantom", str(out), "--config", str(gen), "--arms",
                            "real,synthetic-pretrain+finetune", "--seeds", "1", "--epochs", "1", "--image-size", "32"])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "downstream.json").read_text())
    comp = rep["arm_training_sets"]["synthetic-pretrain+finetune"]
    assert comp["pretrain"]["synthetic"] == comp["pretrain"]["n"] > 0
    assert comp["finetune"]["n"] == rep["arm_training_sets"]["real"]["n"]
    assert "synthetic-pretrain+finetune" in r.output
