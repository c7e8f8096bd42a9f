"""Which voxel lookup renders a smooth known field more accurately: nearest (the reference) or trilinear?

Two measurements on hand-built fields whose ground truth is analytic:
1. feature field: f(p) = sin(x / 2) + cos(y / 3) + z stored at fine-voxel centres, queried at random
   points; RMSE against f(p).
2. a tilted soft wall (density ramping over ~1 m across the plane n.p = 20 m), rendered with the same
   samples as the analytic field; mean absolute depth error against the analytic rendering.

Run: .venv/bin/python benchmarks/lookup_accuracy.py [--json benchmarks/results/lookup_accuracy.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from distillnerf_core.model.cameras import ring_rig
from distillnerf_core.model.contraction import contract, uncontract, voxel_centers
from distillnerf_core.model.lift import (
    LiftConfig,
    depth_bin_edges,
    expected_depth,
    logits_to_density,
    march,
    soft_clamp,
)
from distillnerf_core.model.renderer import RendererConfig, VolumeRenderer, VoxelField
from distillnerf_core.model.voxels import pool
from distillnerf_core.provenance import command_line, provenance

RADIUS = (50.0, 50.0, 6.4)
FINE_RES, COARSE_RES = 256, 64
NORMAL = torch.tensor([1.0, 0.3, 0.2]) / torch.tensor([1.0, 0.3, 0.2]).norm()


def feature_fn(p: torch.Tensor) -> torch.Tensor:
    return torch.sin(p[..., 0] / 2) + torch.cos(p[..., 1] / 3) + p[..., 2]


def wall_logit(p: torch.Tensor) -> torch.Tensor:
    return (3.0 * (p @ NORMAL - 20.0)).clamp(-30, 30)


def region_field(lo: list[float], hi: list[float], values) -> VoxelField:
    """Fine voxels whose centres lie in the box [lo, hi] (ego metres) with per-voxel values(centres)."""
    s_lo = contract(torch.tensor(lo), RADIUS)
    s_hi = contract(torch.tensor(hi), RADIUS)
    i_lo = ((s_lo + 1) * FINE_RES / 2).floor().long()
    i_hi = ((s_hi + 1) * FINE_RES / 2).ceil().long()
    axes = [torch.arange(int(a), int(b)) for a, b in zip(i_lo, i_hi, strict=True)]
    idx = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    centres = uncontract(voxel_centers(idx, FINE_RES), RADIUS)
    fine = pool(torch.zeros(idx.shape[0], dtype=torch.long), idx, values(centres), FINE_RES, 1)
    coarse = pool(
        torch.zeros(0, dtype=torch.long), torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 2), COARSE_RES, 1
    )
    return VoxelField(coarse, fine, RADIUS)


def feature_rmse(lookup: str, n: int = 20000) -> float:
    field = region_field([8, -6, -3], [24, 6, 3], lambda c: torch.stack([feature_fn(c), torch.zeros(len(c))], -1))
    g = torch.Generator().manual_seed(0)
    pts = torch.tensor([10.0, -4.0, -2.0]) + torch.rand(n, 3, generator=g) * torch.tensor([12.0, 8.0, 4.0])
    hits = field.locate(pts, torch.zeros(n, dtype=torch.long), lookup)
    got = field.features(hits)[:, 0]
    return float(((got - feature_fn(pts)) ** 2).mean().sqrt())


def wall_depth_error(lookup: str) -> float:
    field = region_field([10, -10, -5], [30, 10, 5], lambda c: torch.stack([torch.zeros(len(c)), wall_logit(c)], -1))
    lift = LiftConfig(near=12.0, linear_far=28.0, linear_step=0.05, far=28.0, contracted_bins=0)
    edges = depth_bin_edges(lift)
    renderer = VolumeRenderer(
        RendererConfig(render_scale=1.0, lookup=lookup, fine_samples=0, jitter=False, feature_weight_threshold=1.0),
        edges,
    ).eval()
    rig = ring_rig(1, (16, 32), hfov_deg=30.0, height=0.0, radius=0.0)  # stays inside the box
    out = renderer(field, rig)
    rays = rig.rays()
    t = 0.5 * (edges[1:] + edges[:-1])
    pts = rays.origins[..., None, :] + t[:, None] * rays.directions[..., None, :]
    density = logits_to_density(soft_clamp(wall_logit(pts), 30.0))
    deltas = torch.cat([t[1:] - t[:-1], (edges[-1:] - edges[-2:-1])])
    truth = expected_depth(march(density, deltas), t) * rays.z_per_distance
    return float((out.depth - truth).abs().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = {
        lookup: {"feature_rmse": feature_rmse(lookup), "tilted_wall_depth_mae_m": wall_depth_error(lookup)}
        for lookup in ("nearest", "trilinear")
    }
    result["fine_voxel_m"] = {"x": 2 / FINE_RES / 0.8 * RADIUS[0], "z": 2 / FINE_RES / 0.8 * RADIUS[2]}
    result["provenance"] = provenance(command_line("python benchmarks/lookup_accuracy.py"),
                                      model="hand-built voxel fields with analytic ground truth (no trained model)",
                                      data="the same analytic fields")
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
