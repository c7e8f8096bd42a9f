"""Rectification from CameraInfo distortion (plumb_bob, rational_polynomial, equidistant): a point drawn
where the distorted camera sees a ray lands, after rectification, where the pinhole camera with the same K
sees it."""

import numpy as np
import pytest

from distillnerf_core.rectify import (
    DistortionError,
    Rectifier,
    distort,
    has_distortion,
    rectify_maps,
    undistort,
)

K = np.array([[2000.0, 0, 960], [0, 2000.0, 640], [0, 0, 1]])
MODELS = {
    "plumb_bob": [0.1, -0.33, 0.001, -0.002, 0.05],
    "rational_polynomial": [0.2, -0.1, 0.0, 0.0, 0.01, 0.05, 0.0, 0.0],
    "equidistant": [0.05, -0.01, 0.002, 0.0],
}


def project(K, x, y):
    return K[0, 0] * x + K[0, 2], K[1, 1] * y + K[1, 2]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_a_distorted_dot_lands_at_its_pinhole_pixel_after_rectification(model):
    width, height = 192, 128
    small_K = np.diag([width / 1920, height / 1280, 1.0]) @ K
    rectifier = Rectifier()
    for u, v in ((20.0, 15.0), (96.0, 64.0), (170.0, 110.0)):  # corners are where distortion is largest
        x, y = (u - small_K[0, 2]) / small_K[0, 0], (v - small_K[1, 2]) / small_K[1, 1]
        ud, vd = project(small_K, *distort(np.array(x), np.array(y), model, MODELS[model]))
        image = np.zeros((height, width, 3), np.uint8)
        row, col = int(round(float(vd))), int(round(float(ud)))
        image[row - 1:row + 2, col - 1:col + 2] = 255
        rectified = rectifier.rectify("cam", image, small_K, model, MODELS[model])
        rows, cols = np.nonzero(rectified[..., 0] > 100)
        assert rows.size, f"the dot vanished ({model}, {u}, {v})"
        assert abs(cols.mean() - u) < 1.5 and abs(rows.mean() - v) < 1.5, (model, u, v, cols.mean(), rows.mean())


def test_distortion_is_large_enough_to_matter_and_maps_are_cached():
    # k2 = -0.33 on a 1920x1280 camera: about 20 px at the corners, enough to matter
    map_x, map_y = rectify_maps(K, "plumb_bob", [0.0, -0.33, 0, 0, 0], 1920, 1280)
    shift = np.hypot(map_x - np.arange(1920)[None], map_y - np.arange(1280)[:, None])
    assert 20 < shift[0, 0] < 60 and shift[640, 960] < 1e-3
    rectifier = Rectifier()
    image = np.zeros((32, 48, 3), np.uint8)
    rectifier.rectify("cam", image, K / 40 * np.array([[1], [1], [40]]), "plumb_bob", MODELS["plumb_bob"])
    first = rectifier._maps["cam"][1]
    rectifier.rectify("cam", image, K / 40 * np.array([[1], [1], [40]]), "plumb_bob", MODELS["plumb_bob"])
    assert rectifier._maps["cam"][1] is first, "maps are built once per camera"


def test_unknown_distortion_models_are_refused_and_zero_d_is_no_distortion():
    assert not has_distortion([0.0] * 5) and has_distortion([0, 0.1, 0, 0, 0])
    with pytest.raises(DistortionError, match="not supported"):
        Rectifier().rectify("cam", np.zeros((4, 4, 3), np.uint8), K, "kannala_brandt_x", [0.1])


def test_non_finite_map_coordinates_read_as_outside_never_as_an_index():
    from distillnerf_core.rectify import remap

    image = np.full((4, 6, 3), 200, np.uint8)
    map_x = np.array([[np.nan, np.inf, -np.inf, 2.0, 1e30, 0.0]] * 4, np.float32)
    map_y = np.full((4, 6), 1.0, np.float32)
    out = remap(image, map_x, map_y)
    assert (out[:, :3] == 0).all() and (out[:, 3] == 200).all() and (out[:, 4] == 0).all()


@pytest.mark.parametrize("model,d,match", [
    ("plumb_bob", [float("nan"), 0, 0, 0, 0], "not all finite"),
    ("rational_polynomial", [0, 0, 0, 0, 0, -5.0, 0, 0], "denominator"),  # 1 - 5 r^2 = 0 inside (corner r^2 0.33)
    ("plumb_bob", [1e6, 0, 0, 0, 0], "of the rectified image with a source pixel"),
    ("plumb_bob", [-1e6, 0, 0, 0, 0], "of the rectified image with a source pixel"),
    ("plumb_bob", [0, 0, 1e3, 0, 0], "of the rectified image with a source pixel"),
])
def test_distortion_that_cannot_be_rectified_is_refused_and_the_refusal_cached(model, d, match):
    small_K = np.diag([0.05, 0.05, 1.0]) @ K  # 96 x 64, focal 100
    rectifier = Rectifier()
    for _ in range(2):
        with pytest.raises(DistortionError, match=match):
            rectifier.rectify("cam", np.zeros((64, 96, 3), np.uint8), small_K, model, d)
    assert Rectifier(min_valid_fraction=0.01).min_valid_fraction == 0.01
    strong = Rectifier().rectify("cam", np.zeros((64, 96, 3), np.uint8), small_K, "plumb_bob", [0.0, -0.33, 0, 0, 0])
    assert strong.shape == (64, 96, 3), "a strong but sane barrel distortion is still rectified"


@pytest.mark.parametrize("model", sorted(MODELS))
def test_undistort_inverts_distort_and_reports_a_lens_it_cannot_invert(model):
    rng = np.random.default_rng(1)
    x, y = rng.uniform(-0.5, 0.5, 500), rng.uniform(-0.3, 0.3, 500)
    xu, yu, residual = undistort(*distort(x, y, model, MODELS[model]), model, MODELS[model])
    assert np.abs(xu - x).max() < 1e-9 and np.abs(yu - y).max() < 1e-9, f"{model}: undistort is not the inverse"
    assert residual.max() < 1e-9, f"{model}: residual {residual.max()} for an invertible lens"
    # a barrel so strong that r (1 + k1 r^2) never reaches r_d = 1.2: no inverse, and the residual says so
    _, _, residual = undistort(np.array([1.2]), np.array([0.0]), "plumb_bob", [-0.4, 0.0, 0.0, 0.0, 0.0])
    assert residual[0] > 1e-3, f"an impossible inverse was reported with residual {residual[0]}"
