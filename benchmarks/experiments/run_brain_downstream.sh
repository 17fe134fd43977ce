#!/usr/bin/env bash
# The brain-tumour downstream experiment of docs/results.md: meningioma training images subsampled to 10 %,
# classification, 5 seeds, arms real / oversample / class-weight / real+synthetic (ACGAN trained on the split).
# Usage: benchmarks/experiments/run_brain_downstream.sh [OUT_DIR]   (run from the repository root)
set -euo pipefail
OUT=${1:-runs/brain_downstream}
DATA=${MEDBALANCE_SHARED_DATASETS:-../shared/datasets}/brain-tumor-mri/labels.csv
start=$(date +%s)
medbalance downstream "$DATA" "$OUT" \
  --config benchmarks/experiments/brain_tumor_acgan.yaml \
  --arms real,oversample,class-weight,real+synthetic \
  --seeds 5 --epochs 10 --image-size 64 --subsample meningioma=0.1
echo "total wall time: $(( $(date +%s) - start )) s"
