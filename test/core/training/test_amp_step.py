"""One training step under bf16 autocast on the CPU (the trainer's own step function), and the amp setting."""

import pytest
import torch

from distillnerf_core.model.cameras import ring_rig
from distillnerf_core.model.distillnerf import DistillNeRFModel
from distillnerf_core.training.losses import DistillNeRFLoss
from distillnerf_core.training.trainer import TrainStep, optimizer_step, resolve_amp


def test_resolve_amp():
    cpu = torch.device("cpu")
    assert resolve_amp("auto", cpu) is None and resolve_amp("off", cpu) is None
    assert resolve_amp("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        resolve_amp("fp16", cpu)
    with pytest.raises(ValueError, match="amp must be"):
        resolve_amp("fp8", cpu)


@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16])
def test_training_step_under_autocast_updates_every_trained_parameter(amp_dtype):
    torch.manual_seed(0)
    model = DistillNeRFModel("tiny", load_pretrained=False).train()
    hw = tuple(model.config.image_hw)
    rig = ring_rig(6, hw)
    render_hw = model.renderer.render_hw(hw)
    batch = {"images": torch.rand(1, 6, 3, *hw), "intrinsics": rig.intrinsics, "cam2ego": rig.cam2ego,
             "lidar_depth": 5 + 20 * torch.rand(1, 6, *render_hw)}
    step = TrainStep(model, DistillNeRFLoss())
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = []
    for _ in range(2):
        total, terms, out, grad_norm = optimizer_step(step, batch, optimizer, scaler, params, 35.0, amp_dtype, "cpu")
        losses.append(float(total.detach()))
        assert total.dtype == torch.float32 and torch.isfinite(total) and torch.isfinite(grad_norm)
        assert all(torch.isfinite(v) for v in terms.values())
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    # The feature head has no loss term here (no teacher features): it is the only untouched module.
    untouched = {n for n in before if n not in changed}
    assert all(n.startswith("feature_head.") for n in untouched), f"not updated: {sorted(untouched)}"
    assert losses[1] < losses[0] * 1.5, f"loss diverged: {losses}"
