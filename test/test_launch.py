"""What `ros2 launch distillnerf_ros perception.launch.py` starts: the launch file itself where launch_ros exists,
and everywhere the same executable with the same YAML, plus the RViz config against the node's publishers."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import String

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
        # A subscriber of another process (or the node's, before it is active) can satisfy the match: the
        # keyframe is sent again every 10 s until the node answers (a full-suite CI run once lost the only send).
        got = False
        for _ in range(6):
            publisher.publish_all()
            got = session.spin_until(lambda: bool(received), 10)
            if got:
                break
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


def launch_env(prefix: str = sys.prefix) -> dict[str, str]:
    """As after sourcing a workspace: this interpreter first on PATH, the package's prefix on AMENT_PREFIX_PATH."""
    return os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                         "AMENT_PREFIX_PATH": os.pathsep.join(filter(None, [prefix,
                                                                            os.environ.get("AMENT_PREFIX_PATH")]))}


def start_launch(arguments: list[str], env: dict[str, str], runner: str = LAUNCH_RUNNER) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", runner, str(REPO / "launch" / "perception.launch.py"), *arguments],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


def launch_config(tiny_checkpoint, tmp_path) -> Path:
    """The launch YAML with the tiny model, at a path of this test's own (it names the test's processes)."""
    params = yaml.safe_load((REPO / "config" / "perception.yaml").read_text())
    params["/**"]["ros__parameters"].update(model_path=str(tiny_checkpoint), input_reliability="reliable")
    config = tmp_path / "params.yaml"
    config.write_text(yaml.safe_dump(params))
    return config


def processes_naming(text: str) -> list[int]:
    """Ids of the live processes whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def finished_launch(process: subprocess.Popen, config: Path, timeout_s: float) -> tuple[int | None, str, list[int]]:
    """(return code or None if it did not end, output, processes of this launch still alive after it ended);
    kills what is left, so nothing outlives the test."""
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, stop_group(process, signal.SIGINT, 30), []
    time.sleep(1.0)
    orphans = processes_naming(str(config))
    for pid in orphans:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return process.returncode, output, orphans


def probe_bag(path: Path, topic: str = "/launch_probe", count: int = 20) -> Path:
    """A small rosbag2 of std_msgs/String, 50 ms apart."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    typestore = get_typestore(Stores.ROS2_KILTED)
    string = typestore.types["std_msgs/msg/String"]
    with Writer(path, version=9) as writer:
        connection = writer.add_connection(topic, "std_msgs/msg/String", typestore=typestore)
        for index in range(count):
            writer.write(connection, 1_700_000_000_000_000_000 + index * 50_000_000,
                         typestore.serialize_cdr(string(data=str(index)), "std_msgs/msg/String"))
    return path


@NEEDS_LAUNCH
def test_launch_plays_the_bag_with_the_package_player_when_ros2_bag_is_absent(tiny_checkpoint, tmp_path):
    from importlib.metadata import entry_points

    if shutil.which("ros2") and any(e.name == "bag" for e in entry_points(group="ros2cli.command")):
        pytest.skip("`ros2 bag` is installed here: the launch file plays through it")
    config = launch_config(tiny_checkpoint, tmp_path)
    bag = probe_bag(tmp_path / "probe_bag")
    process = start_launch([f"config:={config}", f"bag:={bag}", "use_sim_time:=true"], launch_env())
    session = RosSession()
    received = []
    try:
        session.node("sink").create_subscription(String, "/launch_probe", received.append, 10)
        got = session.spin_until(lambda: len(received) >= 3, 60)
    finally:
        session.close()
        output = stop_group(process, signal.SIGINT, 30)
    assert got, f"the launched player published nothing from the bag; launch output:\n{output}"
    assert "FileNotFoundError" not in output, output


@NEEDS_LAUNCH
def test_launch_refuses_a_bag_without_any_player_and_starts_nothing(tiny_checkpoint, tmp_path):
    config = launch_config(tiny_checkpoint, tmp_path)
    # A prefix with the package's share folder only (no lib/distillnerf_ros/play), and the module hidden.
    prefix = tmp_path / "prefix"
    (prefix / "share" / "ament_index" / "resource_index" / "packages").mkdir(parents=True)
    (prefix / "share" / "ament_index" / "resource_index" / "packages" / "distillnerf_ros").touch()
    (prefix / "share" / "distillnerf_ros").symlink_to(Path(sys.prefix) / "share" / "distillnerf_ros")
    env = launch_env(str(prefix)) | {"AMENT_PREFIX_PATH": f"{prefix}{os.pathsep}{sys.prefix}",  # found first
                                     "PATH": os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                                             if not (Path(p) / "ros2").exists())}
    runner = "import sys\nsys.modules['distillnerf_ros.tools.play'] = None\n" + LAUNCH_RUNNER
    process = start_launch([f"config:={config}", f"bag:={probe_bag(tmp_path / 'bag')}"], env, runner)
    code, output, orphans = finished_launch(process, config, 60)
    assert code is not None and code != 0, f"the launch did not fail (code {code}):\n{output}"
    assert "needs a bag player" in output and "rosbag2" in output, output
    assert "process started" not in output and not orphans, f"a process was started: {orphans}\n{output}"


@NEEDS_LAUNCH
def test_launch_refuses_rviz_when_rviz2_is_absent_and_leaves_no_node_behind(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("AMENT_PREFIX_PATH", launch_env()["AMENT_PREFIX_PATH"])
    try:
        from ament_index_python.packages import get_package_prefix

        get_package_prefix("rviz2")
        pytest.skip("rviz2 is installed here")
    except LookupError:
        pass
    config = launch_config(tiny_checkpoint, tmp_path)
    process = start_launch([f"config:={config}", "rviz:=true"], launch_env())
    code, output, orphans = finished_launch(process, config, 60)
    assert code is not None and code != 0, f"the launch did not fail (code {code}):\n{output}"
    assert "rviz2 is not installed" in output, output
    assert not orphans, f"processes outlived the launch (PPID 1): {orphans}\n{output}"


@NEEDS_LAUNCH
def test_launch_fails_and_stops_the_node_when_the_player_exits_with_an_error(tiny_checkpoint, tmp_path):
    config = launch_config(tiny_checkpoint, tmp_path)
    not_a_bag = tmp_path / "not_a_bag"
    not_a_bag.mkdir()
    process = start_launch([f"config:={config}", f"bag:={not_a_bag}", "use_sim_time:=true"], launch_env())
    code, output, orphans = finished_launch(process, config, 90)
    assert code is not None and code != 0, f"the launch did not fail (code {code}):\n{output}"
    assert "the bag player exited with code" in output, output
    assert not orphans, f"processes outlived the launch: {orphans}\n{output}"
