"""Where the data shipped with the package lives: the source tree, or a ROS install's share folder.

A source checkout (and `pip install -e .`) has it in `<repo>/data/`; `colcon build` installs it to
`<prefix>/share/distillnerf_ros/data/`, found through AMENT_PREFIX_PATH without importing ROS (this
library stays ROS-free).
"""

from __future__ import annotations

import os
from pathlib import Path

SOURCE_DATA = Path(__file__).resolve().parents[2] / "data"
SHARE_SUBDIR = Path("share") / "distillnerf_ros" / "data"


def bundled_data(name: str, source_data: Path = SOURCE_DATA, prefixes: str | None = None) -> Path:
    """The folder `name` of the shipped data (e.g. "nuscenes_sample"); FileNotFoundError lists where it looked."""
    prefixes = os.environ.get("AMENT_PREFIX_PATH", "") if prefixes is None else prefixes
    candidates = [source_data / name] + [Path(p) / SHARE_SUBDIR / name for p in prefixes.split(os.pathsep) if p]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"bundled data '{name}' not found; looked in {', '.join(map(str, candidates))} "
                            "(a source checkout has it in data/, a ROS install in share/distillnerf_ros/data/)")
