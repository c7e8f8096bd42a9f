"""Metric functions against hand-computed values."""

import math

import pytest
import torch

from distillnerf_core.training.metrics import MeanAccumulator, depth_metrics, psnr, ssim


def test_psnr_hand_values():
    gt = torch.zeros(3, 4, 4)
    assert psnr(gt + 0.1, gt).item() == pytest.approx(20.0, rel=1e-5)  # MSE 0.01
    assert psnr(gt + 0.5, gt).item() == pytest.approx(-10 * math.log10(0.25), rel=1e-5)
    half = gt.clone()
    half[:, :2] = 1.0  # half the pixels off by 1: MSE 0.5 -> 3.0103 dB
    assert psnr(half, gt).item() == pytest.approx(10 * math.log10(2), rel=1e-5)
    batch = torch.stack([gt + 0.1, gt + 0.01])
    assert psnr(batch, torch.zeros_like(batch)).tolist() == pytest.approx([20.0, 40.0], rel=1e-5)


def test_ssim_hand_values():
    x = torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    a, b = 0.3, 0.7
    c1 = 0.01**2
    got = ssim(torch.full((1, 3, 16, 16), a), torch.full((1, 3, 16, 16), b)).item()
    assert got == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-5)
    # an image against its negative around 0.5 (equal means, anti-correlated) gives a negative SSIM
    assert ssim(x, 1 - x).mean().item() < 0


def test_ssim_hand_computed_single_window():
    # an 11x11 image gives exactly one window: SSIM computed by hand with the gaussian weights
    g1 = torch.exp(-((torch.arange(11.0) - 5) ** 2) / (2 * 1.5**2))
    g1 = g1 / g1.sum()
    w = g1[:, None] * g1[None, :]
    x = torch.rand(1, 1, 11, 11, generator=torch.Generator().manual_seed(1))
    y = (0.5 * x + 0.2).clamp(0, 1)
    mx, my = (w * x[0, 0]).sum(), (w * y[0, 0]).sum()
    sxx = (w * x[0, 0] ** 2).sum() - mx**2
    syy = (w * y[0, 0] ** 2).sum() - my**2
    sxy = (w * x[0, 0] * y[0, 0]).sum() - mx * my
    c1, c2 = 0.01**2, 0.03**2
    expected = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    assert ssim(y, x).item() == pytest.approx(expected.item(), rel=1e-4)


def test_depth_metrics_hand_values():
    gt = torch.tensor([2.0, 4.0, 0.0, 100.0])  # 0 and 100 (> 80 m) are not evaluated
    pred = torch.tensor([1.0, 4.0, 7.0, 5.0])
    m = depth_metrics(pred, gt)
    assert m["abs_rel"] == pytest.approx(0.25)
    assert m["sq_rel"] == pytest.approx(0.25)
    assert m["rmse"] == pytest.approx(math.sqrt(0.5))
    assert m["rmse_log"] == pytest.approx(math.log(2) / math.sqrt(2))
    assert (m["delta1"], m["delta2"], m["delta3"]) == pytest.approx((0.5, 0.5, 0.5))


def test_depth_metrics_clipping_and_deltas():
    # predictions clipped to [1e-3, 80]: pred 160 against gt 80 is exact; pred 0 becomes 1e-3
    m = depth_metrics(torch.tensor([160.0]), torch.tensor([80.0]))
    assert m["abs_rel"] == 0.0 and m["delta1"] == 1.0
    m = depth_metrics(torch.tensor([0.0]), torch.tensor([1.0]))
    assert m["abs_rel"] == pytest.approx(1 - 1e-3)
    # ratio 1.3 fails delta1 but passes delta2 (1.5625); ratio 1.7 passes only delta3 (1.953)
    m = depth_metrics(torch.tensor([13.0, 17.0]), torch.tensor([10.0, 10.0]))
    assert (m["delta1"], m["delta2"], m["delta3"]) == pytest.approx((0.0, 0.5, 1.0))
    assert depth_metrics(torch.ones(3), torch.zeros(3)) is None
    m = depth_metrics(torch.tensor([2.0, 60.0]), torch.tensor([1.0, 60.0]), max_depth=50.0)
    assert m["abs_rel"] == pytest.approx(1.0)  # the 60 m pixel is outside the within-50 m variant


def test_mean_accumulator_skips_missing():
    acc = MeanAccumulator()
    acc.add("a", 1.0)
    acc.add("a", 3.0)
    acc.add("a", None)
    acc.add("a", float("nan"))
    assert acc.mean("a") == 2.0 and acc.mean("b") is None
