"""train.channels_last: null resolves to the model's choice and is saved; the channels-last (NHWC) layout trains the
same model as NCHW up to float rounding, resumes exactly, and its checkpoints load into the default layout."""

from __future__ import annotations

import pytest
import torch
import yaml

from medbalance.data.config import DataConfig
from medbalance.data.sources import load_dataset
from medbalance.models.registry import MODELS, ensure_registered
from medbalance.training.config import RunConfig
from medbalance.training.engine import train
from medbalance.training.logging import read_losses_csv
from medbalance.training.run import load_run

TINY = {"z_dim": 8, "ngf": 8, "ndf": 8, "max_mult": 4, "embed_dim": 4}
PHANTOM = {"path": "phantom", "phantom": {"n": 24, "size": 32, "seed": 1}}


def _cfg(out, **train_kw) -> RunConfig:
    t = {"steps": 4, "batch_size": 8, "precision": "fp32", "checkpoint_every": 2, "sample_every": 1000,
         "log_every": 1, "tensorboard": False, "seed": 0, "threads": 1, **train_kw}
    return RunConfig.from_dict({"out_dir": str(out), "data": PHANTOM, "model": {"name": "dcgan", "preset": "cpu",
                                "params": {**TINY, "conditional": True}}, "train": t})


def test_null_resolves_to_the_models_choice_and_is_saved(tmp_path):
    ensure_registered()
    expect = {"dcgan": True, "acgan": True, "lapgan": True, "lapgan-joint": True, "pix2pix": True, "redgan": True,
              "spade": False, "diffusion": False, "latent-diffusion": False}
    for name, on in expect.items():
        assert MODELS.get(name).method.channels_last is on, name
        assert RunConfig.from_dict({"model": {"name": name, "preset": "cpu"}}).train.channels_last is on, name
    # an explicit value is kept
    assert RunConfig.from_dict({"model": {"name": "dcgan"}, "train": {"channels_last": False}}).train.channels_last is False
    assert RunConfig.from_dict({"model": {"name": "spade"}, "train": {"channels_last": True}}).train.channels_last is True
    res = train(_cfg(tmp_path / "run", steps=1), load_dataset(DataConfig(**PHANTOM)))
    saved = yaml.safe_load((res.run_dir / "config.yaml").read_text())
    assert saved["train"]["channels_last"] is True
    conv = [p for p in res.method.G.parameters() if p.dim() == 4]  # the networks trained in NHWC
    assert conv and all(p.is_contiguous(memory_format=torch.channels_last) for p in conv)
    assert not all(p.is_contiguous() for p in conv)


def test_nhwc_trains_the_same_model_and_loads_in_nchw(tmp_path):
    ds = load_dataset(DataConfig(**PHANTOM))
    a = train(_cfg(tmp_path / "nchw", channels_last=False), ds)
    b = train(_cfg(tmp_path / "nhwc", channels_last=True), ds)
    la, lb = read_losses_csv(tmp_path / "nchw" / "losses.csv"), read_losses_csv(tmp_path / "nhwc" / "losses.csv")
    assert len(la) == len(lb) == 4 and len(set(la[0]) - {"step", "images_per_s"}) >= 2  # G and D losses at least
    for ra, rb in zip(la, lb):
        for k in set(ra) - {"step", "images_per_s"}:
            assert rb[k] == pytest.approx(ra[k], rel=1e-3, abs=1e-4), (ra, rb)
    for name in ("G", "D"):
        sa, sb = a.method.networks()[name].state_dict(), b.method.networks()[name].state_dict()
        for k, v in sa.items():
            assert torch.allclose(v.float(), sb[k].float(), atol=1e-4, rtol=1e-3), (name, k)
    # the NHWC run's checkpoint loads into the default layout and computes what the trained network computes
    run = load_run(tmp_path / "nhwc")
    assert all(p.is_contiguous() for p in run.method.G.parameters())
    labels = torch.arange(6) % ds.num_classes
    z = torch.randn(6, TINY["z_dim"], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        trained, loaded = b.method.G.eval(), run.method.G.eval()
        assert torch.allclose(trained(z, labels), loaded(z, labels), atol=1e-5)


def test_nhwc_resume_equals_uninterrupted(tmp_path):
    ds = load_dataset(DataConfig(**PHANTOM))
    full = train(_cfg(tmp_path / "full", steps=5, channels_last=True), ds)
    train(_cfg(tmp_path / "part", steps=2, channels_last=True), ds)
    resumed = train(_cfg(tmp_path / "part", steps=5, channels_last=True), ds, resume=True)
    for name in ("G", "D"):
        for k, v in full.method.networks()[name].state_dict().items():
            assert torch.equal(v, resumed.method.networks()[name].state_dict()[k]), (name, k)
