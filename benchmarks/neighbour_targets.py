#!/usr/bin/env python3
"""Neighbour-frame targets (data.neighbour_targets) measured with the novel-view benchmark.

    python benchmarks/neighbour_targets.py --dataset synthetic [--steps 150] [--arms bundled,current,neighbour]
    python benchmarks/neighbour_targets.py --dataset ddad --protocol 01 [--steps 120]
    python benchmarks/neighbour_targets.py --dataset ddad --protocol 02 [--steps 120]

Each arm starts from the bundled model (models/default) and is fine-tuned with `distillnerf-train`'s trainer
(train_small's losses, Adam lr --lr, --warmup steps, no data workers) for the SAME number of steps:
  current    the current frame's targets only (what training did before);
  neighbour  + data.neighbour_targets both: per step one of the sample's previous / next keyframes rendered
             from the current frame's encoding with RGB L1 + SSIM, LiDAR and (where a segmenter cache gives
             the sky) sky losses;
  bundled    no fine-tune.
Novel view = benchmarks/real_data.py's `novel_view`: encode frame t, render frame t+1's cameras (poses through
the ego poses), PSNR / SSIM against frame t+1's images and LiDAR AbsRel against its sweep, ego-body pixels left
out; beside it the copy-previous-frame baseline (frame t's images as the prediction of t+1's).

--dataset synthetic: fine-tuned on a synthetic drive (--train-scenes x --train-frames keyframes, seed
  --train-seed, 2 Hz keyframes, ~4 m apart), scored on every consecutive pair of the held-out set (2 x 4
  keyframes, seed 999, other towns; the set distillnerf-eval's numbers use). No segmenter cache: the current
  frame keeps its dense ground-truth depth, the neighbour has RGB + LiDAR.
--dataset ddad: data/ddad_scene02 (3 frames 0.1 s apart) through distillnerf-dgp2nusc, a segmenter cache
  (distillnerf-cache-features --teacher segmenter) for the sky; the training frames are written as a dataroot
  of their own (its keyframe links join only them; the ego-body masks of the 3-frame dataroot are copied in):
  --protocol 01: fine-tuned on frames 0 and 1 (neighbours 0 <-> 1), scored on 1 -> 2 (frame 2 never seen);
  --protocol 02: fine-tuned on frames 0 and 2 (neighbours 0 <-> 2, 0.2 s), scored on 0 -> 1 (frame 1 never
  seen) and, as benchmarks/real_data.py's per-scene fit (14.1 dB), on the mean of 0 -> 1 and 1 -> 2.
Each invocation replaces its arms in its section of --json (dataset / protocol) and keeps the others (run the
arms one at a time to keep each invocation short).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
from real_data import novel_view  # noqa: E402

from distillnerf_core.data.datasets import NuScenesDataset  # noqa: E402
from distillnerf_core.provenance import command_line, portable, provenance  # noqa: E402
from distillnerf_core.training.checkpoints import load_checkpoint  # noqa: E402
from distillnerf_core.training.config import load_train_config  # noqa: E402
from distillnerf_core.training.trainer import train  # noqa: E402

ARMS = ("bundled", "current", "neighbour")
SCORE_KEYS = ("psnr", "ssim", "abs_rel", "previous_frame_psnr", "previous_frame_ssim")


def synthetic_data(work: Path, args: argparse.Namespace) -> dict:
    """Train and held-out synthetic dataroots (generated once, reused)."""
    from distillnerf_core.data.synthetic.export import VERSION, write_dataroot

    roots = {"train": (work / "synthetic_train", args.train_scenes, args.train_frames, args.train_seed),
             "heldout": (work / "synthetic_heldout", 2, 4, 999)}
    for path, scenes, frames, seed in roots.values():
        if not (path / VERSION / "sample.json").is_file():
            print(f"generating {scenes} x {frames} synthetic keyframes (seed {seed}) into {path}", flush=True)
            write_dataroot(path, scenes=scenes, frames=frames, seed=seed, width=456, height=256, progress=False)
    return {"version": VERSION, "train": roots["train"][0], "eval": roots["heldout"][0], "cameras": None,
            "pairs": None, "jpeg_draft": False,
            "describe": f"synthetic drive: train {args.train_scenes} x {args.train_frames} keyframes (seed "
                        f"{args.train_seed}), scored on the held-out 2 x 4 (seed 999)"}


def ddad_data(work: Path, args: argparse.Namespace) -> dict:
    """The DDAD dataroot (3 frames, masks), a dataroot of the protocol's training frames, their segmenter cache."""
    from distillnerf_core.cli import cache_features, dgp2nusc
    from distillnerf_core.data.dgp import DDAD_CAMERAS, VERSION, read_scene, write_dataroot

    full = work / "ddad_full"
    if not (full / VERSION / "sample.json").is_file():
        if dgp2nusc.main(["--scene", str(args.ddad), "--out", str(full), "--overwrite"]) != 0:
            raise SystemExit("distillnerf-dgp2nusc failed")
    frames = [0, 1] if args.protocol == "01" else [0, 2]
    sub = work / f"ddad_frames{''.join(map(str, frames))}"
    if not (sub / VERSION / "sample.json").is_file():
        scene = read_scene(args.ddad)
        write_dataroot(replace(scene, frames=[scene.frames[i] for i in frames]), sub, masks=False, overwrite=True)
        shutil.copytree(full / "masks", sub / "masks")  # the masks every score uses (from all 3 frames)
    if not (sub / "features" / "segmenter" / "manifest.json").is_file():
        if cache_features.main(["--dataroot", str(sub), "--version", VERSION, "--teacher", "segmenter",
                                "--threads", str(args.threads), "--no-progress"]) != 0:
            raise SystemExit("distillnerf-cache-features failed")
    pairs = [(1, 2)] if args.protocol == "01" else [(0, 1), (1, 2)]
    return {"version": VERSION, "train": sub, "eval": full, "cameras": list(DDAD_CAMERAS), "pairs": pairs,
            "train_frames": frames, "jpeg_draft": True,
            "describe": f"DDAD scene 02 (3 frames 0.1 s apart): fine-tuned on frames {frames}, scored on "
                        f"{', '.join(f'{a} -> {b}' for a, b in pairs)}"}


