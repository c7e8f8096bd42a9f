"""The `ros2` command line against a running perception_node, as the README's commands are typed: lifecycle
transitions, a parameter refused by its range, the ~/query_scene service, a topic echoed once."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from diagnostic_msgs.msg import DiagnosticArray

from ros_helpers import RosSession

ROS2CLI_WHEELS = REPO.parent / "shared" / "third_party" / "ros2cli"
NODE = "perception_ros2cli_test"  # its own name: no other test's node can answer for it
# Without a daemon each command discovers the graph itself for this long (a daemon starts slowly under load).
DISCOVERY = ["--no-daemon", "--spin-time", "3"]


def ros2_executable() -> str | None:
    local = Path(sys.executable).parent / "ros2"
    return str(local) if local.exists() else shutil.which("ros2")


NEEDS_ROS2CLI = pytest.mark.skipif(
    ros2_executable() is None,
    reason="the ros2 command line is not installed: ros2cli is not on PyPI; `make` installs it from "
           "../shared/third_party/ros2cli when that folder exists (a ROS install has it)")


@pytest.mark.skipif(not ROS2CLI_WHEELS.is_dir(), reason="no ../shared/third_party/ros2cli here")
def test_make_installs_the_ros2_command_line_when_its_wheels_are_there():
    assert (Path(sys.executable).parent / "ros2").exists(), (
        f"{ROS2CLI_WHEELS} exists but this venv has no `ros2`: scripts/build_ros_interfaces.sh installs it")


@pytest.fixture(scope="module")
def running_node(tiny_checkpoint):
    process = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "perception_node"), "--ros-args", "-r", f"__node:={NODE}",
         "--params-file", str(REPO / "config" / "perception.yaml"), "-p", f"model_path:={tiny_checkpoint}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy(), start_new_session=True)
    session = RosSession()
    try:
        statuses = []
        session.node("listener").create_subscription(
            DiagnosticArray, "/diagnostics", lambda m: statuses.extend(m.status), 10)
        up = session.spin_until(lambda: any(s.name.startswith(f"{NODE}:") and s.message == "active"
                                            for s in statuses), 60)
    finally:
        session.close()
    if not up:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail(f"perception_node did not come up active:\n{process.communicate()[0]}")
    yield process
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()


def ros2(*arguments: str, timeout_s: float = 60, attempts: int = 3) -> subprocess.CompletedProcess:
    """`ros2 ARGS`; again (up to `attempts`) when its daemon-less discovery did not see the node within the spin
    time, which a loaded machine can take longer for (a discovery miss, not an answer of the node)."""
    for _ in range(attempts):
        done = subprocess.run([ros2_executable(), *arguments], capture_output=True, text=True, timeout=timeout_s,
                              env=os.environ.copy())
        if "Node not found" not in done.stderr:
            break
    return done


@NEEDS_ROS2CLI
@pytest.mark.slow
def test_ros2_lifecycle_set_deactivates_and_activates_the_node(running_node):
    deactivated = ros2("lifecycle", "set", f"/{NODE}", "deactivate", *DISCOVERY)
    assert deactivated.returncode == 0 and "Transitioning successful" in deactivated.stdout, deactivated
    state = ros2("lifecycle", "get", f"/{NODE}", *DISCOVERY)
    assert state.stdout.startswith("inactive"), state
    activated = ros2("lifecycle", "set", f"/{NODE}", "activate", *DISCOVERY)
    assert activated.returncode == 0 and "Transitioning successful" in activated.stdout, activated


@NEEDS_ROS2CLI
@pytest.mark.slow
def test_ros2_param_set_out_of_range_is_refused_and_the_value_kept(running_node):
    refused = ros2("param", "set", f"/{NODE}", "depth_min_opacity", "2.0", *DISCOVERY)
    said = refused.stdout + refused.stderr  # ros2param reports the refusal on stderr (and exits 0)
    assert "Setting parameter failed" in said and "out of range" in said, refused
    kept = ros2("param", "get", f"/{NODE}", "depth_min_opacity", *DISCOVERY)
    assert "0.5" in kept.stdout, f"the refused value changed the parameter: {kept}"


@NEEDS_ROS2CLI
@pytest.mark.slow
def test_ros2_service_call_query_scene_answers(running_node):
    called = ros2("service", "call", f"/{NODE}/query_scene", "distillnerf_ros/srv/QueryScene",
                  "{queries: ['car'], threshold: 0.5}")
    assert called.returncode == 0 and "QueryScene_Response(" in called.stdout, called
    # The random tiny model has no teacher: the node says why it cannot answer (instead of failing the call).
    assert "success=False" in called.stdout and "cannot answer text queries" in called.stdout, called.stdout


@NEEDS_ROS2CLI
@pytest.mark.slow
def test_ros2_topic_echo_once_prints_the_nodes_diagnostics(running_node):
    echoed = ros2("topic", "echo", "--once", "--timeout", "30", "/diagnostics", "diagnostic_msgs/msg/DiagnosticArray",
                  "--filter", f"any(s.name.startswith('{NODE}:') for s in m.status)", *DISCOVERY)
    assert echoed.returncode == 0 and f"name: '{NODE}: perception'" in echoed.stdout, echoed
