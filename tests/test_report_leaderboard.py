"""The report's "Benchmark leaderboard" section from a hand-made ``benchmark.json`` (schema of
medbalance.experiments.benchmark): tables, verdict words and colours, generator numbers, n/a for nulls."""

from __future__ import annotations

import copy
import json
import re

import pytest

from medbalance.report import build_report
from medbalance.utils.io import atomic_write_json

M1, M2 = "recall/meningioma", "balanced_accuracy"


def s(mean, lo, hi, n=5):
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "n": n}


def cmp(baseline, diff, lo, hi, p, p_holm, verdict):
    return {"baseline": baseline, "diff": diff, "ci_low": lo, "ci_high": hi, "p": p, "p_holm": p_holm,
            "verdict": verdict}


def row(gen, arm, kind, m1, m2, c1, c2):
    return {"generator": gen, "arm": arm, "kind": kind, "metrics": {M1: m1, M2: m2},
            "vs_best_baseline": {M1: c1, M2: c2}, "vs_real": {M1: c1, M2: c2}, "verdict": c1["verdict"]}


def make_benchmark() -> dict:
    return {
        "kind": "medbalance-benchmark", "version": 1, "task": "classification", "dataset": "brain-tumor-mri",
        "class_names": ["glioma", "meningioma", "pituitary_tumor"], "minority": "meningioma",
        "primary_metrics": [M1, M2],
        "variance_sources": ["classifier seed (initialisation, data order, generation)", "split seed (2 splits)"],
        "n_replicates": 5,
        "baselines": {
            "real": {M1: s(0.601, 0.52, 0.68), M2: s(0.792, 0.77, 0.81)},
            "oversample": {M1: s(0.652, 0.58, 0.71), M2: s(0.801, 0.78, 0.82)},
            "class-weight": {M1: s(0.789, 0.74, 0.83), M2: s(0.869, 0.85, 0.89)},
            "feature:real": {M1: s(0.41, 0.3, 0.5), M2: s(0.6, 0.55, 0.66)},
        },
        "best_baseline": {M1: "class-weight", M2: "class-weight"},
        "generators": {
            "dcgan": {"model": "dcgan", "preset": "cpu", "steps": 6500, "train_seconds": 612.3, "kind": "image",
                      "fidelity": {"fd": 4.7, "kid": 0.01, "precision": 0.7, "recall": 0.5, "density": 0.9,
                                   "coverage": 0.8, "extractor": "domain"},
                      "diversity": {"ms_ssim": 0.21, "ms_ssim_real": 0.19},
                      "privacy": {"nn_distance_median": 0.3, "real_nn_distance_median": 0.35, "near_copies": 0,
                                  "n": 200}},
            "diffusion": {"model": "diffusion", "preset": "cpu", "steps": None, "epochs": 40, "train_seconds": None,
                          "kind": "image", "fidelity": None, "diversity": None, "privacy": None},
            "feature-acgan": {"model": "feature_acgan", "preset": "cpu", "steps": None, "train_seconds": 33.0,
                              "kind": "feature", "fidelity": None, "diversity": None, "privacy": None},
        },
        "leaderboard": [
            row("dcgan", "real+synthetic@1", "image", s(0.85, 0.80, 0.90), s(0.88, 0.86, 0.90),
                cmp("class-weight", 0.061, 0.02, 0.10, 0.001, 0.012, "helps"),
                cmp("class-weight", 0.011, -0.01, 0.03, 0.2, 0.9, "no evidence")),
            row("feature-acgan", "real+synthetic", "feature", s(0.45, 0.40, 0.50), s(None, None, None),
                cmp("feature:real", 0.04, -0.05, 0.12, 0.3, None, "no evidence"), None),
            row("diffusion", "real+synthetic@5", "image", s(0.518, 0.319, 0.743), s(0.778, 0.75, 0.80),
                cmp("class-weight", -0.271, -0.45, -0.05, 0.002, 0.024, "hurts"),
                cmp("class-weight", -0.091, -0.12, -0.06, 0.001, 0.012, "hurts")),
        ],
        "tests": {"method": "paired t-test across replicates; Holm over all leaderboard comparisons", "alpha": 0.05,
                  "n_comparisons": 12},
        "cells": {"done": 40, "total": 40}, "seconds": 1234.5,
        "command": "medbalance benchmark data/ out/ --generators dcgan,diffusion",
    }


