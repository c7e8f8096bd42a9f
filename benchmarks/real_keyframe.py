#!/usr/bin/env python3
"""PER-FRAME FIT to the one real nuScenes keyframe (data/nuscenes_sample): recon PSNR and LiDAR AbsRel.

    python benchmarks/real_keyframe.py [--minutes 15] [--lr 1e-3] [--render-scale 0.25] [--init CKPT]

This is NOT a generalisation result: the model is optimised on the very frame it is then evaluated on (the
only real frame on this machine), with the library's self-supervised losses (RGB L1 + SSIM, LiDAR depth on
the coarse and rendered depth, entropy, opacity). It shows that the pipeline (real calibration, motion-
compensated poses, LiDAR targets, renderer, decoder) can represent a real 6-camera frame. `--init` starts
from a checkpoint's weights (e.g. the bundled synthetic model) instead of a random initialisation. Target:
PSNR >= 30 and LiDAR AbsRel <= 0.15. The sample is loaded once and kept in memory (no data loader).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from distillnerf_core.configs import deep_merge  # noqa: E402
from distillnerf_core.data.datasets import NuScenesDataset, collate_samples  # noqa: E402
from distillnerf_core.data.nuscenes_sample import build_dataroot, find_version  # noqa: E402
from distillnerf_core.model.distillnerf import DistillNeRFModel, ModelConfig  # noqa: E402
from distillnerf_core.provenance import command_line, portable, provenance  # noqa: E402
from distillnerf_core.training.checkpoints import load_weights, read_metadata  # noqa: E402
from distillnerf_core.training.eval import evaluate, format_table  # noqa: E402
from distillnerf_core.training.losses import DistillNeRFLoss, LossConfig  # noqa: E402
from distillnerf_core.training.trainer import TrainStep  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", type=Path, default=REPO / "data" / "nuscenes_sample")
    p.add_argument("--work", type=Path, default=Path("/tmp/distillnerf_bench_real"))
    p.add_argument("--config", default="small")
    p.add_argument("--render-scale", type=float, default=None, help="override renderer.render_scale")
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--max-steps", type=int, default=100000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=0, help="linear learning-rate warmup steps")
    p.add_argument("--init", type=Path, help="start from this checkpoint's weights (its config is used)")
    p.add_argument("--ssim", type=float, default=0.2, help="SSIM loss weight")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    model = f"initialised from {portable(args.init)}" if args.init else f"`{args.config}` from scratch"
    started = provenance(command_line("python benchmarks/real_keyframe.py", argv), model=model,
                         data=f"{portable(args.src)}: trained and evaluated on the same frame")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    version = find_version(args.src)
    root = build_dataroot(args.src, args.work / "root", link=True, version=version)
    base = read_metadata(args.init)["config"] if args.init else ModelConfig.load(args.config).to_dict()
    over = {"renderer": {"render_scale": args.render_scale}} if args.render_scale else {}
    mcfg = ModelConfig.from_dict(deep_merge(base, over))
    model = DistillNeRFModel(mcfg)
    if args.init:
        load_weights(model, args.init)
    render_hw = model.renderer.render_hw(tuple(mcfg.image_hw))
    dataset = NuScenesDataset(root, version, image_size=tuple(mcfg.image_hw), render_size=render_hw, load_next=True)
    batch = collate_samples([dataset[0]])
    step_module = TrainStep(model, DistillNeRFLoss(LossConfig(rgb_ssim=args.ssim)))
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.Adam(params, lr=args.lr, betas=(0.0, 0.99))
    budget = 60.0 * args.minutes
    est_steps = args.max_steps
    t0 = time.perf_counter()
    step = 0
    model.train()
    while step < args.max_steps and time.perf_counter() - t0 < budget:
        # cosine decay over the time budget (the step count is unknown in advance on a shared CPU)
        frac = min(1.0, (time.perf_counter() - t0) / budget) if est_steps >= 100000 else step / est_steps
        for g in opt.param_groups:
            warm = min(1.0, (step + 1) / args.warmup) if args.warmup else 1.0
            g["lr"] = warm * args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        total, terms, _ = step_module(batch)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 35.0)
        opt.step()
        step += 1
        if step % 25 == 0 or step == 1:
            print(f"step {step:5d}  {time.perf_counter() - t0:6.0f} s  loss {float(total.detach()):.4f}  "
                  + "  ".join(f"{k} {float(v):.4f}" for k, v in terms.items()), flush=True)
    minutes = (time.perf_counter() - t0) / 60.0
    result = evaluate(model, dataset, images_dir=args.work / "images", num_images=1, progress=False)
    m = result["metrics"]
    header = (f"real keyframe PER-FRAME FIT (trained and evaluated on the same frame) {datetime.date.today()} "
              f"{os.cpu_count()} CPU cores, {args.threads} threads, torch {torch.__version__}; "
              f"config {portable(args.init) if args.init else args.config} render_scale {mcfg.renderer.render_scale}, "
              f"{step} steps in {minutes:.1f} min, "
              f"lr {args.lr} cosine, image {mcfg.image_hw[1]}x{mcfg.image_hw[0]}, render {render_hw[1]}x{render_hw[0]}")
    print("\n" + header)
    print(format_table(m, result["details"]))
    ok_psnr, ok_depth = (m["psnr"] or 0) >= 30.0, (m["abs_rel"] or 1e9) <= 0.15
    print(f"target PSNR >= 30: {'met' if ok_psnr else 'NOT met'}; target LiDAR AbsRel <= 0.15: "
          f"{'met' if ok_depth else 'NOT met'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"header": header, "steps": step, "minutes": minutes, **m,
                                         "provenance": started}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
