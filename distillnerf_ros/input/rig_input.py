"""The input side every node shares: N camera subscriptions + CameraInfo + TF -> synchronised RigFrames.

A RigFrame holds, for the cameras of one instant, RGB arrays, intrinsics and the camera -> output-frame
extrinsics looked up at each image's own stamp (never "latest"). When a fixed frame (map/odom) is on /tf,
each camera is placed in the output frame of the trigger stamp through it, which compensates the ego
motion between camera stamps. TF that is not there yet is waited for (retried on a timer, never
blocking a callback) up to `tf_wait_s`, and so is a CameraInfo (it travels on its own topic); after that
the cameras without them are left out and the reason reported.
"""

from __future__ import annotations

import functools
import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from rclpy.clock import Clock, ClockType, JumpThreshold
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
)
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from tf2_msgs.msg import TFMessage

from distillnerf_core.rectify import MIN_VALID_FRACTION, DistortionError, Rectifier
from distillnerf_ros.conversions.camera_info import (
    CameraInfoError,
    CameraIntrinsics,
    CameraModel,
    image_camera_model,
    topic_is_rectified,
)
from distillnerf_ros.conversions.images import ImageConversionError, message_to_rgb_sized
from distillnerf_ros.input.camera_sync import CameraSet, LatestCameraSynchronizer
from distillnerf_ros.input.tf_cache import FrameNotAvailableError, TfCache, TfLookupError, stamp_to_ns

T = TypeVar("T")


@dataclass(frozen=True)
class CameraTopics:
    name: str  # e.g. CAM_FRONT
    image_topic: str
    info_topic: str
    compressed: bool
    rectified: bool | None = None  # the images are rectified (use P, ignore D); None: from the topic name


def rectified_choice(value: str, topic: str) -> bool:
    """The `image_rectified` parameter for one camera: "true", "false", or "auto" (image_proc's topic naming)."""
    if value not in ("auto", "true", "false"):
        raise ValueError(f"image_rectified must be auto, true or false, got '{value}'")
    return topic_is_rectified(topic) if value == "auto" else value == "true"


