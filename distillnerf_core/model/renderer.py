"""Differentiable volume rendering of the sparse voxel field for any set of target cameras.

Density comes from the fine level where occupied, else the coarse level, else empty. Lookup is NEAREST
(the reference) or TRILINEAR over the 8 surrounding voxels, both via binary search on the sorted keys.
For trilinear lookup the occupied fraction of the 8 corner weights ("mass") blends smoothly between the
levels and towards empty space; with nearest lookup the mass is exactly 0 or 1 and the rule is the
reference's. Rays march in distance; the returned depth is camera z-depth.

Speed: densities are needed at every sample, features only where the compositing weight matters, so
features (and the per-sample feature head) are composited only for samples whose weight exceeds
`feature_weight_threshold` (0 evaluates all samples). With nearest lookup a sample's features are one of
V + 1 per-voxel rows, so the feature head runs once per referenced voxel, not once per sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from distillnerf_core.model.cameras import CameraRig
from distillnerf_core.model.contraction import contract, contracted_voxel_index, key_dtype, linearize, voxel_index
from distillnerf_core.model.lift import expected_depth, logits_to_density, march, soft_clamp
from distillnerf_core.model.voxels import SparseVoxels, compaction_pays, gather_rows, hit_positions


@dataclass
class RendererConfig:
    """Volume rendering of the voxel field for arbitrary target cameras."""

    render_scale: float = 0.5
    """Render resolution as a fraction of the target image size (the decoder upsamples)."""
    lookup: str = "nearest"
    """Voxel lookup per sample: "nearest" (the reference) or "trilinear"."""
    fine_samples: int = 30
    """Samples per ray around the coarse surface, looked up in the fine level."""
    fine_sample_spacing: float = 0.1
    """Spacing (m) of the fine samples."""
    jitter: bool = True
    """Jitter coarse samples inside their bins in training mode."""
    max_depth: float = 120.0
    """Rays are marched up to this distance (m)."""
    chunk_rays: int = 65536
    """Rays rendered at once without gradients (bounds the peak memory of inference). With gradients all rays
    go at once: autograd keeps every chunk's activations until the backward anyway, and each chunk costs the
    same kernel launches and host syncs (the GPU forward is launch-bound)."""
    feature_weight_threshold: float = 1e-4
    """Skip feature lookups of samples whose weight is below this (0 = exact)."""

CORNERS = torch.tensor([(i, j, k) for i in (0, 1) for j in (0, 1) for k in (0, 1)])
DENSE_GRID_CELLS = 2**22  # coarse cells (batch x r^3) up to which nearest lookups read a dense row table


def linearize_one(idx: torch.Tensor, resolution: int) -> torch.Tensor:
    """`linearize` of batch element 0: (i * r + j) * r + k in idx's dtype."""
    i, j, k = idx.unbind(-1)
    return (i * resolution).add_(j).mul_(resolution).add_(k)


@dataclass
class Hits:
    """Where points fall in both levels: rows into the padded feature tables and corner weights (.., c).

    Missing voxels have row index = the level's voxel count and weight 0 (they read zeros and are never
    gathered, see `gather_rows`); c = 1 (nearest) or 8 (trilinear).
    """

    fine_rows: torch.Tensor
    fine_w: torch.Tensor
    coarse_rows: torch.Tensor
    coarse_w: torch.Tensor

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Hits:
        return Hits(fn(self.fine_rows), fn(self.fine_w), fn(self.coarse_rows), fn(self.coarse_w))


