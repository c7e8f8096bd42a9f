"""Sparse hierarchical voxels in contracted space: mean pooling of lifted points at two levels.

Only occupied voxels are stored, as sorted int64 keys (batch, i, j, k) with a feature row each; pooling
uses native torch ops (`unique`, `index_add`), so any batch size works and no compiled extension is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from distillnerf_core.model.contraction import contract, linearize, voxel_index


@dataclass
class VoxelConfig:
    """Two sparse levels in contracted [-1, 1]^3 and the per-axis contraction radius (metres)."""

    coarse_resolution: int = 128
    """Voxels per axis of the coarse level."""
    fine_resolution: int = 512
    """Voxels per axis of the fine level; a multiple of `coarse_resolution`."""
    radius: list[float] = field(default_factory=lambda: [50.0, 50.0, 6.4])
    """Contraction radius per axis (x, y, z) in metres: linear inside, contracted beyond."""
    fine_level: bool = True
    """False = the coarse-only ablation: no fine level (rendering and the CNN see coarse only)."""


@dataclass
class SparseVoxels:
    """Occupied voxels of one level, sorted by key. coords (V, 3) long, batch (V,) long, features (V, C)."""

    keys: torch.Tensor
    coords: torch.Tensor
    batch: torch.Tensor
    features: torch.Tensor
    counts: torch.Tensor  # points (or child voxels) pooled into each voxel
    resolution: int
    batch_size: int

    @property
    def num_voxels(self) -> int:
        return self.keys.numel()

    def with_features(self, features: torch.Tensor) -> SparseVoxels:
        """Same voxels, new per-voxel features (e.g. after the sparse CNN)."""
        return SparseVoxels(self.keys, self.coords, self.batch, features, self.counts, self.resolution, self.batch_size)

    def emptied(self) -> SparseVoxels:
        """The same level with no occupied voxel (same resolution and channel count)."""
        none = self.keys[:0]
        return SparseVoxels(none, self.coords[:0], self.batch[:0], self.features[:0], self.counts[:0],
                            self.resolution, self.batch_size)

    def find(self, query_keys: torch.Tensor) -> torch.Tensor:
        """Row index of each query key, -1 where the voxel is not occupied (sorted-key binary search)."""
        if self.keys.numel() == 0:
            return torch.full_like(query_keys, -1)
        pos = torch.searchsorted(self.keys, query_keys).clamp_(max=self.keys.numel() - 1)
        found = self.keys.index_select(0, pos.reshape(-1)).view(pos.shape) == query_keys
        return torch.where(found, pos, torch.full_like(pos, -1))

    def gather(self, query_keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features at query keys (zeros where empty) and the occupancy mask."""
        idx = self.find(query_keys)
        found = idx >= 0
        rows = torch.where(found, idx, torch.full_like(idx, self.num_voxels))
        return gather_rows(self.features, rows), found


