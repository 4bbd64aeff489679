#!/usr/bin/env bash
# Every command behind reports/sample-quality/README.md, in order, from the repository root, after
# `./scripts/uv.sh sync --frozen --extra train --extra dev`. Everything runs under nice -n 19 with one
# torch thread per process (the machine's 2 cores are shared). Stages: STAGES="mnist-data train
# classifier quality table grids" (default: all).
set -euo pipefail
RUNS=${RUNS:-runs/sample-quality}
OUT=reports/sample-quality
MNIST=runs/data/mnist-t10k-split
STAGES=${STAGES:-"mnist-data train classifier quality table grids"}
py() { nice -n 19 .venv/bin/python "$@"; }
train() { nice -n 19 .venv/bin/vae-train "$@"; }
has() { [[ " $STAGES " == *" $1 "* ]]; }

# MNIST: only its 10,000 test images exist here; they are cut into 8,000 for training (1,000 of
# them for validation) and 2,000 for testing.
has mnist-data && py scripts/sample_quality_report.py split-mnist ../shared/data/mnist-t10k "$MNIST"

# Twelve Fashion-MNIST models (four configs x seeds 0-2, 10 epochs) and the same twelve on the MNIST
# split. Each run fits its 10-component mixture prior to the training codes of best.pt at the end.
if has train; then
  ./reports/sample-quality/train.sh
  DATASET=mnist DATA_DIR=$MNIST PREFIX=mnist- VAL_SIZE=1000 ./reports/sample-quality/train.sh
fi

# The feature classifiers, 2 epochs each on the training split.
if has classifier; then
  train classifier --dataset fashion-mnist --threads 1
  train classifier --dataset mnist --data-dir "$MNIST" --threads 1
fi

# The mixture is refitted (same seed, same result as the automatic fit) so that runs trained before
# the automatic fit existed have one too, then each run is scored: 10,000 (MNIST: 2,000) test images
# against as many decoded N(0, I) and mixture draws.
if has quality; then
  for run in "$RUNS"/*-s[0-9]; do
    samples=10000; [[ $(basename "$run") == mnist-* ]] && samples=2000
    train prior "$run" --threads 1 > "$run/prior.out"
    train quality "$run" --samples "$samples" --threads 1 > "$run/quality.out"
  done
fi

has table && py scripts/sample_quality_report.py table "$RUNS" "$OUT"

# The grids come from the served models: export seed 0 of each model, serve, and ask Sample for the
# same 64 seeds' images from each prior.
if has grids; then
  repo=runs/sample-quality-repository
  rm -rf "$repo" "$RUNS/png"
  for prefix in "" mnist-; do
    for model in mlp-vae conv-vae beta-vae mlp-ae; do
      nice -n 19 .venv/bin/vae-export "$RUNS/$prefix$model-s0/best.pt" --repository "$repo" \
        --name "$prefix$model" ${prefix:+--data-dir $MNIST}
    done
  done
  nice -n 19 .venv/bin/vae-serve --repository "$repo" --port 50071 --metrics-port 0 \
    --providers CPUExecutionProvider --reload-interval-seconds 0 > "$RUNS/serve.log" 2>&1 &
  server=$!
  trap 'kill $server' EXIT
  for _ in $(seq 60); do .venv/bin/vae-client --address localhost:50071 info > /dev/null 2>&1 && break; sleep 1; done
  for prefix in "" mnist-; do
    for model in mlp-vae conv-vae beta-vae mlp-ae; do
      for prior in standard-normal mixture; do
        .venv/bin/vae-client --address localhost:50071 --model "$prefix$model" sample --count 64 \
          --seed 0 --prior "$prior" --scale 2 -o "$RUNS/png/$prefix${model}-${prior//-/_}.png"
      done
    done
  done
  py scripts/sample_quality_report.py grids "$RUNS/png" "$OUT/fashion-mnist"
  mkdir -p "$RUNS/png-mnist"
  for f in "$RUNS"/png/mnist-*.png; do cp "$f" "$RUNS/png-mnist/$(basename "${f#"$RUNS"/png/mnist-}")"; done
  py scripts/sample_quality_report.py grids "$RUNS/png-mnist" "$OUT/mnist"
fi
