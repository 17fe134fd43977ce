"""Learning curves of trained generator runs: every kept checkpoint judged against the minutes of training.

    python scripts/learning_curve.py RUN_DIR [RUN_DIR ...] --classifier CLASSIFIER_DIR [--out DIR]

For each run folder (any registered generator: train it with ``train.keep_last`` at least the number of checkpoints
and e.g. ``train.checkpoint_every: 500`` so every checkpoint is kept), every ``checkpoints/step_*`` folder is loaded
(``load_run(run_dir, checkpoint=folder)``, the EMA generator when the run keeps one) and judged with the fixed judge of
``scripts/_judge.py`` (the labels, noise seed and real reference draw of ``diffusion_guidance_sweep.py`` and
``train_all_real.py``): class following of the classifier CLASSIFIER_DIR (saved by ``medbalance train-task``),
within-class pixel std fake / real, domain FD in that classifier's penultimate features, and the near-copy share of
the judged fakes against the run's training split.

Minutes of training at a step come from the run's ``losses.csv``: each logged row covers the steps since the previous
row at ``images_per_s`` images per second of ``train.batch_size`` images per step, so the sum of
``(step - previous step) * batch_size / images_per_s`` is the wall time of the training loop up to that row (sample
grids and checkpoint writes included, setup and data loading before the first step not). Every checkpoint step is a
logged row.

Written per run: ``learning_curve.json`` and ``learning_curve.md`` in the run folder, or ``<run name>.json`` / ``.md``
in ``--out``. Printed: the table and, per target of issue 19 (class following >= 0.9, within-class std >= 0.8 x the
real one, no near-copy), the first minute it is reached or "not reached in N minutes", with an extrapolation (a
straight line through the last 3 checkpoints in log-minutes) when the curve is still rising. With several runs, their
domain FDs at the largest number of minutes every run reached are compared.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _judge import Judge

TARGET_CLASS_ACC = 0.9
TARGET_STD_RATIO = 0.8
EXTRAPOLATION_POINTS = 3
NEAR_COPY_ALPHA = 0.5  # the memorisation report's threshold


def training_minutes(losses_csv: Path, batch_size: int) -> dict[int, float]:
    """Minutes of training loop wall time at every logged step of ``losses.csv`` (module docstring)."""
    from medbalance.training.logging import read_losses_csv

    out: dict[int, float] = {}
    seconds, prev = 0.0, 0
    for row in read_losses_csv(losses_csv):
        step, ips = int(row["step"]), float(row["images_per_s"])
        if step <= prev or not ips > 0:  # a row that cannot be timed leaves the later ones unknown
            break
        seconds += (step - prev) * batch_size / ips
        out[step] = seconds / 60.0
        prev = step
    return out


def apply_sampling(run: Any, guidance: float | None, sample_steps: int | None) -> dict[str, Any]:
    """Set the diffusion sampling settings given on the command line; returns those the run samples with."""
    p = run.method.params
    if guidance is not None and hasattr(p, "guidance_scale"):
        p.guidance_scale = guidance
    if sample_steps is not None and hasattr(p, "sample_steps"):
        p.sample_steps = sample_steps
    return {k: getattr(p, k) for k in ("guidance_scale", "sample_steps", "objective") if hasattr(p, k)}


def curve(run_dir: Path, judges: dict[str, Judge], classifier: str, per_class: int,
          guidance: float | None = None, sample_steps: int | None = None) -> dict[str, Any]:
    """Judge every kept checkpoint of ``run_dir``; ``judges`` caches one judge per data config (loaded once)."""
    from medbalance.data.sources import load_dataset
    from medbalance.errors import CheckpointError
    from medbalance.training import checkpoint as ckpt
    from medbalance.training.config import read_saved_run_config
    from medbalance.training.run import load_run

    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError("not a medbalance run folder (config.yaml missing)", path=run_dir)
    cfg = read_saved_run_config(run_dir / "config.yaml")
    folders = ckpt.list_checkpoints(run_dir / "checkpoints")
    if not folders:
        raise CheckpointError("no step_* checkpoint folders", path=run_dir / "checkpoints")
    tc = cfg.train
    total = tc.steps
    expected = None if total is None else len({*range(tc.checkpoint_every, total + 1, tc.checkpoint_every), total})
    note = None
    if expected is not None and len(folders) < expected:
        note = (f"{len(folders)} of {expected} checkpoints kept (train.keep_last={tc.keep_last}): the earlier ones were "
                "pruned; train with train.keep_last >= the number of checkpoints for a full curve")
        print(f"  note: {note}", flush=True)
    minutes = training_minutes(run_dir / "losses.csv", int(tc.batch_size)) if (run_dir / "losses.csv").is_file() else {}
    key = json.dumps(cfg.data.model_dump(mode="json"), sort_keys=True)
    if key not in judges:
        t0 = time.perf_counter()
        judges[key] = Judge(classifier, load_dataset(cfg.data), per_class)
        print(f"  judge ready: data loaded and real reference scored in {time.perf_counter() - t0:.0f} s", flush=True)
    judge = judges[key]
    rows: list[dict[str, Any]] = []
    sampling: dict[str, Any] = {}
    for folder in folders:
        t0 = time.perf_counter()
        run = load_run(run_dir, checkpoint=folder)
        sampling = apply_sampling(run, guidance, sample_steps)
        imgs = judge.generate(run)
        r = judge.score(imgs)
        if "label" not in run.method.needs:  # a model that takes no class: class following does not apply
            r["class_acc"] = r["per_class"] = None
        r.update(near_copies(judge, imgs, run.train_ids))
        m = minutes.get(run.step)
        row = {"step": run.step, "minutes": None if m is None else round(m, 4), **r,
               "eval_seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(f"  step {row['step']:>6}  {fmt(row['minutes'], '.2f')} min  class following {fmt(row['class_acc'], '.3f')} "
              f"{row['per_class']}  within-class std {row['within_class_std']} ({fmt(row['within_class_std_ratio'], '.2f')} x real)  "
              f"domain FD {row['fd_domain']:.1f}  near-copies {row['near_copies']}/{len(judge.labels)}  "
              f"({row['eval_seconds']} s)", flush=True)
    from medbalance.models.registry import resolve_params

    params = json.loads(json.dumps(dict(cfg.model.params), default=str))
    preset = json.loads(json.dumps(resolve_params(cfg.model.name, cfg.model.preset, {}).model_dump(mode="json"), default=str))
    res = {
        "run": str(run_dir), "model": cfg.model.name, "preset": cfg.model.preset, "params": params,
        "params_over_preset": {k: v for k, v in params.items() if preset.get(k) != v},
        "batch_size": tc.batch_size, "steps": total, "checkpoint_every": tc.checkpoint_every,
        "sampling": sampling, **judge.reference(), "n_judged": len(judge.labels),
        "minutes_source": "losses.csv: sum of (step - previous step) * batch_size / images_per_s",
        "note": note, "rows": rows,
    }
    res["targets"] = targets(rows)
    return res


def near_copies(judge: Judge, imgs: torch.Tensor, train_ids: list[str]) -> dict[str, Any]:
    """Carlini et al.'s test (:func:`~medbalance.evaluation.diffusion_memorization.nn_distance_ratio`, ratio < 0.5,
    50 neighbours, as ``memorization.json``) of the judged fakes against the run's training images (all images of the
    data when the run recorded no split), and exact duplicates. ``memorization.json`` runs it on its own draw (seed 0);
    here the judged fakes are reused, so a checkpoint is sampled once."""
    from medbalance.evaluation.diffusion_memorization import nn_distance_ratio
    from medbalance.evaluation.privacy import DEFAULT_DUP_TOL, exact_duplicates

    ds = judge.ds
    index = {k: i for i, k in enumerate(ds.ids)}
    idx = [index[k] for k in train_ids if k in index] if train_ids else list(range(len(ds)))
    train = ds.images[idx]
    ratio, _, nearest = nn_distance_ratio(imgs, train)
    near = ratio < NEAR_COPY_ALPHA
    return {"near_copy_share": round(float(near.mean()), 4), "near_copies": int(near.sum()),
            "nn_ratio_median": round(float(np.median(ratio)), 3),
            "exact_duplicates": int(exact_duplicates(train, imgs, nearest, tol=DEFAULT_DUP_TOL).sum())}


def fmt(v: Any, spec: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def extrapolate(points: list[tuple[float, float]], target: float) -> dict[str, Any]:
    """Minutes at which a straight line through ``points`` (minutes, value) in log-minutes reaches ``target``."""
    t = np.log([p[0] for p in points])
    y = np.array([p[1] for p in points], dtype=float)
    slope, icpt = np.polyfit(t, y, 1)
    fit = {"method": f"linear fit of the value on ln(minutes) over the last {len(points)} checkpoints",
           "points": [[round(a, 3), b] for a, b in points], "slope_per_ln_minute": round(float(slope), 4)}
    if not slope > 1e-9:
        return {**fit, "rising": False, "minutes": None}
    return {**fit, "rising": True, "minutes": float(math.exp(min((target - icpt) / slope, 700.0)))}


def reach(rows: list[dict[str, Any]], key: str, target: float) -> dict[str, Any]:
    """When ``key`` first is >= ``target``, whether it stays there to the last checkpoint, and, when the last
    checkpoint is below the target, the extrapolated minutes (:func:`extrapolate`) over the last checkpoints."""
    pts = [(r["minutes"], r[key]) for r in rows if r["minutes"] is not None and r.get(key) is not None and not math.isnan(r[key])]
    if not pts:
        return {"target": target, "reached": None, "why": "no timed checkpoint with this measure"}
    first = next(((m, v) for m, v in pts if v >= target), None)
    below = [i for i, (_, v) in enumerate(pts) if v < target]
    out: dict[str, Any] = {
        "target": target, "reached": first is not None, "trained_minutes": pts[-1][0], "last_value": pts[-1][1],
        "best": max(v for _, v in pts), "first_minutes": None if first is None else first[0],
        "first_value": None if first is None else first[1],
        # from this minute on every checkpoint meets the target (None: the last one does not)
        "held_from_minutes": None if below and below[-1] == len(pts) - 1 else pts[below[-1] + 1 if below else 0][0],
    }
    timed = [p for p in pts if p[0] > 0]
    if (pts[-1][1] < target and len(timed) >= EXTRAPOLATION_POINTS
            and len({p[0] for p in timed[-EXTRAPOLATION_POINTS:]}) > 1):
        out["extrapolation"] = extrapolate(timed[-EXTRAPOLATION_POINTS:], target)
    return out


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 19's targets over the checkpoints (class following, within-class std, both at once, no near-copy)."""
    t: dict[str, Any] = {}
    if any(r["class_acc"] is not None for r in rows):
        t["class_following"] = reach(rows, "class_acc", TARGET_CLASS_ACC)
        both = [r for r in rows if r["minutes"] is not None and r["class_acc"] is not None
                and r["class_acc"] >= TARGET_CLASS_ACC and r["within_class_std_ratio"] >= TARGET_STD_RATIO]
        t["both"] = {"first_step": both[0]["step"] if both else None, "first_minutes": both[0]["minutes"] if both else None}
    t["within_class_std_ratio"] = reach(rows, "within_class_std_ratio", TARGET_STD_RATIO)
    copies = [r for r in rows if r.get("near_copies", 0) > 0 or r.get("exact_duplicates", 0) > 0]
    t["no_near_copy"] = {"met_at_every_checkpoint": not copies,
                         "checkpoints_with_copies": [[r["step"], r["minutes"], r["near_copies"], r["exact_duplicates"]]
                                                     for r in copies]}
    return t


