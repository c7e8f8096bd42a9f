"""Two-stage lift-splat-shoot: per-pixel depth densities lifted to 3D points with features.

Stage 1 (coarse) predicts D density logits per pixel over fixed depth bins and ray-marches them to an
expected depth. Stage 2 (fine) places K candidates around the detached coarse depth, scores them with a
small network and ray-marches again. Each fine candidate becomes an ego-frame point carrying
[ray-weight x image feature, density logit]. All marching is in DISTANCE along the unit ray; every depth
returned for supervision is camera Z-DEPTH (distance x z_per_distance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from distillnerf_core.model.cameras import Rays
from distillnerf_core.model.contraction import contract_distance, uncontract_distance


@dataclass
class LiftConfig:
    """Two-stage lift-splat-shoot: coarse depth bins, then fine candidates around the coarse depth."""

    feature_stride: int = 1
    """The lift runs on the input image downsampled by this factor."""
    near: float = 0.1
    """Distance (m) where the first depth bin starts."""
    linear_far: float = 50.0
    """Linear bins of `linear_step` run from `near` up to this distance (m)."""
    linear_step: float = 0.2
    """Width (m) of the linear depth bins."""
    far: float = 120.0
    """Beyond `linear_far`, `contracted_bins` bins uniform in contracted distance run up to here (m)."""
    contracted_bins: int = 37
    """Number of bins between `linear_far` and `far`."""
    feature_dim: int = 64
    """Per-point image feature channels carried into the voxels."""
    hidden: int = 128
    """Hidden width of the coarse depth head."""
    two_stage: bool = True
    """False = the one-stage ablation: the coarse bins themselves become the lifted points."""
    fine_candidates: int = 15
    """Fine depth candidates sampled around each pixel's coarse depth."""
    fine_spacing_ratio: float = 0.025
    """Fine candidate spacing as a fraction of the coarse depth..."""
    fine_spacing_min: float = 0.05
    """...clamped below at this spacing (m)..."""
    fine_spacing_max: float = 0.3
    """...and above at this spacing (m)."""
    fine_hidden: int = 64
    """Hidden width of the fine depth head."""
    logit_clamp: float = 30.0
    """Soft clamp of density logits (keeps exp() finite in any precision)."""


def depth_bin_edges(cfg: LiftConfig) -> torch.Tensor:
    """Bin edges (D + 1,): `linear_step` steps from `near`, then uniform in contracted distance to `far`.

    Paper values (0.1, 50, 0.2, 120, 37) give 249 linear + 37 contracted = 286 bins.
    """
    n_linear = int((cfg.linear_far - cfg.near) / cfg.linear_step + 1e-6)
    linear = cfg.near + cfg.linear_step * torch.arange(n_linear + 1, dtype=torch.float64)
    if cfg.contracted_bins > 0:
        radius = cfg.linear_far
        s0 = contract_distance(linear[-1:], radius)
        s1 = contract_distance(torch.tensor([cfg.far], dtype=torch.float64), radius)
        s = s0 + (s1 - s0) * torch.arange(1, cfg.contracted_bins + 1, dtype=torch.float64) / cfg.contracted_bins
        linear = torch.cat([linear, uncontract_distance(s, radius)])
    return linear.float()


def soft_clamp(logits: torch.Tensor, limit: float) -> torch.Tensor:
    """tanh soft clamp to (-limit, limit): keeps exp() finite but gradients alive."""
    return limit * torch.tanh(logits / limit)


def logits_to_density(logits: torch.Tensor) -> torch.Tensor:
    """Volume density of (already clamped) logits: exp(logit - 1), as in the reference."""
    return torch.exp(logits - 1.0)


