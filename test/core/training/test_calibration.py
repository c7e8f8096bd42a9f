"""Calibrated query scores: the ECE, the temperature fit, the domain check, the sidecar schema and its storage,
and that a querier uses the stored temperature; the bundled model's stored calibration matches its results."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from distillnerf_core.model.distillnerf import DistillNeRFModel, ModelConfig
from distillnerf_core.teachers.identity import validate_calibration
from distillnerf_core.teachers.query import COSINE_TEMPERATURE, QueryConfig, SemanticQuerier
from distillnerf_core.training.calibration import (
    domain_threshold,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    median_best_class_cosine,
    reliability,
    store_calibration,
    verdict_from_check,
)
from distillnerf_core.training.checkpoints import CheckpointError, load_checkpoint, read_metadata, save_checkpoint

REPO = Path(__file__).resolve().parents[3]
CLASSES = ["road", "car", "building"]


def test_ece_by_hand():
    # confidences 0.9, 0.9 (one right) -> bin 13 of 15: |0.5 - 0.9| * 2/4; 0.6 right, 0.62 wrong -> bin 9:
    # |0.5 - 0.61| * 2/4
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.62, 0.38]])
    targets = torch.tensor([0, 1, 1, 1])
    ece = expected_calibration_error(probs, targets)
    assert ece == pytest.approx(0.5 * 0.4 + 0.5 * 0.11, abs=1e-6)
    table = reliability(probs, targets)
    assert sum(b["count"] for b in table["bins"]) == 4 and table["accuracy"] == 0.5
    perfect = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(perfect, torch.tensor([0, 1])) == 0.0


def test_the_fitted_temperature_is_the_one_the_targets_were_drawn_with():
    generator = torch.Generator().manual_seed(0)
    logits = 3.0 * torch.randn(40_000, 5, generator=generator)
    targets = torch.multinomial(torch.softmax(logits / 2.5, dim=1), 1, generator=generator)[:, 0]
    fitted = fit_temperature(logits, targets)
    assert fitted == pytest.approx(2.5, rel=0.05)
    half = len(targets) // 2
    temperature, background, report = fit_calibration(logits[:half], targets[:half], logits[half:], targets[half:],
                                                      0.5)
    assert background is None and temperature == pytest.approx(2.5, rel=0.05)
    assert report["eval"]["after"]["ece"] < 0.02 < report["eval"]["before"]["ece"]
    assert report["eval"]["after"]["nll"] < report["eval"]["before"]["nll"]
    assert report["eval"]["after"]["accuracy"] == report["eval"]["before"]["accuracy"], "T never changes argmax"


def test_the_fitted_temperature_and_background_are_the_ones_the_targets_were_drawn_with():
    generator = torch.Generator().manual_seed(1)
    cosines = torch.rand(40_000, 4, generator=generator) * 2 - 1
    truth = torch.cat([cosines, torch.full((40_000, 1), 0.6)], dim=1)
    targets = torch.multinomial(torch.softmax(truth / 0.2, dim=1), 1, generator=generator)[:, 0]
    given = torch.cat([cosines, torch.full((40_000, 1), 0.1)], dim=1)  # the background cosine before the fit
    temperature, background, report = fit_calibration(given[:20_000], targets[:20_000], given[20_000:],
                                                      targets[20_000:], 0.01, background=True)
    assert temperature == pytest.approx(0.2, rel=0.05) and background == pytest.approx(0.6, abs=0.03)
    after, only = report["eval"]["after"], report["eval"]["temperature_only"]
    assert after["ece"] < 0.02 and after["nll"] < only["nll"] < report["eval"]["before"]["nll"]


@pytest.mark.parametrize("logits, targets, message", [
    (torch.zeros(4, 3), torch.tensor([0, 1, 3, 0]), "targets must lie in"),
    (torch.zeros(4, 3), torch.tensor([0, 1]), "do not match"),
    (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), "no samples"),
    (torch.zeros(4), torch.tensor([0, 1, 1, 0]), "expected (N, C)"),
])
def test_bad_fit_input_is_refused_naming_it(logits, targets, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fit_temperature(logits, targets)


def test_domain_threshold_and_verdicts():
    check = domain_threshold([0.98, 0.985, 0.982, 0.984])
    std = float(torch.tensor([0.98, 0.985, 0.982, 0.984], dtype=torch.float64).std())
    assert check["threshold"] == pytest.approx(0.98 - 3 * std)
    calibration = {"temperature": 0.3, "domain": "synthetic", "queries": CLASSES,
                   "domain_check": {"statistic": "median_best_class_cosine", **check}}
    inside, outside = verdict_from_check(calibration, 0.981), verdict_from_check(calibration, 0.90)
    assert inside.in_domain and not outside.in_domain
    assert "OUT OF DOMAIN" in outside.message() and "synthetic" in outside.message()
    assert verdict_from_check({"temperature": 0.3}, 0.5) is None, "no check stored: no verdict"
    with pytest.raises(ValueError, match="at least 2"):
        domain_threshold([0.9])
    assert median_best_class_cosine(torch.tensor([[0.1, 0.9], [0.5, 0.2], [0.3, 0.7]])) == pytest.approx(0.7)


@pytest.mark.parametrize("edit, key", [
    ({"temperature": 0.0}, "calibration.temperature"),
    ({"temperature": float("nan")}, "calibration.temperature"),
    ({"domain": ""}, "calibration.domain"),
    ({"ece_after": 1.5}, "calibration.ece_after"),
    ({"queries": []}, "calibration.queries"),
    ({"domain_check": {"statistic": "psnr", "threshold": 1.0}}, "domain_check.statistic"),
    ({"domain_check": {"statistic": "median_best_class_cosine"}}, "domain_check.threshold"),
    ({"queries": None}, "calibration.queries is required"),
])
def test_a_malformed_calibration_is_refused_naming_the_key(edit, key):
    good = {"temperature": 0.3, "domain": "synthetic", "queries": CLASSES, "ece_before": 0.5, "ece_after": 0.1,
            "domain_check": {"statistic": "median_best_class_cosine", "threshold": 0.97, "in_domain": {}}}
    validate_calibration(good)
    with pytest.raises(ValueError, match=key):
        validate_calibration({**good, **edit})


def oracle_checkpoint(folder: Path) -> Path:
    """A tiny model with an oracle teacher identity (PCA buffers of the oracle's width)."""
    from distillnerf_core.teachers.base import TeacherConfig
    from distillnerf_core.teachers.oracle import OracleTeacher

    oracle = OracleTeacher(TeacherConfig(kind="oracle", oracle_classes=CLASSES, oracle_dim=16))
    cfg = ModelConfig.load("tiny")
    cfg.feature_head.teacher_dim = 16
    cfg.feature_head.teacher = {**oracle.identity(), "pca": {"dim": cfg.feature_head.dim,
                                                             "explained_variance": 0.9, "fit_vectors": 10}}
    path = folder / "oracle_model.safetensors"
    save_checkpoint(DistillNeRFModel(cfg, load_pretrained=False), path)
    return path


def test_a_stored_calibration_is_loaded_and_used_by_the_querier(tmp_path):
    path = oracle_checkpoint(tmp_path)
    weights_sha = read_metadata(path)["weights_sha256"]
    calibration = {"temperature": 0.25, "background_cosine": 0.9, "domain": "synthetic test scenes", "queries": CLASSES,
                   "domain_check": {"statistic": "median_best_class_cosine", "threshold": 0.5, "in_domain": {}}}
    store_calibration(path, calibration)
    assert read_metadata(path)["weights_sha256"] == weights_sha, "the weights are not touched"
    model = load_checkpoint(path)  # verifies the checksum too
    identity = model.config.feature_head.teacher
    assert identity["calibration"]["temperature"] == 0.25
    querier = SemanticQuerier(model.feature_pca, identity)
    assert querier.temperature == 0.25 and querier.background_cosine() == 0.9
    features = torch.rand(50, model.feature_pca.out_dim)
    expected = torch.softmax(querier.logits(features, ["car", "road"]) / 0.25, dim=1)
    assert torch.allclose(querier.probabilities(features, ["car", "road"]), expected)
    result = querier.query(features, ["car", "road"])
    assert result.domain is not None and result.domain.threshold == 0.5
    best = querier.pca.cosine_to_text(features, querier.embed(CLASSES)).max(dim=1).values.median()
    assert result.domain.value == pytest.approx(float(best)) and result.domain.in_domain == (float(best) >= 0.5)
    assert SemanticQuerier(model.feature_pca, identity, config=QueryConfig(temperature=2.0)).temperature == 2.0
    identity.pop("calibration")
    assert SemanticQuerier(model.feature_pca, identity).temperature == COSINE_TEMPERATURE


def test_an_invalid_calibration_is_not_stored(tmp_path):
    path = oracle_checkpoint(tmp_path)
    before = path.with_suffix(".json").read_text()
    with pytest.raises(CheckpointError, match="calibration.temperature"):
        store_calibration(path, {"temperature": -1.0, "domain": "synthetic"})
    assert path.with_suffix(".json").read_text() == before


def test_an_undistilled_model_has_nothing_to_calibrate(tiny_checkpoint):
    with pytest.raises(CheckpointError, match="names no teacher"):
        store_calibration(tiny_checkpoint, {"temperature": 1.0, "domain": "synthetic"})


def test_the_bundled_model_carries_the_calibration_its_results_report():
    """Whatever the bundled model's teacher (its sidecar says: a cosine teacher or a segmenter), it stores the
    calibration benchmarks/query_calibration.py measured, with that teacher's domain statistic."""
    results = json.loads((REPO / "benchmarks" / "results" / "query_calibration.json").read_text())
    meta = read_metadata(REPO / "models" / "default" / "model.safetensors")
    teacher = meta["config"]["feature_head"]["teacher"]
    stored = teacher["calibration"]
    validate_calibration(stored, teacher["kind"])
    statistic = "median_max_class_probability" if teacher["kind"] == "segmenter" else "median_best_class_cosine"
    assert stored["domain_check"]["statistic"] == statistic, "the domain statistic of the model's teacher kind"
    assert stored == results["calibration"], "models/default stores what benchmarks/results reports"
    report = results["report"]["eval"]
    assert math.isclose(stored["ece_after"], report["after"]["ece"]) and stored["ece_after"] < stored["ece_before"]
    threshold = stored["domain_check"]["threshold"]
    frames = results["frames"]["real"] + results["frames"]["synthetic"]
    assert all(f["in_domain"] == (f["statistic"] >= threshold) for f in frames), "verdicts follow the threshold"
    assert all(f["in_domain"] for f in results["frames"]["synthetic"]), "held-out synthetic frames are in domain"
    real = [f["statistic"] for f in results["frames"]["real"]]
    assert results["summary"]["separated"] == (max(real) < threshold), "the docs say whether real frames fall out"


@pytest.mark.slow
def test_distillnerf_calibrate_fits_reports_and_writes_the_sidecar(tmp_path, capsys):
    from train_helpers import VERSION, make_tiny_dataroot

    from distillnerf_core.cli.calibrate import main
    from distillnerf_core.teachers.base import TeacherConfig
    from distillnerf_core.teachers.oracle import OracleTeacher
    from distillnerf_core.training.semantic_eval import SYNTHETIC_VOXEL_CLASSES

    fit, held = make_tiny_dataroot(tmp_path / "fit", seed=5), make_tiny_dataroot(tmp_path / "held", seed=6)
    classes = json.loads((fit / "gt" / "meta.json").read_text())["classes"]
    oracle = OracleTeacher(TeacherConfig(kind="oracle", oracle_dim=16, oracle_classes=classes))
    assert set(SYNTHETIC_VOXEL_CLASSES) <= set(oracle.identity()["classes"])
    cfg = ModelConfig.load("tiny")
    cfg.feature_head.teacher_dim = 16
    cfg.feature_head.teacher = {**oracle.identity(), "pca": {"dim": cfg.feature_head.dim, "explained_variance": 0.9,
                                                             "fit_vectors": 10}}
    torch.manual_seed(0)
    model = DistillNeRFModel(cfg, load_pretrained=False)
    path = tmp_path / "model.safetensors"
    save_checkpoint(model, path)
    out = tmp_path / "calibration.json"
    code = main(["--checkpoint", str(path), "--fit-dataroot", str(fit), "--eval-dataroot", str(held), "--version",
                 VERSION, "--json", str(out), "--write"])
    printed = capsys.readouterr()
    if code == 2:  # a random model may occupy no voxel at all: refused with the reason, nothing written
        assert "no occupied voxel" in printed.err and "calibration" not in read_metadata(path)["config"][
            "feature_head"]["teacher"]
        return
    assert code == 0, printed.err
    result = json.loads(out.read_text())
    stored = read_metadata(path)["config"]["feature_head"]["teacher"]["calibration"]
    assert stored == result["calibration"] and "ECE" in printed.out
    assert stored["ece_after"] == pytest.approx(result["report"]["eval"]["after"]["ece"])
    assert result["report"]["fit"]["after"]["nll"] <= result["report"]["fit"]["before"]["nll"] + 1e-9
    loaded = load_checkpoint(path)
    assert SemanticQuerier(loaded.feature_pca, loaded.config.feature_head.teacher).temperature == stored["temperature"]
