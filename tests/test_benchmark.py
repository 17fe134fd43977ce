"""``medbalance benchmark``: the grid end to end on tiny data, resume after an interruption, leakage refusal,
arm grammar, budget planning and the statistics against independent computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from scipy import stats
from typer.testing import CliRunner

from medbalance.cli.main import app
from medbalance.errors import ConfigError
from medbalance.evaluation.stats import holm, paired_difference
from medbalance.experiments import benchmark as B
from medbalance.experiments.downstream import arm_synthetic_counts, balanced_targets, parse_arm

runner = CliRunner()

TINY = {
    "data": {"path": "phantom", "phantom": {"n": 90, "size": 32}},
    "generators": [
        {"model": "dcgan", "steps": 3, "overrides": ["model.params.conditional=true"]},
        {"model": "acgan", "steps": 3},
    ],
    "baselines": ["real", "oversample"],
    "arms": ["real+synthetic", "real+synthetic@1x+class-weight"],
    "seeds": 2,
    "epochs": 1,
    "fidelity_extractor": "pixels",
}


def _write(tmp_path, doc, name="bench.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc))
    return p


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    cfg = _write(tmp, TINY)
    r = runner.invoke(app, ["benchmark", "phantom", str(tmp / "out"), "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    return tmp / "out"


def test_grid_end_to_end(finished):
    rep = json.loads((finished / "benchmark.json").read_text())
    assert rep["kind"] == "medbalance-benchmark"
    assert rep["cells"]["done"] == rep["cells"]["total"] == len(B.plan_cells(B.BenchmarkConfig.from_dict(TINY)))
    # two generators x two synthetic arms, each compared with the best baseline and with real
    assert sorted((r["generator"], r["arm"]) for r in rep["leaderboard"]) == sorted(
        (g, a) for g in ("dcgan", "acgan") for a in TINY["arms"])
    assert rep["primary_metrics"][0] == f"recall/{rep['minority']}"
    for r in rep["leaderboard"]:
        assert r["verdict"] in B.VERDICTS
        for m in rep["primary_metrics"]:
            v = r["vs_best_baseline"][m]
            assert v["baseline"] == rep["best_baseline"][m]
            assert v["n"] == 2 and 0 <= v["p_holm"] <= 1 and v["p_holm"] >= v["p"] - 1e-12
    # the best baseline really is the one with the highest mean
    for m, best in rep["best_baseline"].items():
        assert rep["baselines"][best][m]["mean"] == max(b[m]["mean"] for b in rep["baselines"].values())
    for g in ("dcgan", "acgan"):
        info = rep["generators"][g]
        assert info["steps"] == 3 and info["fidelity"]["fd"] is not None and info["privacy"]["n"] > 0
    assert "NOT the split" in " ".join(rep["variance_sources"])
    md = (finished / "leaderboard.md").read_text()
    assert "| dcgan | real+synthetic |" in md and "verdict" in md
    # every run saved its resolved config; the generator saw the training split only
    assert (finished / "benchmark.yaml").is_file()
    train_ids = json.loads((finished / "generators" / "s0" / "dcgan-g0" / "train_ids.json").read_text())
    ids = train_ids["train"]
    cell = json.loads((finished / "cells" / "s0" / "dcgan-g0" / "arm" / "real_synthetic" / "seed0.json").read_text())
    assert cell["composition"]["synthetic"] > 0
    split = B.Benchmark(B.BenchmarkConfig.from_dict(TINY), finished).split(0)
    assert sorted(ids) == sorted(split.train.ids)


def test_synthetic_images_generated_once_per_seed(finished):
    """Every arm of a seed draws from one saved pool: seed 0 and 1 pools exist, and nothing else."""
    pools = sorted(p.name for p in (finished / "generators" / "s0" / "dcgan-g0" / "synthetic").iterdir())
    assert pools == ["seed0-none.safetensors", "seed1-none.safetensors"]


def test_resume_after_interruption(tmp_path, finished, monkeypatch):
    """Stopped between cells: the rerun computes only the missing cells and gives the same leaderboard."""
    cfg = _write(tmp_path, TINY)
    out = tmp_path / "out"
    calls = []
    real_run_cell = B.Benchmark.run_cell

    def stop_after_7(self, cell):
        if len(calls) == 7:
            raise KeyboardInterrupt
        calls.append(cell.key)
        return real_run_cell(self, cell)

    monkeypatch.setattr(B.Benchmark, "run_cell", stop_after_7)
    with pytest.raises(KeyboardInterrupt):
        B.run_benchmark(B.BenchmarkConfig.from_dict(TINY), out)
    done = sorted(p.relative_to(out).as_posix() for p in (out / "cells").rglob("*.json"))
    assert len(done) == 7
    mtimes = {p: (out / p).stat().st_mtime_ns for p in done}
    # --summarize reports the finished cells without running any
    r = runner.invoke(app, ["benchmark", "phantom", str(out), "--summarize"])
    assert r.exit_code == 0, r.output
    part = json.loads((out / "benchmark.json").read_text())
    assert part["partial"] is True and part["cells"]["done"] == 7 and "Partial: 7 of" in r.output
    assert len(calls) == 7
    monkeypatch.setattr(B.Benchmark, "run_cell", real_run_cell)
    resumed = []
    monkeypatch.setattr(B.Benchmark, "run_cell", lambda self, cell: resumed.append(cell.key) or real_run_cell(self, cell))
    r = runner.invoke(app, ["benchmark", "phantom", str(out), "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "resuming: 7 of" in r.output
    assert not set(resumed) & set(calls)  # finished cells are never recomputed
    assert {p: (out / p).stat().st_mtime_ns for p in done} == mtimes
    a = json.loads((out / "benchmark.json").read_text())
    b = json.loads((finished / "benchmark.json").read_text())
    strip = lambda rep: [(r["generator"], r["arm"], {m: v["mean"] for m, v in r["metrics"].items()})  # noqa: E731
                         for r in rep["leaderboard"]]
    assert strip(a) == strip(b)


def test_changed_config_is_refused_on_resume(tmp_path, finished):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finished, out)
    cfg = _write(tmp_path, {**TINY, "epochs": 2})
    r = runner.invoke(app, ["benchmark", "phantom", str(out), "--config", str(cfg)])
    assert r.exit_code == 2 and "another configuration" in r.output and "Traceback" not in r.output


def test_leakage_is_refused(tmp_path):
    """A given generator run trained on the whole dataset has seen test images: refused before any cell runs."""
    run_dir = tmp_path / "leaky"
    r = runner.invoke(app, ["train", "--model", "acgan", "--data", "phantom", "--steps", "2", "--out", str(run_dir),
                            "--set", "data.phantom.n=90", "--set", "data.phantom.size=32"])
    assert r.exit_code == 0, r.output
    doc = {**TINY, "generators": [{"model": "acgan", "run": str(run_dir)}]}
    out = tmp_path / "out"
    r = runner.invoke(app, ["benchmark", "phantom", str(out), "--config", str(_write(tmp_path, doc))])
    assert r.exit_code == 2 and "leakage" in r.output, r.output
    assert not list((out / "cells").rglob("*.json")) if (out / "cells").exists() else True


def test_arm_grammar_and_counts():
    from medbalance.data import load_dataset

    s = parse_arm("real+synthetic@2x+class-weight|filter=memorization")
    assert (s.base, s.ratio, s.ratio_kind, s.class_weight, s.filter) == ("real+synthetic", 2.0, "minority", True,
                                                                          "memorization")
    assert parse_arm("real+synthetic@0.5").ratio_kind == "all"
    for bad in ("real+synthetic@x", "oversample+class-weight", "real|filter=memorization", "synthetic-only@2",
                "real+synthetic|filter=nope", "mixup"):
        with pytest.raises(ConfigError):
            parse_arm(bad)
    ds = load_dataset("phantom", phantom={"n": 70, "size": 32})
    counts = ds.class_counts()
    targets = balanced_targets(ds, "auto")
    big = max(counts.values())
    one = arm_synthetic_counts(parse_arm("real+synthetic@1x"), ds, targets)
    many = arm_synthetic_counts(parse_arm("real+synthetic@100x"), ds, targets)
    for c, n in counts.items():
        assert one[c] == (0 if n == big else min(n, big - n))
        assert many[c] == big - n  # capped at balance
    assert arm_synthetic_counts(parse_arm("real+synthetic@0.5"), ds, targets) == {
        c: round(0.5 * n) for c, n in counts.items()}
    assert arm_synthetic_counts(parse_arm("synthetic-only"), ds, targets) == targets


def _grid_estimate(cfg):
    """The estimator --budget plans with: estimate_grid at 1 s per real cell, generators free."""
    train = B.Benchmark(cfg, "unused").split(0).train
    return lambda c: B.estimate_grid(c, train, 1.0, {})["total_seconds"]


def test_budget_planning_shrinks_seeds_then_arms():
    cfg = B.BenchmarkConfig.from_dict({**TINY, "seeds": 5, "arms": ["real+synthetic", "real+synthetic@1x",
                                                                     "synthetic-only"]})
    est = _grid_estimate(cfg)
    fits, notes = B.plan_for_budget(cfg, minutes=1000, estimate=est)
    assert fits == cfg and notes == []
    target = cfg.model_copy(update={"seeds": 3, "arms": ["real+synthetic"]})
    small, notes = B.plan_for_budget(cfg, minutes=est(target) / 60, estimate=est)
    assert small.seeds == 3 and small.arms == ["real+synthetic"] and len(small.generators) == 2
    assert notes == ["seeds -> 4", "seeds -> 3", "dropped arm synthetic-only", "dropped arm real+synthetic@1x"]


def test_budget_also_shortens_a_generators_own_arms():
    own = ["real+synthetic@1x", "real+synthetic@2x", "real+synthetic@5x"]
    cfg = B.BenchmarkConfig.from_dict({**TINY, "seeds": 3, "arms": ["real+synthetic"],
                                       "generators": [{"model": "dcgan", "steps": 3, "arms": own}]})
    est = _grid_estimate(cfg)
    target = cfg.model_copy(update={"generators": [cfg.generators[0].model_copy(update={"arms": own[:1]})]})
    small, notes = B.plan_for_budget(cfg, minutes=est(target) / 60, estimate=est)
    assert small.generators[0].arms == own[:1] and len(small.generators) == 1
    assert notes == ["dropped arm real+synthetic@5x of generator dcgan", "dropped arm real+synthetic@2x of generator dcgan"]
    # too small for any grid: says what the smallest one needs
    tiny, notes = B.plan_for_budget(cfg, minutes=0.0001, estimate=est)
    assert tiny.seeds == 3 and notes[-1].startswith("the smallest grid still needs about")


def test_quick_profile_keeps_the_grid():
    cfg = B.BenchmarkConfig.from_dict({**TINY, "seeds": 5, "epochs": 16,
                                       "generators": [{"model": "dcgan", "minutes": 10}, {"model": "acgan", "steps": 500}]})
    q = B.quick_profile(cfg)
    assert (q.seeds, q.epochs, q.arms, q.baselines) == (2, 4, cfg.arms, cfg.baselines)
    assert [g.minutes for g in q.generators] == [1.0, None] and q.generators[1].steps == 50


def test_config_errors_are_one_line(tmp_path):
    for doc, msg in (({**TINY, "baselines": ["oversample"]}, "must include 'real'"),
                     ({**TINY, "arms": ["oversample"]}, "is a baseline"),
                     ({**TINY, "generators": [{"model": "dcgan", "steps": 3, "minutes": 2}]}, "one budget"),
                     ({**TINY, "generators": [{"model": "acgan"}, {"model": "acgan"}]}, "unique")):
        r = runner.invoke(app, ["benchmark", "phantom", str(tmp_path / "o"), "--config", str(_write(tmp_path, doc))])
        assert r.exit_code == 2 and msg in r.output, r.output


def test_paired_difference_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.6, 0.05, 7), rng.normal(0.55, 0.05, 7)
    d = paired_difference(a, b)
    assert d["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert d["diff"] == pytest.approx(np.mean(a - b))
    assert d["d_z"] == pytest.approx(np.mean(a - b) / np.std(a - b, ddof=1))
    assert d["ci_low"] <= d["diff"] <= d["ci_high"]
    assert paired_difference([1, 2], [1, 2])["p"] == 1.0


def test_holm_by_hand():
    # sorted p: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06, monotone), 0.5 (x1 = 0.5)
    assert holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    out = holm([0.2, float("nan"), 0.2])
    assert out[0] == pytest.approx(0.4) and np.isnan(out[1]) and out[2] == pytest.approx(0.4)
    assert holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # 0.8 x 2 capped at 1; monotone


def test_segmentation_grid_with_redgan_segmentor_from_the_split(tmp_path):
    """Segmentation: mask-conditioned generators add image+label-map pairs; Red-GAN gets a segmentor trained on
    the benchmark's own training split (recorded in the train cell), so it never saw a test image."""
    doc = {**TINY, "task": "segmentation", "baselines": ["real"], "arms": ["real+synthetic@0.5"], "seeds": 1,
           "generators": [{"model": "pix2pix", "steps": 2},
                          {"model": "redgan", "steps": 2, "segmentor_epochs": 1}]}
    out = tmp_path / "out"
    rep = B.run_benchmark(B.BenchmarkConfig.from_dict(doc), out)
    assert rep["primary_metrics"] == ["dice_foreground"]
    assert rep["minority"] is None and "minority" not in B.leaderboard_markdown(rep)  # no rare class claimed
    assert sorted(r["generator"] for r in rep["leaderboard"]) == ["pix2pix", "redgan"]
    train = json.loads((out / "cells" / "s0" / "redgan-g0" / "train.json").read_text())
    seg_meta = json.loads((out / "splits" / "s0" / "segmentor" / "model.json").read_text())
    assert train["segmentor"] == str(out / "splits" / "s0" / "segmentor")
    split = B.Benchmark(B.BenchmarkConfig.from_dict(doc), out).split(0)
    assert sorted(seg_meta["meta"]["train_ids"]) == sorted(split.train.ids)
    cell = json.loads((out / "cells" / "s0" / "pix2pix-g0" / "arm" / "real_syntheticat0.5" / "seed0.json").read_text())
    assert cell["composition"]["synthetic"] == round(0.5 * len(split.train)) or cell["composition"]["synthetic"] > 0
    # --estimate times Red-GAN with a segmentor: the folder's own (copied, not retrained) or, in a new folder, a
    # one-epoch stand-in in the scratch folder; --budget (which keeps what it measures) trains the grid's segmentor
    est = B.Benchmark(B.BenchmarkConfig.from_dict(doc), out).estimate()
    assert est["generator_seconds"]["redgan"] > 0 and est["rows"]["Red-GAN segmentor"]["remaining_seconds"] == 0
    new = tmp_path / "new"
    est = B.Benchmark(B.BenchmarkConfig.from_dict(doc), new).estimate()
    assert est["rows"]["Red-GAN segmentor"]["remaining_seconds"] > 0 and not new.exists()
    planned = B.run_benchmark(B.BenchmarkConfig.from_dict({**doc, "budget_minutes": 1000}), tmp_path / "budget")
    assert planned["cells"]["done"] == planned["cells"]["total"]


