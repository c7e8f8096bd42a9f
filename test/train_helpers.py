"""Shared by the training / evaluation tests: a tiny synthetic dataroot for the `tiny` model (32x64 input)."""

from __future__ import annotations

from pathlib import Path

from distillnerf_core.data.synthetic.export import VERSION, write_dataroot
from distillnerf_core.data.synthetic.world import VoxelSpec

__all__ = ["VERSION", "make_tiny_dataroot"]


def make_tiny_dataroot(path: Path, scenes: int = 1, frames: int = 3, seed: int = 3) -> Path:
    write_dataroot(path, scenes=scenes, frames=frames, seed=seed, width=64, height=32,
                   voxel_spec=VoxelSpec(voxel_size=1.6), progress=False, threads=1)
    return path
