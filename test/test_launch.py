"""What `ros2 launch distillnerf_ros perception.launch.py` starts: the launch file itself where launch_ros exists,
and everywhere the same executable with the same YAML, plus the RViz config against the node's publishers."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2

from distillnerf_ros.nodes.dataroot_publisher import DatarootPublisher
from distillnerf_ros.nodes.perception import PerceptionNode
from ros_helpers import RosSession, wait_for_match

RVIZ_QOS = {"Reliable": ReliabilityPolicy.RELIABLE, "Best Effort": ReliabilityPolicy.BEST_EFFORT,
            "Volatile": DurabilityPolicy.VOLATILE, "Transient Local": DurabilityPolicy.TRANSIENT_LOCAL}


NEEDS_LAUNCH = pytest.mark.skipif(
    importlib.util.find_spec("launch_ros") is None,
    reason="launch / launch_ros are not installed: they are not on PyPI; `make test` installs them from "
           "../shared/third_party/ros2_launch when that folder exists (a ROS install has them)")
# What `ros2 launch` does, without ros2cli: include the launch file with its arguments and run it.
LAUNCH_RUNNER = """
import sys
from launch import LaunchService
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
arguments = [argument.split(":=", 1) for argument in sys.argv[2:]]
service = LaunchService()
service.include_launch_description(
    IncludeLaunchDescription(PythonLaunchDescriptionSource(sys.argv[1]), launch_arguments=arguments))
sys.exit(service.run())
"""


def stop_group(process: subprocess.Popen, sig: int, timeout_s: float) -> str:
    """Signal the process's group (started with start_new_session), then SIGKILL the group if it has not
    exited within timeout_s: a launched node must never outlive its test and answer for the next one."""
    os.killpg(process.pid, sig)
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        output = ""
    try:
        os.killpg(process.pid, signal.SIGKILL)  # children the launch runner left behind, if any
    except ProcessLookupError:
        pass
    if process.poll() is None:
        output, _ = process.communicate()
    return output


@NEEDS_LAUNCH
def test_launch_file_describes_the_perception_node(monkeypatch):
    monkeypatch.setenv("AMENT_PREFIX_PATH", sys.prefix)  # make setup installs the package's share folder here
    spec = importlib.util.spec_from_file_location("perception_launch", REPO / "launch" / "perception.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert any(getattr(entity, "node_executable", None) == "perception_node" for entity in description.entities)


@NEEDS_LAUNCH
def test_launch_file_runs_the_node_that_answers_the_keyframe(tiny_checkpoint, tmp_path):
    params = yaml.safe_load((REPO / "config" / "perception.yaml").read_text())
    params["/**"]["ros__parameters"].update(model_path=str(tiny_checkpoint), input_reliability="reliable")
    config = tmp_path / "params.yaml"
    config.write_text(yaml.safe_dump(params))
    # The installed executables run `#!/usr/bin/env python3`: this interpreter must come first, as after
    # sourcing a ROS workspace; the package's share and lib folders are in this prefix (make setup).
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                        "AMENT_PREFIX_PATH": os.pathsep.join(filter(None, [sys.prefix,
                                                                           os.environ.get("AMENT_PREFIX_PATH")]))}
    process = subprocess.Popen([sys.executable, "-c", LAUNCH_RUNNER, str(REPO / "launch" / "perception.launch.py"),
                                f"config:={config}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, start_new_session=True)
    session = RosSession()
    received = []
    try:
        session.node("sink").create_subscription(PointCloud2, "/distillnerf_perception/occupancy",
                                                 received.append, 10)
        publisher = session.node("keyframe", DatarootPublisher, dataroot=str(REPO / "data/nuscenes_sample"),
                                 version=None)
        wait_for_match(session, list(publisher.image_pubs.values()), 60)
        publisher.publish_all()
        got = session.spin_until(lambda: bool(received), 60)
    finally:
        session.close()
        output = stop_group(process, signal.SIGINT, 30)
    assert got, f"no ~/occupancy from the launched node; launch output:\n{output}"
    assert received[0].header.frame_id == "base_link"
    assert "perception_node" in output and f"loaded {tiny_checkpoint}" in output, output


def test_executable_starts_with_the_launch_yaml_and_reports_diagnostics(tiny_checkpoint):
    session = RosSession()
    name = "perception_executable_test"  # its own node name: another node's diagnostics cannot pass for it
    process = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "perception_node"), "--ros-args", "-r", f"__node:={name}",
         "--params-file", str(REPO / "config" / "perception.yaml"), "-p", f"model_path:={tiny_checkpoint}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy(), start_new_session=True)
    try:
        statuses = []
        session.node("listener").create_subscription(
            DiagnosticArray, "/diagnostics", lambda m: statuses.extend(m.status), 10)
        up = session.spin_until(lambda: any(s.name.startswith(f"{name}:") and s.message == "active"
                                            for s in statuses), 60)
        assert up, f"perception_node did not come up active; diagnostics: {[s.message for s in statuses]}"
    finally:
        output = stop_group(process, signal.SIGTERM, 10)
        session.close()
    assert f"loaded {tiny_checkpoint}" in output, output


def test_rviz_displays_match_the_publishers_topics_and_qos(tiny_checkpoint):
    displays = yaml.safe_load((REPO / "rviz" / "distillnerf.rviz").read_text())["Visualization Manager"]["Displays"]
    topics = {d["Topic"]["Value"]: d["Topic"] for d in displays if "Topic" in d}
    assert topics, "the RViz config shows no topics"
    session = RosSession()
    try:
        node = session.node("perception", PerceptionNode, parameter_overrides=[
            Parameter("model_path", value=str(tiny_checkpoint))])
        for topic, settings in topics.items():
            infos = node.get_publishers_info_by_topic(topic)
            assert infos, f"RViz shows {topic}, which the node does not publish"
            qos = infos[0].qos_profile
            assert qos.reliability == RVIZ_QOS[settings["Reliability Policy"]], f"{topic}: reliability mismatch"
            assert qos.durability == RVIZ_QOS[settings["Durability Policy"]], f"{topic}: durability mismatch"
    finally:
        session.close()


def test_rviz_colours_the_cloud_by_fields_the_node_publishes():
    displays = yaml.safe_load((REPO / "rviz" / "distillnerf.rviz").read_text())["Visualization Manager"]["Displays"]
    channels = {d["Name"]: d["Channel Name"] for d in displays
                if d["Class"] == "rviz_default_plugins/PointCloud2" and "Channel Name" in d}
    # x, y, z, rgb, density always; label and score with semantic_queries (test_perception_semantics.py)
    assert channels == {"Occupancy (semantic label)": "label"}, channels
