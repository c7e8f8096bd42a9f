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
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
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


# Ops after which the host must read device data (a result size or a value) before it can go on.
HOST_SYNC_OPS = ("nonzero", "_local_scalar_dense", "unique", "_unique", "_unique2", "unique_dim",
                 "unique_consecutive", "masked_select", "argwhere", "item")


class HostSyncRecorder(TorchDispatchMode):
    """Records every dispatched op that would make the host wait for the device (`HOST_SYNC_OPS`, boolean-mask
    indexing), plus `.tolist()` / `.numpy()` calls (host reads that bypass the dispatcher on the CPU): the CPU
    proxy for `torch.cuda.set_sync_debug_mode("error")`. Use as a context manager; `syncs` lists what ran."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []
        self._patched: dict[str, Any] = {}

    def __enter__(self) -> HostSyncRecorder:
        for method in ("tolist", "numpy"):
            original = getattr(torch.Tensor, method)
            self._patched[method] = original

            def recording(tensor: torch.Tensor, *args: Any, _name: str = method, _orig: Any = original,
                          **kwargs: Any) -> Any:
                self.syncs.append(f"Tensor.{_name}")
                return _orig(tensor, *args, **kwargs)

            setattr(torch.Tensor, method, recording)
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        for method, original in self._patched.items():
            setattr(torch.Tensor, method, original)
        self._patched.clear()
        super().__exit__(*exc)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = func.__name__.split(".")[0]
        if name in HOST_SYNC_OPS:
            self.syncs.append(str(func))
        elif name == "index" and len(args) > 1 and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1]):
            self.syncs.append(f"{func} (boolean mask)")
        return func(*args, **(kwargs or {}))


@contextmanager
def sync_free_policy() -> Iterator[None]:
    """Run the no-grad model with the GPU's sync-free choices on any device: no compaction of hits or weighted
    samples (`compaction_pays` False), as a GPU forward without grad runs; the CPU's results are the same."""
    from distillnerf_core.model import renderer, voxels

    saved = renderer.compaction_pays, voxels.compaction_pays
    renderer.compaction_pays = voxels.compaction_pays = lambda table: False
    try:
        yield
    finally:
        renderer.compaction_pays, voxels.compaction_pays = saved
