"""`medbalance report`: sections, self-containedness, escaping, verdict wording, report.json == inputs."""

from __future__ import annotations

import base64
import csv
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from typer.testing import CliRunner

from medbalance.cli.main import app
from medbalance.data.dataset import ImageDataset
from medbalance.evaluation.evaluate import evaluate_datasets
from medbalance.experiments.downstream import summarize_arms
from medbalance.report import build_report, make_verdicts
from medbalance.utils.io import atomic_write_json

CLASSES = ["major", "<b>minor&", "rare"]  # one name that must be escaped in the HTML
SEEDS = [0, 1, 2]
N_TEST = {"major": 20, "<b>minor&": 12, "rare": 16}



def _result(correct: dict[str, np.ndarray], seed: int, arm: str) -> dict:
    """A classification result dict as run_downstream writes it, from per-case correctness."""
    per_class = {}
    for c in CLASSES:
        rec = float(correct[c].mean())
        per_class[c] = {"recall": rec, "precision": 0.8, "f1": 0.7, "specificity": 0.9, "support": len(correct[c])}
    recalls = [per_class[c]["recall"] for c in CLASSES]
    return {
        "per_class": per_class, "balanced_accuracy": float(np.mean(recalls)), "macro_f1": 0.5 + 0.01 * seed,
        "accuracy": 0.7, "auroc": 0.8, "confusion_matrix": [[0]],
        "per_case_correct": np.concatenate([correct[c] for c in CLASSES]).astype(int).tolist(),
        "seed": seed, "arm": arm, "best_epoch": 1, "train_seconds": 0.1,
    }


def make_downstream() -> dict:
    """real vs real+synthetic: 'rare' recall 0.25 -> ~0.8 (significant over 16 cases); others unchanged."""
    results = {"real": [], "real+synthetic": []}
    for s in SEEDS:
        rng = np.random.default_rng(s)
        base = {c: (rng.random(n) < 0.6).astype(int) for c, n in N_TEST.items()}
        base["rare"] = np.zeros(N_TEST["rare"], int)
        base["rare"][s::4] = 1  # 4 of 16 correct
        arm = {c: v.copy() for c, v in base.items()}
        arm["rare"] = np.ones(N_TEST["rare"], int)
        arm["rare"][s] = 0  # 15 of 16 correct
        results["real"].append(_result(base, s, "real"))
        results["real+synthetic"].append(_result(arm, s, "real+synthetic"))
    test_labels = np.concatenate([np.full(N_TEST[c], k) for k, c in enumerate(CLASSES)])
    train_counts = {"major": 50, "<b>minor&": 15, "rare": 5}
    return {
        "config": {"seeds": SEEDS, "arms": ["real", "real+synthetic"], "epochs": 3},
        "task": "classification",
        "class_names": CLASSES,
        "split": {"train": 70, "val": 20, "test": 48},
        "split_class_counts": {"train": train_counts, "val": {"major": 10, "<b>minor&": 5, "rare": 5}, "test": N_TEST},
        "arm_training_sets": {
            "real": {"n": 70, "class_counts": train_counts, "synthetic": 0},
            "real+synthetic": {"n": 150, "class_counts": {c: 50 for c in CLASSES}, "synthetic": 80},
        },
        "results": results,
        "summary": summarize_arms(results, "classification", CLASSES, test_labels),
        "warnings": ["class 'rare' has only 5 training images"],
    }


