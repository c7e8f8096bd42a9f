"""distillnerf-play -> rig_monitor over loopback DDS on the real keyframe bag; corrupted bags fail clearly."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from rclpy.parameter import Parameter

from distillnerf_ros.nodes.rig_monitor import RigMonitorNode
from distillnerf_ros.tools.demo_plumbing import check_frame
from distillnerf_ros.tools.nusc2bag import convert
from ros_helpers import RosSession

SAMPLE = REPO / "data" / "nuscenes_sample"


@pytest.fixture(scope="module")
def keyframe_bag(tmp_path_factory):
    out = tmp_path_factory.mktemp("bags") / "keyframe"
    convert(SAMPLE, out, progress=False)
    return out


def play(bag: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "distillnerf_ros.tools.play", str(bag), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_played_bag_reaches_the_rig_with_sim_time(keyframe_bag):
    session = RosSession()
    try:
        monitor = session.node("rig_monitor", RigMonitorNode, parameter_overrides=[
            Parameter("use_sim_time", value=True), Parameter("input_reliability", value="reliable"),
            Parameter("min_cameras", value=6)])
        player = play(keyframe_bag, "--clock", "--wait-subscribers", "10")
        received = session.spin_until(lambda: bool(monitor.frames), timeout_s=30)
        stdout, stderr = player.communicate(timeout=30)
        assert player.returncode == 0, stderr
        assert received, f"no frame from the played bag; player said: {stdout} {stderr}"
        assert "played 21 messages" in stdout, stdout
        frame = monitor.frames[0]
        assert check_frame(frame, str(SAMPLE)) == [], "extrinsics / intrinsics from the bag differ from the tables"
        assert monitor.get_clock().now().nanoseconds >= frame.stamp_ns, "/clock did not drive the node's time"
        assert np.array_equal(frame.images[0].shape, (900, 1600, 3))
    finally:
        session.close()


def test_corrupted_bag_gives_a_clear_error(keyframe_bag, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.yaml").write_text((keyframe_bag / "metadata.yaml").read_text())
    data = (keyframe_bag / "keyframe.mcap").read_bytes()
    (broken / "keyframe.mcap").write_bytes(data[: len(data) // 3])
    player = play(broken, "--rate", "0", "--wait-subscribers", "0")
    _, stderr = player.communicate(timeout=60)
    assert player.returncode == 2, f"a truncated bag must fail with exit code 2, got {player.returncode}: {stderr}"
    assert "distillnerf-play: error:" in stderr and "broken" in stderr, stderr
    assert "Traceback" not in stderr, stderr


def test_missing_bag_and_unknown_topic_are_clear_errors(keyframe_bag, tmp_path):
    for args, expected in (([str(tmp_path / "nope")], "not a rosbag2 directory"),
                           ([str(keyframe_bag), "--topics", "/nope"], "topics ['/nope'] are not in")):
        result = subprocess.run([sys.executable, "-m", "distillnerf_ros.tools.play", *args],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and expected in result.stderr, result.stderr


def test_looped_bag_with_sim_time_keeps_the_perception_node_working(keyframe_bag, tmp_path):
    from sensor_msgs.msg import PointCloud2
    from std_msgs.msg import Float64

    from distillnerf_core.model.distillnerf import DistillNeRFModel
    from distillnerf_core.training.checkpoints import save_checkpoint
    from distillnerf_ros.nodes.perception import PerceptionNode

    checkpoint = tmp_path / "tiny.safetensors"
    save_checkpoint(DistillNeRFModel("tiny", load_pretrained=False), checkpoint)
    session = RosSession()
    try:
        node = session.node("perception", PerceptionNode, parameter_overrides=[
            Parameter("model_path", value=str(checkpoint)), Parameter("use_sim_time", value=True),
            Parameter("input_reliability", value="reliable"), Parameter("device", value="cpu")])
        latencies, clouds = [], []
        sink = session.node("sink")
        sink.create_subscription(Float64, "/distillnerf_perception/debug/pipeline_latency_ms",
                                 lambda m: latencies.append(m.data), 10)
        sink.create_subscription(PointCloud2, "/distillnerf_perception/occupancy", clouds.append, 10)
        player = play(keyframe_bag, "--clock", "--loop", "--max-loops", "3", "--rate", "0.5",
                      "--wait-subscribers", "10")
        counters = node.counters
        # Frames faster than inference are dropped by design; every loop's frame is either processed or dropped.
        session.spin_until(lambda: counters["processed"] + counters["dropped_busy"] == 3
                           and len(clouds) == counters["processed"], 60)
        stdout, stderr = player.communicate(timeout=10)
        assert player.returncode == 0, stderr
        assert counters["processed"] + counters["dropped_busy"] == 3, f"one frame per loop: {counters} {node.last}"
        assert counters["processed"] >= 2, f"processing must go on after the time jump: {counters}"
        assert counters["errors"] == 0 and node.status_message == "active"
        assert len({c.header.stamp.nanosec for c in clouds}) == 1, "each loop replays the same frame"
        assert all(0 <= latency < 60_000 for latency in latencies), f"sim-time latencies {latencies}"
    finally:
        session.close()
