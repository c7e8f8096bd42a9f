"""distillnerf-bag2nusc: a rosbag2 (MCAP or SQLite) of any rig -> a nuScenes-format dataroot for training.

The rig is named as perception_node's parameters name it (`cameras`, `image_topic_format`,
`camera_info_topic_format`, `compressed`, `image_rectified`, `output_frame`, `fixed_frame`; `--params` reads
them from a node parameter file, options override). Every time is a message's header stamp, never the
bag's receive time, so a bag recorded live converts as one written offline.

- Keyframes: the reference stream's stamps (the LiDAR with `--lidar-topic`, else `--reference` or the
  node's `reference_camera` or the first camera), at most `--rate` per second; a stamp is a keyframe when
  every camera has an image within `--tolerance` s of it (default: the node's `max_camera_delay`), with its
  CameraInfo seen and TF at every sensor's own stamp. Anything else is skipped and counted by reason.
- Calibration: output_frame <- sensor frame (header.frame_id) from TF (`/tf_static`); a camera's
  intrinsics from its CameraInfo as the node reads it (REP-104: P of an `image_rect*` topic, K + D of a
  raw one, ROI and binning applied). Distortion is rectified to the pinhole camera with the same K by the
  node's own rectification (distillnerf_core/rectify.py), or refused with the reason.
- Ego poses: fixed_frame <- output_frame at every sensor's own stamp, interpolated in the dynamic TF
  (`/tf`, plus `--odometry-topic` nav_msgs/Odometry as a TF edge); an odometry-only bag works with
  `--fixed-frame odom`.
- Images: a CompressedImage that needs no rectification keeps its bytes (JPEG -> .jpg, PNG -> .png); a raw
  Image or a rectified one is encoded as JPEG (`--jpeg-quality`).
- LiDAR (`--lidar-topic`): PointCloud2 x, y, z (+ intensity, ring when present, else 0) -> `.pcd.bin`
  (float32 x 5, nuScenes layout) in its own frame; non-finite points are dropped and counted. Without a
  LiDAR topic every keyframe gets an EMPTY `LIDAR_TOP` sweep (0 points, in output_frame) at the reference
  stamp: the loaders find the keyframe's reference ego pose there, and there is no LiDAR depth target.
- Ego-body masks: `--masks DIR` takes DIR/<camera>.png (255 valid, 0 the car's body) in the recorded pixels;
  a rectified camera's mask is rectified with it and its pixels without a source pixel are masked too.
- Output: the 13 devkit tables (as distillnerf-dgp2nusc writes them; no annotations), a placeholder map,
  `bag2nusc.json` (options, counts, what was skipped and why), written to a temporary folder beside DIR
  and renamed into place. A message that cannot be used (undecodable, a bad CameraInfo, a malformed
  PointCloud2, a transform TF refuses) is an error naming its topic and stamp; nothing is written then.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image as PILImage
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from tf2_msgs.msg import TFMessage

from distillnerf_core.geometry import make_transform, matrix_to_quaternion
from distillnerf_core.rectify import MIN_VALID_FRACTION, DistortionError, Rectifier
from distillnerf_ros.conversions.camera_info import CameraInfoError, image_camera_model, topic_is_rectified
from distillnerf_ros.conversions.images import ImageConversionError, message_to_rgb_sized
from distillnerf_ros.conversions.pointcloud import PointCloudError, pointcloud2_to_points
from distillnerf_ros.input.tf_cache import TfCache, TfLookupError, stamp_to_ns
from distillnerf_ros.nodes.parameter_schema import RIG_PARAMETERS, validate_value
from distillnerf_ros.tools.bag_check import MalformedBagError, check_storage_file
from distillnerf_ros.tools.play import DEFAULT_MAX_DECOMPRESSED_MB, BagError, decompress_message, uncompressed_view

VERSION = "v1.0-bag"
LIDAR_CHANNEL = "LIDAR_TOP"
MAP_FILENAME = "maps/bag_placeholder.png"
TF_TOPIC, TF_STATIC_TOPIC = "/tf", "/tf_static"
TYPES = {"compressed": "sensor_msgs/msg/CompressedImage", "raw": "sensor_msgs/msg/Image",
         "info": "sensor_msgs/msg/CameraInfo", "lidar": "sensor_msgs/msg/PointCloud2",
         "tf": "tf2_msgs/msg/TFMessage", "odometry": "nav_msgs/msg/Odometry"}
RATE_SLACK = 0.1  # a reference stamp this fraction of a period early still starts the next keyframe (jitter)
RIG_KEYS = ("cameras", "image_topic_format", "camera_info_topic_format", "compressed", "image_rectified",
            "output_frame", "fixed_frame", "max_camera_delay", "reference_camera", "rectify_min_valid_fraction")
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


class Bag2NuscError(ValueError):
    """A bag that cannot be converted with these options; the message names the topic and stamp (or option)."""


def stamp_text(stamp_ns: int) -> str:
    return f"{stamp_ns // 1_000_000_000}.{stamp_ns % 1_000_000_000:09d} s"


# -- options ---------------------------------------------------------------------------------------------------
@dataclass
class Options:
    """What to read from the bag and how to write it (the rig part as perception_node's parameters)."""

    cameras: list[str] = field(default_factory=lambda: list(_rig_default("cameras")))
    image_topic_format: str = field(default_factory=lambda: _rig_default("image_topic_format"))
    camera_info_topic_format: str = field(default_factory=lambda: _rig_default("camera_info_topic_format"))
    compressed: bool = True
    image_rectified: str = "auto"  # auto | true | false, as the node's parameter
    output_frame: str = "base_link"
    fixed_frame: str = "map"
    max_camera_delay: float = 0.1  # the node's parameter: the default tolerance
    reference_camera: str = ""
    rectify_min_valid_fraction: float = MIN_VALID_FRACTION
    lidar_topic: str = ""
    odometry_topic: str = ""
    reference: str = ""  # a camera name or "lidar"; "": the LiDAR when there is one, else reference_camera / first
    rate: float = 2.0  # keyframes per second at most; 0: every reference stamp
    tolerance: float | None = None  # s; None: max_camera_delay
    start: float = 0.0  # s after the first reference stamp: keyframes from here ...
    end: float | None = None  # ... to before here (None: the end of the bag); e.g. fit on one part, score on another
    version: str = VERSION
    scene_name: str = ""
    jpeg_quality: int = 95
    masks: str = ""  # folder of <camera>.png ego-body masks (255 valid, 0 body) in the images' pixels as recorded

    def image_topic(self, camera: str) -> str:
        return absolute(self.image_topic_format.replace("{camera}", camera))

    def info_topic(self, camera: str) -> str:
        return absolute(self.camera_info_topic_format.replace("{camera}", camera))

    def rectified(self, camera: str) -> bool:
        """The node's image_rectified: auto = the topic has a part starting image_rect."""
        if self.image_rectified == "auto":
            return topic_is_rectified(self.image_topic(camera))
        return self.image_rectified == "true"

    @property
    def tolerance_ns(self) -> int:
        return int(round((self.max_camera_delay if self.tolerance is None else self.tolerance) * 1e9))

    def reference_stream(self) -> str:
        """'lidar' or the camera whose stamps are the keyframe candidates."""
        reference = self.reference or ("lidar" if self.lidar_topic else self.reference_camera or self.cameras[0])
        return reference

    def check(self) -> None:
        """Bag2NuscError for a value the node would refuse, or an option out of range."""
        specs = {spec.name: spec for spec in RIG_PARAMETERS}
        for key in RIG_KEYS:
            reason = validate_value(specs[key], getattr(self, key))
            if reason:
                raise Bag2NuscError(f"{key} = {getattr(self, key)!r} is not allowed ({reason}); allowed:"
                                    f" {specs[key].allowed_text()}")
        reference = self.reference_stream()
        if reference == "lidar" and not self.lidar_topic:
            raise Bag2NuscError("--reference lidar needs --lidar-topic")
        if reference != "lidar" and reference not in self.cameras:
            raise Bag2NuscError(f"reference {reference!r} is neither 'lidar' nor one of cameras {self.cameras}")
        if not (self.rate >= 0 and np.isfinite(self.rate)):
            raise Bag2NuscError(f"--rate {self.rate} must be a finite number >= 0 (0: every reference stamp)")
        if self.tolerance is not None and not 0 <= self.tolerance <= 10:
            raise Bag2NuscError(f"--tolerance {self.tolerance} must be in 0 .. 10 s")
        if not (self.start >= 0 and np.isfinite(self.start)) or (self.end is not None and not self.end > self.start):
            raise Bag2NuscError(f"--start {self.start} / --end {self.end}: need 0 <= start < end (seconds after the"
                                " first reference stamp)")
        if self.masks and not Path(self.masks).is_dir():
            raise Bag2NuscError(f"--masks {self.masks} is not a folder")
        if not 1 <= self.jpeg_quality <= 100:
            raise Bag2NuscError(f"--jpeg-quality {self.jpeg_quality} must be in 1 .. 100")
        if not re.fullmatch(r"v1\.0-[A-Za-z0-9_.-]+", self.version):
            raise Bag2NuscError(f"--version {self.version!r} must look like v1.0-<name> (letters, digits, _ . -)")
        for topic in (self.lidar_topic, self.odometry_topic):
            if topic and not re.fullmatch(r"/?[A-Za-z_][A-Za-z0-9_/]*", topic):
                raise Bag2NuscError(f"topic {topic!r} is not a ROS topic name")
        if "~" in self.image_topic_format + self.camera_info_topic_format:
            raise Bag2NuscError("a private topic (~) is the node's own name: give the bag's topic formats")
        self.lidar_topic, self.odometry_topic = absolute(self.lidar_topic), absolute(self.odometry_topic)


def absolute(topic: str) -> str:
    """A relative topic as a node in the root namespace resolves it (bags store absolute names); "" stays."""
    return topic if not topic or topic.startswith("/") else f"/{topic}"


def _rig_default(name: str) -> Any:
    return next(spec.default for spec in RIG_PARAMETERS if spec.name == name)


def parameters_from_file(path: Path) -> dict[str, Any]:
    """The rig keys (and lidar_topic) of a node parameter file (`/**: ros__parameters: ...` or a node name)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise Bag2NuscError(f"--params {path}: cannot read it as YAML: {error}") from error
    params: dict[str, Any] = {}
    for node, body in (data or {}).items() if isinstance(data, dict) else []:
        if isinstance(body, dict) and isinstance(body.get("ros__parameters"), dict):
            params.update(body["ros__parameters"])
        else:
            raise Bag2NuscError(f"--params {path}: {node!r} has no ros__parameters mapping")
    if not params:
        raise Bag2NuscError(f"--params {path}: no `<node>: ros__parameters:` mapping in it")
    return {key: value for key, value in params.items() if key in RIG_KEYS or key == "lidar_topic"}


# -- what the first pass collects -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Stamped:
    """One message's header stamp and frame (its data is read again in the second pass)."""

    stamp_ns: int
    frame_id: str


@dataclass
class Chosen:
    """A sensor reading of a keyframe: its stamp, frame, output_frame <- sensor and fixed_frame <- output_frame."""

    topic: str
    stamp_ns: int
    frame_id: str
    ego_from_sensor: np.ndarray
    global_from_ego: np.ndarray
    info: CameraInfo | None = None


@dataclass
class Keyframe:
    stamp_ns: int
    cameras: dict[str, Chosen]
    lidar: Chosen | None


@dataclass
class Summary:
    """What the conversion used and what it skipped, with why (kind -> count, and the first example)."""

    reference_stamps: int = 0
    between_keyframes: int = 0
    outside_window: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_example: dict[str, str] = field(default_factory=dict)
    nonfinite_lidar_points: int = 0
    images_on_topics: dict[str, int] = field(default_factory=dict)

    def skip(self, kind: str, example: str) -> None:
        self.skipped[kind] += 1
        self.first_example.setdefault(kind, example)

    def lines(self) -> list[str]:
        out = [f"  {count} reference stamps skipped, {kind}: e.g. {self.first_example[kind]}"
               for kind, count in sorted(self.skipped.items())]
        if self.between_keyframes:
            out.append(f"  {self.between_keyframes} reference stamps between keyframes (--rate)")
        if self.outside_window:
            out.append(f"  {self.outside_window} reference stamps outside --start / --end")
        if self.nonfinite_lidar_points:
            out.append(f"  {self.nonfinite_lidar_points} non-finite LiDAR points dropped")
        return out


def _deserialize(data: bytes, cls, topic: str, bag_time_ns: int):
    try:
        return deserialize_message(bytes(data), cls)
    except Exception as error:  # rclpy raises several types for truncated or garbage CDR
        raise Bag2NuscError(f"{topic}: the message recorded at bag time {stamp_text(bag_time_ns)} is not a valid"
                            f" {cls.__name__}: {type(error).__name__}: {error}") from error


def _header_stamp(message, topic: str) -> int:
    stamp_ns = stamp_to_ns(message.header.stamp)
    if stamp_ns <= 0:
        raise Bag2NuscError(f"{topic}: a message has header stamp {stamp_text(stamp_ns)} (zero): its time is unknown")
    return stamp_ns


def odometry_matrix(message) -> np.ndarray:
    q, t = message.pose.pose.orientation, message.pose.pose.position
    return make_transform(np.array([q.w, q.x, q.y, q.z]), np.array([t.x, t.y, t.z]))


class BagReader:
    """A rosbag2 opened as distillnerf-play opens it (storage checked, zstd decompressed bounded)."""

    def __init__(self, bag: Path, max_decompressed_mb: int = DEFAULT_MAX_DECOMPRESSED_MB) -> None:
        self.bag = Path(bag)
        if not (self.bag / "metadata.yaml").is_file():
            raise Bag2NuscError(f"{self.bag} is not a rosbag2 directory (no metadata.yaml)")
        self._cap = max_decompressed_mb * 1_000_000
        self._workdir = tempfile.TemporaryDirectory(prefix="distillnerf-bag2nusc-")
        try:
            readable, self._compressed = uncompressed_view(self.bag, Path(self._workdir.name), self._cap)
            for storage in sorted(readable.glob("*.mcap")) + sorted(readable.glob("*.db3")):
                check_storage_file(storage)
            self.reader = Reader(readable)
            self.reader.open()
        except (MalformedBagError, OSError, BagError) as error:
            self._workdir.cleanup()
            raise Bag2NuscError(f"bag {self.bag} is malformed: {error}") from error
        except Exception as error:  # rosbags raises many types on malformed metadata
            self._workdir.cleanup()
            raise Bag2NuscError(f"cannot read bag {self.bag}: {type(error).__name__}: {error}") from error
        self.topics: dict[str, set[str]] = {}
        for connection in self.reader.connections:
            self.topics.setdefault(connection.topic, set()).add(connection.msgtype)

    def messages(self, topics: set[str]):
        """(topic, bag time ns, CDR bytes) of these topics, in bag order."""
        connections = [c for c in self.reader.connections if c.topic in topics]
        try:
            for connection, bag_ns, data in self.reader.messages(connections=connections):
                if self._compressed:
                    data = decompress_message(data, self._cap, connection.topic)
                yield connection.topic, bag_ns, data
        except BagError as error:
            raise Bag2NuscError(str(error)) from error
        except Bag2NuscError:
            raise
        except Exception as error:  # a corrupted chunk or row
            raise Bag2NuscError(f"bag {self.bag} is corrupted: {type(error).__name__}: {error}") from error

    def close(self) -> None:
        try:
            self.reader.close()
        finally:
            self._workdir.cleanup()


def check_topics(bag: BagReader, options: Options) -> dict[str, str]:
    """topic -> expected type of every topic read; an image or LiDAR topic the bag lacks, or any topic of
    another type, is a Bag2NuscError naming it (CameraInfo, /tf and /tf_static may be missing: the summary
    then says why nothing could be used)."""
    image_type = TYPES["compressed" if options.compressed else "raw"]
    wanted = {TF_TOPIC: TYPES["tf"], TF_STATIC_TOPIC: TYPES["tf"]}
    for camera in options.cameras:
        wanted[options.image_topic(camera)] = image_type
        wanted[options.info_topic(camera)] = TYPES["info"]
    if options.lidar_topic:
        wanted[options.lidar_topic] = TYPES["lidar"]
    if options.odometry_topic:
        wanted[options.odometry_topic] = TYPES["odometry"]
    required = [options.image_topic(c) for c in options.cameras] + [t for t in (options.lidar_topic,
                                                                                 options.odometry_topic) if t]
    missing = [topic for topic in required if topic not in bag.topics]
    if missing:
        raise Bag2NuscError(f"topics {missing} are not in {bag.bag}; it has {sorted(bag.topics)} (cameras and"
                            " topics are chosen like perception_node's parameters: --cameras,"
                            " --image-topic-format, --params)")
    for topic, expected in wanted.items():
        found = bag.topics.get(topic, {expected})
        if found != {expected}:
            hint = " (--compressed false reads sensor_msgs/msg/Image)" if expected == image_type else ""
            raise Bag2NuscError(f"topic {topic} has type {sorted(found)} in {bag.bag}, expected {expected}{hint}")
    return wanted


@dataclass
class Scan:
    """First pass: TF, CameraInfo per camera, the stamps of every image and sweep."""

    tf: TfCache
    infos: dict[str, list[tuple[int, CameraInfo]]]
    images: dict[str, list[Stamped]]
    lidar: list[Stamped]


def scan(bag: BagReader, options: Options, wanted: dict[str, str]) -> Scan:
    big = 10**9  # offline: every transform is kept and time never "jumps back"
    tf = TfCache(cache_duration_s=big, backwards_jump_s=big, max_entries_per_edge=big)
    image_topics = {options.image_topic(c): c for c in options.cameras}
    info_topics = {options.info_topic(c): c for c in options.cameras}
    result = Scan(tf, {c: [] for c in options.cameras}, {c: [] for c in options.cameras}, [])
    image_cls = CompressedImage if options.compressed else Image
    for topic, bag_ns, data in bag.messages(set(wanted)):
        if topic in (TF_TOPIC, TF_STATIC_TOPIC):
            message = _deserialize(data, TFMessage, topic, bag_ns)
            if tf.add_message(message, static=topic == TF_STATIC_TOPIC):
                stamps = sorted({stamp_text(stamp_to_ns(t.header.stamp)) for t in message.transforms})
                raise Bag2NuscError(f"{topic}: the message stamped {', '.join(stamps)} holds a transform TF"
                                    f" refuses: {tf.last_rejection}")
        elif topic == options.odometry_topic:
            from nav_msgs.msg import Odometry

            message = _deserialize(data, Odometry, topic, bag_ns)
            stamp_ns = _header_stamp(message, topic)
            try:
                tf.set_transform(message.header.frame_id, message.child_frame_id, stamp_ns, odometry_matrix(message),
                                 static=False)
            except ValueError as error:
                raise Bag2NuscError(f"{topic} at {stamp_text(stamp_ns)}: {error}") from error
        elif topic in info_topics:
            message = _deserialize(data, CameraInfo, topic, bag_ns)
            result.infos[info_topics[topic]].append((_header_stamp(message, topic), message))
        elif topic in image_topics:
            message = _deserialize(data, image_cls, topic, bag_ns)
            result.images[image_topics[topic]].append(Stamped(_header_stamp(message, topic), message.header.frame_id))
        elif topic == options.lidar_topic:
            message = _deserialize(data, PointCloud2, topic, bag_ns)
            result.lidar.append(Stamped(_header_stamp(message, topic), message.header.frame_id))
    for stamped in (*result.images.values(), result.lidar):
        stamped.sort(key=lambda s: s.stamp_ns)
    for infos in result.infos.values():
        infos.sort(key=lambda item: item[0])
    return result


# -- keyframes -------------------------------------------------------------------------------------------------
def nearest(stamps: list[int], stamp_ns: int) -> int | None:
    """Index of the stamp nearest stamp_ns (sorted list), or None when empty."""
    if not stamps:
        return None
    index = int(np.searchsorted(stamps, stamp_ns))
    candidates = [i for i in (index - 1, index) if 0 <= i < len(stamps)]
    return min(candidates, key=lambda i: abs(stamps[i] - stamp_ns))


class KeyframeChooser:
    def __init__(self, found: Scan, options: Options, summary: Summary) -> None:
        self.found, self.options, self.summary = found, options, summary
        self.image_stamps = {c: [s.stamp_ns for s in found.images[c]] for c in options.cameras}
        self.info_stamps = {c: [s for s, _ in found.infos[c]] for c in options.cameras}
        self.lidar_stamps = [s.stamp_ns for s in found.lidar]

    def _place(self, topic: str, stamped: Stamped, fallback_frame: str = "") -> Chosen | str:
        """The sensor's calibration and ego pose at its own stamp, or why not."""
        frame = stamped.frame_id or fallback_frame
        if not frame:
            return f"{topic} at {stamp_text(stamped.stamp_ns)} has no frame_id"
        try:
            ego_from_sensor = self.found.tf.lookup(self.options.output_frame, frame, stamped.stamp_ns)
            global_from_ego = self.found.tf.lookup(self.options.fixed_frame, self.options.output_frame,
                                                   stamped.stamp_ns)
        except TfLookupError as error:
            return f"{topic} at {stamp_text(stamped.stamp_ns)}: {error}"
        return Chosen(topic, stamped.stamp_ns, frame, ego_from_sensor, global_from_ego)

    def candidate(self, stamp_ns: int) -> Keyframe | None:
        """The keyframe at this reference stamp, or None (the reason counted in the summary)."""
        tolerance, options = self.options.tolerance_ns, self.options
        cameras: dict[str, Chosen] = {}
        for camera in options.cameras:
            index = nearest(self.image_stamps[camera], stamp_ns)
            if index is None or abs(self.image_stamps[camera][index] - stamp_ns) > tolerance:
                self.summary.skip(f"camera {camera} missing", f"no image on {options.image_topic(camera)} within"
                                  f" {tolerance / 1e9:g} s of {stamp_text(stamp_ns)}")
                return None
            stamped = self.found.images[camera][index]
            info_index = nearest(self.info_stamps[camera], stamped.stamp_ns)
            if info_index is None:
                self.summary.skip(f"CameraInfo of {camera} never seen", f"nothing on {options.info_topic(camera)}")
                return None
            info = self.found.infos[camera][info_index][1]
            placed = self._place(options.image_topic(camera), stamped, info.header.frame_id)
            if isinstance(placed, str):
                self.summary.skip("no TF at that stamp", placed)
                return None
            placed.info = info
            cameras[camera] = placed
        lidar = None
        if options.lidar_topic:
            index = nearest(self.lidar_stamps, stamp_ns)
            if index is None or abs(self.lidar_stamps[index] - stamp_ns) > tolerance:
                self.summary.skip("LiDAR sweep missing", f"no sweep on {options.lidar_topic} within"
                                  f" {tolerance / 1e9:g} s of {stamp_text(stamp_ns)}")
                return None
            lidar = self._place(options.lidar_topic, self.found.lidar[index])
            if isinstance(lidar, str):
                self.summary.skip("no TF at that stamp", lidar)
                return None
        else:  # the empty sweep sits at the reference stamp, in output_frame
            lidar = self._place("(reference)", Stamped(stamp_ns, options.output_frame))
            if isinstance(lidar, str):
                self.summary.skip("no TF at that stamp", lidar)
                return None
        return Keyframe(stamp_ns, cameras, lidar)

    def choose(self) -> list[Keyframe]:
        reference = self.options.reference_stream()
        stamps = self.lidar_stamps if reference == "lidar" else self.image_stamps[reference]
        stamps = sorted(set(stamps))
        self.summary.reference_stamps = len(stamps)
        period = int(1e9 / self.options.rate) if self.options.rate > 0 else 0
        keyframes: list[Keyframe] = []
        first = stamps[0] if stamps else 0
        end = np.inf if self.options.end is None else self.options.end
        for stamp_ns in stamps:
            if not self.options.start <= (stamp_ns - first) / 1e9 < end:
                self.summary.outside_window += 1
                continue
            if keyframes and stamp_ns - keyframes[-1].stamp_ns < period * (1 - RATE_SLACK):
                self.summary.between_keyframes += 1
                continue
            keyframe = self.candidate(stamp_ns)
            if keyframe is not None:
                keyframes.append(keyframe)
        return keyframes


# -- writing ---------------------------------------------------------------------------------------------------
def us(stamp_ns: int) -> int:
    return (stamp_ns + 500) // 1000


class DatarootWriter:
    """Files into a staging folder and the rows of the 13 tables."""

    def __init__(self, root: Path, options: Options, log_name: str, token_seed: str) -> None:
        self.root, self.options, self.log_name, self.seed = root, options, log_name, token_seed
        self.rectifier = Rectifier(options.rectify_min_valid_fraction)
        self.calibrations: dict[tuple, str] = {}
        self.tables: dict[str, list[dict]] = {name: [] for name in (
            "sensor", "calibrated_sensor", "ego_pose", "sample", "sample_data", "scene", "log", "map", "instance",
            "sample_annotation", "category", "attribute", "visibility")}
        self.models: dict[str, Any] = {}  # camera -> the CameraModel its last image was read with

    def token(self, *parts: object) -> str:
        return hashlib.md5("/".join(str(p) for p in ("bag", self.seed, *parts)).encode()).hexdigest()

    def calibration(self, channel: str, ego_from_sensor: np.ndarray, K: np.ndarray | None) -> str:
        """The calibrated_sensor token of this channel with this extrinsic and K (one row per distinct value)."""
        key = (channel, tuple(np.round(ego_from_sensor, 12).ravel()),
               None if K is None else tuple(np.round(K, 12).ravel()))
        if key not in self.calibrations:
            token = self.token("calib", channel, len(self.calibrations))
            self.calibrations[key] = token
            self.tables["calibrated_sensor"].append({
                "token": token, "sensor_token": self.token("sensor", channel),
                "translation": ego_from_sensor[:3, 3].tolist(),
                "rotation": matrix_to_quaternion(ego_from_sensor[:3, :3]).tolist(),
                "camera_intrinsic": K.tolist() if K is not None else []})
        return self.calibrations[key]

    def write_image(self, camera: str, chosen: Chosen, message) -> tuple[str, np.ndarray, int, int]:
        """Write one camera image; returns (filename, K of the written image, width, height)."""
        where = f"{chosen.topic} at {stamp_text(chosen.stamp_ns)}"
        try:
            # a JPEG kept as it is only needs to decode (checked at 1/8 scale, several times faster)
            passthrough = isinstance(message, CompressedImage)
            rgb, size = message_to_rgb_sized(message, (1, 1) if passthrough else None)
            model = image_camera_model(chosen.info, size, self.options.rectified(camera))
            if model.distortion_model:
                if passthrough:
                    rgb, size = message_to_rgb_sized(message)
                rgb = self.rectifier.rectify(camera, rgb, model.intrinsics.K, model.distortion_model, model.d)
        except (ImageConversionError, CameraInfoError, DistortionError) as error:
            kind = "its distortion cannot be rectified" if isinstance(error, DistortionError) else "cannot be used"
            raise Bag2NuscError(f"{where}: {kind}: {error}") from error
        self.models[camera] = model
        if isinstance(message, CompressedImage) and not model.distortion_model:
            data = bytes(message.data)  # the recorded bytes, unchanged
            ext = "png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "jpg"
        else:
            buffer = io.BytesIO()
            PILImage.fromarray(rgb).save(buffer, format="JPEG", quality=self.options.jpeg_quality)
            data, ext = buffer.getvalue(), "jpg"
        name = f"samples/{camera}/{self.log_name}__{camera}__{us(chosen.stamp_ns)}.{ext}"
        self._write(name, data)
        return name, model.intrinsics.K, model.intrinsics.width, model.intrinsics.height

    def write_lidar(self, chosen: Chosen, message: PointCloud2 | None) -> tuple[str, int]:
        """Write one sweep as .pcd.bin (float32 x, y, z, intensity, ring); returns (filename, dropped points)."""
        dropped = 0
        if message is None:
            points = np.zeros((0, 5), np.float32)
        else:
            try:
                cloud = pointcloud2_to_points(message)
            except PointCloudError as error:
                raise Bag2NuscError(f"{chosen.topic} at {stamp_text(chosen.stamp_ns)}: {error}") from error
            names = cloud.dtype.names or ()
            if not {"x", "y", "z"} <= set(names):
                raise Bag2NuscError(f"{chosen.topic} at {stamp_text(chosen.stamp_ns)}: PointCloud2 fields {list(names)}"
                                    " lack x, y, z")
            columns = [cloud[n].astype(np.float64) if n in names else np.zeros(len(cloud))
                       for n in ("x", "y", "z", "intensity", "ring")]
            points = np.stack(columns, axis=1)
            finite = np.all(np.isfinite(points), axis=1)
            dropped = int(np.count_nonzero(~finite))
            points = points[finite].astype(np.float32)
        name = f"samples/{LIDAR_CHANNEL}/{self.log_name}__{LIDAR_CHANNEL}__{us(chosen.stamp_ns)}.pcd.bin"
        self._write(name, points.astype("<f4").tobytes())
        return name, dropped

    def write_masks(self) -> dict[str, dict]:
        """masks/<camera>.png (255 valid, 0 not: ego_masks.py's layout): the --masks file of the camera, rectified
        with its images, and for a rectified camera the pixels without a source pixel. Only cameras with an
        invalid pixel get a file; returns what was written per camera."""
        written = {}
        for camera, model in self.models.items():
            size = (model.intrinsics.width, model.intrinsics.height)
            valid, source = np.full(size[::-1], 255, np.uint8), None
            path = Path(self.options.masks) / f"{camera}.png" if self.options.masks else None
            if path is not None and path.is_file():
                try:
                    with PILImage.open(path) as image:
                        valid = np.asarray(image.convert("L")).copy()
                except (OSError, ValueError, PILImage.DecompressionBombError) as error:
                    raise Bag2NuscError(f"--masks {path}: not a readable image: {error}") from error
                if valid.shape != size[::-1]:
                    raise Bag2NuscError(f"--masks {path} is {valid.shape[1]}x{valid.shape[0]}, but {camera}'s images"
                                        f" are {size[0]}x{size[1]}")
                source = str(path)
            if model.distortion_model:  # the mask is in raw pixels: rectified as the images are, border invalid
                rgb = np.repeat(np.where(valid > 127, 255, 0).astype(np.uint8)[..., None], 3, axis=2)
                valid = self.rectifier.rectify(f"{camera} mask", rgb, model.intrinsics.K, model.distortion_model,
                                               model.d)[..., 0]
            valid = np.where(valid > 127, 255, 0).astype(np.uint8)
            if valid.min() == 255:
                continue
            (self.root / "masks").mkdir(exist_ok=True)
            PILImage.fromarray(valid).save(self.root / "masks" / f"{camera}.png")
            written[camera] = {"from": source, "rectified": bool(model.distortion_model),
                               "masked_fraction": round(float(np.mean(valid == 0)), 6)}
        if written:
            (self.root / "masks" / "meta.json").write_text(json.dumps(
                {"method": "distillnerf-bag2nusc: --masks files and rectification borders", "cameras": written},
                indent=1))
        return written

    def _write(self, name: str, data: bytes) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def build_tables(self, keyframes: list[Keyframe], written: dict[tuple[str, int], tuple], scene_name: str,
                     description: str) -> None:
        """Every table's rows; `written[(channel, stamp)]` = (filename, K, width, height) of each file."""
        T = self.tables
        channels = [*self.options.cameras, LIDAR_CHANNEL]
        T["sensor"] = [{"token": self.token("sensor", ch), "channel": ch,
                        "modality": "lidar" if ch == LIDAR_CHANNEL else "camera"} for ch in channels]
        log_tok, scene_tok = self.token("log"), self.token("scene")
        samples = [self.token("sample", i) for i in range(len(keyframes))]
        for i, keyframe in enumerate(keyframes):
            T["sample"].append({"token": samples[i], "timestamp": us(keyframe.stamp_ns), "scene_token": scene_tok,
                                "prev": samples[i - 1] if i else "", "next": samples[i + 1] if i + 1 < len(samples)
                                else ""})
            sensors = [*keyframe.cameras.items(), (LIDAR_CHANNEL, keyframe.lidar)]
            for channel, chosen in sensors:
                filename, K, width, height = written[(channel, chosen.stamp_ns)]
                sd = self.token("sd", channel, i)
                T["ego_pose"].append({"token": sd, "timestamp": us(chosen.stamp_ns),
                                      "rotation": matrix_to_quaternion(chosen.global_from_ego[:3, :3]).tolist(),
                                      "translation": chosen.global_from_ego[:3, 3].tolist()})
                is_camera = channel != LIDAR_CHANNEL
                T["sample_data"].append({
                    "token": sd, "sample_token": samples[i], "ego_pose_token": sd,
                    "calibrated_sensor_token": self.calibration(channel, chosen.ego_from_sensor, K),
                    "timestamp": us(chosen.stamp_ns), "fileformat": filename.rsplit(".", 1)[-1] if is_camera else "pcd",
                    "is_key_frame": True, "height": height if is_camera else 0, "width": width if is_camera else 0,
                    "filename": filename, "prev": self.token("sd", channel, i - 1) if i else "",
                    "next": self.token("sd", channel, i + 1) if i + 1 < len(keyframes) else ""})
        T["scene"] = [{"token": scene_tok, "log_token": log_tok, "nbr_samples": len(keyframes),
                       "first_sample_token": samples[0], "last_sample_token": samples[-1], "name": scene_name,
                       "description": description}]
        first_us = us(keyframes[0].stamp_ns)
        T["log"] = [{"token": log_tok, "logfile": self.log_name, "vehicle": "bag",
                     "date_captured": (_EPOCH + _dt.timedelta(microseconds=first_us)).date().isoformat(),
                     "location": "unknown"}]
        T["map"] = [{"token": self.token("map"), "log_tokens": [log_tok], "category": "semantic_prior",
                     "filename": MAP_FILENAME}]

    def write_tables(self) -> None:
        folder = self.root / self.options.version
        folder.mkdir(parents=True, exist_ok=True)
        for name, rows in self.tables.items():
            (folder / f"{name}.json").write_text(json.dumps(rows, indent=1, allow_nan=False))
        (self.root / "maps").mkdir(exist_ok=True)
        PILImage.fromarray(np.zeros((32, 32), np.uint8)).save(self.root / MAP_FILENAME)


def write_sensor_files(bag: BagReader, keyframes: list[Keyframe], options: Options, writer: DatarootWriter,
                       summary: Summary) -> dict[tuple[str, int], tuple]:
    """Second pass: decode, rectify and write every image and sweep a keyframe uses."""
    wanted: dict[tuple[str, int], list[tuple[str, Chosen]]] = {}
    for keyframe in keyframes:
        for camera, chosen in keyframe.cameras.items():
            wanted.setdefault((chosen.topic, chosen.stamp_ns), []).append((camera, chosen))
        if options.lidar_topic:
            wanted.setdefault((options.lidar_topic, keyframe.lidar.stamp_ns), []).append((LIDAR_CHANNEL,
                                                                                           keyframe.lidar))
    image_cls = CompressedImage if options.compressed else Image
    written: dict[tuple[str, int], tuple] = {}
    topics = {topic for topic, _ in wanted}
    for topic, bag_ns, data in bag.messages(topics):
        cls = PointCloud2 if topic == options.lidar_topic else image_cls
        message = _deserialize(data, cls, topic, bag_ns)
        for channel, chosen in wanted.get((topic, stamp_to_ns(message.header.stamp)), []):
            if (channel, chosen.stamp_ns) in written:
                continue  # a second message with the same stamp: the first recorded one was used
            if channel == LIDAR_CHANNEL:
                name, dropped = writer.write_lidar(chosen, message)
                summary.nonfinite_lidar_points += dropped
                written[(channel, chosen.stamp_ns)] = (name, None, 0, 0)
            else:
                written[(channel, chosen.stamp_ns)] = writer.write_image(channel, chosen, message)
    if not options.lidar_topic:
        for keyframe in keyframes:
            name, _ = writer.write_lidar(keyframe.lidar, None)
            written[(LIDAR_CHANNEL, keyframe.lidar.stamp_ns)] = (name, None, 0, 0)
    return written


def convert(bag_path: Path, out: Path, options: Options, overwrite: bool = False,
            max_decompressed_mb: int = DEFAULT_MAX_DECOMPRESSED_MB) -> dict[str, Any]:
    """Convert; returns the report written to OUT/bag2nusc.json. Bag2NuscError on anything unusable."""
    options.check()
    out = Path(out)
    if out.exists() and not overwrite:
        raise Bag2NuscError(f"{out} exists (pass --overwrite to replace it)")
    started = time.monotonic()
    bag = BagReader(Path(bag_path), max_decompressed_mb)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        wanted = check_topics(bag, options)
        found = scan(bag, options, wanted)
        summary = Summary(images_on_topics={c: len(found.images[c]) for c in options.cameras})
        keyframes = KeyframeChooser(found, options, summary).choose()
        if not keyframes:
            raise Bag2NuscError(f"no keyframe in {bag.bag} where every camera of {options.cameras} has an image"
                                f" within {options.tolerance_ns / 1e9:g} s, its CameraInfo and TF"
                                f" ({summary.reference_stamps} reference stamps):\n" + "\n".join(summary.lines()))
        name = options.scene_name or bag.bag.resolve().name
        log_name = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        writer = DatarootWriter(staging, options, log_name, token_seed=name)
        written = write_sensor_files(bag, keyframes, options, writer, summary)
        missing = [f"{channel} at {stamp_text(stamp)}" for keyframe in keyframes
                   for channel, stamp in [*((c, k.stamp_ns) for c, k in keyframe.cameras.items()),
                                          (LIDAR_CHANNEL, keyframe.lidar.stamp_ns)] if (channel, stamp) not in written]
        if missing:
            raise Bag2NuscError(f"the second read of {bag.bag} did not find {missing[:3]}: the bag changed")
        writer.build_tables(keyframes, written, name, f"converted from rosbag2 {bag.bag.name} by distillnerf-bag2nusc")
        writer.write_tables()
        masks = writer.write_masks()
        report = {"bag": bag.bag.name, "version": options.version, "keyframes": len(keyframes),
                  "cameras": options.cameras, "lidar": options.lidar_topic or None,
                  "first_stamp_ns": keyframes[0].stamp_ns, "last_stamp_ns": keyframes[-1].stamp_ns,
                  "reference": options.reference_stream(), "reference_stamps": summary.reference_stamps,
                  "between_keyframes": summary.between_keyframes, "outside_window": summary.outside_window,
                  "skipped": dict(summary.skipped),
                  "skipped_examples": summary.first_example, "nonfinite_lidar_points": summary.nonfinite_lidar_points,
                  "images_on_topics": summary.images_on_topics, "masks": masks, "options": asdict(options),
                  "seconds": round(time.monotonic() - started, 3)}
        (staging / "bag2nusc.json").write_text(json.dumps(report, indent=1, allow_nan=False))
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        bag.close()
    report["summary_lines"] = summary.lines()
    return report


# -- command line ----------------------------------------------------------------------------------------------
def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="distillnerf-bag2nusc", description=__doc__.splitlines()[0])
    p.add_argument("bag", type=Path, help="rosbag2 directory (MCAP or SQLite)")
    p.add_argument("--out", required=True, type=Path, help="dataroot to create")
    p.add_argument("--params", type=Path, action="append", default=[],
                   help="perception_node parameter file(s) to take the rig from (e.g. config/ddad.yaml); options"
                        " given here override it")
    p.add_argument("--cameras", help="comma list of camera names (default: the node's six nuScenes cameras)")
    p.add_argument("--image-topic-format", help="default /{camera}/image_rect_compressed")
    p.add_argument("--camera-info-topic-format", help="default /{camera}/camera_info")
    p.add_argument("--compressed", type=_bool, help="true: sensor_msgs/CompressedImage (default); false: Image")
    p.add_argument("--image-rectified", choices=("auto", "true", "false"),
                   help="as the node's parameter: auto = rectified when the topic has a part starting image_rect")
    p.add_argument("--output-frame", help="ego (body) frame, default base_link")
    p.add_argument("--fixed-frame", help="world frame of the ego poses, default map (odometry-only bags: odom)")
    p.add_argument("--lidar-topic", help="sensor_msgs/PointCloud2 topic (default: none: empty sweeps)")
    p.add_argument("--odometry-topic", help="nav_msgs/Odometry topic used as a TF edge (frame_id -> child_frame_id)")
    p.add_argument("--reference", help="'lidar' or a camera whose stamps are the keyframe candidates")
    p.add_argument("--rate", type=float, default=2.0, help="keyframes per second at most (default 2; 0: all)")
    p.add_argument("--tolerance", type=float, help="s a camera may be from the reference stamp (default: the"
                   " node's max_camera_delay, 0.1)")
    p.add_argument("--start", type=float, default=0.0, help="keyframes from this many s after the first reference"
                   " stamp (default 0)")
    p.add_argument("--end", type=float, help="... to before this many s after it (default: the end of the bag)")
    p.add_argument("--version", default=VERSION, help=f"table folder (default {VERSION})")
    p.add_argument("--scene-name", default="", help="scene name (default: the bag folder's name)")
    p.add_argument("--jpeg-quality", type=int, default=95, help="for raw or rectified images (default 95)")
    p.add_argument("--masks", default="", help="folder of <camera>.png ego-body masks (255 valid, 0 the car's body)"
                   " in the recorded images' pixels")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--max-decompressed-mb", type=int, default=DEFAULT_MAX_DECOMPRESSED_MB,
                   help="a zstd-compressed bag may decompress to at most this many MB")
    return p


