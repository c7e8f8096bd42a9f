#!/usr/bin/env python3
"""Per-scene field targets distilled into the feedforward model (issue 15): synthetic and real (DDAD).

    python benchmarks/nerf_distill.py --part synthetic [--steps 200] [--field-steps 400]
    python benchmarks/nerf_distill.py --part real [--fit-cpu-minutes 2] [--field-steps 400] [--arms A,B] [--merge]

synthetic: a train dataroot (--train-scenes x --train-frames, seed 11) and a held-out one (seed 999); one field
  per train scene (distillnerf-fit-scene, every keyframe fitted); then the `small` config trained from scratch
  for the SAME number of steps (same seed, same data order) in four variants:
    lidar        LiDAR depth only (no dense depth)
    field        + the field's dense depth (reference normalisation, sky = 0 -> 115 m)
    field+virt   + dense depth + one virtual camera per camera with probability --virtual-prob
    oracle       + the synthetic world's exact dense depth (upper bound)
  scored on the held-out dataroot with the paper's protocol (recon / novel-view PSNR, AbsRel vs LiDAR and vs
  exact dense GT), plus each field's own depth against the exact GT.
real: a segmenter cache of DDAD scene 02 (distillnerf-cache-features --teacher segmenter: the sky masks), the
  field on it (frames 0 and 2 fitted, frame 1 held out; sky rays -> the field's sky model, --field-sky; its PSNR /
  LiDAR AbsRel / how much of the sky it renders as sky), then the real-data benchmark's per-scene fit (bundled
  model on frames 0 and 2, scored on held-out frame 1), each arm at the same budget of process CPU time:
    baseline     LiDAR only, no sky mask (as real_data.py)
    sky          + the segmenter's sky at the sky depth (115 m) in the dense-depth loss
    field        + the field's dense depth (its sky and the segmenter's at 115 m)
    field+virt   + the field's virtual cameras (probability --virtual-prob)
  --arms runs some of them; --merge keeps the other arms of an existing result JSON (the field and the cache are
  resumable: a second invocation reuses them), so that the arms can run in separate invocations on a shared machine.
Budgets are process CPU time (time.process_time, all threads) where the machine is shared; wall time is printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
from real_data import fit as real_data_fit  # noqa: E402

from distillnerf_core.cli import configure_logging  # noqa: E402
from distillnerf_core.data.datasets import NuScenesDataset, collate_samples  # noqa: E402
from distillnerf_core.data.synthetic.export import VERSION as SYN_VERSION  # noqa: E402
from distillnerf_core.data.synthetic.export import write_dataroot as write_synthetic  # noqa: E402
from distillnerf_core.provenance import command_line, provenance  # noqa: E402
from distillnerf_core.scene_fit.fit import FitConfig, fit_dataroot  # noqa: E402
from distillnerf_core.training.checkpoints import load_checkpoint  # noqa: E402
from distillnerf_core.training.config import load_train_config  # noqa: E402
from distillnerf_core.training.eval import evaluate  # noqa: E402
from distillnerf_core.training.losses import LossConfig  # noqa: E402
from distillnerf_core.training.trainer import train  # noqa: E402

KEYS = ("psnr", "nvs_psnr", "abs_rel", "dense_abs_rel", "steps", "train_cpu_minutes", "train_wall_minutes")


def synthetic(args: argparse.Namespace) -> dict:
    work = args.work / "synthetic"
    roots = {}
    for tag, scenes, frames, seed in (("train", args.train_scenes, args.train_frames, 11),
                                      ("heldout", args.heldout_scenes, args.heldout_frames, 999)):
        roots[tag] = work / tag
        if not (roots[tag] / SYN_VERSION / "sample.json").is_file():
            write_synthetic(roots[tag], scenes=scenes, frames=frames, seed=seed, width=456, height=256, progress=False)
    fit_cfg = FitConfig(steps=args.field_steps, render_hw=[32, 57], holdout_every=0)
    c0, t0 = time.process_time(), time.perf_counter()
    manifest = fit_dataroot(roots["train"], SYN_VERSION, roots["train"] / "nerf" / "bench", fit_cfg,
                            progress=not args.no_progress)
    field_cpu, field_wall = (time.process_time() - c0) / 60, (time.perf_counter() - t0) / 60
    fields = {name: {k: v for k, v in rec["quality"].items() if k != "frames"}
              for name, rec in manifest["scenes"].items()}
    variants = {
        "lidar": dict(dense_coarse=0.0, dense_render=0.0, nerf_coarse=0.0, nerf_render=0.0),
        "field": dict(dense_coarse=0.0, dense_render=0.0),
        "field+virt": dict(dense_coarse=0.0, dense_render=0.0, virtual_prob=args.virtual_prob),
        "oracle": dict(nerf_coarse=0.0, nerf_render=0.0),
    }
    results = {}
    for name, loss_over in variants.items():
        cfg = load_train_config("train_small")
        cfg.data.num_workers = 0  # data loading counted in this process's CPU time
        cfg.ckpt_every = 10**9
        cfg.seed = args.seed
        if name != "lidar" and name != "oracle":
            cfg.data.nerf_targets = "bench"
        for k, v in loss_over.items():
            setattr(cfg.loss, k, v)
        run = work / "runs" / name.replace("+", "_")
        print(f"\n== {name}: {args.steps} steps, loss overrides {loss_over}", flush=True)
        c0, t0 = time.process_time(), time.perf_counter()
        summary = train(cfg, str(roots["train"]), SYN_VERSION, run, max_steps=args.steps, threads=args.threads,
                        progress=not args.no_progress)
        cpu, wall = (time.process_time() - c0) / 60, (time.perf_counter() - t0) / 60
        model = load_checkpoint(run / "model.safetensors")
        render_hw = model.renderer.render_hw(tuple(model.config.image_hw))
        ds = NuScenesDataset(roots["heldout"], SYN_VERSION, image_size=tuple(model.config.image_hw),
                             render_size=render_hw, load_next=True)
        metrics = evaluate(model, ds, progress=False)["metrics"]
        results[name] = {**metrics, "steps": summary["step"], "train_cpu_minutes": cpu, "train_wall_minutes": wall,
                         "last_loss_terms": summary["last"]}
        print(name, json.dumps({k: results[name].get(k) for k in KEYS}), flush=True)
    return {"fields": fields, "field_cpu_minutes": field_cpu, "field_wall_minutes": field_wall,
            "field_settings": manifest["settings"], "variants": results,
            "setup": {"train": f"{args.train_scenes} scenes x {args.train_frames} keyframes (seed 11)",
                      "heldout": f"{args.heldout_scenes} x {args.heldout_frames} (seed 999)",
                      "config": "train_small (from scratch)", "steps": args.steps, "virtual_prob": args.virtual_prob}}


def fit_model(model, batches: list[dict], loss_cfg: LossConfig, cpu_minutes: float, lr: float, warmup: int,
              seed: int) -> dict:
    """The real-data benchmark's per-scene recipe (real_data.fit) with any loss config, from a fixed seed."""
    torch.manual_seed(seed)
    info = real_data_fit(model, batches, cpu_minutes, lr, warmup, max_steps=10**9, loss_cfg=loss_cfg)
    return {k: info[k] for k in ("steps", "cpu_minutes", "wall_minutes")}


