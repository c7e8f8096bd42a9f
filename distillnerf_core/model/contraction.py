"""Scene contraction: unbounded ego space -> the cube (-1, 1)^3 the voxel levels tile.

Per axis, linear inside the radius R (50 m in x/y, 6.4 m in z: a car's surroundings are flat), then
1 - 0.2 R / |x| beyond it, so the far field up to infinity fits in the outer 20% of the cube. Voxel
indices and int64 keys (`linearize`) of both levels are defined here, in contracted coordinates.
"""

from __future__ import annotations

import torch

DEFAULT_RADIUS = (50.0, 50.0, 6.4)


def _radius(radius: tuple[float, ...] | list[float] | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(radius, dtype=like.dtype, device=like.device)


def contract(x: torch.Tensor, radius: tuple[float, ...] | list[float] = DEFAULT_RADIUS) -> torch.Tensor:
    """Per-axis contraction of ego points (..., 3) into (-1, 1): linear inside R, 1 - 0.2R/|x| outside."""
    r = _radius(radius, x)
    ax = x.abs()
    inner = 0.8 * x / r
    outer = torch.sign(x) * (1.0 - 0.2 * r / ax.clamp_min(1e-12))
    return torch.where(ax < r, inner, outer)


def uncontract(s: torch.Tensor, radius: tuple[float, ...] | list[float] = DEFAULT_RADIUS) -> torch.Tensor:
    """Exact inverse of `contract` for |s| < 1."""
    r = _radius(radius, s)
    a = s.abs()
    inner = s * r / 0.8
    outer = torch.sign(s) * 0.2 * r / (1.0 - a).clamp_min(1e-12)
    return torch.where(a < 0.8, inner, outer)


def contract_distance(d: torch.Tensor, radius: float) -> torch.Tensor:
    """Scalar version of `contract` for non-negative distances (used to space far depth bins)."""
    return torch.where(d < radius, 0.8 * d / radius, 1.0 - 0.2 * radius / d.clamp_min(1e-12))


def uncontract_distance(s: torch.Tensor, radius: float) -> torch.Tensor:
    """Inverse of `contract_distance`."""
    return torch.where(s < 0.8, s * radius / 0.8, 0.2 * radius / (1.0 - s).clamp_min(1e-12))


def voxel_index(s: torch.Tensor, resolution: int) -> torch.Tensor:
    """Integer voxel index (..., 3) of contracted coordinates in [-1, 1] at a level's resolution."""
    idx = torch.floor((s + 1.0) * (0.5 * resolution)).long()
    return idx.clamp_(0, resolution - 1)


def voxel_centers(index: torch.Tensor, resolution: int) -> torch.Tensor:
    """Contracted coordinates of voxel centres for integer indices (..., 3)."""
    return (index.to(torch.float32) + 0.5) * (2.0 / resolution) - 1.0


def contracted_voxel_index(x: torch.Tensor, radius: tuple[float, ...] | list[float], resolution: int,
                           dtype: torch.dtype = torch.long) -> torch.Tensor:
    """`voxel_index(contract(x, radius), resolution)` with the same floating-point operations in the same
    order (so the same bits), but in place: the renderer calls it on every sample, and on the CPU each fresh
    full-size temporary of the two-step form costs more than its arithmetic (page faults of new memory).
    `dtype` torch.int32 halves the index traffic where keys fit (see `key_dtype`)."""
    r = _radius(radius, x)
    ax = x.abs()
    inside = ax < r
    outer = torch.div(0.2 * r, ax.clamp_min_(1e-12), out=ax)  # 1 - 0.2R/|x| with the sign of x, as contract
    outer.neg_().add_(1.0)
    torch.copysign(outer, x, out=outer)  # = sign(x) * outer: x != 0 here (x = 0 is inside)
    s = torch.mul(x, 0.8).div_(r)
    s = torch.where(inside, s, outer, out=s)
    idx = s.add_(1.0).mul_(0.5 * resolution).floor_().to(dtype)
    return idx.clamp_(0, resolution - 1)


def key_dtype(batch_size: int, resolution: int) -> torch.dtype:
    """int32 when every key (batch, i, j, k) of a level fits in it, else int64."""
    return torch.int32 if batch_size * resolution**3 < 2**31 else torch.long


def linearize(batch: torch.Tensor, index: torch.Tensor, resolution: int) -> torch.Tensor:
    """int64 key of (batch, i, j, k): sorting keys groups voxels by batch element then x, y, z."""
    i, j, k = index.unbind(-1)
    return ((batch * resolution + i) * resolution + j) * resolution + k