def hit_positions(rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Flat positions of `rows` (any shape) that address a real row (< num_rows); the rest are misses."""
    return (rows.reshape(-1) < num_rows).nonzero().squeeze(-1)


def compaction_pays(table: torch.Tensor) -> bool:
    """Whether to compact hits with `nonzero` before gathering from `table`: on the CPU always (less work),
    on a GPU only when a backward will run (it removes the miss rows' colliding atomic adds). A GPU forward
    without grad is launch-bound, and `nonzero` (a data-dependent size) makes the host wait for the device:
    there misses are read from a clamped row and zeroed instead (same values, no host sync)."""
    return table.device.type == "cpu" or (torch.is_grad_enabled() and table.requires_grad)


def gather_rows(table: torch.Tensor, rows: torch.Tensor, hits: torch.Tensor | None = None) -> torch.Tensor:
    """`table[rows]` (rows.shape + table.shape[1:]) where a row index == len(table) (a miss) reads zeros.

    Only the hit rows are read, with `index_select`: its backward is one scatter-add (`index_add`), where an
    advanced-index gather's backward sorts and runs `index_put_(accumulate=True)` (98% of a GPU training
    step). Misses are never gathered, so they add no (zero) gradient into one shared pad row, which would
    collide millions of atomic adds on one address. `hits` = `hit_positions(rows, len(table))` when the
    caller reuses one row table several times (the sparse CNN's layers). Without a backward (and at least as
    many rows as the table has) misses read an appended zero row instead: one gather pass, no host sync.
    """
    flat = rows.reshape(-1)
    out_shape = (*rows.shape, *table.shape[1:])
    if not (torch.is_grad_enabled() and table.requires_grad) and flat.numel() >= table.shape[0]:
        # No backward: misses read one appended zero row, one gather pass (no host sync either). Zero-filling
        # the output and scattering the hits into it moved ~3x the bytes (the CPU sparse CNN on real data).
        padded = torch.cat([table, table.new_zeros(1, *table.shape[1:])])
        return padded.index_select(0, flat).view(out_shape)
    if not compaction_pays(table):
        if table.shape[0] == 0:
            return table.new_zeros(out_shape)
        picked = table.index_select(0, flat.clamp(max=table.shape[0] - 1))
        hit = (flat < table.shape[0]).view(-1, *([1] * (table.dim() - 1)))
        return torch.where(hit, picked, picked.new_zeros(())).view(out_shape)
    if hits is None:
        hits = hit_positions(flat, table.shape[0])
    if hits.numel() == flat.numel():
        picked = table.index_select(0, flat)
    else:  # in place into the fresh zeros (out of place would copy the whole output once more)
        picked = table.new_zeros(flat.numel(), *table.shape[1:])
        picked.index_copy_(0, hits, table.index_select(0, flat.index_select(0, hits)))
    return picked.view(out_shape)


def _sum_by_key(keys: torch.Tensor, values: torch.Tensor, counts: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sorted unique keys, the fp32 sums of `values` (M, C) per key and how many items (or, with
    `counts`, how many counted items) each key holds."""
    uniq, inverse, n = torch.unique(keys, sorted=True, return_inverse=True, return_counts=True)
    # Sums of many points accumulate in fp32 (bf16/fp16 values under autocast would lose the small ones).
    acc = torch.promote_types(values.dtype, torch.float32)
    sums = values.new_zeros(uniq.numel(), values.shape[-1], dtype=acc).index_add(0, inverse, values.to(acc))
    if counts is not None:
        n = counts.new_zeros(uniq.numel()).index_add(0, inverse, counts)
    return uniq, sums, n.to(acc)


def _voxels(keys: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, resolution: int, batch_size: int
            ) -> SparseVoxels:
    r = resolution
    coords = torch.stack([(keys // (r * r)) % r, (keys // r) % r, keys % r], dim=-1)
    return SparseVoxels(keys, coords, keys // (r**3), sums / counts[:, None], counts, resolution, batch_size)


def pool(
    batch: torch.Tensor, index: torch.Tensor, values: torch.Tensor, resolution: int, batch_size: int
) -> SparseVoxels:
    """Mean of `values` (M, C) per voxel `index` (M, 3) of batch element `batch` (M,)."""
    keys, sums, counts = _sum_by_key(linearize(batch, index, resolution), values)
    return _voxels(keys, sums, counts, resolution, batch_size)


def voxelize(
    points: torch.Tensor,
    values: torch.Tensor,
    coarse_resolution: int,
    fine_resolution: int,
    radius: tuple[float, float, float] | list[float],
) -> tuple[SparseVoxels, SparseVoxels]:
    """Pool ego-frame points (B, P, 3) with values (B, P, C) into the (coarse, fine) levels.

    The coarse index is derived from the fine one by integer division, so every fine voxel's parent is
    exactly the coarse voxel its points fall in (no float disagreement at boundaries). The coarse level is
    pooled from the fine level's sums and counts (the same mean over the same points), so the big
    per-point `unique` and scatter run once.
    """
    b, p, _ = points.shape
    fine_idx = voxel_index(contract(points.reshape(-1, 3), radius), fine_resolution)
    batch = torch.arange(b, device=points.device).repeat_interleave(p)
    fine_keys, fine_sums, fine_counts = _sum_by_key(linearize(batch, fine_idx, fine_resolution),
                                                    values.reshape(b * p, -1))
    fine = _voxels(fine_keys, fine_sums, fine_counts, fine_resolution, b)
    parents = linearize(fine.batch, fine.coords // (fine_resolution // coarse_resolution), coarse_resolution)
    coarse = _voxels(*_sum_by_key(parents, fine_sums, fine_counts), coarse_resolution, b)
    return coarse, fine


def downsample(voxels: SparseVoxels, resolution: int) -> SparseVoxels:
    """Mean of the occupied child voxels per parent voxel at a coarser `resolution`."""
    ratio = voxels.resolution // resolution
    return pool(voxels.batch, voxels.coords // ratio, voxels.features, resolution, voxels.batch_size)
