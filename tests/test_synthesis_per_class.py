"""Issue 16, MelanoGANs' recipe: one unconditional generator per class (``data.class_subset``, ``--run CLASS=RUN``)."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from typer.testing import CliRunner

from medbalance.cli.main import app
from medbalance.data import load_dataset
from medbalance.errors import ConfigError, DataError
from medbalance.synthesis.oversampler import GenerativeOverSampler
from medbalance.training.run import load_run

runner = CliRunner()
PHANTOM = {"n": 60, "size": 32, "seed": 1}
A, B = "ring_enhancing", "extra_axial"  # the two minority classes of the phantom


def _rows(path):
    return list(csv.DictReader(open(path)))


def test_class_subset_keeps_only_those_rows_and_reindexes():
    full = load_dataset("phantom", phantom=PHANTOM)
    sub = load_dataset("phantom", phantom=PHANTOM, class_subset=[B, A])
    assert sub.class_names == [B, A]
    assert sub.class_counts() == {B: full.class_counts()[B], A: full.class_counts()[A]}
    by_id = {i: full.class_names[int(lab)] for i, lab in zip(full.ids, full.labels)}
    assert all(by_id[i] == sub.class_names[int(lab)] for i, lab in zip(sub.ids, sub.labels))
    with pytest.raises(DataError, match=r"unknown class\(es\) melanoma; the classes present are homogeneous, "):
        load_dataset("phantom", phantom=PHANTOM, class_subset=["melanoma"])


def _train(out, classes):
    from medbalance.training.config import RunConfig
    from medbalance.training.engine import train

    data = {"path": "phantom", "phantom": PHANTOM}
    if classes is not None:
        data["class_subset"] = classes
    train(RunConfig.from_dict({
        "out_dir": str(out), "data": data, "model": {"name": "dcgan", "preset": "cpu"},  # unconditional
        "train": {"steps": 1, "batch_size": 4, "checkpoint_every": 1, "sample_every": 1, "tensorboard": False},
    }))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("per_class")
    return {A: _train(root / "a", [A]), B: _train(root / "b", [B]), "both": _train(root / "both", [A, B])}


def test_run_records_its_class_subset(runs):
    run = load_run(runs[A])
    assert run.info.class_names == [A] and run.config.data.class_subset == [A]
    assert (runs[A] / "config.yaml").read_text().count("class_subset") == 1


def test_per_class_runs_rebalance_each_class_from_its_run(runs):
    ds = load_dataset("phantom", phantom=PHANTOM)
    loaded = {c: load_run(runs[c]) for c in (A, B)}
    s = GenerativeOverSampler(loaded, sampling_strategy="auto", batch_size=3, progress=False, random_state=5)
    syn = s.fit(ds).sample()
    counts = ds.class_counts()
    major = max(counts.values())
    assert dict(s.sampling_strategy_) == {A: major - counts[A], B: major - counts[B]}
    assert syn.class_counts() == {"homogeneous": 0, A: major - counts[A], B: major - counts[B]}
    # every image is exactly what its class's run produces from the recorded seed (and not the other run)
    for k, p in enumerate(s.provenance_):
        cls = syn.class_names[int(syn.labels[k])]
        assert p["class"] == cls and p["run"] == str(loaded[cls].run_dir)
        for c, run in loaded.items():
            b = sum(1 for q in s.provenance_ if q["seed"] == p["seed"])
            x = run.method.generate(torch.zeros(b, dtype=torch.long), generator=torch.Generator().manual_seed(p["seed"]),
                                    G=run.G)[p["batch_position"]]
            assert torch.allclose(x, syn.images[k], atol=1e-6) == (c == cls)


def test_per_class_refuses_run_trained_on_other_or_several_classes(runs):
    ds = load_dataset("phantom", phantom=PHANTOM)
    wrong = {A: load_run(runs[B]), B: load_run(runs[B])}
    with pytest.raises(ConfigError, match=rf"trained on class\(es\) \['{B}'\], not on '{A}' only"):
        GenerativeOverSampler(wrong, progress=False).fit(ds)
    several = {A: load_run(runs["both"]), B: load_run(runs[B])}
    with pytest.raises(ConfigError, match=r"not on 'ring_enhancing' only"):
        GenerativeOverSampler(several, progress=False).fit(ds)
    # a class the plan needs but no run was given for
    with pytest.raises(ConfigError, match="no run for class 'ring_enhancing'"):
        GenerativeOverSampler({B: load_run(runs[B])}, progress=False).fit(ds).sample()


def test_cli_rebalance_generate_with_per_class_runs(runs, tmp_path):
    out = tmp_path / "bal"
    r = runner.invoke(app, ["rebalance", "phantom", str(out), "--run", f"{A}={runs[A]}", "--run", f"{B}={runs[B]}",
                            "--batch-size", "4"])
    assert r.exit_code == 0, r.output
    rows = _rows(out / "manifest.csv")
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["label"]] = counts.get(row["label"], 0) + 1
    assert len(set(counts.values())) == 1 and set(counts) == {"homogeneous", A, B}
    info = json.loads((out / "synthesis.json").read_text())
    assert set(info["options"]["runs"]) == {A, B}
    assert info["options"]["runs"][A]["run_dir"] == str(runs[A])

    r = runner.invoke(app, ["rebalance", "phantom", str(tmp_path / "x"), "--run", f"{A}={runs[B]}",
                            "--run", f"{B}={runs[B]}"])
    assert r.exit_code == 2 and "not on 'ring_enhancing' only" in r.output, r.output
    r = runner.invoke(app, ["rebalance", "phantom", str(tmp_path / "y"), "--run", str(runs[A]), "--run", f"{B}={runs[B]}"])
    assert r.exit_code == 2 and "not a mix" in r.output, r.output

    r = runner.invoke(app, ["generate", str(runs[B]), "--n", "3", "--class", B, "--out", str(tmp_path / "g")])
    assert r.exit_code == 0, r.output
    assert [row["label"] for row in _rows(tmp_path / "g" / "manifest.csv")] == [B] * 3
    r = runner.invoke(app, ["generate", str(runs["both"]), "--n", "3", "--class", B, "--out", str(tmp_path / "h")])
    assert r.exit_code == 2 and "not class-conditional" in r.output, r.output


def test_downstream_source_with_per_class_runs(runs):
    from medbalance.experiments.downstream import SyntheticSource, Split, parse_arm

    ds = load_dataset("phantom", phantom=PHANTOM)
    src = SyntheticSource(run={c: load_run(runs[c]) for c in (A, B)})
    syn = src.take(Split(ds, ds, ds), parse_arm("real+synthetic"), {A: 2, B: 3}, 0, "real")
    assert syn.class_counts() == {"homogeneous": 0, A: 2, B: 3}
