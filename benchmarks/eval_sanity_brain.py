"""Sanity check of the evaluation metrics on the brain-tumour MRI data (real data, no generator).

    python benchmarks/eval_sanity_brain.py [--csv ../shared/datasets/brain-tumor-mri/labels.csv]
        [--image-size 64] [--domain-epochs 3] [--out benchmarks/results/eval_sanity_brain.json]

The data are split (stratified, seed 0) into 60 % "generator training" images, 20 % candidate
"synthetic" images and 20 % held-out images. The candidates are evaluated against the training
images as they are (real vs real: should look perfect and private) and deliberately corrupted:

- ``real``: unseen real images (the ideal synthetic set)
- ``blurred``: the same images, Gaussian blur sigma 1.5 px
- ``noised``: the same images + Gaussian noise (sigma 0.2 on the [-1, 1] scale)
- ``collapsed``: 20 images repeated (mode collapse)
- ``copied``: copies of training images (memorisation)

with the ``pixels`` extractor and a ``domain`` encoder (the downstream classifier trained for a
few epochs on the training images), and prints a Markdown table (the one in docs/metrics.md).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

os.environ.setdefault("MEDBALANCE_QUIET", "1")


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = int(3 * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = torch.nn.functional.pad(x, (r, r, r, r), mode="reflect")
    x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def main() -> None:
    ap = argparse.ArgumentParser()
    shared = Path(os.environ.get("MEDBALANCE_SHARED_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    ap.add_argument("--csv", default=str(shared / "brain-tumor-mri" / "labels.csv"))
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--domain-epochs", type=int, default=3)
    ap.add_argument("--no-domain", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/eval_sanity_brain.json")
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))

    from dataclasses import replace

    from medbalance.data.sources import load_dataset
    from medbalance.data.splits import stratified_split
    from medbalance.evaluation.evaluate import evaluate_datasets
    from medbalance.utils.io import atomic_write_json

    t0 = time.perf_counter()
    ds = load_dataset(args.csv, image_size=args.image_size)
    sp = stratified_split(ds, (0.6, 0.2, 0.2), seed=0)
    train, cand, hold = ds.subset(sp["train"]), ds.subset(sp["val"]), ds.subset(sp["test"])
    print(f"loaded {len(ds)} images at {args.image_size}px in {time.perf_counter() - t0:.0f}s: "
          f"train {len(train)}, candidates {len(cand)}, held-out {len(hold)}", file=sys.stderr)
    g = torch.Generator().manual_seed(0)
    n = len(cand)

    def variant(name: str, images: torch.Tensor, labels: torch.Tensor | None = None, masks=None):
        lab = cand.labels if labels is None else labels
        return replace(cand, images=images, labels=lab, ids=[f"{name}-{i}" for i in range(len(images))],
                       masks=masks, synthetic=None, groups=None)

    pick = torch.randperm(len(train), generator=g)[:n]
    rep = torch.arange(n) % 20
    sets = {
        "real (unseen)": variant("real", cand.images, masks=cand.masks),
        "blurred s=1.5": variant("blur", gaussian_blur(cand.images, 1.5).clamp(-1, 1), masks=cand.masks),
        "noised s=0.2": variant("noise", (cand.images + 0.2 * torch.randn(cand.images.shape, generator=g)).clamp(-1, 1), masks=cand.masks),
        "collapsed (20 imgs)": variant("coll", cand.images[rep], cand.labels[rep], None if cand.masks is None else cand.masks[rep]),
        "copied from train": variant("copy", train.images[pick], train.labels[pick], None if train.masks is None else train.masks[pick]),
    }
    extractors = ["pixels"] + ([] if args.no_domain else ["domain"])
    results: dict = {"n_train": len(train), "n_candidates": n, "n_holdout": len(hold), "image_size": args.image_size, "runs": {}}
    for ext in extractors:
        for name, syn in sets.items():
            t = time.perf_counter()
            res = evaluate_datasets(
                real=train, synthetic=syn, extractor=ext, privacy_train=train, privacy_holdout=hold,
                train_domain_encoder=(ext == "domain"), domain_encoder_epochs=args.domain_epochs,
                kid_subset_size=500, kid_subsets=50, ms_ssim_pairs=200, cache_dir=args.cache_dir,
            )
            res["wall_seconds"] = round(time.perf_counter() - t, 1)
            results["runs"][f"{ext} | {name}"] = res
            print(f"{ext} | {name}: {res['wall_seconds']} s", file=sys.stderr)

    cols = ["FD", "KID", "prec", "recall", "density", "cover", "MS-SSIM syn/real", "hist W1", "spectrum", "DCR share px",
            "memo px", "dups", "MIA AUC px", "DCR share feat", "memo feat"]
    lines = ["| extractor | synthetic set | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 2)]
    for key, r in results["runs"].items():
        ext, name = key.split(" | ")
        f, p = r["fidelity"]["overall"], r["privacy"]
        vals = [f["fd"], f["kid"], f["precision"], f["recall"], f["density"], f["coverage"], r["diversity"]["ratio"],
                r["image_stats"]["histogram_w1"][0], r["image_stats"]["spectrum_log10_distance"],
                p["pixels"]["dcr_share"], p["pixels"]["memorization_rate"], p["pixels"]["exact_duplicates"],
                p["pixels"]["mia_distance_auc"], p["features"]["dcr_share"], p["features"]["memorization_rate"]]
        lines.append(f"| {ext} ({r['extractor']['dim']}-d) | {name} | " + " | ".join(
            f"{v:.4g}" if isinstance(v, float) else str(v) for v in vals) + " |")
    table = "\n".join(lines)
    results["table_markdown"] = table
    results["total_seconds"] = round(time.perf_counter() - t0, 1)
    print(table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, results)
    print(f"\nwritten {args.out} ({results['total_seconds']} s total)", file=sys.stderr)


if __name__ == "__main__":
    main()
