"""perception_node's own work per 6-camera frame, without DDS: where the in-node time outside the model goes.

Runs the node's functions in the node's order on the real keyframe (6 JPEGs 1600x900 + CameraInfo, the bundled
model, the occupancy output as in node_latency.py): RigFrame.decode (JPEG at the DCT reduction for the model,
intrinsics) serially and on the node's decode pool, in alternating rounds so that background load on a shared
machine hits both alike; ScenePredictor.predict, and inside its model_ms the resize of the inputs;
PerceptionOutputs.wanted / publish_prediction / publish_timing on an active lifecycle node (no subscriber:
message building, serialisation and the DDS write, not the transfer). Prints per-step medians (ms).

    .venv/bin/python benchmarks/node_overhead.py [--dataroot data/nuscenes_sample] [--iters 20] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import rclpy
from rclpy.lifecycle import LifecycleNode
from std_msgs.msg import Header

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distillnerf_core.data.nuscenes_tables import load_sensor_records  # noqa: E402
from distillnerf_core.inference import FramePrediction, ScenePredictor  # noqa: E402
from distillnerf_core.provenance import command_line, model_identity, portable, provenance  # noqa: E402
from distillnerf_ros.conversions.nuscenes_messages import camera_messages  # noqa: E402
from distillnerf_ros.input.rig_input import RigFrame, decode_pool  # noqa: E402
from distillnerf_ros.nodes.perception_outputs import PerceptionOutputs  # noqa: E402
from distillnerf_ros.nodes.perception_parameters import bundled_model_path  # noqa: E402


def keyframe(dataroot: str) -> tuple[list, list]:
    """The first sample's camera records and their (CompressedImage, CameraInfo) messages."""
    records = [r for r in load_sensor_records(dataroot) if r.modality == "camera"]
    records = [r for r in records if r.sample_token == records[0].sample_token]
    return records, [camera_messages(r) for r in records]


def rig_frame(records: list, messages: list) -> RigFrame:
    """A RigFrame as the rig input hands it to the worker (messages not decoded yet)."""
    return RigFrame(stamp_ns=0, output_frame="base_link", cameras=[r.channel for r in records],
                    frame_ids=[m[0].header.frame_id for m in messages], stamps_ns=[0] * len(records),
                    messages=[m[0] for m in messages], infos=[m[1] for m in messages],
                    output_from_camera=[np.asarray(r.ego_from_sensor, dtype=np.float64) for r in records])


@contextmanager
def timing(samples: dict[str, list[float]], step: str) -> Iterator[None]:
    """Append the block's wall time (ms) to samples[step]."""
    started = time.perf_counter()
    yield
    samples.setdefault(step, []).append(1000.0 * (time.perf_counter() - started))


def measure_round(samples: dict[str, list[float]], frames: dict[str, RigFrame], pool: ThreadPoolExecutor,
                  predictor: ScenePredictor, outputs: PerceptionOutputs, serial_first: bool) -> FramePrediction:
    """One frame decoded each way (order alternating between rounds), then the node's steps after decode."""
    for mode in ("serial", "pool") if serial_first else ("pool", "serial"):
        with timing(samples, f"decode_{mode}"):
            frames[mode].decode(predictor.input_hw, pool if mode == "pool" else None)
    frame = frames["pool"]
    with timing(samples, "wanted"):
        outputs.wanted(frame.cameras, False)
    intrinsics = [k.K for k in frame.intrinsics]
    with timing(samples, "resize_inputs (inside model_ms)"):
        predictor._inputs(frame.images, intrinsics, frame.output_from_camera)
    with timing(samples, "predict (model_ms)"):
        prediction = predictor.predict(frame.images, intrinsics, frame.output_from_camera, depth=False,
                                       occupancy=True)
    with timing(samples, "publish_prediction"):
        outputs.publish_prediction(frame, prediction, Header(frame_id="base_link"), 0.5)
    with timing(samples, "publish_timing x4"):
        for name in outputs.debug:
            outputs.publish_timing(name, 1.0)
    return prediction


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataroot", default=str(REPO / "data" / "nuscenes_sample"))
    parser.add_argument("--iters", type=int, default=20, help="rounds (each: one serial + one pooled frame)")
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    load_at_start = os.getloadavg()[0]
    started = provenance(command_line(".venv/bin/python benchmarks/node_overhead.py"),
                         model=model_identity(bundled_model_path()),
                         data=f"{portable(args.dataroot)}: one sample's camera JPEGs")
    records, messages = keyframe(args.dataroot)
    predictor = ScenePredictor(bundled_model_path(), "cpu")
    rclpy.init()
    node = LifecycleNode("node_overhead_bench")
    outputs = PerceptionOutputs.create(node, [r.channel for r in records])
    node.trigger_configure()
    node.trigger_activate()  # lifecycle publishers publish only while active
    pool = decode_pool(len(records))  # None on one CPU: "pool" then decodes serially too
    samples: dict[str, list[float]] = {}
    for round_index in range(args.iters + 1):  # round 0 warms up (model, thread pools) and is not kept
        frames = {mode: rig_frame(records, messages) for mode in ("serial", "pool")}
        prediction = measure_round(samples, frames, pool, predictor, outputs, serial_first=bool(round_index % 2))
        if round_index == 0:
            samples.clear()
    pool.shutdown()
    node.destroy_node()
    rclpy.shutdown()

    medians = {step: statistics.median(values) for step, values in samples.items()}
    outside = ("wanted", "publish_prediction", "publish_timing x4")
    result = {"dataroot": portable(args.dataroot), "iters": args.iters, "cpu_count": os.cpu_count(),
              "cameras": len(records),
              "load_avg_1min": {"start": load_at_start, "end": os.getloadavg()[0]},  # the shared machine's other work
              "model_input_hw": list(predictor.input_hw), "decoded_hw": list(frames["pool"].images[0].shape[:2]),
              "voxels": len(prediction.voxel_centers), "median_ms": medians,
              "min_ms": {step: min(values) for step, values in samples.items()},
              "in_node_outside_model_ms": {mode: medians[f"decode_{mode}"] + sum(medians[s] for s in outside)
                                           for mode in ("serial", "pool")},
              "provenance": started}
    print(f"{'step':<34}{'median':>9}{'min':>9}   (ms, {args.iters} rounds, {os.cpu_count()} CPUs,"
          f" load {result['load_avg_1min']['start']:.1f} -> {result['load_avg_1min']['end']:.1f})")
    for step, value in medians.items():
        print(f"{step:<34}{value:>9.2f}{result['min_ms'][step]:>9.2f}")
    for mode, value in result["in_node_outside_model_ms"].items():
        print(f"in-node work outside the model, decode {mode}: {value:.1f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