@dataclass
class RigFrame:
    """One synchronised instant: per camera (fixed order) its message, CameraInfo and extrinsics.

    Images are decoded by `decode()`, on the consumer's thread and only for frames it actually processes
    (a frame dropped because inference is busy costs no JPEG decoding).
    """

    stamp_ns: int
    output_frame: str
    cameras: list[str]
    frame_ids: list[str]
    stamps_ns: list[int]
    messages: list[Image | CompressedImage]
    infos: list[CameraInfo]
    output_from_camera: list[np.ndarray]  # 4x4, optical camera frame -> output frame at stamp_ns
    missing: dict[str, str] = field(default_factory=dict)
    motion_compensated: bool = False
    images: list[np.ndarray] = field(default_factory=list)  # HxWx3 uint8 RGB, filled by decode()
    intrinsics: list[CameraIntrinsics] = field(default_factory=list)
    rectifier: Rectifier | None = None  # set: distorted cameras are rectified by decode(); None: used as they are
    rectified: list[bool] = field(default_factory=list)  # per camera: its images are rectified (P), not raw (K + D)
    distortion: dict[str, str] = field(default_factory=dict)  # camera -> what decode() did about its distortion

    def decode(self, min_hw: tuple[int, int] | None = None, pool: Executor | None = None) -> dict[str, str]:
        """Convert the messages to RGB + intrinsics; cameras that fail move to `missing` (returned too).

        min_hw lets JPEGs decode at a reduced size no smaller than (height, width), with K scaled to match.
        With `pool` (decode_pool), its threads decode cameras alongside this one (share_jobs): the JPEG
        decoder releases the GIL, so 6 cameras take about half the time on 2 idle cores.
        """
        jobs = [functools.partial(self._convert, index, min_hw) for index in range(len(self.cameras))]
        outcomes = share_jobs(jobs, pool) if pool is not None else None
        failures, keep = {}, []
        for index, camera in enumerate(self.cameras):
            try:
                rgb, intrinsics, distortion = outcomes[index].result() if outcomes else jobs[index]()
            except (ImageConversionError, CameraInfoError, DistortionError) as error:
                failures[camera] = str(error)
                continue
            keep.append(index)
            self.images.append(rgb)
            self.intrinsics.append(intrinsics)
            if distortion:
                self.distortion[camera] = distortion
        self.missing.update(failures)
        for name in ("cameras", "frame_ids", "stamps_ns", "messages", "infos", "output_from_camera", "rectified"):
            if name == "rectified" and not self.rectified:
                continue  # left empty by the producer: every camera raw
            setattr(self, name, [getattr(self, name)[i] for i in keep])
        return failures

    def _convert(self, index: int, min_hw: tuple[int, int] | None
                 ) -> tuple[np.ndarray, CameraIntrinsics, str | None]:
        """RGB, intrinsics and what was done about distortion of one camera (safe on any thread: it changes
        nothing on the frame)."""
        rgb, sent_size = message_to_rgb_sized(self.messages[index], min_hw)
        rectified = self.rectified[index] if self.rectified else False
        camera_model = image_camera_model(self.infos[index], sent_size, rectified)
        intrinsics = camera_model.intrinsics
        if (rgb.shape[1], rgb.shape[0]) != sent_size:  # our own JPEG DCT reduction (min_hw): K scaled to it
            intrinsics = intrinsics.resized(rgb.shape[1], rgb.shape[0])
        return self._undistort(self.cameras[index], rgb, intrinsics, camera_model)

    def _undistort(self, camera: str, rgb: np.ndarray, intrinsics: CameraIntrinsics, camera_model: CameraModel
                   ) -> tuple[np.ndarray, CameraIntrinsics, str | None]:
        """The pinhole image, its intrinsics and what was applied (K + D rectified, P of a rectified image, ROI):
        the distortion text of /diagnostics."""
        region = camera_model.applied.partition("; ")[2]
        suffix = f"; {region}" if region else ""
        if not camera_model.d:
            return rgb, intrinsics, camera_model.applied
        model = camera_model.distortion_model or "<empty>"
        if self.rectifier is None:
            return rgb, intrinsics, (f"distorted ({model}, d={[round(v, 4) for v in camera_model.d]}) but rectify"
                                     f" is false: used as a pinhole image{suffix}")
        image = self.rectifier.rectify(camera, rgb, intrinsics.K, camera_model.distortion_model, camera_model.d)
        return image, intrinsics, f"rectified ({model}){suffix}"


def decode_pool(cameras: int) -> ThreadPoolExecutor | None:
    """Helper threads for RigFrame.decode: one per CPU beyond the decoding thread's own, never more than the
    other cameras; None on one CPU (decoding stays on the calling thread)."""
    helpers = min(cameras - 1, (os.cpu_count() or 1) - 1)
    return ThreadPoolExecutor(max_workers=helpers, thread_name_prefix="rig_decode") if helpers > 0 else None


def share_jobs(jobs: list[Callable[[], T]], pool: Executor) -> list[Future[T]]:
    """Run `jobs` on `pool` and on this thread at once; each job's outcome, in order. The pool starts them from
    the front, this thread takes the ones not started yet from the back: on a loaded machine, a helper thread
    that gets no CPU holds up at most the one job it started (waiting on the pool alone waited for all)."""
    futures = [pool.submit(job) for job in jobs]
    outcomes = list(futures)
    for index in reversed(range(len(jobs))):
        if not futures[index].cancel():  # running or done on the pool: the pool starts the rest before it
            break
        outcomes[index] = Future()
        try:
            outcomes[index].set_result(jobs[index]())
        except Exception as error:  # noqa: BLE001 - handed to the caller through the outcome, as a pool would
            outcomes[index].set_exception(error)
    return outcomes