def write_export(folder, rng) -> tuple[dict, dict]:
    """A rebalanced export: real + synthetic PNGs with 0/1/2 masks, manifest.csv, synthesis.json."""
    rows, before, after = [], {}, {}
    counts = {"major": (6, 0), "<b>minor&": (3, 3), "rare": (2, 4)}
    k = 0
    for c, (n_real, n_syn) in counts.items():
        for kind, n in (("real", n_real), ("synthetic", n_syn)):
            for _ in range(n):
                img = rng.integers(0, 255, (16, 16), dtype=np.uint8)
                mask = np.zeros((16, 16), np.uint8)
                mask[3:13, 3:13] = 1
                mask[6:10, 6:10] = 2
                (folder / "images" / kind).mkdir(parents=True, exist_ok=True)
                (folder / "masks" / kind).mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(folder / "images" / kind / f"s{k}.png")
                Image.fromarray(mask).save(folder / "masks" / kind / f"s{k}.png")
                rows.append({"id": f"s{k}", "image": f"images/{kind}/s{k}.png", "mask": f"masks/{kind}/s{k}.png",
                             "label": c, "synthetic": "1" if kind == "synthetic" else "0"})
                k += 1
        before[c] = n_real
        after[c] = n_real + n_syn
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "image", "mask", "label", "synthetic"])
        w.writeheader()
        w.writerows(rows)
    atomic_write_json(folder / "synthesis.json",
                      {"plan": {c: counts[c][1] for c in counts}, "report": {"shortfall": {}}})
    return before, after


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    rng = np.random.default_rng(0)
    ds = make_downstream()
    atomic_write_json(root / "downstream" / "downstream.json", ds)
    before, after = write_export(root / "rebalanced", rng)
    # a generator run folder: config, losses, a sample grid
    run = root / "generator"
    (run / "samples").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "config.yaml").write_text("model:\n  name: pix2pix\n  preset: cpu\n  params: {}\n"
                                     "train:\n  steps: 30\n  batch_size: 4\n  seed: 0\n")
    losses = [(s, 5.0 - 0.1 * s, 1.0 + 0.01 * s) for s in (10, 20, 30)]
    (run / "losses.csv").write_text("step,G,D,images_per_s\n"
                                    + "".join(f"{s},{g!r},{d!r},100.0\n" for s, g, d in losses))
    Image.fromarray(rng.integers(0, 255, (20, 40, 3), dtype=np.uint8)).save(run / "samples" / "step_000030.png")
    # evaluation with privacy montage (real numbers from evaluate_datasets on tiny images)
    g = torch.Generator().manual_seed(0)
    def mk(n: int, off: str) -> ImageDataset:
        return ImageDataset(images=torch.rand(n, 1, 16, 16, generator=g) * 2 - 1, labels=torch.arange(n) % 3,
                            class_names=CLASSES, ids=[f"{off}{i}" for i in range(n)])

    real, syn, ho = mk(24, "r"), mk(18, "s"), mk(12, "h")
    ev = evaluate_datasets(real=real, synthetic=syn, extractor="pixels", extractor_options={"size": 8},
                           privacy_train=real, privacy_holdout=ho, use_cache=False, kid_subsets=5, kid_subset_size=10,
                           ms_ssim_pairs=5, montage_path=root / "evaluation" / "montage.png",
                           metrics=["fd", "precision_recall", "image_stats"])
    atomic_write_json(root / "evaluation" / "evaluation.json", ev)
    html_path = build_report(root)
    return {"root": root, "downstream": ds, "before": before, "after": after, "evaluation": ev,
            "html": html_path.read_text(), "json": json.loads(html_path.with_suffix(".json").read_text())}


def test_sections_present_with_stable_ids(experiment):
    h = experiment["html"]
    for sid in ("data-method", "verdicts", "class-distribution", "sample-grids", "training-curves", "fidelity",
                "privacy", "downstream", "per-class-recall"):
        assert f'<section id="{sid}">' in h, sid
    assert experiment["json"]["sections"][0] == "data-method"
    assert h.startswith("<!DOCTYPE html>") and h.rstrip().endswith("</html>")


