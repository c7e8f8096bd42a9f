"""The DGP reader and `distillnerf-dgp2nusc` against the checked facts of data/ddad_scene02/README.md."""

from __future__ import annotations

import datetime
import json
import re
import shutil
from pathlib import Path

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
    """A real copy (8 MB): a scene whose files link outside it is refused, so no symlinks here."""
    dst = tmp_path / "scene"
    shutil.copytree(SRC, dst)
    return dst, next(dst.glob("scene*.json"))


def _edit(path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_error_missing_image_names_file_and_key(tmp_path):
    dst, scene_file = _copy_scene(tmp_path)
    shutil.rmtree(dst / "rgb" / "CAMERA_08")
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


def _convert(dst, tmp_path, capsys):
    """distillnerf-dgp2nusc --no-masks on `dst`: (exit code, stderr, output folder)."""
    out = tmp_path / "out"
    code = dgp2nusc.main(["--scene", str(dst), "--out", str(out), "--no-masks"])
    return code, capsys.readouterr().err, out


def _datum(scene: dict, name: str) -> dict:
    return next(d for d in scene["data"] if d["id"]["name"] == name)


FIRST_IMAGE = "rgb/CAMERA_01/15616458249936530.jpg"
FIRST_CLOUD = "point_cloud/LIDAR/15616458250027900.npz"


@pytest.mark.parametrize("case", ["absolute_image", "dotdot_image", "symlinked_image", "dotdot_lidar",
                                  "symlinked_lidar", "dotdot_calibration_key", "symlinked_calibration"])
def test_a_datum_path_that_leaves_the_scene_folder_is_refused(tmp_path, capsys, case):
    dst, scene_file = _copy_scene(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copyfile(dst / FIRST_IMAGE, outside / "secret.jpg")
    shutil.copyfile(dst / FIRST_CLOUD, outside / "secret.npz")
    calib = next((dst / "calibration").glob("*.json"))
    shutil.copyfile(calib, outside / "calib.json")

    def filename(name, value):
        def edit(s):
            body = _datum(s, name)["datum"]
            body["image" if name.startswith("CAMERA") else "point_cloud"]["filename"] = value
        _edit(scene_file, edit)

    if case == "absolute_image":
        filename("CAMERA_01", str(outside / "secret.jpg"))
    elif case == "dotdot_image":
        filename("CAMERA_01", "../outside/secret.jpg")
    elif case == "symlinked_image":
        (dst / FIRST_IMAGE).unlink()
        (dst / FIRST_IMAGE).symlink_to(outside / "secret.jpg")
    elif case == "dotdot_lidar":
        filename("LIDAR", "../outside/secret.npz")
    elif case == "symlinked_lidar":
        (dst / FIRST_CLOUD).unlink()
        (dst / FIRST_CLOUD).symlink_to(outside / "secret.npz")
    elif case == "dotdot_calibration_key":
        _edit(scene_file, lambda s: [x.update(calibration_key="../../outside/calib") for x in s["samples"]])
    elif case == "symlinked_calibration":
        calib.unlink()
        calib.symlink_to(outside / "calib.json")
    code, err, out = _convert(dst, tmp_path, capsys)
    assert code == 2, err
    assert err.startswith("distillnerf-dgp2nusc: error: ") and "outside the scene folder" in err, err
    assert scene_file.name in err or calib.name in err, err
    assert not out.exists(), "nothing is written for a refused scene"


def _set(path_key, value):
    """A mutation of the scene JSON: path_key is a list of keys from the scene's top level."""
    def edit(s):
        target = s
        for key in path_key[:-1]:
            target = target[key]
        target[path_key[-1]] = value
    return edit


def _camera_body(field, value):
    def edit(s):
        _datum(s, "CAMERA_01")["datum"]["image"][field] = value
    return edit


def _pose_field(group, key, value, name="CAMERA_01"):
    def edit(s):
        body = _datum(s, name)["datum"]
        body = body.get("image") or body["point_cloud"]
        body["pose"][group][key] = value
    return edit


def _calibration(index_of, group, key, value):
    def edit(c):
        c[group][c["names"].index(index_of)][key] = value
    return edit


def _zero_quaternion(s):
    _datum(s, "CAMERA_01")["datum"]["image"]["pose"]["rotation"] = {"qw": 0, "qx": 0, "qy": 0, "qz": 0}


CAMERA_KEY = "2050436a0bed451c45a7cd3f0ab9cab2e9b5216f"
MALFORMED_SCENES = {  # case: (scene JSON edit, what the error must name besides the scene file)
    "width_inf": (_camera_body("width", float("inf")), rf"data\[key={CAMERA_KEY}\].datum.image.width"),
    "width_string": (_camera_body("width", "1936"), rf"data\[key={CAMERA_KEY}\].datum.image.width"),
    "width_1e30": (_camera_body("width", 1e30), rf"data\[key={CAMERA_KEY}\].datum.image.width"),
    "width_not_the_image": (_camera_body("width", 640), rf"data\[key={CAMERA_KEY}\].datum.image.width"),
    "zero_quaternion_pose": (_zero_quaternion, rf"data\[key={CAMERA_KEY}\].datum.image.pose.rotation"),
    "nan_pose": (_pose_field("translation", "x", float("nan")),
                 rf"data\[key={CAMERA_KEY}\].datum.image.pose.translation.x"),
    "nan_lidar_rotation": (_pose_field("rotation", "qw", float("nan"), "LIDAR"), r"datum.point_cloud.pose.rotation.qw"),
    "id_not_a_dict": (lambda s: _datum(s, "CAMERA_01").update(id="CAMERA_01"), rf"data\[key={CAMERA_KEY}\].id"),
    "data_a_dict": (_set(["data"], {}), r"\bdata\b"),
    "datum_keys_an_int": (_set(["samples", 0, "datum_keys"], 7), r"samples\[0\].datum_keys"),
    "samples_null": (_set(["samples"], None), r"\bsamples\b"),
    "timestamp_an_int": (lambda s: _datum(s, "CAMERA_01")["id"].update(timestamp=15616458249936530),
                         rf"data\[key={CAMERA_KEY}\].id.timestamp"),
    "duplicate_datum_key": (lambda s: s["data"].append(dict(s["data"][1])), rf"data\[key={CAMERA_KEY}\]"),
    "filename_not_a_string": (_camera_body("filename", ["rgb"]), rf"data\[key={CAMERA_KEY}\].datum.image.filename"),
}
MALFORMED_CALIBRATIONS = {
    "nan_fx": (_calibration("CAMERA_01", "intrinsics", "fx", float("nan")), r"intrinsics\[\d+\] \(CAMERA_01\).fx"),
    "string_cy": (_calibration("CAMERA_01", "intrinsics", "cy", "615"), r"intrinsics\[\d+\] \(CAMERA_01\).cy"),
    "nan_extrinsic": (_calibration("CAMERA_05", "extrinsics", "translation", {"x": float("nan"), "y": 0, "z": 0}),
                      r"extrinsics\[\d+\] \(CAMERA_05\).translation.x"),
    "zero_extrinsic_quaternion": (_calibration("CAMERA_05", "extrinsics", "rotation",
                                               {"qw": 0.0, "qx": 0.0, "qy": 0.0, "qz": 0.0}),
                                  r"extrinsics\[\d+\] \(CAMERA_05\).rotation"),
    "names_not_a_list": (lambda c: c.update(names="CAMERA_01"), r"\bnames\b"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_SCENES))
def test_a_malformed_scene_field_is_an_error_naming_the_file_and_key(tmp_path, capsys, case):
    dst, scene_file = _copy_scene(tmp_path)
    edit, key = MALFORMED_SCENES[case]
    _edit(scene_file, edit)
    with pytest.raises(DGPFormatError, match=rf"{scene_file.name}: .*{key}"):
        read_scene(dst)
    code, err, out = _convert(dst, tmp_path, capsys)
    assert code == 2 and err.startswith("distillnerf-dgp2nusc: error: ") and scene_file.name in err, err
    assert not out.exists()


@pytest.mark.parametrize("case", sorted(MALFORMED_CALIBRATIONS))
def test_a_malformed_calibration_field_is_an_error_naming_the_file_and_key(tmp_path, capsys, case):
    dst, _ = _copy_scene(tmp_path)
    calib = next((dst / "calibration").glob("*.json"))
    edit, key = MALFORMED_CALIBRATIONS[case]
    _edit(calib, edit)
    with pytest.raises(DGPFormatError, match=rf"{calib.name}: .*{key}"):
        read_scene(dst)
    code, err, out = _convert(dst, tmp_path, capsys)
    assert code == 2 and err.startswith("distillnerf-dgp2nusc: error: ") and calib.name in err, err
    assert not out.exists()


def _object_npz(path):
    np.savez(path, data=np.array([[object()] * 4] * 3, dtype=object))


def _truncated(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _npy_named_npz(path):
    with path.open("wb") as handle:
        np.save(handle, np.zeros((3, 4)))


def _nan_points(path):
    points = np.zeros((3, 4))
    points[1, 2] = np.nan
    np.savez(path, data=points)


def _huge_points(path):
    np.savez(path, data=np.full((3, 4), 1e39))  # finite in float64, inf in the float32 .pcd.bin


def _not_an_image(path):
    path.write_bytes(b"this is not a JPEG\n" * 10)


MALFORMED_FILES = {  # case: (file, how it is spoiled, what the error says)
    "npz_object_array": (FIRST_CLOUD, _object_npz, r"key 'data'"),
    "npz_truncated": (FIRST_CLOUD, _truncated, r"npz"),
    "npy_named_npz": (FIRST_CLOUD, _npy_named_npz, r"not a NumPy .npz archive"),
    "npz_nan_points": (FIRST_CLOUD, _nan_points, r"key 'data'.*non-finite"),
    "npz_points_past_float32": (FIRST_CLOUD, _huge_points, r"key 'data'.*non-finite"),
    "camera_file_not_an_image": (FIRST_IMAGE, _not_an_image, r"not a readable image"),
    "camera_file_truncated": (FIRST_IMAGE, lambda p: p.write_bytes(p.read_bytes()[:200]), r"image"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_FILES))
def test_a_malformed_data_file_is_an_error_naming_the_file(tmp_path, capsys, case):
    dst, _ = _copy_scene(tmp_path)
    relative, spoil, message = MALFORMED_FILES[case]
    spoil(dst / relative)
    code, err, out = _convert(dst, tmp_path, capsys)
    assert code == 2, err
    assert err.startswith("distillnerf-dgp2nusc: error: ") and Path(relative).name in err, err
    assert re.search(message, err), err
    assert not out.exists()


def test_the_table_writer_never_writes_nan_into_json(tmp_path):
    """A non-finite number that got past the reader (here put into the parsed scene by hand) stops the writer
    with an error naming the table; no dataroot with `NaN` in its JSON is left."""
    import dataclasses

    scene = read_scene(SRC)
    calibration = scene.calibration["CAMERA_01"]
    intrinsics = calibration.intrinsics.copy()
    intrinsics[0, 0] = np.nan
    scene.calibration["CAMERA_01"] = dataclasses.replace(calibration, intrinsics=intrinsics)
    out = tmp_path / "out"
    with pytest.raises(DGPFormatError, match=r"calibrated_sensor.json: Out of range float values"):
        write_dataroot(scene, out, masks=False)
    assert not out.exists()
