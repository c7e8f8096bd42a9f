"""A per-scene radiance field in pure torch: multi-resolution factorised planes (K-Planes style).

Points in the scene's local world frame (metres) are contracted per axis (model/contraction.py, radius
`radius` around `center`) into (-1, 1)^3; at each level three planes (xy, xz, yz) are sampled bilinearly
(`grid_sample`) and multiplied (the Hadamard product of K-Planes), the levels concatenated, and small MLPs
give density and colour. A per-image appearance code (exposure / white balance differ between cameras and
frames) conditions the colour; the sky is a direction-only colour behind everything, so far/sky rays need not
put density anywhere. Rendering: coarse samples uniform in contracted distance (dense near, sparse far),
then importance samples from the coarse weights (same field, no gradient in the coarse pass).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from distillnerf_core.model.contraction import contract, contract_distance, uncontract_distance


@dataclass
class FieldConfig:
    """Size and sampling of the per-scene field."""

    resolutions: list[int] = field(default_factory=lambda: [64, 128, 256])
    """Plane resolution per level (each level: three planes of this size)."""
    features: int = 8
    """Channels per plane."""
    hidden: int = 32
    """Width of the density and colour MLPs."""
    geo_features: int = 15
    """Density-MLP features passed on to the colour MLP."""
    appearance: int = 8
    """Per-image appearance code size (0 = none)."""
    radius_xy: float = 40.0
    """Contraction radius beyond the ego trajectory's extent in x / y (m): linear inside, compressed outside."""
    radius_z: float = 12.0
    """Contraction radius in z (m)."""
    near: float = 0.3
    """Ray start (m)."""
    far: float = 1000.0
    """Ray end (m); what is left of the transmittance there is sky."""
    coarse_samples: int = 48
    """Coarse samples per ray (uniform in contracted distance, no gradient)."""
    fine_samples: int = 32
    """Importance samples per ray from the coarse weights (rendered with the coarse ones)."""
    sky_opacity: float = 0.5
    """A rendered depth counts as a surface only where the accumulated opacity exceeds this; else 0 (sky)."""


@dataclass
class RayBundle:
    """Rays in the field's local frame: origins (R, 3), unit directions (R, 3), image index (R,) long."""

    origins: torch.Tensor
    directions: torch.Tensor
    image_ids: torch.Tensor