def test_self_contained_and_escaped(experiment):
    h = experiment["html"]
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", h, re.IGNORECASE)
    assert "<link" not in h and "<script" not in h.lower()
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]+)"', h)
    assert len(srcs) >= 8  # distribution, grids (2 x 2 + 1), losses, samples, montage, recall
    for s in srcs:
        assert s.startswith("data:image/png;base64,")
    png = base64.b64decode(srcs[0].split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<b>minor&" not in h and "&lt;b&gt;minor&amp;" in h


def test_report_json_numbers_equal_inputs(experiment):
    js, ds = experiment["json"], experiment["downstream"]
    assert js["class_distribution"] == {"before": experiment["before"], "after": experiment["after"]}
    for arm in ("real", "real+synthetic"):
        for m in ("balanced_accuracy", "recall/rare", "recall/<b>minor&"):
            e = ds["summary"][arm][m]
            got = js["downstream"][m][arm]
            assert (got["mean"], got["ci_low"], got["ci_high"]) == (e["mean"], e["ci_low"], e["ci_high"])
    # means are the plain mean over seeds of the per-seed results
    rare = [r["per_class"]["rare"]["recall"] for r in ds["results"]["real+synthetic"]]
    assert js["downstream"]["recall/rare"]["real+synthetic"]["mean"] == pytest.approx(np.mean(rare))
    assert js["privacy"]["pixels"]["dcr_share"] == experiment["evaluation"]["privacy"]["pixels"]["dcr_share"]
    assert js["evaluation"]["fidelity"]["overall"]["fd"] == experiment["evaluation"]["fidelity"]["overall"]["fd"]
    assert js["training"]["last"]["G"] == pytest.approx(2.0)
    assert js["sample_grids"]["rare"] == {"real_in_set": 2, "synthetic_in_set": 4}
    # every downstream mean shown in the table appears in the HTML with 3 decimals
    assert f"{ds['summary']['real+synthetic']['recall/rare']['mean']:.3f}" in experiment["html"]


def test_verdict_significant_wording(experiment):
    ds = experiment["downstream"]
    v = next(x for x in make_verdicts(ds) if x["class"] == "rare")
    # independent computation: per case, correctness averaged over seeds; Wilcoxon across the 16 'rare' cases
    start = N_TEST["major"] + N_TEST["<b>minor&"]
    a = np.mean([r["per_case_correct"] for r in ds["results"]["real+synthetic"]], 0)[start:]
    b = np.mean([r["per_case_correct"] for r in ds["results"]["real"]], 0)[start:]
    p = stats.wilcoxon(a, b).pvalue
    assert p < 0.05 and v["p"] == pytest.approx(p) and v["significant"] and v["test"] == "cases"
    base = np.mean([r["per_class"]["rare"]["recall"] for r in ds["results"]["real"]])
    new = np.mean([r["per_class"]["rare"]["recall"] for r in ds["results"]["real+synthetic"]])
    assert v["text"].startswith(
        f"Adding 45 synthetic rare images raised rare recall from {base:.2f} to {new:.2f} (95 % CI ")
    shown = "p < 0.001" if p < 0.001 else (f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}")
    assert shown in v["text"] and "across 16 test cases" in v["text"]
    assert "rare recall" in experiment["html"]


def test_verdict_not_significant_and_seed_limit(experiment):
    vs = make_verdicts(experiment["downstream"])
    major = next(x for x in vs if x["class"] == "major")
    assert not major["significant"] and major["p"] == 1.0
    assert "no significant change in major recall" in major["text"]
    assert "none of major" in major["text"]
    bacc = next(x for x in vs if x["class"] is None)
    assert bacc["test"] == "seeds" and not bacc["significant"]
    # 3 seeds: the smallest attainable two-sided Wilcoxon p is 2 / 2**3 = 0.25 >= 0.05
    assert bacc["significance_impossible"] and bacc["min_attainable_p"] == 0.25
    assert "smallest attainable p-value is 0.250" in bacc["text"] and "impossible" in bacc["text"]


def test_cli_report_and_errors(experiment, tmp_path):
    out = tmp_path / "r.html"
    r = CliRunner().invoke(app, ["report", str(experiment["root"] / "downstream"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    h = out.read_text()
    assert '<section id="downstream">' in h and '<section id="sample-grids">' not in h
    assert (tmp_path / "r.json").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    r = CliRunner().invoke(app, ["report", str(empty)])
    assert r.exit_code == 2 and "no medbalance results found" in r.output
    r = CliRunner().invoke(app, ["report", str(experiment["root"]), "--out", str(tmp_path / "x.txt")])
    assert r.exit_code == 2 and "--out must be an .html file" in r.output


# ------------------------------------------------------------------ one reading of the 'synthetic' column
def test_parse_synthetic_flag_one_reading():
    from medbalance.data.manifest import parse_synthetic_flag
    from medbalance.errors import DataError

    for v in ("1", "true", "True", " YES ", "y", "t", True, 1):
        assert parse_synthetic_flag(v) is True, v
    for v in ("0", "false", "No", "n", "F", "", "  ", None, False, 0):
        assert parse_synthetic_flag(v) is False, v
    for v in ("2", "maybe", "synthetic"):
        with pytest.raises(DataError, match="'synthetic' cell"):
            parse_synthetic_flag(v)


def test_report_and_loader_agree_on_yes(tmp_path):
    """'yes' rows are synthetic for the data layer and for the report (the report used to count them as real)."""
    from medbalance.data.sources import load_dataset

    write_export(tmp_path, np.random.default_rng(1))
    text = (tmp_path / "manifest.csv").read_text().splitlines()
    rows = [text[0]] + [r[:-1] + "yes" if r.endswith(",1") else r[:-1] + "no" for r in text[1:]]
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(str(tmp_path / "manifest.csv"))
    js = json.loads(build_report(tmp_path).with_suffix(".json").read_text())
    assert int(ds.synthetic.sum()) == 7
    assert js["class_distribution"]["before"] == {"major": 6, "<b>minor&": 3, "rare": 2}
    assert sum(js["class_distribution"]["after"].values()) - sum(js["class_distribution"]["before"].values()) == 7
    (tmp_path / "manifest.csv").write_text("\n".join([text[0], text[1][:-1] + "maybe"]) + "\n")
    r = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 2 and "'synthetic' cell 'maybe'" in r.output


# ------------------------------------------------------------------ colours and words: better / worse
def _row(h: str, metric: str, arm: str) -> tuple[str, str]:
    """(row class, last cell) of a downstream-table row."""
    m = re.search(rf'<tr class="(\w+)"><td class="l">{re.escape(metric)}</td><td class="l">{re.escape(arm)}</td>'
                  r'(?:<td>[^<]*</td>)+<td class="w \1">([^<]*)</td></tr>', h)
    assert m, (metric, arm)
    return m.group(1), m.group(2)


def test_significant_drop_is_red_and_worse(tmp_path):
    """A significant drop is red and says 'worse'; a significant gain green and 'better'; else 'no evidence'."""
    from medbalance.report import downstream_table

    ds = make_downstream()
    # swap the arms: 'real' now has the good rare recall, so real+synthetic lowers it significantly
    ds["results"] = {"real": ds["results"]["real+synthetic"], "real+synthetic": ds["results"]["real"]}
    test_labels = np.concatenate([np.full(N_TEST[c], k) for k, c in enumerate(CLASSES)])
    ds["summary"] = summarize_arms(ds["results"], "classification", CLASSES, test_labels)
    tbl, numbers = downstream_table(ds)
    assert _row(tbl, "recall/rare", "real+synthetic") == ("bad", "worse")
    assert numbers["recall/rare"]["real+synthetic"]["vs_real"] == "worse"
    assert _row(tbl, "recall/major", "real+synthetic") == ("neutral", "no evidence")
    good, _ = downstream_table(make_downstream())
    assert _row(good, "recall/rare", "real+synthetic") == ("good", "better")
    # the verdict list carries the same word and colour
    atomic_write_json(tmp_path / "downstream.json", ds)
    h = build_report(tmp_path).read_text()
    assert re.search(r'<li class="bad">\[worse\] Adding 45 synthetic rare images lowered rare recall', h)
    assert 'class="sig' not in h and "tr.good td{background:#e3f4e6}" in h and "tr.bad td{background:#fbe5e5}" in h


# ------------------------------------------------------------------ feature-level results (feature-augment)
def test_feature_level_results_shown_like_image_level(tmp_path):
    ds = make_downstream()
    ds["config"] = {"seeds": SEEDS, "arms": ["real", "real+synthetic"], "preset": "cpu"}
    ds["feature_augment"] = {"feature_shape": [64, 4, 4], "image_shape": [1, 32, 32],
                             "segmentor": {"source": "seg", "test_dice_whole_lesion": 0.71},
                             "acgan": {"d_class_accuracy_generated": {"major": 0.9, "rare": 0.4}},
                             "timings_seconds": {"segmentor": 1.0}}
    ds["notes"] = ["features = bottleneck of a segmentation U-Net trained on the training split only"]
    atomic_write_json(tmp_path / "fa" / "feature_downstream.json", ds)
    h = build_report(tmp_path).read_text()
    js = json.loads((tmp_path / "report.json").read_text())
    assert '<section id="feature-downstream">' in h and '<section id="downstream">' not in h
    assert js["sources"]["feature"].endswith("feature_downstream.json")
    e = ds["summary"]["real+synthetic"]["recall/rare"]
    got = js["feature_downstream"]["recall/rare"]["real+synthetic"]
    assert (got["mean"], got["ci_low"], got["ci_high"], got["vs_real"]) == (e["mean"], e["ci_low"], e["ci_high"],
                                                                            "better")
    assert _row(h, "recall/rare", "real+synthetic") == ("good", "better")
    assert "test whole-lesion Dice 0.710" in h and "major 0.900, rare 0.400" in h
    assert any(v["class"] == "rare" and v["direction"] == "better" for v in js["feature_verdicts"])
    assert "70 images: major 50" in h  # the split of the feature experiment in "Data & method"
