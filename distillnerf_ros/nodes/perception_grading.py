"""perception_node grades itself: every `grading_every_n_frames`-th frame it also renders RGB and publishes
the reconstruction PSNR against the input (per camera and the frame's median), and with `lidar_topic` set the
rendered depth's AbsRel / delta1 against that LiDAR sweep projected into the cameras. /diagnostics carries the
medians over the last `grading_window` graded frames and WARNs when the recon PSNR is below
`grading_psnr_warn_db` (the frame is out of the model's domain), naming the cameras.

The maths is distillnerf_core.inference_grading (distillnerf-eval's); here: the parameters, the LiDAR
subscription and its bounded buffer, TF lookups and the publishers. PSNR runs on the inference worker after the
frame's outputs are published; the depth grade runs on the executor thread (a 20 ms steady timer), where the
TF cache is written, so lookups never read a half-updated edge.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
from rclpy.lifecycle import LifecycleNode
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Float64

from distillnerf_core.geometry import invert_transform
from distillnerf_core.inference_grading import (
    lidar_depth_grades,
    lidar_depth_targets,
    median,
    predictor_recon_psnr,
)
from distillnerf_ros.conversions.pointcloud import PointCloudError, pointcloud2_to_points
from distillnerf_ros.input.rig_input import STEADY_CLOCK, RigFrame, input_qos
from distillnerf_ros.input.tf_cache import FrameNotAvailableError, TfLookupError, stamp_to_ns

# The LiDAR buffer: sweeps up to LIDAR_KEEP_S behind the newest, at most LIDAR_MAX_SWEEPS and LIDAR_MAX_BYTES
# of x, y, z in all (a frame is graded after its inference, which on a CPU lags the newest sweep by seconds).
LIDAR_KEEP_S = 5.0
LIDAR_MAX_SWEEPS = 100
LIDAR_MAX_BYTES = 64 * 1024 * 1024
LIDAR_MAX_POINTS = 2_000_000  # a bigger sweep is refused (lidar_rejected)
DEPTH_WAIT_S = 2.0  # a graded frame waits this long (steady time) for its sweep and TF, then is left ungraded


def float_message(value: float | None) -> Float64:
    return Float64(data=float("nan") if value is None else float(value))


@dataclass
class DepthJob:
    """What the depth grade of one graded frame needs, handed from the worker to the executor thread."""

    stamp_ns: int
    cameras: list[str]
    output_from_camera: list[np.ndarray]
    intrinsics: list[np.ndarray]
    image_wh: list[tuple[int, int]]
    depth: np.ndarray  # (N, h, w) rendered z-depth, not NaN-masked (the protocol scores every pixel)
    deadline: float  # steady seconds


class SelfGrading:
    """The self-grading of one configured perception_node: `create` in on_configure, `destroy` on cleanup."""

    def __init__(self, node: LifecycleNode, cameras: list[str], topic_name) -> None:
        self.node = node
        value = lambda name: node.get_parameter(name).value  # noqa: E731 - a local shorthand
        self.lidar_topic = value("lidar_topic")
        window = value("grading_window")
        make = node.create_lifecycle_publisher
        self.psnr_pub = make(Float64, "~/debug/recon_psnr", 10)
        self.camera_psnr_pub = {c: make(Float64, f"~/{topic_name(c)}/debug/recon_psnr", 10) for c in cameras}
        self.abs_rel_pub = make(Float64, "~/debug/depth_abs_rel", 10)
        self.delta1_pub = make(Float64, "~/debug/depth_delta1", 10)
        self._lock = threading.Lock()
        self.psnr_window: dict[str, deque] = {}  # camera -> recent recon PSNRs
        self.frame_psnr = deque(maxlen=window)
        self.abs_rel = deque(maxlen=window)
        self.delta1 = deque(maxlen=window)
        self.camera_abs_rel: dict[str, deque] = {}
        self.window = window
        self.counts = {"frames_seen": 0, "graded": 0, "depth_graded": 0, "depth_ungraded": 0, "lidar_received": 0,
                       "lidar_rejected": 0}
        self.last = {"grading_ms": 0.0, "depth_grading_ms": 0.0, "lidar": "off (lidar_topic is empty)"}
        self._since_graded = 0
        self._sweeps: deque[tuple[int, str, np.ndarray]] = deque()  # (stamp_ns, frame_id, (P, 3) float32)
        self._job: DepthJob | None = None
        self.subscription = self.timer = None
        if self.lidar_topic:
            self.last["lidar"] = "no sweep yet"
            qos = input_qos(value("input_reliability"), value("input_depth"))
            self.subscription = node.create_subscription(PointCloud2, self.lidar_topic, self._on_sweep, qos)
            self.timer = node.create_timer(0.02, self._on_timer, clock=STEADY_CLOCK)

    def destroy(self) -> None:
        for publisher in (self.psnr_pub, self.abs_rel_pub, self.delta1_pub, *self.camera_psnr_pub.values()):
            self.node.destroy_lifecycle_publisher(publisher)
        if self.subscription is not None:
            self.node.destroy_subscription(self.subscription)
            self.node.destroy_timer(self.timer)
            self.subscription = self.timer = None
        self._sweeps.clear()
        self._job = None

    # -- on the worker ------------------------------------------------------------------------------------
    def due(self) -> bool:
        """Count a frame reaching the worker; True for every grading_every_n_frames-th (0: never, and the windows
        are emptied so that no WARN stays from earlier grades)."""
        every = self.node.get_parameter("grading_every_n_frames").value
        self.counts["frames_seen"] += 1
        if every <= 0:
            if self.frame_psnr:  # grading turned off: no WARN from the grades of before
                with self._lock:
                    for window in (self.frame_psnr, self.abs_rel, self.delta1, *self.psnr_window.values(),
                                   *self.camera_abs_rel.values()):
                        window.clear()
            return False
        self._since_graded += 1
        if self._since_graded < every:
            return False
        self._since_graded = 0
        return True

    def needs_depth(self) -> bool:
        return bool(self.lidar_topic)

    def grade(self, frame: RigFrame, predictor, rgb: np.ndarray, depth: np.ndarray | None) -> None:
        """Recon PSNR of this frame (published now) and, with a LiDAR topic, its depth grade (queued)."""
        started = time.perf_counter()
        values = predictor_recon_psnr(predictor, frame.images, rgb)
        with self._lock:
            for camera, db in zip(frame.cameras, values, strict=True):
                self.psnr_window.setdefault(camera, deque(maxlen=self.window)).append(float(db))
            frame_median = median(values)
            self.frame_psnr.append(frame_median)
            self.counts["graded"] += 1
        for camera, db in zip(frame.cameras, values, strict=True):
            self.camera_psnr_pub[camera].publish(float_message(db))
        self.psnr_pub.publish(float_message(frame_median))
        if self.lidar_topic and depth is not None:
            job = DepthJob(frame.stamp_ns, list(frame.cameras), [np.array(m) for m in frame.output_from_camera],
                           [np.array(k.K) for k in frame.intrinsics],
                           [(image.shape[1], image.shape[0]) for image in frame.images], np.array(depth),
                           time.monotonic() + DEPTH_WAIT_S)
            with self._lock:
                if self._job is not None:
                    self._ungraded("a newer graded frame came before its sweep")
                self._job = job
        self.last["grading_ms"] = 1000.0 * (time.perf_counter() - started)

    # -- on the executor thread ---------------------------------------------------------------------------
    def _on_sweep(self, cloud: PointCloud2) -> None:
        try:
            points = pointcloud2_to_points(cloud)
            if not {"x", "y", "z"} <= set(points.dtype.names or ()):
                raise PointCloudError(f"fields {list(points.dtype.names or ())} lack x, y, z")
            if len(points) > LIDAR_MAX_POINTS:
                raise PointCloudError(f"{len(points)} points exceed the limit of {LIDAR_MAX_POINTS}")
            xyz = np.stack([points["x"], points["y"], points["z"]], axis=1).astype(np.float32)
            xyz = xyz[np.isfinite(xyz).all(axis=1)]
        except (PointCloudError, ValueError, TypeError) as error:
            self.counts["lidar_rejected"] += 1
            self.last["lidar"] = f"sweep rejected: {error}"
            return
        stamp = stamp_to_ns(cloud.header.stamp)
        self.counts["lidar_received"] += 1
        sweeps = self._sweeps
        if sweeps and stamp < sweeps[-1][0]:  # time went back (a looped bag): the old sweeps are of another timeline
            sweeps.clear()
        sweeps.append((stamp, cloud.header.frame_id, xyz))
        while len(sweeps) > 1 and (sweeps[0][0] < stamp - LIDAR_KEEP_S * 1e9 or len(sweeps) > LIDAR_MAX_SWEEPS
                                   or sum(s[2].nbytes for s in sweeps) > LIDAR_MAX_BYTES):
            sweeps.popleft()

    def _ungraded(self, reason: str) -> None:
        self.counts["depth_ungraded"] += 1
        self.last["lidar"] = f"frame not graded: {reason}"

    def _on_timer(self) -> None:
        with self._lock:
            job = self._job
        if job is None:
            return
        max_delay_ns = self.node.get_parameter("lidar_max_delay").value * 1e9
        near = [s for s in self._sweeps if abs(s[0] - job.stamp_ns) <= max_delay_ns]
        rig = getattr(self.node, "rig", None)
        if not near or rig is None:
            if time.monotonic() > job.deadline:
                with self._lock:
                    self._job = None
                self._ungraded(f"no sweep within lidar_max_delay of the frame's stamp ({len(self._sweeps)} kept)"
                               if rig is not None else "the node is not active")
            return
        stamp, frame_id, xyz = min(near, key=lambda s: abs(s[0] - job.stamp_ns))
        try:
            output_from_lidar = self._output_from_lidar(rig, frame_id, stamp, job.stamp_ns)
        except TfLookupError as error:
            if time.monotonic() > job.deadline:
                with self._lock:
                    self._job = None
                self._ungraded(f"no TF for the sweep: {error}")
            return
        with self._lock:
            self._job = None
        started = time.perf_counter()
        camera_from_lidar = [invert_transform(m) @ output_from_lidar for m in job.output_from_camera]
        targets = lidar_depth_targets(xyz, camera_from_lidar, job.intrinsics, job.image_wh, job.depth.shape[1:])
        grade = lidar_depth_grades(job.depth, targets)
        if grade.frame is None:
            self._ungraded("no LiDAR point falls in any camera")
            return
        with self._lock:
            self.abs_rel.append(grade.frame["abs_rel"])
            self.delta1.append(grade.frame["delta1"])
            for camera, metrics in zip(job.cameras, grade.cameras, strict=True):
                if metrics is not None:
                    self.camera_abs_rel.setdefault(camera, deque(maxlen=self.window)).append(metrics["abs_rel"])
            self.counts["depth_graded"] += 1
        self.abs_rel_pub.publish(float_message(grade.frame["abs_rel"]))
        self.delta1_pub.publish(float_message(grade.frame["delta1"]))
        self.last["depth_grading_ms"] = 1000.0 * (time.perf_counter() - started)
        self.last["lidar"] = (f"graded against the sweep at {stamp / 1e9:.3f} s ({(stamp - job.stamp_ns) / 1e6:+.0f} ms"
                              f" from the frame), {sum(grade.points_per_camera)} LiDAR pixels")

    @staticmethod
    def _output_from_lidar(rig, lidar_frame: str, lidar_stamp_ns: int, frame_stamp_ns: int) -> np.ndarray:
        """output(frame stamp) <- lidar(sweep stamp): through the fixed frame when it is on /tf (the ego motion
        between the stamps, as the cameras were placed), else at the sweep's stamp."""
        if rig.tf.has_frame(rig.fixed_frame):
            try:
                return rig.tf.lookup_across_time(rig.output_frame, frame_stamp_ns, lidar_frame, lidar_stamp_ns,
                                                 rig.fixed_frame)
            except FrameNotAvailableError:
                pass
        return rig.tf.lookup(rig.output_frame, lidar_frame, lidar_stamp_ns)

    # -- diagnostics ------------------------------------------------------------------------------------
    def camera_medians(self) -> dict[str, float]:
        with self._lock:
            return {camera: m for camera, window in self.psnr_window.items() if (m := median(list(window))) is not None}

    def warning(self) -> str | None:
        """The WARN message when the windowed recon PSNR is below grading_psnr_warn_db, naming the cameras."""
        threshold = self.node.get_parameter("grading_psnr_warn_db").value
        with self._lock:
            overall = median(list(self.frame_psnr))
        if overall is None or overall >= threshold:
            return None
        low = sorted(camera for camera, db in self.camera_medians().items() if db < threshold)
        return (f"recon PSNR {overall:.1f} dB (median of the last {len(self.frame_psnr)} graded frames) is below"
                f" grading_psnr_warn_db {threshold:.1f}: input out of the model's domain; cameras below it: {low}")

    def values(self) -> dict:
        """/diagnostics keys: the windowed medians, per camera, and the grading counters and state."""
        with self._lock:
            values = {"recon_psnr_median": median(list(self.frame_psnr)),
                      "depth_abs_rel_median": median(list(self.abs_rel)),
                      "depth_delta1_median": median(list(self.delta1))}
            abs_rel = {camera: median(list(w)) for camera, w in self.camera_abs_rel.items()}
            values.update({f"grading/{key}": value for key, value in {**self.counts, **self.last}.items()})
        values.update({f"recon_psnr/{camera}": round(db, 2) for camera, db in sorted(self.camera_medians().items())})
        values.update({f"depth_abs_rel/{camera}": v for camera, v in sorted(abs_rel.items())})
        return values
