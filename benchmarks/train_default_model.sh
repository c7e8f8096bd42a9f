#!/usr/bin/env bash
# Reproduce the bundled default model (models/default): the `small` model trained on CPU for a wall-clock
# budget on synthetic scenes, evaluated on held-out synthetic scenes (other seed = other towns).
#   benchmarks/train_default_model.sh [WORK_DIR] [MINUTES]
set -euo pipefail
WORK=${1:-/tmp/distillnerf_default}
MINUTES=${2:-28}
PY=${PYTHON:-python}
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
[ -f "$WORK/train/v1.0-synthetic/sample.json" ] || \
  $PY -m distillnerf_core.cli.synth --out "$WORK/train" --scenes 16 --frames 8 --seed 101 --width 456 --height 256 --quiet
[ -f "$WORK/heldout/v1.0-synthetic/sample.json" ] || \
  $PY -m distillnerf_core.cli.synth --out "$WORK/heldout" --scenes 2 --frames 4 --seed 999 --width 456 --height 256 --quiet
$PY -m distillnerf_core.cli.train --config train_default --dataroot "$WORK/train" --version v1.0-synthetic \
  --out "$WORK/run" --max-minutes "$MINUTES" --threads "$(nproc)"
mkdir -p models/default
cp "$WORK/run/model.safetensors" "$WORK/run/model.json" "$WORK/run/train_config.json" "$WORK/run/train_summary.json" models/default/
$PY -m distillnerf_core.cli.eval --checkpoint models/default/model.safetensors --dataroot "$WORK/heldout" \
  --version v1.0-synthetic --json models/default/eval.json --images "$WORK/eval_images" --threads "$(nproc)"
