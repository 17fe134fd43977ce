"""Feature-level augmentation (Mehra et al.) on the real shared datasets, CPU preset.

Runs, exactly as ``docs/results.md`` reports them:

* brain-tumor-mri (manifest, 3 tumour types, segmentation from the masks), 64 x 64, meningioma training slices
  subsampled to 10 %, split 0.6/0.2/0.2 (slice-level: this copy has no patient ids);
* BraTS 2015 sample (6 patients, NIfTI source, Flair + T1c, label OTMultiClass, brain mask), 64 x 64,
  lesion vs no_lesion, patient-grouped split 0.6/0.2/0.2 (4/1/1 patients).

Usage::

    python benchmarks/feature_augment_real.py [OUT_DIR] [--only brain|brats] [--seeds 5]

Writes OUT_DIR/<name>/ (segmentor/, features/, acgan/, feature_downstream.json) and prints a markdown table of
per-class accuracy (recall) per arm, mean over seeds with 95 % bootstrap CIs, and the wall time of each run.
Skips a dataset cleanly when ../shared/datasets is absent.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDBALANCE_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


def run(name: str, out_root: Path, seeds: int) -> dict | None:
    from medbalance.data import load_dataset
    from medbalance.data.config import DataConfig, NiftiConfig
    from medbalance.experiments.feature_downstream import FeatureAugmentConfig, run_feature_augment

    if name == "brain":
        path = SHARED / "brain-tumor-mri" / "labels.csv"
        if not path.exists():
            print(f"skip {name}: {path} not found")
            return None
        dcfg = DataConfig(path=str(path), image_size=64)
        cfg = FeatureAugmentConfig(preset="cpu", seeds=list(range(seeds)), subsample={"meningioma": 0.1}, threads=1)
    else:
        path = SHARED / "brats2015-sample"
        if not path.exists():
            print(f"skip {name}: {path} not found")
            return None
        dcfg = DataConfig(
            path=str(path), source="nifti", image_size=64,
            nifti=NiftiConfig(modalities=["Flair_*", "T1c_*"], label_pattern="OTMultiClass*", brain_mask_pattern="brainmask*"),
        )
        cfg = FeatureAugmentConfig(preset="cpu", seeds=list(range(seeds)), threads=1)
    t0 = time.perf_counter()
    ds = load_dataset(dcfg)
    rep = run_feature_augment(ds, cfg, out_root / name)
    rep["_wall_seconds_including_loading"] = round(time.perf_counter() - t0, 1)
    return rep


def table(name: str, rep: dict) -> str:
    summ = rep["summary"]
    arms = [a for a in summ if not a.startswith("_")]
    lines = [f"### {name}", "", "| metric | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for m in ["balanced_accuracy", "macro_f1"] + [f"recall/{c}" for c in rep["class_names"]]:
        cells = []
        for a in arms:
            e = summ[a].get(m)
            if e is None:
                cells.append("")
                continue
            c = f"{e['mean']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]"
            if "vs_real_seeds" in e:
                c += f" (p={e['vs_real_seeds']['p']:.3g})"
            cells.append(c)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    fa = rep["feature_augment"]
    ac = fa["acgan"]
    lines += [
        "",
        f"- split {rep['split']} {rep['split_class_counts']['train']} (train); feature shape {fa['feature_shape']}",
        f"- segmentor test Dice (whole lesion) {fa['segmentor'].get('test_dice_whole_lesion')}",
        f"- D class accuracy: generated {ac['d_class_accuracy_generated']}, real {ac['d_class_accuracy_real']}",
        f"- real+synthetic training set: {rep['arm_training_sets'].get('real+synthetic')}",
        f"- timings {fa['timings_seconds']}, total with loading {rep['_wall_seconds_including_loading']} s",
        f"- warnings: {rep['warnings']}",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default="/tmp/medbalance-feature-augment")
    ap.add_argument("--only", choices=["brain", "brats"], default=None)
    ap.add_argument("--seeds", type=int, default=5)
    a = ap.parse_args()
    out = Path(a.out)
    for name in ([a.only] if a.only else ["brain", "brats"]):
        rep = run(name, out, a.seeds)
        if rep is not None:
            print(table(name, rep), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
