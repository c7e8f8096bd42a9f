"""The ROS plumbing end to end on the real nuScenes keyframe, without a model (used by the tests).

A publisher process sends the keyframe (JPEGs, CameraInfo, /tf, /tf_static) over loopback DDS; this process
receives it through the synchroniser, the TF cache and the converters (the perception node's input path),
prints what it got, and checks every camera's intrinsics and ego-motion-compensated extrinsics against the
dataroot's calibration tables.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np
import rclpy
from rclpy.logging import LoggingSeverity
from rclpy.parameter import Parameter

from distillnerf_core.data.nuscenes_tables import load_sensor_records
from distillnerf_core.geometry import invert_transform
from distillnerf_ros.input.rig_input import RigFrame
from distillnerf_ros.nodes.rig_monitor import RigMonitorNode, describe_frame
from distillnerf_ros.tools.processes import stop_process


def expected_extrinsics(dataroot: str, trigger_us: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per camera (K, base_link(trigger) <- camera) computed directly from the tables."""
    records = load_sensor_records(dataroot)
    ego_at = {r.timestamp_us: r.global_from_ego for r in records}
    if trigger_us not in ego_at:
        raise ValueError(f"no ego pose at the trigger stamp {trigger_us}")
    ego_from_global = invert_transform(ego_at[trigger_us])
    return {r.channel: (r.intrinsics, ego_from_global @ r.global_from_ego @ r.ego_from_sensor)
            for r in records if r.modality == "camera"}


def check_frame(frame: RigFrame, dataroot: str) -> list[str]:
    """Differences between what came over ROS and the calibration tables (empty = all correct)."""
    expected = expected_extrinsics(dataroot, frame.stamp_ns // 1000)
    problems = [f"{camera}: not received" for camera in expected if camera not in frame.cameras]
    for i, camera in enumerate(frame.cameras):
        K, extrinsic = expected[camera]
        if not np.allclose(frame.intrinsics[i].K, K, atol=1e-6):
            problems.append(f"{camera}: intrinsics differ from calibrated_sensor")
        error_m = np.abs(frame.output_from_camera[i][:3, 3] - extrinsic[:3, 3]).max()
        error_rot = np.abs(frame.output_from_camera[i][:3, :3] - extrinsic[:3, :3]).max()
        if error_m > 1e-4 or error_rot > 1e-5:
            problems.append(f"{camera}: extrinsic differs by {error_m:.2e} m / {error_rot:.2e} in rotation")
    return problems


def receive_one_frame(dataroot: str, timeout_s: float) -> RigFrame:
    """Start the publisher process, receive one synchronised frame, stop the publisher."""
    rclpy.init()
    node = RigMonitorNode(parameter_overrides=[
        Parameter("input_reliability", value="reliable"),
        Parameter("input_depth", value=10),
        Parameter("max_frames", value=1),
        Parameter("min_cameras", value=6),
    ])
    node.get_logger().set_level(LoggingSeverity.WARN)  # main() prints the frame; no second copy in the log
    publisher = subprocess.Popen([sys.executable, "-m", "distillnerf_ros.nodes.dataroot_publisher",
                                  "--dataroot", dataroot])
    try:
        deadline = time.monotonic() + timeout_s
        while not node.done and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
        if not node.done:
            raise TimeoutError(f"no synchronised frame within {timeout_s} s")
        return node.frames[-1]
    finally:
        stop_process(publisher, timeout_s=5)
        node.destroy_node()
        rclpy.try_shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataroot", default="data/nuscenes_sample")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    frame = receive_one_frame(args.dataroot, args.timeout)
    print(describe_frame(frame))
    problems = check_frame(frame, args.dataroot)
    for problem in problems:
        print(f"MISMATCH {problem}")
    verdict = "FAILED" if problems else "OK"
    print(f"{verdict}: {len(frame.cameras)} cameras received over loopback DDS; intrinsics and ego-motion"
          f" compensated extrinsics {'do not ' if problems else ''}match the calibration tables"
          f" ({time.monotonic() - started:.1f} s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
