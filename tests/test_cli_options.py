"""One CLI style: every command that reads a dataset takes the same data options, every command that takes a config
takes ``--config FILE`` and ``--set key=value``, and each such option has an effect (end to end, tiny phantom data)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from medbalance.cli.main import app
from medbalance.cli.options import DataOptions

runner = CliRunner()

DATA_OPTIONS = {"--source", "--modality", "--label-pattern", "--brain-mask-pattern", "--image-size", "--image-column",
                "--mask-column", "--label-column", "--id-column", "--group-column", "--condition-column"}
READS_DATA = ["inspect", "train", "train-task", "generate", "rebalance", "evaluate", "downstream", "feature-augment"]
TAKES_CONFIG = ["inspect", "train", "train-task", "downstream", "feature-augment"]
TINY = ["--set", "data.phantom.n=30", "--set", "data.phantom.size=32"]


def _options(name: str) -> dict[str, object]:
    cmd = typer.main.get_command(app).commands[name]
    return {opt: p for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}


def _error_lines(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if ln.startswith("error:")]


def test_every_command_spells_the_shared_options_the_same_way():
    for name in READS_DATA:
        assert DATA_OPTIONS <= set(_options(name)), (name, DATA_OPTIONS - set(_options(name)))
    for name in TAKES_CONFIG:
        opts = _options(name)
        assert {"--config", "--set"} <= set(opts), name
        assert opts["--set"].multiple, name
    for name in ("train", "train-task", "generate", "rebalance", "downstream", "feature-augment", "demo"):
        assert "--device" in _options(name), name
    for name in ("train-task", "generate", "rebalance", "demo"):
        opts = _options(name)
        assert "--overwrite" in opts and "--no-overwrite" not in opts, name
    for name in ("inspect", "evaluate"):  # --json prints JSON on stdout; --json-out writes a file
        opts = _options(name)
        assert opts["--json"].is_flag and not opts["--json-out"].is_flag, name
    for name in ("train", "train-task", "generate", "rebalance", "evaluate", "demo"):
        assert "--seed" in _options(name), name
    for name in ("downstream", "feature-augment"):
        assert "--seeds" in _options(name), name


def test_data_options_parse_to_one_data_config():
    from medbalance.cli.options import build_data_config

    opts = DataOptions(source="nifti", modality=["*t1*", "*flair*"], label_pattern="*seg*", image_size=16,
                       label_column="dx")
    cfg = build_data_config("root", opts, {"image_size": 64, "nifti": {"brain_mask_pattern": "*mask*"}})
    assert cfg.path == "root" and cfg.source == "nifti" and cfg.image_size == 16 and cfg.label_column == "dx"
    assert cfg.nifti.modalities == ["*t1*", "*flair*"] and cfg.nifti.label_pattern == "*seg*"
    assert cfg.nifti.brain_mask_pattern == "*mask*"  # from the config section, not replaced by an unset option
    r = runner.invoke(app, ["inspect", "phantom", "--source", "nope"])
    assert r.exit_code == 2 and "--source must be one of" in r.output


def test_inspect_config_set_and_data_options(tmp_path):
    cfg = tmp_path / "data.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"phantom": {"n": 24, "size": 32}}}))
    r = runner.invoke(app, ["inspect", "phantom", "--config", str(cfg), "--set", "data.phantom.n=30",
                            "--image-size", "16", "--label-column", "label", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["n_samples"] == 30 and rep["loaded_shape"] == [1, 16, 16]


@pytest.fixture(scope="module")
def phantom_csv(tmp_path_factory) -> Path:
    """The phantom written as a manifest (60 images, 32 px): the column options apply to manifests."""
    out = tmp_path_factory.mktemp("cli") / "phantom"
    r = runner.invoke(app, ["datasets", "make", "phantom", str(out), "--n", "60", "--size", "32", "--seed", "1"])
    assert r.exit_code == 0, r.output
    return out / "manifest.csv"


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Path:
    """An ACGAN run trained for 2 steps by `medbalance train` without a YAML file."""
    out = tmp_path_factory.mktemp("cli") / "run"
    r = runner.invoke(app, ["train", "--model", "acgan", "--data", "phantom", *TINY, "--set", "train.batch_size=8",
                            "--set", "train.tensorboard=false", "--steps", "2", "--seed", "3", "--device", "cpu",
                            "--image-size", "32", "--label-column", "label", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


def test_train_without_a_config_file(cli_run, tmp_path):
    saved = yaml.safe_load((cli_run / "config.yaml").read_text())
    assert saved["model"]["name"] == "acgan" and saved["train"]["steps"] == 2 and saved["train"]["seed"] == 3
    assert saved["train"]["device"] == "cpu" and saved["data"]["image_size"] == 32
    assert saved["data"]["phantom"]["n"] == 30 and saved["out_dir"] == str(cli_run)
    assert (cli_run / "checkpoints" / "latest").read_text().strip() == "step_000002"
    # a config file, and options over it: --steps replaces the file's length in epochs
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": "dcgan"}, "data": {"path": "phantom"},
                                   "train": {"epochs": 50, "batch_size": 8, "tensorboard": False}}))
    r = runner.invoke(app, ["train", "--config", str(cfg), *TINY, "--steps", "1", "--out", str(tmp_path / "r2")])
    assert r.exit_code == 0, r.output
    saved = yaml.safe_load((tmp_path / "r2" / "config.yaml").read_text())
    assert saved["train"]["steps"] == 1 and saved["train"]["epochs"] is None
    # no data at all, and Red-GAN without its segmentor: one error line each, nothing trained
    r = runner.invoke(app, ["train", "--model", "dcgan", "--out", str(tmp_path / "r3")])
    assert r.exit_code == 2
    assert _error_lines(r.output) == ["error: no dataset: give --data DATA (or data.path in --config)"]
    r = runner.invoke(app, ["train", "--model", "redgan", "--data", "phantom", *TINY, "--steps", "1",
                            "--out", str(tmp_path / "r4")])
    lines = _error_lines(r.output)
    assert r.exit_code == 2 and len(lines) == 1 and "Red-GAN needs a pretrained segmentor" in lines[0], r.output
    assert not (tmp_path / "r4" / "checkpoints").exists()


def test_train_task_config_set_and_data_options(phantom_csv, tmp_path):
    cfg = tmp_path / "task.yaml"
    cfg.write_text(yaml.safe_dump({"task": {"epochs": 1, "batch_size": 8, "arch": "small_cnn"}}))
    out = tmp_path / "clf"
    r = runner.invoke(app, ["train-task", "classification", str(phantom_csv), str(out), "--config", str(cfg),
                            "--set", "data.mask_column=null", "--image-size", "16", "--group-column", "id",
                            "--device", "cpu", "--seed", "1"])
    assert r.exit_code == 0, r.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["image_size"] == 16 and saved["data"]["group_column"] == "id"
    assert saved["data"]["mask_column"] is None
    assert saved["task"]["epochs"] == 1 and saved["task"]["seed"] == 1 and saved["task"]["device"] == "cpu"


def test_generate_and_rebalance_take_the_data_options(cli_run, tmp_path):
    r = runner.invoke(app, ["generate", str(cli_run), "--n", "2", "--class", "homogeneous",
                            "--out", str(tmp_path / "g"), "--image-size", "32", "--label-column", "label",
                            "--device", "cpu", "--seed", "1"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "g" / "manifest.csv").is_file()
    out = tmp_path / "reb"
    r = runner.invoke(app, ["rebalance", "phantom", str(out), "--run", str(cli_run), "--image-size", "32",
                            "--source", "phantom", "--device", "cpu", "--no-real"])
    assert r.exit_code == 0, r.output
    assert (out / "manifest.csv").is_file()
    # --image-size other than the run's is refused (a generator makes images of its own size), not ignored
    for args in (["generate", str(cli_run), "--n", "2", "--class", "homogeneous", "--out", str(tmp_path / "g2")],
                 ["rebalance", "phantom", str(tmp_path / "r2"), "--run", str(cli_run)]):
        r = runner.invoke(app, [*args, "--image-size", "16"])
        lines = _error_lines(r.output)
        assert r.exit_code == 2 and len(lines) == 1 and "differs from the run's image size 32x32" in lines[0], r.output
    assert not (tmp_path / "g2").exists() and not (tmp_path / "r2").exists()


def test_evaluate_takes_the_data_options(cli_run, phantom_csv, tmp_path):
    syn = tmp_path / "syn"
    r = runner.invoke(app, ["rebalance", "phantom", str(syn), "--run", str(cli_run), "--no-real", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", "--real", str(phantom_csv), "--synthetic", str(syn / "manifest.csv"),
                            "--metric", "image_stats", "--image-size", "16", "--label-column", "label",
                            "--source", "manifest", "--no-cache", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["n_real"] == 60 and res["n_synthetic"] > 0
    r = runner.invoke(app, ["evaluate", "--real", str(phantom_csv), "--synthetic", str(syn / "manifest.csv"),
                            "--label-column", "nope", "--metric", "image_stats"])
    assert r.exit_code == 2 and "nope" in r.output


def test_downstream_config_set_data_options_and_device(phantom_csv, tmp_path, monkeypatch):
    gen = tmp_path / "gen.yaml"
    gen.write_text(yaml.safe_dump({"model": {"name": "dcgan"},
                                   "train": {"steps": 1, "batch_size": 8, "tensorboard": False}}))
    out = tmp_path / "exp"
    r = runner.invoke(app, ["downstream", str(phantom_csv), str(out), "--config", str(gen), "--set", "train.steps=2",
                            "--set", "model.name=acgan", "--group-column", "id", "--image-size", "32",
                            "--arms", "real,real+synthetic", "--seeds", "1", "--epochs", "1", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    saved = yaml.safe_load((out / "generator" / "config.yaml").read_text())
    assert saved["train"]["steps"] == 2 and saved["train"]["device"] == "cpu" and saved["data"]["image_size"] == 32
    rep = json.loads((out / "downstream.json").read_text())
    assert rep["arm_training_sets"]["real+synthetic"]["synthetic"] > 0
    assert 10 <= len(rep["test_ids"]) <= 14  # about 0.2 of 60 (per class, rounded): one group per image

    # --device reaches the generator: the run is loaded (and so generates) on the device asked for
    import medbalance.training.run as run_mod
    import medbalance.utils.device as dev

    asked, loaded = [], []
    real_select, real_load = dev.select_device, run_mod.load_run
    monkeypatch.setattr(dev, "select_device", lambda d="auto": asked.append(d) or real_select("cpu"))
    monkeypatch.setattr(run_mod, "load_run", lambda *a, **k: loaded.append(k.get("device")) or real_load(*a, **k))
    r = runner.invoke(app, ["downstream", str(phantom_csv), str(tmp_path / "exp2"), "--run", str(out / "generator"),
                            "--seeds", "1", "--epochs", "1", "--device", "cuda:7"])
    assert "cuda:7" in asked and loaded == ["cpu"], r.output
    r = runner.invoke(app, ["downstream", str(phantom_csv), str(tmp_path / "exp3"), "--run", str(out / "generator"),
                            "--image-size", "16"])
    assert r.exit_code == 2 and "differs from the run's image size" in r.output


def test_feature_augment_config_set_and_data_options(phantom_csv, tmp_path):
    cfg = tmp_path / "fa.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"image_size": 64},  # replaced by --image-size below
        "segmentor": {"channels": [4, 8, 16], "epochs": 1},
        "acgan": {"epochs": 1, "ngf": 8, "ndf": 8},
        "classifier": {"channels": [8, 8], "hidden": 8, "epochs": 1},
    }))
    out = tmp_path / "fa"
    r = runner.invoke(app, ["feature-augment", str(phantom_csv), str(out), "--config", str(cfg),
                            "--set", "generated_eval_per_class=5", "--image-size", "32", "--group-column", "id",
                            "--label-column", "label", "--seeds", "1", "--arms", "real", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert yaml.safe_load((out / "data_config.yaml").read_text())["image_size"] == 32
    saved = yaml.safe_load((out / "feature_augment_config.yaml").read_text())
    assert saved["acgan"]["epochs"] == 1 and saved["generated_eval_per_class"] == 5


def test_bad_values_are_one_error_line_before_any_work(tmp_path):
    cases = [
        (["downstream", "phantom", str(tmp_path / "d"), "--task", "bogus"], "task: Input should be"),
        (["downstream", "phantom", str(tmp_path / "d"), "--fractions", "0.5,0.5"], "--fractions must be three numbers"),
        (["downstream", "phantom", str(tmp_path / "d"), "--subsample", "a=x"], "--subsample 'a=x' is not CLASS=FRACTION"),
        (["rebalance", "phantom", str(tmp_path / "r"), "--run", "a=x", "--run", "a=y"], "--run given twice for 'a'"),
        (["rebalance", "phantom", str(tmp_path / "r"), "--run", "a", "--run", "b=c"], "pass either one --run RUN"),
        (["inspect", "phantom", "--volume-shape", "8x8"], "--volume-shape must be three integers"),
        (["benchmark", "phantom", str(tmp_path / "b"), "--split-seeds", "a"], "--split-seeds must be integers"),
        (["benchmark", "phantom", str(tmp_path / "b"), "--generator-seeds", "0,1.5"], "--generator-seeds must be"),
    ]
    for args, msg in cases:
        r = runner.invoke(app, args)
        lines = _error_lines(r.output)
        assert r.exit_code == 2 and len(lines) == 1 and msg in lines[0], (args, r.output)
    assert not any((tmp_path / x).exists() for x in "drb")
    # the config is given as --config FILE (the positional spelling is gone)
    assert runner.invoke(app, ["train", str(tmp_path / "c.yaml")]).exit_code == 2
