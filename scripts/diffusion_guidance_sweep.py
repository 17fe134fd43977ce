"""Class following, within-class diversity and domain FD of a trained diffusion run against the sampling settings.

    python scripts/diffusion_guidance_sweep.py RUN_DIR CLASSIFIER_DIR 2:20 1:20 4:20 6:20 2:50

Each ``W:STEPS`` samples the run (``load_run``, EMA U-Net) with guidance scale ``W`` and ``STEPS`` sampling steps:
32 images per class with the noise seed and the real reference draw of ``scripts/train_all_real.py``'s checks, judged
by a classifier saved by ``medbalance train-task`` (e.g. the helper classifier that script caches under
``/tmp/mb_helpers/<key>/classifier``); the judge is ``scripts/_judge.py``. Guidance and steps are sampling settings:
nothing is retrained.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from _judge import Judge


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("classifier")
    ap.add_argument("settings", nargs="+", help="W:STEPS (guidance scale : sampling steps)")
    ap.add_argument("--per-class", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from medbalance.data.sources import load_dataset
    from medbalance.training.run import load_run

    settings = []
    for spec in args.settings:
        try:
            w, steps = spec.split(":")
            settings.append((float(w), int(steps)))
        except ValueError:
            sys.exit(f"error: setting {spec!r} is not W:STEPS (e.g. 4:20)")
    run = load_run(args.run_dir)
    if not hasattr(run.method.params, "guidance_scale"):
        sys.exit(f"error: model {run.config.model.name!r} has no guidance scale (not a diffusion model)")
    judge = Judge(args.classifier, load_dataset(run.config.data), args.per_class)
    for w, steps in settings:
        run.method.params.guidance_scale = w
        run.method.params.sample_steps = steps
        r = judge.score(judge.generate(run))
        print(json.dumps({"guidance": w, "steps": steps, "class_acc": r["class_acc"], "per_class": r["per_class"],
                          "within_class_std": r["within_class_std"], "fd_domain": round(r["fd_domain"], 2)}), flush=True)


if __name__ == "__main__":
    main()
