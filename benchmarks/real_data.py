#!/usr/bin/env python3
"""Real-data benchmark: the nuScenes keyframe and the three DDAD frames (data/ddad_scene02).

    python benchmarks/real_data.py [--fit-cpu-minutes 10] [--threads 2] [--json benchmarks/results/real_data.json]

(a) bundled: the bundled model (models/default, trained on synthetic scenes only) as is: recon PSNR / SSIM
    (each frame's own cameras) and LiDAR depth AbsRel / RMSE / delta1 per frame and per dataset;
(b) novel view: encode DDAD frame t, render the cameras of frame t+1 (0.1 s, ~1.3 m later), score against
    frame t+1's real images (PSNR / SSIM) and LiDAR; beside it the "previous frame" baseline (frame t's
    image taken as the prediction of frame t+1's);
(c) per-scene fit: the bundled model optimised on DDAD frames 0 and 2 for a budget of process CPU time
    (`--fit-cpu-minutes`, all threads together: on a shared machine the wall time is longer, the work the
    same), then scored on frame 1 (held out) and on 0 and 2.
Every DDAD score leaves out the ego-body masks (data/ego_masks.py); the nuScenes keyframe has none.
`scale` = median(LiDAR depth / predicted depth) over valid pixels: how far off the metric depth scale is;
`too_near` / `too_far`: fractions of LiDAR pixels predicted nearer than gt / 1.25 / farther than 1.25 gt;
`abs_rel_near` / `abs_rel_far`: AbsRel where the LiDAR depth is <= 20 m / > 20 m; `psnr_cameras`: per camera;
`upper_far_lidar` / `upper_far_pred`: median LiDAR / predicted depth of the upper-half pixels whose LiDAR depth
is > 15 m (mostly trees); `top_empty_pred` (+ `_p10`, `_p90`): predicted depth in the top sixth of the rows
where no LiDAR return lands (mostly sky), which no score above sees.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from distillnerf_core.data.datasets import NuScenesDataset, collate_samples  # noqa: E402
from distillnerf_core.data.dgp import DDAD_CAMERAS, VERSION, write_dataroot  # noqa: E402
from distillnerf_core.data.nuscenes_sample import build_dataroot, find_version  # noqa: E402
from distillnerf_core.model.cameras import CameraRig  # noqa: E402
from distillnerf_core.provenance import command_line, portable, provenance  # noqa: E402
from distillnerf_core.training.checkpoints import load_checkpoint  # noqa: E402
from distillnerf_core.training.losses import DistillNeRFLoss, LossConfig  # noqa: E402
from distillnerf_core.training.metrics import depth_metrics, psnr, resize_mask, ssim  # noqa: E402
from distillnerf_core.training.trainer import TrainStep  # noqa: E402
from distillnerf_core.viz.images import camera_grid, colorize_depth, save_png, upsample_to  # noqa: E402

KEYS = ("psnr", "ssim", "abs_rel", "rmse", "delta1", "scale", "too_near", "too_far", "abs_rel_near", "abs_rel_far",
        "upper_far_lidar", "upper_far_pred", "top_empty_pred", "top_empty_pred_p10", "top_empty_pred_p90")
# Display order of the picture rows (left to right as seen from the car): FL, F, FR, BL, B, BR.
DDAD_DISPLAY = ("CAMERA_05", "CAMERA_01", "CAMERA_06", "CAMERA_07", "CAMERA_09", "CAMERA_08")


def score(rgb: torch.Tensor, images: torch.Tensor, depth: torch.Tensor, lidar: torch.Tensor,
          masks: torch.Tensor) -> dict[str, float]:
    """Image and LiDAR-depth scores of one frame's N cameras, ego-body pixels (masks == 0) left out."""
    valid = masks > 0.5
    valid_r = resize_mask(valid, tuple(depth.shape[-2:]))
    d = depth_metrics(depth, lidar, mask=valid_r) or {}
    near = depth_metrics(depth, lidar, max_depth=20.0, mask=valid_r) or {}
    far = depth_metrics(depth, lidar, mask=valid_r & (lidar > 20.0)) or {}
    ok = valid_r & (lidar > 1e-3) & (lidar <= 80.0)
    pred, gt = depth[ok].clamp(1e-3, 80.0), lidar[ok]
    per_camera = psnr(rgb.clamp(0, 1), images, valid)
    return {"psnr": float(per_camera.mean()), "ssim": float(ssim(rgb.clamp(0, 1), images, mask=valid).mean()),
            "abs_rel": d.get("abs_rel"), "rmse": d.get("rmse"), "delta1": d.get("delta1"),
            "scale": float((gt / pred).median()) if len(gt) else None,
            "too_near": float((pred < gt / 1.25).double().mean()) if len(gt) else None,
            "too_far": float((pred > gt * 1.25).double().mean()) if len(gt) else None,
            "abs_rel_near": near.get("abs_rel"), "abs_rel_far": far.get("abs_rel"),
            "psnr_cameras": [round(float(v), 2) for v in per_camera], **region_depths(depth, lidar, valid_r)}