class SceneField(nn.Module):
    """Density + colour of one scene; see the module docstring."""

    def __init__(self, cfg: FieldConfig, center: torch.Tensor, radius: torch.Tensor, num_images: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("center", torch.as_tensor(center, dtype=torch.float32).clone())
        self.register_buffer("radius", torch.as_tensor(radius, dtype=torch.float32).clone())
        # K-Planes initialisation: products of values in [0.1, 0.5] start near-constant and small
        self.planes = nn.ParameterList([nn.Parameter(torch.empty(3, cfg.features, r, r).uniform_(0.1, 0.5))
                                        for r in cfg.resolutions])
        c = cfg.features * len(cfg.resolutions)
        self.density_mlp = nn.Sequential(nn.Linear(c, cfg.hidden), nn.ReLU(),
                                         nn.Linear(cfg.hidden, 1 + cfg.geo_features))
        self.color_mlp = nn.Sequential(nn.Linear(cfg.geo_features + 3 + cfg.appearance, cfg.hidden), nn.ReLU(),
                                       nn.Linear(cfg.hidden, 3))
        self.sky_mlp = nn.Sequential(nn.Linear(3 + cfg.appearance, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 3))
        self.appearance = nn.Embedding(max(1, num_images), cfg.appearance) if cfg.appearance else None
        if self.appearance is not None:
            nn.init.zeros_(self.appearance.weight)

    # -------------------------------------------------------------------------------------------- field
    def plane_features(self, points: torch.Tensor) -> torch.Tensor:
        """(P, L * F) features of local-frame points (P, 3)."""
        s = contract(points - self.center, self.radius)
        grid = torch.stack([s[:, [0, 1]], s[:, [0, 2]], s[:, [1, 2]]])[:, :, None, :]  # (3, P, 1, 2)
        feats = []
        for plane in self.planes:
            f = F.grid_sample(plane, grid, mode="bilinear", padding_mode="border", align_corners=False)  # (3,F,P,1)
            feats.append((f[0] * f[1] * f[2])[..., 0].t())
        return torch.cat(feats, dim=-1)

    def density(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(P,) density and (P, geo) features."""
        h = self.density_mlp(self.plane_features(points))
        return torch.exp(h[:, 0].clamp(max=15.0) - 1.0), h[:, 1:]

    def _code(self, image_ids: torch.Tensor) -> torch.Tensor:
        if self.appearance is None:
            return image_ids.new_zeros(image_ids.shape[0], 0, dtype=torch.float32)
        return self.appearance(image_ids)

    # -------------------------------------------------------------------------------------------- render
    def _coarse_t(self, n: int, rays: int, device: torch.device, jitter: bool) -> torch.Tensor:
        r = float(self.radius[0])
        s0 = contract_distance(torch.tensor(self.cfg.near), r)
        s1 = contract_distance(torch.tensor(self.cfg.far), r)
        u = (torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n
        u = u.expand(rays, n)
        if jitter:
            u = u + (torch.rand(rays, n, device=device) - 0.5) / n
        return uncontract_distance(s0 + (s1 - s0) * u, r)

    @staticmethod
    def _weights(sigma: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        delta = torch.cat([t[:, 1:] - t[:, :-1], torch.full_like(t[:, :1], 1e-3)], dim=1)
        alpha = 1.0 - torch.exp(-sigma * delta)
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-10], dim=1), dim=1)[:, :-1]
        return alpha * trans

    def render(self, rays: RayBundle, jitter: bool = False) -> dict[str, torch.Tensor]:
        """rgb (R, 3), distance (R,) (expected, over the surface part), opacity (R,), t / weights (R, S),
        optical_depth (R,) = sum of density x interval = -log(1 - opacity), without its saturation at opacity 1."""
        cfg, o, d = self.cfg, rays.origins, rays.directions
        R = o.shape[0]
        t_c = self._coarse_t(cfg.coarse_samples, R, o.device, jitter)
        with torch.no_grad():
            sig_c, _ = self.density((o[:, None] + d[:, None] * t_c[..., None]).reshape(-1, 3))
            w_c = self._weights(sig_c.view(R, -1), t_c)
            t_f = sample_pdf(t_c, w_c, cfg.fine_samples, jitter)
        t, _ = torch.sort(torch.cat([t_c, t_f], dim=1), dim=1)
        S = t.shape[1]
        sigma, geo = self.density((o[:, None] + d[:, None] * t[..., None]).reshape(-1, 3))
        w = self._weights(sigma.view(R, S), t)
        code = self._code(rays.image_ids)
        dirs = d[:, None].expand(R, S, 3).reshape(-1, 3)
        col_in = torch.cat([geo, dirs, code[:, None].expand(R, S, code.shape[-1]).reshape(R * S, -1)], dim=-1)
        color = torch.sigmoid(self.color_mlp(col_in)).view(R, S, 3)
        sky = torch.sigmoid(self.sky_mlp(torch.cat([d, code], dim=-1)))
        opacity = w.sum(1)
        rgb = (w[..., None] * color).sum(1) + (1.0 - opacity)[:, None] * sky
        distance = (w * t).sum(1) / opacity.clamp_min(1e-6)
        delta = torch.cat([t[:, 1:] - t[:, :-1], torch.full_like(t[:, :1], 1e-3)], dim=1)
        optical_depth = (sigma.view(R, S) * delta).sum(1)
        return {"rgb": rgb, "distance": distance, "opacity": opacity, "t": t, "weights": w,
                "optical_depth": optical_depth}


def sample_pdf(t: torch.Tensor, weights: torch.Tensor, n: int, jitter: bool) -> torch.Tensor:
    """(R, n) distances drawn from the piecewise-constant pdf of `weights` over the intervals of `t` (R, S)."""
    mids = 0.5 * (t[:, 1:] + t[:, :-1])
    w = weights[:, 1:-1] + 1e-5
    pdf = w / w.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)
    u = (torch.arange(n, device=t.device, dtype=t.dtype) + 0.5) / n
    u = u.expand(t.shape[0], n).contiguous()
    if jitter:
        u = (u + (torch.rand_like(u) - 0.5) / n).clamp(0.0, 1.0 - 1e-6)
    idx = torch.searchsorted(cdf, u, right=True).clamp(1, mids.shape[1] - 1)
    c0, c1 = cdf.gather(1, idx - 1), cdf.gather(1, idx)
    b0, b1 = mids.gather(1, idx - 1), mids.gather(1, idx)
    frac = ((u - c0) / (c1 - c0).clamp_min(1e-8)).clamp(0, 1)
    return b0 + frac * (b1 - b0)


def plane_tv(field_: SceneField) -> torch.Tensor:
    """Total variation of every plane (smooths unobserved space; K-Planes' regulariser)."""
    total = field_.planes[0].new_zeros(())
    for p in field_.planes:
        total = total + (p[..., 1:, :] - p[..., :-1, :]).pow(2).mean() + (p[..., 1:] - p[..., :-1]).pow(2).mean()
    return total
