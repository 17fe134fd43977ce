"""train.epochs (steps from the data size), per-preset training lengths and the seeded flip augmentation:
config rules, the epochs -> steps rule, flips identical on image and label map, and exact resume with both."""

from __future__ import annotations

import pytest
import torch
import yaml
from typer.testing import CliRunner

import _tiny_method as tm
from medbalance.errors import ConfigError
from medbalance.models.registry import MODELS, ModelSpec, ensure_registered
from medbalance.training.config import RunConfig, read_saved_run_config
from medbalance.training.engine import Trainer, flip_batch, flip_decisions, train
from medbalance.training.logging import read_losses_csv


def make_cfg(out, **train_kw) -> RunConfig:
    model = train_kw.pop("model", "tiny-mask-test")
    t = {"batch_size": 5, "precision": "fp32", "checkpoint_every": 3, "sample_every": 3, "log_every": 1,
         "tensorboard": False, "seed": 1}
    t.update(train_kw)
    return RunConfig.from_dict({"out_dir": str(out), "model": {"name": model}, "train": t})


def _losses(run_dir):
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in read_losses_csv(run_dir / "losses.csv")]


def _assert_same_weights(a, b):
    for name in ("G", "D"):
        sa, sb = a.method.networks()[name].state_dict(), b.method.networks()[name].state_dict()
        for k, v in sa.items():
            assert torch.equal(v, sb[k]), (name, k)


def _register_flip_spec() -> None:
    ensure_registered()
    if "tiny-preset-test" not in MODELS:
        MODELS.add("tiny-preset-test", ModelSpec(
            tm.TinyMaskGAN, tm.TinyParams, {"paper": {}, "cpu": {}}, "test-only: preset schedule and flip",
            train_lengths={"paper": {"epochs": 2}}, flips={"paper": True}))


