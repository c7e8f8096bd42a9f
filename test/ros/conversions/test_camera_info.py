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
