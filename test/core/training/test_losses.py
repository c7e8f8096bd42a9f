"""Each training loss on hand-computed values."""

import math
from types import SimpleNamespace

import pytest
import torch

from distillnerf_core.training.losses import (
    DistillNeRFLoss,
    LossConfig,
    dense_depth_loss,
    lidar_depth_loss,
    opacity_loss,
    rgb_l1_loss,
    rgb_ssim_loss,
    weight_entropy_loss,
)


def test_rgb_l1():
    pred = torch.tensor([0.5, 0.2, 1.0, 0.0])
    target = torch.tensor([0.25, 0.2, 0.5, 0.5])
    assert rgb_l1_loss(pred, target).item() == pytest.approx((0.25 + 0 + 0.5 + 0.5) / 4)


def test_rgb_ssim_loss_identical_and_constant():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert rgb_ssim_loss(x, x).item() == pytest.approx(0.0, abs=1e-5)
    # constant images a, b: sigma = 0, so SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.2, 0.6, 0.01**2
    expected = 1 - (2 * a * b + c1) / (a * a + b * b + c1)
    got = rgb_ssim_loss(torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b)).item()
    assert got == pytest.approx(expected, rel=1e-4)


def test_lidar_depth_loss_hand_values():
    # valid pixels: target 8 (pred 16) and target 100 -> clamped to 80 (pred 40); target 0 is ignored
    pred = torch.tensor([16.0, 40.0, 5.0])
    target = torch.tensor([8.0, 100.0, 0.0])
    d = torch.tensor([(16 - 8) / 80, (40 - 80) / 80])
    expected = (d**2).mean() + 0.1 * d.abs().mean()
    assert lidar_depth_loss(pred, target).item() == pytest.approx(expected.item(), rel=1e-6)
    # a prediction beyond 80 m against an 80 m target costs nothing; one below 1e-5 is clamped
    assert lidar_depth_loss(torch.tensor([200.0]), torch.tensor([80.0])).item() == pytest.approx(0.0)
    assert lidar_depth_loss(torch.tensor([-3.0]), torch.tensor([80.0])).item() == pytest.approx(
        (1 - 1e-5 / 80) ** 2 + 0.1 * (1 - 1e-5 / 80), rel=1e-6)


def test_lidar_depth_loss_no_valid_pixel_is_zero_with_grad():
    pred = torch.tensor([3.0, 4.0], requires_grad=True)
    loss = lidar_depth_loss(pred, torch.zeros(2))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros(2))


def test_dense_depth_loss_hand_values():
    # target 10 (< 50 m): both / 50; target 90 (>= 50 m): both / 120; target 200 -> clamp 120, / 120;
    # target 0 (sky) -> 115 m, / 120
    pred = torch.tensor([20.0, 60.0, 130.0, 100.0])
    target = torch.tensor([10.0, 90.0, 200.0, 0.0])
    d = torch.tensor([(20 - 10) / 50, (60 - 90) / 120, (120 - 120) / 120, (100 - 115) / 120])
    expected = (d**2).mean() + 0.1 * d.abs().mean()
    assert dense_depth_loss(pred, target).item() == pytest.approx(expected.item(), rel=1e-6)
    # without a sky depth, 0 pixels are ignored
    d2 = d[:3]
    expected2 = (d2**2).mean() + 0.1 * d2.abs().mean()
    assert dense_depth_loss(pred, target, sky_depth=None).item() == pytest.approx(expected2.item(), rel=1e-6)


def test_weight_entropy_hand_values():
    uniform = torch.full((2, 4), 0.25)
    assert weight_entropy_loss(uniform).item() == pytest.approx(math.log(4), rel=1e-6)
    peaked = torch.tensor([[0.0, 0.7, 0.0, 0.0]])  # one non-zero sample: entropy 0 (weights normalised)
    assert weight_entropy_loss(peaked).item() == pytest.approx(0.0, abs=1e-6)
    half = torch.tensor([[0.3, 0.3, 0.0]])
    assert weight_entropy_loss(half).item() == pytest.approx(math.log(2), rel=1e-6)


def test_opacity_bce_to_one():
    op = torch.tensor([1.0, 0.5, 0.25])
    expected = (-math.log(1 - 1e-5) - math.log(0.5) - math.log(0.25)) / 3
    assert opacity_loss(op).item() == pytest.approx(expected, rel=1e-5)


def test_combined_loss_weights_and_terms():
    b, n, h, w, s = 1, 2, 4, 6, 5
    images = torch.rand(b, n, 3, 2 * h, 2 * w, generator=torch.Generator().manual_seed(1))
    out = SimpleNamespace(
        rgb=images.clone(), depth=torch.full((b, n, h, w), 10.0), coarse_depth=torch.full((b, n, h, w), 20.0),
        opacity=torch.full((b, n, h, w), 0.5), weights=torch.full((b, n, h, w, s), 0.1))
    batch = {"images": images, "lidar_depth": torch.full((b, n, h, w), 10.0)}
    cfg = LossConfig(rgb_ssim=0.0, dense_coarse=0.0, dense_render=0.0)
    total, terms = DistillNeRFLoss(cfg)(out, batch)
    assert set(terms) == {"rgb_l1", "lidar_coarse", "lidar_render", "entropy", "opacity"}
    assert terms["rgb_l1"].item() == 0.0 and terms["lidar_render"].item() == 0.0
    d = 10 / 80
    assert terms["lidar_coarse"].item() == pytest.approx(d * d + 0.1 * d, rel=1e-5)
    expected = 10 * (d * d + 0.1 * d) + 0.01 * math.log(s) + 0.1 * math.log(2)
    assert total.item() == pytest.approx(expected, rel=1e-5)
    batch["dense_depth"] = torch.full((b, n, h, w), 10.0)
    _, terms = DistillNeRFLoss(LossConfig())(out, batch)
    assert {"dense_coarse", "dense_render", "rgb_ssim"} <= set(terms)
    assert terms["dense_render"].item() == 0.0
    assert terms["dense_coarse"].item() == pytest.approx((10 / 50) ** 2 + 0.1 * 10 / 50, rel=1e-5)


def test_lpips_needs_a_local_file():
    pytest.importorskip("torchvision")
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        DistillNeRFLoss(LossConfig(lpips=1.0, lpips_vgg_weights="/nonexistent/vgg16.safetensors"))
    # asked for without a file: an error, never a silent switch-off or a download
    with pytest.raises(ValueError, match="needs loss.lpips_vgg_weights"):
        DistillNeRFLoss(LossConfig(lpips=1.0))
    assert DistillNeRFLoss(LossConfig(lpips=0.0)).lpips is None
