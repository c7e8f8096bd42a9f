"""Publish the camera data of a nuScenes-format dataroot over ROS 2, in timestamp order.

A small live source for demos and tests (it needs only the raw JSON tables, so the bundled keyframe works):
/tf_static (latched) with the calibration, /tf with map -> base_link at every sensor timestamp, and per
camera /<CHANNEL>/image_rect_compressed + /<CHANNEL>/camera_info.
"""

from __future__ import annotations

import argparse
import sys
import time

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage
from tf2_msgs.msg import TFMessage

from distillnerf_core.data.nuscenes_tables import load_sensor_records
from distillnerf_ros.conversions.nuscenes_messages import camera_messages, ego_pose_tf_message, static_tf_message
from distillnerf_ros.input.rig_input import TF_QOS, TF_STATIC_QOS
from distillnerf_ros.nodes.guarded import GuardedNode
from distillnerf_ros.nodes.parameter_schema import add_arguments
from distillnerf_ros.nodes.signals import init_without_signal_handlers


class DatarootPublisher(GuardedNode, Node):
    """A nuScenes-format dataroot as live topics, as node `nuscenes_dataroot_publisher`.

    Publishes: `/tf_static` (latched calibration, on construction), and on `publish_all()` in timestamp
    order `/tf` (map -> base_link at each sensor stamp), `/<CHANNEL>/camera_info` and
    `/<CHANNEL>/image_rect_compressed` (reliable, depth 10) for every camera record.
    """

    def __init__(self, dataroot: str, version: str | None, **node_options) -> None:
        super().__init__("nuscenes_dataroot_publisher", **node_options)
        self.records = load_sensor_records(dataroot, version)
        self.cameras = sorted({r.channel for r in self.records if r.modality == "camera"})
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.tf_pub = self.create_publisher(TFMessage, "/tf", TF_QOS)
        self.tf_static_pub = self.create_publisher(TFMessage, "/tf_static", TF_STATIC_QOS)
        self.image_pubs = {c: self.create_publisher(CompressedImage, f"/{c}/image_rect_compressed", qos)
                           for c in self.cameras}
        self.info_pubs = {c: self.create_publisher(CameraInfo, f"/{c}/camera_info", qos) for c in self.cameras}
        self.tf_static_pub.publish(static_tf_message(self.records))
        self.guard_existing_callbacks()  # the services rclpy built without create_service

    def wait_for_subscribers(self, timeout_s: float, stop=lambda: False) -> bool:
        """Wait until every image and CameraInfo topic has a subscriber (so nothing published is lost to
        discovery: each topic is matched on its own, so images being matched says nothing about CameraInfo)."""
        publishers = [*self.image_pubs.values(), *self.info_pubs.values()]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not stop():
            if all(pub.get_subscription_count() > 0 for pub in publishers):
                return True
            rclpy.spin_once(self, timeout_sec=0.05)
        return False

    def publish_all(self) -> int:
        """Publish every record in timestamp order; returns the number of messages sent."""
        sent = 0
        for record in self.records:
            self.tf_pub.publish(ego_pose_tf_message(record))
            sent += 1
            if record.modality == "camera":
                image, info = camera_messages(record)
                self.info_pubs[record.channel].publish(info)
                self.image_pubs[record.channel].publish(image)
                sent += 2
        return sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, "dataroot_publisher")  # the options and their ranges: SCHEMA in parameter_schema.py
    args = parser.parse_args(argv)
    stop = init_without_signal_handlers()  # SIGINT / SIGTERM: a normal way to stop it, exit 0
    node = DatarootPublisher(args.dataroot, args.version or None)
    try:
        if not node.wait_for_subscribers(args.wait_subscribers, stop=lambda: bool(stop)):
            if stop:
                return 0
            node.get_logger().error(f"image or CameraInfo topic without subscriber after {args.wait_subscribers} s")
            return 1
        sent = node.publish_all()
        node.get_logger().info(f"published {sent} messages from {len(node.cameras)} cameras")
        end = time.monotonic() + args.linger
        while time.monotonic() < end and not stop:  # keep serving reliable resends and the latched /tf_static
            rclpy.spin_once(node, timeout_sec=0.05)
        return 0
    except (KeyboardInterrupt, ExternalShutdownException):  # SIGINT / SIGTERM: a normal way to stop it
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
