"""Soak: loop the synthetic demo bag at real time into perception_node for M minutes.

Accounts for every frame sent (camera sets the player published, counted by this process on the camera
topics): processed, or lost by reason, in pipeline order: never reached the node (sent while it was inactive
during a lifecycle cycle, or before its new subscriptions matched again; from the node's images_received
counters), dropped by the synchroniser (too few cameras), discarded by a reset (the old timeline's last set
when a looped bag's clock jumps back), dropped for TF, replaced while waiting, no usable camera, held at a
deactivation, dropped while the worker was busy, frames discarded when the worker stopped, skipped, errors.
After the run the player stops first and the node's counters are read once they have settled, so nothing is
in flight; "unaccounted" is what is left (a set split or merged by the synchroniser, e.g. after an activation
mid-set). Also TF cache resets by kind (a transform going back in time, a clock jump) and TF transforms
rejected / evicted / expired. Optionally a TF publisher at --tf-hz and a lifecycle deactivate/activate cycle
every --lifecycle-period seconds. Also latency percentiles and the node's memory every 10 s (RSS, anonymous /
file-backed, threads; target: growth < 5 % over 30 minutes, no crash, no growing queue).

    .venv/bin/python benchmarks/soak.py --minutes 30 --tf-hz 100 --lifecycle-period 60 [--model M] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, PointCloud2
from std_msgs.msg import Float64
from tf2_msgs.msg import TFMessage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from node_metrics import percentiles, rss_mb  # noqa: E402

from distillnerf_core.data.nuscenes_tables import NUSCENES_CAMERAS  # noqa: E402
from distillnerf_core.provenance import command_line, model_identity, provenance  # noqa: E402
from distillnerf_ros.conversions.nuscenes_messages import transform_stamped  # noqa: E402
from distillnerf_ros.input.rig_input import TF_QOS  # noqa: E402
from distillnerf_ros.tools.demo import build_bags  # noqa: E402
from distillnerf_ros.tools.processes import stop_process  # noqa: E402

NODE = "/distillnerf_perception"
# Where the node loses a camera set or frame, in pipeline order (its /diagnostics counters, cumulative).
INPUT_LOSS_KEYS = ("sets_dropped_min_cameras", "sets_discarded_on_reset", "sets_dropped_tf", "sets_replaced_waiting",
                   "sets_dropped_no_cameras", "sets_discarded_on_stop")
WORKER_LOSS_KEYS = ("dropped_busy", "frames_discarded_on_stop", "skipped_no_cameras", "skipped_no_subscribers",
                    "errors")
LOSS_KEYS = INPUT_LOSS_KEYS + WORKER_LOSS_KEYS
FLOW_KEYS = ("processed", "sets_emitted", "sets_flushed_idle", "frames_submitted", "clock_behind_stamp")
EVENT_KEYS = ("images_rejected", "images_discarded_on_reset", "tf_rejected", "tf_evicted", "tf_expired")


class MonotonicCounters:
    """Sums counters that restart from 0 (the node's rig counters restart on every activation)."""

    def __init__(self) -> None:
        self.offset: Counter = Counter()
        self.last: dict[str, int] = {}

    def update(self, key: str, value: int) -> None:
        if value < self.last.get(key, 0):
            self.offset[key] += self.last[key]
        self.last[key] = value

    def total(self, key: str) -> int:
        return self.offset[key] + self.last.get(key, 0)

    def keys(self) -> set[str]:
        return set(self.last)


FIRST_CAMERA = "CAM_FRONT_LEFT"  # the synthetic bag's first camera of each instant


def memory_sample(t: float, pid: int) -> dict[str, float]:
    """RSS split into anonymous and file-backed memory (MB) and the thread count, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "Threads"):
            fields[key] = int(value.split()[0])
    return {"t": round(t, 1), "rss_mb": fields.get("VmRSS", 0) / 1024, "anon_mb": fields.get("RssAnon", 0) / 1024,
            "file_mb": fields.get("RssFile", 0) / 1024, "shmem_mb": fields.get("RssShmem", 0) / 1024,
            "threads": fields.get("Threads", 0), "malloc_heaps": malloc_heaps(pid)}


def malloc_heaps(pid: int) -> int:
    """Anonymous mappings that start on a 64 MiB boundary: the heaps of glibc's per-thread malloc arenas (each
    arena keeps the memory its threads freed; at most 8 per core)."""
    count = 0
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split()
        start = int(parts[0].split("-")[0], 16)
        if len(parts) == 5 and start % (64 << 20) == 0:
            count += 1
    return count


def drain_until_settled(bench, counters: MonotonicCounters, settled_s: float = 4.0, timeout_s: float = 20.0) -> None:
    """After the player stopped: spin until /diagnostics has reported the same counters for `settled_s` (longer
    than the node's idle flush + tf_wait), so what the node still held (a pending or waiting set, a frame in the
    worker) has reached a counter."""
    deadline, last, since = time.monotonic() + timeout_s, None, time.monotonic()
    while time.monotonic() < deadline:
        rclpy.spin_once(bench, timeout_sec=0.1)
        snapshot = {key: counters.total(key) for key in counters.keys()}
        if snapshot != last:
            last, since = snapshot, time.monotonic()
        elif time.monotonic() - since >= settled_s:
            return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--model", default="")
    parser.add_argument("--out", type=Path, default=REPO / "demo_out")
    parser.add_argument("--json", default="")
    parser.add_argument("--tf-hz", type=float, default=0.0, help="also publish base_link -> soak_extra on /tf at"
                        " this rate, stamped with the latest /clock (0: off)")
    parser.add_argument("--lifecycle-period", type=float, default=0.0,
                        help="deactivate + activate the node every this many seconds (0: never)")
    args = parser.parse_args()
    started = provenance(
        command_line("benchmarks/soak.sh"),
        model=model_identity(args.model or REPO / "models" / "default" / "model.safetensors") + ", fp32 on the CPU",
        data="the synthetic demo bag looped at real time with /clock"
             + (f"; base_link -> soak_extra on /tf at {args.tf_hz:g} Hz" if args.tf_hz else "")
             + (f"; deactivate + activate every {args.lifecycle_period:g} s" if args.lifecycle_period else ""))
    bag = build_bags(args.out)["synthetic"]
    node_cmd = [sys.executable, str(REPO / "scripts" / "perception_node"), "--ros-args", "--params-file",
                str(REPO / "config" / "perception.yaml"), "-p", "use_sim_time:=true"]
    if args.model:
        node_cmd += ["-p", f"model_path:={args.model}"]
    node = subprocess.Popen(node_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rclpy.init()
    bench = rclpy.create_node("soak_bench")
    latency, processing, model, status = [], [], [], {}
    counters = MonotonicCounters()
    images: Counter = Counter()
    clock_ns = [0]
    inactive_sets = [0]  # camera sets whose first image was published while a lifecycle cycle was under way
    cycling = [False]
    bench.create_subscription(Float64, f"{NODE}/debug/pipeline_latency_ms", lambda m: latency.append(m.data), 10)
    bench.create_subscription(Float64, f"{NODE}/debug/processing_time_ms", lambda m: processing.append(m.data), 10)
    bench.create_subscription(Float64, f"{NODE}/debug/model_time_ms", lambda m: model.append(m.data), 10)
    bench.create_subscription(PointCloud2, f"{NODE}/occupancy", lambda m: None,
                              QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
    def on_image(camera: str) -> None:
        images.update([camera])
        if camera == FIRST_CAMERA and cycling[0]:
            inactive_sets[0] += 1

    for camera in NUSCENES_CAMERAS:  # frames sent = camera sets published by the player
        bench.create_subscription(CompressedImage, f"/{camera}/image_rect_compressed",
                                  lambda m, c=camera: on_image(c), 10)
    bench.create_subscription(Clock, "/clock", lambda m: clock_ns.__setitem__(
        0, m.clock.sec * 1_000_000_000 + m.clock.nanosec), 10)

    def on_diagnostics(message: DiagnosticArray) -> None:
        for item in message.status:
            if item.name.startswith("distillnerf_perception"):
                values = {kv.key: kv.value for kv in item.values}
                status.update(values, message=item.message, level=int.from_bytes(item.level, "little"))
                for key, value in values.items():
                    if key in LOSS_KEYS + EVENT_KEYS + FLOW_KEYS or key.startswith(("tf_resets/", "images_received/")):
                        counters.update(key, int(value))

    bench.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    tf_pub = bench.create_publisher(TFMessage, "/tf", TF_QOS)
    lifecycle = bench.create_client(ChangeState, f"{NODE}/change_state")
    deadline = time.monotonic() + 120
    while status.get("message") != "active" and time.monotonic() < deadline and node.poll() is None:
        rclpy.spin_once(bench, timeout_sec=0.1)
    if status.get("message") != "active":
        node.kill()
        print(f"perception_node did not become active: {node.stderr.read()[-2000:]}")
        return 1
    player = subprocess.Popen([sys.executable, "-m", "distillnerf_ros.tools.play", str(bag), "--clock", "--loop"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    start = time.monotonic()
    rss = [(0.0, rss_mb(node.pid))]
    memory = [memory_sample(0.0, node.pid)]
    next_tf, next_cycle, cycles, failed_cycles, tf_sent = start, start + (args.lifecycle_period or 1e12), 0, 0, 0
    while time.monotonic() - start < args.minutes * 60 and node.poll() is None:
        rclpy.spin_once(bench, timeout_sec=0.005 if args.tf_hz else 0.1)
        now = time.monotonic()
        if args.tf_hz and now >= next_tf and clock_ns[0] > 0:
            stamp = rclpy.time.Time(nanoseconds=clock_ns[0]).to_msg()
            tf_pub.publish(TFMessage(transforms=[transform_stamped("base_link", "soak_extra", stamp, np.eye(4))]))
            tf_sent += 1
            next_tf += 1.0 / args.tf_hz
        if now >= next_cycle:
            next_cycle += args.lifecycle_period
            ok, cycling[0] = True, True
            for transition in (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_ACTIVATE):
                future = lifecycle.call_async(ChangeState.Request(transition=Transition(id=transition)))
                rclpy.spin_until_future_complete(bench, future, timeout_sec=30)
                ok = ok and future.done() and future.result().success
            cycling[0] = False
            cycles += 1
            failed_cycles += not ok
        if now - start - rss[-1][0] >= 10:
            rss.append((now - start, rss_mb(node.pid)))
            memory.append(memory_sample(now - start, node.pid))
    crashed = node.poll() is not None
    stop_process(player)
    if not crashed:  # let the node finish what it holds and report it: every frame ends in a counter
        drain_until_settled(bench, counters)
    crashed = crashed or node.poll() is not None
    stop_process(node)
    # The first samples include the model's warm-up allocations; growth is measured from the first minute on.
    baseline = next((mb for t, mb in rss if t >= 60), rss[0][1])
    sent = min(images[c] for c in NUSCENES_CAMERAS)
    received = {c: counters.total(f"images_received/{c}") for c in NUSCENES_CAMERAS}
    # A set none of whose images reached the node (sent while it was inactive, or before its new subscriptions
    # matched the player's publishers again after an activation) never enters its counters.
    not_received = min(images[c] - received[c] for c in NUSCENES_CAMERAS)
    lost = {"never_reached_node": not_received, **{key: counters.total(key) for key in LOSS_KEYS}}
    processed = counters.total("processed")
    result = {
        "minutes": args.minutes, "crashed": crashed, "tf_hz": args.tf_hz, "tf_sent": tf_sent,
        "lifecycle_cycles": cycles, "lifecycle_cycles_failed": failed_cycles,
        "frames": {"sent": sent, "processed": processed, "lost": lost,
                   "unaccounted": sent - processed - sum(lost.values()),
                   "sent_during_lifecycle_cycles": inactive_sets[0],
                   "flow": {key: counters.total(key) for key in FLOW_KEYS}},
        "images": {"sent": {c: images[c] for c in NUSCENES_CAMERAS}, "received_by_node": received},
        "tf_resets": {key.split("/", 1)[1]: counters.total(key) for key in sorted(counters.keys())
                      if key.startswith("tf_resets/")},
        "events": {key: counters.total(key) for key in EVENT_KEYS},
        "last_status": {"level": status.get("level"), "message": status.get("message")},
        "pipeline_latency_ms": percentiles(latency), "processing_ms": percentiles(processing),
        "model_ms": percentiles(model),
        "rss_mb_start": rss[0][1], "rss_mb_after_1min": baseline, "rss_mb_end": rss[-1][1],
        "rss_growth_after_1min": rss[-1][1] / baseline - 1,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({**result, "rss_series": rss, "memory_series": memory,
                                               "provenance": started}, indent=2))
    bench.destroy_node()
    rclpy.shutdown()
    return 1 if crashed or failed_cycles else 0


if __name__ == "__main__":
    sys.exit(main())
