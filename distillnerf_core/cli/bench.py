"""`distillnerf-bench`: latency, per-stage time and work floors, memory and sizes of the model on random images.

`--mode infer` times a no-grad forward; `--mode train` times a full training step (forward, the default
loss, backward, grad clip, Adam; a GradScaler with fp16). `--precision bf16|fp16` runs under autocast. Each
stage's time is printed beside its floor (FLOPs and minimum bytes over the device's measured peaks, see
`distillnerf_core/benchmarking.py`).

`--scene random` (default) uses a synthetic ring of outward-looking cameras, random pixels and random weights,
so occupancy statistics (points, voxels) describe an untrained model: few voxels, most render samples empty.
`--scene realistic` runs on the bundled real keyframe (data/nuscenes_sample: its 6 images, calibration and
LiDAR depth targets) with trained weights, so the field has a trained model's occupancy: `--weights`, else
the bundled model (models/default) when its config is the one benchmarked, else the random init after
`--fit-steps` depth-supervised Adam steps on that keyframe (done before the timing, reported as `weights`).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from distillnerf_core import configs
from distillnerf_core.benchmarking import (
    PRECISIONS,
    floor_ms,
    measure_peaks,
    nbytes,
    stage_bytes,
    stage_flops,
    synchronize,
)
from distillnerf_core.cli import configure_logging
from distillnerf_core.model.cameras import CameraRig, ring_rig
from distillnerf_core.model.distillnerf import STAGES, DistillNeRFModel, ModelConfig
from distillnerf_core.provenance import command_line, provenance
from distillnerf_core.training.losses import DistillNeRFLoss
from distillnerf_core.training.trainer import TrainStep, optimizer_step


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB (process peak RSS)


def _median_p90(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(values), ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]


SCENES = ("random", "realistic")
_FITTED: dict[tuple[str, int, str, int], dict[str, torch.Tensor]] = {}  # fitted weights per (config, steps, ...)
_KEYFRAMES: dict[tuple[tuple[int, int], tuple[int, int]], dict[str, Any]] = {}  # keyframe samples per sizes
BUNDLED_MODEL = Path(__file__).resolve().parents[2] / "models" / "default" / "model.safetensors"


def keyframe_batch(image_hw: tuple[int, int], render_hw: tuple[int, int], batch: int, work: Path) -> dict[str, Any]:
    """The bundled real keyframe as a training batch (images, intrinsics, cam2ego, LiDAR depth at render size),
    repeated `batch` times; `work` receives the devkit-loadable dataroot (links to the bundled files). Loaded
    once per sizes and process (gpu_bench_all runs several modes on it)."""
    from distillnerf_core.data.datasets import NuScenesDataset, collate_samples
    from distillnerf_core.data.nuscenes_sample import build_dataroot

    key = (tuple(image_hw), tuple(render_hw))
    if key not in _KEYFRAMES:
        root = build_dataroot(out=work, link=True)
        dataset = NuScenesDataset(root, "v1.0-test", image_size=image_hw, render_size=render_hw, load_next=False,
                                  sky_mask="none")
        _KEYFRAMES[key] = dataset[0]
    sample = collate_samples([_KEYFRAMES[key]] * batch)
    return {k: sample[k] for k in ("images", "intrinsics", "cam2ego", "lidar_depth")}


def fit_to_batch(model: DistillNeRFModel, data: dict[str, Any], steps: int, lr: float = 1e-3) -> None:
    """`steps` Adam steps of the default loss on one batch: enough depth supervision for the lift to spread
    its points over the scene's surfaces (a trained model's occupancy), far from a converged model."""
    model.train()
    step_module = TrainStep(model, DistillNeRFLoss())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    for _ in range(steps):
        optimizer_step(step_module, data, optimizer, scaler, params, 35.0, None, data["images"].device.type)


def realistic_model(config: str, weights: str | Path | None, fit_steps: int, dev: torch.device
                    ) -> tuple[DistillNeRFModel, str]:
    """The trained model of the realistic scene and a description of its weights (see the module docstring)."""
    from distillnerf_core.training.checkpoints import load_checkpoint, read_metadata

    if weights is None and BUNDLED_MODEL.is_file() and read_metadata(BUNDLED_MODEL)["config"]["name"] == config:
        weights = BUNDLED_MODEL
    if weights is not None:
        model = load_checkpoint(weights, dev)
        if model.config.name != config:
            raise ValueError(f"--weights {weights} hold a '{model.config.name}' model, not '{config}'")
        label = "the bundled model (models/default)" if Path(weights) == BUNDLED_MODEL else "checkpoint"
        return model, label
    model = DistillNeRFModel(ModelConfig.load(config)).to(dev)
    return model, f"random init + {fit_steps} Adam steps (lr 1e-3, default loss) on the bundled keyframe"


def run_benchmark(
    config: str, device: str = "cpu", cameras: int = 6, iters: int = 5, warmup: int = 1, seed: int = 0,
    mode: str = "infer", precision: str = "fp32", batch: int = 1, floors: bool = True, compile: bool = False,
    scene: str = "random", weights: str | Path | None = None, fit_steps: int = 100,
) -> dict[str, Any]:
    """Time `iters` forwards (infer) or training steps (train) after `warmup`; returns the JSON-able result."""
    if mode not in ("infer", "train"):
        raise ValueError(f"mode must be infer or train, got {mode!r}")
    if scene not in SCENES:
        raise ValueError(f"scene must be one of {SCENES}, got {scene!r}")
    if scene == "realistic" and cameras != 6:
        raise ValueError(f"the realistic scene is the bundled keyframe's 6 cameras, not {cameras}")
    if fit_steps < 0:
        raise ValueError(f"fit_steps must be >= 0, got {fit_steps}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    dev = torch.device(device)
    if precision == "fp16" and dev.type != "cuda":
        raise ValueError("precision fp16 needs CUDA (CPU autocast runs bf16)")
    if dev.type == "cuda":  # "fp32" on NVIDIA means TF32 matmuls / convs, as in the baseline
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(seed)
    weights_label, keyframe = "random", None
    if scene == "realistic":
        model, weights_label = realistic_model(config, weights, fit_steps, dev)
        cfg = model.config
        hw = tuple(cfg.image_hw)
        with tempfile.TemporaryDirectory() as work:
            keyframe = {k: v.to(dev) for k, v in
                        keyframe_batch(hw, model.renderer.render_hw(hw), batch, Path(work)).items()}
        if weights_label.startswith("random init"):
            key = (config, fit_steps, str(dev), batch)
            if key not in _FITTED:  # one fit per config and process (gpu_bench_all runs several modes)
                fit_to_batch(model, keyframe, fit_steps)
                _FITTED[key] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(_FITTED[key])
        rig = CameraRig(keyframe["intrinsics"], keyframe["cam2ego"], hw)
        images = keyframe["images"]
    else:
        cfg = ModelConfig.load(config)
        model = DistillNeRFModel(cfg).to(dev)
        hw = tuple(cfg.image_hw)
        rig = ring_rig(cameras, hw, batch_size=batch).to(dev)
        images = torch.rand(batch, cameras, 3, *hw, device=dev)
    if compile:
        model.compile_stages()
    amp_dtype = PRECISIONS[precision] if precision != "fp32" else None

    def autocast() -> torch.autocast:
        return torch.autocast(dev.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None)

    if mode == "infer":
        model.eval()

        def run() -> Any:
            with torch.no_grad(), autocast():
                return model(images, rig.intrinsics, rig.cam2ego)
    else:
        model.train()
        render_hw = model.renderer.render_hw(hw)
        data = keyframe or {"images": images, "intrinsics": rig.intrinsics, "cam2ego": rig.cam2ego,
                            "lidar_depth": 2.0 + 40.0 * torch.rand(batch, cameras, *render_hw, device=dev)}
        step_module = TrainStep(model, DistillNeRFLoss())
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=2e-4, betas=(0.0, 0.99))
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

        def run() -> Any:
            return optimizer_step(step_module, data, optimizer, scaler, params, 35.0, amp_dtype, dev.type)[2]

    cpu_ms: list[float] = []  # process CPU time per call: on a shared CPU less load-sensitive than the wall time

    def timed(n: int, stages: bool) -> tuple[list[float], dict[str, list[float]], Any]:
        model.profile_stages = stages
        times, per_stage, out = [], {s: [] for s in STAGES}, None
        cpu_ms.clear()
        for _ in range(n):
            synchronize(dev)
            start, cpu = time.perf_counter(), time.process_time()
            out = run()
            synchronize(dev)
            times.append(1000.0 * (time.perf_counter() - start))
            cpu_ms.append(1000.0 * (time.process_time() - cpu))
            for s in STAGES:
                per_stage[s].append(model.stage_ms.get(s, 0.0))
        return times, per_stage, out

    first_call_ms = timed(1, False)[0][0]  # with --compile: includes compiling the static stages
    timed(max(0, warmup - 1), False)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    # On CUDA the per-stage synchronisation slows the whole, so stages get their own pass.
    latencies, stages, out = timed(iters, dev.type != "cuda")
    cpu_median = statistics.median(cpu_ms)
    if dev.type == "cuda":
        _, stages, _ = timed(iters, True)
    model.profile_stages = False
    median, p90 = _median_p90(latencies)
    stage_ms = {s: statistics.median(v) for s, v in stages.items()}
    result: dict[str, Any] = {
        "config": config,
        "mode": mode,
        "scene": scene,
        "weights": weights_label,
        "precision": precision,
        "batch": batch,
        "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "cameras": cameras,
        "image_hw": list(hw),
        "render_hw": list(model.renderer.render_hw(hw)),
        "iters": iters,
        "warmup": warmup,
        "latency_ms_median": median,
        "latency_ms_p90": p90,
        "latency_ms_all": latencies,
        "process_cpu_ms_median": cpu_median,
        "images_per_s": 1000.0 * batch * cameras / median,
        "stage_ms": stage_ms,
        "stage_ms_note": "train: the forward's stages (with grad); the rest of the step is backward + Adam"
        if mode == "train" else "no-grad forward",
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "peak_mem_mb": _peak_mem_mb(dev),
        "points_lifted": out.points_lifted,
        "voxels_occupied": out.voxels_occupied,
        "depth_bins": model.lift.num_bins,
        "tf32": dev.type == "cuda",
        "compiled": compile,
        "compile_errors": dict(model.compile_errors),
        "first_call_ms": first_call_ms,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    if floors and not compile:  # the floors do not depend on compilation (and the FLOP counter traces eagerly)
        result.update(_floors(model, images, rig, run, mode, dev, amp_dtype, autocast, latencies, stage_ms))
    return result


def _floors(model: DistillNeRFModel, images: torch.Tensor, rig: Any, run: Any, mode: str, dev: torch.device,
            amp_dtype: torch.dtype | None, autocast: Any, latencies: list[float], stage_ms: dict[str, float]
            ) -> dict[str, Any]:
    """FLOPs and minimum bytes per stage (forward) and for the whole forward / training step."""
    peaks = measure_peaks(dev, amp_dtype or torch.float32)
    was_training = model.training
    model.eval() if mode == "infer" else None
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), autocast(), counter:
        scene = model.encode(images, rig.intrinsics, rig.cam2ego)
        views = model.render(scene, rig)
    model.train(was_training)
    flops = stage_flops(counter, model)
    moved = stage_bytes(model, images, scene, views)
    per_stage = {}
    for s in STAGES:
        f = floor_ms(flops[s], moved[s], peaks)
        per_stage[s] = {"gflop": flops[s] / 1e9, "mbytes": moved[s] / 1e6, "floor_ms": f,
                        "measured_ms": stage_ms[s], "measured_over_floor": stage_ms[s] / f if f > 0 else None}
    total_flops, total_bytes = sum(flops.values()), sum(moved.values())
    note = "forward: matmul/conv FLOPs (FlopCounterMode), each stage's inputs + outputs + weights once"
    if mode == "train":
        step_counter = FlopCounterMode(display=False)
        with step_counter:
            run()
        total_flops = step_counter.get_total_flops()
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        # backward reads and writes about twice the forward's activations; Adam reads p, g, m, v, writes p, m, v
        total_bytes = 3 * total_bytes + 7 * 4 * params
        note = ("train step: FLOPs counted over forward + backward; bytes = 3 x the forward's minimum + Adam's "
                "7 fp32 tensors of the trainable parameters")
    total_floor = floor_ms(total_flops, total_bytes, peaks)
    median = statistics.median(latencies)
    return {
        "peaks": peaks,
        "floors": per_stage,
        "total": {"gflop": total_flops / 1e9, "mbytes": total_bytes / 1e6, "floor_ms": total_floor,
                  "measured_ms": median, "measured_over_floor": median / total_floor if total_floor > 0 else None},
        "floor_note": note,
        "output_mbytes": nbytes([views.rgb, views.depth]) / 1e6,
    }


def _table(result: dict[str, Any]) -> str:
    rows = [
        ("config / mode / precision", f"{result['config']} / {result['mode']} / {result['precision']}"),
        ("scene / weights", f"{result['scene']} / {result['weights']}"),
        ("device", result["device"]),
        ("batch x cameras x HxW", f"{result['batch']} x {result['cameras']} x {result['image_hw']}"),
        ("latency median / p90 ms", f"{result['latency_ms_median']:.1f} / {result['latency_ms_p90']:.1f}"),
        ("process CPU ms median", f"{result['process_cpu_ms_median']:.1f}"),
        ("images per s", f"{result['images_per_s']:.1f}"),
    ]
    floors = result.get("floors")
    for k, v in result["stage_ms"].items():
        if floors:
            f = floors[k]
            ratio = f"{f['measured_over_floor']:.0f}x" if f["measured_over_floor"] else "-"
            rows.append((f"  {k} ms", f"{v:8.1f}   {f['gflop']:8.2f} GFLOP {f['mbytes']:8.1f} MB  floor "
                                      f"{f['floor_ms']:.3f} ms  ({ratio} floor)"))
        else:
            rows.append((f"  {k} ms", f"{v:.1f}"))
    if floors:
        t, pk = result["total"], result["peaks"]
        rows.append(("total floor", f"{t['gflop']:.2f} GFLOP, {t['mbytes']:.1f} MB -> {t['floor_ms']:.3f} ms; "
                                    f"measured {t['measured_over_floor']:.0f}x floor"))
        rows.append(("measured peaks", f"{pk['matmul_tflops']:.2f} TFLOP/s ({pk['matmul_dtype']} matmul), "
                                       f"{pk['copy_gbs']:.0f} GB/s copy"))
    if result.get("compiled"):
        rows.append(("compiled", f"first call {result['first_call_ms'] / 1000:.1f} s; "
                                 f"failed: {result['compile_errors'] or 'none'}"))
    rows += [
        ("params", f"{result['params']:,}"),
        ("peak mem MB", f"{result['peak_mem_mb']:.0f}"),
        ("points lifted", f"{result['points_lifted']:,}"),
        ("voxels occupied", str(result["voxels_occupied"])),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = argparse.ArgumentParser(prog="distillnerf-bench", description=__doc__)
    parser.add_argument("--config", default="small", help=f"one of {configs.MODEL_CONFIG_NAMES} or a YAML path")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--mode", default="infer", choices=["infer", "train"],
                        help="infer: no-grad forward; train: forward + loss + backward + Adam step")
    parser.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS),
                        help="autocast dtype (fp16 needs CUDA; fp32 on CUDA uses TF32)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--no-floors", action="store_true", help="skip FLOP / byte counting and peak measurement")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the encoder, lift and RGB decoder (first call compiles; no floors)")
    parser.add_argument("--scene", default="random", choices=SCENES,
                        help="random: ring rig, random pixels and weights; realistic: the bundled real keyframe with "
                             "trained weights (a trained model's occupancy; see --weights, --fit-steps)")
    parser.add_argument("--weights", type=Path, help="realistic scene: a checkpoint of --config's model "
                        "(default: the bundled model if its config is --config, else --fit-steps from random init)")
    parser.add_argument("--fit-steps", type=int, default=100,
                        help="realistic scene without weights for --config: Adam steps on the keyframe first")
    parser.add_argument("--json", type=Path, help="write the result JSON here")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    try:
        result = run_benchmark(args.config, args.device, args.cameras, args.iters, args.warmup, mode=args.mode,
                               precision=args.precision, batch=args.batch, floors=not args.no_floors,
                               compile=args.compile, scene=args.scene, weights=args.weights,
                               fit_steps=args.fit_steps)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(_table(result))
    if args.json:
        if args.scene == "realistic":
            model, data = (f"{result['weights']} (`{args.config}` config)",
                           f"the bundled real keyframe (data/nuscenes_sample): batch {args.batch} x 6 cameras at "
                           f"{result['image_hw'][1]}x{result['image_hw'][0]}, its LiDAR depth as the step's target")
        else:
            model, data = (f"random weights (`{args.config}` config)",
                           f"random images: batch {args.batch} x {args.cameras} cameras at {result['image_hw'][1]}x"
                           f"{result['image_hw'][0]} (a synthetic ring rig)")
        result["provenance"] = provenance(command_line("distillnerf-bench", argv), model=model, data=data)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