def march(density: torch.Tensor, deltas: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Ray-marching weights w_i = T_i (1 - exp(-sigma_i delta_i)) along `dim`, in log space for stability:
    T after sample i is exp(-cumsum(tau)_i), so w_i = T before i - T after i with one exp per sample (the
    transmittance before sample i is the one after sample i - 1, not exp of a second, re-rounded sum)."""
    tau = density * deltas
    after = torch.cumsum(tau, dim=dim).neg_().exp_()
    n = after.shape[dim]
    if n == 0:
        return after
    before = torch.cat([torch.ones_like(after.narrow(dim, 0, 1)), after.narrow(dim, 0, n - 1)], dim=dim)
    return before.sub_(after)


def expected_depth(weights: torch.Tensor, t: torch.Tensor, dim: int = -1, max_depth: float = 120.0) -> torch.Tensor:
    """sum(w t) / sum(w), clamped to [1e-5, max_depth] (the reference's normalised expectation)."""
    num = (weights * t).sum(dim)
    den = weights.sum(dim).clamp_min(1e-6)
    return (num / den).clamp(1e-5, max_depth)


@dataclass
class LiftOutput:
    """Lifted points (B, P, 3) ego frame, their values (B, P, C + 1) = [features, density logit],
    depths as camera z-depth (B, N, h, w), and the marching weights for entropy losses."""

    points: torch.Tensor
    values: torch.Tensor
    coarse_depth: torch.Tensor
    fine_depth: torch.Tensor
    coarse_weights: torch.Tensor  # (B, N, D, h, w)
    fine_weights: torch.Tensor | None  # (B, N, K, h, w); None in the one-stage ablation


class LiftSplat(nn.Module):
    """Coarse depth-bin head + fine candidate scorer producing lifted points."""

    def __init__(self, cfg: LiftConfig, in_channels: int) -> None:
        super().__init__()
        self.cfg = cfg
        edges = depth_bin_edges(cfg)
        self.register_buffer("bin_edges", edges, persistent=False)
        self.num_bins = edges.numel() - 1
        self.coarse = nn.Sequential(
            nn.Conv2d(in_channels, cfg.hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(cfg.hidden, cfg.hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(cfg.hidden, self.num_bins + cfg.feature_dim, 1),
        )
        if cfg.two_stage:
            self.fine_pixel = nn.Conv2d(cfg.feature_dim + 1, cfg.fine_hidden, 1)
            self.fine_candidate = nn.Linear(2, cfg.fine_hidden)
            self.fine_out = nn.Sequential(  # in-place ReLUs: the hidden tensors are K x the pixels (no copies)
                nn.ReLU(inplace=True),
                nn.Linear(cfg.fine_hidden, cfg.fine_hidden),
                nn.ReLU(inplace=True),
                nn.Linear(cfg.fine_hidden, 1),
            )

    @property
    def bin_centers(self) -> torch.Tensor:
        return 0.5 * (self.bin_edges[1:] + self.bin_edges[:-1])

    def forward(self, features: torch.Tensor, rays: Rays) -> LiftOutput:
        """features (B*N, C, h, w); rays at the same (h, w) with shape (B, N, h, w, ...)."""
        cfg = self.cfg
        b, n, h, w = rays.z_per_distance.shape
        out = self.coarse(features)
        # Density logits, marching and depths stay fp32 under autocast: cumulative transmittance over
        # hundreds of bins and the 3D point positions need more than bf16's 8 mantissa bits.
        logits = soft_clamp(out[:, : self.num_bins].float(), cfg.logit_clamp)  # (BN, D, h, w)
        feat = out[:, self.num_bins :]  # (BN, F, h, w)
        centers = self.bin_centers.view(1, -1, 1, 1)
        widths = (self.bin_edges[1:] - self.bin_edges[:-1]).view(1, -1, 1, 1)
        coarse_w = march(logits_to_density(logits), widths, dim=1)
        coarse_dist = expected_depth(coarse_w, centers, dim=1, max_depth=cfg.far)  # (BN, h, w)
        zpd = rays.z_per_distance.reshape(b * n, h, w)

        if cfg.two_stage:
            t_c = coarse_dist.detach()
            spacing = (cfg.fine_spacing_ratio * t_c).clamp(cfg.fine_spacing_min, cfg.fine_spacing_max)
            k = cfg.fine_candidates
            offsets = torch.arange(k, device=features.device, dtype=t_c.dtype) - (k - 1) / 2
            t = (t_c[:, None] + offsets.view(1, -1, 1, 1) * spacing[:, None]).clamp_min(cfg.near)  # (BN,K,h,w)
            norm_depth = torch.log(t_c[:, None]) / math.log(cfg.far)
            pixel = self.fine_pixel(torch.cat([feat, norm_depth], dim=1))  # (BN, Hf, h, w)
            cand = torch.stack(
                [
                    offsets.view(1, -1, 1, 1).expand_as(t) / max(k / 2, 1.0),
                    torch.log(t) / math.log(cfg.far),
                ],
                dim=-1,
            )  # (BN,K,h,w,2)
            hidden = pixel.permute(0, 2, 3, 1)[:, None] + self.fine_candidate(cand)
            point_logits = soft_clamp(self.fine_out(hidden).squeeze(-1).float(), cfg.logit_clamp)  # (BN,K,h,w)
            point_w = march(logits_to_density(point_logits), spacing[:, None], dim=1)
            fine_dist = expected_depth(point_w, t, dim=1, max_depth=cfg.far)
            fine_weights = point_w.view(b, n, k, h, w)
        else:
            t = centers.expand(b * n, -1, h, w)
            point_logits, point_w = logits, coarse_w
            fine_dist = coarse_dist
            fine_weights = None

        dirs = rays.directions.reshape(b * n, 1, h, w, 3)
        origins = rays.origins.reshape(b * n, 1, h, w, 3)
        points = origins + t.detach()[..., None] * dirs  # positions: no gradient (voxel assignment is discrete)
        values = torch.cat(
            [point_w[..., None] * feat[:, None].permute(0, 1, 3, 4, 2), point_logits[..., None]], dim=-1
        )  # (BN, K, h, w, F + 1)
        return LiftOutput(
            points=points.reshape(b, -1, 3),
            values=values.reshape(b, -1, values.shape[-1]),
            coarse_depth=(coarse_dist * zpd).view(b, n, h, w),
            fine_depth=(fine_dist * zpd).view(b, n, h, w),
            coarse_weights=coarse_w.view(b, n, self.num_bins, h, w),
            fine_weights=fine_weights,
        )
