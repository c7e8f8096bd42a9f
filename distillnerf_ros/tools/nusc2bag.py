"""distillnerf-nusc2bag: a nuScenes-format dataroot -> a ROS 2 bag that `ros2 bag play` replays.

CDR-encoded standard message types (never Foxglove schemas): /CAM_*/image_rect_compressed (the original
JPEG bytes), /CAM_*/camera_info, /LIDAR_TOP (PointCloud2 x, y, z, intensity, ring), /tf with
map -> base_link at every sensor timestamp, /tf_static with base_link -> <sensor frame> (latched). All
keyframes and sweeps in time order. The bag is written under a temporary name and renamed when complete,
so an interrupted run never leaves a bag that looks finished.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rclpy.serialization import serialize_message
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from tqdm import tqdm

from distillnerf_core.data.nuscenes_tables import SensorRecord, load_sensor_records
from distillnerf_ros.conversions.nuscenes_messages import (
    camera_messages,
    ego_pose_tf_message,
    lidar_message,
    static_tf_message,
)

TYPES = {
    "image": "sensor_msgs/msg/CompressedImage",
    "info": "sensor_msgs/msg/CameraInfo",
    "lidar": "sensor_msgs/msg/PointCloud2",
    "tf": "tf2_msgs/msg/TFMessage",
}
INFINITE_QOS_TIME = QosTime(sec=0x7FFFFFFF, nsec=0xFFFFFFFF)  # rosbag2's infinite duration


def recorded_qos(latched: bool, depth: int | None = None) -> Qos:
    """The publisher QoS stored with a bag topic, so that a player offers it again (latched = transient local)."""
    depth = depth if depth is not None else 100 if latched else 10
    return Qos(history=QosHistory.KEEP_LAST, depth=depth, reliability=QosReliability.RELIABLE,
               durability=QosDurability.TRANSIENT_LOCAL if latched else QosDurability.VOLATILE,
               deadline=INFINITE_QOS_TIME, lifespan=INFINITE_QOS_TIME, liveliness=QosLiveliness.AUTOMATIC,
               liveliness_lease_duration=INFINITE_QOS_TIME, avoid_ros_namespace_conventions=False)


def messages_in_order(records: list[SensorRecord]):
    """(topic, type, stamp_ns, message) for every record in time order, /tf before the data it places."""
    for record in records:
        stamp_ns = record.timestamp_us * 1000
        yield "/tf", TYPES["tf"], stamp_ns, ego_pose_tf_message(record)
        if record.modality == "camera":
            image, info = camera_messages(record)
            yield f"/{record.channel}/camera_info", TYPES["info"], stamp_ns, info
            yield f"/{record.channel}/image_rect_compressed", TYPES["image"], stamp_ns, image
        elif record.modality == "lidar":
            yield f"/{record.channel}", TYPES["lidar"], stamp_ns, lidar_message(record)


def convert(dataroot: Path, out: Path, version: str | None = None, scenes: list[str] | None = None,
            storage: str = "mcap", progress: bool = True) -> dict[str, int]:
    """Write the bag; returns message counts per topic."""
    if out.exists():
        raise FileExistsError(f"{out} exists already; choose another --out or remove it")
    records = [r for r in load_sensor_records(dataroot, version, scenes) if r.modality in ("camera", "lidar")]
    if not records:
        raise ValueError(f"no camera or LiDAR records in {dataroot} for scenes {scenes or 'all'}")
    typestore = get_typestore(Stores.ROS2_KILTED)
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    counts: dict[str, int] = {}
    try:
        with Writer(staging / out.name, version=9, storage_plugin=plugin) as writer:
            connections = {}

            def write(topic: str, msgtype: str, stamp_ns: int, message) -> None:
                if topic not in connections:
                    connections[topic] = writer.add_connection(
                        topic, msgtype, typestore=typestore, offered_qos_profiles=[recorded_qos(topic == "/tf_static")])
                writer.write(connections[topic], stamp_ns, serialize_message(message))
                counts[topic] = counts.get(topic, 0) + 1

            write("/tf_static", TYPES["tf"], records[0].timestamp_us * 1000, static_tf_message(records))
            for topic, msgtype, stamp_ns, message in tqdm(messages_in_order(records), desc="nusc2bag", unit="msg",
                                                          disable=not progress, total=None):
                write(topic, msgtype, stamp_ns, message)
        (staging / out.name).rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distillnerf-nusc2bag", description=__doc__.splitlines()[0])
    parser.add_argument("--dataroot", required=True, type=Path)
    parser.add_argument("--version", default=None, help="table folder, e.g. v1.0-mini (default: the only one)")
    parser.add_argument("--scene", action="append", dest="scenes", help="scene name (repeatable; default: all)")
    parser.add_argument("--out", required=True, type=Path, help="bag directory to create")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        counts = convert(args.dataroot, args.out, args.version, args.scenes, args.storage)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"distillnerf-nusc2bag: error: {error}", file=sys.stderr)
        return 2
    except (KeyError, TypeError, IndexError) as error:  # a table row without a field it needs, or a wrong type
        print(f"distillnerf-nusc2bag: error: malformed nuScenes tables in {args.dataroot}:"
              f" {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    total = sum(counts.values())
    print(f"wrote {args.out} ({args.storage}): {total} messages on {len(counts)} topics in"
          f" {time.monotonic() - started:.1f} s")
    for topic, count in sorted(counts.items()):
        print(f"  {topic:<40} {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
