"""data.neighbour_targets: a neighbouring keyframe's cameras as targets rendered from the current frame's encoding
(poses through the ego poses), with RGB, LiDAR and sky losses; ego-body masks respected."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import REPO
from nuscenes.nuscenes import NuScenes

from distillnerf_core.data.datasets import DataConfig, NuScenesDataset, collate_samples, make_dataset
from distillnerf_core.data.dgp import VERSION, write_dataroot
from distillnerf_core.model.distillnerf import DistillNeRFModel, ModelConfig
from distillnerf_core.training.losses import DistillNeRFLoss, LossConfig, dense_depth_loss, lidar_depth_loss
from distillnerf_core.training.trainer import TrainStep

HW, RENDER = (32, 64), (16, 32)
CAMERAS = ["CAMERA_01", "CAMERA_05"]  # DDAD's front and front-left: two cameras keep the loads cheap


def _close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """torch.allclose with the largest difference in the message (torch.testing's first call imports for seconds)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, atol=atol, rtol=rtol), float((actual - expected).abs().max())




@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The three real DDAD frames (0.1 s apart, ~1.3 m of motion each) as a dataroot (no masks: cheaper)."""
    return write_dataroot(REPO / "data" / "ddad_scene02", tmp_path_factory.mktemp("ddad_neighbours") / "root",
                          masks=False)


@pytest.fixture(scope="module")
def nusc(root):
    return NuScenes(version=VERSION, dataroot=str(root), verbose=False)


def _ds(root, nusc, mode: str, load_next: bool = False) -> NuScenesDataset:
    return NuScenesDataset(root, VERSION, image_size=HW, render_size=RENDER, load_next=load_next,
                           neighbour_targets=mode, sky_mask="none", nusc=nusc, cameras=CAMERAS, jpeg_draft=True)


def test_neighbour_is_the_adjacent_keyframe_posed_in_this_frame(root, nusc):
    nxt, prev, plain = _ds(root, nusc, "next", load_next=True), _ds(root, nusc, "prev"), _ds(root, nusc, "none")
    first, second, last = nxt[0], plain[1], nxt[2]
    assert first["has_neighbour"] and not last["has_neighbour"] and "neighbour_images" not in second
    # the next keyframe's own images and own sweep, 0.1 s later
    _close(first["neighbour_images"], second["images"])
    _close(first["neighbour_lidar_depth"], second["lidar_depth"])
    assert float(first["neighbour_offset"]) == pytest.approx(0.1, abs=0.005)
    # poses: ref(t) <- global <- ref(t+1) <- cam, against load_next's direct ref(t) <- global <- ego(t_cam) <- cam
    _close(first["neighbour_cam2ego"], first["next_cam2ego"], atol=1e-5, rtol=0)
    _close(first["neighbour_intrinsics"], first["next_intrinsics"])
    # the car moved about 1.26 m between the frames (the README's LiDAR poses): the poses are not this frame's
    shift = (first["neighbour_cam2ego"][:, :3, 3] - first["cam2ego"][:, :3, 3]).norm(dim=-1)
    assert bool((shift > 1.2).all()) and bool((shift < 1.35).all()), shift
    # a scene's last keyframe has no next: its own cameras (finite), zero targets, skipped by the loss
    _close(last["neighbour_cam2ego"], last["cam2ego"])
    assert float(last["neighbour_lidar_depth"].abs().sum()) == 0.0
    back = prev[2]
    assert back["has_neighbour"] and float(back["neighbour_offset"]) == pytest.approx(-0.1, abs=0.005)
    _close(back["neighbour_images"], second["images"])
    # the neighbour's cameras, moved back into its own frame, are its cameras there
    to_own = torch.as_tensor(np.linalg.inv(second["ref_ego2global"].numpy()) @ back["ref_ego2global"].numpy(),
                             dtype=torch.float32)
    _close(to_own @ back["neighbour_cam2ego"], second["cam2ego"], atol=1e-5, rtol=0)
    both = _ds(root, nusc, "both")
    torch.manual_seed(0)  # its first two draws differ
    signs = {float(both[1]["neighbour_offset"]) > 0 for _ in range(2)}
    assert signs == {False, True}, signs  # the middle keyframe draws either neighbour
    with pytest.raises(ValueError, match="neighbour_targets"):
        _ds(root, nusc, "sideways")
    data = make_dataset(str(root), VERSION, HW, DataConfig(neighbour_targets="next", sky_mask="none",
                                                           cameras=CAMERAS), RENDER)
    assert data.neighbour_links == ("next",)


B, N, H, W, h, w = 2, 2, 16, 32, 8, 16


def _case(g):
    out = SimpleNamespace(rgb=torch.rand(B, N, 3, H, W, generator=g),
                          depth=1 + 30 * torch.rand(B, N, h, w, generator=g),
                          coarse_depth=None, weights=torch.rand(B, N, h, w, 5, generator=g),
                          opacity=torch.rand(B, N, h, w, generator=g), features=None)
    lidar = torch.zeros(B, N, h, w)
    lidar[..., 4:, ::2] = 12.0
    sky = torch.zeros(B, N, h, w, dtype=torch.bool)
    sky[..., :2, :] = True
    masks = torch.ones(B, N, H, W)
    masks[:, 1, H // 2:] = 0.0  # camera 1's lower half is the ego body
    batch = {"images": torch.rand(B, N, 3, H, W, generator=g), "masks": masks,
             "has_neighbour": torch.tensor([True, False]),
             "neighbour_images": torch.rand(B, N, 3, H, W, generator=g), "neighbour_lidar_depth": lidar,
             "neighbour_sky_mask": sky}
    neighbour = {"rgb": torch.rand(B, N, 3, H, W, generator=g), "depth": 1 + 30 * torch.rand(B, N, h, w, generator=g)}
    return out, batch, neighbour


def test_neighbour_terms_skip_missing_neighbours_and_the_ego_body():
    g = torch.Generator().manual_seed(0)
    out, batch, nb = _case(g)
    loss = DistillNeRFLoss(LossConfig())
    _, terms = loss(out, batch, neighbour=nb)
    valid = batch["masks"][0] > 0.5
    expect = ((nb["rgb"][0] - batch["neighbour_images"][0]).abs() * valid.unsqueeze(1)).sum() / (3 * valid.sum())
    _close(terms["neighbour_rgb_l1"], expect)
    lidar = batch["neighbour_lidar_depth"][0].clone()
    lidar[1, h // 2:] = 0.0  # the body's rays have no LiDAR target
    _close(terms["neighbour_lidar"], lidar_depth_loss(nb["depth"][0], lidar))
    sky_target = torch.full((N, h, w), float("nan"))
    sky_target[:, :2] = 115.0
    share = (2 * w * N) / (N * h * w - h // 2 * w)  # sky rays over the valid rays
    _close(terms["neighbour_sky"], share * dense_depth_loss(nb["depth"][0], sky_target))
    # garbage in the sample without a neighbour and under the ego body changes nothing
    b2 = {**batch, "neighbour_images": batch["neighbour_images"].clone(),
          "neighbour_lidar_depth": batch["neighbour_lidar_depth"].clone()}
    b2["neighbour_images"][1] = 5.0
    b2["neighbour_images"][0, 1, :, H // 2:] = 5.0
    b2["neighbour_lidar_depth"][1] = 70.0
    b2["neighbour_lidar_depth"][0, 1, h // 2:] = 70.0
    _, t2 = loss(out, b2, neighbour=nb)
    for k in ("neighbour_rgb_l1", "neighbour_rgb_ssim", "neighbour_lidar", "neighbour_sky"):
        _close(t2[k], terms[k])
    # a render equal to the neighbour's images, its LiDAR and the sky depth leaves nothing to learn
    perfect = {"rgb": batch["neighbour_images"].clone(), "depth": torch.where(
        batch["neighbour_sky_mask"], torch.full((B, N, h, w), 115.0), batch["neighbour_lidar_depth"])}
    _, t3 = loss(out, batch, neighbour=perfect)
    for k in ("neighbour_rgb_l1", "neighbour_lidar", "neighbour_sky"):
        assert float(t3[k]) == pytest.approx(0.0, abs=1e-6), k
    # no neighbour in the batch, or the terms weighted 0: no terms
    _, t4 = loss(out, {**batch, "has_neighbour": torch.tensor([False, False])}, neighbour=nb)
    assert not any(k.startswith("neighbour") for k in t4)
    _, t5 = DistillNeRFLoss(LossConfig(neighbour_sky=0.0))(out, batch, neighbour=nb)
    assert "neighbour_sky" not in t5 and "neighbour_rgb_l1" in t5


def test_train_step_renders_the_neighbour_and_its_gradient_reaches_the_encoder(root, nusc):
    torch.manual_seed(0)
    model = DistillNeRFModel(ModelConfig.load("tiny"))
    hw = tuple(model.config.image_hw)
    ds = NuScenesDataset(root, VERSION, image_size=hw, render_size=model.renderer.render_hw(hw), load_next=False,
                         neighbour_targets="next", sky_mask="none", nusc=nusc, cameras=CAMERAS, jpeg_draft=True)
    batch = collate_samples([ds[0], ds[2]])  # one with a neighbour, one (the last keyframe) without
    step = TrainStep(model, DistillNeRFLoss(LossConfig(rgb_l1=0.0, rgb_ssim=0.0, lidar_coarse=0.0, lidar_render=0.0,
                                                       dense_coarse=0.0, dense_render=0.0, entropy=0.0,
                                                       opacity=0.0)))
    total, terms, _ = step(batch)
    assert set(terms) == {"neighbour_rgb_l1", "neighbour_rgb_ssim", "neighbour_lidar"}, terms
    total.backward()
    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    off = TrainStep(model, DistillNeRFLoss(LossConfig(neighbour_rgb_l1=0.0, neighbour_rgb_ssim=0.0,
                                                      neighbour_lidar=0.0, neighbour_sky=0.0)))
    scene = model.encode(batch["images"], batch["intrinsics"], batch["cam2ego"])
    assert off.neighbour_views(scene, batch, hw) is None
