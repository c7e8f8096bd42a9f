"""Ego-body masks (dataset key `masks`, 0 = the car's own body) are left out of every loss and metric."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from distillnerf_core.training.losses import DistillNeRFLoss, LossConfig
from distillnerf_core.training.metrics import depth_metrics, psnr, resize_mask, ssim

B, N, H, W, h, w, S = 1, 2, 32, 48, 16, 24, 8


def _case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = SimpleNamespace(rgb=torch.rand(B, N, 3, H, W, generator=g),
                          depth=1 + 30 * torch.rand(B, N, h, w, generator=g),
                          coarse_depth=1 + 30 * torch.rand(B, N, h, w, generator=g),
                          weights=torch.rand(B, N, h, w, S, generator=g), opacity=torch.rand(B, N, h, w, generator=g),
                          features=torch.rand(B, N, 4, h, w, generator=g))
    masks = torch.ones(B, N, H, W)
    masks[:, :, -8:, :] = 0  # the "hood": bottom 8 image rows = bottom 4 render rows
    batch = {"images": torch.rand(B, N, 3, H, W, generator=g),
             "lidar_depth": 1 + 30 * torch.rand(B, N, h, w, generator=g),
             "dense_depth": 1 + 30 * torch.rand(B, N, h, w, generator=g), "masks": masks,
             "feature_target": torch.rand(B, N, 4, h, w, generator=g)}
    return out, batch


def _changed_under_mask(out, batch):
    out2 = SimpleNamespace(**vars(out))
    b2 = {k: v.clone() for k, v in batch.items()}
    b2["images"][..., -8:, :] = 1 - b2["images"][..., -8:, :]
    b2["lidar_depth"][..., -4:, :] = 70.0
    b2["dense_depth"][..., -4:, :] = 0.0  # would become "sky" without the mask
    out2.rgb = out.rgb.clone()
    out2.rgb[..., -8:, :] = 0.0
    out2.opacity = out.opacity.clone()
    out2.opacity[..., -4:, :] = 1e-4
    out2.weights = out.weights.clone()
    out2.weights[..., -4:, :, :] = 1.0
    out2.features = out.features.clone()
    out2.features[..., -4:, :] = 5.0
    return out2, b2


def test_every_loss_term_ignores_masked_pixels():
    loss = DistillNeRFLoss(LossConfig(feature=1.0))
    out, batch = _case()
    total, terms = loss(out, batch)
    out2, b2 = _changed_under_mask(out, batch)
    total2, terms2 = loss(out2, b2)
    for name in ("rgb_l1", "rgb_ssim", "lidar_coarse", "lidar_render", "dense_coarse", "dense_render", "entropy",
                 "opacity", "feature"):
        assert torch.allclose(terms[name], terms2[name], atol=1e-6), f"{name} depends on masked pixels"
    # without masks the same change does move every term: the test above can fail
    del batch["masks"], b2["masks"]
    _, free = loss(out, batch)
    _, free2 = loss(out2, b2)
    for name in ("rgb_l1", "rgb_ssim", "lidar_render", "dense_render", "entropy", "opacity", "feature"):
        assert not torch.allclose(free[name], free2[name]), f"{name} did not see the change at all"


def test_metrics_ignore_masked_pixels():
    target = torch.rand(N, 3, H, W)
    pred = target.clone()
    pred[..., -8:, :] = 1 - pred[..., -8:, :]
    valid = torch.ones(N, H, W, dtype=torch.bool)
    valid[:, -8:] = False
    assert (psnr(pred, target, valid) >= 99.9).all() and (psnr(pred, target) < 20).all()
    assert torch.allclose(ssim(pred, target, mask=valid), torch.ones(N), atol=1e-4)
    assert (ssim(pred, target) < 0.9).all()
    depth_pred, depth_gt = torch.full((N, h, w), 10.0), torch.full((N, h, w), 10.0)
    depth_pred[:, -4:] = 40.0
    assert depth_metrics(depth_pred, depth_gt, mask=resize_mask(valid, (h, w)))["abs_rel"] == 0.0


def test_resize_mask_keeps_a_cell_only_if_all_its_pixels_are_valid():
    valid = torch.ones(1, 8, 8, dtype=torch.bool)
    valid[0, 5, 2] = False
    small = resize_mask(valid, (4, 4))
    assert small.sum() == 15 and not small[0, 2, 1]
