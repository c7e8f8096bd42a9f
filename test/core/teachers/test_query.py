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


class CountingEncoder:
    """Any text -> a deterministic unit vector; counts the texts it encodes."""

    dim = 32

    def __init__(self) -> None:
        self.encoded = 0

    def known_texts(self):
        return None

    def encode_text(self, texts):
        self.encoded += len(texts)
        rows = [torch.randn(self.dim, generator=torch.Generator().manual_seed(hash(t) % 2**31)) for t in texts]
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


def test_the_text_embedding_cache_is_a_bounded_lru_by_count_and_bytes(oracle):
    pca, _ = FeaturePCA.fit(oracle.embeddings.repeat(10, 1) + 0.01 * torch.randn(40, 32), 8)
    encoder = CountingEncoder()
    querier = SemanticQuerier(pca, {"kind": "clip"}, encoder=encoder, config=QueryConfig(cache_entries=100))
    for start in range(0, 5000, 50):  # 5000 distinct texts, 50 a call
        querier.embed([f"text {i}" for i in range(start, start + 50)])
        assert querier.cache_entries <= 100
    assert querier.cache_entries == 100 and querier.cache_bytes == 100 * 32 * 4
    querier.embed(["text 4950"])  # recently used: still cached, not encoded again
    assert encoder.encoded == 5000
    querier.embed(["text 0"])  # evicted long ago: encoded again
    assert encoder.encoded == 5001
    first = querier.embed(["text 4951", "text 4951"])  # duplicates in one call: one embedding
    assert first.shape == (2, 32) and torch.equal(first[0], first[1])
    by_bytes = SemanticQuerier(pca, {"kind": "clip"}, encoder=CountingEncoder(),
                               config=QueryConfig(cache_bytes=10 * 32 * 4))
    by_bytes.embed([f"t{i}" for i in range(64)])  # more than fit in one call: the call still gets all 64
    assert by_bytes.cache_entries == 10 and by_bytes.cache_bytes == 10 * 32 * 4
