"""Read the sensor records of a nuScenes-format dataroot straight from its JSON tables.

Needs only the sensor, calibrated_sensor, ego_pose, sample_data, sample and scene tables, so it also reads
partial dataroots (like the
bundled keyframe, which nuscenes-devkit cannot load as is). Full dataset loading goes through the devkit
(datasets.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distillnerf_core.geometry import make_transform

# The six nuScenes cameras in the dataset's own order (front, then clockwise seen from above).
NUSCENES_CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT",
                    "CAM_BACK_RIGHT")
REQUIRED_TABLES = ("sensor", "calibrated_sensor", "ego_pose", "sample_data", "sample", "scene")


@dataclass(frozen=True)
class SensorRecord:
    """One sample_data row with its calibration and the ego pose at its own timestamp."""

    token: str
    sample_token: str
    scene_name: str
    channel: str  # e.g. CAM_FRONT, LIDAR_TOP
    modality: str  # camera, lidar, radar
    path: Path  # absolute path of the data file
    timestamp_us: int
    is_key_frame: bool
    ego_from_sensor: np.ndarray  # 4x4 (camera frames are optical: z forward, x right, y down)
    global_from_ego: np.ndarray  # 4x4 at timestamp_us
    intrinsics: np.ndarray | None  # 3x3 for cameras
    width: int
    height: int


def find_version_dir(dataroot: Path, version: str | None = None) -> Path:
    """The table folder (e.g. v1.0-mini) of a dataroot; with no version given there must be exactly one."""
    dataroot = Path(dataroot)
    if version is not None:
        folder = dataroot / version
        if not folder.is_dir():
            raise FileNotFoundError(f"nuScenes version folder {folder} does not exist")
        return folder
    candidates = sorted(p for p in dataroot.glob("v1.0-*") if p.is_dir())
    if len(candidates) != 1:
        raise FileNotFoundError(f"expected one v1.0-* table folder in {dataroot}, found"
                                f" {[p.name for p in candidates]}; pass the version explicitly")
    return candidates[0]


def _load_table(folder: Path, name: str) -> dict[str, dict]:
    path = folder / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"nuScenes table {path} is missing")
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"nuScenes table {path} is not valid JSON: {error}") from error
    return {row["token"]: row for row in rows}


def data_file_path(dataroot: Path, row: dict) -> Path:
    """dataroot / the row's `filename`, which must be a relative path that stays inside the dataroot (checked
    lexically, so a dataroot whose folders are symlinks still works); ValueError otherwise."""
    filename = row.get("filename")
    if not isinstance(filename, str) or not filename.strip():
        raise ValueError(f"sample_data {row.get('token')} has no filename")
    relative = Path(os.path.normpath(filename))
    if relative.is_absolute() or relative.parts[:1] == ("..",):
        raise ValueError(f"data file '{filename}' of sample_data {row.get('token')} lies outside the dataroot")
    return dataroot / relative


def load_sensor_records(dataroot: str | Path, version: str | None = None, scenes: list[str] | None = None
                        ) -> list[SensorRecord]:
    """sample_data rows (keyframes and sweeps) as SensorRecords in timestamp order, optionally only those of
    the named scenes; every selected data file must exist."""
    dataroot = Path(dataroot).resolve()
    folder = find_version_dir(dataroot, version)
    tables = {name: _load_table(folder, name) for name in REQUIRED_TABLES}
    scene_names = {token: row["name"] for token, row in tables["scene"].items()}
    if scenes is not None:
        unknown = sorted(set(scenes) - set(scene_names.values()))
        if unknown:
            raise ValueError(f"unknown scene(s) {unknown} in {folder}; available: {sorted(scene_names.values())}")
    records = []
    for row in tables["sample_data"].values():
        scene_name = scene_names[tables["sample"][row["sample_token"]]["scene_token"]]
        if scenes is not None and scene_name not in scenes:
            continue
        calibration = tables["calibrated_sensor"][row["calibrated_sensor_token"]]
        sensor = tables["sensor"][calibration["sensor_token"]]
        pose = tables["ego_pose"][row["ego_pose_token"]]
        path = data_file_path(dataroot, row)
        if not path.is_file():
            raise FileNotFoundError(f"data file {path} of sample_data {row['token']} is missing")
        intrinsic = np.asarray(calibration.get("camera_intrinsic") or [], dtype=np.float64)
        records.append(SensorRecord(
            token=row["token"],
            sample_token=row["sample_token"],
            scene_name=scene_name,
            channel=sensor["channel"],
            modality=sensor["modality"],
            path=path,
            timestamp_us=int(row["timestamp"]),
            is_key_frame=bool(row["is_key_frame"]),
            ego_from_sensor=make_transform(calibration["rotation"], calibration["translation"]),
            global_from_ego=make_transform(pose["rotation"], pose["translation"]),
            intrinsics=intrinsic.reshape(3, 3) if intrinsic.size == 9 else None,
            width=int(row.get("width") or 0),
            height=int(row.get("height") or 0),
        ))
    return sorted(records, key=lambda record: record.timestamp_us)
