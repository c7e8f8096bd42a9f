#!/usr/bin/env python3
"""Top kernels (torch.profiler) of one training step or no-grad forward of a config on random images.

    python benchmarks/profile_step.py --config paper --mode train --precision fp32 --device cuda --out DIR

Writes DIR/profile_<config>_<mode>_<precision>.txt (the key_averages table sorted by device time on CUDA,
CPU time otherwise) and .json (the top rows: name, calls, self device / CPU time in ms per step).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from distillnerf_core.benchmarking import PRECISIONS, synchronize  # noqa: E402
from distillnerf_core.model.cameras import ring_rig  # noqa: E402
from distillnerf_core.model.distillnerf import DistillNeRFModel, ModelConfig  # noqa: E402
from distillnerf_core.training.losses import DistillNeRFLoss  # noqa: E402
from distillnerf_core.training.trainer import TrainStep, optimizer_step  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="paper")
    parser.add_argument("--mode", default="train", choices=["train", "infer"])
    parser.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    cfg = ModelConfig.load(args.config)
    model = DistillNeRFModel(cfg).to(dev)
    hw = tuple(cfg.image_hw)
    rig = ring_rig(6, hw).to(dev)
    images = torch.rand(1, 6, 3, *hw, device=dev)
    amp = PRECISIONS[args.precision] if args.precision != "fp32" else None
    if args.mode == "train":
        model.train()
        data = {"images": images, "intrinsics": rig.intrinsics, "cam2ego": rig.cam2ego,
                "lidar_depth": 2.0 + 40.0 * torch.rand(1, 6, *model.renderer.render_hw(hw), device=dev)}
        step = TrainStep(model, DistillNeRFLoss())
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=2e-4, betas=(0.0, 0.99))
        scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)

        def run() -> None:
            optimizer_step(step, data, opt, scaler, params, 35.0, amp, dev.type)
    else:
        model.eval()

        def run() -> None:
            with torch.no_grad(), torch.autocast(dev.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                model(images, rig.intrinsics, rig.cam2ego)

    for _ in range(args.warmup):
        run()
    synchronize(dev)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            run()
        synchronize(dev)
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages()
    table = averages.table(sort_by=key, row_limit=args.rows)
    name = f"profile_{args.config}_{args.mode}_{args.precision}"
    args.out.mkdir(parents=True, exist_ok=True)
    header = f"{args.config} {args.mode} {args.precision} on {args.device}, {args.steps} steps, sorted by {key}\n"
    (args.out / f"{name}.txt").write_text(header + table + "\n")

    def per_step(us: float) -> float:
        return us / 1000.0 / args.steps

    rows = []
    for event in averages:
        device_us = getattr(event, "self_device_time_total", None)
        if device_us is None:
            device_us = getattr(event, "self_cuda_time_total", 0.0)
        rows.append({"name": event.key, "calls_per_step": event.count / args.steps,
                     "self_device_ms_per_step": per_step(device_us),
                     "self_cpu_ms_per_step": per_step(event.self_cpu_time_total)})
    sort = "self_device_ms_per_step" if dev.type == "cuda" else "self_cpu_ms_per_step"
    rows.sort(key=lambda r: r[sort], reverse=True)
    total = sum(r[sort] for r in rows)
    summary = {"config": args.config, "mode": args.mode, "precision": args.precision, "device": args.device,
               "steps": args.steps, "sorted_by": sort, "total_ms_per_step": total, "top": rows[: args.rows]}
    (args.out / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(header + "\n".join(f"{r[sort]:9.2f} ms  {r['calls_per_step']:7.1f} calls  {r['name']}"
                             for r in rows[:15]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
