"""distillnerf-nusc2bag on the real keyframe, read back with rosbags (an independent CDR reader)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from distillnerf_core.data.nuscenes_tables import load_sensor_records
from distillnerf_core.geometry import invert_transform, make_transform
from distillnerf_ros.tools.nusc2bag import convert, main

SAMPLE = REPO / "data" / "nuscenes_sample"
TYPESTORE = get_typestore(Stores.ROS2_KILTED)


@pytest.fixture(scope="module", params=["mcap", "sqlite3"])
def bag(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "keyframe"
    counts = convert(SAMPLE, out, storage=request.param, progress=False)
    return out, counts


def read_all(path: Path) -> dict[str, list]:
    messages = {}
    with Reader(path) as reader:
        for connection, stamp, data in reader.messages():
            message = TYPESTORE.deserialize_cdr(data, connection.msgtype)
            messages.setdefault(connection.topic, []).append((stamp, message))
    return messages


def transform_matrix(transform) -> np.ndarray:
    q, t = transform.rotation, transform.translation
    return make_transform([q.w, q.x, q.y, q.z], [t.x, t.y, t.z])


def test_topics_counts_frames_and_stamps(bag):
    path, counts = bag
    messages = read_all(path)
    records = {r.channel: r for r in load_sensor_records(SAMPLE)}
    assert counts["/tf"] == 7 and counts["/tf_static"] == 1 and counts["/LIDAR_TOP"] == 1
    for channel, record in records.items():
        if channel.startswith("CAM"):
            (stamp, image), = messages[f"/{channel}/image_rect_compressed"]
            (_, info), = messages[f"/{channel}/camera_info"]
            assert stamp == record.timestamp_us * 1000, f"{channel}: bag time differs from the sample timestamp"
            assert image.header.frame_id == channel.lower() and image.format == "jpeg"
            assert bytes(image.data) == record.path.read_bytes(), f"{channel}: JPEG bytes were changed"
            assert np.allclose(info.k.reshape(3, 3), record.intrinsics), f"{channel}: K differs from calibration"
            assert (info.width, info.height) == (1600, 900) and not np.any(info.d)
    (_, cloud), = messages["/LIDAR_TOP"]
    assert cloud.width == 34688 and [f.name for f in cloud.fields] == ["x", "y", "z", "intensity", "ring"]
    stamps = [stamp for topic in messages.values() for stamp, _ in topic]
    assert min(stamps) == records["CAM_FRONT_LEFT"].timestamp_us * 1000


def test_tf_chain_reproduces_the_calibration(bag):
    messages = read_all(bag[0])
    records = {r.channel: r for r in load_sensor_records(SAMPLE)}
    static = {t.child_frame_id: t for t in messages["/tf_static"][0][1].transforms}
    assert set(static) == {c.lower() for c in records}, "one base_link -> sensor transform per sensor"
    for channel, record in records.items():
        assert static[channel.lower()].header.frame_id == "base_link"
        assert np.allclose(transform_matrix(static[channel.lower()].transform), record.ego_from_sensor, atol=1e-9)
    ego = {(t.header.stamp.sec * 10**9 + t.header.stamp.nanosec): t for _, m in messages["/tf"] for t in m.transforms}
    lidar, front = records["LIDAR_TOP"], records["CAM_FRONT"]
    # lidar -> cam_front through map at both stamps: the ego-motion-compensated lidar2cam of the nuScenes devkit.
    global_from_lidar_ego = transform_matrix(ego[lidar.timestamp_us * 1000].transform)
    global_from_front_ego = transform_matrix(ego[front.timestamp_us * 1000].transform)
    cam_from_ego = invert_transform(transform_matrix(static["cam_front"].transform))
    from_bag = (cam_from_ego @ invert_transform(global_from_front_ego)
                @ global_from_lidar_ego @ transform_matrix(static["lidar_top"].transform))
    expected = (invert_transform(front.ego_from_sensor) @ invert_transform(front.global_from_ego)
                @ lidar.global_from_ego @ lidar.ego_from_sensor)
    assert np.allclose(from_bag, expected, atol=1e-6)


def test_bad_input_gives_clear_errors_and_leaves_no_partial_bag(tmp_path, capsys):
    assert main(["--dataroot", str(SAMPLE), "--out", str(tmp_path / "x"), "--scene", "scene-9999"]) == 2
    assert "unknown scene(s) ['scene-9999']" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(SAMPLE, broken)
    next((broken / "samples" / "CAM_BACK").glob("*.jpg")).unlink()
    assert main(["--dataroot", str(broken), "--out", str(tmp_path / "y")]) == 2
    error = capsys.readouterr().err
    assert "CAM_BACK" in error and "is missing" in error, error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"], "a failed conversion left files behind"
    (tmp_path / "exists").mkdir()
    assert main(["--dataroot", str(SAMPLE), "--out", str(tmp_path / "exists")]) == 2


def edit_sample_data(dataroot: Path, edit) -> None:
    table = dataroot / "v1.0-test" / "sample_data.json"
    rows = json.loads(table.read_text())
    edit(rows)
    table.write_text(json.dumps(rows))


def lidar_row(rows):
    return next(r for r in rows if "LIDAR_TOP" in r["filename"])


@pytest.mark.parametrize("attack,expected", [
    ("no_filename", "has no filename"),
    ("traversal", "outside the dataroot"),
    ("absolute", "outside the dataroot"),
    ("lidar_size", "not a multiple of 20 bytes"),
])
def test_rows_without_filename_paths_escaping_the_dataroot_or_bad_lidar_files_are_clear_errors(tmp_path, capsys, attack,
                                                                                               expected):
    broken = tmp_path / "broken"
    shutil.copytree(SAMPLE, broken)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the bag")
    if attack == "no_filename":
        edit_sample_data(broken, lambda rows: lidar_row(rows).pop("filename"))
    elif attack == "traversal":
        edit_sample_data(broken, lambda rows: lidar_row(rows).update(filename="../secret.txt"))
    elif attack == "absolute":
        edit_sample_data(broken, lambda rows: lidar_row(rows).update(filename=str(secret)))
    else:
        (lidar,) = (broken / "samples" / "LIDAR_TOP").glob("*.pcd.bin")
        lidar.write_bytes(lidar.read_bytes() + b"\x00\x01\x02")  # 3 stray bytes: np.fromfile drops them silently
    out = tmp_path / "out"
    assert main(["--dataroot", str(broken), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert expected in error and "Traceback" not in error, error
    assert not out.exists(), "no bag may be written from a bad dataroot"
