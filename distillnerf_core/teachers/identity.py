"""The schema of a teacher identity (`feature_head.teacher` of a checkpoint's sidecar, written by training from
`Teacher.identity()` plus the PCA it fitted): types, ranges and consistency with the model's PCA, checked when a
checkpoint's config is read so that a bad sidecar fails loading with the key named, not a query or a
diagnostics call later (`'int' object is not subscriptable`, `mat1 and mat2 shapes cannot be multiplied`).
Keys not listed here are left alone (newer writers may add some)."""

from __future__ import annotations

import math
import re
from typing import Any

from distillnerf_core.teachers.base import SEGMENTER_OUTPUTS, TEACHER_KINDS

SHA256_HEX = re.compile(r"[0-9a-f]{64}")
PREFIX = "feature_head.teacher"
CALIBRATION = f"{PREFIX}.calibration"
# Per-frame statistics a calibration's domain check may store (training/calibration.py computes them).
# median_best_class_cosine: text-embedding teachers; median_max_class_probability: segmenter (class logits).
DOMAIN_STATISTICS = ("median_best_class_cosine", "median_max_class_probability")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _string(identity: dict, key: str, required: bool = False, nonempty: bool = False) -> None:
    if key not in identity or identity[key] is None:
        if required:
            raise ValueError(f"{PREFIX}.{key} is required for a {identity.get('kind')} teacher")
        return
    value = identity[key]
    if not isinstance(value, str) or (nonempty and not value.strip()):
        raise ValueError(f"{PREFIX}.{key} must be a{' non-empty' if nonempty else ''} string, got {value!r}")


def _positive_int(identity: dict, key: str, where: str = PREFIX) -> None:
    value = identity.get(key)
    if not _is_int(value) or value <= 0:
        raise ValueError(f"{where}.{key} must be a positive integer, got {value!r}")


