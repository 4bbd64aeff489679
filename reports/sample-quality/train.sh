#!/usr/bin/env bash
# Trains the report's twelve models of one data set: four configs x three seeds, 10 epochs each,
# one torch thread per run, two runs side by side (LANES). Run from the repository root.
# Fashion-MNIST: ./reports/sample-quality/train.sh
# MNIST split:   DATASET=mnist DATA_DIR=runs/data/mnist-t10k-split PREFIX=mnist- VAL_SIZE=1000 ./reports/sample-quality/train.sh
set -euo pipefail
RUNS=${RUNS:-runs/sample-quality}
LANES=${LANES:-2}
EPOCHS=${EPOCHS:-10}
DATASET=${DATASET:-fashion-mnist}
PREFIX=${PREFIX:-}
extra=()
[ -n "${DATA_DIR:-}" ] && extra+=(--data-dir "$DATA_DIR")
[ -n "${VAL_SIZE:-}" ] && extra+=(--val-size "$VAL_SIZE")
jobs=()
for seed in 0 1 2; do
  for model in mlp-vae conv-vae beta-vae mlp-ae; do
    jobs+=("$model $seed")
  done
done
run() {
  local model=$1 seed=$2 name="$PREFIX$1-s$2"
  nice -n 19 .venv/bin/vae-train --config "configs/$model.yaml" --dataset "$DATASET" \
    --run-dir "$RUNS/$name" --seed "$seed" --epochs "$EPOCHS" --threads 1 \
    --iwae-samples 0 --tensorboard false --progress false "${extra[@]}" > "$RUNS/$name.log" 2>&1
}
mkdir -p "$RUNS"
for job in "${jobs[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$LANES" ]; do wait -n; done
  run $job &
done
wait
