"""Rectification from CameraInfo distortion (what image_proc does), vectorised numpy, no OpenCV.

Camera-model maths shared by the ROS camera input (distillnerf_ros/input/rig_input.py) and the synthetic
world's distorted lenses (data/synthetic/lens.py renders through `undistort` and rectifies with `Rectifier`),
so both resample with the same model.

The model takes pinhole images. A camera whose CameraInfo has non-zero `d` is resampled to the pinhole
camera with the same K: for each output pixel the ray (x, y, 1) = K^-1 (u, v, 1) is distorted with the
CameraInfo's model and looked up bilinearly in the input. Supported: `plumb_bob` (k1, k2, p1, p2, k3),
`rational_polynomial` (k1, k2, p1, p2, k3, k4, k5, k6) and `equidistant` (fisheye k1..k4). Maps are built
once per camera and size and cached.

What a CameraInfo's D can hold is checked: a non-finite coefficient, a rational_polynomial denominator that
reaches zero inside the image, or a map whose output pixels mostly sample outside the input (absurd
coefficients: less than `min_valid_fraction` of the output has a source pixel) is a DistortionError naming
it, so only that camera is left out. Non-finite map coordinates are never looked up (they read as outside).
"""

from __future__ import annotations

import numpy as np

SUPPORTED_MODELS = ("plumb_bob", "rational_polynomial", "equidistant")
MIN_VALID_FRACTION = 0.5  # default: a rectified image of which less has a source pixel is refused


class DistortionError(ValueError):
    """A distortion model that cannot be rectified; the message names it."""


def has_distortion(d) -> bool:
    """Whether any distortion coefficient is non-zero."""
    return bool(np.any(np.asarray(d, dtype=np.float64) != 0.0))


def distort(x: np.ndarray, y: np.ndarray, model: str, d) -> tuple[np.ndarray, np.ndarray]:
    """Distorted normalised coordinates of undistorted normalised ones (the camera model's forward map)."""
    d = np.asarray(d, dtype=np.float64)
    if not np.all(np.isfinite(d)):
        raise DistortionError(f"distortion coefficients {d.tolist()} are not all finite")
    if model in ("plumb_bob", "rational_polynomial"):
        k = np.zeros(8)
        k[: min(len(d), 8)] = d[:8]
        k1, k2, p1, p2, k3, k4, k5, k6 = k
        r2 = x * x + y * y
        denominator = 1 + r2 * (k4 + r2 * (k5 + r2 * k6))
        if np.any(denominator <= 1e-6):
            raise DistortionError(f"{model} denominator 1 + k4 r^2 + k5 r^4 + k6 r^6 reaches"
                                  f" {float(np.min(denominator)):.3g} inside the image (k4..k6 = {[k4, k5, k6]})")
        radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / denominator
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        return xd, yd
    if model == "equidistant":
        k = np.zeros(4)
        k[: min(len(d), 4)] = d[:4]
        r = np.hypot(x, y)
        theta = np.arctan(r)
        t2 = theta * theta
        theta_d = theta * (1 + t2 * (k[0] + t2 * (k[1] + t2 * (k[2] + t2 * k[3]))))
        scale = np.where(r > 1e-12, theta_d / np.maximum(r, 1e-12), 1.0)
        return x * scale, y * scale
    raise DistortionError(f"distortion model '{model}' is not supported (supported: {', '.join(SUPPORTED_MODELS)})")


