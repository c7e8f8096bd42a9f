"""`NuScenes`: the JSON tables of a nuScenes-format dataroot, indexed by token (see the package docstring)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TABLES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose", "log",
          "scene", "sample", "sample_data", "sample_annotation", "map")


class NuScenes:
    def __init__(self, version: str = "v1.0-mini", dataroot: str = ".", verbose: bool = False) -> None:
        folder = Path(dataroot) / version
        if not folder.is_dir():
            raise AssertionError(f"Database version not found: {folder}")
        self.version, self.dataroot = version, str(dataroot)
        self._index: dict[str, dict[str, dict[str, Any]]] = {}
        for table in TABLES:
            rows = json.loads((folder / f"{table}.json").read_text())
            setattr(self, table, rows)
            self._index[table] = {row["token"]: row for row in rows}
        # The devkit's reverse index: sample_data gets channel / modality, each sample its keyframe data by channel.
        for sample in self.sample:
            sample["data"], sample["anns"] = {}, []
        for sd in self.sample_data:
            sensor = self.get("sensor", self.get("calibrated_sensor", sd["calibrated_sensor_token"])["sensor_token"])
            sd["channel"], sd["sensor_modality"] = sensor["channel"], sensor["modality"]
            if sd["is_key_frame"]:
                self.get("sample", sd["sample_token"])["data"][sensor["channel"]] = sd["token"]
        for ann in self.sample_annotation:
            self.get("sample", ann["sample_token"])["anns"].append(ann["token"])

    def get(self, table: str, token: str) -> dict[str, Any]:
        return self._index[table][token]