def generator_rows(h: str) -> dict[str, list[str]]:
    """Cells of the generators table by generator name (first cell)."""
    table = h.split("<h3>generators</h3>", 1)[1].split("</table>", 1)[0]
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in re.findall(r"<tr>(.*?)</tr>", table)]
    return {r[0]: r[1:] for r in rows if r}


def leaderboard_rows(h: str) -> list[tuple[str, list[str]]]:
    """(row class, cells) of the generators x arms table."""
    sec = h.split('<section id="leaderboard">', 1)[1].split("</section>", 1)[0]
    board = sec.split("<h3>generators x arms, best first</h3>", 1)[1].split("</table>", 1)[0]
    return [(cls, [c.replace("<br>", " | ") for c in re.findall(r"<td[^>]*>(.*?)</td>", cells)])
            for cls, cells in re.findall(r'<tr class="(\w+)">(.*?)</tr>', board)]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    atomic_write_json(root / "benchmark.json", make_benchmark())
    out = build_report(root)
    return out.read_text(), json.loads(out.with_suffix(".json").read_text())


def test_leaderboard_section_rows_words_colours(rendered):
    h, js = rendered
    assert '<section id="leaderboard"><h2>Benchmark leaderboard</h2>' in h
    assert js["sections"] == ["data-method", "leaderboard"]
    rows = leaderboard_rows(h)
    assert [(c, r[0], r[1]) for c, r in rows] == [
        ("good", "dcgan", "real+synthetic@1"), ("neutral", "feature-acgan", "real+synthetic | feature level"),
        ("bad", "diffusion", "real+synthetic@5")]
    dc = rows[0][1]
    assert dc[2:6] == ["0.850 [0.800, 0.900] | +0.061 [0.020, 0.100]", "helps | p 0.012",
                       "0.880 [0.860, 0.900] | +0.011 [-0.010, 0.030]", "no evidence | p 0.900"]
    assert len(dc) == 6  # fidelity, diversity and privacy are in the generators table, once per generator
    assert rows[2][1][2:4] == ["0.518 [0.319, 0.743] | -0.271 [-0.450, -0.050]", "hurts | p 0.024"]
    # each metric's verdict cell has its own colour; the row has the first primary metric's
    assert '<td class="w good">helps<br>p 0.012</td>' in h and '<td class="w neutral">no evidence<br>p 0.900</td>' in h
    assert '<td class="w bad">hurts<br>p 0.012</td>' in h
    assert "recall/meningioma: mean [CI] / diff. vs class-weight [CI]" in h
    # budget, train s, model, preset, extractor, FD, KID, precision, recall, density, coverage, MS-SSIM syn / real,
    # NN dist. syn / real, near copies, privacy n
    assert generator_rows(h)["dcgan"] == ["6500 steps", "612.3", "dcgan", "cpu", "domain", "4.700", "0.010", "0.700",
                                          "0.500", "0.900", "0.800", "0.210", "0.190", "0.300", "0.350", "0", "200"]
    assert "tr.good td{background:#e3f4e6}" in h and "tr.bad td{background:#fbe5e5}" in h


def test_missing_values_are_na(rendered):
    h, _ = rendered
    fa = leaderboard_rows(h)[1][1]
    assert fa[2:4] == ["0.450 [0.400, 0.500] | +0.040 [-0.050, 0.120]", "no evidence | p n/a | vs feature:real"]
    assert fa[4:6] == ["n/a [n/a, n/a] | n/a", "n/a | p n/a | vs n/a"]  # second metric: null summary, no comparison
    assert len(fa) == 6
    gens = generator_rows(h)
    assert gens["diffusion"][:3] == ["40 epochs", "n/a", "diffusion"] and gens["dcgan"][0] == "6500 steps"
    assert gens["feature-acgan"][4:] == ["n/a"] * 13  # no fidelity / diversity / privacy
    assert "None" not in h.split('<section id="leaderboard">', 1)[1]


