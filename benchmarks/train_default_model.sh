#!/usr/bin/env bash
# The bundled model's recipe (issue 24), into a NEW directory; each variant is one run directory of OUT:
#   data:    OUT/train   synthetic keyframes of the new world (seed 101, --scenes x --frames, 456x256, --synth-args)
#            OUT/heldout the held-out set (seed 999, 2 x 4 keyframes, other towns, same --synth-args)
#   world    OUT/world    the `small` model from scratch, configs/train/train_default.yaml (stage 1, FPN only)
#   frozen   OUT/frozen   the same with the frozen 2D branch (train_default_frozen2d.yaml, encoder.frozen_2d)
#   distill  OUT/default  from OUT/frozen (--distill-from frozen, the default; OUT/world and the FPN-only config
#                         with --distill-from world; or --distill-init): + distillation from the segmenter teacher
#                         (distillnerf-cache-features --teacher segmenter on OUT/train; its sky also gives the
#                         115 m sky depth target), the 64-ch feature head started fresh as the 20-ch one
# Stage-1 variants train without a sky mask (--sky-mask none), so that only the distillation stage uses the
# segmenter's labels. Each variant is evaluated on OUT/heldout into its eval.json; benchmarks/world_transfer.py
# scores the variants on the real frames.
#
#   benchmarks/train_default_model.sh OUT [--variants world,frozen,distill|data|install] [--minutes 28]
#       [--distill-minutes 28] [--max-steps N] [--synth-args "--rig random6 --look realistic"] [--scenes 16]
#       [--frames 8] [--segmenter-width 1024] [--distill-init CKPT] [--distill-init-fresh feature_head]
#       [--threads N] [--install] [--init CKPT] [--distill-from frozen|world]
#
# --init CKPT starts the stage-1 variants (world, frozen) from CKPT instead of from scratch (the shipped bundled
#   model: the old box world's stage 1, models/stage1/model.safetensors); the frozen variant's new modules
#   (encoder.frozen_2d, encoder.fuse) start fresh, and the fusion starts as the identity on the FPN.
# --distill-init CKPT skips the frozen stage: e.g. the old bundled model (64-ch oracle head, no frozen branch):
#   --distill-init models/default/model.safetensors --distill-init-fresh feature_head,encoder.frozen_2d,encoder.fuse
# --max-steps caps every training (a quick check of the recipe). --variants data only writes the data (the two
# sets in parallel), so that variants can then train side by side (e.g. `--variants world` and `--variants
# frozen,distill` at --threads 1 each on two cores). Nothing under models/ is written unless --install (then
# OUT/default replaces models/default and OUT/frozen (OUT/world with --distill-from world) models/stage1; `--variants install` does only that).
set -euo pipefail
usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
case $1 in -*) usage ;; esac
OUT=$1; shift
VARIANTS=world,frozen,distill; MINUTES=28; MINUTES2=28; MAX_STEPS=""; SYNTH_ARGS="--rig random6 --look realistic"
SCENES=16; FRAMES=8; SEG_WIDTH=1024; DINIT=""; DFRESH=feature_head; THREADS=""; INSTALL=0; SINIT=""; DFROM=frozen
while [ $# -gt 0 ]; do
  case $1 in
    --variants) VARIANTS=$2; shift 2 ;;
    --minutes) MINUTES=$2; shift 2 ;;
    --distill-minutes) MINUTES2=$2; shift 2 ;;
    --max-steps) MAX_STEPS=$2; shift 2 ;;
    --synth-args) SYNTH_ARGS=$2; shift 2 ;;
    --scenes) SCENES=$2; shift 2 ;;
    --frames) FRAMES=$2; shift 2 ;;
    --segmenter-width) SEG_WIDTH=$2; shift 2 ;;
    --distill-init) DINIT=$2; shift 2 ;;
    --distill-init-fresh) DFRESH=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --install) INSTALL=1; shift ;;
    --init) SINIT=$2; shift 2 ;;
    --distill-from) DFROM=$2; shift 2 ;;
    *) echo "train_default_model.sh: unknown option $1" >&2; usage ;;
  esac
done
for v in ${VARIANTS//,/ }; do
  case $v in world|frozen|distill|data|install) ;; *) echo "train_default_model.sh: unknown variant $v (world, frozen, distill, data, install)" >&2; exit 2 ;; esac