REAL_ARMS = {"baseline": "baseline (LiDAR only, as real_data.py)", "sky": "+ sky target (segmenter, 115 m)",
             "field": "+ field dense depth (+ sky)", "field+virt": "+ field dense depth + virtual cameras (+ sky)"}


def sky_scores(depth: torch.Tensor, sky: torch.Tensor, masks: torch.Tensor) -> dict:
    """Predicted depth on the held-out frame's segmenter-sky pixels (ego body left out): median and share >= 80 m."""
    from distillnerf_core.training.metrics import resize_mask

    valid = resize_mask(masks > 0.5, tuple(depth.shape[-2:])) & sky
    d = depth[valid]
    return {"sky_pixels": int(valid.sum()), "sky_pred": float(d.median()) if d.numel() else None,
            "sky_pred_p10": float(torch.quantile(d.float(), 0.1)) if d.numel() else None,
            "sky_far_share": float((d >= 80.0).float().mean()) if d.numel() else None}


def real(args: argparse.Namespace, previous: dict | None) -> dict:
    from real_data import recon

    from distillnerf_core.data.dgp import DDAD_CAMERAS, VERSION, write_dataroot
    from distillnerf_core.teachers.base import TeacherConfig
    from distillnerf_core.teachers.cache import cache_features

    work = args.work / "real"
    root = work / "ddad_root"
    if not (root / VERSION / "sample.json").is_file():  # kept between invocations: the cache and field resume
        root = write_dataroot(REPO / "data" / "ddad_scene02", root, overwrite=True)
    c0, t0 = time.process_time(), time.perf_counter()
    cache_features(root, VERSION, TeacherConfig(kind="segmenter"), name="segmenter", cameras=list(DDAD_CAMERAS),
                   progress=False)
    cache_cpu = (time.process_time() - c0) / 60
    fit_cfg = FitConfig(steps=args.field_steps, image_hw=[192, 304], render_hw=[32, 57], holdout_every=4,
                        holdout_offset=1, sky_mask=args.field_sky)
    if args.field_sky_weight is not None:
        fit_cfg.sky_weight = args.field_sky_weight
    wanted = args.arms.split(",") if args.arms else list(REAL_ARMS)
    unknown = [a for a in wanted if a not in REAL_ARMS]
    if unknown:
        raise SystemExit(f"unknown --arms {unknown}; the arms are {list(REAL_ARMS)}")
    manifest, rec, field_cpu, field_wall = None, None, 0.0, 0.0
    if any(a.startswith("field") for a in wanted):  # only the field arms need the field
        c0, t0 = time.process_time(), time.perf_counter()
        manifest = fit_dataroot(root, VERSION, root / "nerf" / "bench", fit_cfg, cameras=list(DDAD_CAMERAS),
                                progress=not args.no_progress)
        field_cpu, field_wall = (time.process_time() - c0) / 60, (time.perf_counter() - t0) / 60
        rec = next(iter(manifest["scenes"].values()))
    bundled = REPO / "models" / "default" / "model.safetensors"
    arms = {"baseline": (LossConfig(rgb_ssim=0.2), False, "none"),
            "sky": (LossConfig(rgb_ssim=0.2), False, "segmenter"),
            "field": (LossConfig(rgb_ssim=0.2), True, "segmenter"),
            "field+virt": (LossConfig(rgb_ssim=0.2, virtual_prob=args.virtual_prob), True, "segmenter")}
    out = dict(previous.get("per_scene_fit", {})) if previous else {}
    for key in wanted:
        loss_cfg, with_field, sky_mask = arms[key]
        name = REAL_ARMS[key]
        model = load_checkpoint(bundled).eval()
        image_hw = tuple(model.config.image_hw)
        render_hw = model.renderer.render_hw(image_hw)
        ds = NuScenesDataset(root, VERSION, image_size=image_hw, render_size=render_hw, cameras=DDAD_CAMERAS,
                             load_next=False, nerf_targets=(root / "nerf" / "bench") if with_field else None,
                             sky_mask=sky_mask)
        items = [ds[i] for i in range(len(ds))]
        batches = [collate_samples([items[0]]), collate_samples([items[2]])]
        print(f"\n== per-scene fit, {name}: {args.fit_cpu_minutes} CPU min", flush=True)
        info = fit_model(model, batches, loss_cfg, args.fit_cpu_minutes, 5e-4, 20, args.seed)
        scored = NuScenesDataset(root, VERSION, image_size=image_hw, render_size=render_hw, cameras=DDAD_CAMERAS,
                                 load_next=False, sky_mask="segmenter")[1]  # every arm scored on the same sky
        with torch.no_grad():
            held, (_, views) = recon(model, scored)
            held.update(sky_scores(views.depth[0], scored["sky_mask"], scored["masks"]))
            train_rows = [recon(model, items[i])[0] for i in (0, 2)]
        out[name] = {"held_out_frame1": held, "train_frames_psnr": sum(r["psnr"] for r in train_rows) / 2,
                     "train_frames_abs_rel": sum(r["abs_rel"] for r in train_rows) / 2, "arm": key,
                     "sky_mask": sky_mask, **info}
        print(name, json.dumps({k: held[k] for k in ("psnr", "ssim", "abs_rel", "top_empty_pred", "sky_pred")}),
              flush=True)
    out = {REAL_ARMS[k]: out[REAL_ARMS[k]] for k in arms if REAL_ARMS[k] in out}  # arm order, whoever ran them
    field = ({"field": rec["quality"], "field_cpu_minutes": rec["total_cpu_s"] / 60,
              "field_wall_minutes": rec["total_wall_s"] / 60, "field_sky_mask": rec.get("sky_mask"),
              "field_settings": manifest["settings"]} if rec is not None else
             {k: previous[k] for k in ("field", "field_cpu_minutes", "field_wall_minutes", "field_sky_mask",
                                       "field_settings") if k in previous} if previous else {})
    return {**field, "segmenter_cache_cpu_minutes": cache_cpu, "per_scene_fit": out,
            "setup": {"fit_cpu_minutes": args.fit_cpu_minutes, "virtual_prob": args.virtual_prob,
                      "init": "models/default/model.safetensors", "train_frames": [0, 2], "held_out": [1],
                      "arms_this_invocation": wanted,
                      "field_this_invocation_cpu_minutes": field_cpu, "field_this_invocation_wall_minutes": field_wall}}