def fine_tune(arm: str, data: dict, args: argparse.Namespace, work: Path) -> tuple[Path, dict]:
    """The arm's fine-tune from the bundled model; (weights, its summary with CPU time)."""
    cfg = load_train_config("train_small")
    cfg.init = str(args.model)
    cfg.data.num_workers = 0
    cfg.data.cameras = data["cameras"]
    cfg.data.jpeg_draft = data["jpeg_draft"]  # 1936x1216 DDAD JPEGs decoded at 1/8 (the node's decode)
    cfg.data.neighbour_targets = "both" if arm == "neighbour" else "none"
    cfg.optim.lr, cfg.optim.warmup_steps = args.lr, args.warmup
    cfg.ckpt_every, cfg.log_every, cfg.image_every, cfg.seed = 10**9, 10, 0, args.seed
    run = work / "runs" / f"{args.dataset}{args.protocol or ''}_{arm}"
    if run.exists():
        shutil.rmtree(run)
    print(f"== {arm}: {args.steps} steps from {args.model.name} on {data['train'].name}", flush=True)
    c0, t0 = time.process_time(), time.perf_counter()
    summary = train(cfg, str(data["train"]), data["version"], run, max_steps=args.steps, threads=args.threads,
                    progress=False)
    info = {"steps": summary["step"], "cpu_minutes": (time.process_time() - c0) / 60.0,
            "wall_minutes": (time.perf_counter() - t0) / 60.0, "last_losses": summary["last"],
            "neighbour_targets": cfg.data.neighbour_targets}
    print(f"   {info['steps']} steps, {info['cpu_minutes']:.1f} CPU min, {info['wall_minutes']:.1f} wall min",
          flush=True)
    return run / "model.safetensors", info


def eval_pairs(ds: NuScenesDataset, pairs: list[tuple[int, int]] | None) -> list[tuple[int, int]]:
    """Consecutive keyframes of each scene (all of them when `pairs` is None)."""
    if pairs is not None:
        return pairs
    index = {tok: i for i, tok in enumerate(ds.sample_tokens)}
    out = []
    for i, tok in enumerate(ds.sample_tokens):
        nxt = ds.nusc.get("sample", tok)["next"]
        if nxt:
            out.append((i, index[nxt]))
    return out


