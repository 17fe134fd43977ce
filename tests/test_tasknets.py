"""Task networks (segmentation U-Net, classifier), safe save/load, train_task_model and train-task CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medbalance.data.dataset import ImageDataset
from medbalance.errors import CheckpointError, ConfigError, DataError
from medbalance.models.tasknets import Classifier, SegmentationUNet, load_task_model, save_task_model
from medbalance.training.metrics import segmentation_metrics
from medbalance.training.task import (
    TaskConfig,
    augment_batch,
    compute_class_weights,
    predict_classifier,
    predict_segmentor,
    train_task_model,
)



def blobs(n: int, seed: int, s: int = 32) -> ImageDataset:
    """Bright discs on a dark noisy background; class = disc radius (separable); mask = disc."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    cy = torch.randint(9, s - 9, (n,), generator=g).view(-1, 1, 1)
    cx = torch.randint(9, s - 9, (n,), generator=g).view(-1, 1, 1)
    r = (3 + 2 * labels).view(-1, 1, 1)
    masks = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r**2).long()
    img = -0.6 + 0.15 * torch.randn(n, 1, s, s, generator=g) + 1.2 * masks.unsqueeze(1)
    return ImageDataset(
        images=img.clamp(-1, 1), labels=labels, class_names=["small", "medium", "large"],
        ids=[f"s{seed}_{i}" for i in range(n)], masks=masks, mask_values=[0, 255],
    )


# ---------------------------------------------------------------------------- networks
@pytest.mark.parametrize("mode,dims", [("softmax", 2), ("sigmoid", 2), ("softmax", 3)])
def test_segmentation_unet_shapes(mode, dims):
    nl = 3 if mode == "softmax" else 2
    net = SegmentationUNet(2, nl, mode=mode, spatial_dims=dims, channels=(4, 8, 16))
    x = torch.randn(2, 2, *([8] * (dims - 2)), 16, 16)
    out = net(x)
    assert out.shape == (2, nl, *x.shape[2:])
    assert net.predict_labels(out).shape == (2, *x.shape[2:])


def test_sigmoid_predict_and_loss_against_manual():
    net = SegmentationUNet(1, 2, mode="sigmoid", channels=(4, 8))
    logits = torch.tensor([[[[3.0, -3.0, 1.0]]], [[[-3.0, -3.0, 2.0]]]]).view(1, 2, 1, 3)
    # pixel 0: ch0 only -> label 1; pixel 1: none -> 0; pixel 2: both, ch1 more probable -> label 2
    assert net.predict_labels(logits).tolist() == [[[1, 0, 2]]]
    masks = torch.tensor([[[1, 0, 2]]])
    t = torch.stack([(masks == 1).float(), (masks == 2).float()], 1)
    p = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, t)
    inter = (p * t).sum((0, 2, 3))
    union = p.sum((0, 2, 3)) + t.sum((0, 2, 3)) - inter
    jac = ((inter + 1) / (union + 1)).mean()  # Red-GAN's soft Jaccard with eps = 1, per channel
    assert torch.allclose(net.loss(logits, masks), bce + 1 - jac, atol=1e-5)


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18"])
def test_classifier_shapes(arch):
    net = Classifier(3, 4, arch=arch, channels=(4, 8, 16)).eval()
    x = torch.randn(2, 3, 32, 32)
    f = net.features(x)
    assert f.shape == (2, net.feature_dim)
    assert net(x).shape == (2, 4)
    assert torch.allclose(net(x), net.head(f))


def test_unknown_arch_errors():
    with pytest.raises(ConfigError, match="allowed"):
        Classifier(1, 3, arch="vgg")
    with pytest.raises(ConfigError, match="softmax"):
        SegmentationUNet(1, 2, mode="crf")


