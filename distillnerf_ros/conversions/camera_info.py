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


def check_k(K: np.ndarray, width: int, height: int, frame: str, name: str = "K") -> None:
    """CameraInfoError unless K (or P's left 3x3, `name`) is a usable pinhole matrix for a width x height image
    (see camera_info_to_intrinsics)."""
    if width <= 0 or height <= 0:
        raise CameraInfoError(f"CameraInfo of '{frame}' has invalid size {width}x{height}")
    if not np.all(np.isfinite(K)):
        raise CameraInfoError(f"CameraInfo of '{frame}' has non-finite {name} {K.ravel().tolist()}")
    if not np.allclose(K[2], [0.0, 0.0, 1.0], atol=1e-6):
        raise CameraInfoError(f"CameraInfo of '{frame}' has {name} with last row {K[2].tolist()}, not [0, 0, 1]")
    if abs(K[1, 0]) > 1e-6:
        raise CameraInfoError(f"CameraInfo of '{frame}' has {name}[1][0] = {K[1, 0]}; {name} must be zero below"
                              " the diagonal")
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    if fx <= 0 or fy <= 0:
        raise CameraInfoError(f"CameraInfo of '{frame}' has zero or negative focal length fx={fx}, fy={fy}"
                              f" in {name}")
    low, high = FOCAL_BOUNDS[0] * max(width, height), FOCAL_BOUNDS[1] * max(width, height)
    if not (low <= fx <= high and low <= fy <= high):
        raise CameraInfoError(f"CameraInfo of '{frame}' has focal length fx={fx}, fy={fy} outside [{low:g}, {high:g}]"
                              f" px ({FOCAL_BOUNDS[0]:g} to {FOCAL_BOUNDS[1]:g} x the larger image side)")
    if abs(K[0, 1]) > fx:
        raise CameraInfoError(f"CameraInfo of '{frame}' has skew {name}[0][1] = {K[0, 1]} larger than fx = {fx}")
    if not (-width <= cx <= 2 * width and -height <= cy <= 2 * height):
        raise CameraInfoError(f"CameraInfo of '{frame}' has principal point ({cx}, {cy}) far outside its"
                              f" {width}x{height} image")


def camera_info_to_intrinsics(msg: CameraInfo, image_size: tuple[int, int] | None = None) -> CameraIntrinsics:
    """Intrinsics of a CameraInfo; `image_size` = (width, height) of the image it must describe.

    Raises CameraInfoError on a non-finite K, one whose last row is not [0, 0, 1] or that is not upper
    triangular, a focal length outside FOCAL_BOUNDS x the larger image side, a skew larger than fx, a
    non-positive size, a principal point far outside the image, or a size that differs from the image's.
    """
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    width, height = int(msg.width), int(msg.height)
    frame = msg.header.frame_id or "<no frame_id>"
    check_k(K, width, height, frame)
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


def topic_is_rectified(topic: str) -> bool:
    """image_proc's naming: a topic with a part starting `image_rect` (image_rect, image_rect_color,
    image_rect_compressed, .../image_rect/compressed) carries rectified images; anything else (image_raw,
    image, image_color) raw ones."""
    return any(part.startswith("image_rect") for part in topic.split("/"))


@dataclass(frozen=True)
class CameraModel:
    """How the node reads one camera's image with its CameraInfo (REP-104)."""

    intrinsics: CameraIntrinsics  # of the image as it was sent (ROI and binning applied)
    distortion_model: str  # what is left to rectify ("" when nothing: D zero, or a rectified image)
    d: tuple[float, ...]
    applied: str  # what was used, for /diagnostics: "raw image: K + D" or "rectified image: P (D ignored)", ...


def _roi_and_binning(msg: CameraInfo, frame: str) -> tuple[int, int, int, int, int, int] | None:
    """(x_offset, y_offset, width, height, binning_x, binning_y) of the image inside the full sensor, or None
    when the image is the full sensor unbinned. CameraInfoError when the ROI leaves the sensor."""
    roi = msg.roi
    bx, by = max(1, int(msg.binning_x)), max(1, int(msg.binning_y))
    full = int(roi.x_offset) == int(roi.y_offset) == int(roi.width) == int(roi.height) == 0
    if full and bx == by == 1:
        return None
    width, height = int(msg.width), int(msg.height)
    x, y = int(roi.x_offset), int(roi.y_offset)
    w, h = (width, height) if full else (int(roi.width), int(roi.height))
    if w <= 0 or h <= 0 or x + w > width or y + h > height:
        raise CameraInfoError(f"CameraInfo of '{frame}' has an ROI {w}x{h} at ({x}, {y}) outside its {width}x{height}"
                              " sensor")
    if w // bx <= 0 or h // by <= 0:
        raise CameraInfoError(f"CameraInfo of '{frame}' bins its {w}x{h} ROI by {bx}x{by} to nothing")
    return x, y, w, h, bx, by


