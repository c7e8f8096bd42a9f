"""What `ros2 launch distillnerf_ros perception.launch.py` starts: the launch file itself where launch_ros exists,
and everywhere the same executable with the same YAML, plus the RViz config against the node's publishers."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

from distillnerf_core.model.distillnerf import DistillNeRFModel
from distillnerf_core.training.checkpoints import save_checkpoint
from distillnerf_ros.nodes.perception import PerceptionNode
from ros_helpers import RosSession

RVIZ_QOS = {"Reliable": ReliabilityPolicy.RELIABLE, "Best Effort": ReliabilityPolicy.BEST_EFFORT,
            "Volatile": DurabilityPolicy.VOLATILE, "Transient Local": DurabilityPolicy.TRANSIENT_LOCAL}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_checkpoint(DistillNeRFModel("tiny", load_pretrained=False), path)
    return path


@pytest.mark.skipif(importlib.util.find_spec("launch_ros") is None,
                    reason="launch_ros is not installed (pip-only ROS): the executable test below covers the node")
def test_launch_file_describes_the_perception_node():
    spec = importlib.util.spec_from_file_location("perception_launch", REPO / "launch" / "perception.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert any(getattr(entity, "node_executable", None) == "perception_node" for entity in description.entities)


def test_executable_starts_with_the_launch_yaml_and_reports_diagnostics(tiny_checkpoint):
    session = RosSession()
    process = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "perception_node"), "--ros-args", "--params-file",
         str(REPO / "config" / "perception.yaml"), "-p", f"model_path:={tiny_checkpoint}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    try:
        statuses = []
        session.node("listener").create_subscription(
            DiagnosticArray, "/diagnostics", lambda m: statuses.extend(m.status), 10)
        up = session.spin_until(lambda: any(s.name.startswith("distillnerf_perception") and s.message == "active"
                                            for s in statuses), 60)
        assert up, f"perception_node did not come up active; diagnostics: {[s.message for s in statuses]}"
    finally:
        process.terminate()
        try:
            output, _ = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # rclpy sometimes ignores SIGTERM for a while
            process.kill()
            output, _ = process.communicate()
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
