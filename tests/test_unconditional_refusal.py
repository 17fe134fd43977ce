"""Issue 16: every path that writes a class label on a synthetic image refuses a generator that cannot condition
on that class (unconditional dcgan / lapgan / lapgan-joint), with one line; the conditional variants pass."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from medbalance.cli.main import app
from medbalance.data import load_dataset
from medbalance.errors import ConfigError
from medbalance.models.registry import build_method
from medbalance.synthesis.oversampler import (
    GenerativeOverSampler,
    check_can_label,
    conditions_on_class,
)

runner = CliRunner()
PHANTOM = {"n": 45, "size": 32, "seed": 3}


@pytest.fixture(scope="module")
def phantom():
    return load_dataset("phantom", phantom=PHANTOM)


def _fake_run(name, params, ds):
    method = build_method(name, "cpu", params, ds.info())
    return SimpleNamespace(method=method, G=method.G, info=ds.info(), run_dir=f"<{name}>", train_ids=list(ds.ids))


@pytest.mark.parametrize("name", ["dcgan", "lapgan", "lapgan-joint"])
def test_unconditional_models_are_not_class_conditional(name, phantom):
    assert not conditions_on_class(_fake_run(name, {"conditional": False}, phantom).method)
    assert conditions_on_class(_fake_run(name, {"conditional": True}, phantom).method)


@pytest.mark.parametrize("name", ["dcgan", "lapgan", "lapgan-joint"])
def test_oversampler_refuses_unconditional(name, phantom):
    run = _fake_run(name, {"conditional": False}, phantom)
    with pytest.raises(ConfigError, match=f"model '{name}' is not class-conditional"):
        GenerativeOverSampler(run, progress=False).fit(phantom)
    ok = _fake_run(name, {"conditional": True}, phantom)
    s = GenerativeOverSampler(ok, sampling_strategy={"extra_axial": phantom.class_counts()["extra_axial"] + 2},
                              progress=False).fit(phantom)
    syn = s.sample()
    assert len(syn) == 2 and set(syn.labels.tolist()) == {phantom.class_names.index("extra_axial")}


def test_mask_conditioned_without_class_needs_same_class_pool(phantom):
    spade = _fake_run("spade", {}, phantom).method
    check_can_label(spade, mask_pool="same_class")  # the class is carried by the mask
    with pytest.raises(ConfigError, match="not class-conditional"):
        check_can_label(spade, mask_pool="any")
    with pytest.raises(ConfigError, match="not class-conditional"):
        check_can_label(spade, mask_pool="same_class", mask_source="folder")


def test_downstream_generator_arm_refuses_unconditional(phantom):
    from medbalance.experiments.downstream import SyntheticSource, Split, parse_arm

    src = SyntheticSource(run=_fake_run("lapgan", {}, phantom))  # the paper/cpu default is unconditional
    assert src.run.method.conditional is False
    with pytest.raises(ConfigError, match="not class-conditional"):
        src.take(Split(phantom, phantom, phantom), parse_arm("real+synthetic"), {"extra_axial": 3}, 0, "real")


def test_demo_generator_is_class_conditional(phantom):
    from medbalance.experiments.demo import GENERATOR

    method = build_method(GENERATOR["name"], GENERATOR["preset"], GENERATOR.get("params", {}), phantom.info())
    check_can_label(method, mask_pool="any")  # would raise for a model that cannot take the class


@pytest.fixture(scope="module")
def lapgan_run(tmp_path_factory):
    from medbalance.training.config import RunConfig
    from medbalance.training.engine import train

    out = tmp_path_factory.mktemp("uncond") / "lapgan"
    train(RunConfig.from_dict({
        "out_dir": str(out), "data": {"path": "phantom", "phantom": PHANTOM},
        "model": {"name": "lapgan", "preset": "cpu"},
        "train": {"steps": 1, "batch_size": 4, "checkpoint_every": 1, "sample_every": 1, "tensorboard": False},
    }))
    return out


def test_cli_generate_and_rebalance_refuse_unconditional_lapgan(lapgan_run, tmp_path):
    r = runner.invoke(app, ["rebalance", "phantom", str(tmp_path / "o"), "--run", str(lapgan_run)])
    assert r.exit_code == 2, r.output
    assert "model 'lapgan' is not class-conditional" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()
    r = runner.invoke(app, ["generate", str(lapgan_run), "--n", "2", "--class", "extra_axial", "--out",
                            str(tmp_path / "g")])
    assert r.exit_code == 2, r.output
    assert "not class-conditional" in r.output
