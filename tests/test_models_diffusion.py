"""Diffusion models (``diffusion``, ``latent-diffusion``): shapes 2D/3D, learning, classifier-free guidance,
seeded sampling, resume equivalence, EMA default, memorisation report, and export through the CLI with the
sampler's provenance. Tiny MONAI networks on 8-32 px data made here."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

import _tiny_method as tm
from medbalance.cli.main import app
from medbalance.data.dataset import DataInfo
from medbalance.errors import ConfigError
from medbalance.evaluation.diffusion_memorization import memorization_report, nn_distance_ratio
from medbalance.models.diffusion import one_hot_nd
from medbalance.models.registry import build_method
from medbalance.training.config import RunConfig
from medbalance.training.engine import train
from medbalance.training.logging import read_losses_csv
from medbalance.training.run import load_run

TINY = {"channels": [8, 16], "attention_levels": [False, True], "num_head_channels": 8, "norm_num_groups": 4,
        "num_res_blocks": 1, "sample_steps": 3, "guidance_scale": 3.0}  # fmt: skip
TINY_LATENT = {**TINY, "ae_channels": [8, 8], "ae_norm_num_groups": 4, "latent_channels": 2, "ae_steps": 3}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def build(name: str, info: DataInfo, **params):
    torch.manual_seed(0)
    base = TINY_LATENT if name == "latent-diffusion" else TINY
    m = build_method(name, "cpu", {**base, **params}, info)
    m.setup_optimizers()
    return m


def trained(m, ds, steps: int = 5):
    """A few steps, so that MONAI's zero-initialised output convolution no longer hides the conditioning."""
    torch.manual_seed(1)
    for s in range(steps):
        m.training_step(batch_of(ds, 12), s)
    return m


def batch_of(ds, n: int = 8) -> dict[str, torch.Tensor]:
    b = {"image": ds.images[:n], "label": ds.labels[:n]}
    if ds.masks is not None:
        b["mask"] = ds.masks[:n]
    return b


# --------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("name", ["diffusion", "latent-diffusion"])
@pytest.mark.parametrize("mask", [False, True])
def test_shapes_2d(name, mask):
    ds = tm.tiny_dataset(n=12, size=16)
    m = build(name, ds.info(), mask_conditioning=mask)
    assert m.needs == (("label", "mask") if mask else ("label",))
    for s in range(5):  # the latent model crosses from its autoencoder phase (3 steps) into diffusion
        logs = m.training_step(batch_of(ds), s)
        assert torch.isfinite(logs["G"]) and (s >= 3 or all(torch.isfinite(v) for v in logs.values()))
    out = m.generate(torch.tensor([0, 1, 2]), masks=ds.masks[:3] if mask else None, generator=gen(0))
    assert out.shape == (3, 1, 16, 16) and out.min() >= -1 and out.max() <= 1
    if name == "latent-diffusion":
        assert m.space_shape() == (8, 8) and float(m.AE.latent_scale) > 0
        assert sorted(m.networks()) == ["AE", "G"]
    if mask:
        with pytest.raises(ConfigError, match="masks are required"):
            m.generate(torch.tensor([0]), generator=gen(0))


@pytest.mark.parametrize("name", ["diffusion", "latent-diffusion"])
def test_shapes_3d(name):
    info = DataInfo(channels=1, spatial_shape=(8, 8, 8), class_names=["a", "b"], mask_values=[0, 1])
    m = build(name, info, mask_conditioning=True, **({"ae_steps": 1} if name == "latent-diffusion" else {}))
    masks = (torch.rand(2, 8, 8, 8) > 0.5).long()
    batch = {"image": torch.rand(2, 1, 8, 8, 8) * 2 - 1, "label": torch.tensor([0, 1]), "mask": masks}
    for s in range(2):
        m.training_step(batch, s)
    out = m.generate(torch.tensor([0, 1]), masks=masks, generator=gen(0))
    assert out.shape == (2, 1, 8, 8, 8)


def test_bad_configurations_name_the_problem():
    ds = tm.tiny_dataset(n=12, size=10)  # 10 px: a 3-level U-Net needs sides divisible by 4
    with pytest.raises(ConfigError, match="divisible by 4"):
        build("diffusion", ds.info(), channels=[8, 8, 8], attention_levels=[False, False, False])
    with pytest.raises(ConfigError, match="attention_levels"):
        build("diffusion", ds.info(), attention_levels=[False])
    with pytest.raises(ConfigError, match="label maps"):
        build("diffusion", tm.tiny_dataset(n=12, size=16, masks=False).info(), mask_conditioning=True)
    m = build("diffusion", tm.tiny_dataset(n=12, size=16).info())
    with pytest.raises(ConfigError, match="class index out of range"):
        m.generate(torch.tensor([5]), generator=gen(0))


