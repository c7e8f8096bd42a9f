"""Latency of perception_node on loopback DDS: cameras published at a fixed rate with live stamps.

Starts the node as its own process (as in deployment), publishes one nuScenes-format sample's 6 JPEGs +
CameraInfo (+ /tf_static) re-stamped with the current time at --hz, subscribes to the occupancy output so
the node works, and reports per frame: pipeline latency (image stamp -> output), model time, ROS overhead
(latency - model time), split into the input delay (image stamp -> worker start: DDS transport, sync and
waiting for the worker to finish the previous frame) and the in-node work outside the model (processing -
model time: JPEG decode, resize, message conversion and publishing), the drop rate and the node's RSS over
time. At a rate the model keeps up with (e.g. --hz 1) nothing waits, so the overhead is the ROS cost alone.

    .venv/bin/python benchmarks/node_latency.py [--dataroot data/nuscenes_sample] [--model M] [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, PointCloud2
from std_msgs.msg import Float64
from tf2_msgs.msg import TFMessage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from node_metrics import percentiles, rss_mb  # noqa: E402

from distillnerf_core.data.nuscenes_tables import load_sensor_records  # noqa: E402
from distillnerf_core.provenance import command_line, model_identity, portable, provenance  # noqa: E402
from distillnerf_ros.conversions.nuscenes_messages import camera_messages, static_tf_message  # noqa: E402
from distillnerf_ros.input.rig_input import TF_STATIC_QOS  # noqa: E402
from distillnerf_ros.tools.processes import stop_process  # noqa: E402

NODE = "/distillnerf_perception"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataroot", default=str(REPO / "data" / "nuscenes_sample"))
    parser.add_argument("--model", default="", help="checkpoint (default: the node's bundled model)")
    parser.add_argument("--hz", type=float, default=12.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--semantic-queries", nargs="+", default=[], metavar="TEXT",
                        help="set the node's semantic_queries (labels on ~/occupancy every frame)")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    started = provenance(
        command_line(".venv/bin/python benchmarks/node_latency.py"),
        model=model_identity(args.model or REPO / "models" / "default" / "model.safetensors"),
        data=f"{portable(args.dataroot)}: one sample's camera JPEGs + CameraInfo re-stamped with the current time at "
             f"{args.hz:g} Hz for {args.seconds:g} s")

    records = [r for r in load_sensor_records(args.dataroot) if r.modality == "camera"]
    first_sample = records[0].sample_token
    records = [r for r in records if r.sample_token == first_sample]
    node_cmd = [sys.executable, str(REPO / "scripts" / "perception_node"), "--ros-args", "--params-file",
                str(REPO / "config" / "perception.yaml"), "-p", "fixed_frame:=none", "-p", f"device:={args.device}",
                "-p", "input_reliability:=reliable"]
    if args.model:
        node_cmd += ["-p", f"model_path:={args.model}"]
    if args.semantic_queries:  # labelled every frame (the bundled model knows the oracle's class names)
        node_cmd += ["-p", "semantic_queries:=[" + ",".join(f"'{q}'" for q in args.semantic_queries) + "]"]
    node_process = subprocess.Popen(node_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rclpy.init()
    bench = rclpy.create_node("node_latency_bench")
    series: dict[str, list[float]] = {"latency": [], "model": [], "processing": [], "input_delay": []}
    counters: dict[str, str] = {}
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    for name, key in (("pipeline_latency_ms", "latency"), ("model_time_ms", "model"),
                      ("processing_time_ms", "processing"), ("input_delay_ms", "input_delay")):
        bench.create_subscription(Float64, f"{NODE}/debug/{name}", lambda m, k=key: series[k].append(m.data), 10)
    bench.create_subscription(PointCloud2, f"{NODE}/occupancy", lambda m: None, qos)

    def on_diagnostics(message: DiagnosticArray) -> None:
        for status in message.status:
            if status.name.startswith("distillnerf_perception"):
                counters.update({kv.key: kv.value for kv in status.values})
                counters["message"] = status.message

    bench.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    images = {r.channel: bench.create_publisher(CompressedImage, f"/{r.channel}/image_rect_compressed", qos)
              for r in records}
    infos = {r.channel: bench.create_publisher(CameraInfo, f"/{r.channel}/camera_info", qos) for r in records}
    bench.create_publisher(TFMessage, "/tf_static", TF_STATIC_QOS).publish(static_tf_message(records))
    messages = {r.channel: camera_messages(r) for r in records}

    deadline = time.monotonic() + 120
    while counters.get("message") != "active" and time.monotonic() < deadline:
        rclpy.spin_once(bench, timeout_sec=0.1)
    if counters.get("message") != "active":
        node_process.kill()
        print(f"the node did not become active: {counters} {node_process.stderr.read()[-2000:]}")
        return 1
    rss, sent = [], 0
    start = time.monotonic()
    next_frame = start
    while time.monotonic() - start < args.seconds:
        if time.monotonic() >= next_frame:
            stamp = bench.get_clock().now().to_msg()
            for channel, (image, info) in messages.items():
                image.header.stamp = info.header.stamp = stamp
                infos[channel].publish(info)
                images[channel].publish(image)
            sent += 1
            next_frame += 1.0 / args.hz
            if sent % int(args.hz) == 0:
                rss.append((time.monotonic() - start, rss_mb(node_process.pid)))
        rclpy.spin_once(bench, timeout_sec=max(0.0, min(0.01, next_frame - time.monotonic())))
    settle = time.monotonic() + 5
    while time.monotonic() < settle:
        rclpy.spin_once(bench, timeout_sec=0.1)
    stop_process(node_process)

    overhead = [lat - mod for lat, mod in zip(series["latency"], series["model"], strict=False)]
    in_node = [proc - mod for proc, mod in zip(series["processing"], series["model"], strict=False)]
    processed = int(counters.get("processed", 0))
    result = {
        "dataroot": portable(args.dataroot), "hz": args.hz, "seconds": args.seconds, "frames_sent": sent,
        "frames_processed": processed, "drop_rate": 1 - processed / sent if sent else None,
        "latency_ms": percentiles(series["latency"]), "model_ms": percentiles(series["model"]),
        "processing_ms": percentiles(series["processing"]), "ros_overhead_ms": percentiles(overhead),
        "input_delay_ms": percentiles(series["input_delay"]), "in_node_overhead_ms": percentiles(in_node),
        "rss_mb": rss, "device": counters.get("device"), "cpu_count": os.cpu_count(),
        "semantic_queries": args.semantic_queries, "semantic_status": counters.get("semantic_queries"),
        "provenance": started,
    }
    print(f"{'metric':<20}{'median':>10}{'p90':>10}{'max':>10}   (ms, {len(series['latency'])} frames)")
    for key in ("latency_ms", "model_ms", "processing_ms", "ros_overhead_ms", "input_delay_ms", "in_node_overhead_ms"):
        row = result[key]
        if row.get("n"):
            print(f"{key:<20}{row['median']:>10.1f}{row['p90']:>10.1f}{row['max']:>10.1f}")
    print(f"frames sent {sent} at {args.hz} Hz, processed {processed}, drop rate {result['drop_rate']:.1%}")
    if args.semantic_queries:
        print(f"semantic_queries: {counters.get('semantic_queries')}")
    if rss:
        print(f"node RSS {rss[0][1]:.0f} MB at {rss[0][0]:.0f} s -> {rss[-1][1]:.0f} MB at {rss[-1][0]:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