# ---------------------------------------------------------------------------- save / load
def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    for model in (Classifier(1, 3, channels=(4, 8)), SegmentationUNet(1, 2, mode="softmax", channels=(4, 8, 16))):
        model.train()
        x = torch.randn(4, 1, 16, 16)
        model(x)  # move BN running stats away from their init
        model.eval()
        ref = model(x)
        d = tmp_path / model.arch_name
        save_task_model(d, model, {"task": "t", "class_names": ["a", "b", "c"]})
        loaded, meta = load_task_model(d)
        assert not loaded.training and meta["class_names"] == ["a", "b", "c"]
        assert torch.equal(loaded(x), ref)
        assert set(p.name for p in d.iterdir()) == {"model.json", "model.safetensors"}
        # loading through either file works too
        assert torch.equal(load_task_model(d / "model.json")[0](x), ref)


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_task_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="model.json missing"):
        load_task_model(tmp_path / "empty")
    d = tmp_path / "m"
    save_task_model(d, Classifier(1, 2, channels=(4, 8)), {})
    spec = json.loads((d / "model.json").read_text())
    (d / "model.json").write_text(json.dumps({**spec, "architecture": "transformer"}))
    with pytest.raises(CheckpointError, match="unknown architecture 'transformer'"):
        load_task_model(d)
    (d / "model.json").write_text(json.dumps({**spec, "kwargs": {**spec["kwargs"], "channels": [4, 16]}}))
    with pytest.raises(CheckpointError, match="do not match"):
        load_task_model(d)
    (d / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="invalid JSON"):
        load_task_model(d)
    (d / "model.json").write_text(json.dumps(spec))
    raw = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_task_model(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="not found"):
        load_task_model(d)


# ---------------------------------------------------------------------------- helpers
def test_class_weights_match_sklearn():
    from sklearn.utils.class_weight import compute_class_weight

    y = torch.tensor([0] * 10 + [1] * 3 + [2] * 1)
    ref = compute_class_weight("balanced", classes=np.arange(3), y=y.numpy())
    assert np.allclose(compute_class_weights(y, 3).numpy(), ref)
    # an absent class gets weight 0 and the others are computed over the present classes
    w = compute_class_weights(torch.tensor([0, 0, 0, 2]), 3)
    assert w[1] == 0 and torch.allclose(w[[0, 2]], torch.tensor([4 / 6, 4 / 2]))


def test_augment_keeps_image_and_mask_aligned():
    ds = blobs(16, 0)
    x, m = augment_batch(ds.images, ds.masks, torch.Generator().manual_seed(0), all_flips=True, rot90=True)
    assert x.shape == ds.images.shape and m.shape == ds.masks.shape and m.dtype == torch.long
    assert not torch.equal(m, ds.masks)  # something happened
    agree = ((x[:, 0] > 0).long() == m).float().mean()
    assert agree > 0.97
    # same generator seed -> same augmentation
    x2, m2 = augment_batch(ds.images, ds.masks, torch.Generator().manual_seed(0), all_flips=True, rot90=True)
    assert torch.equal(x, x2) and torch.equal(m, m2)
    # default: left-right flips only (+ small affine): an up-down asymmetric image keeps its
    # vertical orientation; with all flips + rot90 about 5/8 of the samples lose it
    img = torch.full((64, 1, 32, 32), -1.0)
    img[:, :, :8, :] = 1.0  # bright top rows

    def top_brighter(a):
        return a[:, 0, :16].mean((1, 2)) > a[:, 0, 16:].mean((1, 2))

    assert top_brighter(augment_batch(img, None, torch.Generator().manual_seed(1))[0]).all()
    frac = top_brighter(augment_batch(img, None, torch.Generator().manual_seed(1), True, True)[0]).float().mean()
    assert 0.15 < frac < 0.65


# ---------------------------------------------------------------------------- training
def test_train_classifier_separable_and_deterministic(tmp_path):
    tr, va = blobs(96, 0), blobs(48, 1)
    cfg = TaskConfig(
        task="classification", epochs=6, batch_size=16, lr=3e-3, augment=False, channels=[8, 16, 32], schedule="constant"
    )
    r = train_task_model(tr, va, cfg, out_dir=tmp_path / "clf")
    assert r.val_metrics["balanced_accuracy"] >= 0.9
    assert 1 <= r.best_epoch <= 6 and len(r.history) == 6
    best = max(h["val_balanced_accuracy"] for h in r.history)
    assert r.val_metrics["balanced_accuracy"] == best
    probs, preds = predict_classifier(r.model, va)
    assert probs.shape == (48, 3) and torch.allclose(probs.sum(1), torch.ones(48))
    assert math.isclose((preds == va.labels).float().mean().item(), r.val_metrics["accuracy"], rel_tol=1e-6)
    loaded, meta = load_task_model(tmp_path / "clf")
    assert meta["task"] == "classification" and meta["train_ids"] == tr.ids and meta["best_epoch"] == r.best_epoch
    assert torch.allclose(predict_classifier(loaded, va)[0], probs, atol=1e-6)
    r2 = train_task_model(tr, va, cfg.model_copy(update={"epochs": 2}))
    assert [h["train_loss"] for h in r2.history] == [h["train_loss"] for h in r.history[:2]]