def region_depths(depth: torch.Tensor, lidar: torch.Tensor, valid_r: torch.Tensor) -> dict[str, float | None]:
    """Depth in two image regions the averages hide: far upper half (trees), top rows without LiDAR (sky)."""
    h = depth.shape[-2]
    rows = torch.arange(h).view(1, h, 1)
    upper_far = valid_r & (rows < h // 2) & (lidar > 15.0)
    top_empty = valid_r & (rows < h // 6) & (lidar <= 0)
    med = lambda x: float(x.median()) if x.numel() else None  # noqa: E731
    q = lambda x, p: float(torch.quantile(x.float(), p)) if x.numel() else None  # noqa: E731
    return {"upper_far_lidar": med(lidar[upper_far]), "upper_far_pred": med(depth[upper_far]),
            "top_empty_pred": med(depth[top_empty]), "top_empty_pred_p10": q(depth[top_empty], 0.1),
            "top_empty_pred_p90": q(depth[top_empty], 0.9)}


def mean(rows: list[dict]) -> dict[str, float]:
    return {k: sum(r[k] for r in rows) / len(rows) for k in KEYS if all(r.get(k) is not None for r in rows)}


@torch.no_grad()
def recon(model, item: dict) -> tuple[dict, object]:
    b = collate_samples([item])
    hw = tuple(b["images"].shape[-2:])
    scene = model.encode(b["images"], b["intrinsics"], b["cam2ego"])
    views = model.render(scene, CameraRig(b["intrinsics"], b["cam2ego"], hw))
    return score(views.rgb[0], b["images"][0], views.depth[0], b["lidar_depth"][0], b["masks"][0]), (scene, views)


@torch.no_grad()
def novel_view(model, item_t: dict, item_next: dict) -> tuple[dict, dict, object]:
    """Encode frame t, render frame t+1's cameras (their poses in t's reference frame); + previous-frame baseline."""
    b = collate_samples([item_t])
    hw = tuple(b["images"].shape[-2:])
    scene = model.encode(b["images"], b["intrinsics"], b["cam2ego"])
    views = model.render(scene, CameraRig(b["next_intrinsics"], b["next_cam2ego"], hw))
    nxt = item_next
    s = score(views.rgb[0], nxt["images"], views.depth[0], nxt["lidar_depth"], nxt["masks"])
    valid = nxt["masks"] > 0.5
    copy = {"psnr": float(psnr(item_t["images"], nxt["images"], valid).mean()),
            "ssim": float(ssim(item_t["images"], nxt["images"], mask=valid).mean())}
    return s, copy, views


def picture(path: Path, item: dict, views, order: list[int]) -> None:
    """Rows: input (ego-body mask shaded magenta), rendered RGB, rendered depth, LiDAR depth."""
    images = item["images"][order]
    body = (item["masks"][order] < 0.5).unsqueeze(1)
    shaded = torch.where(body, 0.55 * images + 0.45 * torch.tensor([1.0, 0.0, 1.0]).view(1, 3, 1, 1), images)
    hw = tuple(images.shape[-2:])
    rows = [shaded, views.rgb[0][order].clamp(0, 1), upsample_to(colorize_depth(views.depth[0][order]), hw),
            upsample_to(colorize_depth(item["lidar_depth"][order]), hw)]
    save_png(camera_grid(rows), path)


def fit(model, batches: list[dict], cpu_minutes: float, lr: float, warmup: int, max_steps: int,
        loss_cfg: LossConfig | None = None) -> dict:
    """Optimise on `batches` in turn (the real_keyframe recipe: Adam betas (0, 0.99), warmup, cosine over the
    budget) until `cpu_minutes` of this process's CPU time (all threads) are spent or `max_steps` are taken.
    TrainStep renders the field targets and virtual cameras when the batches carry them (nerf_distill.py)."""
    step_module = TrainStep(model, DistillNeRFLoss(loss_cfg or LossConfig(rgb_ssim=0.2)))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, betas=(0.0, 0.99))
    budget, t0, c0, step, log = 60.0 * cpu_minutes, time.perf_counter(), time.process_time(), 0, []
    model.train()
    while step < max_steps and time.process_time() - c0 < budget:
        frac = min(1.0, (time.process_time() - c0) / budget)
        for g in opt.param_groups:
            g["lr"] = min(1.0, (step + 1) / warmup) * lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        total, terms, _ = step_module(batches[step % len(batches)])
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 35.0)
        opt.step()
        step += 1
        if step % 50 == 0 or step == 1:
            loss = float(total.detach())
            log.append({"step": step, "wall_s": round(time.perf_counter() - t0, 1),
                        "cpu_s": round(time.process_time() - c0, 1), "loss": loss})
            print(f"  fit step {step:4d}  wall {time.perf_counter() - t0:5.0f} s  cpu {time.process_time() - c0:5.0f} s"
                  f"  loss {loss:.4f}", flush=True)
    model.eval()
    return {"steps": step, "wall_minutes": (time.perf_counter() - t0) / 60.0,
            "cpu_minutes": (time.process_time() - c0) / 60.0, "log": log}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=REPO / "models" / "default" / "model.safetensors")
    p.add_argument("--work", type=Path, default=Path("/tmp/distillnerf_bench_real_data"))
    p.add_argument("--fit-cpu-minutes", type=float, default=10.0, help="CPU-time budget of the per-scene fit")
    p.add_argument("--fit-max-steps", type=int, default=100000)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "real_data.json")
    p.add_argument("--pictures", type=Path, default=None, help="folder for the PNGs (default WORK/pictures)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    pictures = args.pictures or args.work / "pictures"
    wall0 = time.perf_counter()
    started = provenance(command_line("python benchmarks/real_data.py", argv),
                         model=portable(args.model),
                         data="data/nuscenes_sample (the nuScenes keyframe) and data/ddad_scene02 (three DDAD frames)")

    model = load_checkpoint(args.model).eval()
    image_hw = tuple(model.config.image_hw)
    render_hw = model.renderer.render_hw(image_hw)
    nusc_src = REPO / "data" / "nuscenes_sample"
    nusc_version = find_version(nusc_src)
    nusc_root = build_dataroot(nusc_src, args.work / "nuscenes_root", link=True, version=nusc_version)
    ddad_root = write_dataroot(REPO / "data" / "ddad_scene02", args.work / "ddad_root", overwrite=True)
    masked = json.loads((ddad_root / "masks" / "meta.json").read_text())["masked_fraction"]
    nusc = NuScenesDataset(nusc_root, nusc_version, image_size=image_hw, render_size=render_hw, load_next=False)
    ddad = NuScenesDataset(ddad_root, VERSION, image_size=image_hw, render_size=render_hw, cameras=DDAD_CAMERAS,
                           load_next=True)
    ddad_items = [ddad[i] for i in range(len(ddad))]
    order = [DDAD_CAMERAS.index(c) for c in DDAD_DISPLAY]

    # (a) the bundled model as is
    bundled: dict[str, dict] = {}
    rows = []
    for i in range(len(nusc)):
        s, _ = recon(model, nusc[i])
        rows.append({"frame": i, "sample_token": nusc.sample_tokens[i], **s})
    bundled["nuscenes_keyframe"] = {"frames": rows, "mean": mean(rows)}
    rows = []
    for i, item in enumerate(ddad_items):
        s, (_, views) = recon(model, item)
        rows.append({"frame": i, "sample_token": ddad.sample_tokens[i], **s})
        if i == 0:
            picture(pictures / "ddad_frame0_bundled.png", item, views, order)
    bundled["ddad"] = {"frames": rows, "mean": mean(rows)}
    print("bundled:", json.dumps({k: v["mean"] for k, v in bundled.items()}, indent=1), flush=True)

    # (b) novel view on DDAD: t -> t+1
    def nvs_rows(tag: str) -> list[dict]:
        out = []
        for t in range(len(ddad_items) - 1):
            s, copy, views = novel_view(model, ddad_items[t], ddad_items[t + 1])
            out.append({"from_frame": t, "to_frame": t + 1, **s, "previous_frame_psnr": copy["psnr"],
                        "previous_frame_ssim": copy["ssim"]})
            if t == 0:
                picture(pictures / f"ddad_nvs_0to1_{tag}.png", ddad_items[1], views, order)
        return out

    rows = nvs_rows("bundled")
    novel = {"bundled": {"pairs": rows, "mean": {**mean(rows), "previous_frame_psnr": sum(
        r["previous_frame_psnr"] for r in rows) / len(rows), "previous_frame_ssim": sum(
        r["previous_frame_ssim"] for r in rows) / len(rows)}}}

    # (c) per-scene fit on DDAD frames 0 and 2; frame 1 held out
    print(f"per-scene fit on DDAD frames 0, 2 for {args.fit_cpu_minutes} CPU min on {args.threads} threads ...",
          flush=True)
    info = fit(model, [collate_samples([ddad_items[i]]) for i in (0, 2)], args.fit_cpu_minutes, args.lr,
               args.warmup, args.fit_max_steps)
    rows = []
    for i, item in enumerate(ddad_items):
        s, (_, views) = recon(model, item)
        rows.append({"frame": i, "role": "held out" if i == 1 else "training", **s})
        if i == 1:
            picture(pictures / "ddad_frame1_heldout_fit.png", item, views, order)
    fitted_nvs = nvs_rows("fit")
    per_scene = {"train_frames": [0, 2], "held_out_frames": [1], "frames": rows,
                 "train_mean": mean([r for r in rows if r["frame"] != 1]), "held_out": rows[1],
                 "novel_view": {"pairs": fitted_nvs, "mean": mean(fitted_nvs)},
                 "budget": {"cpu_minutes": args.fit_cpu_minutes, "threads": args.threads, "lr": args.lr,
                            "warmup_steps": args.warmup, "init": str(args.model.relative_to(REPO))
                            if args.model.is_relative_to(REPO) else str(args.model),
                            "losses": "RGB L1 + 0.2 SSIM, LiDAR (coarse + rendered), entropy, opacity; masks applied"},
                 **info}

    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    header = (f"{datetime.date.today()} {os.cpu_count()} CPU cores (load average {load} at the end),"
              f" {args.threads} threads, "
              f"torch {torch.__version__}, commit {commit}; model {args.model.name} ({model.config.image_hw[1]}x"
              f"{model.config.image_hw[0]} input, render {render_hw[1]}x{render_hw[0]}); "
              f"total {time.perf_counter() - wall0:.0f} s")
    result = {"header": header, "command": started["command"], "provenance": started,
              "ddad_masked_fraction": masked,
              "camera_order": {"nuscenes": list(nusc.cameras), "ddad": list(DDAD_CAMERAS)}, "bundled": bundled,
              "novel_view": novel, "per_scene_fit": per_scene}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(header)
    print(json.dumps({"bundled": {k: v["mean"] for k, v in bundled.items()}, "novel_view": novel["bundled"]["mean"],
                      "fit_train": per_scene["train_mean"], "fit_held_out": per_scene["held_out"],
                      "fit_steps": per_scene["steps"]}, indent=1))
    print(f"wrote {args.json}; pictures in {pictures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
