"""The feature-distillation loss wiring: weight resolution, the MSE term and its errors."""

from types import SimpleNamespace

import pytest
import torch

from distillnerf_core.training.config import TrainConfig
from distillnerf_core.training.features import DEFAULT_FEATURE_WEIGHT, prepare_feature_distillation
from distillnerf_core.training.losses import DistillNeRFLoss, LossConfig


def _out(features):
    return SimpleNamespace(rgb=torch.zeros(1, 2, 3, 8, 8), features=features, weights=torch.ones(1, 2, 4, 4, 3),
                           opacity=torch.ones(1, 2, 4, 4), depth=torch.ones(1, 2, 4, 4), coarse_depth=None)


def test_feature_term_is_the_weighted_mse():
    pred = torch.rand(1, 2, 5, 4, 4)
    target = torch.rand(1, 2, 5, 4, 4)
    batch = {"images": torch.zeros(1, 2, 3, 8, 8), "feature_target": target}
    only = LossConfig(rgb_l1=0, rgb_ssim=0, entropy=0, opacity=0, feature=3.0)
    total, terms = DistillNeRFLoss(only)(_out(pred), batch)
    torch.testing.assert_close(terms["feature"], ((pred - target) ** 2).mean())
    torch.testing.assert_close(total, 3.0 * terms["feature"])
    _, without = DistillNeRFLoss(LossConfig())(_out(pred), batch)
    assert "feature" not in without, "weight None (not resolved: no features configured) computes nothing"


def test_feature_weight_without_targets_is_an_error():
    with pytest.raises(ValueError, match="needs teacher features"):
        batch = {"images": torch.zeros(1, 2, 3, 8, 8)}
        DistillNeRFLoss(LossConfig(feature=1.0))(_out(torch.rand(1, 2, 5, 4, 4)), batch)
    cfg = TrainConfig()
    cfg.loss.feature = 1.0
    with pytest.raises(ValueError, match="needs data.features"):
        prepare_feature_distillation(cfg, None, "/nonexistent")


def test_weight_resolution_without_features():
    cfg = TrainConfig()
    assert prepare_feature_distillation(cfg, None, "/nonexistent") is None
    assert cfg.loss.feature == 0.0, "no cache: the feature term is off"
    assert DEFAULT_FEATURE_WEIGHT == 10.0


def test_init_weights_keep_this_runs_pca(tmp_path):
    from distillnerf_core.model.distillnerf import DistillNeRFModel, ModelConfig
    from distillnerf_core.training.checkpoints import CheckpointError, save_checkpoint
    from distillnerf_core.training.features import load_init_weights

    torch.manual_seed(0)
    source = DistillNeRFModel("tiny")
    save_checkpoint(source, tmp_path / "plain.safetensors")
    cfg = ModelConfig.load("tiny")
    cfg.feature_head.teacher_dim = 16
    torch.manual_seed(1)
    target = DistillNeRFModel(cfg)
    target.feature_pca.mean.fill_(0.5)
    load_init_weights(target, str(tmp_path / "plain.safetensors"))
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), f"{key} not initialised from the file"
    assert float(target.feature_pca.mean[0]) == 0.5, "the PCA fitted for this run stays"
    save_checkpoint(DistillNeRFModel("small", load_pretrained=False), tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="other.safetensors"):
        load_init_weights(target, str(tmp_path / "other.safetensors"))