def test_one_hot_nd_matches_reference():
    m = torch.randint(0, 3, (2, 4, 5, 6))
    oh = one_hot_nd(m, 3)
    assert oh.shape == (2, 3, 4, 5, 6)
    assert torch.equal(oh.argmax(1), m) and torch.equal(oh.sum(1), torch.ones_like(m, dtype=oh.dtype))


# --------------------------------------------------------------------------- learning
@pytest.mark.parametrize("objective", ["rflow", "ddpm"])
def test_a_few_steps_lower_the_loss(objective):
    ds = tm.tiny_dataset(n=16, size=16)
    m = build("diffusion", ds.info(), objective=objective, lr=3e-3)
    batch = batch_of(ds, 16)

    def loss_at_fixed_noise() -> float:
        torch.manual_seed(123)  # the same timesteps, noise and label dropout every time
        with torch.no_grad():
            return float(np.mean([float(m.diffusion_loss(batch)) for _ in range(4)]))

    before = loss_at_fixed_noise()
    torch.manual_seed(0)
    for s in range(40):
        m.training_step(batch, s)
    after = loss_at_fixed_noise()
    assert after < 0.8 * before, (before, after)


def test_latent_autoencoder_phase_learns_then_freezes():
    ds = tm.tiny_dataset(n=16, size=16)
    m = build("latent-diffusion", ds.info(), ae_steps=30, ae_lr=3e-3)
    batch = batch_of(ds, 16)
    g_before = {k: v.clone() for k, v in m.G.state_dict().items()}
    recs = [float(m.training_step(batch, s)["AE_rec"]) for s in range(30)]
    assert all(torch.equal(v, m.G.state_dict()[k]) for k, v in g_before.items())  # phase 1 leaves the U-Net alone
    assert np.mean(recs[-5:]) < 0.7 * np.mean(recs[:5]), recs
    ae_before = {k: v.clone() for k, v in m.AE.net.state_dict().items()}
    g_before = {k: v.clone() for k, v in m.G.state_dict().items()}
    logs = m.training_step(batch, 30)  # first diffusion step: the autoencoder is frozen, the U-Net moves
    assert torch.isfinite(logs["G"]) and torch.isnan(logs["AE_rec"])
    assert all(torch.equal(v, m.AE.net.state_dict()[k]) for k, v in ae_before.items())
    assert any(not torch.equal(v, m.G.state_dict()[k]) for k, v in g_before.items())
    # latent scale = 1 / std of the latent means of the first diffusion batch
    with torch.no_grad():
        z = m.AE.encode_mean(batch["image"])
    assert float(m.AE.latent_scale) == pytest.approx(1.0 / float(z.float().std()), rel=1e-4)


# --------------------------------------------------------------------------- guidance and determinism
def test_classifier_free_guidance_changes_output_for_a_changed_label():
    ds = tm.tiny_dataset(n=12, size=16)
    m = trained(build("diffusion", ds.info(), lr=3e-3), ds)
    a = m.generate(torch.tensor([0, 0]), generator=gen(5))
    b = m.generate(torch.tensor([1, 1]), generator=gen(5))
    assert not torch.allclose(a, b)  # same noise, another class
    # guidance is applied: w = 3 differs from w = 1 (the conditional model alone) by (w - 1) * (cond - uncond)
    x1 = m.sample_space(m.G, torch.tensor([0, 1]), None, gen(5), guidance_scale=1.0)
    x3 = m.sample_space(m.G, torch.tensor([0, 1]), None, gen(5), guidance_scale=3.0)
    assert not torch.allclose(x1, x3)
    # a model without class conditioning ignores the label
    u = trained(build("diffusion", ds.info(), class_conditional=False, lr=3e-3), ds)
    assert torch.equal(u.generate(torch.tensor([0]), generator=gen(5)), u.generate(torch.tensor([2]), generator=gen(5)))


