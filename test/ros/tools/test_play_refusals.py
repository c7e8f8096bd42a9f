"""distillnerf-play refuses what a bag must not decide: a type name that is not an installed ROS interface
message (it would choose a module to import), and a compressed file that decompresses past the cap. The bags
are real rosbag2 folders written with rosbags."""

import os
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


def test_a_file_compressed_bag_that_decompresses_past_the_cap_stops_at_the_cap(tmp_path):
    """32 MB of one message compress to a few kB; with a 1 MB cap the player refuses it, naming the file, and
    leaves nothing in the temp folder or the bag folder."""
    bag = tmp_path / "bomb"
    writer = Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.set_compression(CompressionMode.FILE, CompressionFormat.ZSTD)
    with writer:
        connection = writer.add_connection("/big", "std_msgs/msg/String", msgdef="string data\n",
                                           rihs01="RIHS01_" + "0" * 64)
        payload = b"x" * 32_000_000
        writer.write(connection, 1, b"\x00\x01\x00\x00"
                     + (len(payload) + 1).to_bytes(4, "little") + payload + b"\x00")
    (compressed,) = bag.glob("*.zstd")
    assert compressed.stat().st_size < 100_000
    before = listing(bag)
    temp = tmp_path / "tmp"
    temp.mkdir()
    result = subprocess.run([sys.executable, "-m", "distillnerf_ros.tools.play", str(bag), "--rate", "0",
                             "--wait-subscribers", "0", "--max-decompressed-mb", "1"], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "TMPDIR": str(temp)})
    assert result.returncode == 2, f"exit {result.returncode}: {result.stdout} {result.stderr}"
    assert "distillnerf-play: error:" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert compressed.name in result.stderr and "cap of 1000000 bytes" in result.stderr, result.stderr
    assert listing(temp) == [] and listing(bag) == before, (listing(temp), listing(bag))
    # The same bag under the default cap plays (the bound is not a ban on compressed bags).
    played = run_play(bag)
    assert played.returncode == 0 and "played 1 messages" in played.stdout, played.stderr


def test_decompression_stops_at_the_cap_whether_or_not_the_header_declares_the_size(tmp_path):
    from backports import zstd

    from distillnerf_ros.tools.play import BagError, decompress_file, decompress_message

    declared = tmp_path / "declared.zstd"
    declared.write_bytes(zstd.compress(b"\x00" * 5_000_000))  # one-shot: the frame header has the size
    streamed = tmp_path / "streamed.zstd"
    with zstd.open(streamed, "wb") as out:  # streamed: no size in the header
        for _ in range(5):
            out.write(b"\x00" * 1_000_000)
    cap = 300_000
    with pytest.raises(BagError, match="declares 5000000 bytes"):
        decompress_file(declared, tmp_path / "declared.out", cap)
    assert not (tmp_path / "declared.out").exists(), "refused from the header before anything was written"
    with pytest.raises(BagError, match="more than the cap"):
        decompress_file(streamed, tmp_path / "streamed.out", cap)
    assert (tmp_path / "streamed.out").stat().st_size <= cap, "the streamed check wrote past the cap"
    assert decompress_file(streamed, tmp_path / "full.out", 5_000_000) == 5_000_000
    with pytest.raises(BagError, match="more than the cap"):
        decompress_message(zstd.compress(b"\x00" * 5_000_000), cap, "/t")
    with pytest.raises(BagError, match="truncated"):
        decompress_message(zstd.compress(b"\x01" * 1000)[:-4], cap, "/t")


def test_a_message_compressed_bag_past_the_cap_is_refused(tmp_path):
    bag = tmp_path / "bomb"
    writer = Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.set_compression(CompressionMode.MESSAGE, CompressionFormat.ZSTD)
    with writer:
        connection = writer.add_connection("/big", "std_msgs/msg/String", msgdef="string data\n",
                                           rihs01="RIHS01_" + "0" * 64)
        payload = b"x" * 8_000_000
        writer.write(connection, 1, b"\x00\x01\x00\x00" + (len(payload) + 1).to_bytes(4, "little") + payload
                     + b"\x00")
    result = run_play(bag, "--max-decompressed-mb", "1")
    assert result.returncode == 2 and "a message on '/big' decompresses to more than the cap" in result.stderr, \
        result.stderr
    assert run_play(bag).returncode == 0
