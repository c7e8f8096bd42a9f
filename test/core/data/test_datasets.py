"""The nuScenes-format dataset class: keys, shapes, pose chains, resize consistency, missing files, batching."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from distillnerf_core.data.datasets import NuScenesDataset, collate_samples, min_pool_depth, project_points
from distillnerf_core.data.synthetic.export import VERSION, write_dataroot
from distillnerf_core.data.synthetic.world import VoxelSpec

NATIVE_W, NATIVE_H = 128, 72
IMAGE = (56, 96)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth_ds")
    write_dataroot(path, scenes=2, frames=2, seed=7, width=NATIVE_W, height=NATIVE_H,
                   voxel_spec=VoxelSpec(voxel_size=0.8), progress=False, threads=1)
    return path


def test_keys_shapes_dtypes(root):
    ds = NuScenesDataset(root, VERSION, image_size=IMAGE)
    assert len(ds) == 4, f"2 scenes x 2 keyframes should give 4 samples, got {len(ds)}"
    item = ds[0]
    h, w = IMAGE[0] // 2, IMAGE[1] // 2
    expected = {
        "images": ((6, 3, *IMAGE), torch.float32), "intrinsics": ((6, 3, 3), torch.float32),
        "cam2ego": ((6, 4, 4), torch.float32), "cam2ego_static": ((6, 4, 4), torch.float32),
        "ego2global": ((6, 4, 4), torch.float64), "ref_ego2global": ((4, 4), torch.float64),
        "lidar2ego": ((4, 4), torch.float32), "time_offsets": ((6,), torch.float32),
        "lidar_depth": ((6, h, w), torch.float32), "next_images": ((6, 3, *IMAGE), torch.float32),
        "next_intrinsics": ((6, 3, 3), torch.float32), "next_cam2ego": ((6, 4, 4), torch.float32),
        "dense_depth": ((6, h, w), torch.float32), "semantics": ((6, h, w), torch.int64),
        "voxel_semantics": ((100, 100, 8), torch.int64),
    }
    for key, (shape, dtype) in expected.items():
        assert key in item, f"missing key {key}"
        assert tuple(item[key].shape) == shape and item[key].dtype == dtype, \
            f"{key}: got {tuple(item[key].shape)} {item[key].dtype}, expected {shape} {dtype}"
    assert 0.0 <= item["images"].min() and item["images"].max() <= 1.0, "images not in [0, 1]"
    assert item["has_next"] is True and ds[1]["has_next"] is False, "has_next wrong at scene boundaries"
    assert item["camera_names"][0] == "CAM_FRONT" and isinstance(item["sample_token"], str)
    d = item["lidar_depth"]
    assert ((d == 0) | ((d >= 1) & (d < 80))).all(), "lidar_depth outside {0} U [1, 80)"
    assert (d > 0).sum() > 500, "too few LiDAR depth targets"


def test_pose_chains(root):
    ds = NuScenesDataset(root, VERSION, image_size=IMAGE)
    item = ds[0]
    ref = item["ref_ego2global"].numpy()
    for n in range(6):
        chained = np.linalg.inv(ref) @ item["ego2global"][n].numpy() @ item["cam2ego_static"][n].double().numpy()
        assert np.allclose(chained, item["cam2ego"][n].double().numpy(), atol=1e-5), \
            f"camera {n}: cam2ego != ref_ego^-1 @ ego(t_cam) @ cam2ego_static"
    # The ego drives 7-10 m/s and cameras fire up to ~45 ms early: compensation moves cameras backwards.
    shift = item["cam2ego"][:, 0, 3] - item["cam2ego_static"][:, 0, 3]
    expected = item["time_offsets"] * 8.5
    assert torch.allclose(shift, expected, atol=0.15), f"motion compensation shift {shift} vs ~speed*dt {expected}"
    # The next keyframe (0.5 s later) is 3.5-5 m ahead in THIS sample's reference frame.
    fwd = item["next_cam2ego"][:, 0, 3] - item["cam2ego"][:, 0, 3]
    assert ((fwd > 3.3) & (fwd < 5.2)).all(), f"next keyframe cameras moved {fwd} m, expected 3.5-5 m forward"
    assert torch.allclose(item["next_intrinsics"], item["intrinsics"]), "same rig, same intrinsics expected"


def test_resize_keeps_projections_consistent(root):
    """A 3D point projects to the same relative pixel at every input size, and lands on the same LiDAR cell."""
    sizes = [(NATIVE_H, NATIVE_W), IMAGE, (40, 50), (90, 200)]
    items = [NuScenesDataset(root, VERSION, image_size=s, load_next=False)[0] for s in sizes]
    rng = np.random.default_rng(0)
    pts_cam = np.concatenate([rng.uniform(-8, 8, (500, 2)), rng.uniform(2, 60, (500, 1))], 1)
    for n in range(6):
        rel = []
        for (h, w), it in zip(sizes, items, strict=True):
            uvw = pts_cam @ it["intrinsics"][n].double().numpy().T
            rel.append(np.stack([uvw[:, 0] / uvw[:, 2] / w, uvw[:, 1] / uvw[:, 2] / h], 1))
            assert np.allclose(it["cam2ego"][n], items[0]["cam2ego"][n]), "extrinsics must not depend on size"
        for (h, w), r in zip(sizes[1:], rel[1:], strict=True):
            err = np.abs(r - rel[0]).max()
            assert err < 1e-6, f"camera {n}: relative pixel differs by {err} between native and {(h, w)}"
    # Projecting LiDAR at native resolution then pooling equals pooling the same points at another grid size.
    u, v, z = np.array([0.2, 10.7, 127.9]), np.array([0.0, 35.5, 71.99]), np.array([5.0, 6.0, 7.0])
    grid = min_pool_depth(u, v, z, (NATIVE_W, NATIVE_H), (36, 64))
    assert grid[0, 0] == 5.0 and grid[17, 5] == 6.0 and grid[35, 63] == 7.0, "min-pool cell assignment wrong"
    u2, v2, z2 = project_points(np.array([[0.0, 0.0, 0.5], [0.0, 0.0, 10.0], [100.0, 0.0, 10.0]]),
                                items[0]["intrinsics"][0].double().numpy(), NATIVE_W, NATIVE_H, 1.0, 80.0)
    assert len(z2) == 1 and z2[0] == 10.0, "near / out-of-image points must be dropped"


def test_missing_files_raise(root, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    ds = NuScenesDataset(copy, VERSION, image_size=IMAGE)
    sample = ds.nusc.get("sample", ds.sample_tokens[0])
    cam_sd = ds.nusc.get("sample_data", sample["data"]["CAM_BACK"])
    lidar_sd = ds.nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    gt = copy / "gt" / "CAM_BACK" / f"{cam_sd['token']}.npz"
    for victim in (copy / cam_sd["filename"], copy / lidar_sd["filename"], gt):
        data = victim.read_bytes()
        victim.unlink()
        with pytest.raises(FileNotFoundError) as err:
            ds[0]
        assert str(victim) in str(err.value), f"error {err.value!r} does not name the missing {victim}"
        victim.write_bytes(data)
    ds[0]
    with pytest.raises(FileNotFoundError, match="v1.0-nope"):
        NuScenesDataset(copy, "v1.0-nope")
    with pytest.raises(KeyError, match="CAM_NOPE"):
        NuScenesDataset(copy, VERSION, image_size=IMAGE, cameras=["CAM_FRONT", "CAM_NOPE"])[0]


def test_collate_batches(root):
    ds = NuScenesDataset(root, VERSION, image_size=IMAGE)
    batch = next(iter(DataLoader(ds, batch_size=2, collate_fn=collate_samples)))
    assert batch["images"].shape == (2, 6, 3, *IMAGE), f"batched images {tuple(batch['images'].shape)}"
    assert batch["cam2ego"].shape == (2, 6, 4, 4)
    assert batch["has_next"].dtype == torch.bool and batch["has_next"].tolist() == [True, False]
    assert len(batch["sample_token"]) == 2 and len(batch["camera_names"]) == 2


def test_no_ground_truth_keys_without_gt(root, tmp_path):
    copy = tmp_path / "nogt"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns("gt"))
    item = NuScenesDataset(copy, VERSION, image_size=IMAGE)[0]
    assert "dense_depth" not in item and "semantics" not in item, "GT keys must be absent when the dataroot lacks gt/"
