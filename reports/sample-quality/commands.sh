#!/usr/bin/env bash
# Every command behind reports/sample-quality/README.md, in order, from the repository root, after
# `./scripts/uv.sh sync --frozen --extra train --extra cpu --extra dev`. Everything runs under nice
# with one torch thread per process (the machine's 2 cores are shared). Stages: STAGES="train
# classifier priors quality table grids cvae aggregate" (default: all).
set -euo pipefail
RUNS=${RUNS:-runs/sample-quality}
OUT=reports/sample-quality
LANES=${LANES:-2}
STAGES=${STAGES:-"train classifier priors quality table grids cvae aggregate"}
py() { nice -n 10 .venv/bin/python "$@"; }
train() { nice -n 10 .venv/bin/vae-train "$@"; }
has() { [[ " $STAGES " == *" $1 "* ]]; }
lanes() {  # run "$@" once per run directory, LANES at a time
  for run in "$RUNS"/*-s[0-9]; do
    while [ "$(jobs -rp | wc -l)" -ge "$LANES" ]; do wait -n; done
    "$@" "$run" &
  done
  wait
}

# Twelve Fashion-MNIST models: four configs x seeds 0-2, 10 epochs, one at a time.
has train && ./reports/sample-quality/train.sh

# The feature classifier, 2 epochs on the training split.
has classifier && train classifier --dataset fashion-mnist --threads 1

# Each run's priors: the mixture of the posterior means alone (the previous fit, kept as the
# baseline), the aggregate-posterior mixture (4 draws from every training image's q(z | x)) and the
# two-stage prior (200 epochs); the last two are what vae-train fits at the end of training.
priors() {
  local run=$1
  train prior "$run" --fit-to means --output "$run/best.means.prior.npz" --threads 1 > "$run/prior-means.out"
  train prior "$run" --threads 1 > "$run/prior.out"
  train prior "$run" --kind two-stage --threads 1 > "$run/two-stage.out"
}
has priors && lanes priors

# Every prior at temperatures 1, 1.25, 1.5 and 1.75 (the means-only mixture at 1), each the mean
# of three sampling seeds, 10,000 test images against 10,000 generated; the recommended prior.
quality() {
  train quality "$1" --samples 10000 --seeds 0 1 2 --temperatures 1.25 1.5 1.75 \
    --extra-mixture "means=$1/best.means.prior.npz" --threads 1 > "$1/quality.out"
}
has quality && lanes quality

has table && py scripts/sample_quality_report.py table "$RUNS" "$OUT"

# The grids: seed 0 of each model exported with vae-export, 64 images per prior drawn from the
# version's files as vae-serve draws them (seed 0), side by side.
if has grids; then
  repo=runs/sample-quality-repository
  rm -rf "$repo" "$RUNS/png"
  for model in mlp-vae conv-vae beta-vae mlp-ae; do
    nice -n 10 .venv/bin/vae-export "$RUNS/$model-s0/best.pt" --repository "$repo" --name "$model"
  done
  py scripts/sample_quality_report.py samples "$repo" "$RUNS/png"
  py scripts/sample_quality_report.py grids "$RUNS/png" "$OUT/fashion-mnist"
fi

# The CVAE: one mixture over every class's codes (what a version ships) against one per class.
if has cvae; then
  mkdir -p "$RUNS-cvae"
  nice -n 10 .venv/bin/vae-train --config configs/mlp-cvae.yaml --run-dir "$RUNS-cvae/mlp-cvae-s0" \
    --seed 0 --epochs 10 --threads 1 --iwae-samples 0 --tensorboard false --progress false \
    --prior-components 0 --prior-two-stage false > "$RUNS-cvae/mlp-cvae-s0.log" 2>&1
  py scripts/sample_quality_report.py cvae-priors "$RUNS-cvae/mlp-cvae-s0" "$OUT/cvae-priors.json"
fi

# The ceiling at temperature 1 of any prior that matches the aggregate posterior: decoded draws
# z ~ q(z | x) of 10,000 training images (and their means), for seed 0 of each VAE.
if has aggregate; then
  for model in mlp-vae conv-vae beta-vae; do
    py scripts/sample_quality_report.py aggregate "$RUNS/$model-s0" "$OUT/aggregate-$model.json"
  done
fi
