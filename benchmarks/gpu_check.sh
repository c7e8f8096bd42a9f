#!/usr/bin/env bash
# Every GPU measurement of issue 13 in one run, under 5 minutes on one GPU, no network, no ROS:
#   bash benchmarks/gpu_check.sh OUTDIR
# 1. environment (GPU, torch, which optional modules are missing) -> env.json
# 2. distillnerf-bench infer + train for tiny / small / paper in fp32 (TF32), bf16, fp16, and paper train
#    bf16 at batch 4 -> bench_*.json, bench_all.json (one process, 150 s budget)
# 3. ScenePredictor on the bundled real keyframe (data/nuscenes_sample, models/default), depth only / full /
#    occupancy only, fp32 + bf16 -> keyframe_predictor.json
# 4. torch.profiler top kernels of the paper training step (fp32, bf16) -> profile_*.{txt,json}
# 5. the same with torch.compile of the static stages: paper infer + train, fp32 + bf16 -> bench_*_compiled.json;
#    the keyframe predictor compiled -> keyframe_predictor_compiled.json (first calls, i.e. compile times, too)
# 6. the training data loader's samples/s with 1 and 8 workers on a nuScenes-sized synthetic dataroot (6 x
#    1600x900 JPEG + LiDAR; full and DCT-reduced decode) against the 55 ms paper step -> loader_throughput.json
#    (issue 26 item 4; CPU work, the GPU box's cores)
# 6b. the realistic load (issue 26 item 1): distillnerf-bench --scene realistic, paper + small, infer + train,
#    fp32 + bf16, on the bundled real keyframe with trained weights (small: the bundled model; paper: 100 Adam
#    steps on the keyframe first) -> bench_*_realistic.json
# 6c. host syncs of the no-grad render (issue 26 item 2) under torch.cuda.set_sync_debug_mode("error"),
#    tiny + paper -> render_sync.json
# 7. summary.md from all of the above; then every file (per-run JSON, profiler tables, logs log_*.txt) is
#    packed into results.tar.gz and every JSON merged into results.json: OUTDIR holds those three files
# GPU_CHECK_QUICK=1 (or no CUDA): a dry run on the CPU: tiny config only, 2 iterations, fp32 + bf16 (no
# compiled keyframe run: compiling the bundled model on 2 CPU cores takes longer than its step's limit).
# PYTHON=... picks the interpreter (default: the first of .venv/bin/python, python, python3 that imports torch).
set -u
OUT=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR}
cd "$(dirname "$0")/.." || exit 1
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-}
if [ -z "$PY" ]; then  # the first interpreter that imports torch: the repo's venv, then python, then python3
  for candidate in .venv/bin/python python python3; do
    if command -v "$candidate" > /dev/null && "$candidate" -c 'import torch' 2> /dev/null; then PY=$candidate; break; fi
  done
fi
[ -n "$PY" ] || { echo "no python with torch found (set PYTHON=...)"; exit 1; }
echo "python: $(command -v "$PY")"
START=$(date +%s)
TOTAL_LIMIT=${GPU_CHECK_LIMIT_S:-425}  # the whole script stays under 7.5 minutes, kill grace included (265 + 60
# for the loader step of issue 26, + 70 for the realistic bench, + 30 for the render sync check)
step() {  # step NAME TIMEOUT_S CMD...: run with a time limit, log to OUT/log_NAME.txt, never abort the script
  local name=$1 limit=$2; shift 2
  local left=$(( TOTAL_LIMIT - ($(date +%s) - START) ))
  if [ "$left" -lt 10 ]; then echo "== $name: SKIPPED (total time limit reached)"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s, at $(( $(date +%s) - START ))s)"
  timeout --kill-after=5 "$limit" "$@" > "$OUT/log_$name.txt" 2>&1
  local rc=$?
  tail -n 60 "$OUT/log_$name.txt"
  [ $rc -eq 0 ] || echo "!! $name exited with $rc (124 = time limit); see $OUT/log_$name.txt"
}

timeout 60 "$PY" - "$OUT" <<'PYEOF'
import datetime, importlib, importlib.util, json, platform, sys
import torch
out = sys.argv[1]
missing = []
for name in ("numpy", "safetensors", "yaml", "PIL", "tqdm"):  # required: imported
    try:
        importlib.import_module(name)
    except Exception:
        missing.append(name)
for name in ("timm", "open_clip", "nuscenes", "rclpy"):  # optional: only looked up (importing ROS is slow)
    if importlib.util.find_spec(name) is None:
        missing.append(name)
cuda = torch.cuda.is_available()
env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version(),
       "torch": torch.__version__, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(0) if cuda else None,
       "gpu_mem_gb": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
       "bf16_supported": cuda and torch.cuda.is_bf16_supported(), "missing": missing}
