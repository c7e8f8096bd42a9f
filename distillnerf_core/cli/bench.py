"""`distillnerf-bench`: latency, per-stage time, memory and sizes of a no-grad forward on random images.

Uses a synthetic ring of outward-looking cameras; weights are random, so occupancy statistics (points,
voxels) describe an untrained model.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from distillnerf_core import configs
from distillnerf_core.model.cameras import ring_rig
from distillnerf_core.model.distillnerf import STAGES, DistillNeRFModel, ModelConfig


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB (process peak RSS)


def run_benchmark(
    config: str, device: str = "cpu", cameras: int = 6, iters: int = 5, warmup: int = 1, seed: int = 0
) -> dict[str, Any]:
    """Time `iters` no-grad forwards after `warmup` ones; returns the JSON-able result dict."""
    torch.manual_seed(seed)
    dev = torch.device(device)
    cfg = ModelConfig.load(config)
    model = DistillNeRFModel(cfg).to(dev).eval()
    model.profile_stages = True
    hw = tuple(cfg.image_hw)
    rig = ring_rig(cameras, hw).to(dev)
    images = torch.rand(1, cameras, 3, *hw, device=dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    latencies, stages = [], {s: [] for s in STAGES}
    with torch.no_grad():
        for i in range(warmup + iters):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            start = time.perf_counter()
            out = model(images, rig.intrinsics, rig.cam2ego)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i >= warmup:
                latencies.append(1000.0 * (time.perf_counter() - start))
                for s in STAGES:
                    stages[s].append(model.stage_ms[s])
    ordered = sorted(latencies)
    return {
        "config": config,
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "cameras": cameras,
        "image_hw": list(hw),
        "render_hw": list(model.renderer.render_hw(hw)),
        "iters": iters,
        "warmup": warmup,
        "latency_ms_median": statistics.median(latencies),
        "latency_ms_p90": ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))],
        "latency_ms_all": latencies,
        "stage_ms": {s: statistics.median(v) for s, v in stages.items()},
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "peak_mem_mb": _peak_mem_mb(dev),
        "points_lifted": out.points_lifted,
        "voxels_occupied": out.voxels_occupied,
        "depth_bins": model.lift.num_bins,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def _table(result: dict[str, Any]) -> str:
    rows = [
        ("config", result["config"]),
        ("device", result["device"]),
        ("cameras x HxW", f"{result['cameras']} x {result['image_hw']}"),
        ("latency median / p90 ms", f"{result['latency_ms_median']:.1f} / {result['latency_ms_p90']:.1f}"),
        *((f"  {k} ms", f"{v:.1f}") for k, v in result["stage_ms"].items()),
        ("params", f"{result['params']:,}"),
        ("peak mem MB", f"{result['peak_mem_mb']:.0f}"),
        ("points lifted", f"{result['points_lifted']:,}"),
        ("voxels occupied", str(result["voxels_occupied"])),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distillnerf-bench", description=__doc__)
    parser.add_argument("--config", default="small", help=f"one of {configs.MODEL_CONFIG_NAMES} or a YAML path")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the result JSON here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    result = run_benchmark(args.config, args.device, args.cameras, args.iters, args.warmup)
    print(_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
