"""scripts/learning_curve.py: minutes from losses.csv, the target read-out and a tiny end-to-end curve."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
import learning_curve as lc  # noqa: E402 - scripts/ is not a package


def test_training_minutes_sums_the_logged_windows(tmp_path):
    csv = tmp_path / "losses.csv"
    csv.write_text("step,G,images_per_s\n10,1.0,20.0\n20,0.5,40.0\n30,0.4,0.0\n40,0.3,40.0\n")
    m = lc.training_minutes(csv, batch_size=4)
    # 10 steps x 4 images at 20 img/s = 2 s; then 40 images at 40 img/s = 1 s; a row with 0 img/s stops the clock
    assert m == pytest.approx({10: 2 / 60, 20: 3 / 60})


def rows(values, key="within_class_std_ratio"):
    return [{"step": i, "minutes": m, key: v} for i, (m, v) in enumerate(values)]


def test_reach_first_held_and_extrapolation():
    # reached at 2 min, below again at 4, held from 8 on
    r = lc.reach(rows([(1, 0.5), (2, 0.85), (4, 0.7), (8, 0.9), (16, 0.95)]), "within_class_std_ratio", 0.8)
    assert (r["reached"], r["first_minutes"], r["held_from_minutes"]) == (True, 2, 8)
    assert "extrapolation" not in r
    # never reached, rising as 0.5 + 0.1 ln(m): the line in log-minutes reaches 0.9 at e^4 minutes
    pts = [(m, 0.5 + 0.1 * math.log(m)) for m in (1, 2, 4, 8)]
    r = lc.reach(rows(pts), "within_class_std_ratio", 0.9)
    assert not r["reached"] and r["held_from_minutes"] is None
    assert r["extrapolation"]["rising"] and r["extrapolation"]["minutes"] == pytest.approx(math.exp(4), rel=1e-6)
    assert "EXTRAPOLATION" in lc.extrapolation_text(r["extrapolation"])
    # reached early (noise has a high std), below at the end and falling: no extrapolation of a falling curve
    r = lc.reach(rows([(1, 2.0), (2, 0.7), (4, 0.6), (8, 0.5)]), "within_class_std_ratio", 0.8)
    assert r["reached"] and r["held_from_minutes"] is None and not r["extrapolation"]["rising"]


@pytest.mark.slow
def test_curve_of_a_tiny_dcgan_run(tmp_path):
    from medbalance.data.sources import load_dataset
    from medbalance.data.splits import split_train_val
    from medbalance.training.config import RunConfig
    from medbalance.training.engine import train
    from medbalance.training.task import TaskConfig, train_task_model

    data = {"path": "phantom", "phantom": {"n": 48, "size": 32, "seed": 1, "imbalance": [1, 1, 1]}}
    run = tmp_path / "run"
    cfg = {"out_dir": str(run), "data": data, "model": {"name": "dcgan", "preset": "cpu", "params": {"conditional": True}},
           "train": {"steps": 4, "batch_size": 8, "checkpoint_every": 2, "keep_last": 10, "sample_every": 4,
                     "log_every": 1, "tensorboard": False}}
    train(RunConfig.from_dict(cfg))
    ds = load_dataset(RunConfig.from_dict(cfg).data)
    tr, va = split_train_val(ds, 0.25, 0)
    train_task_model(tr, va, TaskConfig(task="classification", epochs=1, batch_size=16, progress=False),
                     out_dir=tmp_path / "clf")
    res = lc.curve(run, {}, str(tmp_path / "clf"), per_class=4)
    assert [r["step"] for r in res["rows"]] == [2, 4] and res["note"] is None
    m = [r["minutes"] for r in res["rows"]]
    assert 0 < m[0] < m[1]
    for r in res["rows"]:
        assert len(r["per_class"]) == 3 and r["class_acc"] == pytest.approx(sum(r["per_class"]) / 3, abs=1e-3)
        assert r["within_class_std"] >= 0 and r["fd_domain"] >= 0 and 0 <= r["near_copies"] <= 12
    again = lc.curve(run, {}, str(tmp_path / "clf"), per_class=4)  # fixed labels and seeds: the same scores
    assert [{k: v for k, v in r.items() if k != "eval_seconds"} for r in again["rows"]] == \
        [{k: v for k, v in r.items() if k != "eval_seconds"} for r in res["rows"]]
    json.dumps(res)  # the JSON file's content
    assert lc.markdown(res).count("\n| ") == 3  # header + one row per checkpoint