def test_train_segmentor_separable():
    tr, va = blobs(96, 0), blobs(32, 1)
    cfg = TaskConfig(
        task="segmentation", epochs=8, batch_size=16, lr=1e-2, augment=True,
        channels=[8, 16, 32], dropout=0.0,
    )
    r = train_task_model(tr, va, cfg)
    assert r.val_metrics["dice"] >= 0.85, r.history
    pred = predict_segmentor(r.model, va)
    assert pred.shape == va.masks.shape
    assert math.isclose(segmentation_metrics(pred, va.masks, [0, 255])["dice"], r.val_metrics["dice"], rel_tol=1e-6)


def test_train_errors():
    ds = blobs(8, 0)
    nomask = ImageDataset(images=ds.images, labels=ds.labels, class_names=ds.class_names, ids=ds.ids)
    with pytest.raises(DataError, match="no masks"):
        train_task_model(nomask, None, TaskConfig(task="segmentation", epochs=1))
    with pytest.raises(ConfigError, match="divisible by 8"):
        train_task_model(blobs(8, 0, s=36), None, TaskConfig(task="segmentation", epochs=1))
    with pytest.raises(ConfigError, match="allowed"):
        train_task_model(ds, None, TaskConfig(task="classification", arch="unet", epochs=1))


# ---------------------------------------------------------------------------- CLI
def test_cli_train_task_phantom(tmp_path):
    from typer.testing import CliRunner

    from medbalance.cli.main import app

    out = tmp_path / "seg"
    args = [
        "train-task", "segmentation", "phantom", str(out), "--epochs", "1", "--batch-size", "8",
        "--set", "data.phantom.n=40", "--set", "data.phantom.size=32", "--set", "task.channels=[4,8,16]",
        "--set", "task.eval_batch_size=64", "--set", "data.phantom.imbalance=[1,1,1]",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.iterdir()} >= {"model.json", "model.safetensors", "config.yaml", "metrics.json", "split.json"}
    split = json.loads((out / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) == 40 and not set(split["train"]) & set(split["val"])
    model, meta = load_task_model(out)
    assert meta["task"] == "segmentation" and meta["mask_values"] == [0, 1, 2, 3, 4]
    assert model(torch.zeros(1, meta["in_channels"], 32, 32)).shape == (1, 5, 32, 32)
    # existing output folder without --overwrite -> one-line error, exit code 2
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "error:" in res.output and "--overwrite" in res.output
    res = CliRunner().invoke(app, ["train-task", "regression", "phantom", str(tmp_path / "x")])
    assert res.exit_code == 2 and "classification, segmentation" in res.output


def test_sigmoid_mode_with_class_weights_trains():
    tr = blobs(32, 0)
    cfg = TaskConfig(task="segmentation", seg_mode="sigmoid", class_weights=True, epochs=2, batch_size=16,
                     channels=[4, 8, 16], lr=1e-2)
    r = train_task_model(tr, None, cfg)
    assert r.best_epoch == 2 and r.val_metrics == {}
    assert all(math.isfinite(h["train_loss"]) for h in r.history)
    assert r.history[1]["train_loss"] < r.history[0]["train_loss"]
    assert r.model.kwargs["num_labels"] == 1 and predict_segmentor(r.model, tr).max() <= 1


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_channels_last_trains_the_same_network(tmp_path, task):
    """The NHWC layout (default for 2D) changes speed, not the model: same losses and weights up to float
    rounding as the NCHW run; the saved weights load into a plain (contiguous) network with the same outputs."""
    tr, va = blobs(48, 0), blobs(16, 1)
    cfg = TaskConfig(task=task, epochs=2, batch_size=16, augment=False, channels=[8, 16, 32], dropout=0.0,
                     schedule="constant", progress=False)
    a = train_task_model(tr, va, cfg, out_dir=tmp_path / "nhwc")
    b = train_task_model(tr, va, cfg.model_copy(update={"channels_last": False}))
    conv = next(m for m in a.model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] > 1)
    assert conv.weight.is_contiguous()  # trained NHWC, returned in the default layout
    for ha, hb in zip(a.history, b.history):
        assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=1e-3)
    # outputs, not raw weights: a conv bias in front of a norm layer has a zero gradient up to rounding, which Adam
    # scales to full steps, so those biases differ while the function does not
    with torch.no_grad():
        oa, ob = a.model(va.images), b.model(va.images)
        assert (oa - ob).abs().max() <= 1e-2 * ob.abs().max()
        loaded, _ = load_task_model(tmp_path / "nhwc")
        assert torch.equal(loaded(va.images), oa)  # the returned model computes what the saved one does
