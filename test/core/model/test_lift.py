"""Two-stage LSS: depth bins, ray marching, z-depth outputs, lifted points."""

import pytest
import torch

from distillnerf_core.model.cameras import ring_rig
from distillnerf_core.model.distillnerf import ModelConfig
from distillnerf_core.model.lift import LiftSplat, depth_bin_edges, expected_depth, march


def test_paper_bins():
    cfg = ModelConfig.load("paper").lift
    edges = depth_bin_edges(cfg)
    assert edges.numel() - 1 == 286, f"paper D must be 286, got {edges.numel() - 1}"
    assert torch.isclose(edges[0], torch.tensor(0.1)) and torch.isclose(edges[-1], torch.tensor(120.0))
    widths = edges[1:] - edges[:-1]
    assert (widths > 0).all(), "bin edges must increase"
    assert torch.allclose(widths[:249], torch.full((249,), 0.2), atol=1e-4), "0.2 m bins up to 50 m"
    assert (widths[250:] >= widths[249:-1] - 1e-5).all(), "contracted bins must widen with distance"


def test_march_constant_density():
    density = torch.full((10,), 0.3)
    deltas = torch.full((10,), 0.5)
    w = march(density, deltas)
    assert torch.isclose(w.sum(), 1 - torch.exp(torch.tensor(-1.5))), "weights must sum to 1 - T_final"
    assert torch.isclose(
        expected_depth(torch.tensor([0.0, 1.0, 0.0]), torch.tensor([1.0, 2.0, 3.0])), torch.tensor(2.0)
    )


def _lift(two_stage=True):
    cfg = ModelConfig.load("tiny").lift
    cfg.two_stage = two_stage
    torch.manual_seed(0)
    return LiftSplat(cfg, in_channels=16), cfg


def test_depth_outputs_are_z_depth():
    lift, cfg = _lift()
    target_bin = 5
    last = lift.coarse[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-30.0)
        last.bias[target_bin] = 30.0
    rig = ring_rig(2, (16, 32), batch_size=1, hfov_deg=90.0)
    rays = rig.rays()
    out = lift(torch.rand(2, 16, 16, 32), rays)
    centre = lift.bin_centers[target_bin]
    want = centre * rays.z_per_distance
    assert torch.allclose(out.coarse_depth, want, rtol=1e-3), (
        f"coarse depth must be camera z-depth = distance {centre:.2f} x z_per_distance"
    )
    corner_ratio = out.coarse_depth[0, 0, 0, 0] / centre
    assert corner_ratio < 0.8, f"wide-angle corner pixel z/distance ratio {corner_ratio:.3f} should be < 0.8"
    spacing = min(max(cfg.fine_spacing_ratio * float(centre), cfg.fine_spacing_min), cfg.fine_spacing_max)
    half = spacing * (cfg.fine_candidates - 1) / 2
    dist = out.fine_depth / rays.z_per_distance
    assert ((dist >= centre - half - 1e-3) & (dist <= centre + half + 1e-3)).all(), (
        "fine depth must lie within the candidate span around the coarse depth"
    )


def test_points_lie_on_rays():
    lift, cfg = _lift()
    rig = ring_rig(3, (16, 32), batch_size=2)
    rays = rig.rays()
    out = lift(torch.rand(6, 16, 16, 32), rays)
    k = cfg.fine_candidates
    assert out.points.shape == (2, 3 * k * 16 * 32, 3), f"points {tuple(out.points.shape)}"
    assert out.values.shape == (2, 3 * k * 16 * 32, cfg.feature_dim + 1)
    pts = out.points.view(2, 3, k, 16, 32, 3)
    rel = pts - rays.origins[:, :, None]
    cross = torch.linalg.cross(rel, rays.directions[:, :, None].expand_as(rel))
    assert cross.norm(dim=-1).max() < 1e-3, "lifted points must lie on their pixel rays"
    assert out.fine_weights.shape == (2, 3, k, 16, 32)
    assert out.coarse_weights.shape == (2, 3, lift.num_bins, 16, 32)
    assert (out.values[..., -1].abs() <= cfg.logit_clamp).all(), "logits must be soft-clamped"


@pytest.mark.parametrize("two_stage", [True, False])
def test_gradients_reach_lift(two_stage):
    lift, cfg = _lift(two_stage)
    rig = ring_rig(1, (8, 16))
    out = lift(torch.rand(1, 16, 8, 16), rig.rays())
    (out.values.sum() + out.coarse_depth.sum() + out.fine_depth.sum()).backward()
    for name, p in lift.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached lift parameter {name}"
    if not two_stage:
        assert out.fine_weights is None and out.points.shape[1] == lift.num_bins * 8 * 16
