"""DINOv2 teacher on a tiny random timm ViT-S/14 saved as safetensors."""

import pytest
import torch
from teacher_helpers import DINO_KWARGS, DINO_NAME, save_tiny_dinov2

from distillnerf_core.teachers.base import TeacherConfig, TeacherWeightsError
from distillnerf_core.teachers.dinov2 import DinoV2Teacher


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_tiny_dinov2(tmp_path_factory.mktemp("dino"))


def _cfg(weights, **kw):
    return TeacherConfig(kind="dinov2", model=DINO_NAME, weights=str(weights), model_kwargs=dict(DINO_KWARGS), **kw)


def test_dense_features_are_the_patch_tokens(weights):
    teacher = DinoV2Teacher(_cfg(weights, input_hw=[56, 98]))
    images = torch.rand(2, 3, 56, 98)
    feats = teacher.dense_features(images)
    assert feats.shape == (2, 32, 4, 7)
    tokens = teacher.vit.forward_features((images - teacher.mean) / teacher.std)[:, teacher.vit.num_prefix_tokens:]
    torch.testing.assert_close(feats, tokens.transpose(1, 2).reshape(2, 32, 4, 7))
    assert teacher.identity()["kind"] == "dinov2" and teacher.dim == 32


def test_no_text_and_bad_files(weights, tmp_path):
    teacher = DinoV2Teacher(_cfg(weights))
    with pytest.raises(ValueError, match="no text encoder"):
        teacher.encode_text(["car"])
    with pytest.raises(FileNotFoundError, match="gone.safetensors"):
        DinoV2Teacher(_cfg(tmp_path / "gone.safetensors"))
    wrong = _cfg(weights)
    wrong.model_kwargs["embed_dim"] = 64
    wrong.model_kwargs["num_heads"] = 4
    with pytest.raises(TeacherWeightsError, match="tiny_dinov2.safetensors.*does not match"):
        DinoV2Teacher(wrong)
