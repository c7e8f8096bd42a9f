"""The segmenter (the shipped real ESPNetv2 weights) in every teacher path: `distillnerf-cache-features --teacher
segmenter` (exact preprocessing, log-probabilities first, optional penultimate features), the identity schema,
distillation (feature loss + feat_psnr) on a tiny dataroot, and closed-vocabulary queries of the distilled model
(class logits from the PCA reconstruction, aliases summed, background = the classes no query names)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image
from train_helpers import VERSION, make_tiny_dataroot

from distillnerf_core.cli import cache_features as cache_cli
from distillnerf_core.cli import eval as eval_cli
from distillnerf_core.cli import query as query_cli
from distillnerf_core.inference import ScenePredictor
from distillnerf_core.teachers import segmenter as seg
from distillnerf_core.teachers.base import TeacherConfig
from distillnerf_core.teachers.cache import build_teacher, load_entry, read_manifest
from distillnerf_core.teachers.identity import validate_teacher_identity
from distillnerf_core.teachers.pca import FeaturePCA
from distillnerf_core.teachers.query import QueryConfig, SegmenterQuerier, SemanticQuerier
from distillnerf_core.training.checkpoints import read_metadata
from distillnerf_core.training.config import load_train_config
from distillnerf_core.training.trainer import train

JPEG = REPO / "data/nuscenes_sample/samples/CAM_FRONT/n015-2018-07-24-11-22-45+0800__CAM_FRONT__1532402927612460.jpg"
WIDTH = "128"  # tiny synthetic frames (32x64) run at 64x128: the 1/8 grid is 8x16


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_tiny_dataroot(tmp_path_factory.mktemp("synth_segmenter"), frames=2)


@pytest.fixture(scope="module")
def cache(root):
    assert cache_cli.main(["--dataroot", str(root), "--version", VERSION, "--teacher", "segmenter",
                           "--segmenter-width", WIDTH, "--no-progress"]) == 0
    return root / "features" / "segmenter"


def _first_image(root):
    sd = next(sd for sd in json.loads((root / VERSION / "sample_data.json").read_text()) if sd["fileformat"] == "jpg")
    return sd["filename"].split("/")[1], sd


def test_cache_holds_log_probabilities_from_the_exact_preprocessing(root, cache):
    manifest = read_manifest(cache)
    teacher = manifest["teacher"]
    assert manifest["complete"] and manifest["entries"] == 12 and manifest["dim"] == 20
    assert manifest["grid_hw"] == [8, 16], "64x128 segmenter input at stride 8"
    assert teacher["kind"] == "segmenter" and teacher["classes"] == list(seg.CLASS_NAMES)
    assert teacher["weights_sha256"] == json.loads(
        (REPO / "data/weights/espnetv2_s2_cityscapes/checks.json").read_text())["safetensors_sha256"]
    validate_teacher_identity(teacher, 20, 8)
    channel, sd = _first_image(root)
    feats = load_entry(cache, channel, sd["token"], manifest)
    rgb = np.asarray(Image.open(root / sd["filename"]).convert("RGB"))
    logits = seg.load_segmenter().logits([rgb], hw=(64, 128))
    expected = torch.softmax(logits, 1).reshape(1, 20, 8, 8, 16, 8).mean((3, 5)).log().clamp(min=seg.LOG_PROB_FLOOR)
    torch.testing.assert_close(feats, expected[0], atol=2e-2, rtol=2e-3)  # float16 storage
    assert float(feats.max()) <= 0 and float(feats.min()) >= seg.LOG_PROB_FLOOR
    probs = feats.exp().sum(0)
    assert float((probs - 1).abs().max()) < 0.01, "probabilities of each cell sum to 1 (floor aside)"


def test_features_option_and_refusals(root, tmp_path):
    assert cache_cli.main(["--dataroot", str(root), "--version", VERSION, "--teacher", "segmenter",
                           "--segmenter-width", WIDTH, "--segmenter-outputs", "log_probs+features",
                           "--cameras", "CAM_FRONT", "--out", str(tmp_path / "seg_feats"), "--no-progress"]) == 0
    manifest = read_manifest(tmp_path / "seg_feats")
    assert manifest["dim"] == 52 and manifest["teacher"]["outputs"] == "log_probs+features"
    validate_teacher_identity(manifest["teacher"], 52, 8)
    with pytest.raises(ValueError, match="does not match outputs"):
        validate_teacher_identity({**manifest["teacher"], "dim": 20}, 20, 8)
    with pytest.raises(ValueError, match="classes must be the segmenter's 20 class names"):
        validate_teacher_identity({**manifest["teacher"], "classes": ["car"]}, 52, 8)
    for bad, match in [({"segmenter_width": 100}, "multiple of 16"), ({"segmenter_stride": 3}, "2, 4, 8 or 16"),
                       ({"segmenter_outputs": "features"}, "segmenter_outputs must be one of")]:
        with pytest.raises(ValueError, match=match):
            build_teacher(TeacherConfig(kind="segmenter", **bad))
    pickle = tmp_path / "espnetv2.pth"
    pickle.write_bytes(b"\x80\x04")
    assert cache_cli.main(["--dataroot", str(root), "--version", VERSION, "--teacher", "segmenter", "--weights",
                           str(pickle), "--out", str(tmp_path / "bad"), "--no-progress"]) == 2


def test_teacher_takes_the_shipped_weights_and_the_exact_preprocessing():
    teacher = build_teacher(TeacherConfig(kind="segmenter"))
    assert teacher.cfg.weights == str(seg.default_weights_path()) and teacher.dim == 20
    rgb = np.asarray(Image.open(JPEG).convert("RGB"))
    assert teacher.grid_hw(rgb.shape[:2]) == (72, 128), "1600x900 -> 1024x576 input -> 1/8"
    feats = teacher.features_from_rgb([rgb])
    assert feats.shape == (1, 20, 72, 128)
    sky = feats[0].argmax(0) == seg.SKY_CLASS
    print(f"CAM_FRONT cache: sky in the top third {float(sky[:24].float().mean()):.3f}, bottom third "
          f"{float(sky[48:].float().mean()):.3f}")
    assert float(sky[:24].float().mean()) > 0.4 and float(sky[48:].float().mean()) == 0.0
    small = build_teacher(TeacherConfig(kind="segmenter", segmenter_width=256))
    floats = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 255
    torch.testing.assert_close(small.dense_features(floats), small.features_from_rgb([rgb]),
                               msg="float input is rounded back to the uint8 image")


def _exact_pca(vectors: torch.Tensor) -> FeaturePCA:
    pca, _ = FeaturePCA.fit(vectors, vectors.shape[1])
    return pca


def test_querier_reads_class_logits_sums_aliases_and_refuses_unknown_text(root, cache):
    manifest = read_manifest(cache)
    channel, sd = _first_image(root)
    target = load_entry(cache, channel, sd["token"], manifest).reshape(20, -1).T  # (V, 20) log-probabilities
    pca = _exact_pca(target)  # full rank: the reconstruction is the cache itself
    querier = SemanticQuerier(pca, manifest["teacher"])
    assert isinstance(querier, SegmenterQuerier) and querier.temperature == 1.0
    feats = pca.project(target)
    torch.testing.assert_close(querier.class_probabilities(feats), torch.softmax(target, 1), atol=1e-4, rtol=1e-3)
    probs = querier.probabilities(feats, ["vehicle", "car", "sky"])
    p = torch.softmax(target, 1)
    torch.testing.assert_close(probs[:, 0], p[:, 13] + p[:, 14] + p[:, 15], atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(probs[:, 3], 1 - p[:, [10, 13, 14, 15]].sum(1), atol=1e-4, rtol=1e-3)
    result = querier.query(feats, ["vehicle", "sky"])
    assert result.probabilities.shape == (feats.shape[0], 2)
    background = torch.softmax(target, 1)[:, [c for c in range(20) if c not in (10, 13, 14, 15)]].sum(1)
    winner = torch.stack([result.probabilities[:, 0], result.probabilities[:, 1], background], 1).argmax(1)
    assert torch.equal(result.label, torch.where(winner == 2, -1, winner))
    assert "vehicle" in querier.known_texts and "traffic light" in querier.known_texts
    with pytest.raises(ValueError, match=r"unknown queries \['a red car'\].*closed vocabulary.*road"):
        querier.check(["a red car"])
    hot = SemanticQuerier(pca, {**manifest["teacher"], "calibration": {"temperature": 2.0, "domain": "test"}})
    assert hot.temperature == 2.0
    softer = hot.class_probabilities(feats)
    assert torch.equal(softer.argmax(1), querier.class_probabilities(feats).argmax(1)), "T moves scores only"
    assert float(softer.amax(1).mean()) < float(querier.class_probabilities(feats).amax(1).mean())
    assert SemanticQuerier(pca, manifest["teacher"], config=QueryConfig(temperature=0.5)).temperature == 0.5


def test_distillation_feature_loss_feat_psnr_and_queries(root, cache, tmp_path):
    """Two training steps of the tiny model on the segmenter cache, then queries and distillnerf-eval."""
    cfg = load_train_config("train_tiny")
    cfg.data.features = "segmenter"
    cfg.model_overrides = {"feature_head": {"dim": 32}}  # more than the teacher's 20: nothing to reduce
    cfg.ckpt_every = 100
    summary = train(cfg, str(root), VERSION, tmp_path / "run", max_steps=2, threads=1, progress=False)
    assert summary["step"] == 2
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["loss"]["feature"] == 10.0
    ckpt = tmp_path / "run" / "model.safetensors"
    head = read_metadata(ckpt)["config"]["feature_head"]
    assert head["teacher"]["kind"] == "segmenter" and head["teacher_dim"] == 20
    assert head["dim"] == 20 and head["teacher"]["pca"]["dim"] == 20, "the head renders all 20 log-probabilities"
    assert head["teacher"]["weights"] == "data/weights/espnetv2_s2_cityscapes/espnetv2_s2_cityscapes.safetensors"
    assert str(tmp_path) not in json.dumps(head) and str(REPO) not in json.dumps(head), "no machine path"

    predictor = ScenePredictor(ckpt, device="cpu")
    assert predictor.known_queries[:20] == list(seg.CLASS_NAMES) and "vehicle" in predictor.known_queries
    from distillnerf_core.data.datasets import DataConfig, make_dataset

    item = make_dataset(str(root), VERSION, (32, 64), DataConfig(), (16, 32), load_next=False)[0]
    images = [(im.permute(1, 2, 0).numpy() * 255).astype(np.uint8) for im in item["images"]]
    pred = predictor.predict(images, list(item["intrinsics"].numpy()), list(item["cam2ego"].numpy()), depth=False,
                             semantic_queries=["vehicle", "road", "Traffic Light"])
    assert pred.voxel_label.min(initial=0) >= -1 and pred.voxel_label.max(initial=0) <= 2
    assert pred.query_max_scores.shape == (3,) and (pred.query_max_scores <= 1 + 1e-6).all()
    with pytest.raises(ValueError, match="closed vocabulary"):
        predictor.check_queries(["spaceship"])

    out = tmp_path / "query.png"
    assert query_cli.main(["--checkpoint", str(ckpt), "--dataroot", str(root), "--version", VERSION, "--sample",
                           item["sample_token"], "--text", "vehicle", "--text", "sky", "--out", str(out)]) == 0
    with Image.open(out) as im:
        assert im.size[1] == 2 * (32 + 2), "one row per query"
    assert query_cli.main(["--checkpoint", str(ckpt), "--dataroot", str(root), "--version", VERSION, "--sample",
                           item["sample_token"], "--text", "a red car", "--out", str(out)]) == 2

    metrics = tmp_path / "eval.json"
    assert eval_cli.main(["--checkpoint", str(ckpt), "--dataroot", str(root), "--version", VERSION, "--json",
                          str(metrics), "--features", "segmenter", "--no-progress"]) == 0
    result = json.loads(metrics.read_text())
    print(f"tiny segmenter distillation, 2 steps: feat_psnr {result['feat_psnr']:.2f} dB, "
          f"feat_cosine {result['feat_cosine']:.3f}")
    assert np.isfinite(result["feat_psnr"]) and -1 <= result["feat_cosine"] <= 1
