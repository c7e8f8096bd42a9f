"""Calibration of a segmenter-distilled model (teacher kind segmenter, closed vocabulary): targets are the
synthetic world's voxel classes as Cityscapes classes, only T of softmax(class logits / T) is fitted, the domain
check is the median top class probability at the fitted T, and the querier (what the node answers with) reads
both from the sidecar."""

from __future__ import annotations

import json
import math

import pytest
import torch

from distillnerf_core.model.distillnerf import DistillNeRFModel, ModelConfig
from distillnerf_core.teachers.identity import validate_calibration
from distillnerf_core.teachers.query import QueryConfig, SegmenterQuerier, SemanticQuerier
from distillnerf_core.teachers.segmenter import BACKGROUND_CLASS, CLASS_NAMES
from distillnerf_core.training.calibration import median_max_class_probability, segmenter_targets
from distillnerf_core.training.checkpoints import load_checkpoint, read_metadata, save_checkpoint

GT_CLASSES = ["sky", "road", "lane_marking", "sidewalk", "terrain", "building", "car", "pedestrian", "vegetation",
              "pole"]  # what distillnerf-synth writes in gt/meta.json (0 = free: no voxel is sky)


def segmenter_model(background_logit: float = 0.0) -> DistillNeRFModel:
    """A tiny model with a segmenter identity whose PCA reconstructs the same class logits for every feature:
    0 everywhere but the background class (`background_logit`)."""
    cfg = ModelConfig.load("tiny")
    cfg.feature_head.teacher_dim = len(CLASS_NAMES)
    cfg.feature_head.teacher = {"kind": "segmenter", "model": "espnetv2_s2_cityscapes", "classes": list(CLASS_NAMES),
                                "dim": len(CLASS_NAMES), "outputs": "log_probs",
                                "pca": {"dim": cfg.feature_head.dim, "explained_variance": 0.9, "fit_vectors": 10}}
    torch.manual_seed(0)
    model = DistillNeRFModel(cfg, load_pretrained=False)
    model.feature_pca.components.zero_()
    model.feature_pca.mean.zero_()
    model.feature_pca.mean[BACKGROUND_CLASS] = background_logit
    return model


def test_the_synthetic_classes_become_the_segmenters_classes():
    ids = segmenter_targets(GT_CLASSES, 0)
    named = {g: CLASS_NAMES[int(i)] for g, i in zip(GT_CLASSES, ids, strict=True)}
    assert named == {"sky": "background", "road": "road", "lane_marking": "road", "sidewalk": "sidewalk",
                     "terrain": "terrain", "building": "building", "car": "car", "pedestrian": "person",
                     "vegetation": "vegetation", "pole": "pole"}
    only = segmenter_targets(GT_CLASSES, 0, ["road", "car"], free="exclude")
    assert [CLASS_NAMES[i] if i >= 0 else None for i in only.tolist()] == [
        None, "road", "road", None, None, None, "car", None, None, None], "free and unqueried left out"
    with pytest.raises(ValueError, match="sky"):
        segmenter_targets(GT_CLASSES, 0, ["sky"])
    with pytest.raises(ValueError, match="free must be one of"):
        segmenter_targets(GT_CLASSES, 0, free="ignore")


def test_the_domain_statistic_and_its_schema():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 4.0]])
    p = torch.softmax(logits / 2.0, dim=1).max(dim=1).values
    assert median_max_class_probability(logits, 2.0) == pytest.approx(float(p.median()))
    assert math.isnan(median_max_class_probability(logits[:0], 1.0))
    check = {"statistic": "median_max_class_probability", "threshold": 0.4, "in_domain": {}}
    validate_calibration({"temperature": 2.0, "domain": "synthetic", "domain_check": check}, "segmenter")
    with pytest.raises(ValueError, match="only a segmenter teacher"):
        validate_calibration({"temperature": 2.0, "domain": "synthetic", "domain_check": check}, "oracle")
    with pytest.raises(ValueError, match="needs text embeddings"):
        validate_calibration({"temperature": 2.0, "domain": "synthetic", "queries": ["car"],
                              "domain_check": {**check, "statistic": "median_best_class_cosine"}}, "segmenter")


@pytest.fixture(scope="module")
def tiny_synthetic_root(tmp_path_factory):
    from train_helpers import make_tiny_dataroot

    return make_tiny_dataroot(tmp_path_factory.mktemp("seg_cal") / "root", frames=2, seed=5)


def test_distillnerf_calibrate_fits_a_segmenter_model_and_the_querier_reads_it(tmp_path, tiny_synthetic_root,
                                                                               capsys):
    from train_helpers import VERSION

    from distillnerf_core.cli.calibrate import main

    path = tmp_path / "segmenter.safetensors"
    save_checkpoint(segmenter_model(background_logit=5.0), path)  # p(background) 0.89 at T = 1 for every voxel
    out = tmp_path / "calibration.json"
    root = str(tiny_synthetic_root)
    code = main(["--checkpoint", str(path), "--fit-dataroot", root, "--eval-dataroot", root, "--version", VERSION,
                 "--json", str(out), "--write"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    result = json.loads(out.read_text())
    stored = read_metadata(path)["config"]["feature_head"]["teacher"]["calibration"]
    assert stored == result["calibration"] and "median_max_class_probability" in printed.out
    assert "WARNING" not in printed.out, "a finite temperature: no flat-scores warning"
    after = result["report"]["eval"]["after"]
    # Every voxel has the same logits, so the NLL optimum puts p(background) at the share of background targets
    # (free voxels the model calls occupied): exactly calibrated, where T = 1 was not.
    assert after["accuracy"] > 0.5, "most occupied voxels of a random model are free in the world"
    assert after["confidence"] == pytest.approx(after["accuracy"], abs=2e-3) and after["ece"] < 2e-3
    assert result["report"]["eval"]["before"]["ece"] > 0.02 and stored["temperature_before"] == 1.0
    assert stored["free_voxels"] == "background" and "pedestrian -> person" in stored["targets"]
    assert stored["domain_check"]["threshold"] == pytest.approx(after["confidence"], abs=1e-6), "equal frames"

    model = load_checkpoint(path)
    querier = SemanticQuerier(model.feature_pca, model.config.feature_head.teacher)
    assert isinstance(querier, SegmenterQuerier) and querier.temperature == stored["temperature"]
    features = torch.rand(30, model.feature_pca.out_dim)
    answer = querier.query(features, ["car", "road"])
    assert answer.probabilities[:, 0].max() < 0.05 and answer.domain.in_domain, answer.domain.message()
    # The verdict is read at the calibrated T: a temperature override changes the scores, not the domain.
    hot = SemanticQuerier(model.feature_pca, model.config.feature_head.teacher, config=QueryConfig(temperature=50.0))
    assert hot.query(features, ["car"]).domain.value == pytest.approx(answer.domain.value)
    model.feature_pca.mean.zero_()  # features the calibration never saw: flat class probabilities (1 / 20)
    flat = SemanticQuerier(model.feature_pca, model.config.feature_head.teacher).query(features, ["car"]).domain
    assert not flat.in_domain and flat.value == pytest.approx(1 / len(CLASS_NAMES))
    assert flat.message().startswith("OUT OF DOMAIN: median_max_class_probability 0.050")