# --------------------------------------------------------------------------- config
def test_steps_and_epochs_are_exclusive_and_presets_fill_them(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.steps=3 and train\.epochs=2 are both set"):
        RunConfig.from_dict({"train": {"steps": 3, "epochs": 2}})
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        RunConfig.from_dict({"train": {"epochs": 0}})
    # the papers' schedules (pix2pix: Shin et al.'s code; spade/redgan: the Red-GAN reference niter=50)
    for name, preset, epochs in [("pix2pix", "paper", 200), ("spade", "paper", 50), ("redgan", "paper", 50)]:
        c = RunConfig.from_dict({"model": {"name": name, "preset": preset}})
        assert (c.train.steps, c.train.epochs, c.train.flip) == (None, epochs, True), (name, preset)
    # no schedule in the preset: 2000 steps, no flip; an explicit value wins over the preset's
    c = RunConfig.from_dict({"model": {"name": "pix2pix", "preset": "cpu"}})
    assert (c.train.steps, c.train.epochs, c.train.flip) == (2000, None, False)
    c = RunConfig.from_dict({"model": {"name": "pix2pix", "preset": "paper"}, "train": {"steps": 7, "flip": False}})
    assert (c.train.steps, c.train.epochs, c.train.flip) == (7, None, False)
    # the resolved values are what config.yaml holds, and it reads back
    p = tmp_path / "c.yaml"
    c = RunConfig.from_dict({"model": {"name": "pix2pix", "preset": "paper"}})
    c.save(p)
    assert RunConfig.from_yaml(p).train.epochs == 200
    # an override of steps on a config that names epochs: one clear error
    with pytest.raises(ConfigError, match="both set"):
        RunConfig.from_yaml(p, ["train.steps=10"])
    assert RunConfig.from_yaml(p, ["train.steps=10", "train.epochs=null"]).train.steps == 10


def test_a_run_saved_before_epochs_and_flip_reads_back(tmp_path):
    cfg = RunConfig.from_dict({"model": {"name": "pix2pix", "preset": "paper"}, "train": {"steps": 300}})
    raw = cfg.model_dump(mode="json")
    del raw["train"]["epochs"], raw["train"]["flip"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    back = read_saved_run_config(path)
    # the run trained 300 steps without flips: it does not take the paper preset's 200 epochs or flip
    assert (back.train.steps, back.train.epochs, back.train.flip) == (300, None, False)


def test_list_models_shows_the_training_length():
    from medbalance.cli.main import app

    r = CliRunner().invoke(app, ["train", "--list-models"])
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("pix2pix "))
    assert "paper: batch 1, 200 epochs, flip" in line and "cpu: batch 32, 2000 steps" in line


# --------------------------------------------------------------------------- epochs
def test_epochs_convert_to_whole_drop_last_epochs(tmp_path):
    ds = tm.tiny_dataset(n=24)
    t = Trainer(make_cfg(tmp_path / "a", epochs=3), ds)
    assert (t.n_train, t.steps_per_epoch, t.total_steps) == (24, 4, 12)  # floor(24 / 5) = 4 batches per epoch
    t = Trainer(make_cfg(tmp_path / "b", epochs=2, val_fraction=0.25), ds)
    assert t.n_train == 18 and t.total_steps == 2 * (18 // 5)  # counted on the training part only
    res = train(make_cfg(tmp_path / "c", epochs=2, batch_size=8), ds)
    assert res.step == 6 and len(_losses(tmp_path / "c")) == 6
    assert (tmp_path / "c" / "samples" / "step_000006.png").is_file()
    state = (tmp_path / "c" / "checkpoints" / "step_000006" / "state.json").read_text()
    assert '"total_steps": 6' in state


def test_epochs_resume_equals_uninterrupted(tmp_path):
    ds = tm.tiny_dataset(n=24)
    full = train(make_cfg(tmp_path / "full", epochs=3), ds)  # 12 steps
    # interrupted at an epoch boundary, then resumed
    train(make_cfg(tmp_path / "p1", epochs=1), ds)
    r1 = train(make_cfg(tmp_path / "p1", epochs=3), ds, resume=True)
    # interrupted mid-epoch (a steps run stopped at 6), then resumed with the epochs schedule
    train(make_cfg(tmp_path / "p2", steps=6), ds)
    r2 = train(make_cfg(tmp_path / "p2", epochs=3), ds, resume=True)
    ref = _losses(tmp_path / "full")
    assert len(ref) == 12 and _losses(tmp_path / "p1") == ref and _losses(tmp_path / "p2") == ref
    _assert_same_weights(full, r1)
    _assert_same_weights(full, r2)


# --------------------------------------------------------------------------- flip
def test_flip_is_identical_on_image_and_mask_per_sample(tmp_path):
    ds = tm.tiny_dataset(n=24)  # off-centre blobs + noise: every sample differs from its mirror image
    assert all(not torch.equal(ds.images[i], ds.images[i].flip(-1)) for i in range(len(ds)))
    t = Trainer(make_cfg(tmp_path / "a", steps=8, flip=True), ds)
    n_flipped = 0
    for step in range(8):
        b = {k: v.cpu() for k, v in t.get_batch(step).items()}  # the run may be on a GPU
        flips = flip_decisions(1, step, 5)
        assert torch.equal(t.batch_flips(step).cpu(), flips)
        for i, idx in enumerate(b["index"].tolist()):
            img, msk = ds.images[idx], ds.masks[idx]
            want_img, want_msk = (img.flip(-1), msk.flip(-1)) if flips[i] else (img, msk)
            assert torch.equal(b["image"][i], want_img) and torch.equal(b["mask"][i], want_msk), (step, i)
        n_flipped += int(flips.sum())
    assert 0 < n_flipped < 40  # both outcomes occur
    # off: the dataset's samples as they are
    t0 = Trainer(make_cfg(tmp_path / "b", steps=8, flip=False), ds)
    b = {k: v.cpu() for k, v in t0.get_batch(0).items()}
    assert torch.equal(b["image"], ds.images[b["index"]]) and torch.equal(b["mask"], ds.masks[b["index"]])
    # seeded by (seed, step) only
    assert torch.equal(flip_decisions(1, 5, 64), flip_decisions(1, 5, 64))
    assert not torch.equal(flip_decisions(1, 5, 64), flip_decisions(1, 6, 64))
    assert not torch.equal(flip_decisions(1, 5, 64), flip_decisions(2, 5, 64))
    share = torch.stack([flip_decisions(0, s, 100) for s in range(50)]).double().mean()
    assert 0.45 < share < 0.55


def test_flip_batch_on_volumes_flips_the_last_axis_per_sample():
    x = torch.arange(2 * 1 * 2 * 3 * 4, dtype=torch.float32).view(2, 1, 2, 3, 4)  # (B, C, D, H, W)
    m = torch.arange(2 * 2 * 3 * 4).view(2, 2, 3, 4)  # (B, D, H, W)
    f = torch.tensor([True, False])
    fx, fm = flip_batch(x, f), flip_batch(m, f)
    assert torch.equal(fx[0], x[0].flip(-1)) and torch.equal(fx[1], x[1])
    assert torch.equal(fm[0], m[0].flip(-1)) and torch.equal(fm[1], m[1])
    assert fx[0, 0, 1, 2, 0] == x[0, 0, 1, 2, 3]


def test_flip_resume_equals_uninterrupted(tmp_path):
    ds = tm.tiny_dataset(n=24)
    kw = dict(steps=7, flip=True, ema_decay=0.9)
    full = train(make_cfg(tmp_path / "full", **kw), ds)
    train(make_cfg(tmp_path / "part", **{**kw, "steps": 3}), ds)
    resumed = train(make_cfg(tmp_path / "part", **kw), ds, resume=True)
    assert _losses(tmp_path / "part") == _losses(tmp_path / "full") and len(_losses(tmp_path / "full")) == 7
    _assert_same_weights(full, resumed)
    # the flip changes what is trained on, and a resume may not switch it
    noflip = train(make_cfg(tmp_path / "noflip", **{**kw, "flip": False}), ds)
    assert _losses(tmp_path / "noflip") != _losses(tmp_path / "full")
    assert noflip.step == 7
    with pytest.raises(ConfigError, match=r"train\.flip"):
        train(make_cfg(tmp_path / "part", **{**kw, "steps": 9, "flip": False}), ds, resume=True)


def test_preset_schedule_and_flip_apply_in_training(tmp_path):
    _register_flip_spec()
    ds = tm.tiny_dataset(n=24)
    cfg = RunConfig.from_dict({"out_dir": str(tmp_path / "run"), "model": {"name": "tiny-preset-test", "preset": "paper"},
                               "train": {"batch_size": 8, "tensorboard": False, "precision": "fp32"}})
    assert (cfg.train.steps, cfg.train.epochs, cfg.train.flip) == (None, 2, True)
    t = Trainer(cfg, ds)
    b = {k: v.cpu() for k, v in t.get_batch(0).items()}
    flips = flip_decisions(cfg.train.seed, 0, 8)
    assert flips.any()
    want = torch.where(flips.view(-1, 1, 1, 1), ds.images[b["index"]].flip(-1), ds.images[b["index"]])
    assert torch.equal(b["image"], want)
    res = train(cfg, ds)
    assert res.step == 6  # 2 epochs of floor(24 / 8) batches
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]
    assert (saved["steps"], saved["epochs"], saved["flip"]) == (None, 2, True)
    cpu = RunConfig.from_dict({"model": {"name": "tiny-preset-test", "preset": "cpu"}})
    assert (cpu.train.steps, cpu.train.flip) == (2000, False)
