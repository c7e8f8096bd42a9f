"""rig_monitor: checks that a camera rig is usable (sync, images, intrinsics, TF) and reports it.

Runs the same input path as the perception node (CameraRigInput) without a model: it logs one line per
synchronised frame and publishes /diagnostics, so a user can check their bag or driver before running
inference. `max_frames` > 0 makes it exit after that many frames (used by the demo).
"""

from __future__ import annotations

import sys

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node

from distillnerf_ros.input.rig_input import STEADY_CLOCK, RigFrame
from distillnerf_ros.nodes.diagnostics import publish_status
from distillnerf_ros.nodes.guarded import GuardedNode
from distillnerf_ros.nodes.parameter_schema import ParameterValueError, declare_parameters
from distillnerf_ros.nodes.rig_parameters import rig_input_from_parameters
from distillnerf_ros.nodes.signals import init_without_signal_handlers, node_or_none, run_node


def describe_frame(frame: RigFrame) -> str:
    """One line per camera: size, focal length, position in the output frame, stamp offset."""
    lines = [f"frame at {frame.stamp_ns / 1e9:.6f} s: {len(frame.cameras)} cameras synced"
             f" (ego-motion compensated: {'yes' if frame.motion_compensated else 'no'})"]
    for i, camera in enumerate(frame.cameras):
        height, width = frame.images[i].shape[:2]
        K, position = frame.intrinsics[i].K, frame.output_from_camera[i][:3, 3]
        offset_ms = (frame.stamps_ns[i] - frame.stamp_ns) / 1e6
        lines.append(f"  {camera:<16} {width}x{height}  fx={K[0, 0]:8.2f} fy={K[1, 1]:8.2f}"
                     f" cx={K[0, 2]:7.2f} cy={K[1, 2]:7.2f}  at [{position[0]:6.3f} {position[1]:6.3f}"
                     f" {position[2]:6.3f}] m in {frame.output_frame}  stamp {offset_ms:+6.1f} ms")
    lines.extend(f"  {camera:<16} MISSING: {reason}" for camera, reason in frame.missing.items())
    lines.extend(f"  {camera:<16} distortion: {what}" for camera, what in frame.distortion.items())
    return "\n".join(lines)


class RigMonitorNode(GuardedNode, Node):
    """The rig input path without a model, as node `rig_monitor`.

    Subscribes: per camera `image_topic_format` and `camera_info_topic_format`, `/tf`, `/tf_static`
    (parameters: SCHEMA["rig_monitor"] in parameter_schema.py). Publishes: `/diagnostics` (1 Hz on the
    steady clock: frames, sets dropped, cameras missing and why, TF resets). Logs one description per
    synchronised frame.
    Parameter `max_frames`: `done` becomes true after that many frames (0: never).
    """

    def __init__(self, **node_options) -> None:
        super().__init__("rig_monitor", **node_options)
        try:
            declare_parameters(self, "rig_monitor")
        except ParameterValueError:
            self.destroy_node()  # the caller never gets this half-built node to destroy
            raise
        self.max_frames = self.get_parameter("max_frames").value
        self.frames: list[RigFrame] = []
        self.rig = rig_input_from_parameters(self, self._on_frame)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self._publish_diagnostics, clock=STEADY_CLOCK)
        self.guard_existing_callbacks()  # the services rclpy built without create_service

    @property
    def done(self) -> bool:
        return 0 < self.max_frames <= len(self.frames)

    def _on_frame(self, frame: RigFrame) -> None:
        self.rig.stats.count_failures(frame.decode())
        self.frames = (self.frames + [frame])[-max(self.max_frames, 1):]
        self.get_logger().info(describe_frame(frame))

    def _publish_diagnostics(self) -> None:
        stats, sync = self.rig.stats, self.rig.sync.stats
        missing = sum(sync.missing.values()) + sum(stats.camera_errors.values())
        level = DiagnosticStatus.OK if stats.frames and not missing else DiagnosticStatus.WARN
        if stats.frames == 0 and (sync.sets_dropped or stats.sets_dropped_tf):
            level = DiagnosticStatus.ERROR
        values = {"frames": stats.frames, "sets_dropped_min_cameras": sync.sets_dropped,
                  "sets_dropped_tf": stats.sets_dropped_tf, "tf_resets": self.rig.tf.resets}
        values.update({f"missing/{camera}/{kind}": n for (camera, kind), n in sorted(sync.missing.items())})
        values.update({f"errors/{camera}": n for camera, n in sorted(stats.camera_errors.items())})
        values.update({f"last_error/{key}": reason for key, reason in stats.last_errors.items()})
        values.update(self.callback_errors.values())
        message = f"{stats.frames} frames, {missing} camera drops"
        failed = self.callback_errors.recent()
        if failed:
            level = max(level, DiagnosticStatus.WARN)
            message += "; callbacks failed in the last 10 s: " + "; ".join(f"{n}: {r}" for n, r in failed.items())
        publish_status(self, self.diagnostics_pub, level, f"{self.get_name()}: camera rig", "camera_rig", message,
                       values)

    def on_callback_error(self, name: str, reason: str) -> None:
        """The diagnostics timer itself failed: publish a reduced status (callback errors) instead."""
        if name == "_publish_diagnostics":
            publish_status(self, self.diagnostics_pub, DiagnosticStatus.WARN, f"{self.get_name()}: camera rig",
                           "camera_rig", f"diagnostics incomplete: {reason}", self.callback_errors.values())


def main(argv: list[str] | None = None) -> int:
    """Run until `max_frames` frames, SIGINT or SIGTERM; exit 0 (2: a parameter outside the schema)."""
    stop = init_without_signal_handlers(argv)
    node = node_or_none(RigMonitorNode, "rig_monitor")
    if node is None:
        return 2
    return run_node(node, stop, release=node.rig.destroy, done=lambda: node.done)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
