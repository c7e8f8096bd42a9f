"""The DGP reader and `distillnerf-dgp2nusc` against the checked facts of data/ddad_scene02/README.md."""

from __future__ import annotations

import datetime
import json
import shutil

import numpy as np
import pytest
from conftest import REPO

from distillnerf_core.cli import dgp2nusc
from distillnerf_core.data.datasets import NuScenesDataset
from distillnerf_core.data.dgp import (
    DDAD_CAMERAS,
    VERSION,
    DGPFormatError,
    load_dgp_points,
    read_scene,
    write_dataroot,
)
from distillnerf_core.data.ego_masks import load_valid_mask

SRC = REPO / "data" / "ddad_scene02"
# README: LiDAR points with z > 1 m inside each image, frame 0 (chained through the datum poses).
README_COUNTS = {"CAMERA_01": 5157, "CAMERA_05": 11916, "CAMERA_06": 11566, "CAMERA_07": 10718, "CAMERA_08": 10130,
                 "CAMERA_09": 9393}
README_POINTS = (47230, 49469, 48620)
# Cameras whose lower edge shows the car's body and where the mask method finds it (README "Real data").
BODY_CAMERAS = ("CAMERA_05", "CAMERA_06", "CAMERA_07", "CAMERA_08")


@pytest.fixture(scope="module")
def scene():
    return read_scene(SRC)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_dataroot(SRC, tmp_path_factory.mktemp("ddad") / "root")


@pytest.fixture(scope="module")
def dataset(root):
    return NuScenesDataset(root, VERSION, image_size=(152, 242), cameras=DDAD_CAMERAS, load_next=False)


def test_front_camera_calibration_matches_readme(scene):
    c = scene.calibration["CAMERA_01"]
    assert np.allclose(c.intrinsics[[0, 1, 0, 1], [0, 1, 2, 2]], [2181.530, 2181.603, 928.022, 615.957], atol=1e-3)
    assert np.allclose(c.body_from_sensor[:3, 3], [1.486, 0.286, 1.562], atol=1e-3)
    axis = c.body_from_sensor[:3, 2]  # optical z axis in the body frame
    assert np.allclose(axis, [0.998, 0.067, -0.009], atol=1e-3), axis


def test_camera_order_follows_the_nuscenes_rig(scene):
    # front, front-right, front-left, back, back-left, back-right: azimuth of each optical axis (deg, left +)
    expected = [(-20, 20), (-90, -20), (20, 90), (160, 200), (90, 160), (-160, -90)]
    for name, (lo, hi) in zip(DDAD_CAMERAS, expected, strict=True):
        z = scene.calibration[name].body_from_sensor[:3, 2]
        az = np.degrees(np.arctan2(z[1], z[0]))
        az = az + 360 if lo > 100 and az < 0 else az
        assert lo <= az <= hi, f"{name} looks at azimuth {az:.0f} deg, expected [{lo}, {hi}]"


def test_timestamps_are_100ns_file_names(scene):
    first = scene.frames[0]["CAMERA_01"]
    assert first.path.stem == "15616458249936530"
    assert first.timestamp_us == 1561645824993653, "100-ns file-name time converted to microseconds"
    assert datetime.datetime.fromtimestamp(first.timestamp_us / 1e6, datetime.timezone.utc).date() == \
        datetime.date(2019, 6, 27)
    lidar = [scene.lidar(i).timestamp_us for i in range(3)]
    gaps = np.diff(lidar) / 1e6
    assert np.allclose(gaps, [0.099, 0.101], atol=1e-3), f"frame spacing {gaps} s"


def test_ego_motion_matches_readme(scene):
    poses = [scene.ego_pose(scene.lidar(i)) for i in range(3)]
    steps = [np.linalg.norm(poses[i + 1][:3, 3] - poses[i][:3, 3]) for i in range(2)]
    assert np.allclose(steps, [1.257, 1.277], atol=2e-3), steps


def test_camera_ego_pose_is_sensor_pose_times_inverse_extrinsic(scene):
    d = scene.frames[1]["CAMERA_07"]
    body = scene.ego_pose(d)
    assert np.allclose(body @ scene.calibration["CAMERA_07"].body_from_sensor, d.world_from_sensor, atol=1e-9)
    # cameras and LiDAR ~9 ms apart on a car at 12.6 m/s: body poses agree to a few cm, not exactly
    gap = np.linalg.norm(body[:3, 3] - scene.ego_pose(scene.lidar(1))[:3, 3])
    assert 0.01 < gap < 0.5, gap


def test_devkit_loads_all_tables_and_chains(root):
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes(VERSION, str(root), verbose=False)
    assert len(list((root / VERSION).glob("*.json"))) == 13
    assert len(nusc.sample) == 3 and len(nusc.scene) == 1
    s = nusc.get("sample", nusc.scene[0]["first_sample_token"])
    n = 1
    while s["next"]:
        s, n = nusc.get("sample", s["next"]), n + 1
    assert n == 3
    assert sorted(s["data"]) == sorted([*README_COUNTS, "LIDAR_TOP"])
    for sd in nusc.sample_data:
        assert nusc.get("ego_pose", sd["ego_pose_token"])["timestamp"] == sd["timestamp"], \
            "each sensor needs the ego pose at its own timestamp"
    cam = nusc.get("sample_data", s["data"]["CAMERA_01"])
    assert (cam["width"], cam["height"]) == (1936, 1216)


