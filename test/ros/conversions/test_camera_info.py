import numpy as np
import pytest
from std_msgs.msg import Header

from distillnerf_ros.conversions.camera_info import (
    CameraInfoError,
    CameraIntrinsics,
    camera_info_to_intrinsics,
    intrinsics_to_camera_info,
)

K = np.array([[1266.417, 0, 816.267], [0, 1266.417, 491.507], [0, 0, 1]])


def info(k=K, width=1600, height=900):
    return intrinsics_to_camera_info(CameraIntrinsics(np.asarray(k, float), width, height), Header(frame_id="cam"))


def test_round_trip_and_projection_matrix():
    msg = info()
    assert np.allclose(np.reshape(msg.p, (3, 4)), np.hstack([K, np.zeros((3, 1))]))
    assert list(msg.d) == [0.0] * 5 and np.allclose(np.reshape(msg.r, (3, 3)), np.eye(3))
    intrinsics = camera_info_to_intrinsics(msg, image_size=(1600, 900))
    assert np.allclose(intrinsics.K, K) and (intrinsics.width, intrinsics.height) == (1600, 900)


def test_zero_focal_length_is_rejected():
    bad = K.copy()
    bad[0, 0] = 0
    with pytest.raises(CameraInfoError, match="focal length"):
        camera_info_to_intrinsics(info(bad))


def test_size_mismatch_with_the_image_is_rejected():
    with pytest.raises(CameraInfoError, match="1600x900 but the image is 800x450"):
        camera_info_to_intrinsics(info(), image_size=(800, 450))


def test_empty_size_and_non_finite_k_are_rejected():
    with pytest.raises(CameraInfoError, match="size"):
        camera_info_to_intrinsics(info(width=0))
    bad = K.copy()
    bad[1, 2] = np.nan
    with pytest.raises(CameraInfoError, match="non-finite"):
        camera_info_to_intrinsics(info(bad))


def test_resize_keeps_relative_pixel_positions():
    intrinsics = CameraIntrinsics(K, 1600, 900).resized(228, 128)
    point = np.array([2.0, -1.0, 10.0])
    full = K @ point
    small = intrinsics.K @ point
    assert np.allclose(full[:2] / full[2] / [1600, 900], small[:2] / small[2] / [228, 128])


def test_intrinsics_follow_a_jpeg_dct_reduction_only_when_allowed():
    from distillnerf_ros.conversions.camera_info import intrinsics_for_image

    quarter = intrinsics_for_image(info(), (400, 225), reduced_ok=True)
    assert np.allclose(quarter.K[0], K[0] * 0.25) and np.allclose(quarter.K[1], K[1] * 0.25)
    with pytest.raises(CameraInfoError, match="1600x900 but the image is 400x225"):
        intrinsics_for_image(info(), (400, 225), reduced_ok=False)
    with pytest.raises(CameraInfoError, match="but the image is 500x300"):
        intrinsics_for_image(info(), (500, 300), reduced_ok=True)


@pytest.mark.parametrize("index,value,reason", [
    (8, 0.0, "last row"), (7, 1.0, "last row"), (0, 1e-30, "focal length"), (4, 1e30, "focal length"),
    (3, 2.0, "zero below the diagonal"), (1, 1e9, "skew"),
])
def test_k_with_a_bad_last_row_focal_length_lower_triangle_or_skew_is_rejected(index, value, reason):
    K = np.array([[800.0, 0, 320], [0, 800.0, 240], [0, 0, 1]])
    msg = intrinsics_to_camera_info(CameraIntrinsics(K, 640, 480), Header(frame_id="cam"))
    k = list(msg.k)
    k[index] = value
    msg.k = k
    with pytest.raises(CameraInfoError, match=reason):
        camera_info_to_intrinsics(msg)


def test_roi_and_binning_crop_and_scale_k_as_rep_104_says():
    from distillnerf_ros.conversions.camera_info import image_camera_model

    msg = info()
    msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height = 400, 225, 800, 450
    crop = image_camera_model(msg, (800, 450), rectified=False).intrinsics.K
    assert np.allclose(crop, [[K[0, 0], 0, K[0, 2] - 400], [0, K[1, 1], K[1, 2] - 225], [0, 0, 1]])
    msg.binning_x = msg.binning_y = 2
    binned = image_camera_model(msg, (400, 225), rectified=False)
    assert np.allclose(binned.intrinsics.K, np.diag([0.5, 0.5, 1.0]) @ crop) and "binned 2x2" in binned.applied
    with pytest.raises(CameraInfoError, match=r"\(ROI / binning\) is for 400x225 but the image is 800x450"):
        image_camera_model(msg, (800, 450), rectified=False)
    msg.roi.x_offset = 1000  # 1000 + 800 > 1600
    with pytest.raises(CameraInfoError, match="outside its 1600x900 sensor"):
        image_camera_model(msg, (400, 225), rectified=False)
    with pytest.raises(CameraInfoError, match="is for 1600x900 but the image is 800x450"):
        image_camera_model(info(), (800, 450), rectified=False)  # a smaller image is no JPEG reduction


def test_rectified_images_use_p_and_ignore_d_raw_ones_k_and_a_finite_d():
    from distillnerf_ros.conversions.camera_info import image_camera_model

    msg = info()
    msg.d = [0.1, -0.2, 0.0, 0.0, 0.0]
    P = np.hstack([np.diag([1000.0, 1000.0, 1.0]) + np.array([[0, 0, 800], [0, 0, 450], [0, 0, 0]]), np.zeros((3, 1))])
    msg.p = P.ravel().tolist()
    rectified = image_camera_model(msg, (1600, 900), rectified=True)
    assert np.allclose(rectified.intrinsics.K, P[:, :3]) and rectified.d == () and "P (D ignored)" in rectified.applied
    raw = image_camera_model(msg, (1600, 900), rectified=False)
    assert np.allclose(raw.intrinsics.K, K) and raw.d == (0.1, -0.2, 0.0, 0.0, 0.0)
    msg.d = [float("nan"), 0.0, 0.0, 0.0, 0.0]
    with pytest.raises(CameraInfoError, match="non-finite distortion"):
        image_camera_model(msg, (1600, 900), rectified=False)
    msg.p = (P + np.array([[0, 0, 0, -100.0], [0, 0, 0, 0], [0, 0, 0, 0]])).ravel().tolist()  # a stereo right camera
    with pytest.raises(CameraInfoError, match="stereo"):
        image_camera_model(msg, (1600, 900), rectified=True)


def test_topic_names_choose_rectified_or_raw_and_the_default_topic_is_rectified():
    from distillnerf_ros.conversions.camera_info import topic_is_rectified
    from distillnerf_ros.input.rig_input import rectified_choice
    from distillnerf_ros.nodes.parameter_schema import RIG_PARAMETERS

    defaults = {spec.name: spec.default for spec in RIG_PARAMETERS}
    assert rectified_choice(defaults["image_rectified"], defaults["image_topic_format"].format(camera="CAM_FRONT"))
    assert topic_is_rectified("/cam/image_rect_color") and topic_is_rectified("/cam/image_rect/compressed")
    assert not topic_is_rectified("/cam/image_raw") and not topic_is_rectified("/small_rig/front/image")
    assert rectified_choice("true", "/cam/image_raw") and not rectified_choice("false", "/cam/image_rect")
