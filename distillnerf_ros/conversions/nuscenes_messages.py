"""nuScenes sensor records -> standard ROS 2 messages (the conventions of nuScenes ROS 2 bags).

Frames (REP-105/144): map -> base_link (ego pose at each sensor timestamp) on /tf, base_link -> <channel in
lower case> (calibration) on /tf_static. Camera images keep their original JPEG bytes.
"""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import TransformStamped
from sensor_msgs.msg import CameraInfo, CompressedImage, PointCloud2
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage

from distillnerf_core.data.nuscenes_tables import SensorRecord
from distillnerf_core.geometry import matrix_to_quaternion
from distillnerf_ros.conversions.camera_info import CameraIntrinsics, intrinsics_to_camera_info
from distillnerf_ros.conversions.pointcloud import make_points, points_to_pointcloud2

LIDAR_POINT_BYTES = 20  # nuScenes .pcd.bin: 5 float32 per point
MAP_FRAME = "map"
BASE_FRAME = "base_link"


def frame_id(channel: str) -> str:
    """ROS frame of a nuScenes channel: CAM_FRONT -> cam_front."""
    return channel.lower()


def stamp_from_us(timestamp_us: int) -> Time:
    return Time(sec=timestamp_us // 1_000_000, nanosec=(timestamp_us % 1_000_000) * 1000)


def transform_stamped(parent: str, child: str, stamp: Time, parent_from_child: np.ndarray) -> TransformStamped:
    msg = TransformStamped(header=Header(stamp=stamp, frame_id=parent), child_frame_id=child)
    translation = parent_from_child[:3, 3]
    msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = map(float, translation)
    w, x, y, z = matrix_to_quaternion(parent_from_child[:3, :3])
    msg.transform.rotation.w, msg.transform.rotation.x = float(w), float(x)
    msg.transform.rotation.y, msg.transform.rotation.z = float(y), float(z)
    return msg


def static_tf_message(records: list[SensorRecord]) -> TFMessage:
    """base_link -> every sensor frame, one transform per channel."""
    by_channel = {record.channel: record for record in records}
    return TFMessage(transforms=[
        transform_stamped(BASE_FRAME, frame_id(channel), stamp_from_us(record.timestamp_us), record.ego_from_sensor)
        for channel, record in sorted(by_channel.items())
    ])


def ego_pose_tf_message(record: SensorRecord) -> TFMessage:
    """map -> base_link at the record's own timestamp."""
    return TFMessage(transforms=[
        transform_stamped(MAP_FRAME, BASE_FRAME, stamp_from_us(record.timestamp_us), record.global_from_ego)
    ])


def camera_messages(record: SensorRecord) -> tuple[CompressedImage, CameraInfo]:
    """The record's JPEG as a CompressedImage (bytes unchanged) and its CameraInfo."""
    if record.modality != "camera" or record.intrinsics is None:
        raise ValueError(f"{record.channel} record {record.token} is not a calibrated camera")
    header = Header(stamp=stamp_from_us(record.timestamp_us), frame_id=frame_id(record.channel))
    image = CompressedImage(header=header, format="jpeg", data=record.path.read_bytes())
    info = intrinsics_to_camera_info(CameraIntrinsics(record.intrinsics, record.width, record.height), header)
    return image, info


def lidar_message(record: SensorRecord) -> PointCloud2:
    """The record's sweep (.pcd.bin, float32 x, y, z, intensity, ring) as PointCloud2 in the LiDAR frame."""
    data = record.path.read_bytes()
    if len(data) % LIDAR_POINT_BYTES:
        raise ValueError(f"{record.path} holds {len(data)} bytes, not a multiple of {LIDAR_POINT_BYTES} bytes"
                         " (float32 x, y, z, intensity, ring per point)")
    raw = np.frombuffer(data, dtype="<f4")
    points = raw.reshape(-1, 5)
    header = Header(stamp=stamp_from_us(record.timestamp_us), frame_id=frame_id(record.channel))
    return points_to_pointcloud2(
        make_points(points[:, :3], intensity=points[:, 3].astype(np.float32), ring=points[:, 4].astype(np.uint16)),
        header)