json.dump(env, open(f"{out}/env.json", "w"), indent=2)
print(json.dumps(env))
print("not needed by these checks, skipped where used:", ", ".join(m for m in missing if m in ("timm", "open_clip", "nuscenes", "rclpy")) or "none")
for required in ("numpy", "safetensors", "yaml", "PIL"):
    if required in missing:
        sys.exit(f"required module {required} missing")
PYEOF
[ $? -eq 0 ] || { echo "environment check failed"; exit 1; }

if [ "${GPU_CHECK_QUICK:-0}" = 1 ] || ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "QUICK / no CUDA: CPU dry run, tiny config only"
  DEV=cpu; CONFIGS="tiny"; PRECS="fp32 bf16"; QUICK=--quick; KF_PRECS=fp32; KF_ITERS=1; KF_WARM=0; PROF=tiny
  COMPILE_CONFIGS=tiny; COMPILE_PRECS=fp32; COMPILE_MODES=infer
  LOADER_ARGS="--scenes 1 --frames 2 --workers 1,2 --samples 8 --cost-samples 2"
  REAL_CONFIGS=tiny; REAL_PRECS=fp32; FIT_STEPS=2; SYNC_CONFIGS=tiny
else
  DEV=cuda; CONFIGS="paper small tiny"; PRECS="fp32 bf16 fp16"; QUICK=; KF_PRECS=$PRECS; KF_ITERS=20; KF_WARM=3
  COMPILE_CONFIGS=paper; COMPILE_PRECS="fp32 bf16"; COMPILE_MODES="infer train"
  PROF=paper
  LOADER_ARGS="--scenes 1 --frames 4 --workers 1,8 --samples 64 --cost-samples 8"
  REAL_CONFIGS="paper small"; REAL_PRECS="fp32 bf16"; FIT_STEPS=100; SYNC_CONFIGS="tiny paper"
fi
# Limits: 60 + 135 + 40 + 60 + 70 + 30 + 2 x 25 + 105 + 45 + 10 + 15 s, but no step runs past TOTAL_LIMIT (425 s)
# and the pack adds <= 15 s: under 7.5 min whatever happens (late steps are cut or skipped). The bench stops starting new runs
# after 115 s; measured on an H200: the eager steps take ~75 s in all.

step bench 135 "$PY" benchmarks/gpu_bench_all.py --out "$OUT" --device $DEV --configs $CONFIGS --precisions $PRECS \
  --budget-s 115 $QUICK
step keyframe 40 "$PY" benchmarks/keyframe_predictor.py --device $DEV --precision $KF_PRECS --iters $KF_ITERS \
  --warmup $KF_WARM --json "$OUT/keyframe_predictor.json"
# the loader (issue 26) early, so the 60 s it adds to TOTAL_LIMIT leave the later steps the time they had before
# shellcheck disable=SC2086  # LOADER_ARGS is a list of options
step loader 60 "$PY" benchmarks/loader_throughput.py $LOADER_ARGS --step-ms 55 --work "$OUT/loader_dataroot" \
  --json "$OUT/loader_throughput.json"
rm -rf "$OUT/loader_dataroot"  # ~10 MB of JPEGs: not results
# shellcheck disable=SC2086  # the config / precision lists are lists
step bench_realistic 70 "$PY" benchmarks/gpu_bench_all.py --out "$OUT" --device $DEV --configs $REAL_CONFIGS \
  --precisions $REAL_PRECS --scene realistic --fit-steps $FIT_STEPS --no-batch4 --budget-s 50 $QUICK
# shellcheck disable=SC2086
step render_sync 30 "$PY" benchmarks/render_sync.py --device $DEV --configs $SYNC_CONFIGS --json "$OUT/render_sync.json"
for prec in fp32 bf16; do
  step "profile_$prec" 25 "$PY" benchmarks/profile_step.py --config $PROF --mode train --precision $prec \
    --device $DEV --steps 3 --warmup 2 --out "$OUT"
done
# torch.compile of the static stages (encoder, lift, decoder): each run's first call compiles (first_call_ms).
step bench_compiled 105 "$PY" benchmarks/gpu_bench_all.py --out "$OUT" --device $DEV --configs $COMPILE_CONFIGS \
  --precisions $COMPILE_PRECS --modes $COMPILE_MODES --no-batch4 --budget-s 85 --compile $QUICK
[ "$DEV" = cuda ] && step keyframe_compiled 45 "$PY" benchmarks/keyframe_predictor.py --device $DEV --precision $COMPILE_PRECS --iters $KF_ITERS \
  --warmup $KF_WARM --compile --json "$OUT/keyframe_predictor_compiled.json"
step summary 10 "$PY" benchmarks/gpu_summary.py "$OUT"
# The device hands back only a few files per call: everything else goes into results.json + results.tar.gz.
timeout 15 "$PY" benchmarks/gpu_pack.py "$OUT"
echo "== done in $(( $(date +%s) - START ))s; results in $OUT: summary.md, results.json (every JSON merged),"
echo "   results.tar.gz (every file: per-run JSON, profiler tables, logs)"
