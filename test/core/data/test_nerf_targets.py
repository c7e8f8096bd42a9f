"""Virtual camera poses, the target cache's layout and manifest, the dataset reading it, resumability."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from train_helpers import VERSION, make_tiny_dataroot

from distillnerf_core.data.datasets import NuScenesDataset
from distillnerf_core.data.nerf_targets import DEFAULT_OFFSETS, entry_path, virtual_cam2ego
from distillnerf_core.model.cameras import ring_rig
from distillnerf_core.scene_fit.field import FieldConfig
from distillnerf_core.scene_fit.fit import FitConfig, fit_dataroot


def test_virtual_cameras_shift_in_the_cameras_own_frame():
    rig = ring_rig(4, (32, 64))  # camera 0 looks along ego +x, camera 1 along +y
    poses = virtual_cam2ego(rig.cam2ego[0], torch.tensor(DEFAULT_OFFSETS))  # (4, 3, 4, 4)
    base = rig.cam2ego[0, :, :3, 3]
    left, right, up = (poses[:, v, :3, 3] - base for v in range(3))
    torch.testing.assert_close(left[0], torch.tensor([0.0, 1.0, 0.0]))  # facing +x, left is +y
    torch.testing.assert_close(right[0], torch.tensor([0.0, -1.0, 0.0]))
    torch.testing.assert_close(left[1], torch.tensor([-1.0, 0.0, 0.0]))  # facing +y, left is -x
    torch.testing.assert_close(up[2], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(poses[..., :3, :3], rig.cam2ego[0, :, None, :3, :3].expand(4, 3, 3, 3))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = make_tiny_dataroot(tmp_path_factory.mktemp("nerf") / "root", frames=2)
    cfg = FitConfig(field=FieldConfig(resolutions=[8, 16], features=4, hidden=8, coarse_samples=8, fine_samples=4),
                    image_hw=[16, 32], render_hw=[8, 16], steps=3, rays=64, holdout_every=2)
    out = root / "nerf" / "default"
    manifest = fit_dataroot(root, VERSION, out, cfg, progress=False)
    return root, out, cfg, manifest


def test_cache_layout_and_manifest(fitted):
    root, out, cfg, manifest = fitted
    assert manifest["complete"] and manifest["version"] == VERSION
    assert manifest["settings"]["offsets"] == [list(o) for o in DEFAULT_OFFSETS]
    (scene, record), = manifest["scenes"].items()
    assert (out / "scenes" / f"{scene}.json").is_file()
    assert record["train_frames"] == [0] and len(record["samples"]) == 2
    q = record["quality"]
    assert [f["role"] for f in q["frames"]] == ["train", "held out"]
    for key in ("held_out_lidar_abs_rel", "held_out_frames_psnr", "held_out_frames_lidar_abs_rel", "dense_abs_rel"):
        assert key in q
    assert json.loads((out / "manifest.json").read_text())["scenes"][scene]["entries"] == 2 * 6
    ds = NuScenesDataset(root, VERSION, image_size=(32, 64), render_size=(16, 32), load_next=False)
    sample = ds.nusc.get("sample", ds.sample_tokens[0])
    for ch in ds.cameras:
        with np.load(entry_path(out, ch, sample["data"][ch])) as z:
            assert z["depth"].shape == (8, 16) and z["virtual_depth"].shape == (3, 8, 16)
            assert z["virtual_rgb"].shape == (3, 8, 16, 3) and z["virtual_rgb"].dtype == np.uint8


def test_dataset_reads_targets_and_a_missing_entry_is_an_error(fitted):
    root, out, _, _ = fitted
    ds = NuScenesDataset(root, VERSION, image_size=(32, 64), render_size=(16, 32), load_next=False,
                         nerf_targets="default")
    item = ds[0]
    assert item["nerf_depth"].shape == (6, 16, 32) and item["virtual_depth"].shape == (6, 3, 16, 32)
    assert item["virtual_images"].shape == (6, 3, 3, 32, 64)
    torch.testing.assert_close(item["virtual_cam2ego"], virtual_cam2ego(item["cam2ego"],
                                                                        torch.tensor(DEFAULT_OFFSETS)))
    sample = ds.nusc.get("sample", ds.sample_tokens[1])
    path = entry_path(out, ds.cameras[0], sample["data"][ds.cameras[0]])
    moved = path.with_suffix(".bak")
    path.rename(moved)
    try:
        with pytest.raises(FileNotFoundError, match="missing NeRF target"):
            ds[1]
    finally:
        moved.rename(path)
    with pytest.raises(FileNotFoundError, match="manifest"):
        NuScenesDataset(root, VERSION, image_size=(32, 64), load_next=False, nerf_targets="nonexistent")


def test_rerun_skips_complete_scenes_and_refuses_other_settings(fitted, caplog):
    root, out, cfg, _ = fitted
    scene_file = next((out / "scenes").glob("*.json"))
    before = scene_file.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="distillnerf_core.scene_fit.fit"):
        fit_dataroot(root, VERSION, out, cfg, progress=True)
    assert "complete, skipped" in caplog.text
    assert scene_file.stat().st_mtime_ns == before
    other = FitConfig(**{**cfg.__dict__, "steps": 4})
    with pytest.raises(ValueError, match="other settings"):
        fit_dataroot(root, VERSION, out, other, progress=False)
