"""The evaluation protocol (the reference's): reconstruction, novel view and depth metrics per sample.

`evaluate()` renders each sample's input cameras (recon), the next keyframe's cameras from the current
frame's representation (novel view) and scores depth against LiDAR and, where present, dense ground truth;
see cli/eval.py (`distillnerf-eval`) for the exact definitions and the JSON it writes. Pixels the dataset's
`masks` mark invalid (the ego car's own body) are left out of every image and depth metric.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from distillnerf_core.checked_files import file_name
from distillnerf_core.data.datasets import collate_samples
from distillnerf_core.model.cameras import CameraRig
from distillnerf_core.model.distillnerf import DistillNeRFModel
from distillnerf_core.training.features import feature_metrics
from distillnerf_core.training.metrics import DEPTH_METRICS, MeanAccumulator, depth_metrics, psnr, resize_mask, ssim

JSON_KEYS = ("psnr", "ssim", "nvs_psnr", "nvs_ssim", *DEPTH_METRICS)


def select_second_keyframes(dataset: Any) -> list[int]:
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
    from distillnerf_core.viz.images import camera_grid, colorize_depth, save_png, upsample_to

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
        valid = batch["masks"][0] > 0.5 if "masks" in batch else None  # (N, H, W) False on the ego body
        valid_r = None if valid is None else resize_mask(valid, tuple(views.depth.shape[-2:]))
        acc.add("psnr", float(psnr(rgb[0], images[0], valid).mean()))
        acc.add("ssim", float(ssim(rgb[0], images[0], mask=valid).mean()))
        acc.add_all(depth_metrics(views.depth[0], batch["lidar_depth"][0], mask=valid_r))
        if model.feature_pca is not None and views.features is not None and "teacher_features" in batch:
            acc.add_all(feature_metrics(model.feature_pca, views.features[0], batch["teacher_features"][0]))
        if "dense_depth" in batch:
            has_dense = True
            dense = batch["dense_depth"][0]
            acc.add_all(depth_metrics(views.depth[0], dense, mask=valid_r), prefix="dense_")
            acc.add_all(depth_metrics(views.depth[0], dense, max_depth=50.0, mask=valid_r), prefix="dense50_")
        nvs_rgb = None
        if bool(item.get("has_next", False)):
            nxt = model.render(scene, CameraRig(batch["next_intrinsics"], batch["next_cam2ego"], hw))
            nvs_rgb = nxt.rgb.clamp(0, 1)
            acc.add("nvs_psnr", float(psnr(nvs_rgb[0], batch["next_images"][0], valid).mean()))
            acc.add("nvs_ssim", float(ssim(nvs_rgb[0], batch["next_images"][0], mask=valid).mean()))
        if images_dir is not None and n < num_images:
            rows = [images[0], rgb[0], upsample_to(colorize_depth(views.depth[0]), hw),
                    upsample_to(colorize_depth(batch["lidar_depth"][0]), hw)]
            if "dense_depth" in batch:
                rows.append(upsample_to(colorize_depth(batch["dense_depth"][0]), hw))
            if nvs_rgb is not None:
                rows += [batch["next_images"][0], nvs_rgb[0]]
            save_png(camera_grid(rows), images_dir / f"{n:03d}_{file_name(item['sample_token'])[:8]}.png")
    means = acc.means()
    metrics: dict[str, Any] = {k: means.get(k) for k in JSON_KEYS}
    if has_dense:
        metrics["dense_abs_rel"] = means.get("dense_abs_rel")
    if "feat_psnr" in means:
        metrics["feat_psnr"], metrics["feat_cosine"] = means["feat_psnr"], means["feat_cosine"]
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
    if "feat_psnr" in metrics:
        rows.append(("feature PSNR / cosine", f"{f(metrics['feat_psnr'])} / {f(metrics['feat_cosine'])}"))
    rows.append(("samples", f(metrics["num_samples"])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
