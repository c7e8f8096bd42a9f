"""The sky depth target: the segmenter's sky pixels get dense_sky_depth (115 m) in the dense-depth losses."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from distillnerf_core.data.sky import resolve_sky_cache, sky_from_features
from distillnerf_core.training.losses import DistillNeRFLoss, LossConfig, dense_depth_loss

REPO = Path(__file__).resolve().parents[3]
B, N, H, W, h, w = 1, 2, 16, 32, 8, 16


def _out(depth: torch.Tensor) -> SimpleNamespace:
    g = torch.Generator().manual_seed(0)
    return SimpleNamespace(rgb=torch.rand(B, N, 3, H, W, generator=g), depth=depth, coarse_depth=depth.clone(),
                           weights=torch.rand(B, N, h, w, 5, generator=g), opacity=torch.rand(B, N, h, w, generator=g),
                           features=None)


def _real_batch() -> dict:
    """A real-data-like batch: LiDAR on the lower rows only, the segmenter's sky on the top two rows."""
    lidar = torch.zeros(B, N, h, w)
    lidar[..., 4:, ::2] = 12.0
    lidar[0, 0, 0, 3] = 30.0  # one return on a sky pixel: a measured surface, not sky
    sky = torch.zeros(B, N, h, w, dtype=torch.bool)
    sky[..., :2, :] = True
    return {"images": torch.rand(B, N, 3, H, W, generator=torch.Generator().manual_seed(1)), "lidar_depth": lidar,
            "sky_mask": sky}


def test_lidar_only_batch_gets_a_dense_term_on_its_sky_pixels_alone():
    batch = _real_batch()
    depth = torch.full((B, N, h, w), 15.0)  # the "near wall" real-data renders had in the sky rows
    _, terms = DistillNeRFLoss(LossConfig())(_out(depth), batch)
    target = torch.full((B, N, h, w), float("nan"))
    target[..., :2, :] = 115.0
    target[0, 0, 0, 3] = float("nan")
    share = (2 * N * w - 1) / (N * h * w)  # the sky pixels' share of the rays: the reference's per-pixel weight
    torch.testing.assert_close(terms["dense_render"], share * dense_depth_loss(depth, target))
    torch.testing.assert_close(terms["dense_coarse"], share * dense_depth_loss(depth, target))
    assert float(terms["dense_render"]) > 0.1  # (15 - 115) / 120 squared and more, on a quarter of the pixels
    sky_far = depth.clone()
    sky_far[..., :2, :] = 115.0  # rendering the sky at the sky depth: nothing left to learn from the sky term
    _, far = DistillNeRFLoss(LossConfig())(_out(sky_far), batch)
    assert float(far["dense_render"]) == pytest.approx(0.0, abs=1e-7)
    # the LiDAR-return pixel is not sky: a render far there only adds LiDAR loss
    sky_far[0, 0, 0, 3] = 30.0
    _, other = DistillNeRFLoss(LossConfig())(_out(sky_far), batch)
    assert float(other["dense_render"]) == pytest.approx(0.0, abs=1e-7)
    del batch["sky_mask"]
    _, none = DistillNeRFLoss(LossConfig())(_out(depth), batch)
    assert "dense_render" not in none and "dense_coarse" not in none


def test_sky_overrides_the_field_depth_and_the_ego_body_is_left_out():
    batch = _real_batch()
    nerf = torch.full((B, N, h, w), 20.0)  # a field that put the sky at 20 m
    batch["nerf_depth"] = nerf
    masks = torch.ones(B, N, H, W)
    masks[:, 1] = 0.0  # camera 1 is all ego body
    batch["masks"] = masks
    depth = torch.full((B, N, h, w), 20.0)
    _, terms = DistillNeRFLoss(LossConfig())(_out(depth), batch)
    assert "dense_render" not in terms  # the sky went into the field term, not a second term
    target = nerf.clone()
    target[..., :2, :] = 115.0
    target[0, 0, 0, 3] = 20.0
    target[:, 1] = float("nan")
    torch.testing.assert_close(terms["nerf_render"], dense_depth_loss(depth, target))
    assert float(terms["nerf_render"]) > 0.1
    _, off = DistillNeRFLoss(LossConfig(dense_sky_depth=None))(_out(depth), batch)
    assert float(off["nerf_render"]) == pytest.approx(0.0, abs=1e-7)  # no sky target: the field's 20 m stand


def _front_image() -> np.ndarray:
    path = next((REPO / "data/nuscenes_sample/samples/CAM_FRONT").glob("*.jpg"))
    return np.asarray(Image.open(path).convert("RGB"))


