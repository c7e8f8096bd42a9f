"""`colcon build` of the package as a ROS user runs it: a workspace whose src/ holds a copy of the package with
make's .venv inside it (the venv's Python and ROS wheels first on PATH, as when it is activated)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow

EXECUTABLES = ("perception_node", "rig_monitor", "dataroot_publisher", "nusc2bag", "bag2nusc", "play", "nusc_sample")
# What the package build needs of the source tree (docs, benchmarks and build outputs stay behind).
COPY_IGNORE = shutil.ignore_patterns(".venv", "build", "install", "log", ".git", "demo_out", "runs", "docs",
                                     "benchmarks", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache")


def colcon_executable() -> str | None:
    """colcon on PATH (a ROS install), else the one `make test` puts into .venv/colcon."""
    found = shutil.which("colcon")
    local = Path(sys.prefix) / "colcon" / "bin" / "colcon"
    return found or (str(local) if local.exists() else None)


# The build started by start_colcon_build: (workspace, process, log folder, when it started).
_BUILD: dict[str, tuple[Path, subprocess.Popen, Path, float]] = {}


def start_colcon_build(tmp_path_factory) -> None:
    """Start `colcon build` (not waited for) in a workspace whose src/distillnerf_ros holds a copy of the package
    with `.venv` inside it (a link to this venv: its paths then lie inside the package's source folder, as make's
    own .venv does). conftest.py calls it when the session begins, when these tests are selected: the build is a
    minute of mostly one core, and the rest of the suite leaves one of two cores idle much of the time."""
    colcon = colcon_executable()
    if colcon is None or "build" in _BUILD:
        return
    workspace = tmp_path_factory.mktemp("colcon_ws")
    logs = tmp_path_factory.mktemp("colcon_logs")  # outside the workspace, which colcon crawls for packages
    package = workspace / "src" / "distillnerf_ros"
    shutil.copytree(REPO, package, ignore=COPY_IGNORE)
    (package / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    venv = package / ".venv"
    env = os.environ | {"PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(venv),
                        "AMENT_PREFIX_PATH": os.pathsep.join(filter(None, [str(venv),
                                                                           os.environ.get("AMENT_PREFIX_PATH")])),
                        "CMAKE_PREFIX_PATH": os.pathsep.join(filter(None, [str(venv),
                                                                           os.environ.get("CMAKE_PREFIX_PATH")]))}
    env.pop("PYTHONPATH", None)
    with open(logs / "stdout", "w") as stdout, open(logs / "stderr", "w") as stderr:
        process = subprocess.Popen([colcon, "build", "--event-handlers", "console_direct+"], cwd=workspace, env=env,
                                   stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, text=True)
    _BUILD["build"] = (workspace, process, logs, time.monotonic())


def stop_colcon_build() -> None:
    """Kill a build still running when the session ends (its tests were interrupted or deselected)."""
    if "build" in _BUILD and _BUILD["build"][1].poll() is None:
        _BUILD["build"][1].kill()
        _BUILD["build"][1].wait()


@pytest.fixture(scope="module")
def colcon_workspace(tmp_path_factory):
    """(workspace, completed colcon build, seconds it took): the build start_colcon_build started (now, if the
    session did not)."""
    if colcon_executable() is None:
        pytest.skip("colcon is not installed: `make test` installs it into .venv/colcon from requirements-colcon.txt"
                    " (a ROS install has it)")
    start_colcon_build(tmp_path_factory)
    workspace, process, logs, started = _BUILD["build"]
    try:
        process.wait(timeout=max(1.0, 600 - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        stop_colcon_build()
        pytest.fail(f"colcon build did not finish in 600 s:\n{(logs / 'stdout').read_text()[-6000:]}")
    build = subprocess.CompletedProcess(process.args, process.returncode, (logs / "stdout").read_text(),
                                        (logs / "stderr").read_text())
    return workspace, build, time.monotonic() - started


def test_colcon_build_with_the_venv_inside_the_package_installs_the_executables(colcon_workspace):
    workspace, build, seconds = colcon_workspace
    assert build.returncode == 0, f"colcon build failed after {seconds:.0f} s:\n{build.stdout[-6000:]}\n{build.stderr}"
    assert "prefixed in the source directory" not in build.stdout + build.stderr
    lib = workspace / "install" / "distillnerf_ros" / "lib" / "distillnerf_ros"
    missing = [name for name in EXECUTABLES if not os.access(lib / name, os.X_OK)]
    assert not missing, f"not installed as executables: {missing} (in {lib})"
    site = next((workspace / "install" / "distillnerf_ros" / "lib").glob("python3*/site-packages"))
    for module in ("distillnerf_ros/srv/_query_scene.py", "distillnerf_ros/nodes/perception.py",
                   "distillnerf_core/inference.py"):
        assert (site / module).is_file(), f"{module} is not installed in {site}"


def test_installed_executables_run_without_the_venv_on_path(colcon_workspace):
    """As in a shell that sourced the workspace (install/ on PYTHONPATH) but never activated the venv: the first
    python3 on PATH is the system's, without rclpy; the executables must still start."""
    workspace, build, _ = colcon_workspace
    assert build.returncode == 0, "colcon build failed (see the test above)"
    prefix = workspace / "install" / "distillnerf_ros"
    site = next((prefix / "lib").glob("python3*/site-packages"))
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "PYTHONPATH": str(site),
           "AMENT_PREFIX_PATH": f"{prefix}{os.pathsep}{sys.prefix}"}
    for name in ("play", "nusc2bag"):
        executable = prefix / "lib" / "distillnerf_ros" / name
        shebang = executable.read_text().splitlines()[0]
        ran = subprocess.run([str(executable), "--help"], env=env, capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0 and "usage" in ran.stdout, (
            f"{name} ({shebang}) does not start without the venv: {ran.stderr[-2000:]}")


def test_colcon_test_runs_the_pytest_suite(colcon_workspace):
    """`colcon test` runs what CTest has registered: the package's pytest suite, from the source folder."""
    workspace, build, _ = colcon_workspace
    assert build.returncode == 0, "colcon build failed (see the test above)"
    listed = subprocess.run(["ctest", "--show-only=json-v1"], cwd=workspace / "build" / "distillnerf_ros",
                            capture_output=True, text=True, timeout=60)
    tests = json.loads(listed.stdout)["tests"]
    assert tests, "no test is registered with CTest: `colcon test` would run nothing"
    commands = [" ".join(test["command"]) for test in tests]
    assert any("-m pytest" in command and str(workspace / "src" / "distillnerf_ros" / "test") in command
               for command in commands), commands


def test_installed_segmenter_finds_its_shipped_weights(colcon_workspace, tmp_path):
    """The segmenter teacher's weights and licence are installed to share/ with data/, and the installed library
    finds them there (outside any source tree) and loads them."""
    workspace, build, _ = colcon_workspace
    assert build.returncode == 0, "colcon build failed (see the test above)"
    prefix = workspace / "install" / "distillnerf_ros"
    folder = prefix / "share" / "distillnerf_ros" / "data" / "weights" / "espnetv2_s2_cityscapes"
    assert (folder / "espnetv2_s2_cityscapes.safetensors").is_file() and (folder / "LICENSE").is_file()
    site = next((prefix / "lib").glob("python3*/site-packages"))
    code = ("import distillnerf_core, pathlib; from distillnerf_core.teachers.segmenter import Segmenter, "
            "default_weights_path; print(pathlib.Path(distillnerf_core.__file__).resolve()); "
            "print(default_weights_path().resolve()); Segmenter()")
    env = os.environ | {"PYTHONPATH": str(site), "AMENT_PREFIX_PATH": f"{prefix}{os.pathsep}{sys.prefix}"}
    ran = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert ran.returncode == 0, ran.stderr[-2000:]
    module, weights = ran.stdout.split()
    assert Path(module).is_relative_to(site.resolve()), f"imported {module}, not the installed library"
    assert Path(weights) == (folder / "espnetv2_s2_cityscapes.safetensors").resolve()
