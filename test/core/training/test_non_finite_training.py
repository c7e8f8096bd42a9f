"""A run that goes non-finite stops with the step and the samples and saves nothing non-finite; a checkpoint
with a NaN or inf tensor is refused."""

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import VERSION, make_tiny_dataroot

from distillnerf_core.model.distillnerf import DistillNeRFModel
from distillnerf_core.training.checkpoints import CheckpointError, save_checkpoint
from distillnerf_core.training.config import load_train_config
from distillnerf_core.training.trainer import NonFiniteTrainingError, train


@pytest.mark.slow
def test_a_diverging_run_stops_with_the_step_and_the_samples_and_saves_nothing_non_finite(tmp_path):
    root = make_tiny_dataroot(tmp_path / "root", frames=2)
    cfg = load_train_config("train_tiny")
    cfg.optim.lr = 1e30  # one Adam step moves every weight by ~1e30: the next forward overflows
    cfg.optim.grad_clip = 1e30
    cfg.ckpt_every = 1
    run = tmp_path / "run"
    with pytest.raises(NonFiniteTrainingError, match=r"training stopped at step \d+: .*non-finite.* on samples \['"):
        train(cfg, str(root), VERSION, run, max_steps=6, threads=1, progress=False)
    assert not (run / "model.safetensors").exists(), "no final weights from a run that went non-finite"
    for weights in run.glob("checkpoints/step_*/*.safetensors"):
        for name, tensor in load_file(str(weights)).items():
            assert not tensor.is_floating_point() or bool(torch.isfinite(tensor).all()), f"{weights}: {name}"


def test_save_checkpoint_refuses_non_finite_weights(tmp_path):
    model = DistillNeRFModel("tiny", load_pretrained=False)
    name, param = next(iter(model.named_parameters()))
    with torch.no_grad():
        param.view(-1)[0] = float("nan")
    path = tmp_path / "model.safetensors"
    with pytest.raises(CheckpointError, match=rf"refusing to save non-finite weights.*{name}"):
        save_checkpoint(model, path)
    assert not path.exists() and not path.with_suffix(".json").exists()
