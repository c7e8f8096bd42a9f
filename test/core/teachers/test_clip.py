"""CLIP teacher on a tiny random open_clip ViT saved as safetensors: loading, MaskCLIP dense features (checked
against torch's own attention with each token attending only to itself), text embeddings and their alignment
with the dense features through the PCA query path."""

import pytest
import torch
import torch.nn.functional as F
from teacher_helpers import CLIP_CONFIG, CLIP_NAME, save_tiny_clip

from distillnerf_core.teachers.base import TeacherConfig, TeacherWeightsError
from distillnerf_core.teachers.clip import ClipTeacher
from distillnerf_core.teachers.pca import FeaturePCA
from distillnerf_core.teachers.query import QueryConfig, SemanticQuerier, text_encoder_from_identity


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


def _teacher(tiny, hw=(56, 56)):
    cfg_path, weights = tiny
    return ClipTeacher(TeacherConfig(kind="clip", model=CLIP_NAME, weights=str(weights), model_config=str(cfg_path),
                                     input_hw=list(hw), templates=["a photo of a {}.", "a {} in the street."]))


def test_loads_the_file_and_shapes(tiny):
    from safetensors.torch import load_file

    teacher = _teacher(tiny, hw=(56, 98))
    for key, value in load_file(str(tiny[1])).items():
        assert torch.equal(teacher.model.state_dict()[key], value), f"{key} not loaded from the file"
    feats = teacher.dense_features(torch.rand(3, 3, 90, 160))
    assert feats.shape == (3, CLIP_CONFIG["embed_dim"], 4, 7), "patch grid of 56x98 at /14 is 4x7"
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(3, 4, 7))
    assert teacher.identity()["weights_sha256"] and teacher.dim == 32


def test_dense_features_are_the_last_blocks_value_path(tiny):
    teacher = _teacher(tiny)
    visual = teacher.model.visual
    images = torch.rand(2, 3, 56, 56)
    x = visual._embeds((images - teacher.mean) / teacher.std)  # native grid: no positional interpolation
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)
    last = visual.transformer.resblocks[-1]
    n = x.shape[1]
    only_self = torch.full((n, n), float("-inf")).fill_diagonal_(0.0)  # each token attends to itself only
    v = last.ls_1(last.attention(last.ln_1(x), attn_mask=only_self))
    expected = F.normalize(visual.ln_post(v[:, 1:]) @ visual.proj, dim=-1).transpose(1, 2).reshape(2, -1, 4, 4)
    torch.testing.assert_close(teacher.dense_features(images), expected, atol=1e-5, rtol=1e-4)


def test_text_is_the_mean_over_templates(tiny):
    teacher = _teacher(tiny)
    tok = teacher.tokenizer(["a photo of a car.", "a car in the street."])
    per_template = F.normalize(teacher.model.encode_text(tok), dim=-1)
    expected = F.normalize(per_template.mean(0, keepdim=True), dim=-1)
    torch.testing.assert_close(teacher.encode_text(["car"]), expected)
    assert teacher.encode_text(["car", "building"]).shape == (2, 32)


def test_text_aligned_with_dense_features_through_the_query_path(tiny):
    """Scores from the stored PCA (k = D: lossless) equal the cosine of CLIP's own dense features with its text."""
    teacher = _teacher(tiny)
    feats = teacher.dense_features(torch.rand(4, 3, 56, 56)).permute(0, 2, 3, 1).reshape(-1, 32)
    pca, _ = FeaturePCA.fit(feats, 32)
    querier = SemanticQuerier(pca, teacher.identity(), config=QueryConfig(background=False))
    texts = ["car", "road", "building"]
    text = teacher.encode_text(texts)
    direct = feats @ text.T
    torch.testing.assert_close(pca.cosine_to_text(pca.project(feats), text), direct, atol=1e-4, rtol=1e-4)
    labels = querier.query(pca.project(feats), texts).label
    assert torch.equal(labels, direct.argmax(1))


def test_text_encoder_rebuilt_from_identity_checks_the_digest(tiny, tmp_path):
    teacher = _teacher(tiny)
    identity = teacher.identity()
    rebuilt = text_encoder_from_identity(identity)
    torch.testing.assert_close(rebuilt.encode_text(["car"]), teacher.encode_text(["car"]))
    _, other = save_tiny_clip(tmp_path, seed=1)
    with pytest.raises(TeacherWeightsError, match="sha256 differs"):
        text_encoder_from_identity(identity, weights=other)


def test_missing_and_mismatched_weights_name_the_file(tiny, tmp_path):
    cfg_path, _ = tiny
    cfg = TeacherConfig(kind="clip", model=CLIP_NAME, weights=str(tmp_path / "absent.safetensors"),
                        model_config=str(cfg_path))
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        ClipTeacher(cfg)
    wider = {**CLIP_CONFIG, "embed_dim": 16}
    _, wrong = save_tiny_clip(tmp_path, config=wider, name="tiny-test-ViT-14-wide")
    cfg.weights = str(wrong)
    with pytest.raises(TeacherWeightsError, match="tiny-test-ViT-14-wide-0.safetensors.*does not match"):
        ClipTeacher(cfg)
    pickle = tmp_path / "clip.pt"
    pickle.write_bytes(b"\x80\x04")
    cfg.weights = str(pickle)
    with pytest.raises(TeacherWeightsError, match="clip.pt.*safetensors"):
        ClipTeacher(cfg)
    with pytest.raises(ValueError, match="never downloaded"):
        ClipTeacher(TeacherConfig(kind="clip", model=CLIP_NAME))
