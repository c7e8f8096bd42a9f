"""Occupancy queries: density and features of the voxel field on an arbitrary ego-frame grid.

The paper evaluates occupancy on a 0.5 m grid over x, y in [-40, 40] m and z in [-5, 3] m with a density
threshold of 0.1; semantic occupancy compares the returned (foundation-space) voxel features with CLIP
text embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from distillnerf_core.model.distillnerf import DistillNeRFModel, SceneEncoding


@dataclass(frozen=True)
class OccupancyConfig:
    """The ego-frame grid occupancy is queried on (the paper's evaluation grid by default)."""

    x_range: tuple[float, float] = (-40.0, 40.0)
    """Ego x extent (m), forward."""
    y_range: tuple[float, float] = (-40.0, 40.0)
    """Ego y extent (m), left."""
    z_range: tuple[float, float] = (-5.0, 3.0)
    """Ego z extent (m), up."""
    voxel_size: float = 0.5
    """Cell edge (m); also the resolution of bird's-eye grids."""
    threshold: float = 0.1
    """A cell is occupied where the field's density exceeds this."""

    def validate(self) -> None:
        """Reject empty ranges and non-positive sizes, naming the field."""
        for name in ("x_range", "y_range", "z_range"):
            low_high = getattr(self, name)
            if len(low_high) != 2 or not low_high[0] < low_high[1]:
                raise ValueError(f"occupancy {name} must be [low, high] with low < high, got {list(low_high)}")
        if self.voxel_size <= 0:
            raise ValueError(f"occupancy voxel_size must be positive, got {self.voxel_size}")


@dataclass
class OccupancyVolume:
    """Dense density grid (X, Y, Z) plus the occupied cells' centres (V, 3), density (V,), features (V, F)."""

    density_grid: torch.Tensor
    occupied_index: torch.Tensor  # (V, 3) integer cell indices
    centers: torch.Tensor
    density: torch.Tensor
    features: torch.Tensor
    origin: tuple[float, float, float]  # centre of cell (0, 0, 0)
    voxel_size: float
    threshold: float


def grid_centers(
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    z_range: tuple[float, float],
    voxel_size: float,
) -> torch.Tensor:
    """Cell centres (X, Y, Z, 3) of a regular grid covering the given ranges."""
    axes = [torch.arange(lo + voxel_size / 2, hi, voxel_size) for lo, hi in (x_range, y_range, z_range)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


@torch.no_grad()
def query_occupancy(
    model: DistillNeRFModel,
    scene: SceneEncoding,
    batch_index: int = 0,
    config: OccupancyConfig = OccupancyConfig(),
    lookup: str | None = None,
    chunk: int = 262144,
) -> OccupancyVolume:
    """Density on the grid of `config`; occupied cells (density > threshold) get features.

    Features are the feature head's foundation-space output when the head is enabled, else the raw field
    features. `lookup` defaults to the renderer's setting so occupancy matches what is rendered.
    """
    mode = lookup or model.config.renderer.lookup
    device = scene.field.coarse.features.device
    centers = grid_centers(config.x_range, config.y_range, config.z_range, config.voxel_size).to(device)
    flat = centers.reshape(-1, 3)
    batch = torch.full((flat.shape[0],), batch_index, dtype=torch.long, device=device)
    density = torch.cat(
        [
            scene.field.density(scene.field.locate(flat[i : i + chunk], batch[i : i + chunk], mode))
            for i in range(0, flat.shape[0], chunk)
        ]
    )
    occupied = (density > config.threshold).nonzero().squeeze(-1)
    feats = scene.field.features(scene.field.locate(flat[occupied], batch[occupied], mode))
    if model.feature_head is not None:
        feats = model.feature_head(feats)
    grid = density.view(centers.shape[:3])
    index = torch.stack(torch.unravel_index(occupied, grid.shape), dim=-1)
    return OccupancyVolume(
        grid,
        index,
        flat[occupied],
        density[occupied],
        feats,
        tuple(float(c) for c in centers[0, 0, 0]),
        config.voxel_size,
        config.threshold,
    )
