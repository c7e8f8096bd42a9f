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
        # The keyframe's cameras span 43 ms: at rate 0.02 a pass lasts ~2 s, more than the tiny model needs on a
        # loaded machine, so a pass's frame is not dropped as busy because the previous one is still running.
        player = play(keyframe_bag, "--clock", "--loop", "--max-loops", "3", "--rate", "0.02",
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
        # Each loop replays the same keyframe: every output carries one of its camera stamps (the set's trigger
        # is its last camera, or an earlier one when a camera delivered late on a loaded machine is left out).
        stamps = [c.header.stamp.sec * 10**9 + c.header.stamp.nanosec for c in clouds]
        assert max(stamps) - min(stamps) < 100_000_000, f"outputs of more than one instant: {stamps}"
        assert all(0 <= latency < 60_000 for latency in latencies), f"sim-time latencies {latencies}"
    finally:
        session.close()


def flip(data: bytes, start: int, count: int = 16) -> bytes:
    return data[:start] + bytes(b ^ 0xFF for b in data[start:start + count]) + data[start + count:]


def middle_message_record(data: bytes) -> int:
    """Byte offset of the message record inside the (uncompressed) chunk nearest the middle of the file."""
    import struct

    chunk = data.index(b"\x06", 8 + 9 + 4 + 4 + 4)  # after the header record (opcode 1, "ros2", library)
    (compression_length,) = struct.unpack_from("<I", data, chunk + 9 + 28)
    offset = chunk + 9 + 28 + 4 + compression_length + 8
    end = offset + struct.unpack_from("<Q", data, offset - 8)[0]
    offsets = []
    while offset < end:
        opcode, length = struct.unpack_from("<BQ", data, offset)
        if opcode == 0x05:
            offsets.append(offset)
        offset += 9 + length
    return min(offsets, key=lambda o: abs(o - len(data) // 2))


@pytest.mark.parametrize("corruption", ["magic_only", "flipped_middle", "flipped_header", "flipped_profile",
                                        "flipped_library", "flipped_chunk_header", "flipped_footer", "empty"])
def test_every_malformed_mcap_bag_is_a_clear_error_with_exit_2(keyframe_bag, tmp_path, corruption):
    data = (keyframe_bag / "keyframe.mcap").read_bytes()
    spoiled = {
        "magic_only": lambda: b"\x89MCAP0\r\n",
        "flipped_middle": lambda: flip(data, middle_message_record(data), 16),  # a record mid-file
        "flipped_header": lambda: flip(data, 8, 24),  # the header record right after the magic
        "flipped_profile": lambda: flip(data, 8 + 9 + 4, 4),  # "ros2"
        "flipped_library": lambda: flip(data, 8 + 9 + 4 + 4 + 4, 4),
        "flipped_chunk_header": lambda: flip(data, data.index(b"\x06", 8 + 9 + 4 + 4 + 4) + 1, 8),
        "flipped_footer": lambda: flip(data, len(data) - 30, 12),
        "empty": lambda: b"",
    }[corruption]()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.yaml").write_text((keyframe_bag / "metadata.yaml").read_text())
    (broken / "keyframe.mcap").write_bytes(spoiled)
    result = subprocess.run([sys.executable, "-m", "distillnerf_ros.tools.play", str(broken), "--rate", "0",
                             "--wait-subscribers", "0"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, f"{corruption}: exit {result.returncode}: {result.stdout} {result.stderr}"
    assert "distillnerf-play: error:" in result.stderr and "keyframe.mcap" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("corruption", ["garbage", "flipped_middle", "truncated"])
def test_malformed_sqlite3_bags_are_clear_errors_with_exit_2(tmp_path, corruption):
    bag = tmp_path / "keyframe_db3"
    convert(SAMPLE, bag, storage="sqlite3", progress=False)
    (db,) = bag.glob("*.db3")
    data = db.read_bytes()
    db.write_bytes({"garbage": b"SQLite format 3\x00" + b"\x01" * 4096,
                    "flipped_middle": flip(data, 4096, 8),  # the b-tree header of the second page
                    "truncated": data[: len(data) // 2]}[corruption])
    result = subprocess.run([sys.executable, "-m", "distillnerf_ros.tools.play", str(bag), "--rate", "0",
                             "--wait-subscribers", "0"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, f"{corruption}: exit {result.returncode}: {result.stdout} {result.stderr}"
    assert "distillnerf-play: error:" in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_the_player_exits_0_on_sigint_or_sigterm_while_playing(keyframe_bag, sig):
    import signal
    import time

    player = play(keyframe_bag, "--loop", "--clock", "--rate", "5", "--wait-subscribers", "0")
    time.sleep(3)  # importing rclpy + opening the bag, then looping: the signal lands mid-playback
    player.send_signal(getattr(signal, sig))
    stdout, stderr = player.communicate(timeout=20)
    assert player.returncode == 0, f"exit {player.returncode} on {sig}: {stderr}"
    assert "Traceback" not in stderr and "played" in stdout, (stdout, stderr)
