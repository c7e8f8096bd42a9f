"""The DDAD frames through distillnerf-dgp2nusc and distillnerf-nusc2bag, read back with rosbags; config/ddad.yaml."""

import numpy as np
import yaml
from conftest import REPO
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from distillnerf_core.data.dgp import DDAD_CAMERAS, read_scene, write_dataroot
from distillnerf_ros.tools.nusc2bag import convert

SRC = REPO / "data" / "ddad_scene02"
TYPESTORE = get_typestore(Stores.ROS2_KILTED)


def test_ddad_bag_has_every_frame_with_dgp_calibration(tmp_path):
    root = write_dataroot(SRC, tmp_path / "root", masks=False)
    counts = convert(root, tmp_path / "bag", progress=False)
    scene = read_scene(SRC)
    assert counts["/LIDAR_TOP"] == 3 and counts["/tf"] == 21, counts
    infos, stamps = {}, {}
    with Reader(tmp_path / "bag") as reader:
        for connection, stamp, data in reader.messages():
            if connection.topic.endswith("/camera_info"):
                infos[connection.topic.split("/")[1]] = TYPESTORE.deserialize_cdr(data, connection.msgtype)
            if connection.topic.endswith("/image_rect_compressed"):
                stamps.setdefault(connection.topic.split("/")[1], []).append(stamp)
    assert sorted(stamps) == sorted(DDAD_CAMERAS)
    for name, got in stamps.items():
        expected = [frame[name].timestamp_us * 1000 for frame in scene.frames]
        assert got == expected, f"{name}: image stamps {got} != the 100-ns file-name times {expected}"
        K = np.array(infos[name].k).reshape(3, 3)
        assert np.allclose(K, scene.calibration[name].intrinsics), f"{name}: CameraInfo K differs from DGP"
        assert (infos[name].width, infos[name].height) == (1936, 1216)


def test_ddad_parameter_file_names_the_dgp_cameras():
    params = yaml.safe_load((REPO / "config" / "ddad.yaml").read_text())["/**"]["ros__parameters"]
    assert tuple(params["cameras"]) == DDAD_CAMERAS
