"""CameraInfo <-> pinhole intrinsics, with the checks a bad driver or bag needs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Header

FOCAL_BOUNDS = (0.01, 1000.0)  # focal length / larger image side: about 179.4 degrees to 0.06 degrees of view


class CameraInfoError(ValueError):
    """A CameraInfo that cannot be used as pinhole intrinsics; the message says why."""


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of an image of `width` x `height` pixels."""

    K: np.ndarray  # 3x3
    width: int
    height: int

    def resized(self, width: int, height: int) -> CameraIntrinsics:
        """Intrinsics of the same camera after resizing its image to width x height (aspect may change)."""
        scale = np.diag([width / self.width, height / self.height, 1.0])
        return CameraIntrinsics(K=scale @ self.K, width=width, height=height)


def camera_info_to_intrinsics(msg: CameraInfo, image_size: tuple[int, int] | None = None) -> CameraIntrinsics:
    """Intrinsics of a CameraInfo; `image_size` = (width, height) of the image it must describe.

    Raises CameraInfoError on a non-finite K, one whose last row is not [0, 0, 1] or that is not upper
    triangular, a focal length outside FOCAL_BOUNDS x the larger image side, a skew larger than fx, a
    non-positive size, a principal point far outside the image, or a size that differs from the image's.
    """
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    width, height = int(msg.width), int(msg.height)
    frame = msg.header.frame_id or "<no frame_id>"
    if width <= 0 or height <= 0:
        raise CameraInfoError(f"CameraInfo of '{frame}' has invalid size {width}x{height}")
    if not np.all(np.isfinite(K)):
        raise CameraInfoError(f"CameraInfo of '{frame}' has non-finite K {K.ravel().tolist()}")
    if not np.allclose(K[2], [0.0, 0.0, 1.0], atol=1e-6):
        raise CameraInfoError(f"CameraInfo of '{frame}' has K with last row {K[2].tolist()}, not [0, 0, 1]")
    if abs(K[1, 0]) > 1e-6:
        raise CameraInfoError(f"CameraInfo of '{frame}' has K[1][0] = {K[1, 0]}; K must be zero below the diagonal")
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if fx <= 0 or fy <= 0:
        raise CameraInfoError(f"CameraInfo of '{frame}' has zero or negative focal length fx={fx}, fy={fy}")
    low, high = FOCAL_BOUNDS[0] * max(width, height), FOCAL_BOUNDS[1] * max(width, height)
    if not (low <= fx <= high and low <= fy <= high):
        raise CameraInfoError(f"CameraInfo of '{frame}' has focal length fx={fx}, fy={fy} outside [{low:g}, {high:g}]"
                              f" px ({FOCAL_BOUNDS[0]:g} to {FOCAL_BOUNDS[1]:g} x the larger image side)")
    if abs(K[0, 1]) > fx:
        raise CameraInfoError(f"CameraInfo of '{frame}' has skew K[0][1] = {K[0, 1]} larger than fx = {fx}")
    if not (-width <= cx <= 2 * width and -height <= cy <= 2 * height):
        raise CameraInfoError(f"CameraInfo of '{frame}' has principal point ({cx}, {cy}) far outside its"
                              f" {width}x{height} image")
    if image_size is not None and tuple(image_size) != (width, height):
        raise CameraInfoError(f"CameraInfo of '{frame}' is for {width}x{height} but the image is"
                              f" {image_size[0]}x{image_size[1]}")
    return CameraIntrinsics(K=K, width=width, height=height)


def intrinsics_to_camera_info(intrinsics: CameraIntrinsics, header: Header) -> CameraInfo:
    """CameraInfo of an undistorted pinhole camera: D = 0 (plumb_bob), R = I, P = [K | 0]."""
    K = np.asarray(intrinsics.K, dtype=np.float64)
    msg = CameraInfo(header=header, width=intrinsics.width, height=intrinsics.height)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = K.ravel().tolist()
    msg.r = np.eye(3).ravel().tolist()
    msg.p = np.hstack([K, np.zeros((3, 1))]).ravel().tolist()
    return msg


def intrinsics_for_image(msg: CameraInfo, image_size: tuple[int, int], reduced_ok: bool) -> CameraIntrinsics:
    """Intrinsics for an image of `image_size` = (width, height) described by `msg`.

    With `reduced_ok`, the image may also be a JPEG DCT reduction (1/2, 1/4, 1/8, sizes rounded up) of the
    size the CameraInfo describes; K is scaled to it. Any other size is a CameraInfoError.
    """
    full = camera_info_to_intrinsics(msg)
    if tuple(image_size) == (full.width, full.height):
        return full
    if reduced_ok:
        for factor in (2, 4, 8):
            if tuple(image_size) == (-(-full.width // factor), -(-full.height // factor)):
                return full.resized(*image_size)
    raise CameraInfoError(f"CameraInfo of '{msg.header.frame_id or '<no frame_id>'}' is for {full.width}x"
                          f"{full.height} but the image is {image_size[0]}x{image_size[1]}")
