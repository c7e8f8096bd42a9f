import io

import numpy as np
import pytest
from conftest import REPO
from PIL import Image as PILImage
from sensor_msgs.msg import CompressedImage, Image

from distillnerf_ros.conversions.images import (
    ImageConversionError,
    compressed_image_to_rgb,
    depth_to_image,
    image_to_depth,
    image_to_rgb,
    rgb_to_compressed_image,
    rgb_to_image,
)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(7, 11, 3), dtype=np.uint8)


def raw_image(pixels: np.ndarray, encoding: str, padding: int = 0) -> Image:
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    rows = np.hstack([rows, np.full((height, padding), 255, np.uint8)])
    return Image(height=height, width=width, encoding=encoding, step=rows.shape[1], data=rows.tobytes())


@pytest.mark.parametrize("encoding,pixels", [
    ("rgb8", RGB),
    ("bgr8", RGB[:, :, ::-1]),
    ("rgba8", np.dstack([RGB, np.full(RGB.shape[:2], 9, np.uint8)])),
    ("bgra8", np.dstack([RGB[:, :, ::-1], np.full(RGB.shape[:2], 9, np.uint8)])),
])
@pytest.mark.parametrize("padding", [0, 5])
def test_colour_encodings_give_rgb(encoding, pixels, padding):
    result = image_to_rgb(raw_image(np.ascontiguousarray(pixels), encoding, padding))
    assert result.dtype == np.uint8 and result.shape == RGB.shape, f"{encoding}: wrong shape {result.shape}"
    assert np.array_equal(result, RGB), f"{encoding} (row padding {padding}) was not converted to RGB correctly"


def test_mono8_is_replicated_to_three_channels():
    grey = RGB[:, :, 0]
    result = image_to_rgb(raw_image(np.ascontiguousarray(grey[:, :, None]), "mono8"))
    assert np.array_equal(result, np.repeat(grey[:, :, None], 3, axis=2))


def test_unsupported_encoding_is_named_in_the_error():
    with pytest.raises(ImageConversionError, match="16UC1"):
        image_to_rgb(Image(height=2, width=2, encoding="16UC1", step=4, data=bytes(8)))


def test_truncated_data_is_an_error():
    msg = raw_image(RGB, "rgb8")
    msg.data = bytes(msg.data)[:-10]
    with pytest.raises(ImageConversionError, match="bytes"):
        image_to_rgb(msg)


def test_png_round_trip_is_exact_and_jpeg_is_close():
    png = rgb_to_compressed_image(RGB, fmt="png")
    assert np.array_equal(compressed_image_to_rgb(png), RGB), "PNG decode changed pixels"
    smooth = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (32, 1, 3))
    jpeg = rgb_to_compressed_image(smooth, fmt="jpeg", quality=95)
    error = np.abs(compressed_image_to_rgb(jpeg).astype(int) - smooth).mean()
    assert error < 3, f"JPEG decode differs by {error:.1f} grey levels on a smooth ramp"


def test_real_nuscenes_jpeg_decodes_at_full_size():
    path = next((REPO / "data/nuscenes_sample/samples/CAM_FRONT").glob("*.jpg"))
    rgb = compressed_image_to_rgb(CompressedImage(format="jpeg", data=path.read_bytes()))
    assert rgb.shape == (900, 1600, 3)
    with PILImage.open(path) as reference:
        assert np.array_equal(rgb, np.asarray(reference.convert("RGB")))


def test_garbage_and_unsupported_compressed_data_are_errors():
    with pytest.raises(ImageConversionError, match="cannot decode"):
        compressed_image_to_rgb(CompressedImage(format="jpeg", data=b"not an image at all"))
    buffer = io.BytesIO()
    PILImage.fromarray(RGB).save(buffer, format="BMP")
    with pytest.raises(ImageConversionError, match="bmp"):
        compressed_image_to_rgb(CompressedImage(format="bmp", data=buffer.getvalue()))


def test_rgb_to_image_round_trip():
    assert np.array_equal(image_to_rgb(rgb_to_image(RGB)), RGB)


def test_depth_is_32fc1_metres_with_nan_for_invalid():
    depth = np.array([[1.5, 0.0], [np.inf, 80.25]], dtype=np.float32)
    msg = depth_to_image(depth)
    assert msg.encoding == "32FC1" and msg.step == 8 and msg.is_bigendian == 0
    back = image_to_depth(msg)
    assert back[0, 0] == 1.5 and back[1, 1] == 80.25
    assert np.isnan(back[0, 1]) and np.isnan(back[1, 0]), "zero / infinite depth must become NaN (REP-118)"


def test_jpeg_decodes_at_a_dct_reduction_no_smaller_than_asked():
    path = next((REPO / "data/nuscenes_sample/samples/CAM_FRONT").glob("*.jpg"))
    msg = CompressedImage(format="jpeg", data=path.read_bytes())
    assert compressed_image_to_rgb(msg, min_hw=(128, 228)).shape == (225, 400, 3), "1/4 keeps >= 128x228"
    assert compressed_image_to_rgb(msg, min_hw=(500, 900)).shape == (900, 1600, 3), "no reduction fits: full size"
    png = rgb_to_compressed_image(RGB, fmt="png")
    assert compressed_image_to_rgb(png, min_hw=(2, 2)).shape == RGB.shape, "PNG has no DCT reduction"
