"""`medbalance demo --quick` end to end with tiny settings: every stage runs and the report is written."""

from __future__ import annotations

import csv
import json

import yaml
from typer.testing import CliRunner

from medbalance.cli.main import app



def test_demo_quick_tiny_end_to_end(tmp_path):
    out = tmp_path / "demo"
    r = CliRunner().invoke(
        app, ["demo", "--out", str(out), "--quick", "--device", "cpu", "--n", "90", "--steps", "3", "--epochs", "1",
              "--seeds", "2"],
    )
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines()[-1] == str(out / "report.html")
    demo = json.loads((out / "demo.json").read_text())
    assert list(demo["stage_seconds"]) == ["data", "split", "generator", "rebalance", "evaluate", "downstream"]
    # resolved configs saved; the generator config is the one the run used
    gen_cfg = yaml.safe_load((out / "configs" / "generator.yaml").read_text())
    assert gen_cfg == yaml.safe_load((out / "generator" / "config.yaml").read_text())
    assert gen_cfg["train"]["steps"] == 3 and gen_cfg["data"]["phantom"]["n"] == 90
    assert yaml.safe_load((out / "configs" / "downstream.yaml").read_text())["seeds"] == [0, 1]

    # the generator saw only the training split, and the downstream split is that same split
    ds = json.loads((out / "downstream" / "downstream.json").read_text())
    train_ids = set(json.loads((out / "generator" / "train_ids.json").read_text())["train"])
    assert not train_ids & set(ds["test_ids"])
    assert len(train_ids) == ds["split"]["train"]

    # rebalanced export: real training split + synthetic images bringing every class to the majority count
    with open(out / "rebalanced" / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    real = {r_["id"] for r_ in rows if r_["synthetic"] == "0"}
    assert real == train_ids
    counts: dict[str, int] = {}
    for r_ in rows:
        counts[r_["label"]] = counts.get(r_["label"], 0) + 1
    assert len(set(counts.values())) == 1, counts

    ev = json.loads((out / "evaluation" / "evaluation.json").read_text())
    assert ev["n_synthetic"] == len(rows) - len(real)
    assert (out / "evaluation" / "privacy_montage.png").is_file()

    rep = json.loads((out / "report.json").read_text())
    html = (out / "report.html").read_text()
    for sid in ("data-method", "verdicts", "class-distribution", "sample-grids", "training-curves", "fidelity",
                "privacy", "downstream", "per-class-recall"):
        assert f'<section id="{sid}">' in html
    # numbers in the report are this run's numbers
    assert rep["class_distribution"]["after"] == counts
    assert rep["downstream"]["balanced_accuracy"]["real"]["mean"] == ds["summary"]["real"]["balanced_accuracy"]["mean"]
    assert rep["privacy"]["pixels"]["dcr_share"] == ev["privacy"]["pixels"]["dcr_share"]

    # fidelity, privacy and utility were measured on the same synthetic images (generated once per seed)
    same = demo["same_synthetic_set"]
    assert same["same"] is True and same["n_evaluated"] == ev["n_synthetic"] == same["n_in_real_synthetic_arm_seed0"]
    from medbalance.utils.io import load_safetensors, sha256_bytes

    pool, _ = load_safetensors(out / same["file"])
    assert sha256_bytes(pool["images"].contiguous().numpy().tobytes()) == same["images_sha256"]
    assert sorted(ds["synthetic_sets"]["pools"]) == ["seed0/none", "seed1/none"]
    assert "measured on the same" in html and same["statement"].split(" (")[0] in html


def test_demo_refuses_non_empty_folder(tmp_path):
    (tmp_path / "x.txt").write_text("keep me")
    r = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--quick"])
    assert r.exit_code == 2 and "not empty" in r.output
    r = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--quick", "--overwrite"])
    assert r.exit_code == 2 and "only replaces a previous demo folder" in r.output
    assert (tmp_path / "x.txt").read_text() == "keep me"