def _strings(identity: dict, key: str, required: bool = False, contains: str = "") -> None:
    if key not in identity or identity[key] is None:
        if required:
            raise ValueError(f"{PREFIX}.{key} is required for a {identity.get('kind')} teacher")
        return
    value = identity[key]
    if not isinstance(value, list) or not value or not all(isinstance(t, str) and t.strip() for t in value):
        raise ValueError(f"{PREFIX}.{key} must be a non-empty list of non-empty strings, got {value!r}"[:300])
    if contains and not all(contains in t for t in value):
        raise ValueError(f"{PREFIX}.{key}: every entry must contain {contains!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"{PREFIX}.{key} has duplicate entries")


def _validate_segmenter(identity: dict) -> None:
    """The segmenter's keys: its class names (the closed vocabulary, in output-channel order), what was cached
    (`outputs`, which fixes `dim`), the input width and the cache stride."""
    from distillnerf_core.teachers.segmenter import CLASS_NAMES, teacher_dim

    _strings(identity, "classes", required=True)
    if list(identity["classes"]) != list(CLASS_NAMES):
        raise ValueError(f"{PREFIX}.classes must be the segmenter's {len(CLASS_NAMES)} class names in channel order "
                         f"({', '.join(CLASS_NAMES)}), got {identity['classes']!r}"[:300])
    outputs = identity.get("outputs", "log_probs")
    if outputs not in SEGMENTER_OUTPUTS:
        raise ValueError(f"{PREFIX}.outputs must be one of {SEGMENTER_OUTPUTS}, got {outputs!r}"[:200])
    if identity["dim"] != teacher_dim(outputs):
        raise ValueError(f"{PREFIX}.dim ({identity['dim']}) does not match outputs {outputs!r} "
                         f"({teacher_dim(outputs)} channels)")
    for key in ("input_width", "stride"):
        if key in identity:
            _positive_int(identity, key)
    floor = identity.get("log_prob_floor", -10.0)
    if not _is_number(floor) or floor >= 0:
        raise ValueError(f"{PREFIX}.log_prob_floor must be a finite negative number, got {floor!r}")


def validate_teacher_identity(identity: Any, teacher_dim: int, feature_dim: int) -> None:
    """ValueError naming the key when `identity` (empty: not distilled) is not a valid teacher identity for a
    model whose PCA maps `teacher_dim` teacher channels to `feature_dim` feature channels."""
    if not isinstance(identity, dict):
        raise ValueError(f"{PREFIX} must be a mapping, got {type(identity).__name__}")
    if not identity:
        return
    kind = identity.get("kind")
    if kind not in TEACHER_KINDS:
        raise ValueError(f"{PREFIX}.kind must be one of {TEACHER_KINDS}, got {kind!r}")
    _string(identity, "model", required=kind != "oracle", nonempty=True)
    _positive_int(identity, "dim")
    if teacher_dim and identity["dim"] != teacher_dim:
        raise ValueError(f"{PREFIX}.dim ({identity['dim']}) does not match the PCA's input channels "
                         f"(feature_head.teacher_dim {teacher_dim})")
    _string(identity, "weights", required=kind in ("clip", "dinov2"), nonempty=True)
    sha = identity.get("weights_sha256")
    if sha is not None and not (isinstance(sha, str) and SHA256_HEX.fullmatch(sha)):
        raise ValueError(f"{PREFIX}.weights_sha256 must be 64 lower-case hex digits, got {sha!r}"[:200])
    _string(identity, "model_config")
    if not isinstance(identity.get("model_kwargs", {}), dict):
        raise ValueError(f"{PREFIX}.model_kwargs must be a mapping, got {identity['model_kwargs']!r}"[:200])
    if "input_hw" in identity:
        hw = identity["input_hw"]
        if not (isinstance(hw, list) and len(hw) == 2 and all(_is_int(v) and v > 0 for v in hw)):
            raise ValueError(f"{PREFIX}.input_hw must be [H, W] of positive integers, got {hw!r}"[:200])
    _strings(identity, "templates", contains="{}")
    if kind == "oracle":
        _strings(identity, "classes", required=True)
        if not _is_int(identity.get("seed")):
            raise ValueError(f"{PREFIX}.seed must be an integer, got {identity.get('seed')!r}")
        noise = identity.get("noise", 0.0)
        if not _is_number(noise) or noise < 0:
            raise ValueError(f"{PREFIX}.noise must be a finite number >= 0, got {noise!r}")
        if "stride" in identity:
            _positive_int(identity, "stride")
    if kind == "segmenter":
        _validate_segmenter(identity)
    if identity.get("calibration") is not None:
        validate_calibration(identity["calibration"], kind)
    pca = identity.get("pca")
    if pca is not None:
        if not isinstance(pca, dict):
            raise ValueError(f"{PREFIX}.pca must be a mapping, got {pca!r}"[:200])
        _positive_int(pca, "dim", f"{PREFIX}.pca")
        if feature_dim and pca["dim"] != feature_dim:
            raise ValueError(f"{PREFIX}.pca.dim ({pca['dim']}) does not match feature_head.dim ({feature_dim})")
        variance = pca.get("explained_variance", 0.0)
        if not _is_number(variance) or not 0.0 <= variance <= 1.0 + 1e-6:
            raise ValueError(f"{PREFIX}.pca.explained_variance must be a number in [0, 1], got {variance!r}")
        fit = pca.get("fit_vectors", 0)
        if not _is_int(fit) or fit < 0:
            raise ValueError(f"{PREFIX}.pca.fit_vectors must be an integer >= 0, got {fit!r}")


def _number(mapping: dict, key: str, where: str, low: float | None = None, high: float | None = None,
            positive: bool = False, required: bool = False) -> None:
    if key not in mapping or mapping[key] is None:
        if required:
            raise ValueError(f"{where}.{key} is required")
        return
    value = mapping[key]
    if (not _is_number(value) or (positive and value <= 0) or (low is not None and value < low)
            or (high is not None and value > high)):
        rule = "a positive finite number" if positive else f"a finite number in [{low}, {high}]"
        raise ValueError(f"{where}.{key} must be {rule}, got {value!r}"[:200])


def validate_calibration(calibration: Any, kind: str | None = None) -> None:
    """ValueError naming the key when a stored query calibration is malformed: `temperature` (> 0) is required;
    `domain` names what it was fitted on; `ece_*` lie in [0, 1]; `queries` are the texts it was fitted with;
    `domain_check` = {statistic (one of DOMAIN_STATISTICS), threshold (finite), in_domain {...}}."""
    where = CALIBRATION
    if not isinstance(calibration, dict):
        raise ValueError(f"{where} must be a mapping, got {type(calibration).__name__}")
    _number(calibration, "temperature", where, positive=True, required=True)
    if not isinstance(calibration.get("domain"), str) or not calibration["domain"].strip():
        raise ValueError(f"{where}.domain must be a non-empty string (what the calibration was fitted on), got "
                         f"{calibration.get('domain')!r}"[:200])
    for key in ("ece_before", "ece_after"):
        _number(calibration, key, where, 0.0, 1.0)
    # the fitted background option's score on the cosine scale; above 1 it beats every query (an untrained model)
    _number(calibration, "background_cosine", where, -1e6, 1e6)
    if "bins" in calibration:
        _positive_int(calibration, "bins", where)
    queries = calibration.get("queries")
    if queries is not None and (not isinstance(queries, list) or not queries
                                or not all(isinstance(q, str) and q.strip() for q in queries)):
        raise ValueError(f"{where}.queries must be a non-empty list of non-empty strings, got {queries!r}"[:200])
    if not isinstance(calibration.get("fitted_on", {}), dict):
        raise ValueError(f"{where}.fitted_on must be a mapping, got {calibration['fitted_on']!r}"[:200])
    check = calibration.get("domain_check")
    if check is None:
        return
    if not isinstance(check, dict):
        raise ValueError(f"{where}.domain_check must be a mapping, got {check!r}"[:200])
    if check.get("statistic") not in DOMAIN_STATISTICS:
        raise ValueError(f"{where}.domain_check.statistic must be one of {DOMAIN_STATISTICS}, got "
                         f"{check.get('statistic')!r}"[:200])
    if check["statistic"] == "median_best_class_cosine" and kind == "segmenter":
        raise ValueError(f"{where}.domain_check.statistic {check['statistic']} needs text embeddings, which a "
                         "segmenter teacher has not")
    if check["statistic"] == "median_max_class_probability" and kind not in (None, "segmenter"):
        raise ValueError(f"{where}.domain_check.statistic {check['statistic']} reads class logits, which only a "
                         f"segmenter teacher has (this one: {kind})")
    if check["statistic"] == "median_best_class_cosine" and queries is None:
        raise ValueError(f"{where}.queries is required by domain_check {check['statistic']} (the vocabulary it "
                         "compares with)")
    _number(check, "threshold", f"{where}.domain_check", required=True, low=-1e9, high=1e9)
    if not isinstance(check.get("in_domain", {}), dict):
        raise ValueError(f"{where}.domain_check.in_domain must be a mapping, got {check['in_domain']!r}"[:200])
