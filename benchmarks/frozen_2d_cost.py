#!/usr/bin/env python3
"""What the frozen 2D branch (`encoder.frozen_2d: segmenter`) costs per training step on the CPU.

    python benchmarks/frozen_2d_cost.py [--steps 8] [--threads 2] [--dataroot D --version V]
        [--json benchmarks/results/frozen_2d_cost.json] [--note "shared machine ..."]

Two `small` models (configs/train/train_default.yaml and train_default_frozen2d.yaml, the bundled model's
stage-1 settings, same seed) take the trainer's own step (TrainStep + optimizer_step: forward, loss, backward,
Adam) on the same real batches of a synthetic dataroot (default: one written here, 1 scene x 3 keyframes, seed
5, 456x256, the nuScenes rig), interleaved step by step (A B, B A, ...) so that a shared machine's load falls
on both alike. Per arm: wall and process CPU seconds per step (median, mean) and the encoder stage's share;
beside them the frozen segmenter's forward alone on the 6 cameras (no grad). The first step of each arm is a
warm-up and not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from distillnerf_core.data.datasets import collate_samples, make_dataset  # noqa: E402
from distillnerf_core.model.distillnerf import DistillNeRFModel  # noqa: E402
from distillnerf_core.provenance import command_line, provenance  # noqa: E402
from distillnerf_core.training.config import load_train_config, model_config  # noqa: E402
from distillnerf_core.training.losses import DistillNeRFLoss  # noqa: E402
from distillnerf_core.training.trainer import TrainStep, optimizer_step  # noqa: E402

ARMS = {"fpn only (train_default)": "train_default", "+ frozen segmenter (train_default_frozen2d)":
        "train_default_frozen2d"}


def _arm(config: str, seed: int) -> dict:
    cfg = load_train_config(config)
    cfg.data.sky_mask = "none"
    torch.manual_seed(seed)
    model = DistillNeRFModel(model_config(cfg)).train()
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    return {"cfg": cfg, "model": model, "step": TrainStep(model, DistillNeRFLoss(cfg.loss)), "params": params,
            "opt": torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas)),
            "scaler": torch.amp.GradScaler("cuda", enabled=False), "wall": [], "cpu": [], "encoder_ms": []}


def _one_step(arm: dict, batch: dict, record: bool) -> None:
    arm["model"].stage_ms.clear()
    t, c = time.perf_counter(), time.process_time()
    optimizer_step(arm["step"], batch, arm["opt"], arm["scaler"], arm["params"], arm["cfg"].optim.grad_clip, None,
                   "cpu")
    if record:
        arm["wall"].append(time.perf_counter() - t)
        arm["cpu"].append(time.process_time() - c)
        arm["encoder_ms"].append(arm["model"].stage_ms.get("encoder", 0.0))


def _summary(arm: dict) -> dict:
    return {"steps": len(arm["wall"]), "wall_s_median": statistics.median(arm["wall"]),
            "wall_s_mean": statistics.fmean(arm["wall"]), "cpu_s_median": statistics.median(arm["cpu"]),
            "cpu_s_mean": statistics.fmean(arm["cpu"]), "encoder_ms_median": statistics.median(arm["encoder_ms"]),
            "trainable_params": sum(p.numel() for p in arm["params"]),
            "frozen_params": sum(p.numel() for p in arm["model"].parameters() if not p.requires_grad)}


def _branch_forward(model: DistillNeRFModel, images: torch.Tensor, repeats: int) -> dict:
    """The frozen segmenter's forward alone on one batch's cameras at the model's image size (no grad)."""
    branch = model.encoder.frozen_2d
    hw = tuple(model.config.image_hw)
    flat = torch.nn.functional.interpolate(images.flatten(0, 1), size=hw, mode="bilinear", antialias=True)
    lift_hw = (hw[0] // model.config.lift.feature_stride, hw[1] // model.config.lift.feature_stride)
    walls, cpus = [], []
    with torch.no_grad():
        branch(flat, lift_hw)
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            branch(flat, lift_hw)
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
    return {"cameras": int(flat.shape[0]), "segmenter_input_hw": list(branch.input_hw(hw)),
            "wall_s_median": statistics.median(walls), "cpu_s_median": statistics.median(cpus)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8, help="counted steps per arm (after one warm-up step)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dataroot", type=Path)
    p.add_argument("--version", default="v1.0-synthetic")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=REPO / "benchmarks/results/frozen_2d_cost.json")
    p.add_argument("--note", default="", help="e.g. the machine's load (recorded beside the provenance)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="frozen2d_cost_") as tmp:
        dataroot = args.dataroot
        data_text = f"{args.dataroot.name} ({args.version})" if dataroot else \
            "distillnerf-synth --scenes 1 --frames 3 --seed 5 --width 456 --height 256 (written for the run)"
        if dataroot is None:
            dataroot = Path(tmp) / "synth"
            subprocess.run([sys.executable, "-m", "distillnerf_core.cli.synth", "--out", str(dataroot), "--scenes",
                            "1", "--frames", "3", "--seed", "5", "--width", "456", "--height", "256", "--quiet"],
                           check=True, cwd=REPO)
        arms = {label: _arm(config, args.seed) for label, config in ARMS.items()}
        first = next(iter(arms.values()))
        mcfg = first["model"].config
        dataset = make_dataset(str(dataroot), args.version, mcfg.image_hw, first["cfg"].data,
                               first["model"].renderer.render_hw(tuple(mcfg.image_hw)))
        batches = [collate_samples([dataset[i]]) for i in range(len(dataset))]
        load_before = os.getloadavg()
        order = list(arms.values())
        for i in range(args.steps + 1):
            for arm in order if i % 2 == 0 else order[::-1]:
                _one_step(arm, batches[i % len(batches)], record=i > 0)
        branch = _branch_forward(arms[list(ARMS)[1]]["model"], batches[0]["images"], max(3, args.steps // 2))
    rows = {label: _summary(arm) for label, arm in arms.items()}
    base, frozen = (rows[k] for k in ARMS)
    result = {
        "arms": rows,
        "frozen_branch_forward": branch,
        "added_per_step": {"wall_s": frozen["wall_s_median"] - base["wall_s_median"],
                           "cpu_s": frozen["cpu_s_median"] - base["cpu_s_median"],
                           "wall_ratio": frozen["wall_s_median"] / base["wall_s_median"],
                           "cpu_ratio": frozen["cpu_s_median"] / base["cpu_s_median"]},
        "threads": args.threads,
        "load": {"before": [round(v, 2) for v in load_before], "after": [round(v, 2) for v in os.getloadavg()]},
        "note": args.note,
        "provenance": provenance(command_line("python benchmarks/frozen_2d_cost.py", argv),
                                 model="the small config, fresh weights (seed 0), with and without encoder.frozen_2d: "
                                       "segmenter (data/weights/espnetv2_s2_cityscapes)", data=data_text),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp_json = args.json.with_name(f".{args.json.name}.tmp")
    tmp_json.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp_json, args.json)
    for label, row in rows.items():
        print(f"{label}: {row['wall_s_median']:.3f} s wall / {row['cpu_s_median']:.3f} s CPU per step (median of "
              f"{row['steps']}), encoder {row['encoder_ms_median']:.0f} ms")
    added = result["added_per_step"]
    print(f"frozen branch adds {added['wall_s']:.3f} s wall ({added['wall_ratio']:.2f}x), {added['cpu_s']:.3f} s CPU "
          f"({added['cpu_ratio']:.2f}x) per step; its forward alone on {branch['cameras']} cameras at "
          f"{branch['segmenter_input_hw']}: {branch['wall_s_median']:.3f} s wall")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