def test_guidance_matches_independent_computation():
    """One rectified-flow Euler step with guidance equals the formula computed by hand from the network."""
    ds = tm.tiny_dataset(n=12, size=16)
    m = trained(build("diffusion", ds.info(), sample_steps=1, guidance_scale=2.5, lr=3e-3), ds)
    labels = torch.tensor([0, 2])
    x = torch.randn((2, 1, 16, 16), generator=gen(9))
    t = torch.full((2,), 1000)
    with torch.no_grad():
        vc = m.G(x, t, class_labels=labels)
        vu = m.G(x, t, class_labels=torch.full_like(labels, 3))  # null class = num_classes
    assert not torch.allclose(vc, vu)
    expected = x + (vu + 2.5 * (vc - vu)) * 1.0  # dt = 1000 / 1000
    got = m.sample_space(m.G, labels, None, gen(9))
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("name", ["diffusion", "latent-diffusion"])
def test_sampling_is_deterministic_for_a_fixed_seed(name):
    ds = tm.tiny_dataset(n=12, size=16)
    m = trained(build(name, ds.info(), objective="ddpm", lr=3e-3, ae_steps=2) if name == "latent-diffusion"
                else build(name, ds.info(), objective="ddpm", lr=3e-3), ds)
    labels = torch.tensor([0, 1, 2, 1])
    a = m.generate(labels, generator=gen(11))
    torch.manual_seed(999)  # the global RNG does not matter
    b = m.generate(labels, generator=gen(11))
    c = m.generate(labels, generator=gen(12))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert m.sampling_provenance()["sampler"] == "ddim"


# --------------------------------------------------------------------------- engine
def _cfg(out, name, steps, **params):
    base = TINY_LATENT if name == "latent-diffusion" else TINY
    return RunConfig.from_dict({
        "out_dir": str(out), "model": {"name": name, "preset": "cpu", "params": {**base, **params}},
        "train": {"steps": steps, "batch_size": 5, "precision": "fp32", "checkpoint_every": 4, "sample_every": 4,
                  "log_every": 1, "tensorboard": False, "seed": 2, "sample_columns": 2},
    })  # fmt: skip


def test_ema_is_on_by_default_for_diffusion():
    assert _cfg("x", "diffusion", 2).train.ema_decay == pytest.approx(0.995)
    assert RunConfig.from_dict({"model": {"name": "latent-diffusion", "preset": "paper"}}).train.ema_decay == 0.9999
    assert RunConfig.from_dict({"model": {"name": "dcgan"}}).train.ema_decay is None  # GANs: unchanged
    off = RunConfig.from_dict({"model": {"name": "diffusion"}, "train": {"ema_decay": 0}})
    assert off.train.ema_decay == 0


def test_resume_equals_uninterrupted_latent(tmp_path):
    ds = tm.tiny_dataset(n=24, size=16)
    full = train(_cfg(tmp_path / "full", "latent-diffusion", 7), ds)  # AE steps 0-2, diffusion 3-6
    train(_cfg(tmp_path / "part", "latent-diffusion", 4), ds)  # stops after one diffusion step
    resumed = train(_cfg(tmp_path / "part", "latent-diffusion", 7), ds, resume=True)
    a = read_losses_csv(tmp_path / "full" / "losses.csv")
    b = read_losses_csv(tmp_path / "part" / "losses.csv")
    # (the frozen autoencoder's losses are NaN in phase 2; NaN != NaN, so compare them as None)
    drop = lambda rows: [{k: None if v != v else v for k, v in r.items() if k != "images_per_s"} for r in rows]  # noqa: E731
    assert drop(a) == drop(b) and len(a) == 7
    assert all(np.isfinite(r["G"]) for r in a) and np.isfinite(a[2]["AE_rec"]) and np.isnan(a[3]["AE_rec"])
    for name in ("G", "AE"):
        for k, v in full.method.networks()[name].state_dict().items():
            assert torch.equal(v, resumed.method.networks()[name].state_dict()[k]), (name, k)
    assert full.ema_G is not None
    for k, v in full.ema_G.state_dict().items():
        assert torch.equal(v, resumed.ema_G.state_dict()[k])
    # the saved run loads and samples with the EMA U-Net and the checkpoint's autoencoder and latent scale
    run = load_run(tmp_path / "part")
    assert float(run.method.AE.latent_scale) == float(full.method.AE.latent_scale) > 0
    x = run.generate([0, 1, 2], seed=4)
    assert x.shape == (3, 1, 16, 16) and torch.equal(x, run.generate([0, 1, 2], seed=4))
    assert (tmp_path / "part" / "samples" / "step_000007.png").is_file()


# --------------------------------------------------------------------------- memorisation
def test_nn_distance_ratio_flags_copies_against_reference():
    g = gen(0)
    train_x = torch.randn(30, 1, 6, 6, generator=g)
    copies = train_x[:5] + 1e-3 * torch.randn(5, 1, 6, 6, generator=g)
    new = torch.randn(5, 1, 6, 6, generator=g)
    ratio, d1, nearest = nn_distance_ratio(torch.cat([copies, new]), train_x, n=4)
    # independent computation with numpy
    q = torch.cat([copies, new]).reshape(10, -1).double().numpy()
    t = train_x.reshape(30, -1).double().numpy()
    d = np.sqrt(((q[:, None] - t[None]) ** 2).sum(-1))
    ds = np.sort(d, 1)
    assert np.allclose(ratio, ds[:, 0] / ds[:, 1:5].mean(1)) and np.allclose(d1, ds[:, 0])
    assert (nearest[:5] == np.arange(5)).all()
    assert (ratio[:5] < 0.5).all() and (ratio[5:] > 0.5).all()