def extrapolation_text(ex: dict[str, Any] | None) -> str:
    if ex is None:
        return "too few checkpoints to extrapolate"
    if not ex["rising"]:
        return (f"not rising over the last {len(ex['points'])} checkpoints ({ex['slope_per_ln_minute']} per ln-minute): "
                "no extrapolation")
    mins = ex["minutes"]
    return (f"EXTRAPOLATION (a straight line in log-minutes through the last {len(ex['points'])} checkpoints, "
            f"{ex['slope_per_ln_minute']} per ln-minute): about "
            + (f"{mins:.0f} minutes" if mins < 1e5 else "more than 100000 minutes"))


def target_lines(res: dict[str, Any]) -> list[str]:
    names = {"class_following": f"class following >= {TARGET_CLASS_ACC}",
             "within_class_std_ratio": f"within-class std >= {TARGET_STD_RATIO} x real"}
    lines = []
    for key, label in names.items():
        t = res["targets"].get(key)
        if t is None:
            lines.append(f"{label}: not measured (the model takes no class)")
        elif t["reached"] is None:
            lines.append(f"{label}: {t['why']}")
        elif t["held_from_minutes"] is not None:
            s = f"{label}: reached at {t['first_minutes']:.2f} minutes ({t['first_value']})"
            if t["held_from_minutes"] != t["first_minutes"]:
                s += f", below it again in between; met at every checkpoint from {t['held_from_minutes']:.2f} minutes"
            else:
                s += ", and at every later checkpoint"
            lines.append(s + f" (last, {t['trained_minutes']:.2f} minutes: {t['last_value']})")
        elif t["reached"]:
            lines.append(f"{label}: reached at {t['first_minutes']:.2f} minutes ({t['first_value']}) but not at the last "
                         f"checkpoint ({t['trained_minutes']:.2f} minutes: {t['last_value']}); "
                         + extrapolation_text(t.get("extrapolation")))
        else:
            lines.append(f"{label}: not reached in {t['trained_minutes']:.2f} minutes (best {t['best']}, last "
                         f"{t['last_value']}); " + extrapolation_text(t.get("extrapolation")))
    both = res["targets"].get("both")
    if both is not None:
        lines.append("class following and within-class std at the same checkpoint: "
                     + ("at no checkpoint" if both["first_step"] is None
                        else f"first at step {both['first_step']} ({both['first_minutes']:.2f} minutes)"))
    nc = res["targets"]["no_near_copy"]
    if nc["met_at_every_checkpoint"]:
        lines.append(f"no near-copy (NN ratio < 0.5) or exact duplicate: met at every checkpoint ({res['n_judged']} fakes each)")
    else:
        first = nc["checkpoints_with_copies"][0]
        lines.append(f"no near-copy: NOT met at {len(nc['checkpoints_with_copies'])} checkpoints, first at step {first[0]} "
                     f"({fmt(first[1], '.1f')} min: {first[2]} near-copies, {first[3]} exact duplicates)")
    return lines


