"""Query maths: cosine through the stored PCA, temperature softmax across the queries plus background."""

import pytest
import torch

from distillnerf_core.teachers.base import TeacherConfig
from distillnerf_core.teachers.oracle import OracleTeacher
from distillnerf_core.teachers.pca import FeaturePCA
from distillnerf_core.teachers.query import (
    QueryConfig,
    SemanticQuerier,
    SemanticsUnavailableError,
    text_encoder_from_identity,
)


@pytest.fixture()
def oracle():
    return OracleTeacher(TeacherConfig(kind="oracle", oracle_classes=["road", "car", "building", "pole"],
                                       oracle_dim=32, oracle_noise=0.0))


def _querier(oracle, **kw):
    pca, _ = FeaturePCA.fit(oracle.embeddings.repeat(10, 1) + 0.01 * torch.randn(40, 32), 8)
    return SemanticQuerier(pca, oracle.identity(), config=QueryConfig(**kw)), pca


def test_labels_follow_the_nearest_text(oracle):
    q, pca = _querier(oracle)
    feats = pca.project(oracle.embeddings[[1, 0, 3, 1]])  # car, road, pole, car
    res = q.query(feats, ["road", "car", "pole"])
    assert res.label.tolist() == [1, 0, 2, 1]
    assert (res.score > 0.99).all(), res.score
    assert res.probabilities.shape == (4, 3)
    torch.testing.assert_close(res.max_scores, res.probabilities.max(0).values)


def test_background_when_nothing_matches(oracle):
    q, pca = _querier(oracle, background_cosine=0.5)
    feats = pca.project(oracle.embeddings[[2, 1]])  # building (not asked), car
    res = q.query(feats, ["road", "car"])
    assert res.label.tolist() == [-1, 1], "a building matches neither road nor car: background"
    assert float(res.score[0]) < 0.01 and float(res.score[1]) > 0.99
    no_bg, _ = _querier(oracle, background=False)
    assert no_bg.query(feats, ["road", "car"]).label[0] in (0, 1), "without background every voxel gets a label"


def test_probabilities_are_a_temperature_softmax(oracle):
    q, pca = _querier(oracle, temperature=0.5, background_cosine=0.2)
    feats = pca.project(oracle.embeddings[:2])
    probs = q.probabilities(feats, ["road", "car"])
    cos = pca.cosine_to_text(feats, oracle.encode_text(["road", "car"]))
    logits = torch.cat([cos, torch.full((2, 1), 0.2)], dim=1) / 0.5
    torch.testing.assert_close(probs, torch.softmax(logits, dim=1))
    maps = q.probabilities(feats.T.reshape(8, 1, 2), ["road", "car"], channel_dim=0)
    assert maps.shape == (1, 2, 3)


def test_empty_input_and_bad_texts(oracle):
    q, _ = _querier(oracle)
    res = q.query(torch.zeros(0, 8), ["car"])
    assert res.label.shape == (0,) and res.max_scores.tolist() == [0.0]
    with pytest.raises(ValueError, match="knows only its class names: road, car, building, pole"):
        q.query(torch.zeros(1, 8), ["truck"])
    with pytest.raises(ValueError, match="empty"):
        q.check(["car", " "])
    with pytest.raises(ValueError, match="no text"):
        q.check([])


def test_text_names_are_normalised(oracle):
    torch.testing.assert_close(oracle.encode_text(["Car", " road "]), oracle.embeddings[[1, 0]])


def test_teachers_without_text_cannot_answer():
    with pytest.raises(SemanticsUnavailableError, match="not distilled"):
        text_encoder_from_identity({})
    with pytest.raises(SemanticsUnavailableError, match="no text encoder"):
        text_encoder_from_identity({"kind": "dinov2", "model": "vit_base_patch14_dinov2"})
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        text_encoder_from_identity({"kind": "clip", "model": "ViT-B-32", "weights": "/nonexistent/absent.safetensors"})


def test_oracle_needs_class_names():
    with pytest.raises(ValueError, match="class names"):
        OracleTeacher(TeacherConfig(kind="oracle"))


def test_texts_are_normalised_and_deduplicated_in_first_seen_order():
    from distillnerf_core.teachers.query import distinct_texts, normalise_text

    assert normalise_text("  Traffic \t  LIGHT ") == "traffic light"
    assert distinct_texts(["car", " car", "Car", "road", "CAR  "]) == ["car", "road"]
    assert distinct_texts(["car"] * 64) == ["car"]