def test_baselines_and_coverage_statement(rendered):
    h, js = rendered
    base = h.split("<h3>baselines (mean [95 % CI])</h3>", 1)[1].split("</table>", 1)[0]
    assert ('<td class="l">class-weight</td><td>0.789 [0.740, 0.830] (best)</td><td>0.869 [0.850, 0.890] (best)</td>'
            in base)
    assert '<td class="l">feature:real</td>' in base and "0.601 [0.520, 0.680]</td>" in base
    assert ("Intervals (95 % CI) cover: classifier seed (initialisation, data order, generation); split seed "
            "(2 splits) (5 paired replicates per cell). Test: paired t-test across replicates; Holm over all "
            "leaderboard comparisons; alpha 0.050, 12 comparisons.") in h
    assert js["leaderboard"]["best_baseline"] == {M1: "class-weight", M2: "class-weight"}
    assert [r["verdict"] for r in js["leaderboard"]["rows"]] == ["helps", "no evidence", "hurts"]


def test_nulls_everywhere_do_not_crash(tmp_path):
    b = make_benchmark()
    for k in ("dataset", "minority", "variance_sources", "n_replicates", "best_baseline", "tests", "cells", "seconds",
              "command"):
        b[k] = None
    b["baselines"]["real"] = None
    b["generators"]["dcgan"] = None
    b["leaderboard"].append({"generator": "unknown", "arm": None, "metrics": None, "vs_best_baseline": None,
                             "verdict": None})
    atomic_write_json(tmp_path / "benchmark.json", b)
    h = build_report(tmp_path).read_text()
    assert ("Intervals (95 % CI) cover: n/a (n/a paired replicates per cell). Test: n/a; alpha n/a, "
            "n/a comparisons.") in h
    rows = leaderboard_rows(h)
    assert rows[-1][0] == "neutral" and rows[-1][1][:3] == ["unknown", "n/a", "n/a | n/a"]
    assert generator_rows(h)["dcgan"] == ["n/a"] * 17  # dcgan's generator entry is null
    assert "(best)" not in h and '<td class="l">real</td><td>n/a</td><td>n/a</td>' in h


def test_leaderboard_beside_other_results(tmp_path):
    """A benchmark folder next to a downstream experiment: both sections, leaderboard first after data & method."""
    from tests.test_report import make_downstream

    atomic_write_json(tmp_path / "bench" / "benchmark.json", copy.deepcopy(make_benchmark()))
    atomic_write_json(tmp_path / "ds" / "downstream.json", make_downstream())
    js = json.loads(build_report(tmp_path).with_suffix(".json").read_text())
    assert js["sections"][:3] == ["data-method", "leaderboard", "verdicts"]
    assert "downstream" in js["sections"]


def test_time_shown_without_wall_time(tmp_path):
    """After ``--summarize`` benchmark.json has no wall time: the summed cell time is shown instead, never "n/a s"."""
    b = make_benchmark()
    b["seconds"], b["cell_seconds_total"] = None, 6987.4
    atomic_write_json(tmp_path / "a" / "benchmark.json", b)
    h = build_report(tmp_path / "a").read_text()
    assert "cells done 40 of 40; cell time (sum) 6987 s</p>" in h and "wall time" not in h and "n/a s" not in h
    b["seconds"] = 1234.5
    atomic_write_json(tmp_path / "b" / "benchmark.json", b)
    h = build_report(tmp_path / "b").read_text()
    assert "cells done 40 of 40; wall time 1234 s; cell time (sum) 6987 s</p>" in h
    b["seconds"] = b["cell_seconds_total"] = None
    atomic_write_json(tmp_path / "c" / "benchmark.json", b)
    h = build_report(tmp_path / "c").read_text()
    assert "cells done 40 of 40</p>" in h and " s</p>" not in h.split('<section id="leaderboard">', 1)[1]


def test_leaderboard_table_wraps(rendered):
    """The generators x arms table may wrap (arm names, intervals) instead of widening the page."""
    h, _ = rendered
    assert '<table class="lb">' in h.split("<h3>generators x arms, best first</h3>", 1)[1][:20]
    assert "table.lb td,table.lb th{padding:3px 5px;white-space:normal}" in h
