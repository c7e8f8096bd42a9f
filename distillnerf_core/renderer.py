"""Differentiable volume rendering of the sparse voxel field for any set of target cameras.

Density comes from the fine level where occupied, else the coarse level, else empty. Lookup is NEAREST
(the reference) or TRILINEAR over the 8 surrounding voxels, both via binary search on the sorted keys.
For trilinear lookup the occupied fraction of the 8 corner weights ("mass") blends smoothly between the
levels and towards empty space; with nearest lookup the mass is exactly 0 or 1 and the rule is the
reference's. Rays march in distance; the returned depth is camera z-depth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .cameras import CameraRig, contract, linearize, voxel_index
from .config import RendererConfig
from .lift import expected_depth, logits_to_density, march, soft_clamp
from .voxels import SparseVoxels

CORNERS = torch.tensor([(i, j, k) for i in (0, 1) for j in (0, 1) for k in (0, 1)])


@dataclass
class VoxelField:
    """The scene representation: refined coarse level and pooled fine level; last channel = density logit."""

    coarse: SparseVoxels
    fine: SparseVoxels
    radius: tuple[float, float, float]
    logit_clamp: float = 30.0

    @property
    def feature_dim(self) -> int:
        return self.coarse.features.shape[-1] - 1 + self.fine.features.shape[-1] - 1

    def query(self, points: torch.Tensor, batch: torch.Tensor, lookup: str = "nearest"
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Density (M,) and features (M, C_fine + C_coarse) at ego points (M, 3) of batch elements (M,)."""
        s = contract(points, self.radius)
        f_feat, f_mass = _lookup(self.fine, s, batch, lookup)
        c_feat, c_mass = _lookup(self.coarse, s, batch, lookup)
        f_logit = soft_clamp(f_feat[:, -1] / f_mass.clamp_min(1e-8), self.logit_clamp)
        c_logit = soft_clamp(c_feat[:, -1] / c_mass.clamp_min(1e-8), self.logit_clamp)
        density = f_mass * logits_to_density(f_logit) + (1 - f_mass) * c_mass * logits_to_density(c_logit)
        return density, torch.cat([f_feat[:, :-1], c_feat[:, :-1]], dim=-1)


