#!/usr/bin/env python3
"""ScenePredictor (what the ROS node calls) on the bundled real keyframe: 6 x 1600x900 JPEGs, bundled model.

    python benchmarks/keyframe_predictor.py [--device cuda] [--precision fp32 bf16 ...] [--iters 20] [--json OUT]

Times `predict` per output set (depth only, depth + RGB + occupancy, occupancy only) after warm-up. The
JPEGs are decoded once, outside the timing, as in the node (decoding is the node's input path, not the
model's). Needs only numpy, Pillow, torch and safetensors (no nuscenes-devkit: the tables are read as
JSON).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from distillnerf_core.data.nuscenes_tables import NUSCENES_CAMERAS, load_sensor_records  # noqa: E402
from distillnerf_core.inference import ScenePredictor  # noqa: E402
from distillnerf_core.provenance import command_line, portable, provenance  # noqa: E402

OUTPUTS = {"depth_only": dict(depth=True, rgb=False, occupancy=False),
           "full": dict(depth=True, rgb=True, occupancy=True),
           "occupancy_only": dict(depth=False, rgb=False, occupancy=True)}


def load_keyframe(dataroot: Path) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """The six keyframe camera images (RGB uint8), intrinsics and ego_from_camera, in nuScenes order."""
    records = [r for r in load_sensor_records(dataroot) if r.modality == "camera" and r.is_key_frame]
    by_channel = {r.channel: r for r in records}
    cams = [by_channel[c] for c in NUSCENES_CAMERAS if c in by_channel]
    images = [np.asarray(Image.open(r.path).convert("RGB")) for r in cams]
    return images, [r.intrinsics for r in cams], [r.ego_from_sensor for r in cams]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataroot", type=Path, default=REPO / "data" / "nuscenes_sample")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "default" / "model.safetensors")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="torch.compile the static stages (ScenePredictor"
                        "(compile=True)); the first warm-up call compiles and is reported as first_call_ms")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    images, Ks, extrinsics = load_keyframe(args.dataroot)
    results = {"cameras": len(images), "image_hw": list(images[0].shape[:2]), "model": portable(args.model),
               "torch_version": torch.__version__, "compiled": args.compile, "runs": {},
               "provenance": provenance(command_line("python benchmarks/keyframe_predictor.py", argv),
                                        model=portable(args.model), data=portable(args.dataroot))}
    for precision in args.precision:
        try:
            predictor = ScenePredictor(args.model, args.device, precision, compile=args.compile)
        except ValueError as err:
            results["runs"][precision] = {"skipped": str(err)}
            print(f"{precision}: skipped ({err})")
            continue
        results["device"] = (torch.cuda.get_device_name(predictor.device) if predictor.device.type == "cuda"
                             else "cpu")
        runs = {}
        for name, outputs in OUTPUTS.items():
            start = time.perf_counter()
            predictor.predict(images, Ks, extrinsics, **outputs)
            first_call_ms = 1000.0 * (time.perf_counter() - start)
            for _ in range(args.warmup - 1):
                predictor.predict(images, Ks, extrinsics, **outputs)
            times, model_ms, stages = [], [], []
            for _ in range(args.iters):
                start = time.perf_counter()
                out = predictor.predict(images, Ks, extrinsics, **outputs)
                times.append(1000.0 * (time.perf_counter() - start))
                model_ms.append(out.model_ms)
                stages.append(out.stage_ms)
            runs[name] = {
                "call_ms_median": statistics.median(times),  # predict() end to end: resize, model, outputs
                "model_ms_median": statistics.median(model_ms),  # FramePrediction.model_ms (what the node logs)
                "call_ms_all": times,
                "first_call_ms": first_call_ms,
                "compile_errors": dict(predictor.model.compile_errors),
                "stage_ms": {k: statistics.median([s.get(k, 0.0) for s in stages]) for k in stages[-1]},
                "depth_median_m": float(np.median(out.depth)) if out.depth is not None else None,
                "occupied_voxels": int(len(out.voxel_centers)) if out.voxel_centers is not None else None,
            }
            print(f"{precision} {name:15s} predict median {runs[name]['call_ms_median']:8.1f} ms"
                  f"  stages {', '.join(f'{k} {v:.1f}' for k, v in runs[name]['stage_ms'].items())}")
        results["runs"][precision] = runs
        if args.json:  # after every precision: a time limit that stops the script keeps what was measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
