"""Distorted lenses of the synthetic rigs: rays of a distorted camera, and its rectification to the pinhole.

A synthetic camera with a `Lens` is rendered as a real camera with that lens takes its raw image: the ray of
raw pixel (u, v) is the undistorted direction of the pixel centre's distorted normalised coordinates
(x_d, y_d) = K^-1 (u + 0.5, v + 0.5, 1), found with `distillnerf_core.rectify.undistort`. The data path then
rectifies the raw image to the pinhole camera with the same K with the package's own rectification maps
(`distillnerf_core.rectify.Rectifier`, what the ROS camera input does for a CameraInfo with D), so the image
written is a pinhole image and the ground truth (depth, semantics) rendered through K's pinhole rays is exact
for it.

Pixel conventions: the synthetic world's K maps pixel u's centre to u + 0.5 (pixel u covers [u, u + 1)); the
rectification maps (ROS / OpenCV) put pixel u's centre at u. `index_K` converts the first to the second.

Lenses drawn by `random_lens` are radial barrel lenses (k1 < 0, 0 <= k2 small; plumb_bob, no tangential
terms), as automotive wide-angle lenses mostly are: the distorted position of every rectified pixel lies
nearer the image centre than the pinhole one, so each rectified pixel has a source pixel (no black border),
and the radial profile is monotonic over the raw image (each raw pixel has one ray).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from distillnerf_core.rectify import Rectifier, distort, rectify_maps, undistort, valid_fraction

MAX_UNDISTORT_RESIDUAL = 1e-7  # normalised units: ~3e-5 px at f = 300 px


@dataclass(frozen=True)
class Lens:
    """A CameraInfo-style distortion: `model` and its coefficients `d` (see distillnerf_core.rectify)."""

    model: str = "plumb_bob"
    d: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)

    def record(self) -> dict:
        return {"model": self.model, "d": [float(v) for v in self.d]}


def index_K(K: np.ndarray) -> np.ndarray:
    """K in the rectification maps' convention (pixel centre at integer coordinates) from the world's."""
    out = np.array(K, dtype=np.float64)
    out[0, 2] -= 0.5
    out[1, 2] -= 0.5
    return out


def camera_rays(K: np.ndarray, size: tuple[int, int], lens: Lens) -> np.ndarray:
    """(H, W, 3) float32 camera-frame rays with z = 1 through the raw (distorted) pixel centres.

    ValueError when the lens cannot be inverted over the image (the undistortion residual says so)."""
    w, h = size
    K = np.asarray(K, dtype=np.float64)
    v, u = np.meshgrid(np.arange(h, dtype=np.float64) + 0.5, np.arange(w, dtype=np.float64) + 0.5, indexing="ij")
    yd = (v - K[1, 2]) / K[1, 1]
    xd = (u - K[0, 2] - K[0, 1] * yd) / K[0, 0]
    if _is_radial(lens):
        x, y = _undistort_radial(xd, yd, lens)
        xr, yr = distort(x, y, lens.model, lens.d)
        residual = np.hypot(xr - xd, yr - yd)
    else:
        x, y, residual = undistort(xd, yd, lens.model, lens.d)
    worst = float(residual.max())
    if not worst <= MAX_UNDISTORT_RESIDUAL:
        raise ValueError(f"lens {lens.record()} cannot be inverted over a {w}x{h} image with K {K.tolist()}"
                         f" (undistortion residual {worst:.3g} > {MAX_UNDISTORT_RESIDUAL:g})")
    return np.stack([x, y, np.ones_like(x)], axis=-1).astype(np.float32)


def _is_radial(lens: Lens) -> bool:
    """plumb_bob without tangential terms: distortion scales the radius only (a 1-D inverse)."""
    return lens.model == "plumb_bob" and all(v == 0.0 for v in tuple(lens.d)[2:4])


def _radial_profile(lens: Lens, r_max: float, samples: int = 4097) -> tuple[np.ndarray, np.ndarray]:
    """(r, r_d) on [0, r_max]: the distorted radius of each undistorted one."""
    r = np.linspace(0.0, r_max, samples)
    xd, _ = distort(r, np.zeros_like(r), lens.model, lens.d)
    return r, xd


def _undistort_radial(xd: np.ndarray, yd: np.ndarray, lens: Lens) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of a radial lens: r from r_d by interpolating its (monotonic) profile, then two Newton steps
    (40x cheaper than the 2-D fixed-point iteration on a full image; the residual is checked by the caller)."""
    rd = np.hypot(xd, yd)
    r_max = 2.0 * float(rd.max()) + 1e-6
    r_tab, rd_tab = _radial_profile(lens, r_max)
    rising = np.concatenate([[True], np.diff(rd_tab) > 0])
    stop = int(np.argmin(rising)) if not rising.all() else len(rd_tab)
    r = np.interp(rd, rd_tab[:stop], r_tab[:stop])
    k1, k2, _, _, k3 = (tuple(lens.d) + (0.0,) * 5)[:5]
    for _ in range(2):
        r2 = r * r
        g = r * (1 + r2 * (k1 + r2 * (k2 + r2 * k3))) - rd
        dg = 1 + r2 * (3 * k1 + r2 * (5 * k2 + r2 * 7 * k3))
        r = r - g / np.where(np.abs(dg) > 1e-9, dg, 1e-9)
    scale = np.where(rd > 1e-12, r / np.maximum(rd, 1e-12), 1.0)
    return xd * scale, yd * scale


