"""sensor_msgs Image / CompressedImage <-> numpy, without cv_bridge and without per-pixel loops."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image as PILImage
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

# encoding -> (channels, order of R, G, B among the channels); mono8 is replicated to three channels.
_COLOR_ENCODINGS = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
}
SUPPORTED_ENCODINGS = tuple(_COLOR_ENCODINGS)
# Decompressed images larger than this are refused (a 4K camera is 8.3 Mpx); bounds memory on bad input.
MAX_PIXELS = 50_000_000


class ImageConversionError(ValueError):
    """An image message that cannot be turned into an RGB array; the message says why."""


def image_to_rgb(msg: Image) -> np.ndarray:
    """HxWx3 uint8 RGB array of a raw Image message (a copy, safe to keep after the message is gone)."""
    encoding = msg.encoding.lower()
    if encoding not in _COLOR_ENCODINGS:
        raise ImageConversionError(
            f"unsupported image encoding '{msg.encoding}' (supported: {', '.join(SUPPORTED_ENCODINGS)})"
        )
    channels, rgb_order = _COLOR_ENCODINGS[encoding]
    height, width = int(msg.height), int(msg.width)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"image has empty size {width}x{height}")
    if height * width > MAX_PIXELS:
        raise ImageConversionError(f"image of {width}x{height} exceeds the {MAX_PIXELS} pixel limit")
    row_bytes = width * channels
    if msg.step < row_bytes:
        raise ImageConversionError(f"step {msg.step} is smaller than width*channels = {row_bytes}")
    data = np.frombuffer(msg.data, dtype=np.uint8)  # array.array / bytes: a view, no copy
    if data.size < msg.step * height:
        raise ImageConversionError(
            f"image data has {data.size} bytes, expected step*height = {msg.step * height}"
        )
    rows = data[: msg.step * height].reshape(height, msg.step)[:, :row_bytes]
    pixels = rows.reshape(height, width, channels)
    return np.ascontiguousarray(pixels[:, :, list(rgb_order)])


def compressed_image_to_rgb(msg: CompressedImage, min_hw: tuple[int, int] | None = None) -> np.ndarray:
    """HxWx3 uint8 RGB array of a JPEG or PNG CompressedImage.

    With `min_hw`, a JPEG is decoded at the smallest DCT reduction (1/2, 1/4, 1/8) that stays at least that
    large: several times faster when the model needs far fewer pixels than the camera sends.
    """
    return compressed_image_to_rgb_sized(msg, min_hw)[0]


def compressed_image_to_rgb_sized(msg: CompressedImage, min_hw: tuple[int, int] | None = None
                                  ) -> tuple[np.ndarray, tuple[int, int]]:
    """compressed_image_to_rgb, and the (width, height) the image was encoded at: the size its CameraInfo
    describes, which a DCT reduction (min_hw) makes the decoded array smaller than."""
    data = bytes(msg.data)  # PIL needs a bytes-like stream
    fmt = msg.format.lower()
    if not any(kind in fmt for kind in ("jpeg", "jpg", "png")):
        raise ImageConversionError(f"unsupported compressed format '{msg.format}' (supported: jpeg, png)")
    try:
        with PILImage.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageConversionError(f"compressed image of {width}x{height} exceeds the pixel limit")
            if image.format not in ("JPEG", "PNG"):
                raise ImageConversionError(f"compressed data is {image.format}, not JPEG or PNG")
            if min_hw is not None and image.format == "JPEG":
                image.draft("RGB", (min_hw[1], min_hw[0]))
            rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))  # convert would copy
            return rgb, (width, height)
    except ImageConversionError:
        raise
    except Exception as error:  # PIL raises several types for truncated or garbage data
        raise ImageConversionError(
            f"cannot decode {msg.format} image of {len(data)} bytes: {error}"
        ) from error


def message_to_rgb_sized(msg: Image | CompressedImage, min_hw: tuple[int, int] | None = None
                         ) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB array of either image message type and the (width, height) it was sent at (before any reduction)."""
    if isinstance(msg, CompressedImage):
        return compressed_image_to_rgb_sized(msg, min_hw)
    rgb = image_to_rgb(msg)
    return rgb, (rgb.shape[1], rgb.shape[0])


def rgb_to_image(rgb: np.ndarray, header: Header | None = None) -> Image:
    """rgb8 Image message of an HxWx3 uint8 array."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ImageConversionError(f"expected an HxWx3 uint8 array, got {rgb.shape} {rgb.dtype}")
    msg = Image(header=header or Header(), height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8")
    msg.is_bigendian = 0
    msg.step = rgb.shape[1] * 3
    msg.data = np.ascontiguousarray(rgb).tobytes()
    return msg


def rgb_to_compressed_image(rgb: np.ndarray, header: Header | None = None, fmt: str = "jpeg",
                            quality: int = 90) -> CompressedImage:
    """JPEG or PNG CompressedImage of an HxWx3 uint8 array."""
    buffer = io.BytesIO()
    pil_format = {"jpeg": "JPEG", "png": "PNG"}[fmt]
    PILImage.fromarray(rgb).save(buffer, format=pil_format, quality=quality)
    return CompressedImage(header=header or Header(), format=fmt, data=buffer.getvalue())


def depth_to_image(depth: np.ndarray, header: Header | None = None) -> Image:
    """32FC1 depth image in metres (REP-118): non-finite or non-positive depths become NaN (invalid)."""
    if depth.ndim != 2:
        raise ImageConversionError(f"expected an HxW depth array, got shape {depth.shape}")
    metres = np.asarray(depth, dtype=np.float32).copy()
    metres[~np.isfinite(metres) | (metres <= 0)] = np.nan
    msg = Image(header=header or Header(), height=metres.shape[0], width=metres.shape[1], encoding="32FC1")
    msg.is_bigendian = 0
    msg.step = metres.shape[1] * 4
    msg.data = metres.astype("<f4").tobytes()
    return msg


def image_to_depth(msg: Image) -> np.ndarray:
    """HxW float32 metres of a 32FC1 Image (NaN = invalid)."""
    if msg.encoding != "32FC1":
        raise ImageConversionError(f"expected a 32FC1 depth image, got encoding '{msg.encoding}'")
    dtype = ">f4" if msg.is_bigendian else "<f4"
    data = np.frombuffer(msg.data, dtype=np.uint8)
    rows = data[: msg.step * msg.height].reshape(msg.height, msg.step)[:, : msg.width * 4]
    return rows.copy().view(dtype).reshape(msg.height, msg.width).astype(np.float32)
