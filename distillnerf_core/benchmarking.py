"""Per-stage work floors and timing helpers for `distillnerf-bench` and `benchmarks/gpu_check.sh`.

A stage's floor is the least time it could take on a device: max(FLOPs / peak FLOP/s, bytes / peak B/s).
FLOPs are counted by `torch.utils.flop_counter.FlopCounterMode` (matmuls and convolutions only, so
elementwise work is not in them: a lower bound); bytes are the stage's inputs, outputs and weights, each
read or written once (also a lower bound). The peaks are MEASURED on the device (a large matmul in the
benchmark's precision, a large copy), not datasheet numbers, so the ratio measured / floor says how far
a stage is from what this device demonstrably does.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from distillnerf_core.provenance import provenance as provenance  # re-exported: the benchmarks' results JSON

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# The model attribute whose module does each stage's matmuls (voxelize has none; the per-sample feature
# head runs inside the renderer's forward, so FlopCounterMode books it there).
STAGE_MODULES = {"encoder": "encoder", "lift": "lift", "voxelize": None, "sparse_conv": "sparse_cnn",
                 "render": "renderer", "decode": "decoder"}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def nbytes(tensors: Iterable[Any]) -> int:
    """Bytes of the tensors among `tensors` (None and non-tensors skipped)."""
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def param_bytes(module: nn.Module | None) -> int:
    return 0 if module is None else nbytes(module.parameters())


def stage_flops(counter: FlopCounterMode, model: nn.Module) -> dict[str, int]:
    """FLOPs per stage from a FlopCounterMode that ran around `model.encode` + `model.render` (called
    directly, so each stage module is a top-level entry named by its class)."""
    counts = counter.get_flop_counts()
    out = {}
    for stage, attr in STAGE_MODULES.items():
        name = type(getattr(model, attr)).__name__ if attr else None
        out[stage] = int(sum(counts.get(name, {}).values())) if name else 0
    return out


def stage_bytes(model: nn.Module, images: torch.Tensor, scene: Any, views: Any) -> dict[str, int]:
    """Minimum bytes each stage must move: its inputs and outputs once, plus its weights."""
    lift = scene.lift
    coarse, fine = scene.field.coarse, scene.field.fine
    lift_out = nbytes([lift.points, lift.values, lift.coarse_depth, lift.fine_depth])
    voxels_out = nbytes([coarse.keys, coarse.features, fine.keys, fine.features])
    n_feat = model.config.encoder.out_channels
    feat_map = images.shape[0] * images.shape[1] * n_feat * lift.coarse_depth.shape[-2] * lift.coarse_depth.shape[-1]
    feat_map_bytes = feat_map * images.element_size()
    render_out = nbytes([views.depth, views.opacity, views.weights, views.field_features, views.features])
    return {
        "encoder": nbytes([images]) + param_bytes(model.encoder) + feat_map_bytes,
        "lift": feat_map_bytes + param_bytes(model.lift) + lift_out,
        "voxelize": nbytes([lift.points, lift.values]) + voxels_out,
        "sparse_conv": 2 * nbytes([coarse.features]) + nbytes([fine.features]) + param_bytes(model.sparse_cnn),
        "render": voxels_out + render_out + param_bytes(model.feature_head),
        "decode": nbytes([views.field_features, views.depth]) + param_bytes(model.decoder) + nbytes([views.rgb]),
    }


def measure_peaks(device: torch.device, dtype: torch.dtype, matmul_n: int | None = None, copy_mb: int | None = None,
                  repeats: int = 5) -> dict[str, float]:
    """Demonstrated peaks on `device`: dense matmul FLOP/s in `dtype` and copy bandwidth (read + write)."""
    gpu = device.type == "cuda"
    n = matmul_n or (8192 if gpu else 1024)
    mb = copy_mb or (1024 if gpu else 128)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    flops = 2.0 * n**3 / best
    src = torch.empty(mb * 2**20 // 4, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    best_copy = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        best_copy = min(best_copy, time.perf_counter() - start)
    return {"matmul_tflops": flops / 1e12, "copy_gbs": 2 * src.numel() * 4 / best_copy / 1e9,
            "matmul_n": n, "copy_mb": mb, "matmul_dtype": str(dtype).replace("torch.", "")}


def floor_ms(flops: float, nbytes_: float, peaks: dict[str, float]) -> float:
    """max(FLOPs / peak FLOP/s, bytes / peak bandwidth) in milliseconds."""
    return 1000.0 * max(flops / (peaks["matmul_tflops"] * 1e12), nbytes_ / (peaks["copy_gbs"] * 1e9))