def _lookup(level: SparseVoxels, s: torch.Tensor, batch: torch.Tensor, mode: str
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mass-weighted features (M, C) and occupied mass (M,) in [0, 1] of contracted points s (M, 3)."""
    r = level.resolution
    if mode == "nearest":
        feats, found = level.gather(linearize(batch, voxel_index(s, r), r))
        return feats, found.to(s.dtype)
    u = (s + 1.0) * (0.5 * r) - 0.5
    base = torch.floor(u)
    frac = u - base
    base = base.long()
    acc = s.new_zeros(s.shape[0], level.features.shape[-1])
    mass = s.new_zeros(s.shape[0])
    for corner in CORNERS.to(s.device):
        idx = base + corner
        inside = ((idx >= 0) & (idx < r)).all(-1)
        w = torch.where(corner.bool(), frac, 1.0 - frac).prod(-1)
        feats, found = level.gather(linearize(batch, idx.clamp(0, r - 1), r))
        w = w * (found & inside).to(s.dtype)
        acc = acc + w[:, None] * feats
        mass = mass + w
    return acc, mass


@dataclass
class RenderOutput:
    """Per target camera, at render resolution (h, w): depth is camera z-depth."""

    depth: torch.Tensor  # (B, M, h, w)
    opacity: torch.Tensor  # (B, M, h, w)
    features: torch.Tensor  # (B, M, C, h, w) composited field features
    head_features: torch.Tensor | None  # (B, M, D, h, w) composited per-sample head output
    weights: torch.Tensor  # (B, M, h, w, S) sample weights (entropy loss)


class VolumeRenderer(nn.Module):
    """Coarse samples at the depth-bin midpoints + fine samples around the highest-weight coarse sample."""

    def __init__(self, cfg: RendererConfig, bin_edges: torch.Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("bin_edges", bin_edges.clone(), persistent=False)

    def render_hw(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        s = self.cfg.render_scale
        return max(1, round(image_hw[0] * s)), max(1, round(image_hw[1] * s))

    def forward(self, field: VoxelField, targets: CameraRig,
                sample_head: Callable[[torch.Tensor], torch.Tensor] | None = None) -> RenderOutput:
        """Render every target camera at `render_scale` of its image size."""
        h, w = self.render_hw(targets.image_hw)
        rays = targets.resized((h, w)).rays()
        b, m = targets.batch_size, targets.num_cameras
        origins = rays.origins.reshape(b, -1, 3)
        dirs = rays.directions.reshape(b, -1, 3)
        n_rays = origins.shape[1]
        chunks = []
        step = max(1, self.cfg.chunk_rays // b)
        for start in range(0, n_rays, step):
            sl = slice(start, start + step)
            chunks.append(self._render_rays(field, origins[:, sl], dirs[:, sl], sample_head))
        dist, opacity, feats, head, weights = (torch.cat(parts, dim=1) if parts[0] is not None else None
                                               for parts in zip(*chunks, strict=True))
        z = rays.z_per_distance.reshape(b, -1)

        def image(x: torch.Tensor) -> torch.Tensor:  # (B, R, C) -> (B, M, C, h, w)
            return x.view(b, m, h, w, -1).permute(0, 1, 4, 2, 3)

        return RenderOutput(
            depth=(dist * z).view(b, m, h, w),
            opacity=opacity.view(b, m, h, w),
            features=image(feats),
            head_features=image(head) if head is not None else None,
            weights=weights.view(b, m, h, w, -1),
        )

    def _render_rays(self, field: VoxelField, origins: torch.Tensor, dirs: torch.Tensor,
                     sample_head: Callable[[torch.Tensor], torch.Tensor] | None):
        cfg = self.cfg
        b, r, _ = origins.shape
        edges = self.bin_edges
        lo, widths = edges[:-1], edges[1:] - edges[:-1]
        if self.training and cfg.jitter:
            t_coarse = lo + widths * torch.rand(b, r, lo.numel(), device=origins.device, dtype=origins.dtype)
        else:
            t_coarse = (lo + 0.5 * widths).expand(b, r, -1)
        batch = torch.arange(b, device=origins.device).view(b, 1, 1)

        def sample(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            pts = origins[:, :, None] + t[..., None] * dirs[:, :, None]
            bidx = batch.expand_as(t).reshape(-1)
            density, feats = field.query(pts.reshape(-1, 3), bidx, cfg.lookup)
            return density.view(t.shape), feats.view(*t.shape, -1)

        d_coarse, f_coarse = sample(t_coarse)
        if cfg.fine_samples > 0:
            with torch.no_grad():
                w_coarse = march(d_coarse, widths.expand_as(d_coarse))
                best = torch.gather(t_coarse, -1, w_coarse.argmax(-1, keepdim=True))
                n = cfg.fine_samples
                offsets = (torch.arange(n, device=origins.device, dtype=origins.dtype) - (n - 1) / 2)
                t_fine = (best + offsets * cfg.fine_sample_spacing).clamp(edges[0], edges[-1])
            d_fine, f_fine = sample(t_fine)
            t_all, order = torch.sort(torch.cat([t_coarse, t_fine], -1), dim=-1)
            density = torch.gather(torch.cat([d_coarse, d_fine], -1), -1, order)
            feats = torch.cat([f_coarse, f_fine], -2)
            feats = torch.gather(feats, -2, order[..., None].expand(-1, -1, -1, feats.shape[-1]))
        else:
            t_all, density, feats = t_coarse, d_coarse, f_coarse
        deltas = torch.cat([t_all[..., 1:] - t_all[..., :-1], widths[-1:].expand(b, r, 1)], -1)
        weights = march(density, deltas)
        dist = expected_depth(weights, t_all, max_depth=cfg.max_depth)
        opacity = weights.sum(-1)
        feat_img = (weights[..., None] * feats).sum(-2)
        head = (weights[..., None] * sample_head(feats)).sum(-2) if sample_head is not None else None
        return dist, opacity, feat_img, head, weights
