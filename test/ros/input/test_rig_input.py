"""CameraRigInput over real rclpy / loopback DDS: raw and bad images, a stale camera, TF arriving late."""

import numpy as np
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage

from distillnerf_core.geometry import make_transform, quaternion_to_matrix
from distillnerf_ros.conversions.camera_info import CameraIntrinsics, intrinsics_to_camera_info
from distillnerf_ros.conversions.images import rgb_to_image
from distillnerf_ros.conversions.nuscenes_messages import stamp_from_us, transform_stamped
from distillnerf_ros.input.rig_input import TF_QOS, TF_STATIC_QOS, CameraRigInput, input_qos, topics_from_format
from ros_helpers import wait_for_match

CAMERAS = ["front", "left", "back"]
OPTICAL = quaternion_to_matrix([0.5, -0.5, 0.5, -0.5])
K = np.array([[100.0, 0, 32], [0, 100.0, 24], [0, 0, 1]])


def header(camera: str, stamp_us: int) -> Header:
    return Header(stamp=stamp_from_us(stamp_us), frame_id=f"{camera}_optical")


def test_rig_frames_carry_images_intrinsics_and_extrinsics_and_report_bad_cameras(session):
    frames = []

    def decode_and_keep(frame):
        rig.stats.count_failures(frame.decode())
        frames.append(frame)

    receiver = session.node("rig_receiver")
    rig = CameraRigInput(receiver, topics_from_format(CAMERAS, "/test_rig/{camera}/image", "/test_rig/{camera}/info",
                                                      compressed=False),
                         decode_and_keep, output_frame="base_link", fixed_frame="map", max_camera_delay_s=0.05,
                         reference_camera=None, qos=input_qos("reliable", 10), tf_wait_s=2.0)
    sender = session.node("rig_sender")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    images = {c: sender.create_publisher(Image, f"/test_rig/{c}/image", qos) for c in CAMERAS}
    infos = {c: sender.create_publisher(CameraInfo, f"/test_rig/{c}/info", qos) for c in CAMERAS}
    tf_pub = sender.create_publisher(TFMessage, "/tf", TF_QOS)
    tf_static_pub = sender.create_publisher(TFMessage, "/tf_static", TF_STATIC_QOS)
    wait_for_match(session, [*images.values(), *infos.values(), tf_pub, tf_static_pub])

    t0 = 1_700_000_000_000_000  # microseconds
    stamps = {"front": t0, "left": t0 + 20_000, "back": t0 - 200_000}  # back is 220 ms older than left: stale
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, :, 0] = 200
    for camera in CAMERAS:
        infos[camera].publish(intrinsics_to_camera_info(CameraIntrinsics(K, 64, 48), header(camera, stamps[camera])))
    bad = rgb_to_image(rgb, header("front", stamps["front"]))
    bad.encoding = "yuv422"  # front sends an encoding we do not support
    images["front"].publish(bad)
    images["back"].publish(rgb_to_image(rgb, header("back", stamps["back"])))
    images["left"].publish(rgb_to_image(rgb, header("left", stamps["left"])))
    # TF arrives after the images: the rig must wait for it, not drop the set.
    session.spin_until(lambda: False, timeout_s=0.3)
    assert not frames, "a frame was produced before its TF existed"
    tf_static_pub.publish(TFMessage(transforms=[
        transform_stamped("base_link", f"{c}_optical", stamp_from_us(0), make_transform(OPTICAL, [i, 0.0, 1.5]))
        for i, c in enumerate(CAMERAS)]))
    for stamp_us, x in ((t0 - 300_000, 0.0), (t0 + 100_000, 4.0)):  # 10 m/s along map x
        tf_pub.publish(TFMessage(transforms=[transform_stamped("map", "base_link", stamp_from_us(stamp_us),
                                                               make_transform(np.eye(3), [x, 0.0, 0.0]))]))
    assert session.spin_until(lambda: bool(frames), timeout_s=10), f"no frame; rig statistics: {rig.stats}"

    frame = frames[0]
    assert frame.cameras == ["left"], f"only 'left' is usable, got {frame.cameras} (missing: {frame.missing})"
    assert "yuv422" in frame.missing["front"], frame.missing
    assert "older than the trigger" in frame.missing["back"], frame.missing
    assert frame.images[0].shape == (48, 64, 3) and frame.images[0][0, 0, 0] == 200
    assert np.allclose(frame.intrinsics[0].K, K)
    assert frame.motion_compensated
    # left is the trigger camera, so no ego motion applies to it: its calibration comes back unchanged.
    assert np.allclose(frame.output_from_camera[0], make_transform(OPTICAL, [1, 0.0, 1.5]))
    assert rig.stats.camera_errors["front"] == 1


def test_a_jpeg_roi_crop_decoded_reduced_gets_the_crops_k_scaled_never_a_reduction_of_the_sensor():
    from distillnerf_ros.conversions.images import rgb_to_compressed_image
    from distillnerf_ros.input.rig_input import RigFrame

    full_k = np.array([[1266.0, 0, 816.0], [0, 1266.0, 491.0], [0, 0, 1]])
    info = intrinsics_to_camera_info(CameraIntrinsics(full_k, 1600, 900), header("front", 0))
    info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height = 400, 225, 800, 450
    crop = rgb_to_compressed_image(np.zeros((450, 800, 3), np.uint8), header("front", 0))
    frame = RigFrame(stamp_ns=0, output_frame="base_link", cameras=["front"], frame_ids=["front_optical"],
                     stamps_ns=[0], messages=[crop], infos=[info], output_from_camera=[np.eye(4)], rectified=[True])
    assert frame.decode(min_hw=(200, 350)) == {}
    assert frame.images[0].shape[:2] == (225, 400), "decoded at the 1/2 DCT reduction of the 800x450 crop"
    np.testing.assert_allclose(frame.intrinsics[0].K, [[633.0, 0, 208.0], [0, 633.0, 133.0], [0, 0, 1]])
    assert "ROI 800x450 at (400, 225)" in frame.distortion["front"], frame.distortion