@torch.no_grad()
def score_model(weights: Path, data: dict) -> dict:
    """Novel view of every pair (and the copy-previous-frame baseline) with the model at `weights`."""
    model = load_checkpoint(weights).eval()
    hw = tuple(model.config.image_hw)
    kw = {"cameras": data["cameras"]} if data["cameras"] else {}
    ds = NuScenesDataset(data["eval"], data["version"], image_size=hw, render_size=model.renderer.render_hw(hw),
                         load_next=True, sky_mask="none", **kw)
    rows, cache = [], {}
    for a, b in eval_pairs(ds, data["pairs"]):
        for i in (a, b):
            cache.setdefault(i, ds[i])
        s, copy, _ = novel_view(model, cache[a], cache[b])
        rows.append({"from": a, "to": b, "psnr": s["psnr"], "ssim": s["ssim"], "abs_rel": s["abs_rel"],
                     "previous_frame_psnr": copy["psnr"], "previous_frame_ssim": copy["ssim"]})
    return {"pairs": rows, "mean": {k: sum(r[k] for r in rows) / len(rows) for k in SCORE_KEYS}}


def write_arms(path: Path, key: str, section: dict, arms: dict, started: dict) -> None:
    """Set section `key` of the results JSON and replace its `arms` of this invocation, keeping its other arms
    and the other sections (atomically: temp file + os.replace). The top-level provenance is the latest
    invocation's; every arm keeps its own."""
    doc = json.loads(path.read_text()) if path.is_file() else {}
    kept = doc.get(key, {}).get("arms", {})
    doc[key] = {**section, "arms": {**kept, **arms}}
    doc["provenance"] = {**started, "note": "the latest invocation; each arm of each section records its own"}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("synthetic", "ddad"), required=True)
    p.add_argument("--protocol", choices=("01", "02"), help="ddad: the training frames (see above)")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--steps", type=int, default=60, help="fine-tune steps of every arm")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--train-scenes", type=int, default=2)
    p.add_argument("--train-frames", type=int, default=8)
    p.add_argument("--train-seed", type=int, default=31)
    p.add_argument("--model", type=Path, default=REPO / "models" / "default" / "model.safetensors")
    p.add_argument("--ddad", type=Path, default=REPO / "data" / "ddad_scene02")
    p.add_argument("--work", type=Path, default=Path("/tmp/distillnerf_bench_neighbours"))
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on the loaded shared machine 2 OpenMP threads ran slower)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "neighbour_targets.json")
    args = p.parse_args(argv)
    if args.dataset == "ddad" and not args.protocol:
        p.error("--dataset ddad needs --protocol 01 or 02")
    if args.dataset == "synthetic" and args.protocol:
        p.error("--protocol is for --dataset ddad")
    arms = [a for a in args.arms.split(",") if a]
    if not arms or any(a not in ARMS for a in arms):
        p.error(f"--arms: a comma list of {', '.join(ARMS)}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.work.mkdir(parents=True, exist_ok=True)
    wall0 = time.perf_counter()
    data = synthetic_data(args.work, args) if args.dataset == "synthetic" else ddad_data(args.work, args)
    started = provenance(command_line("python benchmarks/neighbour_targets.py", argv), model=portable(args.model),
                         data=data["describe"])
    results = {}
    for arm in arms:
        weights, info = (args.model, {"steps": 0}) if arm == "bundled" else fine_tune(arm, data, args, args.work)
        load = [round(x, 1) for x in os.getloadavg()]
        if arm != "bundled":
            info.update(lr=args.lr, warmup=args.warmup, threads=args.threads)
        results[arm] = {**score_model(weights, data), "fine_tune": info, "provenance": started,
                        "load": f"a 2-core machine shared by 8 engineers: load average {load} after this arm (wall"
                                " times are not the work; the fine-tuned arms ran the same number of steps)"}
        m = results[arm]["mean"]
        print(f"   {arm}: novel-view PSNR {m['psnr']:.2f} (copy previous frame {m['previous_frame_psnr']:.2f}), "
              f"SSIM {m['ssim']:.3f}, LiDAR AbsRel {m['abs_rel']:.3f}", flush=True)
    key = args.dataset if args.dataset == "synthetic" else f"ddad_{args.protocol}"
    section = {"describe": data["describe"]}
    if args.dataset == "ddad":
        section["train_frames"], section["pairs"] = data["train_frames"], data["pairs"]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_arms(args.json, key, section, results, started)
    print(json.dumps({a: r["mean"] for a, r in results.items()}, indent=1))
    print(f"wrote {', '.join(results)} of section {key} of {args.json} ({(time.perf_counter() - wall0) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
