"""A model grading itself at run time, the maths of distillnerf-eval applied to one predicted frame.

A self-supervised model is trained to reproduce its input cameras, so how well it reproduces them says
whether the frame lies in its domain: `recon_psnr` is the reconstruction PSNR of the rendered RGB against the
input resized to the render size (the predictor's own resize, `metrics.psnr`: the protocol's `psnr`). With
a LiDAR sweep, `lidar_depth_grades` projects the points into each camera (`datasets.project_points` at the
image's resolution, kept for camera z-depth in the protocol's [1, 80) m, min-pooled into the render grid with
`datasets.min_pool_depth`) and scores the rendered depth with `metrics.depth_metrics`, exactly as
distillnerf-eval builds and scores `lidar_depth`: all cameras pooled for the frame's value (eval's per-sample
number), and per camera.

ROS-free: a runtime passes arrays (images, K, camera <- LiDAR transforms).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from distillnerf_core.data.datasets import DataConfig, min_pool_depth, project_points
from distillnerf_core.training.metrics import depth_metrics, psnr

MAX_PSNR_DB = 100.0  # metrics.psnr floors the MSE at 1e-10: an exact reconstruction reads 100 dB
LIDAR_DEPTH_RANGE = tuple(DataConfig().depth_range)  # the dataset's LiDAR target range, [1, 80) m


@dataclass
class DepthGrade:
    """Rendered depth against LiDAR for one frame: the frame's metrics (all cameras' pixels pooled, as
    distillnerf-eval's per-sample value) and each camera's (None where no LiDAR point fell in it)."""

    frame: dict[str, float] | None
    cameras: list[dict[str, float] | None] = field(default_factory=list)
    points_per_camera: list[int] = field(default_factory=list)  # LiDAR cells (render pixels) with a return


def recon_psnr(rendered: np.ndarray, inputs: torch.Tensor) -> np.ndarray:
    """(N,) PSNR in dB of rendered RGB (N, h, w, 3) uint8 against the inputs (N, 3, h, w) float in [0, 1] at the
    same size; at most MAX_PSNR_DB (an exact reconstruction)."""
    if rendered.ndim != 4 or rendered.shape[-1] != 3:
        raise ValueError(f"rendered RGB must be (N, h, w, 3), got {rendered.shape}")
    pred = torch.from_numpy(np.ascontiguousarray(rendered)).permute(0, 3, 1, 2).float() / 255.0
    if tuple(pred.shape) != tuple(inputs.shape):
        raise ValueError(f"rendered {tuple(pred.shape)} and input {tuple(inputs.shape)} differ in size")
    return psnr(pred, inputs.detach().float().cpu()).clamp(max=MAX_PSNR_DB).numpy().astype(np.float64)


def predictor_recon_psnr(predictor, images: Sequence[np.ndarray], rendered: np.ndarray) -> np.ndarray:
    """recon_psnr of a ScenePredictor's rendered RGB against its input images (HxWx3 uint8, any size), each
    resized to the render size by the predictor's own resize (what the model saw)."""
    hw = tuple(rendered.shape[1:3])
    inputs = torch.stack([predictor._resize(image, hw) for image in images])  # the resize predict applies
    return recon_psnr(rendered, inputs)


def lidar_depth_targets(points: np.ndarray, camera_from_lidar: Sequence[np.ndarray], intrinsics: Sequence[np.ndarray],
                        image_wh: Sequence[tuple[int, int]], render_hw: tuple[int, int],
                        depth_range: tuple[float, float] = LIDAR_DEPTH_RANGE) -> torch.Tensor:
    """(N, h, w) float32 LiDAR camera z-depth at the render size, 0 = no return: points (P, 3) in the LiDAR
    frame moved into each camera, projected with that camera's K at its image size (w, h), kept for z in
    [min, max) and inside the image, min-pooled into the render grid (the dataset's lidar_depth)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    grids = []
    for transform, K, wh in zip(camera_from_lidar, intrinsics, image_wh, strict=True):
        transform = np.asarray(transform, dtype=np.float64)
        in_camera = points @ transform[:3, :3].T + transform[:3, 3]
        u, v, z = project_points(in_camera, np.asarray(K, dtype=np.float64), int(wh[0]), int(wh[1]), *depth_range)
        grids.append(min_pool_depth(u, v, z, (int(wh[0]), int(wh[1])), tuple(render_hw)))
    return torch.stack(grids) if grids else torch.zeros(0, *render_hw)


def lidar_depth_grades(depth: np.ndarray, targets: torch.Tensor) -> DepthGrade:
    """Rendered camera z-depth (N, h, w) against LiDAR targets (N, h, w) (0 = none): depth_metrics with the
    protocol's ground-truth range (1e-3, 80] m, predictions clipped to it."""
    pred = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))
    if tuple(pred.shape) != tuple(targets.shape):
        raise ValueError(f"depth {tuple(pred.shape)} and LiDAR targets {tuple(targets.shape)} differ in size")
    pred = torch.nan_to_num(pred, nan=0.0)  # depth_metrics clips predictions into the range
    return DepthGrade(frame=depth_metrics(pred, targets),
                      cameras=[depth_metrics(pred[i], targets[i]) for i in range(pred.shape[0])],
                      points_per_camera=[int((targets[i] > 0).sum()) for i in range(pred.shape[0])])


def median(values: Sequence[float]) -> float | None:
    """Median of the finite values, None when there are none."""
    finite = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.median(finite)) if finite else None