def test_lidar_written_as_pcd_bin(root, scene):
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes(VERSION, str(root), verbose=False)
    counts = []
    for i, sample in enumerate(sorted(nusc.sample, key=lambda r: r["timestamp"])):
        sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        raw = np.fromfile(root / sd["filename"], dtype=np.float32)
        assert raw.size % 5 == 0
        pts = raw.reshape(-1, 5)
        src = load_dgp_points(scene.lidar(i).path)
        assert np.allclose(pts[:, :4], src, atol=1e-4) and (pts[:, 4] == 0).all()
        counts.append(len(pts))
    assert tuple(counts) == README_POINTS


def test_projected_lidar_counts_match_readme(dataset):
    projections = dataset.lidar_projections(0, min_depth=1.0, max_depth=None)
    for channel, (_u, _v, z) in zip(dataset.cameras, projections, strict=True):
        expected = README_COUNTS[channel]
        assert abs(len(z) - expected) <= 0.005 * expected, \
            f"{channel}: {len(z)} LiDAR points in the image, README says {expected} (0.5% tolerance)"


def test_masks_cover_the_body_and_not_the_top(root, dataset):
    for ch in README_COUNTS:
        valid = load_valid_mask(root, ch, (1936, 1216))
        body = valid < 0.5
        assert not body[:608].any(), f"{ch}: ego-body mask reaches the top half"
        assert body.mean() < 0.25, f"{ch}: {body.mean():.2f} of the image masked"
        if ch == "CAMERA_01":
            assert body.mean() < 0.005, "the front camera sees no body (checked by eye), its mask should be empty"
        if ch in BODY_CAMERAS:
            bottom = body[-24:].mean()
            assert bottom > 0.5, f"{ch}: only {bottom:.2f} of the bottom 24 rows masked (the body is there)"
    masks = dataset[0]["masks"]
    assert masks.shape == (6, 152, 242) and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert masks[:, :76].min() == 1 and masks.mean() < 1


def test_converter_refuses_existing_output(root, capsys):
    assert dgp2nusc.main(["--scene", str(SRC), "--out", str(root)]) == 2
    assert "exists" in capsys.readouterr().err


def _copy_scene(tmp_path):
    dst = tmp_path / "scene"
    shutil.copytree(SRC, dst, ignore=shutil.ignore_patterns("rgb"))
    (dst / "rgb").mkdir()
    for cam in (SRC / "rgb").iterdir():  # links keep the copy cheap; the reader only opens them
        (dst / "rgb" / cam.name).symlink_to(cam)
    return dst, next(dst.glob("scene*.json"))


def _edit(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_error_missing_image_names_file_and_key(tmp_path):
    dst, scene_file = _copy_scene(tmp_path)
    (dst / "rgb" / "CAMERA_08").unlink()
    with pytest.raises(FileNotFoundError, match=r"data\[key=af8ef5088767a54a6b88266b9109ecaf44009497\].*"
                                                r"rgb/CAMERA_08/15616458249936530.jpg"):
        read_scene(dst)


def test_error_missing_calibration_entry(tmp_path):
    dst, _ = _copy_scene(tmp_path)
    calib = next((dst / "calibration").glob("*.json"))

    def drop(c):
        i = c["names"].index("CAMERA_09")
        for k in ("names", "intrinsics", "extrinsics"):
            c[k].pop(i)
    _edit(calib, drop)
    with pytest.raises(DGPFormatError, match=rf"{calib.name}: names has no entry 'CAMERA_09'"):
        read_scene(dst)


def test_error_unknown_sensor_name(tmp_path):
    dst, scene_file = _copy_scene(tmp_path)

    def rename(s):
        s["data"][3]["id"]["name"] = "RADAR_FRONT"
    _edit(scene_file, rename)
    key = json.loads(scene_file.read_text())["data"][3]["key"]
    with pytest.raises(DGPFormatError, match=rf"{scene_file.name}: data\[key={key}\] id.name: unknown sensor "
                                             r"name 'RADAR_FRONT'"):
        read_scene(dst)


def test_error_timestamps_out_of_order(tmp_path, capsys):
    dst, scene_file = _copy_scene(tmp_path)
    _edit(scene_file, lambda s: s["samples"].reverse())
    out = tmp_path / "out"
    assert dgp2nusc.main(["--scene", str(dst), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "timestamps out of order: samples[1]" in err and scene_file.name in err, err
    assert not out.exists()


def test_failed_write_leaves_no_partial_dataroot(tmp_path):
    dst, _ = _copy_scene(tmp_path)
    bad = sorted((dst / "point_cloud" / "LIDAR").glob("*.npz"))[-1]
    np.savez(bad, points=np.zeros((3, 4)))  # wrong key: fails after the first files were written
    out = tmp_path / "out"
    with pytest.raises(DGPFormatError, match=rf"{bad.name}: key 'data' missing"):
        write_dataroot(dst, out)
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name != "scene"] == []


def test_dataroot_without_mask_files_is_all_valid(tmp_path):
    from distillnerf_core.data.nuscenes_sample import build_dataroot

    root = build_dataroot(REPO / "data" / "nuscenes_sample", tmp_path / "root", link=True)
    masks = NuScenesDataset(root, "v1.0-test", image_size=(64, 112), load_next=False)[0]["masks"]
    assert masks.shape == (6, 64, 112) and bool((masks == 1).all())
