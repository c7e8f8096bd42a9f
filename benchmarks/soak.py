"""Soak: loop the synthetic demo bag at real time into perception_node for M minutes.

Reports processed and dropped frames, latency percentiles and the node's RSS at start and end (target: RSS
growth < 5 % over 30 minutes, no crash, no growing queue).

    .venv/bin/python benchmarks/soak.py --minutes 30 [--model M] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Float64

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from node_metrics import percentiles, rss_mb  # noqa: E402

from distillnerf_ros.tools.demo import build_bags  # noqa: E402
from distillnerf_ros.tools.processes import stop_process  # noqa: E402

NODE = "/distillnerf_perception"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--model", default="")
    parser.add_argument("--out", type=Path, default=REPO / "demo_out")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    bag = build_bags(args.out)["synthetic"]
    node_cmd = [sys.executable, str(REPO / "scripts" / "perception_node"), "--ros-args", "--params-file",
                str(REPO / "config" / "perception.yaml"), "-p", "use_sim_time:=true"]
    if args.model:
        node_cmd += ["-p", f"model_path:={args.model}"]
    node = subprocess.Popen(node_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rclpy.init()
    bench = rclpy.create_node("soak_bench")
    latency, processing, model, counters = [], [], [], {}
    bench.create_subscription(Float64, f"{NODE}/debug/pipeline_latency_ms", lambda m: latency.append(m.data), 10)
    bench.create_subscription(Float64, f"{NODE}/debug/processing_time_ms", lambda m: processing.append(m.data), 10)
    bench.create_subscription(Float64, f"{NODE}/debug/model_time_ms", lambda m: model.append(m.data), 10)
    bench.create_subscription(PointCloud2, f"{NODE}/occupancy", lambda m: None,
                              QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))

    def on_diagnostics(message: DiagnosticArray) -> None:
        for status in message.status:
            if status.name.startswith("distillnerf_perception"):
                counters.update({kv.key: kv.value for kv in status.values}, message=status.message)

    bench.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    deadline = time.monotonic() + 120
    while counters.get("message") != "active" and time.monotonic() < deadline and node.poll() is None:
        rclpy.spin_once(bench, timeout_sec=0.1)
    if counters.get("message") != "active":
        node.kill()
        print(f"perception_node did not become active: {node.stderr.read()[-2000:]}")
        return 1
    player = subprocess.Popen([sys.executable, "-m", "distillnerf_ros.tools.play", str(bag), "--clock", "--loop"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    start = time.monotonic()
    rss = [(0.0, rss_mb(node.pid))]
    while time.monotonic() - start < args.minutes * 60 and node.poll() is None:
        rclpy.spin_once(bench, timeout_sec=0.1)
        if time.monotonic() - start - rss[-1][0] >= 10:
            rss.append((time.monotonic() - start, rss_mb(node.pid)))
    crashed = node.poll() is not None
    for process in (player, node):
        stop_process(process)
    # The first samples include the model's warm-up allocations; growth is measured from the first minute on.
    baseline = next((mb for t, mb in rss if t >= 60), rss[0][1])
    result = {"minutes": args.minutes, "crashed": crashed, "processed": int(counters.get("processed", 0)),
              "dropped_busy": int(counters.get("dropped_busy", 0)), "errors": int(counters.get("errors", 0)),
              "pipeline_latency_ms": percentiles(latency), "processing_ms": percentiles(processing),
              "model_ms": percentiles(model),
              "rss_mb_start": rss[0][1], "rss_mb_after_1min": baseline, "rss_mb_end": rss[-1][1],
              "rss_growth_after_1min": rss[-1][1] / baseline - 1, "tf_resets": counters.get("tf_resets")}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({**result, "rss_series": rss}, indent=2))
    rclpy.shutdown()
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
