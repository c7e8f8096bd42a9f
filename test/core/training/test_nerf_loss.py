"""Loss wiring of the per-scene field's targets: dense depth (reference normalisation) and virtual cameras."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from distillnerf_core.model.distillnerf import DistillNeRFModel, ModelConfig
from distillnerf_core.training.losses import DistillNeRFLoss, LossConfig, dense_depth_loss
from distillnerf_core.training.trainer import TrainStep

B, N, V, H, W, h, w = 1, 3, 3, 16, 32, 8, 16


def _out(g):
    return SimpleNamespace(rgb=torch.rand(B, N, 3, H, W, generator=g),
                           depth=1 + 30 * torch.rand(B, N, h, w, generator=g),
                           coarse_depth=1 + 30 * torch.rand(B, N, h, w, generator=g),
                           weights=torch.rand(B, N, h, w, 5, generator=g), opacity=torch.rand(B, N, h, w, generator=g),
                           features=None)


def _batch(g):
    nerf = 1 + 60 * torch.rand(B, N, h, w, generator=g)
    nerf[..., 0, :] = 0  # sky
    return {"images": torch.rand(B, N, 3, H, W, generator=g), "nerf_depth": nerf,
            "virtual_images": torch.rand(B, N, V, 3, H, W, generator=g),
            "virtual_depth": 1 + 60 * torch.rand(B, N, V, h, w, generator=g)}


def test_field_depth_term_is_the_reference_dense_loss():
    g = torch.Generator().manual_seed(0)
    out, batch = _out(g), _batch(g)
    _, terms = DistillNeRFLoss(LossConfig())(out, batch)
    torch.testing.assert_close(terms["nerf_render"], dense_depth_loss(out.depth, batch["nerf_depth"]))
    torch.testing.assert_close(terms["nerf_coarse"], dense_depth_loss(out.coarse_depth, batch["nerf_depth"]))
    _, off = DistillNeRFLoss(LossConfig(nerf_coarse=0.0, nerf_render=0.0))(out, batch)
    assert "nerf_render" not in off and "nerf_coarse" not in off


def test_virtual_terms_see_only_the_selected_cameras_and_their_chosen_view():
    g = torch.Generator().manual_seed(1)
    out, batch = _out(g), _batch(g)
    virtual = {"rgb": torch.rand(B, N, 3, H, W, generator=g), "depth": 1 + 60 * torch.rand(B, N, h, w, generator=g),
               "choice": torch.tensor([[2, 0, 1]]), "selected": torch.tensor([[True, False, True]])}
    loss = DistillNeRFLoss(LossConfig())
    _, terms = loss(out, batch, None, virtual)
    expect = (virtual["rgb"][0, [0, 2]] - batch["virtual_images"][0, [0, 2], [2, 1]]).abs().mean()
    torch.testing.assert_close(terms["virtual_rgb"], expect)
    b2 = {**batch, "virtual_images": batch["virtual_images"].clone()}
    b2["virtual_images"][0, 1] = 0.0  # camera 1 is not selected
    b2["virtual_images"][0, 0, 0] = 0.0  # camera 0 chose view 2, not view 0
    _, t2 = loss(out, b2, None, virtual)
    torch.testing.assert_close(t2["virtual_rgb"], terms["virtual_rgb"])
    b2["virtual_images"][0, 2, 1] = 0.0  # the chosen view of a selected camera: the term moves
    _, t3 = loss(out, b2, None, virtual)
    assert not torch.allclose(t3["virtual_rgb"], terms["virtual_rgb"])


def test_train_step_renders_virtual_cameras_with_probability_p():
    torch.manual_seed(0)
    model = DistillNeRFModel(ModelConfig.load("tiny"))
    hw = tuple(model.config.image_hw)
    from distillnerf_core.data.nerf_targets import virtual_cam2ego
    from distillnerf_core.model.cameras import ring_rig

    rig = ring_rig(N, hw)
    batch = {"images": torch.rand(1, N, 3, *hw), "intrinsics": rig.intrinsics, "cam2ego": rig.cam2ego,
             "virtual_cam2ego": virtual_cam2ego(rig.cam2ego, torch.eye(3)),
             "virtual_images": torch.rand(1, N, V, 3, *hw)}
    step = TrainStep(model, DistillNeRFLoss(LossConfig(virtual_prob=1.0)))
    scene = model.encode(batch["images"], batch["intrinsics"], batch["cam2ego"])
    v = step.virtual_views(scene, batch, hw)
    assert bool(v["selected"].all()) and v["rgb"].shape == (1, N, 3, *hw)
    assert v["depth"].shape[:2] == (1, N) and v["choice"].max() < V
    assert TrainStep(model, DistillNeRFLoss(LossConfig(virtual_prob=0.0))).virtual_views(scene, batch, hw) is None
    no_targets = {k: val for k, val in batch.items() if k != "virtual_cam2ego"}
    assert step.virtual_views(scene, no_targets, hw) is None
