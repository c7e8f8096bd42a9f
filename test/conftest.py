"""Test setup shared by every test: `REPO` (the repository root), the `tiny_checkpoint` and `session` (rclpy)
fixtures, the colcon build started in the background, and every ROS test on loopback (Fast DDS
profile + LOCALHOST discovery) in its own domain. `test/` is on sys.path (pytest.ini), so tests import
`REPO` with `from conftest import REPO` and the helpers (`ros_helpers`, `train_helpers`) by name.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(REPO / "config" / "fastdds_loopback.xml")
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# One domain per pytest run, so concurrent runs on one machine never hear each other (ids 10..99).
os.environ.setdefault("ROS_DOMAIN_ID", str(10 + os.getpid() % 90))


ROS_TEST_PATHS = (REPO / "test" / "ros", REPO / "test" / "test_launch.py")


def pytest_collection_modifyitems(config, items):
    """Every test under test/ros/ and in test/test_launch.py is marked `ros` (it uses rclpy / DDS); core tests
    that start rclpy carry `@pytest.mark.ros` themselves."""
    for item in items:
        path = Path(str(item.path))
        if any(path == root or root in path.parents for root in ROS_TEST_PATHS):
            item.add_marker(pytest.mark.ros)


@pytest.fixture(scope="session", autouse=True)
def colcon_build_in_background(request, tmp_path_factory):
    """test/test_colcon_build.py's `colcon build` starts with the session when any of its tests is selected (it
    runs beside the other tests instead of before its own), and is killed if still running at the end."""
    if any(Path(str(item.path)).name == "test_colcon_build.py" for item in request.session.items):
        from test_colcon_build import start_colcon_build, stop_colcon_build

        start_colcon_build(tmp_path_factory)
        yield
        stop_colcon_build()
    else:
        yield


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A randomly initialised `tiny` model saved as a checkpoint (safetensors + JSON)."""
    from distillnerf_core.model.distillnerf import DistillNeRFModel
    from distillnerf_core.training.checkpoints import save_checkpoint

    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_checkpoint(DistillNeRFModel("tiny", load_pretrained=False), path)
    return path


@pytest.fixture
def session():
    """An rclpy context of its own with an executor (ros_helpers.RosSession), closed after the test."""
    from ros_helpers import RosSession

    ros = RosSession()
    yield ros
    ros.close()
