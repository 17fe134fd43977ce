"""Class following, within-class diversity and domain FD of a trained diffusion run against the sampling settings.

    python scripts/diffusion_guidance_sweep.py RUN_DIR CLASSIFIER_DIR 2:20 1:20 4:20 6:20 2:50

Each ``W:STEPS`` samples the run (``load_run``, EMA U-Net) with guidance scale ``W`` and ``STEPS`` sampling steps:
32 images per class with the noise seed and the real reference draw of ``scripts/train_all_real.py``'s checks, judged
by a classifier saved by ``medbalance train-task`` (e.g. the helper classifier that script caches under
``/tmp/mb_helpers/<key>/classifier``). Guidance and steps are sampling settings: nothing is retrained.
"""

from __future__ import annotations

import argparse
import json

import torch


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
    from medbalance.evaluation.fidelity import frechet_distance
    from medbalance.models.tasknets import load_task_model
    from medbalance.training.run import load_run
    from medbalance.training.task import predict_classifier

    run = load_run(args.run_dir)
    clf = load_task_model(args.classifier)[0].eval()
    ds = load_dataset(run.config.data)
    C, n = ds.num_classes, args.per_class
    labels = torch.arange(C).repeat_interleave(n)
    g = torch.Generator().manual_seed(1234)  # the real images of train_all_real.conditioning_check
    picks = []
    for c in range(C):
        of_c = torch.nonzero(ds.labels == c).flatten()
        of_c = of_c[torch.randperm(len(of_c), generator=g)]
        picks.append(of_c[torch.arange(n) % len(of_c)])
    src = torch.cat(picks)

    @torch.no_grad()
    def feats(x: torch.Tensor):
        return torch.cat([clf.features(x[i : i + 256]).float() for i in range(0, len(x), 256)]).numpy()

    f_real = feats(ds.images[src])
    for spec in args.settings:
        w, steps = spec.split(":")
        run.method.params.guidance_scale = float(w)
        run.method.params.sample_steps = int(steps)
        masks = ds.masks[src] if "mask" in run.method.needs else None
        with torch.no_grad():
            imgs = run.method.generate(labels, masks=masks, generator=torch.Generator().manual_seed(7), G=run.G)
        _, pred = predict_classifier(clf, imgs)
        std = float(torch.stack([imgs[labels == c].std(0).mean() for c in range(C)]).mean())
        per = [round(float((pred[labels == c] == c).float().mean()), 3) for c in range(C)]
        print(json.dumps({"guidance": float(w), "steps": int(steps), "class_acc": round(float((pred == labels).float().mean()), 3),
                          "per_class": per, "within_class_std": round(std, 4),
                          "fd_domain": round(frechet_distance(real=f_real, synthetic=feats(imgs)), 2)}), flush=True)


if __name__ == "__main__":
    main()