@dataclass
class RigStatistics:
    """What the input path did with what it received (all counters only grow)."""

    frames: int = 0  # RigFrames handed to on_frame
    frames_uncompensated: int = 0  # fixed frame present but not connected: placed without ego-motion compensation
    sets_dropped_tf: int = 0  # no camera of the set had TF within tf_wait
    sets_replaced_waiting: int = 0  # a newer set came while this one waited for TF / CameraInfo
    sets_dropped_no_cameras: int = 0  # TF there, but no camera usable (no CameraInfo, not an optical frame)
    sets_discarded_on_reset: int = 0  # waiting for TF when time jumped back (a looped bag): of the old timeline
    sets_discarded_on_stop: int = 0  # pending or waiting when the input was destroyed (deactivate, shutdown)
    images_received: Counter = field(default_factory=Counter)  # camera -> images that arrived (before any check)
    images_discarded_after_reset: int = 0  # of the old timeline, still on their way at a reset (see reset)
    camera_errors: Counter = field(default_factory=Counter)  # camera -> decode / CameraInfo failures
    rejected_images: Counter = field(default_factory=Counter)  # camera -> images refused on arrival
    rejected_reasons: dict[str, str] = field(default_factory=dict)  # camera -> why the latest was refused

    def count_failures(self, failures: dict[str, str]) -> None:
        """Record the cameras a consumer could not decode (RigFrame.decode's result)."""
        for camera, reason in failures.items():
            self.camera_errors[camera] += 1
            self.last_errors[camera] = reason
    last_errors: dict[str, str] = field(default_factory=dict)  # camera or "tf" -> latest reason


def topics_from_format(cameras: list[str], image_format: str, info_format: str, compressed: bool,
                       image_rectified: str = "auto") -> list[CameraTopics]:
    """Topics per camera from format strings with a `{camera}` placeholder (e.g. /{camera}/camera_info);
    `image_rectified` (auto, true, false): see rectified_choice."""
    topics = []
    for name in cameras:
        image_topic = image_format.format(camera=name)
        topics.append(CameraTopics(name, image_topic, info_format.format(camera=name), compressed,
                                   rectified_choice(image_rectified, image_topic)))
    return topics


def input_qos(reliability: str, depth: int) -> QoSProfile:
    """QoS of the camera inputs: `best_effort` (sensor data) or `reliable`, keep-last depth."""
    policies = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
    if reliability not in policies:
        raise ValueError(f"reliability must be one of {sorted(policies)}, got '{reliability}'")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=policies[reliability],
                      durability=DurabilityPolicy.VOLATILE)


STEADY_CLOCK = Clock(clock_type=ClockType.STEADY_TIME)
IDLE_FLUSH_S = 2.0  # wall seconds without any image after which an incomplete pending camera set is closed
JUMP_MARGIN_NS = 1_000_000_000  # on a clock jump, data stamped up to 1 s after the new time is kept
STRAGGLER_S = 1.0  # wall seconds after a reset during which images of the old timeline are still expected
UP = np.array([0.0, 0.0, 1.0])  # gravity "up" of the output frame (REP-103 body frame: z up)
MAX_CAMERA_DISTANCE_M = 100.0  # default: a camera placed further than this from the output frame is left out


def pose_problem(output_from_camera: np.ndarray, max_distance_m: float) -> str | None:
    """Why a camera pose cannot be used, or None: checked in float32, the precision the model uses (1e300 m is
    finite in float64 but inf in float32), and its translation bounded (a camera 1e20 m away is a bad TF,
    and would paint a fake wall)."""
    with np.errstate(over="ignore"):
        pose32 = np.asarray(output_from_camera, dtype=np.float64).astype(np.float32)
    if not np.all(np.isfinite(pose32)):
        return "its transform is not finite in float32 (the model's precision)"
    distance = float(np.linalg.norm(pose32[:3, 3].astype(np.float64)))
    if distance > max_distance_m:
        return (f"it is placed {distance:.4g} m from the output frame, beyond max_camera_distance"
                f" ({max_distance_m:g} m)")
    return None


def optical_frame_problem(output_from_camera: np.ndarray) -> str | None:
    """Why a camera pose cannot be an optical frame (z forward, x right, y down) in a z-up output frame, or
    None. A body-style camera frame (x forward, z up) puts the optical axis straight up; an upside-down one
    points the image's "down" axis up. Cameras tilted down, even steeply, pass."""
    rotation = output_from_camera[:3, :3]
    axis_up, down_up = float(rotation[:, 2] @ UP), float(rotation[:, 1] @ UP)
    if axis_up > 0.7:
        return (f"its optical axis (z) points up (z . up = {axis_up:.2f}); a frame with x forward and z up is a"
                " body frame, publish the camera's optical frame instead")
    if down_up > 0.3:
        return f"its image 'down' axis (y) points up (y . up = {down_up:.2f}): upside down"
    return None

