"""Helpers for tests that run real rclpy nodes in-process over loopback DDS."""

from __future__ import annotations

import time
from collections.abc import Callable

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node


class RosSession:
    """An rclpy context of its own with an executor spun from the test thread (no spin thread to join)."""

    def __init__(self) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.nodes: list[Node] = []

    def node(self, name: str, node_class: type[Node] = Node, **kwargs) -> Node:
        node = node_class(name, context=self.context, **kwargs) if node_class is Node else node_class(
            context=self.context, **kwargs)
        self.executor.add_node(node)
        self.nodes.append(node)
        return node

    def spin_until(self, condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return True
            self.executor.spin_once(timeout_sec=0.02)
        return condition()

    def close(self) -> None:
        for node in self.nodes:
            self.executor.remove_node(node)
            node.destroy_node()
        self.executor.shutdown()
        rclpy.try_shutdown(context=self.context)


def wait_for_match(session: RosSession, publishers: list, timeout_s: float = 10.0) -> None:
    """Block until every publisher has a subscriber, so nothing sent is lost to discovery."""
    if not session.spin_until(lambda: all(p.get_subscription_count() > 0 for p in publishers), timeout_s):
        raise AssertionError(f"publishers {[p.topic_name for p in publishers]} found no subscriber in {timeout_s} s")


class SmallRig:
    """A few tiny raw cameras around base_link (optical frames, REP-103), published over DDS under `prefix`:
    what the robustness tests feed the perception node and rig_monitor before and after an attack."""

    RELIABLE_DEPTH = 10

    def __init__(self, session: RosSession, cameras: tuple[str, ...] = ("front", "left", "back"),
                 prefix: str = "/small_rig", width: int = 64, height: int = 48) -> None:
        import numpy as np
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image
        from tf2_msgs.msg import TFMessage

        from distillnerf_core.geometry import quaternion_to_matrix
        from distillnerf_ros.input.rig_input import TF_QOS, TF_STATIC_QOS

        self.session, self.cameras, self.prefix = session, list(cameras), prefix
        self.width, self.height = width, height
        self.K = np.array([[40.0, 0, width / 2], [0, 40.0, height / 2], [0, 0, 1]])
        self.optical = quaternion_to_matrix([0.5, -0.5, 0.5, -0.5])  # optical z = base x, optical y = -base z
        qos = QoSProfile(depth=self.RELIABLE_DEPTH, reliability=ReliabilityPolicy.RELIABLE)
        self.source = session.node(f"small_rig_source_{abs(hash(prefix)) % 10_000}")
        self.images = {c: self.source.create_publisher(Image, f"{prefix}/{c}/image", qos) for c in cameras}
        self.infos = {c: self.source.create_publisher(CameraInfo, f"{prefix}/{c}/info", qos) for c in cameras}
        self.tf = self.source.create_publisher(TFMessage, "/tf", TF_QOS)
        self.tf_static = self.source.create_publisher(TFMessage, "/tf_static", TF_STATIC_QOS)

    def parameters(self) -> dict:
        """Node parameters that subscribe this rig."""
        return {"cameras": self.cameras, "compressed": False, "image_topic_format": f"{self.prefix}/{{camera}}/image",
                "camera_info_topic_format": f"{self.prefix}/{{camera}}/info", "input_reliability": "reliable"}

    def wait_for_node(self) -> None:
        wait_for_match(self.session, [*self.images.values(), *self.infos.values(), self.tf_static], 20)

    def camera_pose(self, index: int):
        import numpy as np

        from distillnerf_core.geometry import make_transform

        yaw = 2 * np.pi * index / len(self.cameras)
        turn = np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]])
        return make_transform(turn @ self.optical, [0.0, 0.0, 1.5])

    def publish_static(self, extra=()) -> None:
        """base_link -> each camera's optical frame on /tf_static (plus `extra` TransformStamped)."""
        from tf2_msgs.msg import TFMessage

        from distillnerf_ros.conversions.nuscenes_messages import stamp_from_us, transform_stamped

        self.tf_static.publish(TFMessage(transforms=[
            *(transform_stamped("base_link", c, stamp_from_us(0), self.camera_pose(i))
              for i, c in enumerate(self.cameras)), *extra]))

    def publish_frame(self, stamp_ns: int, edit=None) -> None:
        """CameraInfo then image of every camera at stamp_ns; edit(camera, info, image) may spoil some."""
        import numpy as np
        from builtin_interfaces.msg import Time
        from std_msgs.msg import Header

        from distillnerf_ros.conversions.camera_info import CameraIntrinsics, intrinsics_to_camera_info
        from distillnerf_ros.conversions.images import rgb_to_image

        sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
        for index, camera in enumerate(self.cameras):
            header = Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=camera)
            info = intrinsics_to_camera_info(CameraIntrinsics(self.K, self.width, self.height), header)
            pixels = np.full((self.height, self.width, 3), 60 + 40 * index, np.uint8)
            pixels[self.height // 2:] = 120  # a horizon, so images are not uniform
            image = rgb_to_image(pixels, header)
            if edit is not None:
                edit(camera, info, image)
            self.infos[camera].publish(info)
            self.images[camera].publish(image)