done
case $DFROM in frozen|world) ;; *) echo "train_default_model.sh: --distill-from must be frozen or world" >&2; exit 2 ;; esac
has() { case ",$VARIANTS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$PY" ] || PY=python
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
case $OUT/ in "$REPO"/models/*) echo "train_default_model.sh: OUT must not be inside models/ (use --install)" >&2; exit 2 ;; esac
if [ -n "$DINIT" ]; then DINIT=$(cd "$(dirname "$DINIT")" && pwd)/$(basename "$DINIT"); fi
if [ -n "$SINIT" ]; then
  [ -f "$SINIT" ] || { echo "train_default_model.sh: --init $SINIT does not exist" >&2; exit 2; }
  SINIT=$(cd "$(dirname "$SINIT")" && pwd)/$(basename "$SINIT")
fi
cd "$REPO"
THREADS=${THREADS:-$(nproc)}
STEPS_OPT=(); [ -n "$MAX_STEPS" ] && STEPS_OPT=(--max-steps "$MAX_STEPS")
read -r -a SYNTH <<< "$SYNTH_ARGS"
run() { echo "+ $*" >&2; "$@"; }

synth() {  # synth DIR SEED SCENES FRAMES: a dataroot of the new world (kept when complete)
  [ -f "$1/v1.0-synthetic/sample.json" ] || run "$PY" -m distillnerf_core.cli.synth --out "$1" --seed "$2" \
    --scenes "$3" --frames "$4" --width 456 --height 256 "${SYNTH[@]}" --quiet
}
evaluate() {  # evaluate RUN_DIR: the held-out protocol into RUN_DIR/eval.json
  run "$PY" -m distillnerf_core.cli.eval --checkpoint "$1/model.safetensors" --dataroot "$OUT/heldout" \
    --version v1.0-synthetic --json "$1/eval.json" --threads "$THREADS" --no-progress
}
train() {  # train CONFIG RUN_DIR MINUTES [extra distillnerf-train options]
  local config=$1 dir=$2 minutes=$3; shift 3
  run "$PY" -m distillnerf_core.cli.train --config "$config" --dataroot "$OUT/train" --version v1.0-synthetic \
    --out "$dir" --max-minutes "$minutes" "${STEPS_OPT[@]}" --threads "$THREADS" --no-progress "$@"
  evaluate "$dir"
}

install_models() {  # OUT/default -> models/default, OUT/<--distill-from> -> models/stage1 (when it exists)
  for pair in default:default "$DFROM":stage1; do
    local src=$OUT/${pair%%:*} dst=models/${pair##*:}
    if [ -f "$src/model.safetensors" ]; then
      cp "$src/"{model.safetensors,model.json,train_config.json,train_summary.json,eval.json} "$dst/"
      echo "installed $src into $dst"
    elif [ "$dst" = models/default ]; then
      echo "train_default_model.sh: nothing to install: $src/model.safetensors does not exist" >&2; exit 2
    fi
  done
}
if [ "$VARIANTS" = install ]; then install_models; exit 0; fi

synth "$OUT/heldout" 999 2 4 & HELDOUT=$!  # one thread each (the renderer's fastest): both sets side by side
synth "$OUT/train" 101 "$SCENES" "$FRAMES"
wait "$HELDOUT"
printf '{"synth_args": "%s", "train": "seed 101, %s x %s keyframes, 456x256", "heldout": "seed 999, 2 x 4 keyframes, 456x256", "segmenter_width": %s, "stage1_init": "%s"}\n' \
  "$SYNTH_ARGS" "$SCENES" "$FRAMES" "$SEG_WIDTH" "${SINIT#"$REPO"/}" > "$OUT/recipe.json"

WORLD_INIT=(); FROZEN_INIT=()
if [ -n "$SINIT" ]; then
  WORLD_INIT=(--init "$SINIT"); FROZEN_INIT=(--init "$SINIT" --init-fresh encoder.frozen_2d,encoder.fuse)
fi
has world && train train_default "$OUT/world" "$MINUTES" --sky-mask none "${WORLD_INIT[@]}"
has frozen && train train_default_frozen2d "$OUT/frozen" "$MINUTES" --sky-mask none "${FROZEN_INIT[@]}"
if has data; then echo "data written: $OUT/train $OUT/heldout"; fi
if has distill; then
  INIT=${DINIT:-$OUT/$DFROM/model.safetensors}
  DCONFIG=train_default_frozen2d; [ "$DFROM" = world ] && [ -z "$DINIT" ] && DCONFIG=train_default
  [ -f "$INIT" ] || { echo "train_default_model.sh: distill starts from $INIT, which does not exist (run the frozen variant or give --distill-init)" >&2; exit 2; }
  run "$PY" -m distillnerf_core.cli.cache_features --dataroot "$OUT/train" --version v1.0-synthetic \
    --teacher segmenter --segmenter-width "$SEG_WIDTH" --threads "$THREADS" --no-progress
  train "$DCONFIG" "$OUT/default" "$MINUTES2" --features segmenter --init "$INIT" \
    --init-fresh "$DFRESH"
  if [ "$INSTALL" = 1 ]; then install_models; fi
fi
echo "done: $OUT"
