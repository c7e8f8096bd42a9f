"""The real nuScenes keyframe (data/nuscenes_sample) through the devkit and the same dataset class."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from conftest import REPO

from distillnerf_core.data.datasets import NuScenesDataset
from distillnerf_core.data.nuscenes_sample import build_dataroot
from distillnerf_core.geometry import invert_transform

SRC = REPO / "data" / "nuscenes_sample"
VERSION = "v1.0-test"
SAMPLE = "ca9a282c9e77460f8360f564131a8af5"
# From data/nuscenes_sample/README.md: LiDAR points with depth > 1 m inside each full-resolution image.
README_COUNTS = {"CAM_FRONT": 3067, "CAM_FRONT_RIGHT": 3079, "CAM_FRONT_LEFT": 3704, "CAM_BACK": 4826,
                 "CAM_BACK_LEFT": 4097, "CAM_BACK_RIGHT": 3379}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = build_dataroot(SRC, tmp_path_factory.mktemp("real") / "root")
    return NuScenesDataset(root, VERSION, image_size=(224, 400))


def test_devkit_loads_the_converted_keyframe(dataset):
    nusc = dataset.nusc
    assert [s["token"] for s in nusc.sample] == [SAMPLE], "the converted dataroot should hold the one keyframe"
    assert len(nusc.sample[0]["data"]) == 7, f"expected 6 cameras + LiDAR, got {sorted(nusc.sample[0]['data'])}"
    assert nusc.get("log", nusc.scene[0]["log_token"])["logfile"] == "n015-2018-07-24-11-22-45+0800"
    assert len(dataset) == 1


def test_projected_lidar_counts_match_readme(dataset):
    projections = dataset.lidar_projections(0, min_depth=1.0, max_depth=None)
    for channel, (_u, _v, z) in zip(dataset.cameras, projections, strict=True):
        expected = README_COUNTS[channel]
        assert abs(len(z) - expected) <= 0.01 * expected, \
            f"{channel}: {len(z)} LiDAR points project into the image, README says {expected} (1% tolerance)"
        assert z.min() > 1.0 and 2.5 < np.median(z) < 100, f"{channel}: implausible depths {z.min()}..{z.max()}"


def test_lidar2cam_matches_mmdet3d_info(dataset):
    with open(SRC / "mmdet3d_info.pkl", "rb") as f:  # plain pickle of trusted repo data
        info = pickle.load(f)["data_list"][0]
    assert info["token"] == SAMPLE
    item = dataset[0]
    lidar2ego = item["lidar2ego"].double().numpy()
    assert np.allclose(lidar2ego, info["lidar_points"]["lidar2ego"], atol=1e-5), "lidar2ego differs from the pkl"
    assert np.allclose(item["ref_ego2global"].numpy(), info["ego2global"], atol=1e-4), \
        "reference ego pose is not the ego pose at the LiDAR timestamp"
    for n, channel in enumerate(item["camera_names"]):
        cam = info["images"][channel]
        lidar2cam = invert_transform(item["cam2ego"][n].double().numpy()) @ lidar2ego
        err = np.abs(lidar2cam - np.array(cam["lidar2cam"])).max()
        assert err < 1e-5, f"{channel}: chained lidar->cam differs from the pkl's lidar2cam by {err}"
        assert np.allclose(item["cam2ego_static"][n], cam["cam2ego"], atol=1e-6), f"{channel}: cam2ego differs"
        K_native = np.array(cam["cam2img"])[:3, :3]
        scale = np.diag([400 / 1600, 224 / 900, 1.0])
        assert np.allclose(item["intrinsics"][n].double().numpy(), scale @ K_native, atol=1e-4), \
            f"{channel}: intrinsics not scaled from the native ones"
    # Ego motion matters: ignoring it misplaces CAM_FRONT points by a few tens of cm (README: up to 0.33 m).
    static = invert_transform(item["cam2ego_static"][0].double().numpy()) @ lidar2ego
    compensated = invert_transform(item["cam2ego"][0].double().numpy()) @ lidar2ego
    moved = np.linalg.norm(static[:3, 3] - compensated[:3, 3])
    assert 0.2 < moved < 0.45, f"CAM_FRONT motion compensation moved points by {moved:.3f} m, expected ~0.33 m"


def test_lidar_depth_targets(dataset):
    item = dataset[0]
    depth = item["lidar_depth"]
    assert depth.shape == (6, 112, 200), f"lidar_depth shape {tuple(depth.shape)}"
    assert ((depth == 0) | ((depth >= 1) & (depth < 80))).all(), "lidar_depth outside {0} U [1, 80)"
    for n, channel in enumerate(item["camera_names"]):
        cells = int((depth[n] > 0).sum())
        assert 0.7 * README_COUNTS[channel] < cells <= README_COUNTS[channel], \
            f"{channel}: {cells} non-empty depth cells for {README_COUNTS[channel]} points"
    assert item["has_next"] is False and "dense_depth" not in item, "real keyframe has no next sample and no GT"
    offsets = item["time_offsets"].numpy()
    assert offsets.min() > -0.045 and offsets.max() < 0, f"camera times vs LiDAR {offsets} s (README: -43..-0.5 ms)"


def test_cli_and_contact_sheet(tmp_path, capsys):
    from distillnerf_core.cli import nusc_sample, viz_sample

    assert nusc_sample.main(["--src", str(SRC), "--out", str(tmp_path / "root"), "--link"]) == 0
    out = tmp_path / "sheet.png"
    assert viz_sample.main(["--dataroot", str(tmp_path / "root"), "--version", VERSION, "--sample", SAMPLE,
                            "--out", str(out), "--width", "320"]) == 0
    from PIL import Image

    with Image.open(out) as im:
        assert im.size[0] > 600 and im.size[1] > 300, f"contact sheet too small: {im.size}"


def test_bundled_data_is_found_in_the_source_tree_or_a_ros_install_share(tmp_path):
    from distillnerf_core.data.bundled import SHARE_SUBDIR, bundled_data

    assert bundled_data("nuscenes_sample") == SRC
    installed = tmp_path / "install" / SHARE_SUBDIR / "nuscenes_sample"
    installed.mkdir(parents=True)
    no_source = tmp_path / "site-packages-data"
    assert bundled_data("nuscenes_sample", no_source, f"/nonexistent:{tmp_path / 'install'}") == installed
    with pytest.raises(FileNotFoundError, match="share/distillnerf_ros/data"):
        bundled_data("nuscenes_sample", no_source, "")
