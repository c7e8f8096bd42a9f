"""CameraRigInput over real rclpy / loopback DDS: the last set of a bag whose other images never come."""

import numpy as np
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage

from distillnerf_core.geometry import make_transform, quaternion_to_matrix
from distillnerf_ros.conversions.camera_info import CameraIntrinsics, intrinsics_to_camera_info
from distillnerf_ros.conversions.images import rgb_to_image
from distillnerf_ros.conversions.nuscenes_messages import stamp_from_us, transform_stamped
from distillnerf_ros.input.rig_input import (
    IDLE_FLUSH_S,
    TF_QOS,
    TF_STATIC_QOS,
    CameraRigInput,
    input_qos,
    topics_from_format,
)
from ros_helpers import wait_for_match

CAMERAS = ["front", "left", "back"]
OPTICAL = quaternion_to_matrix([0.5, -0.5, 0.5, -0.5])
K = np.array([[100.0, 0, 32], [0, 100.0, 24], [0, 0, 1]])


def test_an_incomplete_last_set_is_processed_with_the_absent_camera_reported(session):
    frames = []
    receiver = session.node("rig_idle_receiver")
    rig = CameraRigInput(receiver, topics_from_format(CAMERAS, "/test_idle/{camera}/image",
                                                      "/test_idle/{camera}/info", compressed=False),
                         frames.append, output_frame="base_link", fixed_frame="map", max_camera_delay_s=0.05,
                         reference_camera=None, qos=input_qos("reliable", 10), tf_wait_s=0.5)
    sender = session.node("rig_idle_sender")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    images = {c: sender.create_publisher(Image, f"/test_idle/{c}/image", qos) for c in CAMERAS}
    infos = {c: sender.create_publisher(CameraInfo, f"/test_idle/{c}/info", qos) for c in CAMERAS}
    tf_pub = sender.create_publisher(TFMessage, "/tf", TF_QOS)
    tf_static_pub = sender.create_publisher(TFMessage, "/tf_static", TF_STATIC_QOS)
    wait_for_match(session, [*images.values(), *infos.values(), tf_pub, tf_static_pub])

    t0 = 1_700_000_000_000_000  # microseconds
    tf_static_pub.publish(TFMessage(transforms=[
        transform_stamped("base_link", f"{c}_optical", stamp_from_us(0), make_transform(OPTICAL, [i, 0.0, 1.5]))
        for i, c in enumerate(CAMERAS)]))
    tf_pub.publish(TFMessage(transforms=[transform_stamped("map", "base_link", stamp_from_us(t0),
                                                           make_transform(np.eye(3), [0.0, 0.0, 0.0]))]))
    rgb = np.zeros((48, 64, 3), np.uint8)
    for camera in ("front", "left"):  # the bag ends (or back's image is lost) before the set completes
        header = Header(stamp=stamp_from_us(t0), frame_id=f"{camera}_optical")
        infos[camera].publish(intrinsics_to_camera_info(CameraIntrinsics(K, 64, 48), header))
        images[camera].publish(rgb_to_image(rgb, header))
    assert session.spin_until(lambda: bool(frames), timeout_s=IDLE_FLUSH_S + 5), (
        f"the incomplete last set was held forever; synchroniser: {rig.sync.stats}, rig: {rig.stats}")
    frame = frames[0]
    assert frame.cameras == ["front", "left"] and frame.stamp_ns == t0 * 1000
    assert frame.missing["back"] == "no message received yet"
    assert rig.sync.stats.sets_flushed_idle == 1
    rig.destroy()