def test_sky_from_segmenter_log_probabilities_of_a_real_frame():
    """A segmenter cache's features start with the class log-probabilities: their argmax is the label map."""
    from distillnerf_core.teachers.segmenter import SKY_CLASS, load_segmenter

    seg = load_segmenter()
    image = _front_image()
    logits = seg.logits([image], hw=(256, 448))
    features = torch.cat([torch.log_softmax(logits, 1), torch.randn(1, 4, 256, 448)], 1).half()  # + more channels
    sky = sky_from_features(features[0], (64, 112))
    labels = seg.labels([image], hw=(256, 448), out_hw=(64, 112))[0] == SKY_CLASS
    assert float((sky == labels).float().mean()) > 0.99
    assert float(sky[:21].float().mean()) > 0.4  # the README: sky covers 0.60 of CAM_FRONT's top third
    assert not bool(sky[43:].any())  # and none of its bottom third
    with pytest.raises(ValueError, match="fewer than its 20 classes"):
        sky_from_features(features[0, :12], (64, 112))


def test_sky_settings_resolve_to_a_segmenter_cache_or_none(tmp_path):
    assert resolve_sky_cache(tmp_path, "none") is None and resolve_sky_cache(tmp_path, None) is None
    assert resolve_sky_cache(tmp_path, "auto") is None  # no cache: no sky mask, nothing else changes
    with pytest.raises(FileNotFoundError, match="features/seg"):
        resolve_sky_cache(tmp_path, "seg")


@pytest.fixture(scope="module")
def segmented_root(tmp_path_factory):
    """A tiny synthetic dataroot with a real segmenter cache (distillnerf-cache-features --teacher segmenter)."""
    from train_helpers import VERSION, make_tiny_dataroot

    from distillnerf_core.cli import cache_features as cache_cli

    root = make_tiny_dataroot(tmp_path_factory.mktemp("sky_root"), frames=1)
    assert cache_cli.main(["--dataroot", str(root), "--version", VERSION, "--teacher", "segmenter",
                           "--segmenter-width", "128", "--no-progress"]) == 0
    return root, VERSION


@pytest.mark.slow
def test_dataset_yields_the_sky_of_the_dataroots_segmenter_cache(segmented_root):
    from distillnerf_core.data.datasets import DataConfig, NuScenesDataset, make_dataset
    from distillnerf_core.teachers.cache import load_entry

    root, version = segmented_root
    ds = make_dataset(str(root), version, (32, 64), DataConfig(), (16, 32), load_next=False)  # sky_mask "auto"
    assert ds.sky_cache == root / "features" / "segmenter"
    item = ds[0]
    sample = ds.nusc.get("sample", ds.sample_tokens[0])
    expected = torch.stack([sky_from_features(load_entry(ds.sky_cache, ch, sample["data"][ch]), (16, 32))
                            for ch in ds.cameras])
    assert item["sky_mask"].dtype == torch.bool and item["sky_mask"].shape == (6, 16, 32)
    assert torch.equal(item["sky_mask"], expected)
    # read through the loaded teacher features when they are the same cache: the same mask
    both = NuScenesDataset(root, version, image_size=(32, 64), render_size=(16, 32), load_next=False,
                           features="segmenter", sky_mask="segmenter")
    assert torch.equal(both[0]["sky_mask"], expected)
    off = NuScenesDataset(root, version, image_size=(32, 64), render_size=(16, 32), load_next=False, sky_mask="none")
    assert "sky_mask" not in off[0]


@pytest.mark.slow
def test_a_cache_of_another_teacher_is_no_sky_mask(segmented_root, tmp_path):
    import shutil

    from distillnerf_core.teachers.cache import read_manifest

    root, version = segmented_root
    other = tmp_path / "root"
    shutil.copytree(root, other, symlinks=True)
    manifest = read_manifest(other / "features" / "segmenter")
    assert manifest["teacher"]["kind"] == "segmenter"
    from distillnerf_core.cli import cache_features as cache_cli

    shutil.rmtree(other / "features" / "segmenter")
    assert cache_cli.main(["--dataroot", str(other), "--version", version, "--teacher", "oracle",
                           "--no-progress"]) == 0
    assert resolve_sky_cache(other, "auto") is None  # an oracle cache is not the segmenter's
    with pytest.raises(ValueError, match="'oracle' features, not the segmenter's"):
        resolve_sky_cache(other, "oracle")
