"""torch.compile of the static-shape stages: same outputs and gradients as eager, and a clean fallback."""

import pytest
import torch

from distillnerf_core.model.cameras import ring_rig
from distillnerf_core.model.distillnerf import COMPILABLE_STAGES, DistillNeRFModel, ModelConfig


def _setup(train: bool = False):
    torch.manual_seed(0)
    cfg = ModelConfig.load("tiny")
    model = DistillNeRFModel(cfg).train(train)
    rig = ring_rig(6, tuple(cfg.image_hw))
    return model, rig, torch.rand(1, 6, 3, *cfg.image_hw)


def _forward(model, rig, images):
    torch.manual_seed(1)  # the renderer's jitter in training mode
    return model(images, rig.intrinsics, rig.cam2ego)


def _close(a, b, name, tol=1e-5):
    assert torch.allclose(a, b, rtol=tol, atol=tol), f"{name} differs from eager by {(a - b).abs().max():.3g}"


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_stages_give_the_eager_outputs(backend):
    """`eager` checks that each stage traces as one graph; `inductor` runs generated CPU kernels."""
    model, rig, images = _setup()
    with torch.no_grad():
        eager = _forward(model, rig, images)
        model.compile_stages(backend=backend)
        compiled = _forward(model, rig, images)
    assert model.compile_errors == {}, f"stages failed to compile: {model.compile_errors}"
    assert set(model._compiled) == set(COMPILABLE_STAGES)
    for name in ("rgb", "depth", "opacity", "features", "coarse_depth", "fine_depth"):
        _close(getattr(compiled, name), getattr(eager, name), name)


@pytest.mark.slow
def test_compiled_stages_train_with_the_eager_gradients():
    """AOTAutograd's joint graph (the training path of torch.compile) gives the eager gradients."""
    model, rig, images = _setup(train=True)

    def grads():
        model.zero_grad()
        out = _forward(model, rig, images)
        (out.rgb.mean() + out.depth.mean() / 50 + out.features.square().mean()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    eager = grads()
    model.compile_stages(backend="aot_eager")
    compiled = grads()
    assert model.compile_errors == {}, f"stages failed to compile: {model.compile_errors}"
    assert compiled.keys() == eager.keys()
    for name, grad in compiled.items():
        _close(grad, eager[name], f"gradient of {name}", tol=1e-4)


@pytest.mark.slow
def test_a_stage_that_fails_to_compile_runs_eagerly_and_says_why():
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no compiler here")

    model, rig, images = _setup()
    with torch.no_grad():
        eager = _forward(model, rig, images)
        model.compile_stages(backend=broken_backend)
        fallback = _forward(model, rig, images)
        again = _forward(model, rig, images)
    assert set(model.compile_errors) == set(COMPILABLE_STAGES), "every stage's failure must be recorded"
    assert all("no compiler here" in reason for reason in model.compile_errors.values())
    assert model._compiled == {}, "failed stages must not be retried every frame"
    for out in (fallback, again):
        assert torch.equal(out.rgb, eager.rgb) and torch.equal(out.depth, eager.depth)


def test_an_input_error_is_raised_not_hidden_by_the_fallback():
    """Bad input fails in the eager stage too: that error is raised and the stage stays compiled."""
    model, _, _ = _setup()
    model.compile_stages(backend="eager")
    two_channel_images = torch.rand(6, 2, 32, 64)
    with torch.no_grad(), pytest.raises(RuntimeError, match="channels"):
        model._run("encoder", two_channel_images, (8, 16))
    assert "encoder" in model._compiled and model.compile_errors == {}
