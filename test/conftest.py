"""Test setup shared by every test: `REPO` (the repository root), and every ROS test on loopback (Fast DDS
profile + LOCALHOST discovery) in its own domain. `test/` is on sys.path (pytest.ini), so tests import
`REPO` with `from conftest import REPO` and the helpers (`ros_helpers`, `train_helpers`) by name.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(REPO / "config" / "fastdds_loopback.xml")
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# One domain per pytest run, so concurrent runs on one machine never hear each other (ids 10..99).
os.environ.setdefault("ROS_DOMAIN_ID", str(10 + os.getpid() % 90))
