"""Sky rays in the per-scene fit: opacity -> 0 on the segmenter's sky, written as sky; the real segmenter's mask."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from distillnerf_core.model.cameras import pixel_rays
from distillnerf_core.scene_fit.field import FieldConfig
from distillnerf_core.scene_fit.fit import FitConfig, SceneData, evaluate_field, fit_field, render_views

REPO = Path(__file__).resolve().parents[3]
WALL, TOP = 8.0, 3.0  # a wall 8 m ahead whose top edge is 3 m up; above it, the sky
H, W = 24, 32
SKY_RGB = torch.tensor([0.45, 0.65, 0.95])


def _sky_scene() -> SceneData:
    """Frames 0..2, one camera each 1.5 m up looking along +x: the wall below TOP (textured, sparse LiDAR), a
    uniform sky above it (no LiDAR); `sky` is the exact sky mask."""
    f = 0.5 * W / math.tan(math.radians(35))
    K = torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]])
    poses, images, lidar, skies = [], [], [], []
    for y in (-0.5, 0.0, 0.5):
        pose = torch.eye(4)
        pose[:3, 0] = torch.tensor([0.0, -1.0, 0.0])
        pose[:3, 1] = torch.tensor([0.0, 0.0, -1.0])
        pose[:3, 2] = torch.tensor([1.0, 0.0, 0.0])
        pose[:3, 3] = torch.tensor([0.0, y, 1.5])
        poses.append(pose)
        rays = pixel_rays(K[None, None], pose[None, None], (H, W))
        t = (WALL - rays.origins[..., 0]) / rays.directions[..., 0]
        hit = (rays.origins + rays.directions * t[..., None])[0, 0]
        sky = hit[..., 2] > TOP
        tex = torch.stack([0.5 + 0.4 * torch.sin(hit[..., 1]), 0.5 + 0.4 * torch.cos(0.8 * hit[..., 2]),
                           0.3 + 0.2 * torch.sin(0.5 * (hit[..., 1] + hit[..., 2]))], dim=-1)
        images.append(torch.where(sky[..., None], SKY_RGB.expand(H, W, 3), tex).permute(2, 0, 1))
        keep = torch.zeros(H, W, dtype=torch.bool)
        keep[::3, ::3] = True
        lidar.append(torch.where(keep & ~sky, torch.full((H, W), WALL), torch.zeros(H, W)))
        skies.append(sky)
    return SceneData(images=torch.stack(images)[:, None], valid=torch.ones(3, 1, H, W, dtype=torch.bool),
                     lidar=torch.stack(lidar)[:, None], intrinsics=K.expand(3, 1, 3, 3).clone(),
                     cam2local=torch.stack(poses)[:, None], sd_tokens=[["a"], ["b"], ["c"]], dense=None,
                     sky=torch.stack(skies)[:, None])


def _cfg(sky_weight: float) -> FitConfig:
    return FitConfig(field=FieldConfig(resolutions=[16, 32], features=4, hidden=16, coarse_samples=24,
                                       fine_samples=8, radius_xy=12.0, radius_z=6.0),
                     steps=200, rays=128, lr=0.03, render_hw=[H, W], lidar_holdout=0.2, seed=0,
                     sky_weight=sky_weight)


def _held_out(sky_weight: float, with_mask: bool = True) -> tuple[dict, dict, torch.Tensor]:
    data = _sky_scene()
    sky = data.sky[1, 0]
    if not with_mask:
        data.sky = None
    torch.manual_seed(0)
    field, info = fit_field(_cfg(sky_weight), data, train_frames=[0, 2], progress=False)
    views = [render_views(field, data.intrinsics[f], data.cam2local[f], torch.tensor([f]), (H, W), (H, W))
             for f in range(3)]
    data.sky = _sky_scene().sky  # scored against the exact sky either way
    quality = evaluate_field(field, data, [0, 2], info["held_lidar"], views)
    return views[1], quality, sky


@pytest.mark.slow
def test_sky_rays_go_to_the_sky_model_and_the_wall_stays():
    held, quality, sky = _held_out(0.1)
    depth = held["depth"][0]
    assert float((depth[sky] <= 0).float().mean()) > 0.9, "the held-out frame's sky is not rendered as sky"
    wall = ~sky
    assert float((depth[wall] > 0).float().mean()) > 0.95
    assert float(((depth[wall] - WALL).abs() / WALL).median()) < 0.1
    assert quality["held_out_frames_sky_rendered_as_sky"] > 0.9
    assert quality["frames"][1]["sky_share"] == pytest.approx(float(sky.float().mean()))
    # the same fit without a sky mask puts the sky somewhere in front (what the DDAD field did): the test can fail
    _, plain, _ = _held_out(0.1, with_mask=False)
    assert plain["held_out_frames_sky_rendered_as_sky"] < 0.5


def _nuscenes_root(tmp_path: Path) -> tuple[Path, str]:
    from distillnerf_core.data.nuscenes_sample import build_dataroot, find_version

    src = REPO / "data" / "nuscenes_sample"
    version = find_version(src)
    return build_dataroot(src, tmp_path / "nusc", link=True, version=version), version


def test_fit_scene_takes_the_sky_from_the_segmenter_on_a_real_frame(tmp_path):
    from distillnerf_core.data.nerf_targets import entry_path
    from distillnerf_core.scene_fit.fit import fit_dataroot

    root, version = _nuscenes_root(tmp_path)
    cfg = FitConfig(field=FieldConfig(resolutions=[8, 16], features=4, hidden=8, coarse_samples=8, fine_samples=4),
                    image_hw=[96, 160], render_hw=[24, 40], steps=3, rays=64, holdout_every=0, sky_mask="segmenter")
    out = tmp_path / "targets"
    manifest = fit_dataroot(root, version, out, cfg, cameras=["CAM_FRONT"], progress=False)
    (record,) = manifest["scenes"].values()
    assert record["sky_mask"].startswith("segmenter on the images")
    frame = record["quality"]["frames"][0]
    assert 0.1 < frame["sky_share"] < 0.4, frame  # sky: most of the top third, none of the bottom
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes(version=version, dataroot=str(root), verbose=False)
    token = nusc.get("sample", record["samples"][0])["data"]["CAM_FRONT"]
    with np.load(entry_path(out, "CAM_FRONT", token)) as z:
        depth = z["depth"]
    assert (depth[:8] == 0).mean() > 0.4  # the top third is written as sky whatever the 3-step field renders
    assert (depth[16:] > 0).mean() > 0.9


def test_fit_scene_cli_names_a_missing_sky_cache(tmp_path, capsys):
    from distillnerf_core.cli import fit_scene as fit_cli

    root, version = _nuscenes_root(tmp_path)
    code = fit_cli.main(["--dataroot", str(root), "--version", version, "--sky", "my_segmenter", "--steps", "1",
                         "--quiet", "--out", str(tmp_path / "t")])
    assert code == 2
    assert "features/my_segmenter/manifest.json" in capsys.readouterr().err
