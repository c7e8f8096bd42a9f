"""DDP through torchrun with 2 CPU processes (gloo): after a few steps both ranks hold identical weights."""

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import REPO
from train_helpers import VERSION, make_tiny_dataroot

from distillnerf_core.training.checkpoints import load_checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_tiny_dataroot(tmp_path_factory.mktemp("synth_ddp"), frames=4)


@pytest.mark.slow
def test_two_process_gloo_ranks_identical(root, tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo",
               CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "distillnerf_core.cli.train", "--config", "train_tiny", "--dataroot", str(root), "--version", VERSION,
           "--out", str(run), "--max-steps", "3", "--no-progress", "--device", "cpu"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 3
    hashes = summary["rank_weight_sha256"]
    assert len(hashes) == 2 and hashes[0] == hashes[1], f"ranks diverged: {hashes}"
    # and the weights did change from the shared initialisation (the optimizer really stepped)
    import torch

    from distillnerf_core.model.distillnerf import DistillNeRFModel
    from distillnerf_core.training.config import load_train_config, model_config
    from distillnerf_core.training.trainer import weights_digest

    torch.manual_seed(load_train_config("train_tiny").seed)
    init = DistillNeRFModel(model_config(load_train_config("train_tiny")))
    assert weights_digest(init) != hashes[0]
    assert weights_digest(load_checkpoint(run / "model.safetensors")) == hashes[0]
