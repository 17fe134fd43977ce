"""Guarantee: a synthetic set whose generator saw a test image never enters `downstream` (docs/guarantees.md)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medbalance.cli.main import app
from medbalance.data.dataset import ImageDataset
from medbalance.errors import DataError
from medbalance.experiments.downstream import DownstreamConfig, SyntheticSource, make_split, run_downstream
from medbalance.synthesis.export import read_provenance
from medbalance.utils.io import ids_digest

runner = CliRunner()


@pytest.fixture(scope="module")
def leaky_manifest(tiny_run, tmp_path_factory):
    """`rebalance` of the tiny run (trained on phantom ids the default phantom split puts in test)."""
    out = tmp_path_factory.mktemp("leaky") / "syn"
    r = runner.invoke(app, ["rebalance", "phantom", str(out), "--run", str(tiny_run), "--no-real"])
    assert r.exit_code == 0, r.output
    return out / "manifest.csv"


def test_manifest_carries_training_ids_and_verified_checkpoint_hash(tiny_run, leaky_manifest):
    ids = json.loads((tiny_run / "train_ids.json").read_text())["train"]
    rows = list(csv.DictReader(open(leaky_manifest)))
    assert rows and {r["train_ids_sha256"] for r in rows} == {ids_digest(ids)}
    latest = (tiny_run / "checkpoints" / "latest").read_text().strip()
    state = json.loads((tiny_run / "checkpoints" / latest / "state.json").read_text())
    g = "G_ema.safetensors" if state.get("ema") else "G.safetensors"
    assert {r["checkpoint_sha256"] for r in rows} == {state["files"][g]}
    prov = read_provenance(leaky_manifest)
    assert prov is not None and sorted(prov["train_ids"]) == sorted(ids)


def test_downstream_synthetic_manifest_that_saw_test_ids_is_refused(leaky_manifest, tmp_path):
    r = runner.invoke(app, ["downstream", "phantom", str(tmp_path / "exp"), "--synthetic", str(leaky_manifest),
                            "--arms", "real,real+synthetic", "--seeds", "1", "--epochs", "1", "--image-size", "32"])
    assert r.exit_code == 2, r.output
    assert "leakage: the generator was trained on" in r.output
    assert not (tmp_path / "exp" / "downstream.json").exists()


def test_synthetic_manifest_without_or_with_edited_provenance(leaky_manifest, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(leaky_manifest.parent, plain)
    (plain / "provenance.json").unlink()
    args = ["downstream", "phantom", str(tmp_path / "exp"), "--synthetic", str(plain / "manifest.csv"), "--arms",
            "real,real+synthetic", "--seeds", "1", "--epochs", "1", "--image-size", "32"]
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "no training-ids provenance" in r.output, r.output
    # downgraded to a stated warning (arm "real" only: the phantom set is too small for a balanced arm)
    r = runner.invoke(app, [a if a != "real,real+synthetic" else "real" for a in args] + ["--allow-unverified-synthetic"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "exp" / "downstream.json").read_text())
    assert any(w.startswith("UNVERIFIED synthetic set") for w in rep["warnings"])
    assert rep["synthetic_provenance"]["verified"] is False
    # provenance whose ids do not match the manifest's digest (edited to hide the test ids)
    edited = tmp_path / "edited"
    shutil.copytree(leaky_manifest.parent, edited)
    p = json.loads((edited / "provenance.json").read_text())
    p["train_ids"] = ["someone-else"]
    (edited / "provenance.json").write_text(json.dumps(p))
    with pytest.raises(DataError, match="does not match provenance.json"):
        read_provenance(edited / "manifest.csv")


def _toy(n_per=(30, 12, 9), size=16, seed=0, names=("a", "b", "c")) -> ImageDataset:
    rng = np.random.default_rng(seed)
    imgs, labels = [], []
    for k, n in enumerate(n_per):
        for _ in range(n):
            x = rng.normal(-0.5, 0.1, (1, size, size))
            x[0, 2 + 4 * k: 6 + 4 * k, 4:8] = 0.8
            imgs.append(x)
            labels.append(k)
    return ImageDataset(images=torch.tensor(np.stack(imgs), dtype=torch.float32),
                        labels=torch.tensor(labels), class_names=list(names),
                        ids=[f"{names[k]}{i}" for i, k in enumerate(labels)])


def test_api_refuses_provenance_with_a_test_id_and_missing_class_gets_none(tmp_path):
    ds = _toy()
    cfg = DownstreamConfig(arms=["real", "real+synthetic"], seeds=[0], epochs=1, batch_size=16, device="cpu")
    split = make_split(ds, cfg)
    # a synthetic set without class "c" (and without it in its class list): used to crash with ValueError
    syn = _toy(n_per=(20, 20), seed=5, names=("a", "b"))
    syn.ids = [f"syn{i}" for i in range(len(syn))]
    syn.synthetic = torch.ones(len(syn), dtype=torch.bool)
    leaky = SyntheticSource(dataset=syn, provenance={"train_ids": [split.test.ids[0]]})
    with pytest.raises(DataError, match="leakage"):
        run_downstream(ds, cfg, tmp_path / "x", leaky)
    ok = SyntheticSource(dataset=syn, provenance={"train_ids": list(split.train.ids), "train_ids_sha256": "d"})
    rep = run_downstream(ds, cfg, tmp_path / "y", ok)
    comp = rep["arm_training_sets"]["real+synthetic"]
    real_c = split.train.class_counts()["c"]
    assert comp["class_counts"]["c"] == real_c  # class c got no synthetic images
    assert comp["synthetic"] > 0 and any("no images of class(es) c" in w for w in rep["warnings"])
    assert rep["duplicates"]["groups"] == 0
    # a synthetic class the real data lacks: refused in one line
    bad = _toy(n_per=(5, 5), seed=6, names=("a", "zzz"))
    bad.synthetic = torch.ones(len(bad), dtype=torch.bool)
    with pytest.raises(DataError, match="classes the real data lacks: zzz"):
        run_downstream(ds, cfg, tmp_path / "z", SyntheticSource(dataset=bad, provenance={"train_ids": ["q"]}))
