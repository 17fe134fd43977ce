"""`medbalance generate` and `medbalance rebalance` end to end on a tiny trained run."""

from __future__ import annotations

import csv
import json

from typer.testing import CliRunner

from medbalance.cli.main import app

runner = CliRunner()


def _rows(path):
    return list(csv.DictReader(open(path)))


def test_rebalance_auto_and_dict_then_inspect(tiny_run, tmp_path):
    out = tmp_path / "balanced"
    r = runner.invoke(app, ["rebalance", "phantom", str(out), "--run", str(tiny_run), "--filter", "memorization"])
    assert r.exit_code == 0, r.output
    rows = _rows(out / "manifest.csv")
    counts = {}
    for row in rows:
        counts[row["label"]] = counts.get(row["label"], 0) + 1
    assert len(set(counts.values())) == 1  # every class brought to the majority count
    syn = [row for row in rows if row["synthetic"] == "1"]
    assert syn and all(row["checkpoint_sha256"] and row["parent_mask_id"] and row["mask_source"] == "real" for row in syn)
    card = json.loads((out / "model_card.json").read_text())
    assert card["method"] == "spade" and "path" not in card["data_options"]
    info = json.loads((out / "synthesis.json").read_text())
    assert info["report"]["kept"] == len(syn)

    r = runner.invoke(app, ["inspect", str(out / "manifest.csv"), "--json"])
    assert r.exit_code == 0, r.output

    out2 = tmp_path / "dict"
    real_counts = {k: sum(1 for row in rows if row["label"] == k and row["synthetic"] == "0") for k in counts}
    target = {k: v + 3 for k, v in real_counts.items()}
    spec = ",".join(f"{k}={v}" for k, v in target.items())
    r = runner.invoke(app, ["rebalance", "phantom", str(out2), "--run", str(tiny_run), "--strategy", spec, "--no-real"])
    assert r.exit_code == 0, r.output
    rows2 = _rows(out2 / "manifest.csv")
    assert len(rows2) == 3 * len(target) and all(row["synthetic"] == "1" for row in rows2)


def test_generate_one_class_is_deterministic(tiny_run, tmp_path):
    args = ["generate", str(tiny_run), "--n", "5", "--class", "homogeneous", "--mask-source", "elastic", "--seed", "3"]
    a = runner.invoke(app, args + ["--out", str(tmp_path / "a")])
    b = runner.invoke(app, args + ["--out", str(tmp_path / "b")])
    assert a.exit_code == 0 and b.exit_code == 0, a.output
    ra, rb = _rows(tmp_path / "a" / "manifest.csv"), _rows(tmp_path / "b" / "manifest.csv")
    assert len(ra) == 5 and all(r["label"] == "homogeneous" and r["mask_source"].startswith("elastic") for r in ra)
    for x, y in zip(ra, rb):
        assert (tmp_path / "a" / x["image"]).read_bytes() == (tmp_path / "b" / y["image"]).read_bytes()


def test_bad_inputs_exit_2(tiny_run, tmp_path):
    r = runner.invoke(app, ["generate", str(tiny_run), "--n", "2", "--class", "nope"])
    assert r.exit_code == 2 and "unknown class 'nope'" in r.output
    r = runner.invoke(app, ["rebalance", "phantom", str(tmp_path / "o"), "--run", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "error:" in r.output
    r = runner.invoke(app, ["rebalance", "phantom", str(tmp_path / "o"), "--run", str(tiny_run), "--strategy", "majority"])
    assert r.exit_code == 2 and "cannot be used with over-sampler" in r.output
    assert not (tmp_path / "o").exists()
