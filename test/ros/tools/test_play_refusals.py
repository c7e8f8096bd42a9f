"""distillnerf-play refuses what a bag must not decide: a type name that is not an installed ROS interface
message (it would choose a module to import), and a compressed file that decompresses past the cap. The bags
are real rosbag2 folders written with rosbags."""

import subprocess
import sys
from pathlib import Path

import pytest
from rosbags.rosbag2 import Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode
from rosbags.rosbag2.writer import StoragePlugin

STRING_CDR = b"\x00\x01\x00\x00\x03\x00\x00\x00hi\x00\x00"  # std_msgs/msg/String "hi"


def write_bag(path: Path, msgtype: str, compression: CompressionMode | None = None) -> Path:
    """A one-message rosbag2 MCAP bag whose only topic /hostile has the type name `msgtype`."""
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
    if compression is not None:
        writer.set_compression(compression, CompressionFormat.ZSTD)
    with writer:
        connection = writer.add_connection("/hostile", msgtype, msgdef="string data\n", rihs01="RIHS01_" + "0" * 64)
        writer.write(connection, 1_000_000_000, STRING_CDR)
    return path


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def run_play(bag: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distillnerf_ros.tools.play", str(bag), "--rate", "0",
                           "--wait-subscribers", "0", *args], capture_output=True, text=True, timeout=120,
                          cwd=bag)


@pytest.mark.parametrize("msgtype", ["venv/__main__/X", "lib2to3/__main__/X", "this/msg/X",
                                     "sensor_msgs/CompressedImage", "sensor_msgs/msg/a/b", "os/path/join",
                                     "sensor_msgs/msg/NoSuchMessage", "sensor_msgs/msg/__name__"])
def test_a_bag_type_that_is_not_an_installed_ros_message_is_refused_and_nothing_runs(tmp_path, msgtype):
    bag = write_bag(tmp_path / "bag", msgtype)
    before = listing(bag)
    result = run_play(bag)
    assert result.returncode == 2, f"{msgtype}: exit {result.returncode}: {result.stdout} {result.stderr}"
    assert "distillnerf-play: error:" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert "/hostile" in result.stderr and msgtype in result.stderr, "the error names the topic and the type"
    assert "Beautiful is better" not in result.stdout + result.stderr, "the bag imported `this`"
    assert listing(bag) == before, f"{msgtype}: the bag folder changed: {listing(bag)}"


def test_a_bag_of_an_installed_ros_message_type_still_plays(tmp_path):
    result = run_play(write_bag(tmp_path / "bag", "std_msgs/msg/String"))
    assert result.returncode == 0 and "played 1 messages" in result.stdout, result.stderr
