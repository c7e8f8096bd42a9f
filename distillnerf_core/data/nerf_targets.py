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

Every file is written atomically (distillnerf_core/checked_files.py); a scene's record lists its entries' size +
sha256 (`files`), and a rerun refits a scene whose record or entries do not verify. Reads are checked: the
manifest's keys and types, and each entry's arrays (no pickle; dtypes, shapes, V = the manifest's number of
offsets, finite values); a malformed file is a DataFileError naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from distillnerf_core.checked_files import DataFileError, load_npz, path_component, read_json, require

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
    manifest = read_json(path, "NeRF target manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataFileError(f"{path}: format_version {manifest.get('format_version')!r}, this code reads "
                            f"{FORMAT_VERSION}")
    require(manifest, "version", str, path)
    cameras = require(manifest, "cameras", list, path)
    settings = require(manifest, "settings", dict, path)
    scenes = require(manifest, "scenes", dict, path)
    offsets = require(settings, "offsets", list, path, "settings")
    if not all(isinstance(c, str) for c in cameras):
        raise DataFileError(f"{path}: key 'cameras' must be a list of channel names")
    if not offsets or not all(isinstance(o, list) and len(o) == 3 and all(
            isinstance(x, int | float) and not isinstance(x, bool) and np.isfinite(x) for x in o) for o in offsets):
        raise DataFileError(f"{path}: key 'settings.offsets' must be a non-empty list of finite [x, y, z]")
    for name, record in scenes.items():
        require(scenes, name, dict, path, "scenes")
        require(record, "quality", dict, path, f"scenes.{name}")
    return manifest


def entry_path(directory: str | Path, channel: str, sd_token: str) -> Path:
    """DIR/<CHANNEL>/<token>.npz; a channel or token from the tables that is not a plain name is refused."""
    return Path(directory) / path_component(channel, "camera channel") / \
        f"{path_component(sd_token, 'sample_data token')}.npz"


def virtual_cam2ego(cam2ego: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """(..., V, 4, 4) poses of cameras (..., 4, 4) shifted by offsets (V, 3) in their own optical frame."""
    shift = torch.eye(4, dtype=cam2ego.dtype, device=cam2ego.device).repeat(offsets.shape[0], 1, 1)
    shift[:, :3, 3] = offsets.to(cam2ego)
    return cam2ego.unsqueeze(-3) @ shift


ENTRY = {"depth": ("f", 2), "virtual_rgb": ("u", 4), "virtual_depth": ("f", 3), "offsets": ("f", 2)}


def load_entry(directory: str | Path, channel: str, sd_token: str, views: int | None = None
               ) -> dict[str, np.ndarray]:
    """depth (h, w), virtual_rgb (V, h, w, 3) uint8, virtual_depth (V, h, w), offsets (V, 3) of one image,
    checked (load_npz: no pickle, dtypes, dims, finite), with V = `views` (the manifest's offsets) when given."""
    path = entry_path(directory, channel, sd_token)
    if not path.is_file():
        raise FileNotFoundError(f"missing NeRF target: {path} (run distillnerf-fit-scene for this scene)")
    entry = load_npz(path, ENTRY, "NeRF target")
    h, w = entry["depth"].shape
    V = entry["offsets"].shape[0]
    expected = {"virtual_rgb": (V, h, w, 3), "virtual_depth": (V, h, w), "offsets": (V, 3)}
    for key, shape in expected.items():
        if entry[key].shape != shape:
            raise DataFileError(f"{path}: key {key!r} has shape {entry[key].shape}, expected {shape} (depth is"
                                f" {(h, w)}, offsets name {V} virtual cameras)")
    if entry["virtual_rgb"].dtype != np.uint8:
        raise DataFileError(f"{path}: key 'virtual_rgb' is {entry['virtual_rgb'].dtype}, expected uint8")
    if views is not None and V != views:
        raise DataFileError(f"{path}: key 'offsets' names {V} virtual cameras, the manifest's settings {views}")
    if (entry["depth"] < 0).any() or (entry["virtual_depth"] < 0).any():
        raise DataFileError(f"{path}: key 'depth' / 'virtual_depth' holds negative depths")
    return entry