@pytest.fixture
def finished_copy(tmp_path, finished, monkeypatch):
    """A copy of the finished benchmark and the list of cell keys that will run in it."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finished, out)
    ran: list[str] = []
    real_run_cell = B.Benchmark.run_cell
    monkeypatch.setattr(B.Benchmark, "run_cell", lambda self, cell: ran.append(cell.key) or real_run_cell(self, cell))
    return out, ran


def test_extending_a_finished_benchmark_runs_only_the_new_cells(finished_copy):
    out, ran = finished_copy
    doc = {**TINY, "arms": [*TINY["arms"], "synthetic-only"]}
    rep = B.run_benchmark(B.BenchmarkConfig.from_dict(doc), out)
    assert sorted(ran) == sorted(f"s0/{g}-g0/arm/synthetic-only/seed{k}" for g in ("dcgan", "acgan") for k in (0, 1))
    assert {r["arm"] for r in rep["leaderboard"]} == {*TINY["arms"], "synthetic-only"}
    # a generator kept under the same name must not change
    doc2 = {**doc, "generators": [{**TINY["generators"][0], "steps": 4}, TINY["generators"][1]]}
    with pytest.raises(ConfigError, match="generator dcgan"):
        B.run_benchmark(B.BenchmarkConfig.from_dict(doc2), out)


def test_a_folder_written_before_a_config_key_existed_still_resumes(finished_copy):
    import yaml

    out, ran = finished_copy
    saved = out / "benchmark.yaml"
    doc = yaml.safe_load(saved.read_text())
    del doc["data"]["storage"]  # as written before data.storage existed
    saved.write_text(yaml.safe_dump(doc))
    B.run_benchmark(B.BenchmarkConfig.from_dict(TINY), out)
    assert ran == []  # a plain resume: nothing recomputed, no "another configuration" refusal


def test_set_overrides_reach_list_items():
    from medbalance.config import apply_overrides

    doc = {"generators": [{"model": "dcgan", "steps": 5}, {"model": "acgan"}], "seeds": 5}
    out = apply_overrides(doc, ["generators.0.steps=7", "generators.1.name=b", "generators.-1.minutes=2"])
    assert out["generators"] == [{"model": "dcgan", "steps": 7}, {"model": "acgan", "name": "b", "minutes": 2}]
    assert doc["generators"][0]["steps"] == 5  # the input is not changed
    for bad, msg in (("generators.2.steps=1", "out of range"), ("generators.x.steps=1", "not an index"),
                     ("seeds.a=1", "not a section")):
        with pytest.raises(ConfigError, match=msg):
            apply_overrides(doc, [bad])


def test_budget_plans_the_grid_and_resume_keeps_the_plan(tmp_path):
    """--budget: one real cell and a calibration of each generator are measured, the grid shrinks to fit, what was
    dropped is saved; a second call with the same options resumes the planned grid."""
    cfg = _write(tmp_path, {**TINY, "seeds": 20})  # 120 classifier cells: never fit in 6 s
    out = tmp_path / "out"
    args = ["benchmark", "phantom", str(out), "--config", str(cfg), "--budget", "0.1"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    saved = yaml.safe_load((out / "benchmark.yaml").read_text())
    rep = json.loads((out / "benchmark.json").read_text())
    used = saved["planned"]["used"]["seeds"]
    assert saved["planned"]["asked"]["seeds"] == 20 and 3 <= used < 20
    assert rep["config"]["seeds"] == used and rep["budget_notes"][0].startswith("measured:")
    assert rep["budget_notes"] == saved["planned"]["notes"] and "seeds -> 19" in rep["budget_notes"]
    assert rep["budget_notes"][-1].startswith("planned grid: about")  # estimate_grid, as --estimate prints
    assert rep["cells"]["done"] == rep["cells"]["total"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and f"resuming: {rep['cells']['total']} of {rep['cells']['total']}" in r.output, r.output


def test_feature_level_method_is_its_own_row(tmp_path):
    """feature-acgan runs the feature-level experiment on the benchmark's split and is compared with its own
    feature-level baselines (real and oversampled features), not with the image-level ones."""
    doc = {**TINY, "generators": [{"model": "feature-acgan", "epochs": 1,
                                   "overrides": ["segmentor.epochs=1", "classifier.epochs=1"]}],
           "baselines": ["real"], "arms": ["real+synthetic"]}
    out = tmp_path / "out"
    rep = B.run_benchmark(B.BenchmarkConfig.from_dict(doc), out)
    rows = [r for r in rep["leaderboard"] if r["kind"] == "feature"]
    assert [r["arm"] for r in rows] == ["real+synthetic"]
    assert set(rep["baselines"]) == {"real", "feature:real", "feature:oversample"}
    for m in rep["primary_metrics"]:
        assert rows[0]["vs_best_baseline"][m]["baseline"] in ("feature:real", "feature:oversample")
        assert rows[0]["vs_real"][m]["baseline"] == "feature:real" and rows[0]["metrics"][m]["n"] == 2
    fd = json.loads((out / "generators" / "s0" / "feature-acgan-g0" / "feature_downstream.json").read_text())
    split = B.Benchmark(B.BenchmarkConfig.from_dict(doc), out).split(0)
    assert sorted(fd["test_ids"]) == sorted(split.test.ids)  # the same split as the image-level arms


def test_a_generator_can_run_its_own_arms(finished_copy):
    """An extra row restricted to one arm: only its cells run, its pool is sized by its arms, old rows are kept."""
    out, ran = finished_copy
    extra = {"model": "dcgan", "name": "dcgan-b", "steps": 2, "arms": ["real+synthetic@1x+class-weight"],
             "overrides": ["model.params.conditional=true"]}
    cfg = B.BenchmarkConfig.from_dict({**TINY, "generators": [*TINY["generators"], extra]})
    assert cfg.arms_of(cfg.generators[2]) == ["real+synthetic@1x+class-weight"]
    assert cfg.arms_of(cfg.generators[0]) == TINY["arms"]
    rep = B.run_benchmark(cfg, out)
    assert all(k.startswith("s0/dcgan-b-g0/") for k in ran)
    assert sorted(k for k in ran if "/arm/" in k) == [f"s0/dcgan-b-g0/arm/real_syntheticat1x_class-weight/seed{k}"
                                                      for k in (0, 1)]
    rows = {(r["generator"], r["arm"]) for r in rep["leaderboard"]}
    assert ("dcgan-b", "real+synthetic@1x+class-weight") in rows and ("dcgan-b", "real+synthetic") not in rows
    assert ("dcgan", "real+synthetic") in rows
    with pytest.raises(ConfigError, match="baseline"):
        B.BenchmarkConfig.from_dict({**TINY, "generators": [{**extra, "arms": ["oversample"]}]})


def test_estimate_grid_scales_each_cell_by_its_training_set():
    """Arm cells scale with the images an epoch sees; the total is the sum of the rows; done cells are left out."""
    cfg = B.BenchmarkConfig.from_dict({**TINY, "arms": ["real+synthetic", "real+synthetic@1x", "synthetic-only"]})
    ds = B.Benchmark(cfg, "unused").split(0).train
    gen_s = {"dcgan": 120.0, "acgan": 60.0}
    est = B.estimate_grid(cfg, ds, 10.0, gen_s)
    counts = ds.class_counts()
    n, top = len(ds), max(counts.values())
    minority = {c: k for c, k in counts.items() if k < top}
    expect = {
        "real": 10.0,
        "oversample": 10.0 * (top * len(counts)) / n,  # balanced by duplicates
        "real+synthetic": 10.0 * (top * len(counts)) / n,  # balanced by synthetic images
        "real+synthetic@1x": 10.0 * (n + sum(min(k, top - k) for k in minority.values())) / n,
        "synthetic-only": 10.0 * (top * len(counts)) / n,
    }
    for arm, sec in expect.items():
        assert est["arm_seconds"][arm] == pytest.approx(sec, abs=0.06), arm
    cells = B.plan_cells(cfg)
    n_arm = {a: sum(1 for c in cells if c.kind == "arm" and c.arm == a) for a in expect}
    assert est["rows"]["arm cells"]["seconds"] == pytest.approx(sum(expect[a] * n_arm[a] for a in expect), abs=0.5)
    assert est["rows"]["generator training"]["seconds"] == pytest.approx(180.0)
    assert est["rows"]["fidelity cells"]["cells"] == 2
    assert est["total_seconds"] == pytest.approx(sum(r["seconds"] for r in est["rows"].values()), abs=0.5)
    assert est["remaining_seconds"] == pytest.approx(est["total_seconds"], abs=0.5)
    # a resumed folder: finished cells are not left to run
    done = {c.key for c in cells if c.kind == "train" or (c.kind == "arm" and c.gen is None)}
    est2 = B.estimate_grid(cfg, ds, 10.0, gen_s, done)
    assert est2["rows"]["generator training"]["remaining_seconds"] == 0
    dom = cfg.model_copy(update={"fidelity_extractor": "domain"})
    assert B.estimate_grid(dom, ds, 10.0, gen_s)["rows"]["domain encoder"]["remaining_seconds"] == pytest.approx(100.0)
    est3 = B.estimate_grid(dom, ds, 10.0, gen_s, {"s0/domain_encoder"})
    assert est3["rows"]["domain encoder"]["remaining_seconds"] == 0 and est3["cells_done"] == 0  # not a cell
    assert est2["remaining_seconds"] == pytest.approx(
        est["total_seconds"] - 180.0 - 10.0 * 2 - expect["oversample"] * 2, abs=0.5)


def test_estimate_cli_measures_and_writes_nothing(tmp_path, finished):
    cfg = _write(tmp_path, TINY)
    out = tmp_path / "new"
    r = runner.invoke(app, ["benchmark", "phantom", str(out), "--config", str(cfg), "--estimate"])
    assert r.exit_code == 0, r.output
    assert "estimated time of the grid" in r.output and "generator training" in r.output and "total" in r.output
    assert not out.exists()  # nothing run, nothing written
    # on a finished folder: nothing left to run
    r = runner.invoke(app, ["benchmark", "phantom", str(finished), "--config", str(cfg), "--estimate"])
    assert r.exit_code == 0, r.output
    est = B.Benchmark(B.BenchmarkConfig.from_dict(TINY), finished).estimate()
    assert est["cells_done"] == est["cells"] and est["remaining_seconds"] == pytest.approx(
        sum(r["remaining_seconds"] for r in est["rows"].values()), abs=0.5)
    assert est["rows"]["arm cells"]["remaining_seconds"] == 0 and est["cell_seconds"] > 0
    assert est["remaining_seconds"] == 0  # the grid's domain encoder (pixels here: none) and cells are all done


def test_parallel_jobs_give_the_serial_results(tmp_path, finished):
    """--jobs 2: the same cells, the same numbers (one thread per cell, as in the serial run here), one pool per
    seed, and a resume of the finished folder runs nothing."""
    out = tmp_path / "par"
    cfg = _write(tmp_path, TINY)
    r = runner.invoke(app, ["benchmark", "phantom", str(out), "--config", str(cfg), "--jobs", "2"])
    assert r.exit_code == 0, r.output
    cells = lambda d: sorted(p.relative_to(d).as_posix() for p in (d / "cells").rglob("*.json"))  # noqa: E731
    assert cells(out) == cells(finished)
    a = json.loads((out / "benchmark.json").read_text())
    b = json.loads((finished / "benchmark.json").read_text())
    strip = lambda rep: [(r["generator"], r["arm"], {m: v["mean"] for m, v in r["metrics"].items()})  # noqa: E731
                         for r in rep["leaderboard"]]
    assert strip(a) == strip(b) and a["baselines"] == b["baselines"]
    for k in ("s0/dcgan-g0/arm/real_synthetic/seed1.json", "s0/baseline/arm/oversample/seed0.json"):
        ca, cb = (json.loads((d / "cells" / k).read_text()) for d in (out, finished))
        assert ca["composition"] == cb["composition"] and ca["balanced_accuracy"] == cb["balanced_accuracy"]
    pools = sorted(p.name for p in (out / "generators" / "s0" / "dcgan-g0" / "synthetic").iterdir())
    assert pools == ["seed0-none.safetensors", "seed1-none.safetensors"]
    r = runner.invoke(app, ["benchmark", "phantom", str(out), "--config", str(cfg), "--jobs", "2"])
    assert r.exit_code == 0 and "resuming: " in r.output


def test_parallel_failure_is_one_line_and_keeps_finished_cells(tmp_path):
    """A cell that fails in a worker stops the benchmark with the usual one-line error (exit 2); cells that were
    running finish and are kept, queued ones do not start."""
    doc = {**TINY, "generators": [{"model": "acgan", "steps": 3},
                                  {"model": "dcgan", "steps": 3, "overrides": ["model.params.no_such_param=1"]}]}
    out = tmp_path / "out"
    r = runner.invoke(app, ["benchmark", "phantom", str(out), "--config", str(_write(tmp_path, doc)), "--jobs", "2"])
    assert r.exit_code == 2, r.output
    assert "no_such_param" in r.output and "Traceback" not in r.output
    assert (out / "cells" / "s0" / "acgan-g0" / "train.json").is_file()  # ran beside the failing cell: kept
    for p in (out / "cells").rglob("*.json"):
        json.loads(p.read_text())  # every cell file is complete
    assert not (out / "benchmark.json").exists()


def test_repeated_splits_that_coincide_are_refused(tmp_path):
    """With few patient groups two split seeds can draw the same validation and test patients; counting that split
    twice would shrink the intervals, so the benchmark refuses before any work (one line, exit 2)."""
    import torch

    from medbalance.data.dataset import ImageDataset

    n = 60
    g = np.repeat([f"p{i}" for i in range(3)], n // 3).tolist()  # 3 patients: only 6 possible 1/1/1 splits
    ds = ImageDataset(images=torch.rand(n, 1, 16, 16) * 2 - 1, labels=torch.arange(n) % 2, class_names=["a", "b"],
                      ids=[f"x{i}" for i in range(n)], groups=g)
    cfg = B.BenchmarkConfig.from_dict({**TINY, "generators": [], "split_seeds": list(range(8)),
                                       "fractions": [0.34, 0.33, 0.33]})
    b = B.Benchmark(cfg, tmp_path / "out", data=ds)
    pairs = b._duplicate_splits()
    assert pairs  # 8 seeds, at most 6 distinct splits
    with pytest.raises(ConfigError, match=r"split seeds \d+ and \d+ give the same split"):
        b.run()
    assert not (tmp_path / "out" / "cells").exists() and not (tmp_path / "out" / "benchmark.yaml").exists()
    distinct = [s for s in range(8) if s not in {later for _, later in pairs}]
    ok = B.Benchmark(cfg.model_copy(update={"split_seeds": distinct}), tmp_path / "ok", data=ds)
    assert ok._duplicate_splits() == []


def test_step_speed_of_a_two_phase_model():
    """Latent diffusion trains its autoencoder for ae_steps steps, then its U-Net: each phase is timed, and a
    budget in steps or minutes is converted with both speeds (hand-computed)."""
    sp = B.StepSpeed(0.3, 500, 0.1)
    assert sp.seconds_for(4500) == pytest.approx(500 * 0.3 + 4000 * 0.1)
    assert sp.seconds_for(200) == pytest.approx(200 * 0.3)
    assert sp.steps_in(60) == 200 and sp.steps_in(150 + 40) == 900
    one = B.StepSpeed(0.25)
    assert one.seconds_for(8) == pytest.approx(2.0) and one.steps_in(2.0) == 8 and one.steps_in(0.01) == 1

    cfg = B.BenchmarkConfig.from_dict({**TINY, "generators": [{"model": "latent-diffusion", "steps": 40},
                                                              {"model": "dcgan", "steps": 40}]})
    bench = B.Benchmark(cfg, "unused")
    calls = []

    def fake_calibrate(g, cell, overrides):
        calls.append((g.model, list(overrides)))
        return 0.1 if "model.params.ae_steps=0" in overrides else 0.3

    bench._calibrate = fake_calibrate
    ldm, dc = cfg.generators
    cell = B.Cell("train", 0, gen=ldm, gseed=0)
    ae = bench._run_config(ldm, "unused", {}, []).model.params["ae_steps"]
    assert bench._step_speed(ldm, cell, []) == B.StepSpeed(0.3, ae, 0.1)
    assert calls == [("latent-diffusion", []), ("latent-diffusion", ["model.params.ae_steps=0"])]
    calls.clear()
    assert bench._step_speed(dc, B.Cell("train", 0, gen=dc, gseed=0), []) == B.StepSpeed(0.3)
    assert calls == [("dcgan", [])]
