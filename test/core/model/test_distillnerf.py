"""The full model: shapes for any camera count and batch 2, gradients, novel views, batch independence."""


import pytest
import torch

from distillnerf_core.model.cameras import CameraRig, ring_rig
from distillnerf_core.model.distillnerf import DistillNeRFModel, ModelConfig

HW = (32, 64)


def _inputs(n, b=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    rig = ring_rig(n, HW, batch_size=b)
    return torch.rand(b, n, 3, *HW, generator=g), rig


def _model(**overrides):
    cfg = ModelConfig.load("tiny")
    for section, values in overrides.items():
        for key, value in values.items():
            setattr(getattr(cfg, section), key, value)
    torch.manual_seed(0)
    return DistillNeRFModel(cfg)


@pytest.mark.parametrize("n,b", [(1, 1), (3, 1), (5, 1), (6, 1), (6, 2), (3, 2)])
def test_output_shapes(n, b):
    model = _model().eval()
    images, rig = _inputs(n, b)
    with torch.no_grad():
        out = model(images, rig.intrinsics, rig.cam2ego)
    h, w = model.renderer.render_hw(HW)
    f = model.config.feature_head.dim
    expected = {
        "rgb": (b, n, 3, *HW),
        "depth": (b, n, h, w),
        "coarse_depth": (b, n, h, w),
        "fine_depth": (b, n, h, w),
        "opacity": (b, n, h, w),
        "features": (b, n, f, h, w),
    }
    for name, shape in expected.items():
        t = getattr(out, name)
        assert tuple(t.shape) == shape, f"{name}: shape {tuple(t.shape)}, expected {shape} ({n} cams, batch {b})"
        assert t.dtype == torch.float32, f"{name}: dtype {t.dtype}"
        assert torch.isfinite(t).all(), f"{name}: non-finite values"
    assert out.weights.shape[:4] == (b, n, h, w)
    assert ((out.rgb >= 0) & (out.rgb <= 1)).all(), "rgb must be in [0, 1]"
    assert (out.depth > 0).all() and (out.coarse_depth > 0).all()
    assert out.points_lifted == b * n * model.config.lift.fine_candidates * (HW[0] // 2) * (HW[1] // 2)
    assert out.voxels_occupied["fine"] > 0 and out.voxels_occupied["coarse"] > 0


@pytest.mark.parametrize("lookup", ["nearest", "trilinear"])
def test_gradients_reach_every_parameter(lookup):
    model = _model(renderer={"lookup": lookup, "feature_weight_threshold": 0.0}).train()
    images, rig = _inputs(3, 2)
    out = model(images, rig.intrinsics, rig.cam2ego)
    entropy = -(out.weights.clamp_min(1e-6).log() * out.weights).sum(-1).mean()
    loss = (
        out.rgb.mean()
        + out.depth.mean()
        + out.coarse_depth.mean()
        + out.features.mean()
        + out.opacity.mean()
        + 0.01 * entropy
    )
    loss.backward()
    missing = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)
    ]
    assert not missing, f"{lookup}: no gradient reached {missing}"


def test_a_training_forward_times_every_stage():
    """Speed itself is measured by distillnerf-bench (benchmarks), not asserted here: a machine's load decides it."""
    model = _model().train()
    images, rig = _inputs(6)
    out = model(images, rig.intrinsics, rig.cam2ego)
    (out.rgb.mean() + out.depth.mean() + out.features.mean()).backward()
    assert set(model.stage_ms) == {"encoder", "lift", "voxelize", "sparse_conv", "render", "decode"}
    assert all(ms >= 0 for ms in model.stage_ms.values()), model.stage_ms


def test_batch_elements_are_independent():
    model = _model().eval()
    images, rig = _inputs(3, 2, seed=1)
    with torch.no_grad():
        both = model(images, rig.intrinsics, rig.cam2ego)
        first = model(images[:1], rig.intrinsics[:1], rig.cam2ego[:1])
    for name in ("rgb", "depth", "coarse_depth", "features"):
        a, b = getattr(both, name)[:1], getattr(first, name)
        assert torch.allclose(a, b, atol=1e-4), f"{name}: batch element 0 changes when batched with another frame"


def test_encode_once_render_many_targets():
    model = _model().eval()
    images, rig = _inputs(6)
    with torch.no_grad():
        scene = model.encode(images, rig.intrinsics, rig.cam2ego)
        shift = torch.eye(4).expand(1, 2, 4, 4).clone()
        shift[..., 0, 3] = 1.0  # 1 m to the right in each camera's own frame (a virtual camera)
        virtual = CameraRig(rig.intrinsics[:, :2], rig.cam2ego[:, :2] @ shift, HW, torch.tensor([0, 1]))
        views = model.render(scene, virtual)
        assert views.rgb.shape == (1, 2, 3, *HW)
        small = {"intrinsics": rig.intrinsics[:, :1] / 2, "cam2ego": rig.cam2ego[:, :1], "image_hw": (16, 32)}
        small["intrinsics"][..., 2, 2] = 1
        views = model.render(scene, small)
        assert views.rgb.shape == (1, 1, 3, 16, 32) and views.depth.shape == (1, 1, 8, 16)
        out = model(images, rig.intrinsics, rig.cam2ego, targets=virtual)
        assert out.rgb.shape == (1, 2, 3, *HW) and out.coarse_depth.shape[1] == 6, (
            "coarse_depth stays on the input cameras when rendering other targets"
        )


def test_resized_input_and_ablations(capsys):
    images, rig = _inputs(2)
    big = torch.nn.functional.interpolate(images[0], scale_factor=2.0)[None]
    k = rig.intrinsics.clone()
    k[..., :2, :] *= 2
    for model in (
        _model(lift={"two_stage": False}),
        _model(sparse_conv={"coarse_only": True}),
        _model(feature_head={"enabled": False}),
    ):
        out = model(big, k, rig.cam2ego)
        assert out.rgb.shape == (1, 2, 3, 64, 128), "rgb must come back at the input image size"
    assert out.features is None, "disabled feature head must return features=None"
    assert capsys.readouterr().out == "", "forward must not print"


def test_coarse_only_ablation_has_no_fine_level_and_still_trains():
    images, rig = _inputs(3)
    model = _model(voxels={"fine_level": False})
    scene = model.encode(images, rig.intrinsics, rig.cam2ego)
    assert scene.field.fine.num_voxels == 0 and scene.field.coarse.num_voxels > 0
    out = model.render(scene, rig)
    assert torch.isfinite(out.depth).all() and (out.depth > 0).all(), "coarse level alone must give depth"
    out.rgb.mean().backward()
    assert model.sparse_cnn.stem.weight.grad.abs().sum() > 0, "the sparse CNN must still learn"


def test_camera_id_out_of_range_is_an_error():
    model = _model().eval()
    images, rig = _inputs(1)
    bad = CameraRig(rig.intrinsics, rig.cam2ego, HW, torch.tensor([99]))
    with torch.no_grad(), pytest.raises(ValueError, match="num_camera_embeddings"):
        model.render(model.encode(images, rig.intrinsics, rig.cam2ego), bad)
