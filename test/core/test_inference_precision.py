"""ScenePredictor in bf16 on the CPU against fp32, and its depth-only fast path."""

import collections

import numpy as np
import pytest
import torch
from test_inference import ring

from distillnerf_core.inference import OccupancyConfig, ScenePredictor
from distillnerf_core.model.distillnerf import DistillNeRFModel


def _frame(n=6, width=96, height=48):
    Ks, extrinsics = ring(n, width, height)
    images = [np.random.default_rng(i).integers(0, 255, (height, width, 3), dtype=np.uint8) for i in range(n)]
    return images, Ks, extrinsics


def test_bf16_predictor_matches_fp32_within_tolerance():
    torch.manual_seed(0)
    model = DistillNeRFModel("tiny", load_pretrained=False)
    occ = OccupancyConfig(voxel_size=2.0, threshold=0.0)
    fp32 = ScenePredictor(model, "cpu", "fp32", occupancy=occ).predict(*_frame(), depth=True, rgb=True)
    bf16 = ScenePredictor(model, "cpu", "bf16", occupancy=occ).predict(*_frame(), depth=True, rgb=True)
    assert bf16.depth.dtype == np.float32 and np.isfinite(bf16.depth).all()
    rel = np.abs(bf16.depth - fp32.depth) / fp32.depth
    assert np.median(rel) < 0.01 and np.quantile(rel, 0.9) < 0.05, f"bf16 depth: median rel {np.median(rel):.4f}"
    rgb_err = np.abs(bf16.rgb.astype(int) - fp32.rgb.astype(int))
    assert rgb_err.mean() < 3, f"bf16 rgb mean error {rgb_err.mean():.2f} / 255"
    assert bf16.bev_probability.shape == fp32.bev_probability.shape


def test_fp16_predictor_on_the_cpu_is_refused():
    with pytest.raises(ValueError, match="fp16"):
        ScenePredictor(DistillNeRFModel("tiny", load_pretrained=False), "cpu", "fp16")


def test_depth_only_prediction_runs_no_decoder_and_no_feature_head():
    torch.manual_seed(0)
    model = DistillNeRFModel("tiny", load_pretrained=False)
    calls = collections.Counter()
    model.decoder.register_forward_hook(lambda *_: calls.update(["decoder"]))
    model.feature_head.register_forward_hook(lambda *_: calls.update(["head"]))
    predictor = ScenePredictor(model, "cpu")
    depth_only = predictor.predict(*_frame(), depth=True, rgb=False, occupancy=False)
    assert not calls, f"depth only ran {dict(calls)}"
    full = predictor.predict(*_frame(), depth=True, rgb=True, occupancy=False)
    assert calls == {"decoder": 1}, f"depth + RGB must run the decoder but not the feature head: {dict(calls)}"
    assert np.array_equal(depth_only.depth, full.depth), "the fast path must give the same depth"
