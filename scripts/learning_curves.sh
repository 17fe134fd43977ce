#!/usr/bin/env bash
# Learning curves for issue 19 (docs/models/diffusion.md, "Measured"): brain-tumor-mri at 64 px, `cpu` presets, one
# torch thread, every checkpoint kept (one every 500 steps), judged by scripts/learning_curve.py with one helper
# classifier (train_all_real.py's: `medbalance train-task`, 3 epochs, batch 32, 15 % stratified validation, seed 0).
#
#   bash scripts/learning_curves.sh [OUT]          # OUT default /tmp/mb_curves; about 40 minutes on this 2-core CPU
#
# 1. the helper classifier (a minute or two);
# 2. latent diffusion, `cpu` preset, 4500 steps = 500 autoencoder + 4000 latent U-Net steps (the docs' run: 16.2 min);
# 3. conditional DCGAN, `cpu` preset, 4000 steps: about the same minutes (the benchmark's 2000 steps took 495 s, i.e.
#    8-10 min on this CPU); the curves are compared at the minutes both runs reached, so overshooting costs nothing;
# 4. scripts/learning_curve.py on both: OUT/curves/{latent-diffusion,dcgan}.{md,json} and OUT/curves/summary.md.
# Run settings other than checkpoint_every / keep_last / sample_every / tensorboard are those of the docs' run
# (scripts/train_all_real.py --steps 4500: preset batch 16, seed 0, precision auto, log every 10 steps).
# Rerunning continues: a finished run or classifier is kept, an interrupted run is resumed (--resume).
set -euo pipefail

: "${MEDBALANCE_SHARED_DATASETS:=/work/shared/datasets}"
DATA="$MEDBALANCE_SHARED_DATASETS/brain-tumor-mri/labels.csv"
OUT="${1:-/tmp/mb_curves}"
export OMP_NUM_THREADS=1 MEDBALANCE_QUIET=1
cd "$(dirname "$0")/.."
[ -f "$DATA" ] || { echo "error: $DATA not found (set MEDBALANCE_SHARED_DATASETS)" >&2; exit 1; }
mkdir -p "$OUT"

COMMON=(--data "$DATA" --image-size 64 --preset cpu
        --set train.threads=1 --set train.checkpoint_every=500 --set train.keep_last=100
        --set train.sample_every=500 --set train.tensorboard=false)

# train MODEL STEPS RUN_NAME [more options]: fresh, resumed when interrupted, skipped when finished
train_run() {
    local model=$1 steps=$2 run="$OUT/$3"; shift 3
    local latest="$run/checkpoints/latest" final
    final=$(printf 'step_%06d' "$steps")
    if [ -f "$latest" ] && [ "$(cat "$latest")" = "$final" ]; then
        echo "$run: finished ($final), kept"
        return
    fi
    local resume=()
    [ -f "$latest" ] && resume=(--resume)
    echo "[$(date +%T)] training $model for $steps steps -> $run ${resume[*]}"
    medbalance train --model "$model" --steps "$steps" --out "$run" "${COMMON[@]}" "$@" "${resume[@]}"
}

if [ ! -f "$OUT/classifier/model.safetensors" ]; then
    echo "[$(date +%T)] helper classifier -> $OUT/classifier"
    medbalance train-task classification "$DATA" "$OUT/classifier" --image-size 64 --epochs 3 --batch-size 32 \
        --val-fraction 0.15 --seed 0 --overwrite
fi
train_run latent-diffusion 4500 latent-diffusion
train_run dcgan 4000 dcgan --set model.params.conditional=true

echo "[$(date +%T)] learning curves -> $OUT/curves"
python scripts/learning_curve.py "$OUT/latent-diffusion" "$OUT/dcgan" --classifier "$OUT/classifier" \
    --out "$OUT/curves" --threads 1
echo "[$(date +%T)] done"