def image_camera_model(msg: CameraInfo, image_size: tuple[int, int], rectified: bool) -> CameraModel:
    """The intrinsics of an image of `image_size` = (width, height) as sent, described by `msg` (REP-104).

    `rectified` (an `image_rect*` topic): the image is already rectified, its intrinsics are P's left 3x3 and
    D is ignored (P all zero with D zero: K). Raw: K, and D (finite) to rectify. CameraInfo's width, height
    and K are of the full-resolution sensor; with an ROI and/or binning the image is that region binned, and
    K is cropped and scaled to it (fx / binning_x, (cx - x_offset) / binning_x, ...). Refused
    (CameraInfoError, with the reason): a K or P that is not a usable pinhole matrix, a non-finite D, a P of a
    stereo pair (R not identity or Tx, Ty not zero), an ROI outside the sensor or on a rectified image whose P
    is not K (the ROI is in raw pixels: there is no exact rectified region), an image size other than the
    (ROI, binned) size.
    """
    frame = msg.header.frame_id or "<no frame_id>"
    width, height = int(msg.width), int(msg.height)
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    d = tuple(float(v) for v in msg.d)
    region = _roi_and_binning(msg, frame)
    if rectified:
        P = np.asarray(msg.p, dtype=np.float64).reshape(3, 4)
        R = np.asarray(msg.r, dtype=np.float64).reshape(3, 3)
        if not np.all(np.isfinite(P)):
            raise CameraInfoError(f"CameraInfo of '{frame}' has non-finite P {P.ravel().tolist()}")
        if not np.any(P):
            if any(v != 0.0 for v in d):
                raise CameraInfoError(f"CameraInfo of '{frame}' has P all zero and a non-zero D: the intrinsics of"
                                      " the rectified image are unknown")
            matrix, applied = K, "rectified image: K (P is zero, D zero)"
        else:
            matrix, applied = P[:, :3], "rectified image: P (D ignored)"
            if np.any(np.abs(P[:2, 3]) > 1e-9) or abs(P[2, 3]) > 1e-9:
                raise CameraInfoError(f"CameraInfo of '{frame}' has P with Tx, Ty = {P[0, 3]}, {P[1, 3]} (a stereo"
                                      " pair's second camera): not supported, publish a monocular P")
            if np.any(R) and not np.allclose(R, np.eye(3), atol=1e-6):
                raise CameraInfoError(f"CameraInfo of '{frame}' has a rectification R other than identity: the"
                                      " rectified image is rotated from its frame, not supported")
        check_k(matrix, width, height, frame, "P" if matrix is not K else "K")
        if region is not None and not (all(v == 0.0 for v in d) and np.allclose(matrix, K, rtol=1e-9, atol=1e-9)):
            raise CameraInfoError(f"CameraInfo of '{frame}' has an ROI or binning on a rectified image whose P"
                                  " differs from K (or D is not zero): REP-104 gives the ROI in raw pixels, the"
                                  " rectified region is not exact; publish the full rectified image")
        model, d_left = "", ()
    else:
        check_k(K, width, height, frame)
        if not all(np.isfinite(d)):
            raise CameraInfoError(f"CameraInfo of '{frame}' has non-finite distortion D {list(d)}")
        matrix, applied = K, "raw image: K" + (f" + D ({msg.distortion_model or '<empty>'})" if any(d) else "")
        model, d_left = (msg.distortion_model, d) if any(v != 0.0 for v in d) else ("", ())
    expected = (width, height)
    if region is not None:
        x, y, w, h, bx, by = region
        matrix = np.diag([1.0 / bx, 1.0 / by, 1.0]) @ (matrix - np.array([[0, 0, x], [0, 0, y], [0, 0, 0]]))
        expected = (w // bx, h // by)
        applied += f"; ROI {w}x{h} at ({x}, {y}) binned {bx}x{by} -> {expected[0]}x{expected[1]}"
    if tuple(image_size) != expected:
        what = f"(ROI / binning) is for {expected[0]}x{expected[1]}" if region is not None else \
            f"is for {width}x{height}"
        raise CameraInfoError(f"CameraInfo of '{frame}' {what} but the image is {image_size[0]}x{image_size[1]}")
    return CameraModel(CameraIntrinsics(K=matrix, width=expected[0], height=expected[1]), model, d_left, applied)
