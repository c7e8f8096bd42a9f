"""The whole semantic path on tiny models: teacher cache -> train a few steps with feature distillation ->
checkpoint (PCA tensors + teacher identity) -> text queries through ScenePredictor, distillnerf-query and
distillnerf-eval's feat_psnr. Once with the oracle, once with a tiny random CLIP."""

import json

import numpy as np
import pytest
from safetensors.torch import load_file
from teacher_helpers import CLIP_NAME, save_tiny_clip
from train_helpers import VERSION, make_tiny_dataroot

from distillnerf_core.cli import cache_features as cache_cli
from distillnerf_core.cli import eval as eval_cli
from distillnerf_core.cli import query as query_cli
from distillnerf_core.data.datasets import DataConfig, make_dataset
from distillnerf_core.inference import ScenePredictor
from distillnerf_core.teachers.query import SemanticsUnavailableError
from distillnerf_core.training.checkpoints import load_checkpoint, read_metadata
from distillnerf_core.training.config import load_train_config
from distillnerf_core.training.trainer import train


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_tiny_dataroot(tmp_path_factory.mktemp("synth_sem"), frames=2)


def _train(root, run, features):
    cfg = load_train_config("train_tiny")
    cfg.data.features = features
    cfg.ckpt_every = 100
    summary = train(cfg, str(root), VERSION, run, max_steps=2, threads=1, progress=False)
    assert summary["step"] == 2
    assert json.loads((run / "train_config.json").read_text())["loss"]["feature"] == 10.0, "default weight"
    return run / "model.safetensors"


def _frame(root):
    ds = make_dataset(str(root), VERSION, (32, 64), DataConfig(), (16, 32), load_next=False)
    item = ds[0]
    images = [(im.permute(1, 2, 0).numpy() * 255).astype(np.uint8) for im in item["images"]]
    return ds, images, list(item["intrinsics"].numpy()), list(item["cam2ego"].numpy())


def test_oracle_path(root, tmp_path, capsys):
    assert cache_cli.main(["--dataroot", str(root), "--version", VERSION, "--teacher", "oracle", "--no-progress"]) == 0
    ckpt = _train(root, tmp_path / "run", "oracle")
    tensors = load_file(str(ckpt))
    assert tensors["feature_pca.components"].shape == (128, 8), "PCA to the tiny head's 8 dims, in the weights"
    teacher = read_metadata(ckpt)["config"]["feature_head"]["teacher"]
    assert teacher["kind"] == "oracle" and teacher["pca"]["dim"] == 8
    assert load_checkpoint(ckpt).feature_pca is not None

    predictor = ScenePredictor(ckpt, device="cpu", occupancy=None)
    assert predictor.teacher["kind"] == "oracle" and "car" in predictor.known_queries
    ds, images, K, E = _frame(root)
    pred = predictor.predict(images, K, E, depth=False, semantic_queries=["car", "road", "building"])
    v = pred.voxel_centers.shape[0]
    assert pred.voxel_label.shape == (v,) and pred.voxel_score.shape == (v,)
    assert pred.voxel_label.min(initial=0) >= -1 and pred.voxel_label.max(initial=0) <= 2
    assert pred.query_max_scores.shape == (3,) and (pred.query_max_scores <= 1).all()
    again = predictor.query(["car", "road", "building"], pred)
    assert np.array_equal(again.label.numpy(), pred.voxel_label)
    with pytest.raises(ValueError, match="knows only its class names: sky, road"):
        predictor.predict(images, K, E, semantic_queries=["a red car"])

    out = tmp_path / "query.png"
    assert query_cli.main(["--checkpoint", str(ckpt), "--dataroot", str(root), "--version", VERSION, "--sample",
                           ds.sample_tokens[0], "--text", "car", "--text", "road", "--out", str(out)]) == 0
    from PIL import Image

    with Image.open(out) as im:
        assert im.size[1] == 2 * (32 + 2), "one row per query"
    assert query_cli.main(["--checkpoint", str(ckpt), "--dataroot", str(root), "--version", VERSION, "--sample",
                           ds.sample_tokens[0], "--text", "truck", "--out", str(out)]) == 2
    assert "knows only its class names" in capsys.readouterr().err

    from distillnerf_core.training.semantic_eval import semantic_occupancy_eval

    sem = semantic_occupancy_eval(load_checkpoint(ckpt), ds, progress=False)
    for mode in ("visible", "all"):
        assert 0 <= sem[mode]["miou"] <= 1 and 0 <= sem[mode]["geometric_iou"] <= 1
        assert sem[mode]["classes_present"] > 0 and set(sem[mode]["per_class_iou"]) == set(sem["classes"])

    metrics = tmp_path / "eval.json"
    assert eval_cli.main(["--checkpoint", str(ckpt), "--dataroot", str(root), "--version", VERSION, "--json",
                          str(metrics), "--features", "oracle", "--no-progress"]) == 0
    result = json.loads(metrics.read_text())
    assert np.isfinite(result["feat_psnr"]) and -1 <= result["feat_cosine"] <= 1


def test_tiny_clip_path(root, tmp_path):
    cfg_path, weights = save_tiny_clip(tmp_path / "clip")
    assert cache_cli.main(["--dataroot", str(root), "--version", VERSION, "--teacher", "clip", "--model", CLIP_NAME,
                           "--weights", str(weights), "--model-config", str(cfg_path), "--input-hw", "28", "56",
                           "--name", "tinyclip", "--no-progress"]) == 0
    ckpt = _train(root, tmp_path / "run", "tinyclip")
    predictor = ScenePredictor(ckpt, device="cpu")
    assert predictor.teacher["kind"] == "clip" and predictor.known_queries is None, "open vocabulary"
    _, images, K, E = _frame(root)
    pred = predictor.predict(images, K, E, depth=False, semantic_queries=["a red car", "building"])
    assert pred.voxel_label.shape == pred.voxel_density.shape and pred.query_max_scores.shape == (2,)


def test_undistilled_model_cannot_answer(root):
    from distillnerf_core.model.distillnerf import DistillNeRFModel

    predictor = ScenePredictor(DistillNeRFModel("tiny"), device="cpu")
    assert predictor.teacher is None
    _, images, K, E = _frame(root)
    with pytest.raises(SemanticsUnavailableError, match="not distilled"):
        predictor.predict(images, K, E, semantic_queries=["car"])


def test_dinov2_distilled_model_renders_features_but_has_no_text(root, tmp_path):
    from teacher_helpers import DINO_KWARGS, DINO_NAME, save_tiny_dinov2

    weights = save_tiny_dinov2(tmp_path / "dino")
    assert cache_cli.main(["--dataroot", str(root), "--version", VERSION, "--teacher", "dinov2", "--model", DINO_NAME,
                           "--weights", str(weights), "--model-kwargs", json.dumps(DINO_KWARGS), "--input-hw", "28",
                           "56", "--name", "tinydino", "--no-progress"]) == 0
    assert read_manifest_dim(root / "features" / "tinydino") == 32
    ckpt = _train(root, tmp_path / "run", "tinydino")
    predictor = ScenePredictor(ckpt, device="cpu")
    assert predictor.teacher["kind"] == "dinov2"
    _, images, K, E = _frame(root)
    with pytest.raises(SemanticsUnavailableError, match="no text encoder"):
        predictor.predict(images, K, E, semantic_queries=["car"])


def read_manifest_dim(cache):
    from distillnerf_core.teachers.cache import read_manifest

    return read_manifest(cache)["dim"]