TF_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.VOLATILE)
TF_STATIC_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)


class CameraRigInput:
    """Subscribes a rig's cameras, infos and TF on `node`, and calls `on_frame` with each RigFrame."""

    def __init__(self, node: Node, cameras: list[CameraTopics], on_frame: Callable[[RigFrame], None], *,
                 output_frame: str, fixed_frame: str, max_camera_delay_s: float,
                 reference_camera: str | None, qos: QoSProfile, tf_wait_s: float = 0.5,
                 min_cameras: int = 1, check_optical_frames: bool = True, rectify: bool = True,
                 rectify_min_valid_fraction: float = MIN_VALID_FRACTION,
                 max_camera_distance_m: float = MAX_CAMERA_DISTANCE_M) -> None:
        self._node = node
        self._cameras = cameras
        self._on_frame = on_frame
        self.output_frame = output_frame
        self.fixed_frame = fixed_frame
        self._tf_wait_s = tf_wait_s
        self.check_optical_frames = check_optical_frames
        self.rectifier = Rectifier(rectify_min_valid_fraction) if rectify else None
        self.max_camera_distance_m = max_camera_distance_m
        self._rectified = {c.name: c.rectified if c.rectified is not None else topic_is_rectified(c.image_topic)
                           for c in cameras}
        self.tf = TfCache()
        self.sync = LatestCameraSynchronizer([c.name for c in cameras], max_camera_delay_s, reference_camera,
                                             min_cameras)
        self.stats = RigStatistics()
        self._infos: dict[str, CameraInfo] = {}
        self._info_paired: set[str] = set()  # cameras whose CameraInfo carries each image's own stamp
        self._waiting: tuple[CameraSet, float] | None = None  # a set whose TF has not arrived yet
        # After a reset: images stamped after this are of the old timeline, until the steady deadline.
        self._old_timeline: tuple[int, float] | None = None
        self._subscriptions = [
            node.create_subscription(TFMessage, "/tf", lambda m: self._tf_callback(m, static=False), TF_QOS),
            node.create_subscription(TFMessage, "/tf_static", lambda m: self._tf_callback(m, static=True),
                                     TF_STATIC_QOS),
        ]
        for camera in cameras:
            image_type = CompressedImage if camera.compressed else Image
            self._subscriptions.append(node.create_subscription(
                image_type, camera.image_topic, self._image_callback(camera.name), qos))
            self._subscriptions.append(node.create_subscription(
                CameraInfo, camera.info_topic, self._info_callback(camera.name), qos))
        # Steady clock: with use_sim_time a ROS-time timer would stall whenever /clock pauses (end of a bag).
        self._retry_timer = node.create_timer(0.02, self._on_timer, clock=STEADY_CLOCK)
        self._jump_handler = node.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(seconds=-0.1), on_clock_change=True),
            post_callback=lambda _jump: self.reset("clock_jump", node.get_clock().now().nanoseconds + JUMP_MARGIN_NS))

    def reset(self, kind: str = "manual", keep_until_ns: int | None = None) -> None:
        """Forget dynamic TF and pending images (time went backwards, e.g. a looped bag); with
        `keep_until_ns` (the new time + a margin), what is stamped up to it already belongs to the new
        timeline and stays (a looped bag's first images and /tf may arrive before its /clock), and images
        stamped after it that were still on their way are discarded on arrival until the clock comes near it
        (images_discarded_after_reset): added to the first set of the new timeline, such a straggler made that
        set's trigger stamp an old one and lost the set."""
        self.tf.clear_dynamic(kind, keep_until_ns)
        self.sync.reset(keep_until_ns)
        self._old_timeline = None if keep_until_ns is None else (keep_until_ns, time.monotonic() + STRAGGLER_S)
        if self._waiting is not None and (keep_until_ns is None
                                          or self._waiting[0].trigger_stamp_ns > keep_until_ns):
            self._waiting = None
            self.stats.sets_discarded_on_reset += 1

    def destroy(self) -> None:
        """Unsubscribe everything and unregister the clock jump callback (a callback left registered on the
        node's clock after this object is gone crashes the process on the next jump)."""
        if self._jump_handler is not None:
            self._jump_handler.unregister()
            self._jump_handler = None
        self.stats.sets_discarded_on_stop += self.sync.discard_pending() + (self._waiting is not None)
        self._waiting = None
        for subscription in self._subscriptions:
            self._node.destroy_subscription(subscription)
        self._subscriptions = []
        self._node.destroy_timer(self._retry_timer)

    def _tf_callback(self, message: TFMessage, static: bool) -> None:
        if self.tf.add_message(message, static):
            self.stats.last_errors["tf"] = self.tf.last_rejection
            self._node.get_logger().warning(f"rejected transforms: {self.tf.last_rejection}",
                                            throttle_duration_sec=5.0)
        self._retry_waiting()  # a waiting set may have needed this transform: go now, not on the next tick

    def _info_callback(self, camera: str) -> Callable[[CameraInfo], None]:
        def callback(msg: CameraInfo) -> None:
            self._infos[camera] = msg
            # The executor often runs the set's last image callback before that camera's CameraInfo (same
            # burst); waiting for the 20 ms retry tick cost about 10 ms of input delay per frame.
            self._retry_waiting()
        return callback

    def _of_old_timeline(self, stamp_ns: int) -> bool:
        """Whether an image arriving after a reset (time went back) is stamped after the reset's horizon, that
        is, belongs to the old timeline and was still on its way. The horizon is forgotten once the clock comes
        near it (images stamped later are then of the new timeline) or after STRAGGLER_S of steady time."""
        if self._old_timeline is None:
            return False
        horizon, deadline = self._old_timeline
        if time.monotonic() > deadline or self._node.get_clock().now().nanoseconds >= horizon - JUMP_MARGIN_NS // 2:
            self._old_timeline = None
            return False
        return stamp_ns > horizon

    def _info_pending(self, camera: str, image_stamp_ns: int) -> bool:
        """No CameraInfo yet, or, for a camera whose CameraInfo comes with every image (same stamp), the one of
        this image is still on its way: it travels on its own topic, and using the previous one is wrong when
        the calibration changes (another bag starts). A CameraInfo that never matches (latched) is used as is."""
        if camera not in self._infos:
            return True
        info_stamp = stamp_to_ns(self._infos[camera].header.stamp)
        if info_stamp == image_stamp_ns:
            self._info_paired.add(camera)
            return False
        return camera in self._info_paired and info_stamp < image_stamp_ns

    def _image_callback(self, camera: str) -> Callable[[Image | CompressedImage], None]:
        def callback(msg: Image | CompressedImage) -> None:
            self.stats.images_received[camera] += 1
            stamp_ns = stamp_to_ns(msg.header.stamp)
            if stamp_ns < 0:  # ROS time cannot be negative: such a stamp can be neither looked up nor published
                self._reject(camera, f"negative stamp {stamp_ns / 1e9:.9f} s")
                return
            if self._of_old_timeline(stamp_ns):
                self.stats.images_discarded_after_reset += 1
                return
            self._start_waiting(self.sync.add(camera, stamp_ns, msg, time.monotonic()))
        return callback

    def _start_waiting(self, camera_set: CameraSet | None) -> None:
        if camera_set is None:
            return
        if self._waiting is not None:
            self.stats.sets_replaced_waiting += 1
        self._waiting = (camera_set, time.monotonic() + self._tf_wait_s)
        self._retry_waiting()

    def _on_timer(self) -> None:
        # A set whose remaining images never come (end of a bag, lost on the way) is closed, not held forever.
        if self._waiting is None:
            self._start_waiting(self.sync.flush_idle(time.monotonic(), IDLE_FLUSH_S))
        self._retry_waiting()

    def _reject(self, camera: str, reason: str) -> None:
        self.stats.rejected_images[camera] += 1
        self.stats.rejected_reasons[camera] = reason
        self._node.get_logger().warning(f"{camera}: image refused: {reason}", throttle_duration_sec=5.0)

    def _retry_waiting(self) -> None:
        if self._waiting is None:
            return
        camera_set, deadline = self._waiting
        extrinsics, tf_errors, compensated = self._extrinsics(camera_set)
        no_info = [c for c in camera_set.messages if self._info_pending(c, camera_set.stamps_ns[c])]
        if (tf_errors or no_info) and time.monotonic() < deadline:
            return  # TF or CameraInfo may still be on its way (other topics): retried on the next tick
        self._waiting = None
        for camera, error in tf_errors.items():
            camera_set.missing[camera] = f"TF not available within {self._tf_wait_s:.2f} s: {error}"
            self.stats.last_errors["tf"] = str(error)
        if not extrinsics:
            self.stats.sets_dropped_tf += 1
            self._node.get_logger().warning(f"dropped a camera set: no camera had TF: {tf_errors}")
            return
        frame = self._build_frame(camera_set, extrinsics, compensated)
        if not frame.cameras:
            self.stats.sets_dropped_no_cameras += 1
            self._node.get_logger().warning(f"dropped a camera set: no usable camera: {frame.missing}",
                                            throttle_duration_sec=5.0)
            return
        self.stats.frames += 1
        self.stats.frames_uncompensated += self.tf.has_frame(self.fixed_frame) and not compensated
        self._on_frame(frame)

    def _extrinsics(self, camera_set: CameraSet) -> tuple[dict[str, np.ndarray], dict[str, str], bool]:
        """output <- camera per camera, and why it failed for the others; whether all were compensated.

        Goes through the fixed frame when it is on /tf, which compensates ego motion between stamps. When the
        fixed frame is there but not connected to the camera or the output frame (another tree, a loop), the
        camera is placed without compensation and `last_errors["fixed_frame"]` says why.
        """
        compensate = self.tf.has_frame(self.fixed_frame)
        extrinsics, errors, all_compensated = {}, {}, compensate
        for camera, msg in camera_set.messages.items():
            frame_id, stamp = msg.header.frame_id, camera_set.stamps_ns[camera]
            try:
                if compensate:
                    try:
                        extrinsics[camera] = self.tf.lookup_across_time(
                            self.output_frame, camera_set.trigger_stamp_ns, frame_id, stamp, self.fixed_frame)
                        continue
                    except FrameNotAvailableError as error:
                        extrinsics[camera] = self.tf.lookup(self.output_frame, frame_id, stamp)
                        all_compensated = False
                        self.stats.last_errors["fixed_frame"] = (
                            f"fixed frame '{self.fixed_frame}' is not connected ({error}); cameras placed without"
                            " ego-motion compensation")
                        continue
                extrinsics[camera] = self.tf.lookup(self.output_frame, frame_id, stamp)
            except TfLookupError as error:
                errors[camera] = str(error)
        return extrinsics, errors, all_compensated and bool(extrinsics)

    def _build_frame(self, camera_set: CameraSet, extrinsics: dict[str, np.ndarray], compensated: bool
                     ) -> RigFrame:
        frame = RigFrame(stamp_ns=camera_set.trigger_stamp_ns, output_frame=self.output_frame, cameras=[],
                         frame_ids=[], stamps_ns=[], messages=[], infos=[], output_from_camera=[],
                         missing=dict(camera_set.missing), motion_compensated=compensated,
                         rectifier=self.rectifier)
        for camera in self.sync.camera_names:
            if camera not in extrinsics:
                continue
            if camera not in self._infos:
                frame.missing[camera] = f"no CameraInfo received within {self._tf_wait_s:.2f} s"
                continue
            msg = camera_set.messages[camera]
            problem = pose_problem(extrinsics[camera], self.max_camera_distance_m)
            if problem is not None:
                reason = f"frame '{msg.header.frame_id}' in '{self.output_frame}' is unusable: {problem}"
                frame.missing[camera] = reason
                self.stats.count_failures({camera: reason})
                continue
            problem = optical_frame_problem(extrinsics[camera]) if self.check_optical_frames else None
            if problem is not None:
                reason = (f"frame '{msg.header.frame_id}' is not an optical camera frame in '{self.output_frame}'"
                          f" (REP-103 optical: z forward, x right, y down): {problem}")
                frame.missing[camera] = reason
                self.stats.count_failures({camera: reason})
                continue
            frame.cameras.append(camera)
            frame.frame_ids.append(msg.header.frame_id)
            frame.stamps_ns.append(camera_set.stamps_ns[camera])
            frame.messages.append(msg)
            frame.infos.append(self._infos[camera])
            frame.output_from_camera.append(extrinsics[camera])
            frame.rectified.append(self._rectified[camera])
        return frame
