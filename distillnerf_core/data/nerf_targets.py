"""Per-scene NeRF targets: the on-disk cache `distillnerf-fit-scene` writes and the dataset reads.

Layout, next to the images of a nuScenes-format dataroot (DIR = DATAROOT/nerf/<name> by default):

    DIR/manifest.json                    format_version, version, cameras, settings (field, fit, render size,
                                         virtual offsets), scenes: {scene name: quality + sample count}
    DIR/scenes/<scene name>.json         written LAST for a scene: its quality (held-out LiDAR AbsRel, held-out
                                         frames' PSNR / LiDAR AbsRel, training PSNR), timings; a scene with
                                         this file is complete and skipped on a rerun (resumable per scene)
    DIR/<CHANNEL>/<sample_data token>.npz  per camera image: depth float32 (h, w) camera z-depth in m, 0 = sky
                                         (no surface); virtual_rgb uint8 (V, h, w, 3); virtual_depth float32
                                         (V, h, w) z-depth of the virtual cameras (0 = sky); offsets float32
                                         (V, 3) the virtual cameras' shifts in the camera's optical frame (m)

Virtual camera v of camera i sits at cam2ego_i @ translate(offsets[v]) (x right, y down, z forward: 1 m left is
(-1, 0, 0), 1 m up is (0, -1, 0)), same orientation and intrinsics. A missing entry is an error naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
NERF_DIR = "nerf"
DEFAULT_OFFSETS = ((-1.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, -1.0, 0.0))  # left, right, up (optical frame)


def resolve_targets(dataroot: str | Path, name_or_path: str | Path) -> Path:
    """A target directory: an existing directory holding a manifest, else DATAROOT/nerf/<name>."""
    path = Path(name_or_path)
    if (path / MANIFEST).is_file():
        return path
    return Path(dataroot) / NERF_DIR / str(name_or_path)


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a target directory; FileNotFoundError names it and says how to make it."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"NeRF target manifest not found: {path} (make it with distillnerf-fit-scene)")
    manifest = json.loads(path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {manifest.get('format_version')!r}, this code reads {FORMAT_VERSION}")
    return manifest


def entry_path(directory: str | Path, channel: str, sd_token: str) -> Path:
    return Path(directory) / channel / f"{sd_token}.npz"


def virtual_cam2ego(cam2ego: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """(..., V, 4, 4) poses of cameras (..., 4, 4) shifted by offsets (V, 3) in their own optical frame."""
    shift = torch.eye(4, dtype=cam2ego.dtype, device=cam2ego.device).repeat(offsets.shape[0], 1, 1)
    shift[:, :3, 3] = offsets.to(cam2ego)
    return cam2ego.unsqueeze(-3) @ shift


def load_entry(directory: str | Path, channel: str, sd_token: str) -> dict[str, np.ndarray]:
    """depth (h, w), virtual_rgb (V, h, w, 3) uint8, virtual_depth (V, h, w), offsets (V, 3) of one image."""
    path = entry_path(directory, channel, sd_token)
    if not path.is_file():
        raise FileNotFoundError(f"missing NeRF target: {path} (run distillnerf-fit-scene for this scene)")
    with np.load(path) as z:
        return {k: z[k] for k in ("depth", "virtual_rgb", "virtual_depth", "offsets")}