def undistort(xd: np.ndarray, yd: np.ndarray, model: str, d, iterations: int = 30
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undistorted normalised coordinates of distorted ones (the inverse of `distort`) and the residual.

    Fixed-point iteration as OpenCV's undistortPoints (x = (xd - tangential(x)) / radial(x)) for the
    polynomial models, Newton on theta for `equidistant`. Returns (x, y, residual): residual is |distort(x, y)
    - (xd, yd)| per point, so the caller can refuse a lens the iteration does not invert (a non-monotonic
    radial profile inside the image has no unique inverse).
    """
    xd, yd = np.asarray(xd, dtype=np.float64), np.asarray(yd, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64)
    if model in ("plumb_bob", "rational_polynomial"):
        k = np.zeros(8)
        k[: min(len(d), 8)] = d[:8]
        k1, k2, p1, p2, k3, k4, k5, k6 = k
        x, y = xd.copy(), yd.copy()
        for _ in range(iterations):
            r2 = x * x + y * y
            radial = (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1 + r2 * (k4 + r2 * (k5 + r2 * k6)))
            dx = 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
            dy = p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
            x, y = (xd - dx) / radial, (yd - dy) / radial
    elif model == "equidistant":
        k = np.zeros(4)
        k[: min(len(d), 4)] = d[:4]
        theta_d = np.hypot(xd, yd)
        theta = theta_d.copy()
        for _ in range(iterations):
            t2 = theta * theta
            f = theta * (1 + t2 * (k[0] + t2 * (k[1] + t2 * (k[2] + t2 * k[3])))) - theta_d
            df = 1 + t2 * (3 * k[0] + t2 * (5 * k[1] + t2 * (7 * k[2] + t2 * 9 * k[3])))
            theta = theta - f / np.where(np.abs(df) > 1e-9, df, 1e-9)
        scale = np.where(theta_d > 1e-12, np.tan(theta) / np.maximum(theta_d, 1e-12), 1.0)
        x, y = xd * scale, yd * scale
    else:
        raise DistortionError(f"distortion model '{model}' is not supported (supported: {', '.join(SUPPORTED_MODELS)})")
    with np.errstate(over="ignore", invalid="ignore"):
        xr, yr = distort(x, y, model, d)
        residual = np.hypot(xr - xd, yr - yd)
    return x, y, np.where(np.isfinite(residual), residual, np.inf)


def rectify_maps(K: np.ndarray, model: str, d, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(map_x, map_y) float32 HxW: the input pixel each output (pinhole, same K) pixel samples."""
    K = np.asarray(K, dtype=np.float64)
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    x = (u - K[0, 2] - K[0, 1] * (v - K[1, 2]) / K[1, 1]) / K[0, 0]
    y = (v - K[1, 2]) / K[1, 1]
    with np.errstate(over="ignore", invalid="ignore"):  # absurd coefficients overflow: inf / NaN read as outside
        xd, yd = distort(x, y, model, d)
        map_x = (K[0, 0] * xd + K[0, 1] * yd + K[0, 2]).astype(np.float32)
        map_y = (K[1, 1] * yd + K[1, 2]).astype(np.float32)
    return map_x, map_y


def valid_fraction(map_x: np.ndarray, map_y: np.ndarray, width: int, height: int) -> float:
    """Fraction of output pixels whose source (finite) lies inside a width x height input."""
    inside = _inside(map_x, map_y, width, height)
    return float(np.count_nonzero(inside)) / max(inside.size, 1)


def _inside(map_x: np.ndarray, map_y: np.ndarray, width: int, height: int) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # NaN compares False: outside
        return (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)


def remap(image: np.ndarray, map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    """Bilinear lookup of an HxWxC uint8 image at (map_x, map_y); outside the image is black."""
    height, width = image.shape[:2]
    inside = _inside(map_x, map_y, width, height)
    x = np.where(inside, map_x, 0).astype(np.float32)  # NaN / inf never reach the integer cast
    y = np.where(inside, map_y, 0).astype(np.float32)
    x0 = np.minimum(x.astype(np.int32), width - 2 if width > 1 else 0)
    y0 = np.minimum(y.astype(np.int32), height - 2 if height > 1 else 0)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    pixels = image.astype(np.float32)
    top = pixels[y0, x0] * (1 - fx) + pixels[y0, x1] * fx
    bottom = pixels[y1, x0] * (1 - fx) + pixels[y1, x1] * fx
    out = top * (1 - fy) + bottom * fy
    out[~inside] = 0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class Rectifier:
    """Rectifies images per camera with cached maps (rebuilt when K, d, the model or the size change); a
    distortion that cannot be rectified (see the module) is cached as its DistortionError, raised each time."""

    def __init__(self, min_valid_fraction: float = MIN_VALID_FRACTION) -> None:
        self.min_valid_fraction = min_valid_fraction
        self._maps: dict[str, tuple[tuple, tuple[np.ndarray, np.ndarray] | DistortionError]] = {}

    def rectify(self, camera: str, image: np.ndarray, K: np.ndarray, model: str, d) -> np.ndarray:
        """The pinhole image with intrinsics K of a distorted `image` (DistortionError: unsupported model)."""
        height, width = image.shape[:2]
        key = (model, tuple(float(v) for v in d), tuple(np.asarray(K, dtype=np.float64).ravel()), width, height)
        cached = self._maps.get(camera)
        if cached is None or cached[0] != key:
            cached = (key, self._build(K, model, d, width, height))
            self._maps[camera] = cached
        if isinstance(cached[1], DistortionError):
            raise cached[1]
        return remap(image, *cached[1])

    def _build(self, K: np.ndarray, model: str, d, width: int, height: int
               ) -> tuple[np.ndarray, np.ndarray] | DistortionError:
        try:
            maps = rectify_maps(K, model, d, width, height)
        except DistortionError as error:
            return error
        fraction = valid_fraction(*maps, width, height)
        if fraction < self.min_valid_fraction:
            return DistortionError(f"{model} distortion d={[float(f'{v:.4g}') for v in d]} leaves only"
                                   f" {100 * fraction:.1f} % of the rectified image with a source pixel (below"
                                   f" {100 * self.min_valid_fraction:.0f} %): absurd coefficients")
        return maps
