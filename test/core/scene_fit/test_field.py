"""The per-scene field on a toy scene: two cameras facing a textured wall 8 m away, LiDAR on the wall."""

from __future__ import annotations

import math

import pytest
import torch

from distillnerf_core.model.cameras import pixel_rays
from distillnerf_core.scene_fit.field import FieldConfig
from distillnerf_core.scene_fit.fit import FitConfig, SceneData, evaluate_field, fit_field, render_views

WALL = 8.0
H, W = 24, 32


def _toy_scene() -> SceneData:
    """Frames 0..2, one camera each, all looking along +x at the wall x = WALL (z-depth = WALL - x_cam)."""
    f = 0.5 * W / math.tan(math.radians(35))
    K = torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
    poses, images, lidar = [], [], []
    for y in (-0.5, 0.0, 0.5):
        pose = torch.eye(4)
        pose[:3, 0] = torch.tensor([0.0, -1.0, 0.0])  # optical x = right = -y
        pose[:3, 1] = torch.tensor([0.0, 0.0, -1.0])  # optical y = down
        pose[:3, 2] = torch.tensor([1.0, 0.0, 0.0])  # optical z = forward = +x
        pose[:3, 3] = torch.tensor([0.0, y, 1.5])
        poses.append(pose)
        rays = pixel_rays(K[None, None], pose[None, None], (H, W))
        t = (WALL - rays.origins[..., 0]) / rays.directions[..., 0]
        hit = rays.origins + rays.directions * t[..., None]  # (1, 1, H, W, 3) on the wall
        # a texture fixed on the wall (stripes in y and z), so the cameras agree where the wall is
        tex = torch.stack([0.5 + 0.4 * torch.sin(hit[..., 1]), 0.5 + 0.4 * torch.cos(0.8 * hit[..., 2]),
                           0.5 + 0.2 * torch.sin(0.5 * (hit[..., 1] + hit[..., 2]))], dim=-1)
        images.append(tex[0, 0].permute(2, 0, 1))
        z = torch.full((H, W), WALL)
        keep = torch.zeros(H, W, dtype=torch.bool)
        keep[::3, ::3] = True  # sparse LiDAR
        lidar.append(torch.where(keep, z, torch.zeros_like(z)))
    return SceneData(images=torch.stack(images)[:, None], valid=torch.ones(3, 1, H, W, dtype=torch.bool),
                     lidar=torch.stack(lidar)[:, None], intrinsics=K.expand(3, 1, 3, 3).clone(),
                     cam2local=torch.stack(poses)[:, None], sd_tokens=[["a"], ["b"], ["c"]], dense=None)


def _cfg(steps: int) -> FitConfig:
    return FitConfig(field=FieldConfig(resolutions=[16, 32], features=4, hidden=16, coarse_samples=24,
                                       fine_samples=8, radius_xy=12.0, radius_z=6.0),
                     steps=steps, rays=128, lr=0.03, render_hw=[12, 16], lidar_holdout=0.2, seed=0)


@pytest.mark.slow
def test_field_renders_the_wall_depth_and_the_held_out_frame():
    data = _toy_scene()
    cfg = _cfg(300)
    torch.manual_seed(0)
    field, info = fit_field(cfg, data, train_frames=[0, 2], progress=False)
    held = render_views(field, data.intrinsics[1], data.cam2local[1], torch.tensor([1]), (H, W), (12, 16))
    rel = ((held["depth"] - WALL).abs() / WALL)
    assert float(rel.median()) < 0.05, f"held-out frame depth off by {float(rel.median()):.3f}"
    quality = evaluate_field(field, data, [0, 2], info["held_lidar"], [
        render_views(field, data.intrinsics[f], data.cam2local[f], torch.tensor([f]), (H, W), (12, 16))
        for f in range(3)])
    assert quality["held_out_lidar_pixels"] > 0
    assert quality["held_out_lidar_abs_rel"] < 0.05
    assert quality["frames"][1]["role"] == "held out"
    assert quality["held_out_frames_psnr"] > 20, quality["held_out_frames_psnr"]


def test_untrained_field_is_not_at_the_wall():
    """The tolerance above means something: before fitting, the rendered depth is far from 8 m."""
    data = _toy_scene()
    field, _ = fit_field(_cfg(0), data, train_frames=[0, 2], progress=False)
    v = render_views(field, data.intrinsics[1], data.cam2local[1], torch.tensor([1]), (H, W), (12, 16))
    depth = torch.where(v["depth"] > 0, v["depth"], torch.full_like(v["depth"], 1e3))
    assert float(((depth - WALL).abs() / WALL).median()) > 0.3
