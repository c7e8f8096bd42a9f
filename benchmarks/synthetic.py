#!/usr/bin/env python3
"""Synthetic benchmark: train `small` on generated scenes for a wall-clock budget on CPU, evaluate on held-out scenes.

    python benchmarks/synthetic.py [--minutes 20] [--ablations] [--work /tmp/distillnerf_bench]

Generates (once, reused when present) a train dataroot (seed --train-seed) and a held-out dataroot (different
seed, different towns) with `distillnerf-synth`, trains with configs/train_small.yaml for the budget and runs
the reference evaluation protocol (distillnerf-eval) on the held-out set; prints one table.

--ablations trains, in the same run and the SAME total budget split evenly, three variants side by side:
  two-stage / two-level  the reference design (lift.two_stage, fine level folded into the sparse CNN input)
  one-stage              lift.two_stage = false: the coarse depth bins become the lifted points
  coarse-only            voxels.fine_level = false: no fine level at all; the sparse CNN, the renderer and the
                         decoder see only the coarse level (its fine feature channels are zero)
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from distillnerf_core.cli import configure_logging  # noqa: E402
from distillnerf_core.data.datasets import DataConfig, make_dataset  # noqa: E402
from distillnerf_core.data.synthetic.export import VERSION, write_dataroot  # noqa: E402
from distillnerf_core.provenance import command_line, provenance  # noqa: E402
from distillnerf_core.training.checkpoints import load_checkpoint  # noqa: E402
from distillnerf_core.training.config import load_train_config  # noqa: E402
from distillnerf_core.training.eval import evaluate  # noqa: E402
from distillnerf_core.training.trainer import train  # noqa: E402

VARIANTS = {
    "two-stage/two-level": {},
    "one-stage": {"lift": {"two_stage": False}},
    "coarse-only": {"voxels": {"fine_level": False}},
}
ROWS = [("recon PSNR", "psnr"), ("recon SSIM", "ssim"), ("novel-view PSNR", "nvs_psnr"),
        ("novel-view SSIM", "nvs_ssim"), ("LiDAR AbsRel", "abs_rel"), ("LiDAR RMSE (m)", "rmse"),
        ("LiDAR delta1", "delta1"), ("dense AbsRel", "dense_abs_rel"), ("train steps", "steps"),
        ("train minutes", "minutes")]


def ensure_dataroot(path: Path, scenes: int, frames: int, seed: int, width: int, height: int) -> Path:
    if not (path / VERSION / "sample.json").is_file():
        print(f"generating {scenes} x {frames} synthetic keyframes (seed {seed}) into {path}", flush=True)
        write_dataroot(path, scenes=scenes, frames=frames, seed=seed, width=width, height=height, progress=False)
    return path


def run_variant(name: str, overrides: dict, args: argparse.Namespace, minutes: float, work: Path) -> dict:
    cfg = load_train_config(args.config)
    cfg.model_overrides = copy.deepcopy(overrides)
    cfg.data.num_workers = args.workers
    cfg.ckpt_every = 10**9  # only the final checkpoint
    run = work / "runs" / name.replace("/", "_")
    print(f"\n== {name}: training {cfg.model} {overrides or ''} for {minutes:.1f} min", flush=True)
    summary = train(cfg, str(work / "train"), VERSION, run, max_steps=10**9, max_minutes=minutes,
                    threads=args.threads, progress=not args.no_progress)
    model = load_checkpoint(run / "model.safetensors")
    render_hw = model.renderer.render_hw(tuple(model.config.image_hw))
    dataset = make_dataset(str(work / "heldout"), VERSION, model.config.image_hw, DataConfig(), render_hw,
                           load_next=True)
    result = evaluate(model, dataset, images_dir=run / "eval_images", num_images=2, progress=False)
    metrics = dict(result["metrics"])
    metrics.update(steps=summary["step"], minutes=summary["elapsed_s"] / 60.0)
    (run / "eval.json").write_text(json.dumps(result["metrics"], indent=2) + "\n")
    return metrics


def table(results: dict[str, dict]) -> str:
    def f(v):
        if v is None:
            return "-"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    names = list(results)
    width = max(len(r[0]) for r in ROWS)
    cols = [max(len(n), 8) for n in names]
    lines = [" | ".join([f"{'metric':<{width}}", *(f"{n:>{c}}" for n, c in zip(names, cols, strict=True))])]
    lines.append("-" * len(lines[0]))
    for label, key in ROWS:
        cells = [f"{f(results[n].get(key)):>{c}}" for n, c in zip(names, cols, strict=True)]
        lines.append(" | ".join([f"{label:<{width}}", *cells]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    configure_logging()  # the library's progress and warnings to stderr
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=20.0, help="total training wall-clock budget")
    p.add_argument("--ablations", action="store_true")
    p.add_argument("--work", type=Path, default=Path("/tmp/distillnerf_bench_synthetic"))
    p.add_argument("--config", default="train_small")
    p.add_argument("--train-scenes", type=int, default=6)
    p.add_argument("--train-frames", type=int, default=8)
    p.add_argument("--heldout-scenes", type=int, default=2)
    p.add_argument("--heldout-frames", type=int, default=4)
    p.add_argument("--train-seed", type=int, default=11)
    p.add_argument("--heldout-seed", type=int, default=999)
    p.add_argument("--width", type=int, default=456)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", type=Path, help="write all results here")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.heldout_seed == args.train_seed:
        p.error("the held-out seed must differ from the train seed")
    torch.set_num_threads(args.threads)
    started = provenance(command_line("python benchmarks/synthetic.py", argv),
                         model=f"`{args.config}` trained from scratch per variant",
                         data=f"synthetic: train {args.train_scenes} x {args.train_frames} keyframes (seed "
                              f"{args.train_seed}), held out {args.heldout_scenes} x {args.heldout_frames} keyframes "
                              f"(seed {args.heldout_seed}), {args.width}x{args.height}")
    work = args.work
    ensure_dataroot(work / "train", args.train_scenes, args.train_frames, args.train_seed, args.width, args.height)
    ensure_dataroot(work / "heldout", args.heldout_scenes, args.heldout_frames, args.heldout_seed, args.width,
                    args.height)
    variants = VARIANTS if args.ablations else {"small": {}}
    per = args.minutes / len(variants)
    results = {name: run_variant(name, ov, args, per, work) for name, ov in variants.items()}
    header = (f"synthetic benchmark {datetime.date.today()}  {os.cpu_count()} CPU cores, "
              f"torch {torch.__version__}, {args.threads} threads; config {args.config}; budget {args.minutes:g} min"
              f"{' split over ' + str(len(variants)) + ' variants' if len(variants) > 1 else ''}; train "
              f"{args.train_scenes}x{args.train_frames} keyframes (seed {args.train_seed}), held-out "
              f"{args.heldout_scenes}x{args.heldout_frames} (seed {args.heldout_seed})")
    print("\n" + header)
    print(table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"header": header, "results": results, "provenance": started},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
