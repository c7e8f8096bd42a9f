#!/usr/bin/env python3
"""Zero-shot semantic occupancy with the oracle teacher on synthetic scenes (CPU budget), held-out evaluation.

    python benchmarks/semantic_oracle.py [--minutes 15] [--init models/stage1/model.safetensors] \\
        [--work /tmp/distillnerf_semantic] [--json benchmarks/results/semantic_oracle.json] [--reuse]

1. synthetic train dataroot (seed 101, the bundled model's towns) and held-out dataroot (seed 999, other towns)
2. oracle feature caches for both (`distillnerf-cache-features --teacher oracle`)
3. training: the bundled model's weights as initialisation (`init`), its training settings
   (configs/train/train_default.yaml) plus feature distillation from the cache, for `--minutes` of wall clock
4. held-out evaluation: the reference protocol plus feat_psnr / feat_cosine against the oracle's features
   (distillnerf-eval), and zero-shot semantic occupancy (training/semantic_eval.py): the model's occupied
   voxels on the ground-truth grid (0.4 m, x/y [-40, 40] m, z [-1, 5.4] m) labelled by text queries of the
   voxel classes through the stored PCA, scored per class against the synthetic semantic voxels inside the
   cameras' visibility, next to the best single-class baseline (every occupied voxel given one class, the
   best one) and the geometric occupancy IoU (occupied vs free) of the same model.

--reuse skips steps whose outputs exist (datasets, caches, a finished training run). Training uses CUDA when
there is a GPU (evaluation always runs on the CPU). On a machine without nuscenes-devkit put
benchmarks/devkit_shim on PYTHONPATH (a minimal table reader).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from distillnerf_core.cli import configure_logging  # noqa: E402
from distillnerf_core.data.datasets import DataConfig, make_dataset  # noqa: E402
from distillnerf_core.data.synthetic.export import VERSION, write_dataroot  # noqa: E402
from distillnerf_core.portable_paths import portable_path  # noqa: E402
from distillnerf_core.provenance import command_line, provenance  # noqa: E402
from distillnerf_core.teachers.base import TeacherConfig  # noqa: E402
from distillnerf_core.teachers.cache import MANIFEST, cache_features  # noqa: E402
from distillnerf_core.training.checkpoints import load_checkpoint  # noqa: E402
from distillnerf_core.training.config import load_train_config  # noqa: E402
from distillnerf_core.training.eval import evaluate  # noqa: E402
from distillnerf_core.training.trainer import train  # noqa: E402


def ensure_dataroot(path: Path, scenes: int, frames: int, seed: int, width: int, height: int) -> None:
    if not (path / VERSION / "sample.json").is_file():
        print(f"generating {scenes} x {frames} synthetic keyframes (seed {seed}) into {path}", flush=True)
        write_dataroot(path, scenes=scenes, frames=frames, seed=seed, width=width, height=height, progress=False,
                       threads=1)


def ensure_cache(dataroot: Path) -> None:
    manifest = dataroot / "features" / "oracle" / MANIFEST
    if not (manifest.is_file() and json.loads(manifest.read_text()).get("complete")):
        print(cache_features(dataroot, VERSION, TeacherConfig(kind="oracle"), progress=False), flush=True)


def main(argv: list[str] | None = None) -> int:
    configure_logging()  # the library's progress and warnings to stderr
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=15.0, help="training wall-clock budget")
    p.add_argument("--work", type=Path, default=Path("/tmp/distillnerf_semantic"))
    p.add_argument("--init", default=str(REPO / "models" / "stage1" / "model.safetensors"),
                   help="weights to start from (default: the shipped stage-1 model, which the bundled model was"
                   " distilled from)")
    p.add_argument("--config", default="train_default")
    p.add_argument("--max-steps", type=int, default=1000, help="cosine schedule horizon (the budget stops first)")
    p.add_argument("--train-scenes", type=int, default=8)
    p.add_argument("--train-frames", type=int, default=8)
    p.add_argument("--heldout-scenes", type=int, default=4)
    p.add_argument("--heldout-frames", type=int, default=4)
    p.add_argument("--train-seed", type=int, default=101)
    p.add_argument("--heldout-seed", type=int, default=999)
    p.add_argument("--width", type=int, default=456)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "semantic_oracle.json")
    p.add_argument("--reuse", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = provenance(command_line("python benchmarks/semantic_oracle.py", argv),
                         model=f"initialised from {portable_path(args.init)}, trained with oracle-feature distillation",
                         data=f"synthetic: train {args.train_scenes} x {args.train_frames} keyframes (seed "
                              f"{args.train_seed}), held out {args.heldout_scenes} x {args.heldout_frames} keyframes "
                              f"(seed {args.heldout_seed}), {args.width}x{args.height}")
    work = args.work
    ensure_dataroot(work / "train", args.train_scenes, args.train_frames, args.train_seed, args.width, args.height)
    ensure_dataroot(work / "heldout", args.heldout_scenes, args.heldout_frames, args.heldout_seed, args.width,
                    args.height)
    ensure_cache(work / "train")
    ensure_cache(work / "heldout")
    run = work / "run"
    summary_path = run / "train_summary.json"
    reused = args.reuse and summary_path.is_file() and (run / "model.safetensors").is_file()
    if not reused:
        cfg = load_train_config(args.config)
        cfg.data.features = "oracle"
        cfg.data.num_workers = args.workers
        cfg.init = args.init
        cfg.optim.warmup_steps = 50
        cfg.image_every = 0
        cfg.amp = "off"  # fp32 on the CPU and on a GPU alike (no autocast)
        print(f"training {cfg.model} from {args.init} with oracle features for {args.minutes} min", flush=True)
        train(cfg, str(work / "train"), VERSION, run, max_steps=args.max_steps, max_minutes=args.minutes,
              threads=args.threads, progress=not args.no_progress)
    summary = json.loads(summary_path.read_text())
    model = load_checkpoint(run / "model.safetensors")
    render_hw = model.renderer.render_hw(tuple(model.config.image_hw))
    dataset = make_dataset(str(work / "heldout"), VERSION, model.config.image_hw, DataConfig(features="oracle"),
                           render_hw, load_next=True)
    t0 = time.perf_counter()
    protocol = evaluate(model, dataset, progress=False)
    from distillnerf_core.training.semantic_eval import format_semantic_table, semantic_occupancy_eval

    semantic = semantic_occupancy_eval(model, dataset, progress=not args.no_progress)
    eval_s = time.perf_counter() - t0
    trained_on = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"{args.threads} CPU threads"
    training = (f"reused run {portable_path(run)} ({summary['step']} steps in {summary['elapsed_s'] / 60:.1f} min,"
                " trained by an earlier run: see its train_summary)" if reused else
                f"trained on {trained_on} for at most {args.minutes:g} min ({summary['step']} steps)")
    header = (f"semantic oracle benchmark {datetime.date.today()}  {os.cpu_count()} CPU cores, "
              f"torch {torch.__version__}; {training}; init {Path(args.init).name}; train "
              f"{args.train_scenes}x{args.train_frames} keyframes (seed {args.train_seed}); held-out "
              f"{args.heldout_scenes}x{args.heldout_frames} (seed {args.heldout_seed}); evaluation on the CPU")
    print("\n" + header)
    print(f"feat_psnr {protocol['details'].get('feat_psnr')}  feat_cosine {protocol['details'].get('feat_cosine')}  "
          f"recon PSNR {protocol['metrics']['psnr']}")
    print(format_semantic_table(semantic))
    if reused:
        started["model"] = f"reused run {portable_path(run)} ({summary['step']} steps, trained by an earlier run)"
    result = {"header": header, "command": started["command"], "provenance": started,
              "run": portable_path(run), "train_summary": summary, "protocol": protocol["metrics"],
              "feat_psnr": protocol["details"].get("feat_psnr"), "feat_cosine": protocol["details"].get("feat_cosine"),
              "semantic_occupancy": semantic, "eval_seconds": eval_s}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