def _locate(level: SparseVoxels, s: torch.Tensor, batch: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (M, c) and weights (M, c) of contracted points s (M, 3) in one level."""
    r = level.resolution
    if mode == "nearest":
        idx = level.find(linearize(batch, voxel_index(s, r), r))
        found = idx >= 0
        rows = torch.where(found, idx, torch.full_like(idx, level.num_voxels))
        return rows[:, None], found.to(s.dtype)[:, None]
    if mode != "trilinear":
        raise ValueError(f"unknown lookup {mode!r}: use 'nearest' or 'trilinear'")
    u = (s + 1.0) * (0.5 * r) - 0.5
    base = torch.floor(u)
    frac = (u - base)[:, None, :]  # (M, 1, 3)
    corners = CORNERS.to(s.device)
    idx = base.long()[:, None, :] + corners  # (M, 8, 3)
    inside = ((idx >= 0) & (idx < r)).all(-1)
    w = torch.where(corners.bool(), frac, 1.0 - frac).prod(-1)  # (M, 8)
    found = level.find(linearize(batch[:, None].expand(-1, 8), idx.clamp(0, r - 1), r))
    ok = inside & (found >= 0)
    rows = torch.where(ok, found, torch.full_like(found, level.num_voxels))
    return rows, w * ok.to(s.dtype)


def _select_samples(coarse: torch.Tensor, fine: torch.Tensor | None, sel: torch.Tensor, n_samples: int) -> torch.Tensor:
    """Rows (.., k) of the samples `sel` (flat indices over rays x [coarse samples | fine samples]) from
    per-sample tensors (B, R, S_coarse, k) and (B, R, S_fine, k), read from the two sample sets directly
    instead of concatenating them (a full-size copy each)."""
    if fine is None:
        return coarse.reshape(-1, coarse.shape[-1]).index_select(0, sel)
    n_coarse = coarse.shape[-2]
    ray, j = sel // n_samples, sel % n_samples
    is_coarse = (j < n_coarse)[:, None]
    coarse_at = ray * n_coarse + j.clamp(max=n_coarse - 1)
    fine_at = ray * (n_samples - n_coarse) + (j - n_coarse).clamp(min=0)
    a, b = coarse.reshape(-1, coarse.shape[-1]), fine.reshape(-1, fine.shape[-1])
    return torch.where(is_coarse, a.index_select(0, coarse_at), b.index_select(0, fine_at))


def _select_hits(coarse: Hits, fine: Hits | None, sel: torch.Tensor, n_samples: int) -> Hits:
    """`_select_samples` of every field of the hits."""
    if fine is None:
        return coarse.map(lambda x: _select_samples(x, None, sel, n_samples))
    return Hits(*(_select_samples(a, b, sel, n_samples)
                  for a, b in zip(vars(coarse).values(), vars(fine).values(), strict=True)))


def _referenced_rows(ids: torch.Tensor, num_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows `ids` refer to (ascending) and `ids` renumbered into them, without sorting `ids`."""
    used = torch.zeros(num_rows, dtype=torch.bool, device=ids.device).index_fill_(0, ids, True)
    renumber = used.cumsum(0) - 1
    return used.nonzero().squeeze(-1), renumber.index_select(0, ids)


def _composite(
    table: torch.Tensor, ids: torch.Tensor, ray: torch.Tensor | None, weights: torch.Tensor, num_rays: int,
    bag_starts: torch.Tensor | None = None,
) -> torch.Tensor:
    """out[r] = sum over the samples i of ray r of weights[i] * table[ids[i]] -> (num_rays, C); `ray` sorted.

    One fused `embedding_bag` (bags = rays): no (samples, C) intermediate is materialised, unlike
    gather + multiply + `index_add` (50x slower on the CPU, forward and backward), and its backward handles
    repeated rows without atomics on one address. The sums run in fp32 whatever autocast made of the table.
    """
    if bag_starts is None:  # where each ray's samples start in the ray-sorted `ray`
        bag_starts = torch.searchsorted(ray, torch.arange(num_rays, device=ray.device, dtype=ray.dtype))
    with torch.autocast(table.device.type, enabled=False):
        return nn.functional.embedding_bag(ids, table.float(), bag_starts, mode="sum",
                                           per_sample_weights=weights.float())


@dataclass
class VoxelField:
    """The scene representation: refined coarse level and pooled fine level; last channel = density logit."""

    coarse: SparseVoxels
    fine: SparseVoxels
    radius: tuple[float, float, float]
    logit_clamp: float = 30.0
    nested: bool | None = None
    """True when the caller knows the levels are nested (`voxelize`'s always are, and DistillNeRFModel says
    so): `_is_nested`'s check, a host sync, is then skipped; None = check when first needed."""
    _logits: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _features: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _nested: bool | None = field(default=None, repr=False)  # computed when first needed (see _is_nested)
    _parent_rows: torch.Tensor | None = field(default=None, repr=False)  # see _fine_parent_rows
    _coarse_grid: torch.Tensor | None = field(default=None, repr=False)  # see _coarse_rows
    _fine_keys: torch.Tensor | None = field(default=None, repr=False)  # the fine keys in key_dtype

    def __post_init__(self) -> None:
        # Density lookups read one column: a contiguous (V,) table keeps that gather and its backward small.
        for name, level in (("fine", self.fine), ("coarse", self.coarse)):
            self._logits[name] = level.features[:, -1].contiguous()
            self._features[name] = level.features[:, :-1]

    def _is_nested(self) -> bool:
        """True when every fine voxel's parent is an occupied coarse voxel (always so for `voxelize`, which
        pools both levels from the same points) and the level ratio is a power of two. Then a point's
        coarse voxel is exactly its fine voxel // ratio (scaling a float by 2^k is exact), and a point
        outside the occupied coarse voxels cannot hit the fine level: nearest lookups search the fine
        level only for coarse hits, with results identical to searching both levels everywhere."""
        return self.has_nearest_rows() and bool((self._fine_parent_rows() < self.coarse.num_voxels).all())

    def _fine_parent_rows(self) -> torch.Tensor:
        """Each fine voxel's parent row in the coarse level, Vc where that coarse voxel is empty (cached)."""
        if self._parent_rows is None:
            fine, coarse = self.fine, self.coarse
            ratio = fine.resolution // coarse.resolution
            parents = coarse.find(linearize(fine.batch, fine.coords // ratio, coarse.resolution))
            self._parent_rows = torch.where(parents >= 0, parents, torch.full_like(parents, coarse.num_voxels))
        return self._parent_rows

    @property
    def feature_dim(self) -> int:
        return self._features["fine"].shape[-1] + self._features["coarse"].shape[-1]

    def locate(self, points: torch.Tensor, batch: torch.Tensor, lookup: str = "nearest") -> Hits:
        """Voxel rows and weights of ego points (M, 3) belonging to batch elements (M,)."""
        if lookup == "nearest":
            if self._nested is None:
                self._nested = self.has_nearest_rows() and (self.nested if self.nested is not None
                                                            else self._is_nested())
            if self._nested:
                return self._locate_nested(points, batch)
        s = contract(points, self.radius)
        fr, fw = _locate(self.fine, s, batch, lookup)
        cr, cw = _locate(self.coarse, s, batch, lookup)
        return Hits(fr, fw, cr, cw)

    def _locate_nested(self, points: torch.Tensor, batch: torch.Tensor) -> Hits:
        """Nearest lookup of ego points (M, 3) in nested levels: a point's coarse voxel is its fine voxel >> k
        (one dense-table read, see `_coarse_rows`), and the fine level is searched only under coarse hits
        (compacted with `nonzero` where that pays, else searched everywhere and masked: no host sync)."""
        fine, coarse = self.fine, self.coarse
        dtype = key_dtype(fine.batch_size, fine.resolution)
        fine_idx = contracted_voxel_index(points, self.radius, fine.resolution, dtype)
        shift = (fine.resolution // coarse.resolution).bit_length() - 1  # nested: the ratio is a power of two
        crow = self._coarse_rows(batch, fine_idx >> shift)  # >>: 6x cheaper than //
        coarse_hit = crow < coarse.num_voxels
        num_fine = fine.num_voxels
        if compaction_pays(self._logits["fine"]):
            under = coarse_hit.nonzero().squeeze(-1)
            frow = torch.full_like(crow, num_fine)
            if under.numel() and num_fine:
                keys = linearize(batch.index_select(0, under).to(dtype), fine_idx.index_select(0, under),
                                 fine.resolution)
                frow.index_copy_(0, under, self._find_fine(keys))
        else:
            frow = self._find_fine(linearize(batch.to(dtype), fine_idx, fine.resolution))
            frow = torch.where(coarse_hit, frow, torch.full_like(frow, num_fine))
        dt = points.dtype
        return Hits(frow[:, None], (frow < num_fine).to(dt)[:, None], crow[:, None], coarse_hit.to(dt)[:, None])

    def _find_fine(self, keys: torch.Tensor) -> torch.Tensor:
        """Fine rows (int64) of keys in `key_dtype`, num_voxels where not occupied."""
        n = self.fine.num_voxels
        if n == 0:
            return torch.full(keys.shape, 0, dtype=torch.long, device=keys.device)
        if self._fine_keys is None:
            self._fine_keys = self.fine.keys.to(keys.dtype)
        pos = torch.searchsorted(self._fine_keys, keys).clamp_(max=n - 1)
        found = self._fine_keys.index_select(0, pos) == keys
        return pos.masked_fill_(~found, n)

    def _coarse_rows(self, batch: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Coarse rows (int64) of voxel indices (M, 3), num_voxels where empty: one read of a dense table of
        every coarse voxel's row (built once per field, B x r^3 int64) instead of a binary search, when that
        table stays small (<= 32 MB); else the sorted-key search."""
        coarse = self.coarse
        r, n = coarse.resolution, coarse.num_voxels
        cells = coarse.batch_size * r**3
        if cells > DENSE_GRID_CELLS:
            found = coarse.find(linearize(batch, idx.long(), r))
            return found.masked_fill_(found < 0, n)
        if self._coarse_grid is None:
            self._coarse_grid = torch.full((cells,), n, dtype=torch.long, device=idx.device).index_copy_(
                0, coarse.keys, torch.arange(n, device=idx.device))
        key = linearize(batch.to(idx.dtype), idx, r) if coarse.batch_size > 1 else linearize_one(idx, r)
        return self._coarse_grid.index_select(0, key)

    def _level_density(self, name: str, rows: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Density of one level (mass-scaled) and its occupied mass."""
        if w.shape[-1] == 1 and compaction_pays(self._logits[name]):
            # Nearest: weights are exactly 0 or 1, so the general formula below reduces to exp(clamp(logit) - 1)
            # at hits and 0 elsewhere; computing it at the hits only gives the same bits with less work.
            mass = w.squeeze(-1)
            hits = hit_positions(rows, self._logits[name].shape[0])
            logit = self._logits[name].index_select(0, rows.reshape(-1).index_select(0, hits))
            logit = logit.to(torch.promote_types(logit.dtype, w.dtype))  # as w * logit promotes below
            dens = logits_to_density(soft_clamp(logit, self.logit_clamp))
            out = dens.new_zeros(rows.numel()).index_copy(0, hits, dens)
            return out.view(mass.shape), mass
        mass = w.sum(-1)
        logit = (w * gather_rows(self._logits[name], rows)).sum(-1) / mass.clamp_min(1e-8)
        return mass * logits_to_density(soft_clamp(logit, self.logit_clamp)), mass

    def density(self, hits: Hits) -> torch.Tensor:
        """Fine density where occupied, else coarse, else 0 (blended by occupied mass for trilinear)."""
        fine, fine_mass = self._level_density("fine", hits.fine_rows, hits.fine_w)
        coarse, _ = self._level_density("coarse", hits.coarse_rows, hits.coarse_w)
        if hits.fine_w.shape[-1] == 1:  # nearest: mass 0 or 1, so the blend below is exactly this choice
            return torch.where(fine_mass > 0, fine, coarse)
        return fine + (1.0 - fine_mass) * coarse

    def features(self, hits: Hits) -> torch.Tensor:
        """[fine | coarse] features (.., C): the occupied corners' weighted mean per level, zero where empty.

        Normalising by the occupied mass keeps a surface sample's feature intact even when only part of
        its trilinear neighbourhood is occupied (its density is already opaque there).
        """
        parts = []
        for name, rows, w in (("fine", hits.fine_rows, hits.fine_w), ("coarse", hits.coarse_rows, hits.coarse_w)):
            acc = (w[..., None] * gather_rows(self._features[name], rows)).sum(-2)
            parts.append(acc / w.sum(-1, keepdim=True).clamp_min(1e-8))
        return torch.cat(parts, dim=-1)

    def has_nearest_rows(self) -> bool:
        """Whether a nearest sample's [fine | coarse] features are one of Vf + Vc + 1 rows (`nearest_feature_rows`):
        true when the level ratio is a power of two, since only then is a point's coarse voxel exactly its fine
        voxel's parent (see `_is_nested`). Per-sample work (gathers, the feature head) then becomes per-row."""
        ratio = self.fine.resolution // self.coarse.resolution
        return self.fine.resolution % self.coarse.resolution == 0 and ratio & (ratio - 1) == 0

    def nearest_feature_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """[fine | coarse] features (len(rows), C) of rows of the nearest-lookup table (`has_nearest_rows`):
        row v < Vf is fine voxel v with its parent coarse voxel, row Vf + u is coarse voxel u alone (zero fine
        part), row Vf + Vc is a miss (zeros); `nearest_feature_ids` maps hits to rows."""
        num_fine = self.fine.num_voxels
        is_fine = rows < num_fine
        parent = self._fine_parent_rows().index_select(0, rows.clamp(max=num_fine - 1)) if num_fine else rows
        coarse_rows = torch.where(is_fine, parent, rows - num_fine)
        fine_rows = torch.where(is_fine, rows, torch.full_like(rows, num_fine))
        return torch.cat([gather_rows(self._features["fine"], fine_rows),
                          gather_rows(self._features["coarse"], coarse_rows)], dim=-1)

    def nearest_feature_ids(self, hits: Hits) -> torch.Tensor:
        """Rows of `nearest_feature_rows` for nearest-lookup hits (.., 1) -> (..)."""
        fine_rows, coarse_rows = hits.fine_rows[..., 0], hits.coarse_rows[..., 0]
        num_fine = self.fine.num_voxels
        return torch.where(fine_rows < num_fine, fine_rows, coarse_rows + num_fine)

    def query(
        self, points: torch.Tensor, batch: torch.Tensor, lookup: str = "nearest"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Density (M,) and features (M, C) at ego points (M, 3)."""
        hits = self.locate(points, batch, lookup)
        return self.density(hits), self.features(hits)


@dataclass
class RenderOutput:
    """Per target camera, at render resolution (h, w): depth is camera z-depth."""

    depth: torch.Tensor  # (B, M, h, w)
    opacity: torch.Tensor  # (B, M, h, w)
    features: torch.Tensor | None  # (B, M, C, h, w) composited field features; None if not asked for
    head_features: torch.Tensor | None  # (B, M, D, h, w) composited per-sample head output
    weights: torch.Tensor  # (B, M, h, w, S) sample weights in depth order (entropy loss)


class VolumeRenderer(nn.Module):
    """Coarse samples at the depth-bin midpoints + fine samples around the highest-weight coarse sample."""

    def __init__(self, cfg: RendererConfig, bin_edges: torch.Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("bin_edges", bin_edges.clone(), persistent=False)

    def render_hw(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        s = self.cfg.render_scale
        return max(1, round(image_hw[0] * s)), max(1, round(image_hw[1] * s))

    def forward(
        self,
        field: VoxelField,
        targets: CameraRig,
        sample_head: Callable[[torch.Tensor], torch.Tensor] | None = None,
        features: bool = True,
    ) -> RenderOutput:
        """Render every target camera at `render_scale` of its image size.

        `features=False` renders density only (depth, opacity, weights): no feature lookups, no head.
        """
        h, w = self.render_hw(targets.image_hw)
        rays = targets.resized((h, w)).rays()
        b, m = targets.batch_size, targets.num_cameras
        origins = rays.origins.reshape(b, -1, 3)
        dirs = rays.directions.reshape(b, -1, 3)
        chunks = []
        step = max(1, self.cfg.chunk_rays // b if not torch.is_grad_enabled() else origins.shape[1])
        for start in range(0, origins.shape[1], step):
            sl = slice(start, start + step)
            chunks.append(self._render_rays(field, origins[:, sl], dirs[:, sl], sample_head, features))
        dist, opacity, feats, head, weights = (  # one chunk (most calls): no copy
            (torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]) if parts[0] is not None else None
            for parts in zip(*chunks, strict=True)
        )
        z = rays.z_per_distance.reshape(b, -1)

        def image(x: torch.Tensor) -> torch.Tensor:  # (B, R, C) -> (B, M, C, h, w)
            return x.view(b, m, h, w, -1).permute(0, 1, 4, 2, 3)

        return RenderOutput(
            depth=(dist * z).view(b, m, h, w),
            opacity=opacity.view(b, m, h, w),
            features=image(feats) if feats is not None else None,
            head_features=image(head) if head is not None else None,
            weights=weights.view(b, m, h, w, -1),
        )

    def _render_rays(
        self,
        field: VoxelField,
        origins: torch.Tensor,
        dirs: torch.Tensor,
        sample_head: Callable[[torch.Tensor], torch.Tensor] | None,
        features: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """Rays (B, R, 3) -> distance (B, R), opacity, features (B, R, C), head (B, R, D), weights (B, R, S)."""
        cfg = self.cfg
        b, r, _ = origins.shape
        edges = self.bin_edges
        lo, widths = edges[:-1], edges[1:] - edges[:-1]
        if self.training and cfg.jitter:
            t_coarse = lo + widths * torch.rand(b, r, lo.numel(), device=origins.device, dtype=origins.dtype)
        else:
            t_coarse = (lo + 0.5 * widths).expand(b, r, -1)
        batch = torch.arange(b, device=origins.device).view(b, 1, 1)

        def locate(t: torch.Tensor) -> Hits:
            pts = (t[..., None] * dirs[:, :, None]).add_(origins[:, :, None])  # in place: a fresh temporary less
            hits = field.locate(pts.reshape(-1, 3), batch.expand_as(t).reshape(-1), cfg.lookup)
            return hits.map(lambda x: x.view(*t.shape, x.shape[-1]))

        hits = locate(t_coarse)
        density = field.density(hits)
        t_all = t_coarse
        hits_fine = None
        if cfg.fine_samples > 0:
            with torch.no_grad():
                w_coarse = march(density, widths.expand_as(density))
                best = torch.gather(t_coarse, -1, w_coarse.argmax(-1, keepdim=True))
                n = cfg.fine_samples
                offsets = torch.arange(n, device=origins.device, dtype=origins.dtype) - (n - 1) / 2
                t_fine = (best + offsets * cfg.fine_sample_spacing).clamp(edges[0], edges[-1])
            hits_fine = locate(t_fine)
            t_all = torch.cat([t_coarse, t_fine], -1)
            density = torch.cat([density, field.density(hits_fine)], -1)
        t_sorted, order = torch.sort(t_all, dim=-1)
        d_sorted = torch.gather(density, -1, order)
        deltas = torch.cat([t_sorted[..., 1:] - t_sorted[..., :-1], widths[-1:].expand(b, r, 1)], -1)
        w_sorted = march(d_sorted, deltas)
        dist = expected_depth(w_sorted, t_sorted, max_depth=cfg.max_depth)
        opacity = w_sorted.sum(-1)
        if not features:
            return dist, opacity, None, None, w_sorted
        # Features only where the weight matters; weights mapped back to the unsorted sample order.
        weights = torch.zeros_like(w_sorted).scatter(-1, order, w_sorted).reshape(-1)
        n_samples = t_all.shape[-1]
        nearest_rows = cfg.lookup == "nearest" and field.has_nearest_rows()
        if nearest_rows and not compaction_pays(field._logits["fine"]):
            # No backward and no compaction (a GPU forward): every sample and every table row, the weights
            # below the threshold zeroed (the same sums), so no data-dependent size and no host sync.
            return (dist, opacity, *self._composite_all_rows(field, hits, hits_fine, weights, n_samples, b, r,
                                                              sample_head), w_sorted)
        sel = (weights > cfg.feature_weight_threshold).nonzero().squeeze(-1)
        ray_idx = sel // n_samples
        if nearest_rows:
            # Features and the head per referenced table row, not per sample (same values; far fewer rows).
            ids_fine = None if hits_fine is None else field.nearest_feature_ids(hits_fine)[..., None]
            ids = _select_samples(field.nearest_feature_ids(hits)[..., None], ids_fine, sel, n_samples).squeeze(-1)
            rows, ids = _referenced_rows(ids, field.fine.num_voxels + field.coarse.num_voxels + 1)
            values = field.nearest_feature_rows(rows)
        else:
            values = field.features(_select_hits(hits, hits_fine, sel, n_samples))
            ids = torch.arange(sel.numel(), device=sel.device)
        if sample_head is not None:
            values = torch.cat([values, sample_head(values).to(values.dtype)], dim=-1)
        composited = _composite(values, ids, ray_idx, weights.index_select(0, sel), b * r)
        feat_img, head = composited.split([field.feature_dim, values.shape[-1] - field.feature_dim], dim=-1)
        head = head.reshape(b, r, -1) if sample_head is not None else None
        return dist, opacity, feat_img.view(b, r, -1), head, w_sorted

    def _composite_all_rows(
        self, field: VoxelField, hits: Hits, hits_fine: Hits | None, weights: torch.Tensor, n_samples: int,
        b: int, r: int, sample_head: Callable[[torch.Tensor], torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features (B, R, C) and head (B, R, D) composited over all samples from all nearest-table rows."""
        ids = field.nearest_feature_ids(hits)
        if hits_fine is not None:
            ids = torch.cat([ids, field.nearest_feature_ids(hits_fine)], dim=-1)
        ids = ids.reshape(-1)
        table_rows = field.fine.num_voxels + field.coarse.num_voxels + 1
        values = field.nearest_feature_rows(torch.arange(table_rows, device=ids.device))
        if sample_head is not None:
            values = torch.cat([values, sample_head(values).to(values.dtype)], dim=-1)
        kept = torch.where(weights > self.cfg.feature_weight_threshold, weights, torch.zeros_like(weights))
        bag_starts = torch.arange(0, b * r * n_samples, n_samples, device=ids.device)  # n samples per ray
        composited = _composite(values, ids, None, kept, b * r, bag_starts)
        feat_img, head = composited.split([field.feature_dim, values.shape[-1] - field.feature_dim], dim=-1)
        return feat_img.view(b, r, -1), head.reshape(b, r, -1) if sample_head is not None else None
