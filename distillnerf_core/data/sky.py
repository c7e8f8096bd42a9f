"""Sky masks from the segmenter (teachers/segmenter.py), for the sky depth target in training and fitting.

The reference gives the pixels a segmenter calls sky a depth of 115 m in its dense-depth losses. Here a sky
mask comes from one of two sources:

- a segmenter feature cache of the dataroot (`distillnerf-cache-features --teacher segmenter`, DATAROOT/
  features/<name>/ with a manifest whose teacher kind is "segmenter"): its features start with the class
  log-probabilities, so argmax over those channels == SKY_CLASS is sky (`sky_from_features`);
- the segmenter run on the images themselves (`segment_sky`, what `distillnerf-fit-scene` does without a cache).

`resolve_sky_cache` turns a setting into a cache: "auto" = the dataroot's segmenter cache when it has one (none:
no sky mask, nothing else changes), "none" / None = no sky mask, anything else names a cache (a name under
DATAROOT/features/ or a directory) that must exist and must be a segmenter cache.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

SKY_SETTINGS = ("auto", "none")  # besides a cache name / directory


def _segmenter_constants() -> tuple[int, int]:
    """(number of classes, sky class id) of the segmenter (imported late: torch model code)."""
    from distillnerf_core.teachers.segmenter import CLASS_NAMES, SKY_CLASS

    return len(CLASS_NAMES), SKY_CLASS


def _teacher_kind(cache: Path) -> str | None:
    from distillnerf_core.teachers.cache import read_manifest

    teacher = read_manifest(cache)["teacher"]
    return teacher.get("kind") if isinstance(teacher, dict) else None


def find_segmenter_cache(dataroot: str | Path) -> Path | None:
    """The dataroot's segmenter feature cache (DATAROOT/features/*/ whose manifest's teacher kind is "segmenter"),
    None when it has none. With several, the first by name (logged; name one with the setting to choose)."""
    from distillnerf_core.teachers.cache import FEATURES_DIR, MANIFEST

    root = Path(dataroot) / FEATURES_DIR
    if not root.is_dir():
        return None
    found = [d for d in sorted(root.iterdir()) if (d / MANIFEST).is_file() and _teacher_kind(d) == "segmenter"]
    if len(found) > 1:
        logger.info("%s: %d segmenter caches (%s); the sky mask comes from %s", root, len(found),
                    ", ".join(d.name for d in found), found[0].name)
    return found[0] if found else None


def resolve_sky_cache(dataroot: str | Path, setting: str | Path | None) -> Path | None:
    """The segmenter cache a sky setting means (see the module docstring); a named cache that is missing is a
    FileNotFoundError, one of another teacher a ValueError, both naming it."""
    if setting is None or str(setting) == "none":
        return None
    if str(setting) == "auto":
        return find_segmenter_cache(dataroot)
    from distillnerf_core.teachers.cache import read_manifest, resolve_cache

    cache = resolve_cache(dataroot, setting)
    read_manifest(cache)  # FileNotFoundError naming the manifest and how to make it
    kind = _teacher_kind(cache)
    if kind != "segmenter":
        raise ValueError(f"sky mask cache {cache} holds {kind!r} features, not the segmenter's (make one with "
                         "distillnerf-cache-features --teacher segmenter, or use 'auto' / 'none')")
    return cache


def sky_from_features(features: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(..., h, w) bool: sky where the class log-probabilities (the first channels of segmenter features
    (..., D, H, W)), bilinearly resized to `hw`, have their argmax at SKY_CLASS."""
    from distillnerf_core.teachers.cache import resize_features

    classes, sky = _segmenter_constants()
    if features.shape[-3] < classes:
        raise ValueError(f"segmenter features have {features.shape[-3]} channels, fewer than its {classes} classes")
    logp = resize_features(features[..., :classes, :, :].float(), tuple(hw))
    return logp.argmax(dim=-3) == sky


def segment_sky(images: Sequence[np.ndarray], hw: tuple[int, int], width: int = 1024,
                device: str = "cpu") -> torch.Tensor:
    """(N, h, w) bool sky masks of uint8 (H, W, 3) images, the segmenter run at `width` (aspect kept; never wider
    than the image: small images are not upsampled for it) and its labels resized to `hw`."""
    from distillnerf_core.teachers.segmenter import SKY_CLASS, load_segmenter, segmenter_input_hw

    seg = load_segmenter(device=device)
    masks = []
    for image in images:  # one at a time: cameras of a rig may differ in size
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"segment_sky takes uint8 (H, W, 3) images, got {image.dtype} {image.shape}")
        in_hw = segmenter_input_hw(tuple(image.shape[:2]), width=max(64, min(int(width), image.shape[1])))
        masks.append(seg.labels([image], hw=in_hw, out_hw=tuple(hw))[0] == SKY_CLASS)
    return torch.stack(masks)