def options_from_args(args: argparse.Namespace) -> Options:
    values: dict[str, Any] = {}
    for path in args.params:
        values.update(parameters_from_file(path))
    flags = {"cameras": args.cameras.split(",") if args.cameras else None,
             "image_topic_format": args.image_topic_format, "camera_info_topic_format": args.camera_info_topic_format,
             "compressed": args.compressed, "image_rectified": args.image_rectified,
             "output_frame": args.output_frame, "fixed_frame": args.fixed_frame, "lidar_topic": args.lidar_topic,
             "odometry_topic": args.odometry_topic, "reference": args.reference, "tolerance": args.tolerance}
    values.update({key: value for key, value in flags.items() if value is not None})
    if isinstance(values.get("cameras"), tuple):
        values["cameras"] = list(values["cameras"])
    return Options(**values, rate=args.rate, start=args.start, end=args.end, version=args.version,
                   scene_name=args.scene_name, jpeg_quality=args.jpeg_quality, masks=args.masks)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        options = options_from_args(args)
        report = convert(args.bag, args.out, options, args.overwrite, args.max_decompressed_mb)
    except (Bag2NuscError, OSError) as error:
        print(f"distillnerf-bag2nusc: error: {error}", file=sys.stderr)
        return 2
    lidar = f"LiDAR {options.lidar_topic}" if options.lidar_topic else "no LiDAR (empty sweeps)"
    print(f"wrote {args.out}/{options.version}: {report['keyframes']} keyframes of {len(options.cameras)} cameras"
          f" ({', '.join(options.cameras)}), {lidar}, from {report['reference_stamps']} {report['reference']}"
          f" stamps in {report['seconds']:.1f} s; load with NuScenes('{options.version}', '{args.out}')")
    for line in report["summary_lines"]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
