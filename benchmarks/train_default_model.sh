#!/usr/bin/env bash
# Reproduce the bundled model (models/default) as shipped, both stages, into a NEW directory:
#   stage 1: the `small` model trained for a wall-clock budget (shipped: 28 min on 2 CPU cores, 1615 steps) on
#            16 x 8 synthetic keyframes (seed 101), configs/train/train_default.yaml          -> OUT/stage1/
#   stage 2: from stage 1's weights, 6000 steps of oracle-feature distillation on 8 x 8 keyframes (seed 101)
#            through benchmarks/semantic_oracle.py (shipped: 244 s on an H200; hours on a CPU)  -> OUT/default/
# each evaluated on the held-out 2 x 4 keyframes (seed 999, other towns) into its eval.json.
#
#   benchmarks/train_default_model.sh OUT [--stage 1|2|both] [--minutes 28] [--stage2-steps 6000]
#                                         [--stage2-minutes 720] [--init STAGE1.safetensors] [--install]
#
# --stage 2 alone starts from --init (default: the shipped stage-1 weights, models/stage1/model.safetensors).
# Nothing under models/ is written unless --install is given (then OUT/default replaces models/default).
set -euo pipefail
usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
OUT=$1; shift
STAGE=both; MINUTES=28; STEPS2=6000; MINUTES2=720; INIT=""; INSTALL=0
while [ $# -gt 0 ]; do
  case $1 in
    --stage) STAGE=$2; shift 2 ;;
    --minutes) MINUTES=$2; shift 2 ;;
    --stage2-steps) STEPS2=$2; shift 2 ;;
    --stage2-minutes) MINUTES2=$2; shift 2 ;;
    --init) INIT=$2; shift 2 ;;
    --install) INSTALL=1; shift ;;
    *) echo "train_default_model.sh: unknown option $1" >&2; usage ;;
  esac
done
case $STAGE in 1|2|both) ;; *) echo "train_default_model.sh: --stage must be 1, 2 or both" >&2; exit 2 ;; esac
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$PY" ] || PY=python
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
case $OUT/ in "$REPO"/models/*) echo "train_default_model.sh: OUT must not be inside models/ (use --install)" >&2; exit 2 ;; esac
cd "$REPO"
THREADS=$(nproc)

[ -f "$OUT/heldout/v1.0-synthetic/sample.json" ] || \
  $PY -m distillnerf_core.cli.synth --out "$OUT/heldout" --scenes 2 --frames 4 --seed 999 --width 456 --height 256 --quiet

evaluate() {  # evaluate MODEL_DIR: the bundled model's held-out protocol into MODEL_DIR/eval.json
  $PY -m distillnerf_core.cli.eval --checkpoint "$1/model.safetensors" --dataroot "$OUT/heldout" \
    --version v1.0-synthetic --json "$1/eval.json" --threads "$THREADS"
}

if [ "$STAGE" != 2 ]; then
  [ -f "$OUT/train/v1.0-synthetic/sample.json" ] || \
    $PY -m distillnerf_core.cli.synth --out "$OUT/train" --scenes 16 --frames 8 --seed 101 --width 456 --height 256 --quiet
  $PY -m distillnerf_core.cli.train --config train_default --dataroot "$OUT/train" --version v1.0-synthetic \
    --out "$OUT/stage1" --max-minutes "$MINUTES" --threads "$THREADS"
  evaluate "$OUT/stage1"
  INIT=${INIT:-$OUT/stage1/model.safetensors}
fi

if [ "$STAGE" != 1 ]; then
  INIT=${INIT:-$REPO/models/stage1/model.safetensors}
  WORKERS=$(( THREADS > 6 ? 6 : THREADS ))
  $PY benchmarks/semantic_oracle.py --work "$OUT/stage2" --init "$INIT" --max-steps "$STEPS2" \
    --minutes "$MINUTES2" --threads "$THREADS" --workers "$WORKERS" --no-progress --reuse \
    --json "$OUT/stage2/semantic_oracle.json"
  mkdir -p "$OUT/default"
  cp "$OUT/stage2/run/model.safetensors" "$OUT/stage2/run/model.json" "$OUT/stage2/run/train_config.json" \
     "$OUT/stage2/run/train_summary.json" "$OUT/default/"
  evaluate "$OUT/default"
  if [ "$INSTALL" = 1 ]; then
    cp "$OUT/default/"{model.safetensors,model.json,train_config.json,train_summary.json,eval.json} models/default/
    echo "installed $OUT/default into models/default"
  fi
fi
echo "done: $OUT"
