"""`medbalance downstream` end to end: the leakage guard refuses, a generator trained on the split passes."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from medbalance.cli.main import app

runner = CliRunner()


def test_downstream_refuses_a_generator_that_saw_test_images(tiny_run, tmp_path):
    r = runner.invoke(app, ["downstream", "phantom", str(tmp_path / "exp"), "--run", str(tiny_run), "--seeds", "1",
                            "--epochs", "1"])
    assert r.exit_code == 2, r.output
    assert "leakage: the generator was trained on" in r.output


def test_downstream_with_generator_trained_on_the_split(tmp_path):
    cfg = tmp_path / "gen.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"path": "phantom", "phantom": {"n": 60, "size": 32, "seed": 2}},
        "model": {"name": "spade", "preset": "cpu"},
        "train": {"steps": 3, "batch_size": 8, "checkpoint_every": 3, "sample_every": 3, "tensorboard": False},
    }))
    out = tmp_path / "exp"
    r = runner.invoke(app, ["downstream", "phantom", str(out), "--config", str(cfg), "--arms",
                            "real,oversample,real+synthetic", "--seeds", "2", "--epochs", "1", "--image-size", "32",
                            ])
    assert r.exit_code == 0, r.output
    rep = json.loads((out / "downstream.json").read_text())
    assert set(rep["summary"]) >= {"real", "oversample", "real+synthetic"}
    train_ids = json.loads((out / "generator" / "train_ids.json").read_text())
    seen = set(train_ids.get("train", train_ids.get("train_ids", [])))
    assert seen and not seen & set(rep["test_ids"])
    assert rep["arm_training_sets"]["real+synthetic"]["synthetic"] > 0
    # the synthetic images are generated once per seed, saved, listed, and seed 0's are the ones evaluated
    assert sorted(rep["synthetic_sets"]["pools"]) == ["seed0/none", "seed1/none"]
    for k, pool in rep["synthetic_sets"]["pools"].items():
        assert (out / "synthetic" / pool["file"]).is_file()
    ev = json.loads((out / "evaluation.json").read_text())
    assert ev["n_synthetic"] == rep["synthetic_sets"]["pools"]["seed0/none"]["n"] == \
        rep["arm_training_sets"]["real+synthetic"]["synthetic"]
    statement = rep["evaluated_synthetic_set"]["statement"]
    assert statement.startswith("fidelity, privacy and the utility of seed 0 were measured on the same")
    assert ev["fidelity"]["overall"]["fd"] >= 0 and ev["privacy"]["pixels"]["n_synthetic"] == ev["n_synthetic"]
    r = runner.invoke(app, ["report", str(out)])
    assert r.exit_code == 0, r.output
    html = (out / "report.html").read_text()
    assert '<section id="fidelity">' in html and '<section id="privacy">' in html
    assert "measured on the same" in html