def test_memorization_report_detects_a_copying_generator(tmp_path):
    ds = tm.tiny_dataset(n=24, size=16)
    cfg = _cfg(tmp_path / "run", "diffusion", 2)
    cfg.train.val_fraction = 0.25
    train(cfg, ds)
    rep = memorization_report(tmp_path / "run", ds, n_per_class=4)
    saved = json.loads((tmp_path / "run" / "memorization.json").read_text())
    assert saved["near_copies"] == rep["near_copies"] and rep["n_synthetic"] == 12
    assert "dcr" in rep and "heldout_near_copy_share" in rep and (tmp_path / "run" / "memorization_pairs.png").is_file()
    assert rep["near_copy_share"] == 0.0  # an untrained model draws noise, not copies

    # a "generator" that returns training images is flagged
    run = load_run(tmp_path / "run")
    train_ids = set(run.train_ids)
    pool = ds.images[[i for i, k in enumerate(ds.ids) if k in train_ids]]

    def copying(labels, masks=None, conditions=None, generator=None, G=None):
        return pool[torch.randint(len(pool), (len(labels),), generator=generator)]

    import medbalance.training.run as run_mod

    orig = run_mod.load_run

    def patched(*a, **k):
        r = orig(*a, **k)
        r.method.generate = copying
        return r

    run_mod.load_run = patched
    try:
        rep2 = memorization_report(tmp_path / "run", ds, n_per_class=4, write=False)
    finally:
        run_mod.load_run = orig
    assert rep2["near_copy_share"] == 1.0 and rep2["exact_duplicates"] == 12


# --------------------------------------------------------------------------- CLI: train -> rebalance
def _rows(path):
    return list(csv.DictReader(open(path)))


def test_cli_train_writes_memorization_and_rebalance_exports_provenance(tmp_path):
    runner = CliRunner()
    cfg = {
        "out_dir": str(tmp_path / "run"),
        "data": {"path": "phantom", "phantom": {"n": 48, "size": 32, "seed": 1, "imbalance": [3, 2, 1]}},
        "model": {"name": "latent-diffusion", "preset": "cpu",
                  "params": {**TINY_LATENT, "mask_conditioning": True, "ae_steps": 2}},
        "train": {"steps": 4, "batch_size": 8, "checkpoint_every": 4, "sample_every": 4, "val_fraction": 0.25,
                  "tensorboard": False, "precision": "fp32"},
    }  # fmt: skip
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = runner.invoke(app, ["train", "--config", str(p)])
    assert r.exit_code == 0, r.output
    assert "memorisation:" in r.output
    rep = json.loads((tmp_path / "run" / "memorization.json").read_text())
    assert rep["n_synthetic"] == 3 * 32 and "dcr" in rep

    out = tmp_path / "balanced"
    r = runner.invoke(app, ["rebalance", "phantom", str(out), "--run", str(tmp_path / "run"), "--filter",
                            "memorization", "--batch-size", "16"])
    assert r.exit_code == 0, r.output
    rows = _rows(out / "manifest.csv")
    syn = [row for row in rows if row["synthetic"] == "1"]
    assert syn and all(row["generator"] == "latent-diffusion" and row["parent_mask_id"] for row in syn)
    prov = json.loads(syn[0]["sampling"])
    assert prov["sampler"] == "rflow-euler" and prov["steps"] == 3 and prov["guidance_scale"] == 3.0
    assert all(row["sampling"] == "" for row in rows if row["synthetic"] == "0")
    card = json.loads((out / "model_card.json").read_text())
    assert card["sampling"]["steps"] == 3 and card["train"]["ema_decay"] == pytest.approx(0.995)
    assert card["parameters"]["AE"] > 0


def test_class_only_run_through_the_oversampler(tmp_path):
    from medbalance.synthesis.oversampler import GenerativeOverSampler

    ds = tm.tiny_dataset(n=24, size=16, masks=False)
    keep = torch.cat([torch.where(ds.labels == 0)[0], torch.where(ds.labels == 1)[0][:4], torch.where(ds.labels == 2)[0][:2]])
    small = ds.subset(keep.numpy())
    train(_cfg(tmp_path / "run", "diffusion", 2), small)
    run = load_run(tmp_path / "run")
    sampler = GenerativeOverSampler(run, random_state=0, batch_size=4)
    sampler.fit(small)
    syn = sampler.sample()
    assert torch.bincount(torch.cat([small.labels, syn.labels]), minlength=3).tolist() == [8, 8, 8]