def pinhole_rays(K: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) float32 rays with z = 1 through the pixel centres of the pinhole camera K."""
    return camera_rays(K, size, Lens())


class RayGrid:
    """Culling of primitives for an arbitrary (H, W) grid of camera-frame rays with z = 1.

    The world culls a primitive to the pixel rectangle of its pinhole projection (`screen_rects`). For a
    distorted grid, that projection is taken in a virtual pinhole camera (`K`, `size`) that covers every ray
    of the grid; its rectangle bounds the primitive's (x, y) = ray / z, and `rects` turns it into the grid
    rectangle of the rows and columns whose rays reach that (x, y) range: every ray that can hit the primitive
    lies in it (a superset, as the pinhole rectangle is)."""

    def __init__(self, rays: np.ndarray, K: np.ndarray) -> None:
        rays = np.asarray(rays, dtype=np.float64)
        if rays.ndim != 3 or rays.shape[2] != 3 or not np.all(rays[..., 2] == 1.0):
            raise ValueError(f"camera_rays must be (H, W, 3) with z = 1 (camera frame), got shape {rays.shape}")
        if not np.all(np.isfinite(rays)):
            raise ValueError("camera_rays has non-finite directions")
        x, y = rays[..., 0], rays[..., 1]
        self.col_lo, self.col_hi = x.min(axis=0), x.max(axis=0)  # (W,) range of x in each column
        self.row_lo, self.row_hi = y.min(axis=1), y.max(axis=1)  # (H,) range of y in each row
        fx, fy = float(K[0, 0]), float(K[1, 1])
        x0, y0 = float(x.min()), float(y.min())
        self.size = (int(math.ceil(fx * (float(x.max()) - x0))) + 3, int(math.ceil(fy * (float(y.max()) - y0))) + 3)
        self.K = np.array([[fx, 0.0, 1.0 - fx * x0], [0.0, fy, 1.0 - fy * y0], [0.0, 0.0, 1.0]])
        self.shape = rays.shape[:2]

    def rects(self, virtual_rects: np.ndarray) -> np.ndarray:
        """(B, 4) grid rectangles [row0, row1, col0, col1) from `screen_rects` in (self.K, self.size)."""
        virtual_rects = np.asarray(virtual_rects, dtype=np.int64)
        out = np.zeros_like(virtual_rects)
        live = (virtual_rects[:, 1] > virtual_rects[:, 0]) & (virtual_rects[:, 3] > virtual_rects[:, 2])
        if not live.any():
            return out
        r = virtual_rects[live].astype(np.float64)
        K = self.K
        x_lo, x_hi = (r[:, 2] - K[0, 2]) / K[0, 0], (r[:, 3] - K[0, 2]) / K[0, 0]
        y_lo, y_hi = (r[:, 0] - K[1, 2]) / K[1, 1], (r[:, 1] - K[1, 2]) / K[1, 1]
        cols = (self.col_lo[None] <= x_hi[:, None]) & (self.col_hi[None] >= x_lo[:, None])
        rows = (self.row_lo[None] <= y_hi[:, None]) & (self.row_hi[None] >= y_lo[:, None])
        sub = np.zeros((len(r), 4), np.int64)
        hit = cols.any(axis=1) & rows.any(axis=1)
        h, w = self.shape
        sub[:, 0] = rows.argmax(axis=1)
        sub[:, 1] = h - rows[:, ::-1].argmax(axis=1)
        sub[:, 2] = cols.argmax(axis=1)
        sub[:, 3] = w - cols[:, ::-1].argmax(axis=1)
        sub[~hit] = 0
        out[live] = sub
        return out


def rectify_image(rectifier: Rectifier, camera: str, raw: np.ndarray, K: np.ndarray, lens: Lens) -> np.ndarray:
    """The pinhole image with intrinsics K (world convention) of a raw image taken through `lens`."""
    return rectifier.rectify(camera, raw, index_K(K), lens.model, lens.d)


def rectified_coverage(K: np.ndarray, size: tuple[int, int], lens: Lens) -> float:
    """Fraction of the rectified image's pixels that have a source pixel in the raw image."""
    w, h = size
    return valid_fraction(*rectify_maps(index_K(K), lens.model, lens.d, w, h), w, h)


def random_lens(rng: np.random.Generator, K: np.ndarray, size: tuple[int, int], strength: float = 1.0) -> Lens:
    """A barrel lens for camera K of this size (module docstring): k1 in [-0.15, -0.01] * strength, k2 >= 0
    small enough that the radial factor stays <= 1 inside the image, k1 shrunk until the radial profile rises
    steeply enough (slope >= 0.3) up to the raw image's corners (each raw pixel one ray, no fold).
    Deterministic from the generator's state (two draws)."""
    w, h = size
    corners = np.array([[0.0, 0.0], [w, 0.0], [0.0, h], [w, h]])
    r2_max = float((((corners - K[:2, 2]) / np.diag(K)[:2]) ** 2).sum(axis=1).max())
    k1 = -float(rng.uniform(0.01, 0.15)) * strength
    k2_share = float(rng.uniform(0.0, 0.4))
    for _ in range(30):
        lens = Lens("plumb_bob", (round(k1, 6), round(k2_share * -k1 / r2_max, 6), 0.0, 0.0, 0.0))
        if _unfolded(lens, math.sqrt(r2_max)):
            return lens
        k1 *= 0.8
    return Lens()


def _unfolded(lens: Lens, rd_corner: float) -> bool:
    """The radial profile reaches the raw corners' distorted radius with a slope >= 0.3 all the way."""
    r, rd = _radial_profile(lens, 3.0 * rd_corner, 2001)
    reach = np.nonzero(rd >= rd_corner)[0]
    if not reach.size:
        return False
    slope = np.diff(rd[: reach[0] + 2]) / np.diff(r[: reach[0] + 2])
    return bool(slope.min() >= 0.3)
