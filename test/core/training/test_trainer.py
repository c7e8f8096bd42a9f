"""Trainer: checkpoints survive SIGKILL, --resume continues from the newest complete checkpoint,
corrupt / half-written checkpoints are skipped, and the run writes tensorboard + final weights."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO
from train_helpers import VERSION, make_tiny_dataroot

from distillnerf_core.training.checkpoints import (
    find_resumable,
    list_checkpoints,
    load_checkpoint,
    optimizer_from_flat,
    optimizer_to_flat,
)
from distillnerf_core.training.config import load_train_config


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_tiny_dataroot(tmp_path_factory.mktemp("synth_train"))


def _cmd(root, run, *extra):
    return [sys.executable, "-m", "distillnerf_core.cli.train", "--config", "train_tiny", "--dataroot", str(root),
            "--version", VERSION, "--out", str(run), "--threads", "1", "--no-progress", *extra]


def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return env


def _step(ckpt: Path) -> int:
    return int(ckpt.name.split("_")[1])


@pytest.mark.slow
def test_sigkill_then_resume(root, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd(root, run, "--max-steps", "100000"), cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:  # checkpoints are written every step: wait for a few
            found = list_checkpoints(run)
            if found and _step(found[0]) >= 3:
                break
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.05)
        else:
            pytest.fail("no checkpoint after 25 s")
        time.sleep(0.13)  # land somewhere inside a later step / checkpoint write
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    found = list_checkpoints(run)
    assert 1 <= len(found) <= 2, f"keep_last 2 violated: {[p.name for p in found]}"
    newest = find_resumable(run)
    assert newest == found[0], "the newest COMPLETE checkpoint must load"
    model = load_checkpoint(newest / "model.safetensors")
    assert model.config.name == "tiny"
    step = _step(newest)
    res = subprocess.run(_cmd(root, run, "--resume", "--max-steps", str(step + 2)), cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"resumed from {newest} at step {step}" in res.stderr
    summary = json.loads((run / "train_summary.json").read_text())
    assert (summary["start_step"], summary["step"]) == (step, step + 2)
    assert _step(list_checkpoints(run)[0]) == step + 2
    assert not list((run / "checkpoints").glob(".tmp-*")), "temp dirs must be cleaned on start"
    assert load_checkpoint(run / "model.safetensors").config.name == "tiny"
    assert list((run / "tb").glob("events.out.tfevents.*")), "tensorboard event file missing"
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert {"loss", "rgb_l1", "lidar_coarse", "lidar_render", "dense_render", "entropy", "opacity"} <= set(log[-1])


@pytest.mark.slow
def test_broken_checkpoints_are_skipped(root, tmp_path):
    run = tmp_path / "run"
    res = subprocess.run(_cmd(root, run, "--max-steps", "2"), cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    ck = run / "checkpoints"
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002", "step_00000001"]
    # a kill mid-write leaves only a hidden temp dir: never listed
    tmp = ck / ".tmp-step_00000003-999"
    shutil.copytree(ck / "step_00000002", tmp)
    (tmp / "model.safetensors").write_bytes(b"\x00" * 10)
    # a newer dir without the COMPLETE marker is ignored; one whose weights were damaged is skipped on load
    shutil.copytree(ck / "step_00000002", ck / "step_00000004")
    (ck / "step_00000004" / "COMPLETE").unlink()
    shutil.copytree(ck / "step_00000002", ck / "step_00000003")
    data = (ck / "step_00000003" / "model.safetensors").read_bytes()
    (ck / "step_00000003" / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert [p.name for p in list_checkpoints(run)] == ["step_00000003", "step_00000002", "step_00000001"]
    assert find_resumable(run) == ck / "step_00000002"


def test_optimizer_state_roundtrip_without_pickle():
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.Adam([p], lr=1e-3, betas=(0.0, 0.99))
    p.grad = torch.ones(3)
    opt.step()
    tensors, meta = optimizer_to_flat(opt.state_dict())
    json.dumps(meta)
    assert set(tensors) == {"state.0.step", "state.0.exp_avg", "state.0.exp_avg_sq"}
    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))], lr=1.0)
    opt2.load_state_dict(optimizer_from_flat(tensors, json.loads(json.dumps(meta))))
    assert opt2.param_groups[0]["lr"] == 1e-3 and opt2.param_groups[0]["betas"] == (0.0, 0.99)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg_sq"], opt.state_dict()["state"][0]["exp_avg_sq"])


def test_train_configs_load(tmp_path):
    for name in ("train_tiny", "train_small", "train_default"):
        cfg = load_train_config(name)
        assert cfg.optim.betas == [0.0, 0.99] and cfg.optim.grad_clip == 35.0
    path = tmp_path / "bad.yaml"
    path.write_text("loss:\n  rgb_l2: 1.0\n")
    with pytest.raises(ValueError, match="unknown config key 'loss.rgb_l2'"):
        load_train_config(path)


@pytest.mark.slow
def test_train_config_compile_trains_through_the_compiled_stages(root, tmp_path, monkeypatch):
    """TrainConfig.compile: training steps run the compiled encoder, lift and decoder (traced with aot_eager
    here, the training path of torch.compile; inductor's CPU compile of the backward takes minutes)."""
    from distillnerf_core.model.distillnerf import DistillNeRFModel
    from distillnerf_core.training.trainer import train

    compiled_models = []
    compile_stages = DistillNeRFModel.compile_stages

    def traced(model, backend="inductor"):
        compiled_models.append(model)
        compile_stages(model, backend="aot_eager")

    monkeypatch.setattr(DistillNeRFModel, "compile_stages", traced)
    cfg = load_train_config("train_tiny")
    cfg.compile = True
    summary = train(cfg, str(root), VERSION, tmp_path / "run", max_steps=2, device="cpu", progress=False)
    assert summary["step"] == 2
    (model,) = compiled_models
    assert model.compile_errors == {} and len(model._compiled) == 3, f"fell back to eager: {model.compile_errors}"
