"""`distillnerf-train`: self-supervised training on any nuScenes-format dataroot.

    distillnerf-train --config train_small --dataroot D --version V --out RUN [--max-steps N]
                      [--max-minutes M] [--resume] [--init CKPT [--init-fresh MODULE,...]]
    torchrun --nproc_per_node 2 -m distillnerf_core.cli.train ...           (DDP: gloo on CPU, nccl on GPU)

Checkpoints: RUN/checkpoints/step_XXXXXXXX/ holds model.safetensors + model.json (weights + model config,
see training/checkpoints.py) and train_state.safetensors + train_state.json (optimizer tensors; optimizer groups,
scheduler, grad scaler, step, train config). A checkpoint is written into a hidden temp directory, every
file fsynced, a COMPLETE marker written last, then the directory is renamed into place (atomic), so a
kill at any moment leaves either the previous checkpoints or a complete new one; `--resume` takes the
newest one that loads. The last `keep_last` (2) are kept. At the end RUN/model.safetensors + model.json
hold the final weights (what distillnerf-eval and the ROS node load). Nothing is pickled.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from distillnerf_core.checked_files import DataFileError
from distillnerf_core.cli import configure_logging
from distillnerf_core.training.checkpoints import CheckpointError
from distillnerf_core.training.config import load_train_config
from distillnerf_core.training.trainer import NonFiniteTrainingError, train


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = argparse.ArgumentParser(prog="distillnerf-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="train YAML (path or shipped name, e.g. train_small) "
                        "or a model config name (tiny, small, paper) with default training settings")
    parser.add_argument("--dataroot", required=True)
    parser.add_argument("--version", required=True, help="e.g. v1.0-trainval, v1.0-mini, v1.0-synthetic")
    parser.add_argument("--out", required=True, help="run directory (checkpoints, tensorboard, logs)")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--max-minutes", type=float, help="wall-clock budget; a checkpoint is written at the end")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    parser.add_argument("--split", help="override data.split (all, train, val, mini_train, ...)")
    parser.add_argument("--ckpt-every", type=int, help="override ckpt_every")
    parser.add_argument("--workers", type=int, help="override data.num_workers")
    parser.add_argument("--features", help="override data.features: a teacher feature cache (name under "
                        "DATAROOT/features/ or a directory, from distillnerf-cache-features) to distil")
    parser.add_argument("--nerf-targets", help="override data.nerf_targets: per-scene field targets (name under "
                        "DATAROOT/nerf/ or a directory, from distillnerf-fit-scene): dense depth + virtual cameras")
    parser.add_argument("--sky-mask", help="override data.sky_mask: auto (default: the dataroot's segmenter feature "
                        "cache when it has one), none, or a segmenter cache; its sky pixels get the 115 m sky depth")
    parser.add_argument("--neighbour-targets", choices=("none", "prev", "next", "both"),
                        help="override data.neighbour_targets: the previous / next keyframe's cameras as extra "
                             "targets rendered from this frame (both: one of the two drawn per sample and step)")
    parser.add_argument("--virtual-prob", type=float, help="override loss.virtual_prob (virtual cameras per camera)")
    parser.add_argument("--init", help="override init: start from this checkpoint's weights")
    parser.add_argument("--init-fresh", help="override init_fresh: comma list of modules (e.g. feature_head,"
                        "encoder.frozen_2d,encoder.fuse) that start fresh instead of taking --init's tensors, for a "
                        "checkpoint whose head or encoder differ (any other difference is an error)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK if available)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads on CPU")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cfg = load_train_config(args.config)
    if args.split:
        cfg.data.split = args.split
    if args.ckpt_every:
        cfg.ckpt_every = args.ckpt_every
    if args.workers is not None:
        cfg.data.num_workers = args.workers
    if args.features:
        cfg.data.features = args.features
    if args.nerf_targets:
        cfg.data.nerf_targets = args.nerf_targets
    if args.sky_mask:
        cfg.data.sky_mask = args.sky_mask
    if args.neighbour_targets:
        cfg.data.neighbour_targets = args.neighbour_targets
    if args.virtual_prob is not None:
        cfg.loss.virtual_prob = args.virtual_prob
    if args.init:
        cfg.init = args.init
    if args.init_fresh is not None:
        cfg.init_fresh = [m.strip() for m in args.init_fresh.split(",") if m.strip()]
    if cfg.init_fresh and not cfg.init:
        parser.error("--init-fresh needs --init (or init in the train YAML)")
    try:
        summary = train(cfg, args.dataroot, args.version, args.out, args.max_steps, args.max_minutes, args.resume,
                        args.device, args.threads, not args.no_progress)
    except (DataFileError, CheckpointError, NonFiniteTrainingError, FileNotFoundError) as error:
        # a malformed cache or table, or a run gone non-finite: the message names the file / step and sample
        print(f"distillnerf-train: error: {error}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done: step {summary['step']} ({summary['steps_per_s']:.3f} steps/s, "
              f"data wait {100 * summary['data_wait_fraction']:.1f}%), "
              f"final weights {Path(args.out) / 'model.safetensors'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
