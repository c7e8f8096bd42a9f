"""Text queries against a distilled model's features: prompts -> teacher text embeddings -> cosine with the
(PCA-reconstructed) voxel or rendered-pixel features -> temperature softmax across the queries plus a
"background" option, so a voxel that matches no query well gets no label.

    logits  = [cos(x, t_1), ..., cos(x, t_Q), background_cosine] / temperature
    p       = softmax(logits)                  (V, Q + 1)
    label   = argmax over the Q queries, or -1 where the background option wins
    score   = p of the best query;  max_scores[q] = max over voxels of p[:, q]

The text encoder is rebuilt from the teacher identity stored in the checkpoint (`feature_head.teacher`):
the oracle from its seed and class names, CLIP from its local weights file (whose sha256 must match the one
the model was distilled with). A DINOv2-distilled or undistilled model cannot answer (a clear error).

A segmenter-distilled model (kind "segmenter", ESPNetv2 Cityscapes) has no text tower: `SemanticQuerier(...)`
builds a `SegmenterQuerier`, which reads the PCA reconstruction's first 20 channels (the cached class
log-probabilities) as class logits, p_class = softmax(logits / temperature) (temperature 1 unless calibrated),
scores a text by the sum over its classes (names and aliases of a closed vocabulary: teachers/segmenter.py)
and the background option by the classes no query names.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distillnerf_core.teachers.base import Teacher, TeacherConfig, TeacherWeightsError, file_sha256
from distillnerf_core.teachers.pca import FeaturePCA
from distillnerf_core.training.calibration import (
    DomainVerdict,
    median_best_class_cosine,
    median_max_class_probability,
    verdict_from_check,
)

DEFAULT_BACKGROUND = {"oracle": 0.5, "clip": 0.2}
# Softmax temperature of a model without a stored calibration (feature_head.teacher.calibration): over cosines
# 0.01 (the reference uses 0.001 over its classes); a segmenter's logits are read as they are (1).
DEFAULT_TEMPERATURE = {"segmenter": 1.0}
COSINE_TEMPERATURE = 0.01


def normalise_text(text: str) -> str:
    """A query as the text encoders read it: stripped, whitespace runs collapsed to one space, casefolded (CLIP's
    tokenizer lower-cases and cleans whitespace itself; the oracle's names are lower case)."""
    return " ".join(str(text).split()).casefold()


def distinct_texts(texts: Sequence[str]) -> list[str]:
    """Normalised texts, each once, in first-seen order: ["car", " car", "Car"] -> ["car"]. Equal queries would
    share a softmax and split each voxel's probability between them."""
    return list(dict.fromkeys(normalise_text(t) for t in texts))


class SemanticsUnavailableError(ValueError):
    """The model cannot answer text queries (not distilled, or distilled from a teacher without text)."""


@dataclass
class QueryConfig:
    """How feature-text cosines become labels."""

    temperature: float | None = None
    """Softmax temperature over the logits; None = the model's calibrated one (`feature_head.teacher.calibration`,
    fitted by distillnerf-calibrate), else the teacher's default (0.01 over cosines, 1 over segmenter logits)."""
    background: bool = True
    """Add the background option (a voxel may match none of the queries)."""
    background_cosine: float | None = None
    """Cosine the background option scores; None = the calibrated one (fitted with the temperature), else the
    teacher's default (oracle 0.5, CLIP 0.2)."""
    cache_entries: int = 4096
    """Text embeddings kept (least recently used evicted first): distinct texts never grow memory without end."""
    cache_bytes: int = 32 * 1024 * 1024
    """Bytes of text embeddings kept (4096 ViT-L/14 embeddings of 768 float32 take 12 MiB)."""


@dataclass
class QueryResult:
    """Per-element labels (-1 = background), scores and per-query maxima; tensors on the CPU."""

    texts: list[str]
    label: torch.Tensor  # (V,) int64
    score: torch.Tensor  # (V,) float32, probability of the best query
    probabilities: torch.Tensor  # (V, Q) float32
    max_scores: torch.Tensor  # (Q,) float32 (0 where V = 0)
    domain: DomainVerdict | None = None  # these features against the calibration's domain check (None: no check)


def text_encoder_from_identity(identity: dict[str, Any], weights: str | Path | None = None) -> Teacher:
    """The teacher that can encode text for a model distilled from `identity`; `weights` overrides the path."""
    kind = identity.get("kind")
    if not identity or kind is None:
        raise SemanticsUnavailableError("this model was not distilled from a foundation model (its checkpoint names "
                                        "no teacher), so it cannot answer text queries")
    if kind == "oracle":
        from distillnerf_core.teachers.oracle import OracleTeacher

        return OracleTeacher(TeacherConfig(kind="oracle", oracle_classes=list(identity["classes"]),
                                           oracle_dim=int(identity["dim"]), oracle_seed=int(identity["seed"]),
                                           oracle_noise=float(identity.get("noise", 0.0))))
    if kind == "clip":
        from distillnerf_core.teachers.clip import ClipTeacher

        path = Path(weights or identity.get("weights", ""))
        if not path.is_file():
            raise FileNotFoundError(f"CLIP weights for text queries not found: {path} (the model was distilled from "
                                    f"{identity.get('model')} with sha256 {identity.get('weights_sha256')}; give "
                                    "that local file)")
        expected = identity.get("weights_sha256")
        if expected and file_sha256(path) != expected:
            raise TeacherWeightsError(f"{path}: sha256 differs from the CLIP weights this model was distilled from "
                                      f"({expected}); text embeddings would not match its features")
        return ClipTeacher(TeacherConfig(kind="clip", model=identity["model"], weights=str(path),
                                         model_config=identity.get("model_config"),
                                         input_hw=list(identity.get("input_hw", [224, 224])),
                                         templates=list(identity.get("templates") or TeacherConfig().templates)))
    raise SemanticsUnavailableError(f"this model was distilled from {kind} ({identity.get('model')}), which has no "
                                    "text encoder: it cannot answer text queries")


class SemanticQuerier:
    """Scores normalised student features (.., k) against text queries through the stored PCA."""

    def __new__(cls, pca: FeaturePCA, identity: dict[str, Any], *args: Any, **kwargs: Any) -> SemanticQuerier:
        # A segmenter-distilled model is queried through its class logits, not text embeddings: every caller
        # (ScenePredictor, distillnerf-query, the evaluations) gets the right querier from the one constructor.
        if cls is SemanticQuerier and isinstance(identity, dict) and identity.get("kind") == "segmenter":
            cls = SegmenterQuerier
        return super().__new__(cls)

    def __init__(self, pca: FeaturePCA, identity: dict[str, Any], encoder: Teacher | None = None,
                 config: QueryConfig | None = None, weights: str | Path | None = None) -> None:
        self.pca = pca
        self.identity = dict(identity)
        self.config = config or QueryConfig()
        self.encoder = encoder or text_encoder_from_identity(identity, weights)
        if getattr(self.encoder, "dim", 0) and self.encoder.dim != pca.in_dim:
            raise SemanticsUnavailableError(f"the teacher's text embeddings have {self.encoder.dim} channels but the "
                                            f"model's PCA expects {pca.in_dim} (feature_head.teacher_dim): its "
                                            "features cannot be compared with them")
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()  # LRU: oldest first
        self._cache_bytes = 0

    @property
    def known_texts(self) -> list[str] | None:
        """The only accepted texts (oracle class names) or None (open vocabulary)."""
        return self.encoder.known_texts()

    @property
    def calibration(self) -> dict[str, Any] | None:
        """The stored query calibration (temperature, domain, ECE, domain check) or None."""
        return self.identity.get("calibration") or None

    @property
    def temperature(self) -> float:
        """The softmax temperature in use: the configured one, else the calibrated one, else the default."""
        if self.config.temperature is not None:
            return float(self.config.temperature)
        if self.calibration is not None:
            return float(self.calibration["temperature"])
        return DEFAULT_TEMPERATURE.get(self.identity.get("kind", ""), COSINE_TEMPERATURE)

    def background_cosine(self) -> float:
        c = self.config.background_cosine
        if c is None and (self.calibration or {}).get("background_cosine") is not None:
            c = self.calibration["background_cosine"]  # fitted with the temperature
        return float(c) if c is not None else DEFAULT_BACKGROUND.get(self.identity.get("kind", ""), 0.2)

    def check(self, texts: Sequence[str]) -> list[str]:
        """Validated list of texts; an empty list / text or, for the oracle, an unknown name is a ValueError."""
        texts = [str(t) for t in texts]
        if not texts:
            raise ValueError("no text queries given")
        if any(not t.strip() for t in texts):
            raise ValueError("empty text query")
        self.embed(texts)
        return texts

    @property
    def cache_entries(self) -> int:
        return len(self._cache)

    @property
    def cache_bytes(self) -> int:
        return self._cache_bytes

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """(Q, D) unit text embeddings; each text is encoded once while it stays in the bounded LRU cache
        (config.cache_entries, config.cache_bytes)."""
        found: dict[str, torch.Tensor] = {}
        for t in dict.fromkeys(texts):
            if t in self._cache:
                self._cache.move_to_end(t)
                found[t] = self._cache[t]
        new = [t for t in dict.fromkeys(texts) if t not in found]
        if new:
            for t, e in zip(new, self.encoder.encode_text(list(new)).float().cpu(), strict=True):
                found[t] = e
                self._remember(t, e)
        return torch.stack([found[t] for t in texts])

    def _remember(self, text: str, embedding: torch.Tensor) -> None:
        self._cache[text] = embedding
        self._cache_bytes += embedding.numel() * embedding.element_size()
        while self._cache and (len(self._cache) > self.config.cache_entries
                               or self._cache_bytes > self.config.cache_bytes):
            _, evicted = self._cache.popitem(last=False)
            self._cache_bytes -= evicted.numel() * evicted.element_size()

    @torch.no_grad()
    def logits(self, features: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Unscaled logits (V, Q [+ 1]) of features (V, k): the cosines, then the background cosine when the
        background option is on; probabilities = softmax(logits / temperature) (what a calibration fits)."""
        text = self.embed(texts).to(features.device)
        cos = self.pca.cosine_to_text(features.reshape(-1, features.shape[-1]), text)
        if self.config.background:
            cos = torch.cat([cos, cos.new_full((cos.shape[0], 1), self.background_cosine())], dim=1)
        return cos

    @torch.no_grad()
    def probabilities(self, features: torch.Tensor, texts: Sequence[str], channel_dim: int = -1) -> torch.Tensor:
        """Query probabilities with the background last: features (..., k) -> (..., Q + 1) (channels moved last)."""
        x = features.movedim(channel_dim, -1)
        lead = x.shape[:-1]
        probs = torch.softmax(self.logits(x.reshape(-1, x.shape[-1]), texts) / self.temperature, dim=1)
        return probs.reshape(*lead, probs.shape[-1])

    @torch.no_grad()
    def domain_statistic(self, features: torch.Tensor, calibration: dict[str, Any]) -> float:
        """The domain statistic of voxel features (V, k) as `calibration` defines it: the median best cosine to the
        vocabulary it was fitted with (median_best_class_cosine); NaN without voxels."""
        text = self.embed([normalise_text(t) for t in calibration["queries"]]).to(features.device)
        return median_best_class_cosine(self.pca.cosine_to_text(features, text)) if features.shape[0] else math.nan

    @torch.no_grad()
    def domain_verdict(self, features: torch.Tensor) -> DomainVerdict | None:
        """Voxel features (V, k) against the calibration's domain check (domain_statistic); None without a check
        or without voxels."""
        check = (self.calibration or {}).get("domain_check")
        if not check or features.shape[0] == 0:
            return None
        return verdict_from_check(self.calibration, self.domain_statistic(features, self.calibration))

    @torch.no_grad()
    def query(self, features: torch.Tensor, texts: Sequence[str]) -> QueryResult:
        """Label (V, k) normalised voxel features with the texts."""
        texts = self.check(texts)
        probs = self.probabilities(features, texts).float().cpu()
        q = len(texts)
        per_query = probs[:, :q]
        score, label = per_query.max(dim=1)
        if self.config.background:
            label = torch.where(probs[:, q] > score, torch.full_like(label, -1), label)
        max_scores = per_query.amax(dim=0) if per_query.shape[0] else torch.zeros(q)
        return QueryResult(texts, label, score, per_query, max_scores, self.domain_verdict(features.float().cpu()))


class SegmenterQuerier(SemanticQuerier):
    """Closed-vocabulary queries of a segmenter-distilled model: class logits from the PCA reconstruction.

        logits    = reconstruct(x)[:20]                       (the cached log-probabilities, up to a constant)
        p_class   = softmax(logits / temperature)              (20,)
        p(text)   = sum of p_class over the text's classes     (a class name or an alias, e.g. vehicle)
        p(bg)     = sum of p_class over the classes no query names   (the "background" option)
    """

    def __init__(self, pca: FeaturePCA, identity: dict[str, Any], encoder: Teacher | None = None,
                 config: QueryConfig | None = None, weights: str | Path | None = None) -> None:
        from distillnerf_core.teachers.segmenter import CLASS_NAMES

        classes = list(identity.get("classes") or [])
        if classes != list(CLASS_NAMES):
            raise SemanticsUnavailableError(f"this segmenter-distilled model's classes {classes[:4]}... are not the "
                                            f"segmenter's {len(CLASS_NAMES)} Cityscapes classes: cannot read them")
        if pca.in_dim < len(CLASS_NAMES):
            raise SemanticsUnavailableError(f"the model's PCA reconstructs {pca.in_dim} teacher channels, fewer than "
                                            f"the segmenter's {len(CLASS_NAMES)} class log-probabilities")
        self.pca = pca
        self.identity = dict(identity)
        self.config = config or QueryConfig()
        self.encoder = None  # no text tower (and no weights needed to answer)
        self.num_classes = len(CLASS_NAMES)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()  # unused: nothing to embed
        self._cache_bytes = 0

    @property
    def known_texts(self) -> list[str]:
        from distillnerf_core.teachers.segmenter import known_query_names

        return known_query_names()

    def check(self, texts: Sequence[str]) -> list[str]:
        """Validated texts; an empty list / text or a text outside the vocabulary is a ValueError listing it."""
        from distillnerf_core.teachers.segmenter import resolve_queries

        texts = [str(t) for t in texts]
        resolve_queries(texts)
        return texts

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        raise SemanticsUnavailableError("a segmenter-distilled model has no text embeddings: it answers its closed "
                                        "vocabulary through class logits")

    @torch.no_grad()
    def class_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(V, k) normalised features -> (V, 20) class logits (the reconstructed log-probabilities)."""
        return self.pca.reconstruct(features.reshape(-1, features.shape[-1]).float())[:, :self.num_classes]

    @torch.no_grad()
    def logits(self, features: torch.Tensor, texts: Sequence[str] | None = None) -> torch.Tensor:
        """The class logits (V, 20) whatever the texts: the temperature acts on classes, then a text's
        probability is the sum over its classes (what a calibration fits: class targets from the segmenter)."""
        return self.class_logits(features)

    @torch.no_grad()
    def class_probabilities(self, features: torch.Tensor, channel_dim: int = -1) -> torch.Tensor:
        """(..., k) features -> (..., 20) softmax(class logits / temperature)."""
        x = features.movedim(channel_dim, -1)
        probs = torch.softmax(self.class_logits(x) / self.temperature, dim=1)
        return probs.reshape(*x.shape[:-1], probs.shape[-1])

    @torch.no_grad()
    def probabilities(self, features: torch.Tensor, texts: Sequence[str], channel_dim: int = -1) -> torch.Tensor:
        """Text probabilities, the background (classes no text names) last: (..., k) -> (..., Q [+ 1])."""
        from distillnerf_core.teachers.segmenter import resolve_queries

        classes = resolve_queries(texts)
        p = self.class_probabilities(features, channel_dim)
        member = torch.zeros(len(classes), self.num_classes, dtype=p.dtype, device=p.device)
        for q, ids in enumerate(classes):
            member[q, list(ids)] = 1.0
        per_text = p @ member.T
        if not self.config.background:
            return per_text
        rest = (member.sum(0) == 0).to(p.dtype)
        return torch.cat([per_text, (p @ rest)[..., None]], dim=-1)

    @torch.no_grad()
    def domain_statistic(self, features: torch.Tensor, calibration: dict[str, Any]) -> float:
        """median_max_class_probability of voxel features (V, k): the median top class probability at the
        CALIBRATED temperature, the one the check's threshold was measured at (a QueryConfig.temperature override
        changes the scores, not what counts as in domain); NaN without voxels."""
        statistic = (calibration.get("domain_check") or {}).get("statistic", "median_max_class_probability")
        if statistic != "median_max_class_probability":  # the schema refuses any other for a segmenter
            raise SemanticsUnavailableError(f"a segmenter-distilled model's domain check must be "
                                            f"median_max_class_probability, got {statistic!r}")
        return median_max_class_probability(self.class_logits(features), float(calibration["temperature"]))

    @torch.no_grad()
    def domain_verdict(self, features: torch.Tensor) -> DomainVerdict | None:
        """The calibration's domain check (distillnerf-calibrate: median_max_class_probability, domain_statistic);
        None without a check or without voxels."""
        check = (self.calibration or {}).get("domain_check")
        if not check or features.shape[0] == 0:
            return None
        return verdict_from_check(self.calibration, self.domain_statistic(features, self.calibration))
