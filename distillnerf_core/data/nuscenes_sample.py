"""`distillnerf-nusc-sample`: turn the partial real keyframe (data/nuscenes_sample) into a devkit-loadable dataroot.

The source has the sensor, calibration, ego-pose, sample_data, sample and scene tables of one keyframe
of scene-0061 but lacks `log`, `map`, `instance` and `sample_annotation` (and the prev/next links the
devkit and loaders walk). This writes OUT/<version>/ with all 13 tables (annotation tables empty, a
placeholder all-background map mask, prev/next = "" since the dataroot holds one keyframe, scene
first/last sample = that keyframe) and copies (or symlinks, `--link`) the sample files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from distillnerf_core.data.bundled import bundled_data

REQUIRED = ("sensor", "calibrated_sensor", "ego_pose", "sample_data", "sample", "scene", "category", "attribute",
            "visibility")
MAP_FILENAME = "maps/placeholder_semantic_prior.png"
# scene-0061 (log n015-2018-07-24-11-22-45+0800) was recorded in Singapore One North.
LOG_INFO = {"vehicle": "n015", "date_captured": "2018-07-24", "location": "singapore-onenorth"}


def find_version(src: Path) -> str:
    versions = sorted(p.name for p in src.glob("v1.0-*") if p.is_dir())
    if not versions:
        raise FileNotFoundError(f"no v1.0-* table folder under {src}")
    return versions[0]


def build_dataroot(src: str | Path | None = None, out: str | Path = "nuscenes_sample_root", link: bool = False,
                   version: str | None = None) -> Path:
    """Write the devkit-loadable dataroot (from `src`, default the bundled keyframe); returns its path.
    Existing files in `out` are overwritten."""
    src, out = Path(src) if src is not None else bundled_data("nuscenes_sample"), Path(out)
    version = version or find_version(src)
    tables = {}
    for name in REQUIRED:
        path = src / version / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"missing nuScenes table: {path}")
        tables[name] = json.loads(path.read_text())
    for extra in ("log", "map", "instance", "sample_annotation"):
        path = src / version / f"{extra}.json"
        if path.is_file():
            tables[extra] = json.loads(path.read_text())

    samples = tables["sample"]
    for rec in samples + tables["sample_data"]:
        rec.setdefault("prev", "")
        rec.setdefault("next", "")
    by_scene: dict[str, list[dict]] = {}
    for s in sorted(samples, key=lambda r: r["timestamp"]):
        by_scene.setdefault(s["scene_token"], []).append(s)
    for scene in tables["scene"]:
        chain = by_scene.get(scene["token"], [])
        if not chain:
            raise ValueError(f"scene {scene['name']} has no sample in {src / version / 'sample.json'}")
        scene["first_sample_token"], scene["last_sample_token"] = chain[0]["token"], chain[-1]["token"]
        scene["nbr_samples"] = len(chain)  # samples in THIS dataroot (scene-0061 has 39 in nuScenes)
    if "log" not in tables:
        tables["log"] = []
        for scene in tables["scene"]:
            sd_names = [sd["filename"] for sd in tables["sample_data"]]
            logfile = Path(sd_names[0]).name.split("__")[0] if sd_names else scene["log_token"]
            tables["log"].append({"token": scene["log_token"], "logfile": logfile, **LOG_INFO})
    if "map" not in tables:
        tables["map"] = [{"token": "placeholder-map-" + tables["log"][0]["token"][:8],
                          "log_tokens": [log["token"] for log in tables["log"]], "category": "semantic_prior",
                          "filename": MAP_FILENAME}]
    tables.setdefault("instance", [])
    tables.setdefault("sample_annotation", [])

    (out / version).mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        (out / version / f"{name}.json").write_text(json.dumps(rows, indent=1))
    for rec in tables["map"]:
        mask = out / rec["filename"]
        if not mask.exists():
            mask.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((32, 32), np.uint8)).save(mask)
    for sd in tables["sample_data"]:
        source = src / sd["filename"]
        if not source.is_file():
            raise FileNotFoundError(f"missing sample file: {source}")
        target = out / sd["filename"]
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() or target.is_symlink():
            target.unlink()
        if link:
            os.symlink(source.resolve(), target)
        else:
            shutil.copyfile(source, target)
    return out
