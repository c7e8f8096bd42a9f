"""`make demo`: the perception node on replayed nuScenes-format bags, end to end, with pictures.

1. Builds the demo bags (cached in demo_out/bags): the real nuScenes keyframe, a short synthetic drive, and
   the three real DDAD frames (data/ddad_scene02 through distillnerf-dgp2nusc, then distillnerf-nusc2bag).
2. Starts perception_node (its own process, config/perception.yaml, the bundled model, use_sim_time); for the
   DDAD bag a second node with config/ddad.yaml on top (that rig's camera names).
3. Plays each bag with /clock through distillnerf-play (slowed down so that every keyframe is processed on
   a CPU), records every topic the node publishes (outputs, depth camera_info and opacity, debug series,
   transitions, /diagnostics) into one rosbag2 per source under demo_out/outputs/ (a message goes to the source
   whose time span holds its stamp, or the /clock when it has none) with each publisher's offered QoS, and
   draws per frame a contact sheet, a bird's-eye occupancy image and a 3D view of the occupied voxels into
   demo_out/.
4. After the synthetic drive, asks ~/query_scene for "car" and "building" (the bundled model is distilled
   from the synthetic oracle teacher) and draws the labelled voxels, bird's-eye and 3D.
5. Prints the measured latency and where everything is.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import TransitionEvent
from nav_msgs.msg import OccupancyGrid
from rclpy.duration import Infinite
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import Reader, Writer
from rosbags.typesys import Stores, get_typestore
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Float64

from distillnerf_core.data import dgp
from distillnerf_core.data.synthetic.export import write_dataroot
from distillnerf_core.viz import demo_pictures
from distillnerf_ros.conversions.images import compressed_image_to_rgb, image_to_depth, image_to_rgb
from distillnerf_ros.conversions.pointcloud import pointcloud2_to_points, unpack_rgb
from distillnerf_ros.input.tf_cache import stamp_to_ns
from distillnerf_ros.nodes.perception_outputs import DEBUG_TOPICS
from distillnerf_ros.srv import QueryScene
from distillnerf_ros.tools.nusc2bag import INFINITE_QOS_TIME, convert
from distillnerf_ros.tools.processes import stop_process

REPO = Path(__file__).resolve().parents[2]
NODE = "distillnerf_perception"
SEMANTIC_QUERIES = ["car", "building"]  # the bundled model is distilled from the synthetic oracle teacher
QUERY_THRESHOLD = 0.5
CAMERAS = ["CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"]
DDAD_CAMERAS = ["CAMERA_05", "CAMERA_01", "CAMERA_06", "CAMERA_07", "CAMERA_09", "CAMERA_08"]  # the same display order
# Per source: the rig's parameter file on top of config/perception.yaml, its cameras, the playback rate. The
# rates put ~3.3 s of wall time between frames (keyframes 0.5 s apart, DDAD frames 0.1 s), so a CPU node
# finishes each before the next.
RIGS = {"keyframe": (None, CAMERAS, 0.15), "synthetic": (None, CAMERAS, 0.15),
        "ddad": ("config/ddad.yaml", DDAD_CAMERAS, 0.03)}
RELIABLE = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclass
class FrameOutputs:
    """Everything the node published for one trigger stamp."""

    cloud: PointCloud2 | None = None
    grid: OccupancyGrid | None = None
    depth: dict[str, np.ndarray] = field(default_factory=dict)
    rendered: dict[str, np.ndarray] = field(default_factory=dict)


def output_topics() -> dict[str, tuple[type, QoSProfile]]:
    """Every topic the node publishes in the demo (publish_rendered on), with the QoS to hear it: the outputs,
    per camera depth + its CameraInfo + opacity + rendered RGB, the debug series (timings, self-grading), the
    lifecycle transitions and /diagnostics. Not /rosout and /parameter_events, which every node on the domain
    writes (the node's log is in perception_node.log)."""
    topics = {f"/{NODE}/occupancy": (PointCloud2, RELIABLE), f"/{NODE}/occupancy_grid": (OccupancyGrid, LATCHED),
              f"/{NODE}/transition_event": (TransitionEvent, RELIABLE), "/diagnostics": (DiagnosticArray, RELIABLE)}
    for camera in (*CAMERAS, *DDAD_CAMERAS):
        for kind in ("depth", "depth/opacity", "rendered"):
            topics[f"/{NODE}/{camera.lower()}/{kind}"] = (Image, RELIABLE)
        topics[f"/{NODE}/{camera.lower()}/depth/camera_info"] = (CameraInfo, RELIABLE)
        topics[f"/{NODE}/{camera.lower()}/debug/recon_psnr"] = (Float64, RELIABLE)  # self-grading, per camera
    for series in (*DEBUG_TOPICS, "recon_psnr", "depth_abs_rel", "depth_delta1"):  # timings, self-grading
        topics[f"/{NODE}/debug/{series}"] = (Float64, RELIABLE)
    return topics


def bag_qos(qos: QoSProfile) -> Qos:
    """An rclpy QoS (as get_publishers_info_by_topic reports it) in the form a rosbag2 stores. A remote
    publisher's history and depth are not carried by DDS discovery: they read UNKNOWN / 0, and are recorded so,
    as `ros2 bag record` does."""
    def time(duration) -> QosTime:
        if duration.nanoseconds >= Infinite.nanoseconds:
            return INFINITE_QOS_TIME
        return QosTime(sec=duration.nanoseconds // 1_000_000_000, nsec=duration.nanoseconds % 1_000_000_000)

    return Qos(history=QosHistory(int(qos.history)), depth=int(qos.depth),
               reliability=QosReliability(int(qos.reliability)), durability=QosDurability(int(qos.durability)),
               deadline=time(qos.deadline), lifespan=time(qos.lifespan), liveliness=QosLiveliness(int(qos.liveliness)),
               liveliness_lease_duration=time(qos.liveliness_lease_duration),
               avoid_ros_namespace_conventions=bool(qos.avoid_ros_namespace_conventions))


def bag_span(bag: Path) -> tuple[int, int]:
    """First and last message time of a bag (ns): the window of a played source's stamps and /clock."""
    with Reader(bag) as reader:
        return reader.start_time, reader.end_time


@dataclass
class SourceBag:
    """One played source's output bag while it is being written: its time window, writer and topics."""

    name: str
    first_ns: int
    last_ns: int | None  # None: open until the end of the recording
    staging: Path
    writer: Writer
    connections: dict[str, object] = field(default_factory=dict)
    newest_ns: int = 0  # the newest output stamp written

    def contains(self, stamp_ns: int) -> bool:
        return self.first_ns <= stamp_ns and (self.last_ns is None or stamp_ns <= self.last_ns)

    def clamp(self, stamp_ns: int) -> int:
        return max(self.first_ns, stamp_ns if self.last_ns is None else min(stamp_ns, self.last_ns))


class OutputRecorder:
    """Subscribes to every output of the node and writes them into one rosbag2 per played source; keeps the
    outputs per stamp for the pictures. A message goes to the source whose time window (the played bag's
    span) holds it, not to the source playing when it arrived: stamped outputs by their header stamp;
    unstamped ones (debug series, /diagnostics, transitions) by the /clock the player published last, written at
    that time. So a late output of one source (a CameraInfo, a debug series) still lands in its own bag, and a
    bag spans its source's time only; a stamped message in no window is left out (counted in `unplaced`). Each
    topic is stored with its publisher's offered QoS (get_publishers_info_by_topic), so a latched grid replays
    latched. The bags stay open until `finish`, then each moves into place from a temporary name (atomic)."""

    def __init__(self, node, out_dir: Path) -> None:
        self.frames: dict[int, FrameOutputs] = {}
        self.cameras = CAMERAS  # the cameras of the source being played
        self.series: dict[str, list[float]] = {"model": []}
        self.status = ""
        self.diagnostics: dict[str, str] = {}
        self.bags: list[Path] = []
        self.unplaced: dict[str, int] = {}
        self.clock_ns: int | None = None  # the newest /clock heard
        self._node = node
        self._out_dir = out_dir
        self._sources: list[SourceBag] = []
        self._typestore = get_typestore(Stores.ROS2_KILTED)
        self._publisher_qos: dict[str, list[Qos]] = {}
        for topic, (kind, qos) in output_topics().items():
            node.create_subscription(kind, topic, lambda m, t=topic, q=qos: self._on_message(t, m, q), qos)
        node.create_subscription(Clock, "/clock", self._on_clock, 10)

    def start(self, source: str, first_stamp_ns: int, last_stamp_ns: int | None = None,
              cameras: list[str] = CAMERAS) -> None:
        """Record the source `out_dir/<source>` whose stamps (and /clock) lie in [first_stamp_ns, last_stamp_ns]
        (the played bag's span; None: no end). The previous sources' bags stay open for their late messages."""
        self.cameras = cameras
        self._out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{source}.", dir=self._out_dir))
        writer = Writer(staging / source, version=9)
        writer.open()
        self._sources.append(SourceBag(source, first_stamp_ns, last_stamp_ns, staging, writer,
                                       newest_ns=first_stamp_ns))

    def finish(self) -> None:
        """Close every bag and move each into place."""
        for source in self._sources:
            source.writer.close()
            bag = source.staging / source.name
            final = self._out_dir / bag.name
            if final.exists():
                shutil.rmtree(final)
            bag.rename(final)
            shutil.rmtree(source.staging, ignore_errors=True)
            self.bags.append(final)
        self._sources = []

    def _on_clock(self, message: Clock) -> None:
        self.clock_ns = stamp_to_ns(message.clock)

    def _on_message(self, topic: str, message, qos: QoSProfile) -> None:
        if self._sources:
            self._write(topic, message, qos)
        if isinstance(message, DiagnosticArray):
            self._on_diagnostics(message)
        elif isinstance(message, Float64):
            if topic.endswith("/model_time_ms"):
                self.series["model"].append(message.data)
        elif isinstance(message, PointCloud2 | OccupancyGrid | Image) and not topic.endswith("/opacity"):
            self._keep(topic, message)

    def _place(self, stamp_ns: int | None) -> tuple[SourceBag | None, int]:
        """The source a message belongs to and its bag time: by its stamp, else by the last /clock, else (no
        clock heard yet) the newest source at its newest output stamp. Later sources win where windows overlap."""
        if stamp_ns is None and self.clock_ns is not None:
            stamp_ns = self.clock_ns
            owner = next((s for s in reversed(self._sources) if s.contains(stamp_ns)), None)
            return (owner, owner.clamp(stamp_ns)) if owner else (self._sources[-1], self._sources[-1].newest_ns)
        if stamp_ns is None:
            return self._sources[-1], self._sources[-1].newest_ns
        return next((s for s in reversed(self._sources) if s.contains(stamp_ns)), None), stamp_ns

    def _offered_qos(self, topic: str, fallback: QoSProfile) -> list[Qos]:
        """The offered QoS of the node's publishers of `topic` (any publisher's where the node has none);
        the last one seen when the publisher is gone; the subscription's only if none was ever seen."""
        infos = self._node.get_publishers_info_by_topic(topic)
        own = [info for info in infos if info.node_name == NODE] or infos
        profiles = list(dict.fromkeys(bag_qos(info.qos_profile) for info in own))
        if profiles:
            self._publisher_qos[topic] = profiles
        return self._publisher_qos.get(topic, [bag_qos(fallback)])

    def _write(self, topic: str, message, qos: QoSProfile) -> None:
        stamped = isinstance(message, PointCloud2 | OccupancyGrid | Image | CameraInfo)
        source, stamp = self._place(stamp_to_ns(message.header.stamp) if stamped else None)
        if source is None:
            self.unplaced[topic] = self.unplaced.get(topic, 0) + 1
            return
        if stamped:
            source.newest_ns = max(source.newest_ns, stamp)
        if topic not in source.connections:
            msgtype = type(message).__module__.split(".")[0] + "/msg/" + type(message).__name__
            source.connections[topic] = source.writer.add_connection(
                topic, msgtype, typestore=self._typestore, offered_qos_profiles=self._offered_qos(topic, qos))
        source.writer.write(source.connections[topic], stamp, serialize_message(message))

    def _on_diagnostics(self, message: DiagnosticArray) -> None:
        for status in message.status:
            if status.name.startswith(NODE):
                self.status = status.message
                self.diagnostics = {kv.key: kv.value for kv in status.values}

    def _keep(self, topic: str, message) -> None:
        stamp = stamp_to_ns(message.header.stamp)
        frame = self.frames.setdefault(stamp, FrameOutputs())
        camera = topic.split("/")[2].upper()
        if topic.endswith("/occupancy"):
            frame.cloud = message
        elif topic.endswith("/occupancy_grid"):
            frame.grid = message
        elif topic.endswith("/depth"):
            frame.depth[camera] = image_to_depth(message)
        elif topic.endswith("/rendered"):
            frame.rendered[camera] = image_to_rgb(message)

    def complete(self, stamp: int) -> bool:
        frame = self.frames.get(stamp)
        return bool(frame and frame.cloud and frame.grid and len(frame.depth) == len(self.cameras)
                    and len(frame.rendered) == len(self.cameras))

    def describe(self, stamp: int) -> str:
        """What arrived for a stamp, and the stamps that did arrive, for error messages."""
        frame = self.frames.get(stamp)
        got = ("nothing" if frame is None else f"cloud {frame.cloud is not None}, grid {frame.grid is not None},"
               f" depth {sorted(frame.depth)}, rendered {sorted(frame.rendered)}")
        return f"{got}; stamps received: {sorted(self.frames)}"


def build_bags(out: Path) -> dict[str, Path]:
    """The demo's input bags, built once and reused."""
    bags = {name: out / "bags" / name for name in ("keyframe", "synthetic", "ddad")}
    if not bags["keyframe"].exists():
        convert(REPO / "data" / "nuscenes_sample", bags["keyframe"], progress=False)
    if not bags["synthetic"].exists():
        root = out / "synthetic_dataroot"
        if not (root / "v1.0-synthetic").exists():
            shutil.rmtree(root, ignore_errors=True)
            write_dataroot(root, scenes=1, frames=4, seed=7, width=400, height=224, progress=False, threads=1)
        convert(root, bags["synthetic"], progress=False)
    if not bags["ddad"].exists():
        root = dgp.write_dataroot(REPO / "data" / "ddad_scene02", out / "ddad_dataroot", overwrite=True)
        convert(root, bags["ddad"], progress=False)
    return bags


def keyframe_stamps(bag: Path) -> list[int]:
    """Trigger stamps the node will produce for a bag: the newest camera stamp of each sample."""
    stamps: dict[str, list[int]] = {}
    with Reader(bag) as reader:
        connections = [c for c in reader.connections if c.topic.endswith("image_rect_compressed")]
        for connection, stamp, _ in reader.messages(connections=connections):
            stamps.setdefault(connection.topic, []).append(stamp)
    return [max(group) for group in zip(*stamps.values(), strict=False)]


def input_images(bag: Path, trigger: int, window_ns: int = 100_000_000) -> dict[str, np.ndarray]:
    """The camera images of the frame with this trigger stamp, decoded from the bag."""
    typestore = get_typestore(Stores.ROS2_KILTED)
    images = {}
    with Reader(bag) as reader:
        connections = [c for c in reader.connections if c.topic.endswith("image_rect_compressed")]
        for connection, _stamp, data in reader.messages(connections=connections, start=trigger - window_ns,
                                                        stop=trigger + 1):
            message = typestore.deserialize_cdr(data, connection.msgtype)
            images[connection.topic.split("/")[1]] = compressed_image_to_rgb(message)
    return images


def draw(name: str, index: int, stamp: int, bag: Path, frame: FrameOutputs, out: Path, model: str,
         cameras: list[str] = CAMERAS) -> list[Path]:
    images = input_images(bag, stamp)
    title = f"{name} frame {index} at {stamp / 1e9:.3f} s ({model})"
    sheet = demo_pictures.contact_sheet(
        cameras, [images.get(c) for c in cameras], [frame.depth.get(c) for c in cameras],
        [frame.rendered.get(c) for c in cameras], out / f"{name}_{index:02d}_cameras.png", title)
    grid = frame.grid
    probability = np.asarray(grid.data, dtype=np.float32).reshape(grid.info.height, grid.info.width)
    probability = np.where(probability < 0, np.nan, probability / 100.0)
    points = pointcloud2_to_points(frame.cloud)
    xyz = np.stack([points["x"], points["y"], points["z"]], axis=1)
    bev = demo_pictures.bev_image(probability, (grid.info.origin.position.x, grid.info.origin.position.y),
                                  grid.info.resolution, out / f"{name}_{index:02d}_bev.png",
                                  f"{title}\noccupancy probability (black = occupied, blue = unseen)")
    view = demo_pictures.occupancy_3d(xyz, unpack_rgb(points["rgb"]), out / f"{name}_{index:02d}_occupancy_3d.png",
                                      f"{title}: {len(xyz)} occupied voxels")
    return [sheet, bev, view]


def ask_scene(node, executor, queries: list[str], threshold: float) -> QueryScene.Response | None:
    """Call the node's ~/query_scene once (None when the service is not offered or does not answer)."""
    client = node.create_client(QueryScene, f"/{NODE}/query_scene")
    try:
        if not client.wait_for_service(timeout_sec=10):
            return None
        future = client.call_async(QueryScene.Request(queries=queries, threshold=threshold))
        return future.result() if spin_until(executor, future.done, 30) else None
    finally:
        node.destroy_client(client)


def draw_query(name: str, answer: QueryScene.Response | None, out: Path) -> list[Path]:
    """The labelled voxels of a ~/query_scene answer, bird's-eye and 3D; prints what the node said."""
    if answer is None or not answer.success:
        print(f"  ~/query_scene {SEMANTIC_QUERIES}: {'no answer' if answer is None else answer.message}")
        return []
    points = pointcloud2_to_points(answer.cloud)
    centers = np.stack([points["x"], points["y"], points["z"]], axis=1)
    labels = points["label"]
    print(f"  ~/query_scene {SEMANTIC_QUERIES}: {answer.message}; max scores "
          f"{', '.join(f'{q} {s:.2f}' for q, s in zip(SEMANTIC_QUERIES, answer.max_scores, strict=True))}")
    title = f"{name}, last frame: ~/query_scene {SEMANTIC_QUERIES} (score >= {QUERY_THRESHOLD})"
    colours = np.array([[220, 40, 40], [40, 90, 220]] + [[128, 128, 128]] * 8, dtype=np.uint8)[labels]
    return [demo_pictures.labelled_bev(centers, labels, SEMANTIC_QUERIES, out / f"{name}_query_bev.png", title),
            demo_pictures.occupancy_3d(centers, colours, out / f"{name}_query_3d.png", title)]


def loopback_dds_defaults() -> None:
    """What `make demo` sets, for a direct `python -m distillnerf_ros.tools.demo` too (where unset): the
    loopback Fast DDS profile (its 16 MB shared-memory segment: with the default 512 kB a burst of six camera
    images is lost on the best-effort input), LOCALHOST discovery and a domain of this run's own."""
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO / "config" / "fastdds_loopback.xml"))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(10 + os.getpid() % 90))