def markdown(res: dict[str, Any]) -> str:
    C = res["class_names"]
    samp = ", ".join(f"{k} {v}" for k, v in res["sampling"].items())
    head = [
        f"# Learning curve: {res['run']}",
        "",
        f"Model `{res['model']}` preset `{res['preset']}`, params over the preset {json.dumps(res['params_over_preset'])}, "
        f"batch {res['batch_size']}, "
        f"{res['steps']} steps, a checkpoint every {res['checkpoint_every']}" + (f"; sampling: {samp}" if samp else "") + ".",
        (f"Judge: classifier `{res['classifier']}`, {res['per_class']} fakes per class ({', '.join(C)}); within-class "
         f"std of the real reference images {res['within_class_std_real']}; domain FD real vs another real draw "
         f"{res['fd_domain_real_ref']} (the floor). Minutes: {res['minutes_source']}."),
    ]
    if res["note"]:
        head.append(f"Note: {res['note']}.")
    table = ["", ("| step | minutes | class following (per class) | within-class std (x real) | domain FD | near-copies "
                  "(median NN ratio) | exact duplicates |"), "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        cf = "n/a" if r["class_acc"] is None else f"{r['class_acc']:.3f} ({' / '.join(f'{x:.2f}' for x in r['per_class'])})"
        table.append(f"| {r['step']} | {fmt(r['minutes'], '.2f')} | {cf} | {r['within_class_std']} ({fmt(r['within_class_std_ratio'], '.2f')}) "
                     f"| {r['fd_domain']:.1f} | {r['near_copies']}/{res['n_judged']} ({r['nn_ratio_median']}) "
                     f"| {r['exact_duplicates']} |")
    return "\n".join(head + table + ["", "Targets (issue 19):", ""] + [f"- {x}" for x in target_lines(res)]) + "\n"


def fd_at_common_minutes(results: list[dict[str, Any]]) -> list[str]:
    """Domain FD of every run at its last checkpoint within the largest number of minutes all runs reached."""
    lasts = [max((r["minutes"] for r in res["rows"] if r["minutes"] is not None), default=None) for res in results]
    if any(m is None for m in lasts):
        return ["domain FD at equal minutes: not compared (a run has no timed checkpoint)"]
    common = min(lasts)
    lines = [f"domain FD at equal minutes (the last checkpoint within {common:.2f} minutes, reached by every run):"]
    for res in results:
        r = [x for x in res["rows"] if x["minutes"] is not None and x["minutes"] <= common + 1e-9][-1]
        lines.append(f"  {res['run']} ({res['model']}): {r['fd_domain']:.1f} at step {r['step']} ({r['minutes']:.2f} min)")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders (checkpoints kept: train.keep_last large)")
    ap.add_argument("--classifier", required=True, help="classifier folder saved by `medbalance train-task classification`")
    ap.add_argument("--out", default=None, help="folder for <run name>.json/.md and summary.md (default: each run folder)")
    ap.add_argument("--per-class", type=int, default=32, help="fakes per class (32: the judge of train_all_real.py)")
    ap.add_argument("--guidance", type=float, default=None, help="diffusion runs: guidance scale (default: the run's)")
    ap.add_argument("--sample-steps", type=int, default=None, help="diffusion runs: sampling steps (default: the run's)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("MEDBALANCE_QUIET", "1")
    torch.set_num_threads(args.threads)
    from medbalance.errors import MedbalanceError
    from medbalance.utils.io import atomic_write_json, atomic_write_text

    out = Path(args.out) if args.out else None
    names = [Path(r).resolve().name for r in args.runs]
    judges: dict[str, Judge] = {}
    results, texts = [], []
    for i, run_dir in enumerate(args.runs):
        print(f"{run_dir}:", flush=True)
        try:
            res = curve(Path(run_dir), judges, args.classifier, args.per_class, args.guidance, args.sample_steps)
        except MedbalanceError as e:
            sys.exit(f"error: {e}")
        name = names[i] if names.count(names[i]) == 1 else f"{names[i]}-{i}"
        base = out / name if out else Path(run_dir) / "learning_curve"
        text = markdown(res)
        md, js = base.parent / f"{base.name}.md", base.parent / f"{base.name}.json"
        atomic_write_json(js, res)
        atomic_write_text(md, text)
        print("\n".join(target_lines(res)) + f"\n  -> {md}, {js}", flush=True)
        results.append(res)
        texts.append(text)
    if len(results) > 1:
        cmp = fd_at_common_minutes(results)
        print("\n".join(cmp), flush=True)
        if out:
            atomic_write_text(out / "summary.md", "\n".join(texts) + "\n" + "\n".join(cmp) + "\n")


if __name__ == "__main__":
    main()
