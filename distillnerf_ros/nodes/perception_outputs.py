"""The publishers of perception_node (lifecycle publishers: they publish only while the node is active) and
the conversion of a FramePrediction into their messages."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from nav_msgs.msg import OccupancyGrid
from rclpy.lifecycle import LifecycleNode
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Float64, Header

from distillnerf_core.inference import FramePrediction
from distillnerf_ros.conversions.camera_info import CameraIntrinsics, intrinsics_to_camera_info
from distillnerf_ros.conversions.images import depth_to_image, rgb_to_image
from distillnerf_ros.conversions.pointcloud import make_points, occupancy_grid_from_probabilities, points_to_pointcloud2
from distillnerf_ros.input.rig_input import RigFrame
from distillnerf_ros.nodes.perception_semantics import labelled_cloud

LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
RELIABLE_QOS = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
DEBUG_TOPICS = ("pipeline_latency_ms", "processing_time_ms", "model_time_ms", "input_delay_ms")


def float_image(values: np.ndarray, header: Header) -> Image:
    """HxW float32 values as a 32FC1 Image (little endian), NaN kept."""
    values = np.ascontiguousarray(values, dtype="<f4")
    return Image(header=header, height=values.shape[0], width=values.shape[1], encoding="32FC1", is_bigendian=0,
                 step=values.shape[1] * 4, data=values.tobytes())


def camera_topic_name(camera: str) -> str:
    """~/<camera>/... names are lower case (REP-144): CAM_FRONT -> cam_front."""
    return camera.lower()


@dataclass
class PerceptionOutputs:
    """Every output publisher of the node; `create` in on_configure, `destroy` in on_cleanup."""

    node: LifecycleNode
    occupancy: object
    grid: object
    debug: dict[str, object]  # DEBUG_TOPICS -> Float64 publisher
    depth: dict[str, object] = field(default_factory=dict)  # camera -> publisher
    depth_info: dict[str, object] = field(default_factory=dict)
    opacity: dict[str, object] = field(default_factory=dict)
    rendered: dict[str, object] = field(default_factory=dict)

    @classmethod
    def create(cls, node: LifecycleNode, cameras: list[str]) -> PerceptionOutputs:
        """Lifecycle publishers for the occupancy cloud, the BEV grid (latched), timing and per-camera images."""
        make = node.create_lifecycle_publisher
        outputs = cls(node, make(PointCloud2, "~/occupancy", RELIABLE_QOS),
                      make(OccupancyGrid, "~/occupancy_grid", LATCHED_QOS),
                      {name: make(Float64, f"~/debug/{name}", 10) for name in DEBUG_TOPICS})
        for camera in cameras:
            name = camera_topic_name(camera)
            outputs.depth[camera] = make(Image, f"~/{name}/depth", RELIABLE_QOS)
            outputs.depth_info[camera] = make(CameraInfo, f"~/{name}/depth/camera_info", RELIABLE_QOS)
            outputs.opacity[camera] = make(Image, f"~/{name}/depth/opacity", RELIABLE_QOS)
            outputs.rendered[camera] = make(Image, f"~/{name}/rendered", RELIABLE_QOS)
        return outputs

    def all(self) -> list:
        return [self.occupancy, self.grid, *self.debug.values(), *self.depth.values(), *self.depth_info.values(),
                *self.opacity.values(), *self.rendered.values()]

    def destroy(self) -> None:
        for publisher in self.all():
            self.node.destroy_lifecycle_publisher(publisher)

    def wanted(self, cameras: list[str], rendered: bool) -> dict[str, bool]:
        """Which outputs have subscribers (only those are computed)."""
        return {
            "occupancy": self.occupancy.get_subscription_count() + self.grid.get_subscription_count() > 0,
            "depth": any(self.depth[c].get_subscription_count() + self.opacity[c].get_subscription_count()
                         for c in cameras),
            "rgb": rendered and any(self.rendered[c].get_subscription_count() for c in cameras),
        }

    def publish_timing(self, name: str, milliseconds: float) -> None:
        self.debug[name].publish(Float64(data=float(milliseconds)))

    def publish_prediction(self, frame: RigFrame, prediction: FramePrediction, header: Header,
                           depth_min_opacity: float = 0.0) -> None:
        """Occupancy cloud + BEV grid in the output frame, depth (+ its CameraInfo and opacity) and RGB per
        camera. Depth is NaN where the ray's opacity is below `depth_min_opacity` (it hit nothing)."""
        if prediction.voxel_centers is not None:
            if prediction.voxel_label is not None:  # semantic_queries: every voxel with its label and score
                everything = np.ones(len(prediction.voxel_label), dtype=bool)
                cloud = labelled_cloud(prediction, prediction.voxel_label, prediction.voxel_score, everything, header)
            else:
                points = make_points(prediction.voxel_centers, prediction.voxel_rgb, density=prediction.voxel_density)
                cloud = points_to_pointcloud2(points, header)
            self.occupancy.publish(cloud)
            self.grid.publish(occupancy_grid_from_probabilities(
                prediction.bev_probability, prediction.voxel_size, prediction.bev_origin, header))
        for index, camera in enumerate(frame.cameras):
            camera_header = Header(stamp=header.stamp, frame_id=frame.frame_ids[index])
            if prediction.depth is not None:
                depth = prediction.depth[index]
                if prediction.opacity is not None:
                    opacity = prediction.opacity[index]
                    depth = np.where(opacity >= depth_min_opacity, depth, np.nan)
                    if self.opacity[camera].get_subscription_count():
                        self.opacity[camera].publish(float_image(opacity, camera_header))
                self.depth[camera].publish(depth_to_image(depth, camera_header))
                self.depth_info[camera].publish(intrinsics_to_camera_info(CameraIntrinsics(
                    prediction.depth_intrinsics[index], depth.shape[1], depth.shape[0]), camera_header))
            if prediction.rgb is not None:
                self.rendered[camera].publish(rgb_to_image(prediction.rgb[index], camera_header))
