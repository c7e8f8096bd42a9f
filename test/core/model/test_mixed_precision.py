"""Mixed precision (CPU bf16 autocast) against fp32, the differentiable graph's gathers, the depth-only path.

Tolerances, from what bf16 (8 mantissa bits) does to a random-weight `tiny` model: the continuous outputs
(lift depths, loss) within 2% / 1%; the rendered depth and RGB per pixel mostly within 1%, but a point that
moves across a voxel boundary changes which voxels are occupied (a discrete effect fp32 shows under any
perturbation too), so rendered outputs are compared by their median and 90th percentile, not their maximum.
"""

import collections

import pytest
import torch

from distillnerf_core.model.cameras import ring_rig
from distillnerf_core.model.distillnerf import DistillNeRFModel, ModelConfig
from distillnerf_core.training.losses import DistillNeRFLoss


def _tiny(seed=0, lookup="nearest"):
    torch.manual_seed(seed)
    cfg = ModelConfig.load("tiny")
    cfg.renderer.lookup = lookup
    model = DistillNeRFModel(cfg)
    hw = tuple(cfg.image_hw)
    rig = ring_rig(6, hw)
    return model, torch.rand(1, 6, 3, *hw), rig


def _rel(a, b):
    return ((a.float() - b.float()).abs() / a.float().abs().clamp_min(1e-3)).flatten()


@pytest.mark.parametrize("seed", [0, 1])
def test_bf16_forward_within_tolerance_of_fp32(seed):
    model, images, rig = _tiny(seed)
    model.eval()
    with torch.no_grad():
        ref = model(images, rig.intrinsics, rig.cam2ego)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(images, rig.intrinsics, rig.cam2ego)
    for name in ("depth", "opacity", "coarse_depth", "fine_depth", "weights"):
        assert getattr(out, name).dtype == torch.float32, f"{name} must stay fp32 under autocast (marching, depth)"
    for name in ("coarse_depth", "fine_depth"):
        assert _rel(getattr(ref, name), getattr(out, name)).max() < 0.02, f"bf16 {name} off by more than 2%"
    depth = _rel(ref.depth, out.depth)
    assert depth.median() < 0.01 and depth.quantile(0.9) < 0.05, (
        f"bf16 rendered depth: median rel error {depth.median():.4f}, p90 {depth.quantile(0.9):.4f}")
    rgb = (ref.rgb - out.rgb.float()).abs().flatten()
    assert rgb.mean() < 0.01 and rgb.quantile(0.9) < 0.02, f"bf16 rgb: mean abs error {rgb.mean():.4f}"
    assert (ref.opacity - out.opacity).abs().median() < 0.01


@pytest.mark.slow
@pytest.mark.parametrize("lookup", ["nearest", "trilinear"])
def test_bf16_backward_gradients_agree_with_fp32(lookup):
    model, images, rig = _tiny(0, lookup)
    model.eval()  # no jitter: both precisions march the same samples
    lidar = 5 + 20 * torch.rand(1, 6, *model.renderer.render_hw(tuple(images.shape[-2:])))
    loss_fn = DistillNeRFLoss()
    results = []
    for enabled in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            out = model(images, rig.intrinsics, rig.cam2ego)
            total, _ = loss_fn(out, {"images": images, "lidar_depth": lidar})
        assert total.dtype == torch.float32
        total.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((total.item(), grads))
    (loss32, g32), (loss16, g16) = results
    assert set(g32) == set(g16), "bf16 must reach the same parameters"
    assert all(torch.isfinite(g).all() for g in g16.values())
    assert abs(loss16 - loss32) / loss32 < 0.01, f"bf16 loss {loss16} vs fp32 {loss32}"
    v32 = torch.cat([g32[n].flatten() for n in g32])
    v16 = torch.cat([g16[n].flatten() for n in g32])
    cos = torch.nn.functional.cosine_similarity(v32, v16, dim=0).item()
    ratio = (v16.norm() / v32.norm()).item()
    assert cos > 0.9 and 0.7 < ratio < 1.3, f"bf16 gradient: cosine {cos:.3f}, norm ratio {ratio:.3f} vs fp32"


def _graph_ops(roots):
    seen, stack, names = set(), [t.grad_fn for t in roots if t is not None], collections.Counter()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names[type(fn).__name__] += 1
        stack.extend(f for f, _ in fn.next_functions)
    return names


@pytest.mark.parametrize("lookup", ["nearest", "trilinear"])
def test_no_advanced_index_gather_in_the_training_graph(lookup):
    """Advanced-index gathers backpropagate through sort + index_put_(accumulate): 98% of a GPU step."""
    model, images, rig = _tiny(0, lookup)
    model.train()
    out = model(images, rig.intrinsics, rig.cam2ego)
    ops = _graph_ops([out.rgb, out.depth, out.features, out.weights, out.coarse_depth, out.opacity])
    assert ops["IndexSelectBackward0"] > 0, "test setup: the gathers must be in the graph"
    bad = {n: c for n, c in ops.items() if n in ("IndexBackward0", "IndexPutBackward0")}
    assert not bad, f"advanced-index gathers left in the differentiable graph: {bad}"


def test_depth_only_render_runs_no_decoder_and_no_feature_lookup():
    model, images, rig = _tiny(0)
    model.eval()
    calls = collections.Counter()
    model.decoder.register_forward_hook(lambda *_: calls.update(["decoder"]))
    model.feature_head.register_forward_hook(lambda *_: calls.update(["head"]))
    with torch.no_grad():
        scene = model.encode(images, rig.intrinsics, rig.cam2ego)
        full = model.render(scene, rig)
        assert calls == {"decoder": 1, "head": 1}
        depth_only = model.render(scene, rig, rgb=False, features=False)
    assert calls == {"decoder": 1, "head": 1}, f"depth-only render ran {calls}"
    assert depth_only.rgb is None and depth_only.features is None and depth_only.field_features is None
    assert torch.equal(depth_only.depth, full.depth) and torch.equal(depth_only.opacity, full.opacity)