def main(argv: list[str] | None = None) -> int:
    configure_logging()  # the library's progress and warnings to stderr
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("synthetic", "real"), required=True)
    p.add_argument("--work", type=Path, default=Path("/tmp/distillnerf_bench_nerf"))
    p.add_argument("--steps", type=int, default=200, help="synthetic: training steps per variant")
    p.add_argument("--field-steps", type=int, default=400)
    p.add_argument("--fit-cpu-minutes", type=float, default=2.0, help="real: CPU budget per per-scene fit arm")
    p.add_argument("--virtual-prob", type=float, default=0.5)
    p.add_argument("--arms", default=None, help=f"real: comma-separated arms of {list(REAL_ARMS)} (default all)")
    p.add_argument("--merge", action="store_true", help="real: keep the other arms of the existing --json result")
    p.add_argument("--field-sky", default="auto", help="real: the field's FitConfig.sky_mask (auto | none | ...)")
    p.add_argument("--field-sky-weight", type=float, default=None, help="real: the field's FitConfig.sky_weight")
    p.add_argument("--train-scenes", type=int, default=2)
    p.add_argument("--train-frames", type=int, default=6)
    p.add_argument("--heldout-scenes", type=int, default=1)
    p.add_argument("--heldout-frames", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    c0, t0 = time.process_time(), time.perf_counter()
    started = provenance(command_line("python benchmarks/nerf_distill.py", argv))  # the code as the run starts
    path = args.json or REPO / "benchmarks" / "results" / f"nerf_distill_{args.part}.json"
    previous = json.loads(path.read_text()) if args.merge and path.is_file() else None
    result = synthetic(args) if args.part == "synthetic" else real(args, previous)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    result["header"] = (f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC "
                        f"{os.cpu_count()} CPU cores (load average {load} at the end), {args.threads} threads, torch "
                        f"{torch.__version__}, commit {commit}; process CPU {(time.process_time() - c0) / 60:.1f} min, "
                        f"wall {(time.perf_counter() - t0) / 60:.1f} min")
    result["command"] = started["command"]
    setup = result.get("setup", {})
    result["provenance"] = {
        **started,
        "model": (f"per-scene fits from {setup['init']}; the DDAD field fitted by this benchmark (in WORK: a later "
                  "invocation with the same settings reuses it)" if args.part == "real"
                  else f"`small` trained from scratch per variant ({setup.get('steps')} steps); per-scene fields "
                       "fitted in the run"),
        "note": "the machine is shared by several engineers: budgets are process CPU time; the load average is in "
                "`machine` (at the start) and `header` (at the end)",
        "data": (f"DDAD scene 02 (data/ddad_scene02): frames {setup.get('train_frames')} fitted, "
                 f"{setup.get('held_out')} held out" if args.part == "real"
                 else f"synthetic: train {setup.get('train')}, held out {setup.get('heldout')}")}
    if args.merge and path.is_file():  # read again: an invocation that ran meanwhile has written its arms
        previous = json.loads(path.read_text())
        ran = {REAL_ARMS[a] for a in result["setup"]["arms_this_invocation"]}
        merged = {**previous.get("per_scene_fit", {}),
                  **{k: v for k, v in result["per_scene_fit"].items() if k in ran}}
        result["per_scene_fit"] = {name: merged[name] for name in REAL_ARMS.values() if name in merged}
        for key in ("field", "field_cpu_minutes", "field_wall_minutes", "field_sky_mask", "field_settings"):
            if key not in result and key in previous:
                result[key] = previous[key]
    if previous is not None:  # each invocation's header and provenance, the arms it ran named in its setup
        result["invocations"] = [*previous.get("invocations", [{k: previous.get(k) for k in (
            "header", "command", "provenance", "setup")}]), {"header": result["header"], "command": result["command"],
                                                             "provenance": result["provenance"],
                                                             "setup": result["setup"]}]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(result["header"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