def spin_until(executor, condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not condition():
        executor.spin_once(timeout_sec=0.05)
    return condition()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "demo_out")
    parser.add_argument("--model", default="", help="checkpoint (default: the bundled model)")
    parser.add_argument("--frame-timeout", type=float, default=60.0, help="seconds to wait for one frame")
    parser.add_argument("--bags", nargs="+", choices=tuple(RIGS), default=list(RIGS))
    parser.add_argument("--summary-json", type=Path, default=None,
                        help="where to write the run's summary (default OUT/summary.json)")
    args = parser.parse_args(argv)
    loopback_dds_defaults()
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    print("building the demo bags ...", flush=True)
    bags = {name: path for name, path in build_bags(args.out).items() if name in args.bags}

    def node_cmd(rig_params: str | None) -> list[str]:
        cmd = [sys.executable, str(REPO / "scripts" / "perception_node"), "--ros-args", "--params-file",
               str(REPO / "config" / "perception.yaml"), "-p", "use_sim_time:=true", "-p", "publish_rendered:=true",
               "-p", "input_reliability:=reliable"]
        if rig_params:  # a later --params-file overrides the keys it sets
            cmd[5:5] = ["--params-file", str(REPO / rig_params)]
        return cmd + (["-p", f"model_path:={args.model}"] if args.model else [])

    node_log = open(args.out / "perception_node.log", "w")  # closed in finally
    node_process, node_rig, node_done, counters = None, "", 0, {}  # node_done: frames the current node finished
    rclpy.init()
    recorder_node = rclpy.create_node("demo_recorder")
    executor = SingleThreadedExecutor()
    executor.add_node(recorder_node)
    recorder = OutputRecorder(recorder_node, args.out / "outputs")
    pictures: list[Path] = []
    to_draw: list[tuple[str, int, int, Path, list[str]]] = []
    processed: dict[str, int] = {}
    answers: dict[str, QueryScene.Response | None] = {}
    try:
        for name, bag in bags.items():
            rig_params, cameras, rate = RIGS[name]
            if node_process is None or rig_params != node_rig:  # one node per rig (its camera names)
                if node_process is not None:  # fresh counters of the previous node, then stop it
                    spin_until(executor, lambda n=node_done: int(recorder.diagnostics.get("processed", 0)) >= n, 3.0)
                    counters[node_rig or "config/perception.yaml"] = dict(recorder.diagnostics)
                    stop_process(node_process)
                node_done = 0
                recorder.status, recorder.diagnostics, node_rig = "", {}, rig_params
                node_process = subprocess.Popen(node_cmd(rig_params), stdout=node_log, stderr=subprocess.STDOUT)
                process = node_process
                if not spin_until(executor, lambda p=process: recorder.status in ("active", "configure failed")
                                  or p.poll() is not None, 120):
                    raise RuntimeError("perception_node did not become active within 120 s")
                if recorder.status != "active":
                    node_log.flush()
                    tail = (args.out / "perception_node.log").read_text(errors="replace").strip().splitlines()[-5:]
                    raise RuntimeError(f"perception_node is not running ({recorder.status or 'exited'}):\n  "
                                       + "\n  ".join(tail))
            stamps = keyframe_stamps(bag)
            recorder.start(name, *bag_span(bag), cameras=cameras)
            print(f"playing {name} ({len(stamps)} frames) ...", flush=True)
            # Slowed down (RIGS) so a CPU finishes each frame before the next (none dropped).
            player = subprocess.Popen([sys.executable, "-m", "distillnerf_ros.tools.play", str(bag), "--clock",
                                       "--rate", str(rate), "--wait-subscribers", "10", "--delay", "2"],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for index, stamp in enumerate(stamps):
                if not spin_until(executor, lambda s=stamp: recorder.complete(s), args.frame_timeout):
                    print(f"  frame {index} ({stamp}): incomplete outputs within {args.frame_timeout} s:"
                          f" {recorder.describe(stamp)}", flush=True)
                    continue
                processed[name] = processed.get(name, 0) + 1
                node_done += 1
                to_draw.append((name, index, stamp, bag, cameras))
            player.wait(timeout=120)
            if name == "synthetic":  # the node still holds this bag's last frame
                answers[name] = ask_scene(recorder_node, executor, SEMANTIC_QUERIES, QUERY_THRESHOLD)
        spin_until(executor, lambda: int(recorder.diagnostics.get("processed", 0)) >= node_done, 3.0)  # fresh counters
        # Drawn after playback: matplotlib competing with the node for 2 CPU cores made frames late.
        model_name = Path(args.model).name if args.model else "bundled model"
        for name, index, stamp, bag, cameras in to_draw:
            pictures += draw(name, index, stamp, bag, recorder.frames[stamp], args.out, model_name, cameras)
        for name, answer in answers.items():
            pictures += draw_query(name, answer, args.out)
    finally:
        recorder.finish()
        counters[node_rig or "config/perception.yaml"] = dict(recorder.diagnostics)
        if node_process is not None:
            stop_process(node_process)
        node_log.close()
        executor.shutdown()
        recorder_node.destroy_node()
        rclpy.try_shutdown()

    model = np.asarray(recorder.series["model"])
    print(f"\nprocessed frames: {processed}")
    if len(model):
        # Latency in sim time would be scaled by the slowed playback; the wall-clock model time is the number.
        print(f"model time per 6-camera frame: median {np.median(model):.0f} ms, max {model.max():.0f} ms over"
              f" {len(model)} frames ({', '.join(f'{m:.0f}' for m in model)}); benchmarks/node_latency.py measures"
              " live latency and ROS overhead")
    for rig, diagnostics in counters.items():
        keys = ("processed", "dropped_busy", "errors")
        print(f"node counters ({rig}): {({k: diagnostics.get(k, '?') for k in keys})}")
    print(f"output bags (every topic the node publishes, one bag per source): "
          f"{', '.join(str(b) for b in recorder.bags)}")
    print(f"pictures ({len(pictures)}): {args.out}/*_cameras.png, *_bev.png, *_occupancy_3d.png, *_query_*.png")
    total_s = time.monotonic() - started
    print(f"node log: {args.out / 'perception_node.log'}; total {total_s:.0f} s")
    expected = {name: len(keyframe_stamps(bag)) for name, bag in bags.items()}
    summary_path = args.summary_json or args.out / "summary.json"
    write_summary(summary_path, sys.argv[1:] if argv is None else argv, processed, expected, model, counters, answers,
                  len(pictures), total_s)
    print(f"summary: {summary_path}")
    return 0 if processed == expected else 1


def write_summary(path: Path, argv: list[str] | None, processed: dict[str, int], expected: dict[str, int],
                  model_ms: np.ndarray, counters: dict[str, dict], answers: dict[str, QueryScene.Response | None],
                  pictures: int, total_s: float) -> None:
    """What the run did, as JSON (benchmarks/results/demo_cpu.json is one such file, with its provenance)."""
    from distillnerf_core.provenance import command_line, provenance

    queries = {name: {"queries": SEMANTIC_QUERIES, "success": answer.success, "message": answer.message,
                      "max_scores": [float(s) for s in answer.max_scores]} if answer is not None else None
               for name, answer in answers.items()}
    summary = {"processed": processed, "expected": expected,
               "model_ms": {"per_frame": [float(m) for m in model_ms],
                            "median": float(np.median(model_ms)) if len(model_ms) else None,
                            "max": float(model_ms.max()) if len(model_ms) else None},
               "node_counters": counters, "query_scene": queries, "pictures": pictures, "total_s": total_s,
               "provenance": provenance(command_line("python -m distillnerf_ros.tools.demo", argv) if argv else
                                        "make demo", model="bundled (models/default)",
                                        data="data/nuscenes_sample keyframe, a 4-keyframe synthetic drive (seed 7),"
                                             " data/ddad_scene02 (3 frames)")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
