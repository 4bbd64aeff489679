#!/usr/bin/env bash
# Trains the report's twelve Fashion-MNIST models: four configs x three seeds, 10 epochs each, one
# torch thread per run, one run at a time (LANES), under nice. The learned priors are fitted
# afterwards, by commands.sh's priors stage, so the training runs skip them.
set -euo pipefail
RUNS=${RUNS:-runs/sample-quality}
LANES=${LANES:-1}
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
  nice -n 10 .venv/bin/vae-train --config "configs/$model.yaml" --dataset "$DATASET" \
    --run-dir "$RUNS/$name" --seed "$seed" --epochs "$EPOCHS" --threads 1 \
    --iwae-samples 0 --tensorboard false --progress false \
    --prior-components 0 --prior-two-stage false "${extra[@]}" > "$RUNS/$name.log" 2>&1
}
mkdir -p "$RUNS"
for job in "${jobs[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$LANES" ]; do wait -n; done
  run $job &
done
wait
