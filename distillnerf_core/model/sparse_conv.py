"""Sparse 3D convolution over occupied voxels, in pure torch.

A 3x3x3 kernel only touches occupied neighbours: each of the 27 offsets is looked up once per level
with a binary search on the sorted linearised keys (`torch.searchsorted`), and the resulting neighbour
table is shared by every layer. Empty neighbours contribute zero, exactly like a dense Conv3d with
zero padding evaluated at the occupied voxels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from distillnerf_core.model.contraction import linearize
from distillnerf_core.model.voxels import SparseVoxels, downsample, gather_rows, hit_positions


@dataclass
class SparseConvConfig:
    """Sparse 3D CNN refining the coarse level (27-neighbour kernels, LayerNorm)."""

    width: int = 128
    """Channels of the hidden layers."""
    num_layers: int = 4
    """Residual sparse-convolution blocks."""
    out_features: int = 32
    """Coarse-level feature channels after refinement (a density logit comes on top)."""
    coarse_only: bool = False
    """Ablation: do not fold the pooled fine level into the coarse input."""

OFFSETS = torch.tensor([(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)])


def neighbour_table(voxels: SparseVoxels) -> torch.Tensor:
    """(V, 27) row index of each voxel's neighbour at OFFSETS[o], V (a zero pad row) where empty."""
    r = voxels.resolution
    nb = voxels.coords[:, None, :] + OFFSETS.to(voxels.coords.device)[None]  # (V, 27, 3)
    inside = ((nb >= 0) & (nb < r)).all(-1)
    keys = linearize(voxels.batch[:, None].expand(-1, 27), nb.clamp(0, r - 1), r)
    idx = voxels.find(keys)
    return torch.where(inside & (idx >= 0), idx, torch.full_like(idx, voxels.num_voxels))


class SparseConv3d(nn.Module):
    """3x3x3 convolution on occupied voxels; weight[o] is the (in, out) matrix of OFFSETS[o]."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(27, in_channels, out_channels))
        nn.init.kaiming_uniform_(self.weight.view(27 * in_channels, out_channels).T, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(
        self, features: torch.Tensor, neighbours: torch.Tensor, hits: torch.Tensor | None = None
    ) -> torch.Tensor:
        """features (V, in), neighbours (V, 27) from `neighbour_table` -> (V, out).

        One gather of the occupied neighbours into a (V, 27 * in) matrix and one GEMM (instead of 27
        gathers and matmuls); empty neighbours are zeros that are never gathered. `hits` =
        `hit_positions(neighbours, V)`, computed once per level when several layers share the table.
        """
        v, cin = features.shape
        device = features.device.type
        if torch.is_autocast_enabled(device):  # the GEMM casts anyway: gather (27x the rows) at half the bytes
            features = features.to(torch.get_autocast_dtype(device))
        cols = gather_rows(features, neighbours, hits).reshape(v, 27 * cin)
        out = cols @ self.weight.reshape(27 * cin, -1)
        return out if self.bias is None else out + self.bias

    @torch.no_grad()
    def load_dense(self, conv: nn.Conv3d) -> None:
        """Copy a dense Conv3d's weights (cross-correlation over x, y, z = dims D, H, W)."""
        for o, (dx, dy, dz) in enumerate(OFFSETS.tolist()):
            self.weight[o].copy_(conv.weight[:, :, dx + 1, dy + 1, dz + 1].T)
        if self.bias is not None and conv.bias is not None:
            self.bias.copy_(conv.bias)


class SparseBlock(nn.Module):
    """Residual SparseConv3d -> LayerNorm -> GELU."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = SparseConv3d(width, width)
        self.norm = nn.LayerNorm(width)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor, neighbours: torch.Tensor, hits: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.act(self.norm(self.conv(x, neighbours, hits)))


class SparseCNN(nn.Module):
    """Refines the coarse level; its input is the pooled coarse level plus the fine level pooled into it.

    Output per coarse voxel: `out_features` channels + 1 density logit.
    """

    def __init__(self, cfg: SparseConvConfig, in_channels: int) -> None:
        super().__init__()
        self.coarse_only = cfg.coarse_only
        cin = in_channels if cfg.coarse_only else 2 * in_channels
        self.stem = nn.Linear(cin, cfg.width)
        self.blocks = nn.ModuleList(SparseBlock(cfg.width) for _ in range(cfg.num_layers))
        self.head = nn.Linear(cfg.width, cfg.out_features + 1)

    def forward(self, coarse: SparseVoxels, fine: SparseVoxels) -> SparseVoxels:
        x = coarse.features
        if not self.coarse_only:
            folded, _ = downsample(fine, coarse.resolution).gather(coarse.keys)
            x = torch.cat([x, folded], dim=-1)
        neighbours = neighbour_table(coarse)
        hits = hit_positions(neighbours, coarse.num_voxels)
        x = self.stem(x)
        for block in self.blocks:
            x = block(x, neighbours, hits)
        return coarse.with_features(self.head(x))
