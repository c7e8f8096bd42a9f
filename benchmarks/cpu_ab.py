#!/usr/bin/env python3
"""Interleaved before/after timing of two (or more) source trees on the CPU, 2 threads: the no-grad forward
and the fp32 training step (forward, default loss, backward, Adam) of one config.

    git archive <commit> distillnerf_core | tar -x -C /tmp/before     # one tree per revision
    python benchmarks/cpu_ab.py /tmp/before /tmp/after [--config small] [--rounds 4] [--labels C1 C2] [--json OUT]
        [--scene realistic]

`--scene realistic` times the bundled model (models/default: trained weights, so a trained model's occupancy)
on the bundled real keyframe (data/nuscenes_sample, its LiDAR depth as the step's target), the load of
`distillnerf-bench --scene realistic`; this checkout prepares it once (a safetensors file of the batch), so
every tree runs on the same inputs and only needs to build the model from the checkpoint's config.

Each round runs every tree in a fresh process, one after the other, so background load on a shared machine
hits all trees alike; the report gives per-tree medians and minima over all rounds (per stage too), and
the process CPU time per forward / step (with --threads 1 the least load-sensitive measure of the work).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distillnerf_core.provenance import command_line, portable, provenance

CHILD = r'''
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[4]))
from distillnerf_core.model.cameras import ring_rig
from distillnerf_core.model.distillnerf import STAGES, DistillNeRFModel, ModelConfig
from distillnerf_core.training.losses import DistillNeRFLoss
from distillnerf_core.training.trainer import TrainStep
config, n_infer, n_train = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
if len(sys.argv) > 5:  # realistic: the checkpoint's model and the prepared keyframe batch (safetensors)
    from safetensors.torch import load_file
    from distillnerf_core.model.cameras import CameraRig
    cfg = ModelConfig.from_dict(json.load(open(sys.argv[5]))["config"])
    model = DistillNeRFModel(cfg, load_pretrained=False)
    model.load_state_dict(load_file(sys.argv[6]))
    keyframe = load_file(sys.argv[7])
    hw = tuple(cfg.image_hw)
    rig = CameraRig(keyframe["intrinsics"], keyframe["cam2ego"], hw)
    images = keyframe["images"]
else:
    keyframe = None
    cfg = ModelConfig.load(config)
    model = DistillNeRFModel(cfg)
    hw = tuple(cfg.image_hw)
    rig = ring_rig(6, hw)
    images = torch.rand(1, 6, 3, *hw)
out = {"infer_ms": [], "infer_cpu_ms": [], "stages": {s: [] for s in STAGES}, "train_ms": [], "train_cpu_ms": []}
model.eval()
with torch.no_grad():
    for i in range(n_infer + 2):
        start, cpu = time.perf_counter(), time.process_time()
        model(images, rig.intrinsics, rig.cam2ego)
        if i >= 2:
            out["infer_ms"].append(1000 * (time.perf_counter() - start))
            out["infer_cpu_ms"].append(1000 * (time.process_time() - cpu))
            for s in STAGES:
                out["stages"][s].append(model.stage_ms[s])
model.train()
step = TrainStep(model, DistillNeRFLoss())
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.Adam(params, lr=2e-4, betas=(0.0, 0.99))
batch = keyframe or {"images": images, "intrinsics": rig.intrinsics, "cam2ego": rig.cam2ego,
                     "lidar_depth": 2.0 + 40.0 * torch.rand(1, 6, *model.renderer.render_hw(hw))}
for i in range(n_train + 1):
    start, cpu = time.perf_counter(), time.process_time()
    total = step(batch)[0]
    opt.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(params, 35.0)
    opt.step()
    if i >= 1:
        out["train_ms"].append(1000 * (time.perf_counter() - start))
        out["train_cpu_ms"].append(1000 * (time.process_time() - cpu))
print(json.dumps(out))
'''


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="+", type=Path)
    parser.add_argument("--config", default="small")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--infer", type=int, default=5, help="timed forwards per round (after 2 warm-up)")
    parser.add_argument("--train", type=int, default=2, help="timed training steps per round (after 1)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads; with 1, process CPU time measures the work done, little affected by "
                             "other load on a shared machine (no OpenMP spin-waits)")
    parser.add_argument("--labels", nargs="+", default=None,
                        help="one label per tree, e.g. the commit it was archived from (recorded in the JSON)")
    parser.add_argument("--scene", default="random", choices=["random", "realistic"],
                        help="random: random weights, pixels and ring rig; realistic: the bundled model on the "
                             "bundled real keyframe (see above; --config is then the bundled model's)")
    parser.add_argument("--note", help="recorded in the JSON beside the provenance (e.g. that the machine was shared)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.labels is not None and len(args.labels) != len(args.trees):
        parser.error("--labels needs one label per tree")
    with tempfile.TemporaryDirectory() as work:
        extra = _realistic_inputs(Path(work)) if args.scene == "realistic" else []
        if extra:
            args.config = json.loads(Path(extra[0]).read_text())["config"]["name"]
        return _run(args, argv, extra)


def _realistic_inputs(work: Path) -> list[str]:
    """[sidecar JSON, weights, keyframe batch] of the realistic scene: the bundled model and keyframe."""
    from safetensors.torch import save_file

    from distillnerf_core.cli.bench import BUNDLED_MODEL, keyframe_batch
    from distillnerf_core.training.checkpoints import load_checkpoint, sidecar_path

    model = load_checkpoint(BUNDLED_MODEL)  # verifies the file; the trees rebuild it from the same config
    hw = tuple(model.config.image_hw)
    batch = keyframe_batch(hw, model.renderer.render_hw(hw), 1, work / "dataroot")
    save_file({k: v.contiguous() for k, v in batch.items()}, str(work / "keyframe.safetensors"))
    return [str(sidecar_path(BUNDLED_MODEL)), str(BUNDLED_MODEL), str(work / "keyframe.safetensors")]


def _run(args: argparse.Namespace, argv: list[str] | None, extra: list[str]) -> int:
    keys = ("infer_ms", "infer_cpu_ms", "train_ms", "train_cpu_ms")
    runs = {portable(t): {**{k: [] for k in keys}, "stages": {}} for t in args.trees}
    for done in range(1, args.rounds + 1):
        for tree in args.trees:
            proc = subprocess.run([sys.executable, "-c", CHILD, args.config, str(args.infer), str(args.train),
                                   str(args.threads), *extra], cwd=tree, capture_output=True, text=True,
                                  env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin",
                                       "OMP_NUM_THREADS": str(args.threads)})
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
                return 1
            data = json.loads(proc.stdout.strip().splitlines()[-1])
            run = runs[portable(tree)]
            for k in keys:
                run[k] += data[k]
            for stage, values in data["stages"].items():
                run["stages"].setdefault(stage, []).extend(values)
        # after every round: a run cut short (a time limit on a loaded machine) keeps the rounds it finished
        _report(args, argv, extra, runs, done, final=done == args.rounds)
    return 0


def _report(args: argparse.Namespace, argv: list[str] | None, extra: list[str], runs: dict, done: int,
            final: bool) -> None:
    """Per-tree medians of the rounds done so far; printed at the end, written to --json after every round."""
    report = {"config": args.config, "scene": args.scene, "threads": args.threads, "rounds": done,
              "rounds_asked": args.rounds, "trees": {}, "load_average_at_end": list(os.getloadavg()),
              **({"note": args.note} if args.note else {})}
    for tree, run in runs.items():
        summary = {
            "infer_ms_median": statistics.median(run["infer_ms"]), "infer_ms_min": min(run["infer_ms"]),
            "train_step_ms_median": statistics.median(run["train_ms"]), "train_step_ms_min": min(run["train_ms"]),
            "infer_cpu_ms_median": statistics.median(run["infer_cpu_ms"]),
            "train_step_cpu_ms_median": statistics.median(run["train_cpu_ms"]),
            "stage_ms_median": {s: statistics.median(v) for s, v in run["stages"].items()},
            "n_infer": len(run["infer_ms"]), "n_train": len(run["train_ms"]),
        }
        report["trees"][tree] = summary
        if final:
            print(f"{tree}: forward median {summary['infer_ms_median']:.1f} ms (min {summary['infer_ms_min']:.1f}), "
                  f"train step median {summary['train_step_ms_median']:.1f} ms (min "
                  f"{summary['train_step_ms_min']:.1f}); process CPU: forward {summary['infer_cpu_ms_median']:.1f} "
                  f"ms, step {summary['train_step_cpu_ms_median']:.1f} ms; stages "
                  + ", ".join(f"{s} {v:.1f}" for s, v in summary["stage_ms_median"].items()))
    if args.json:
        labels = dict(zip(runs, args.labels or ["not recorded"] * len(runs), strict=True))
        report["trees_are"] = labels
        report["provenance"] = provenance(
            command_line("python benchmarks/cpu_ab.py", argv),
            model=f"the bundled model (models/default, `{args.config}` config)" if extra else
            f"random weights (`{args.config}` config)",
            data="the bundled real keyframe (data/nuscenes_sample), 6 cameras, its LiDAR depth" if extra else
            "random images, 6 cameras (a synthetic ring rig)",
            trees=", ".join(f"{tree}: {label}" for tree, label in labels.items()))
        if args.labels:  # the code measured is the trees', not this checkout's
            report["provenance"]["commit"] = " -> ".join(args.labels)
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, args.json)  # atomic: a run killed mid-write leaves the previous round's file


if __name__ == "__main__":
    sys.exit(main())
