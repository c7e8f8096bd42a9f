"""`distillnerf-eval`: the reference evaluation protocol on any nuScenes-format dataroot.

    distillnerf-eval --checkpoint CKPT --dataroot D --version V --json OUT [--split val] [--images DIR]

- recon PSNR / SSIM: the input cameras rendered from their own frame, at the model's image size, [0, 1];
- novel view (nvs_*): the NEXT keyframe's cameras rendered from the CURRENT frame's representation
  (samples without a next keyframe are skipped);
- depth vs LiDAR (min-pooled to the render resolution): AbsRel, SqRel, RMSE, RMSE-log, delta1-3 with GT in
  (1e-3, 80] m and predictions clipped to [1e-3, 80] (camera z-depth on both sides);
- depth vs dense GT where the dataroot has it (dense_abs_rel; the table also shows the within-50 m variant).

Each metric is computed per sample (all cameras together) and averaged over samples. The JSON holds exactly
psnr, ssim, nvs_psnr, nvs_ssim, abs_rel, sq_rel, rmse, rmse_log, delta1, delta2, delta3, num_samples and,
when dense GT exists, dense_abs_rel (a metric with no valid sample is null). `--details-json` writes every
number (dense metrics in full, within-50 m, timing). `--keyframes second` keeps only each scene's 2nd
keyframe (the paper's val protocol). CKPT: a .safetensors file, a run dir (RUN/model.safetensors, else its
newest complete checkpoint) or a checkpoint dir.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .cameras import CameraRig
from .checkpoint import load_checkpoint
from .datasets import collate_samples
from .metrics import DEPTH_METRICS, MeanAccumulator, depth_metrics, psnr, ssim
from .model import DistillNeRFModel

JSON_KEYS = ("psnr", "ssim", "nvs_psnr", "nvs_ssim", *DEPTH_METRICS)


def resolve_checkpoint(path: str | Path) -> Path:
    """A model .safetensors from a file, a run directory or a training checkpoint directory."""
    p = Path(path)
    if p.is_file():
        return p
    if (p / "model.safetensors").is_file():
        return p / "model.safetensors"
    from .train import list_checkpoints

    found = list_checkpoints(p)
    if found:
        return found[0] / "model.safetensors"
    raise FileNotFoundError(f"no checkpoint at {p} (expected a .safetensors file, a run dir or a checkpoint dir)")


def _select_second_keyframes(dataset: Any) -> list[int]:
    """Index of the 2nd keyframe of every scene (the 1st when a scene has a single keyframe)."""
    index = {tok: i for i, tok in enumerate(dataset.sample_tokens)}
    chosen = []
    for scene in dataset.nusc.scene:
        first = scene["first_sample_token"]
        if first not in index:
            continue
        nxt = dataset.nusc.get("sample", first)["next"]
        chosen.append(index[nxt] if nxt and nxt in index else index[first])
    return chosen


@torch.no_grad()
def evaluate(model: DistillNeRFModel, dataset: Any, indices: list[int] | None = None, images_dir: Path | None = None,
             num_images: int = 4, device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Run the protocol; returns {"metrics": exact JSON dict, "details": everything}."""
    from .vis import camera_grid, colorize_depth, save_png, upsample_to

    model.eval()
    dev = torch.device(device)
    indices = list(range(len(dataset))) if indices is None else indices
    acc = MeanAccumulator()
    has_dense = False
    times = []
    iterator = indices
    if progress:
        from tqdm import tqdm

        iterator = tqdm(indices, desc="eval", unit="sample", mininterval=1.0 if sys.stderr.isatty() else 30.0)
    for n, idx in enumerate(iterator):
        item = dataset[idx]
        batch = collate_samples([item])
        batch = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in batch.items()}
        images = batch["images"]
        hw = tuple(images.shape[-2:])
        start = time.perf_counter()
        scene = model.encode(images, batch["intrinsics"], batch["cam2ego"])
        views = model.render(scene, CameraRig(batch["intrinsics"], batch["cam2ego"], hw))
        times.append(time.perf_counter() - start)
        rgb = views.rgb.clamp(0, 1)
        acc.add("psnr", float(psnr(rgb[0], images[0]).mean()))
        acc.add("ssim", float(ssim(rgb[0], images[0]).mean()))
        acc.add_all(depth_metrics(views.depth[0], batch["lidar_depth"][0]))
        if "dense_depth" in batch:
            has_dense = True
            dense = batch["dense_depth"][0]
            acc.add_all(depth_metrics(views.depth[0], dense), prefix="dense_")
            acc.add_all(depth_metrics(views.depth[0], dense, max_depth=50.0), prefix="dense50_")
        nvs_rgb = None
        if bool(item.get("has_next", False)):
            nxt = model.render(scene, CameraRig(batch["next_intrinsics"], batch["next_cam2ego"], hw))
            nvs_rgb = nxt.rgb.clamp(0, 1)
            acc.add("nvs_psnr", float(psnr(nvs_rgb[0], batch["next_images"][0]).mean()))
            acc.add("nvs_ssim", float(ssim(nvs_rgb[0], batch["next_images"][0]).mean()))
        if images_dir is not None and n < num_images:
            rows = [images[0], rgb[0], upsample_to(colorize_depth(views.depth[0]), hw),
                    upsample_to(colorize_depth(batch["lidar_depth"][0]), hw)]
            if "dense_depth" in batch:
                rows.append(upsample_to(colorize_depth(batch["dense_depth"][0]), hw))
            if nvs_rgb is not None:
                rows += [batch["next_images"][0], nvs_rgb[0]]
            save_png(camera_grid(rows), images_dir / f"{n:03d}_{item['sample_token'][:8]}.png")
    means = acc.means()
    metrics: dict[str, Any] = {k: means.get(k) for k in JSON_KEYS}
    if has_dense:
        metrics["dense_abs_rel"] = means.get("dense_abs_rel")
    metrics["num_samples"] = len(indices)
    details = {**means, "num_samples": len(indices), "num_nvs_samples": acc.counts.get("nvs_psnr", 0),
               "seconds_per_frame_median": sorted(times)[len(times) // 2] if times else None,
               "image_rows": "input / rendered / rendered depth / LiDAR depth [/ dense GT depth] "
                             "[/ next-frame GT / novel view]"}
    return {"metrics": metrics, "details": details}


def format_table(metrics: dict[str, Any], details: dict[str, Any] | None = None) -> str:
    def f(v: Any) -> str:
        return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    d = details or {}
    rows = [
        ("recon PSNR / SSIM", f"{f(metrics['psnr'])} / {f(metrics['ssim'])}"),
        ("novel-view PSNR / SSIM", f"{f(metrics['nvs_psnr'])} / {f(metrics['nvs_ssim'])}"),
        ("LiDAR AbsRel / SqRel", f"{f(metrics['abs_rel'])} / {f(metrics['sq_rel'])}"),
        ("LiDAR RMSE / RMSE-log", f"{f(metrics['rmse'])} / {f(metrics['rmse_log'])}"),
        ("LiDAR d1 / d2 / d3", f"{f(metrics['delta1'])} / {f(metrics['delta2'])} / {f(metrics['delta3'])}"),
    ]
    if "dense_abs_rel" in metrics:
        dense = f"{f(metrics['dense_abs_rel'])} / {f(d.get('dense50_abs_rel'))}"
        rows.append(("dense AbsRel (<=80 m / <=50 m)", dense))
        rows.append(("dense RMSE / d1", f"{f(d.get('dense_rmse'))} / {f(d.get('dense_delta1'))}"))
    rows.append(("samples", f(metrics["num_samples"])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distillnerf-eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dataroot", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--json", required=True, type=Path, help="write the metrics JSON here")
    parser.add_argument("--split", default="all", help="nuScenes split (val, mini_val, ...) or all")
    parser.add_argument("--keyframes", choices=["all", "second"], default="all",
                        help="'second': only each scene's 2nd keyframe (the paper's val protocol)")
    parser.add_argument("--max-samples", type=int)
    parser.add_argument("--images", type=Path, help="save side-by-side PNGs of the first samples here")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--details-json", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ckpt = resolve_checkpoint(args.checkpoint)
    model = load_checkpoint(ckpt, args.device)
    from .train import DataConfig, make_dataset

    render_hw = model.renderer.render_hw(tuple(model.config.image_hw))
    dataset = make_dataset(args.dataroot, args.version, model.config, DataConfig(), render_hw, load_next=True,
                           split=args.split)
    indices = _select_second_keyframes(dataset) if args.keyframes == "second" else list(range(len(dataset)))
    if args.max_samples:
        indices = indices[: args.max_samples]
    result = evaluate(model, dataset, indices, args.images, args.num_images, args.device, not args.no_progress)
    print(f"checkpoint {ckpt}  dataroot {args.dataroot} ({args.version}, split {args.split}, "
          f"keyframes {args.keyframes})")
    print(format_table(result["metrics"], result["details"]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result["metrics"], indent=2) + "\n")
    if args.details_json:
        args.details_json.parent.mkdir(parents=True, exist_ok=True)
        args.details_json.write_text(json.dumps(result["details"], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
