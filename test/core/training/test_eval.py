"""distillnerf-eval: the JSON holds exactly the protocol's metric names; PNGs are written."""

import json
import shutil

import pytest
from train_helpers import VERSION, make_tiny_dataroot

from distillnerf_core.cli.eval import main as eval_main
from distillnerf_core.training.config import load_train_config
from distillnerf_core.training.trainer import train

EXPECTED = {"psnr", "ssim", "nvs_psnr", "nvs_ssim", "abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2",
            "delta3", "num_samples"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = make_tiny_dataroot(tmp_path_factory.mktemp("synth_eval"), frames=2)
    run = tmp_path_factory.mktemp("run")
    train(load_train_config("train_tiny"), str(root), VERSION, run, max_steps=2, threads=1, progress=False)
    return root, run


def test_eval_json_exact_keys_and_images(trained, tmp_path, capsys):
    root, run = trained
    out = tmp_path / "eval.json"
    assert eval_main(["--checkpoint", str(run), "--dataroot", str(root), "--version", VERSION, "--json", str(out),
                      "--images", str(tmp_path / "img"), "--num-images", "1", "--no-progress",
                      "--details-json", str(tmp_path / "details.json")]) == 0
    metrics = json.loads(out.read_text())
    assert set(metrics) == EXPECTED | {"dense_abs_rel"}, sorted(metrics)
    assert metrics["num_samples"] == 2
    assert 0 < metrics["psnr"] < 100 and -1 <= metrics["ssim"] <= 1
    assert metrics["nvs_psnr"] is not None  # the first keyframe has a next one
    assert 0 <= metrics["delta1"] <= metrics["delta2"] <= metrics["delta3"] <= 1
    details = json.loads((tmp_path / "details.json").read_text())
    assert "dense50_abs_rel" in details and details["num_nvs_samples"] == 1
    assert len(list((tmp_path / "img").glob("*.png"))) == 1
    printed = capsys.readouterr().out
    assert "recon PSNR / SSIM" in printed and "dense AbsRel" in printed


def test_eval_without_dense_gt_or_next_frame(trained, tmp_path):
    root, run = trained
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    shutil.rmtree(copy / "gt")
    out = tmp_path / "eval.json"
    assert eval_main(["--checkpoint", str(run / "model.safetensors"), "--dataroot", str(copy), "--version", VERSION,
                      "--json", str(out), "--keyframes", "second", "--no-progress"]) == 0
    metrics = json.loads(out.read_text())
    assert set(metrics) == EXPECTED
    assert metrics["num_samples"] == 1 and metrics["nvs_psnr"] is None  # the 2nd keyframe is the last one
