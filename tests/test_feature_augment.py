"""Feature-level augmentation: bottleneck extraction + store, feature ACGAN, filter, classifier arms, pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medbalance.data.dataset import ImageDataset
from medbalance.errors import CheckpointError, ConfigError
from medbalance.experiments.downstream import class_targets
from medbalance.experiments.feature_downstream import FeatureAugmentConfig, arm_feature_set, run_feature_augment
from medbalance.models.feature_acgan import (
    FeatureACGAN,
    FeatureACGANConfig,
    generate_filtered,
    generated_class_accuracy,
)
from medbalance.models.losses import class_loss
from medbalance.models.tasknets import FeatureClassifier, FeatureClassifierConfig, SegmentationUNet
from medbalance.synthesis.features import (
    bottleneck_module,
    bottleneck_shape,
    extract_features,
    extract_to_store,
    open_feature_store,
)
from medbalance.training.task import train_feature_acgan, train_feature_classifier


def tiny_dataset(n: int = 24, size: int = 16, channels: int = 1, minority: int = 6, seed: int = 0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, dtype=torch.long)
    labels[:minority] = 1
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros(n, size, size, dtype=torch.long)
    imgs = torch.rand(n, channels, size, size, generator=g) * 0.2 - 1
    for i in range(n):
        cy, cx = torch.randint(4, size - 4, (2,), generator=g).tolist()
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= (2 + int(labels[i])) ** 2
        masks[i][blob] = 1 + int(labels[i])  # two lesion labels -> whole lesion = label > 0
        imgs[i, :, blob] = 0.8
    return ImageDataset(
        images=imgs, labels=labels, class_names=["major", "minor"], ids=[f"s{i}" for i in range(n)],
        masks=masks, mask_values=[0, 1, 2], groups=[f"p{i % 8}" for i in range(n)],
    )


# ------------------------------------------------------------------------------------------------ extraction
def test_bottleneck_shape_equals_hooked_output_and_is_deterministic(tmp_path):
    torch.manual_seed(0)
    model = SegmentationUNet(1, 1, mode="sigmoid", channels=(4, 8, 16))
    x = torch.randn(5, 1, 16, 16)
    assert bottleneck_shape(model, (1, 16, 16)) == (16, 4, 4)
    model.train()  # extraction must switch to eval itself
    f1 = extract_features(model, x, batch_size=2, progress=False)
    f2 = extract_features(model, x, batch_size=2, progress=False)
    assert f1.shape == (5, 16, 4, 4) and torch.equal(f1, f2)  # bit-identical on repeat
    # batch composition does not matter (eval-mode BatchNorm), up to BLAS round-off
    torch.testing.assert_close(extract_features(model, x, batch_size=5, progress=False), f1)
    assert model.training  # restored
    # independent check: forward hook on the bottleneck module during a full forward pass
    got = {}
    h = bottleneck_module(model).register_forward_hook(lambda m, i, o: got.setdefault("f", o.detach()))
    model.eval()
    with torch.no_grad():
        model(x)
    h.remove()
    torch.testing.assert_close(f1, got["f"])


def test_basic_unet_bottleneck_shape():
    model = SegmentationUNet(2, 1, mode="sigmoid", backbone="basic_unet", channels=(4, 4, 8, 8, 16, 4))
    assert bottleneck_shape(model, (2, 32, 32)) == (16, 2, 2)


def test_feature_store_roundtrip(tmp_path):
    torch.manual_seed(0)
    ds = tiny_dataset(n=10)
    model = SegmentationUNet(1, 1, mode="sigmoid", channels=(4, 8, 16))
    splits = ["train"] * 5 + ["val"] * 2 + ["test"] * 2 + ["excluded"]
    store = extract_to_store(model, ds, splits, tmp_path / "features", batch_size=3, progress=False)
    again = open_feature_store(tmp_path / "features")
    assert isinstance(again.features, np.memmap) and again.features.shape == (10, 16, 4, 4)
    ref = extract_features(model, ds.images, batch_size=3, progress=False).numpy()
    np.testing.assert_array_equal(np.asarray(again.features), ref)
    x, y, ids = again.select("val")
    assert ids == ["s5", "s6"] and y.tolist() == ds.labels[5:7].tolist()
    torch.testing.assert_close(x, torch.from_numpy(ref[5:7]))
    assert store.nonnegative == bool((ref >= 0).all())
    with pytest.raises(ConfigError):
        extract_to_store(model, ds, ["nope"] * 10, tmp_path / "f2", progress=False)
    with pytest.raises(CheckpointError):
        open_feature_store(tmp_path / "missing")


# ------------------------------------------------------------------------------------------------ ACGAN
def test_feature_acgan_shapes_onehot_and_nonnegative():
    acgan = FeatureACGAN((8, 5, 5), ["a", "b", "c"], FeatureACGANConfig(z_dim=10, ngf=6, ndf=6))
    z = torch.randn(4, 10)
    y = torch.tensor([0, 2, 1, 2])
    zc = acgan.G.noise_with_class(z, y)
    assert torch.equal(zc[:, :3], F.one_hot(y, 3).float()) and torch.equal(zc[:, 3:], z[:, 3:])
    assert acgan.G(z, y).shape == (4, 8, 5, 5)
    src, cls = acgan.D(torch.randn(4, 8, 5, 5))
    assert src.shape == (4,) and cls.shape == (4, 3)
    feats = torch.relu(torch.randn(20, 8, 5, 5)) * 3 + 0.0
    acgan.set_scaling(feats, None)
    assert bool(acgan.G.clamp)
    with torch.no_grad():  # push half the channels far below the standardised zero
        acgan.G.out.bias[:4] = -10.0
    out = acgan.generate(torch.tensor([0, 1, 2] * 10), torch.Generator().manual_seed(0))
    assert out.shape == (30, 8, 5, 5) and float(out.min()) >= 0
    assert (out[:, :4] == 0).all() and (out[:, 4:] > 0).all()
    acgan.set_scaling(feats - 1, None)  # negative values present -> no clamp
    assert not bool(acgan.G.clamp)


def test_class_loss_is_cross_entropy_on_logits():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    y = torch.tensor([0, 2])
    manual = -(logits - logits.exp().sum(1, keepdim=True).log())[torch.arange(2), y].mean()
    torch.testing.assert_close(class_loss(logits, y), manual)
    # the upstream bug (Softmax then NLLLoss) gives a different, wrong value
    assert abs(float(F.nll_loss(logits.softmax(1), y)) - float(manual)) > 0.1


def test_feature_acgan_learns_classes_and_roundtrips(tmp_path):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(2).repeat(32)
    feats = torch.randn(64, 4, 4, 4, generator=g) * 0.3
    feats[:, 0] += torch.where(y == 1, 2.0, -2.0).view(-1, 1, 1)
    acgan = FeatureACGAN((4, 4, 4), ["a", "b"], FeatureACGANConfig(z_dim=8, ngf=8, ndf=8, epochs=6, progress=False, device="cpu"))
    hist = train_feature_acgan(acgan, feats, y)
    assert len(hist) == 6 and all(np.isfinite(h["loss_d"]) for h in hist)
    acc_real = float((acgan.classify(feats).argmax(1) == y).float().mean())
    assert acc_real > 0.9
    ev = generated_class_accuracy(acgan, n_per_class=20)
    assert ev["n"] == 40 and 0 <= ev["accuracy"] <= 1
    acgan.save(tmp_path / "acgan", meta={"train_ids": ["x"]})
    back, meta = FeatureACGAN.load(tmp_path / "acgan")
    assert meta["train_ids"] == ["x"]
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    torch.testing.assert_close(back.generate(torch.tensor([0, 1]), gen()), acgan.generate(torch.tensor([0, 1]), gen()))


def _biased_acgan(favour: int, shape=(4, 4, 4)) -> FeatureACGAN:
    """An ACGAN whose D class head always predicts class ``favour``."""
    acgan = FeatureACGAN(shape, ["a", "b"], FeatureACGANConfig(z_dim=8, ngf=4, ndf=4))
    with torch.no_grad():
        acgan.D.cls.weight.zero_()
        acgan.D.cls.bias.copy_(torch.tensor([5.0, -5.0]) if favour == 0 else torch.tensor([-5.0, 5.0]))
    return acgan


def test_filter_rejecting_a_class_keeps_none_of_it():
    acgan = _biased_acgan(favour=0)
    x, y, stats = generate_filtered(acgan.generate, acgan.classify, {0: 7, 1: 5}, seed=0, max_factor=3)
    assert x.shape == (7, 4, 4, 4) and y.tolist() == [0] * 7
    assert stats[1] == {"requested": 5, "generated": 15, "kept": 0, "acceptance": 0.0, "shortfall": 5}
    assert stats[0]["kept"] == 7 and stats[0]["acceptance"] == 1.0


def test_filter_keeps_only_agreeing_samples():
    # classify by the sign of the first value: half the candidates of each class are accepted
    gen = lambda labels, g: torch.randn(labels.shape[0], 1, 2, 2, generator=g)  # noqa: E731
    cls = lambda f: torch.stack([-f[:, 0, 0, 0], f[:, 0, 0, 0]], 1)  # noqa: E731
    x, y, stats = generate_filtered(gen, cls, {0: 50, 1: 50}, seed=1, max_factor=20, batch_size=16)
    assert (x[y == 1, 0, 0, 0] > 0).all() and (x[y == 0, 0, 0, 0] < 0).all()
    assert stats[0]["kept"] == 50 and 0.3 < stats[0]["acceptance"] < 0.7


# ------------------------------------------------------------------------------------------------ arms
def test_arm_training_set_compositions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(36, 4, 4, 4, generator=g)
    y = torch.cat([torch.zeros(30, dtype=torch.long), torch.ones(6, dtype=torch.long)])
    names = ["a", "b"]
    assert class_targets(y, names, "auto") == {"a": 30, "b": 30}
    xr, yr, sr, opts, _ = arm_feature_set("real", x, y, names, "auto", 0)
    assert torch.equal(xr, x) and torch.equal(yr, y) and not sr.any() and opts == {}
    _, _, _, opts, _ = arm_feature_set("class-weight", x, y, names, "auto", 0)
    assert opts == {"class_weights": True}
    xo, yo, so, _, _ = arm_feature_set("oversample", x, y, names, "auto", 0)
    assert torch.bincount(yo).tolist() == [30, 30] and not so.any()
    # every oversampled row is a real row of the same class
    d = torch.cdist(xo.flatten(1), x.flatten(1)).argmin(1)
    assert torch.equal(y[d], yo) and torch.allclose(x[d], xo)
    acgan = _biased_acgan(favour=1)
    acgan.set_scaling(x, False)
    xs, ys, ss, _, st = arm_feature_set("real+synthetic", x, y, names, "auto", 0, acgan)
    assert torch.bincount(ys).tolist() == [30, 30] and int(ss.sum()) == 24
    assert torch.equal(xs[:36], x) and (ys[ss] == 1).all() and st["b"]["kept"] == 24
    # dict strategy (imbalanced-learn semantics: target totals)
    _, ys2, ss2, _, _ = arm_feature_set("real+synthetic", x, y, names, {"b": 10}, 0, acgan)
    assert torch.bincount(ys2).tolist() == [30, 10] and int(ss2.sum()) == 4
    # a discriminator that rejects the minority class adds nothing
    _, ys3, ss3, _, st3 = arm_feature_set("real+synthetic", x, y, names, "auto", 0, _biased_acgan(favour=0), max_factor=2)
    assert int(ss3.sum()) == 0 and torch.equal(ys3, y) and st3["b"]["shortfall"] == 24
    with pytest.raises(ConfigError):
        arm_feature_set("real+synthetic", x, y, names, "auto", 0, None)


def test_feature_classifier_odd_maps_and_learns():
    assert FeatureClassifier((16, 15, 15), 2)(torch.randn(3, 16, 15, 15)).shape == (3, 2)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat(30)
    x = torch.randn(90, 4, 6, 6, generator=g) * 0.5
    x[torch.arange(90), y] += 2.0
    cfg = FeatureClassifierConfig(channels=[8, 8], hidden=16, epochs=8, batch_size=16)
    model, best, hist = train_feature_classifier(x[:60], y[:60], x[60:], y[60:], 3, cfg, seed=0, device="cpu")
    assert 1 <= best <= 8 and len(hist) == 8
    model.eval()
    with torch.no_grad():
        acc = float((model(x[60:]).argmax(1) == y[60:]).float().mean())
    assert acc > 0.8


# ------------------------------------------------------------------------------------------------ pipeline
def test_pipeline_end_to_end_tiny(tmp_path):
    ds = tiny_dataset(n=40, size=16, minority=14)
    cfg = FeatureAugmentConfig(
        seeds=[0, 1], device="cpu", progress=False, arms=["real", "oversample", "real+synthetic"], threads=1,
        segmentor={"channels": [4, 8, 16], "epochs": 1, "batch_size": 8},
        acgan={"ngf": 8, "ndf": 8, "epochs": 2, "z_dim": 8},
        classifier={"channels": [8, 8], "hidden": 16, "epochs": 2, "batch_size": 8},
        generated_eval_per_class=10, max_factor=3,
    )
    rep = run_feature_augment(ds, cfg, tmp_path / "out")
    on_disk = json.loads((tmp_path / "out" / "feature_downstream.json").read_text())
    assert on_disk["summary"].keys() == rep["summary"].keys()
    assert set(rep["results"]) == {"real", "oversample", "real+synthetic"}
    assert all(len(v) == 2 for v in rep["results"].values())
    assert "recall/minor" in rep["summary"]["real"] and "vs_real_seeds" in rep["summary"]["oversample"]["recall/minor"]
    assert rep["feature_augment"]["feature_shape"] == [16, 4, 4]
    store = open_feature_store(tmp_path / "out" / "features")
    assert len(store) == 40 and set(store.splits) <= {"train", "val", "test"}
    # patient-grouped split: no patient on two sides
    gs = rep["feature_augment"]["groups_per_split"]
    assert not (set(gs["train"]) & set(gs["test"])) and not (set(gs["val"]) & set(gs["test"]))
    n_train = rep["split"]["train"]
    comp = rep["arm_training_sets"]
    assert comp["real"]["n"] == n_train and comp["real"]["synthetic"] == 0
    assert comp["oversample"]["class_counts"]["major"] == comp["oversample"]["class_counts"]["minor"]
    assert comp["real+synthetic"]["synthetic"] == comp["real+synthetic"]["synthetic_class_counts"]["minor"]
    assert (tmp_path / "out" / "acgan" / "model.safetensors").is_file()
    assert (tmp_path / "out" / "segmentor" / "model.safetensors").is_file()
    # reuse the segmentor: leakage guard passes for the same split, and the result has the same features
    rep2 = run_feature_augment(ds, cfg.model_copy(update={"arms": ["real"], "seeds": [0]}), tmp_path / "out2",
                               segmentor=tmp_path / "out" / "segmentor")
    assert rep2["feature_augment"]["segmentor"]["trained_here"] is False
    np.testing.assert_array_equal(np.asarray(open_feature_store(tmp_path / "out2" / "features").features),
                                  np.asarray(store.features))


# ------------------------------------------------------------------------------------------------ CLI
def _write_manifest(root, n=32, minority=12, size=16):
    from PIL import Image

    ds = tiny_dataset(n=n, size=size, minority=minority)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = ["id,image,mask,label"]
    for i in range(n):
        img = ((ds.images[i, 0] + 1) * 127.5).round().clamp(0, 255).byte().numpy()
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        Image.fromarray(((ds.masks[i] > 0).numpy() * 255).astype(np.uint8)).save(root / "masks" / f"{i}.png")
        rows.append(f"{i},images/{i}.png,masks/{i}.png,{ds.class_names[int(ds.labels[i])]}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def test_cli_feature_augment(tmp_path):
    from typer.testing import CliRunner

    from medbalance.cli.main import app

    csv = _write_manifest(tmp_path / "data")
    out = tmp_path / "out"
    tiny = ["--set", "segmentor.channels=[4,8,16]", "--set", "segmentor.epochs=1", "--set", "acgan.epochs=1",
            "--set", "acgan.ngf=8", "--set", "acgan.ndf=8", "--set", "classifier.channels=[8,8]",
            "--set", "classifier.hidden=8", "--set", "classifier.epochs=1", "--set", "generated_eval_per_class=5"]
    r = CliRunner().invoke(app, ["feature-augment", str(csv), str(out), "--seeds", "1", "--arms", "real,real+synthetic",
                                 "--subsample", "minor=0.5", "--device", "cpu", "--threads", "1", *tiny])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "feature_downstream.json").read_text())
    assert rep["config"]["subsample"] == {"minor": 0.5} and rep["config"]["threads"] == 1
    assert rep["split_class_counts"]["train"]["minor"] == 4  # 12 minor -> 7 train (0.6) -> round(0.5 * 7)
    assert (out / "features" / "features.npy").is_file() and (out / "acgan" / "model.json").is_file()
    bad = CliRunner().invoke(app, ["feature-augment", str(csv), str(tmp_path / "o2"), "--arms", "real,nope"])
    assert bad.exit_code == 2 and "unknown feature arm" in bad.output
    bad = CliRunner().invoke(app, ["feature-augment", str(csv), str(tmp_path / "o3"), "--subsample", "zzz=0.1"])
    assert bad.exit_code == 2 and "unknown class" in bad.output


def test_whole_lesion_treats_anatomy_as_background():
    """The segmentor's 'whole lesion' target excludes anatomy labels (e.g. the phantom's intracranial space)."""
    import torch

    from medbalance.data.anatomy import whole_lesion
    from medbalance.data.dataset import ImageDataset

    masks = torch.tensor([[[0, 1, 2], [3, 1, 0], [0, 0, 0]]])  # indices into mask_values [0, 1, 2, 4]
    ds = ImageDataset(images=torch.zeros(1, 1, 3, 3), labels=torch.tensor([0]), class_names=["a"], ids=["x"],
                      masks=masks, mask_values=[0, 1, 2, 4], meta={"anatomy_values": [1]})
    out = whole_lesion(ds)
    assert out.masks.tolist() == [[[0, 0, 1], [1, 0, 0], [0, 0, 0]]] and out.mask_values == [0, 1]
    assert "anatomy_values" not in out.meta
