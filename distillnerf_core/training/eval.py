"""The evaluation protocol (the reference's): reconstruction, novel view and depth metrics per sample.

`evaluate()` renders each sample's input cameras (recon), the next keyframe's cameras from the current
frame's representation (novel view) and scores depth against LiDAR and, where present, dense ground truth;
see cli/eval.py (`distillnerf-eval`) for the exact definitions and the JSON it writes. Pixels the dataset's
`masks` mark invalid (the ego car's own body) are left out of every image and depth metric.

`score_sample` gives one sample's metric values (in the order they are averaged) and `summarise` averages them
in the order of the indices, so a sharded evaluation (`evaluate_shard`: each rank scores its share and journals
the values, distillnerf_core/sharding.py) merges (`merge_parts`) to exactly the single-process numbers.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from distillnerf_core.checked_files import file_name
from distillnerf_core.data.datasets import collate_samples
from distillnerf_core.model.cameras import CameraRig
from distillnerf_core.model.distillnerf import DistillNeRFModel
from distillnerf_core.sharding import Journal, Shard, barrier, init_group, part_path, read_parts
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


class _Recorder:
    """The (name, value) pairs of one sample in the order the accumulator would get them."""

    def __init__(self) -> None:
        self.values: list[tuple[str, float | None]] = []

    def add(self, name: str, value: float | None) -> None:
        self.values.append((name, None if value is None or not math.isfinite(value) else float(value)))

    def add_all(self, values: dict[str, float] | None, prefix: str = "") -> None:
        for k, v in (values or {}).items():
            self.add(prefix + k, v)


@torch.no_grad()
def score_sample(model: DistillNeRFModel, item: dict[str, Any], dev: torch.device, image_path: Path | None = None
                 ) -> dict[str, Any]:
    """One sample's metrics: {"values": [(name, value)], "seconds": forward time, "dense": has dense GT}; with
    `image_path` the side-by-side PNG is written there."""
    from distillnerf_core.viz.images import camera_grid, colorize_depth, save_png, upsample_to

    acc = _Recorder()
    batch = collate_samples([item])
    batch = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in batch.items()}
    images = batch["images"]
    hw = tuple(images.shape[-2:])
    start = time.perf_counter()
    scene = model.encode(images, batch["intrinsics"], batch["cam2ego"])
    views = model.render(scene, CameraRig(batch["intrinsics"], batch["cam2ego"], hw))
    seconds = time.perf_counter() - start
    rgb = views.rgb.clamp(0, 1)
    valid = batch["masks"][0] > 0.5 if "masks" in batch else None  # (N, H, W) False on the ego body
    valid_r = None if valid is None else resize_mask(valid, tuple(views.depth.shape[-2:]))
    acc.add("psnr", float(psnr(rgb[0], images[0], valid).mean()))
    acc.add("ssim", float(ssim(rgb[0], images[0], mask=valid).mean()))
    acc.add_all(depth_metrics(views.depth[0], batch["lidar_depth"][0], mask=valid_r))
    if model.feature_pca is not None and views.features is not None and "teacher_features" in batch:
        acc.add_all(feature_metrics(model.feature_pca, views.features[0], batch["teacher_features"][0]))
    if "dense_depth" in batch:
        dense = batch["dense_depth"][0]
        acc.add_all(depth_metrics(views.depth[0], dense, mask=valid_r), prefix="dense_")
        acc.add_all(depth_metrics(views.depth[0], dense, max_depth=50.0, mask=valid_r), prefix="dense50_")
    nvs_rgb = None
    if bool(item.get("has_next", False)):
        nxt = model.render(scene, CameraRig(batch["next_intrinsics"], batch["next_cam2ego"], hw))
        nvs_rgb = nxt.rgb.clamp(0, 1)
        acc.add("nvs_psnr", float(psnr(nvs_rgb[0], batch["next_images"][0], valid).mean()))
        acc.add("nvs_ssim", float(ssim(nvs_rgb[0], batch["next_images"][0], mask=valid).mean()))
    if image_path is not None:
        rows = [images[0], rgb[0], upsample_to(colorize_depth(views.depth[0]), hw),
                upsample_to(colorize_depth(batch["lidar_depth"][0]), hw)]
        if "dense_depth" in batch:
            rows.append(upsample_to(colorize_depth(batch["dense_depth"][0]), hw))
        if nvs_rgb is not None:
            rows += [batch["next_images"][0], nvs_rgb[0]]
        save_png(camera_grid(rows), image_path)
    return {"values": acc.values, "seconds": seconds, "dense": "dense_depth" in batch}


def _image_path(images_dir: Path | None, n: int, num_images: int, item: dict[str, Any]) -> Path | None:
    if images_dir is None or n >= num_images:
        return None
    return images_dir / f"{n:03d}_{file_name(item['sample_token'])[:8]}.png"


def summarise(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """{"metrics": the exact JSON dict, "details": everything} of the samples' scores, averaged in list order."""
    acc = MeanAccumulator()
    for score in scores:
        for name, value in score["values"]:
            acc.add(name, value)
    times = [score["seconds"] for score in scores]
    means = acc.means()
    metrics: dict[str, Any] = {k: means.get(k) for k in JSON_KEYS}
    if any(score["dense"] for score in scores):
        metrics["dense_abs_rel"] = means.get("dense_abs_rel")
    if "feat_psnr" in means:
        metrics["feat_psnr"], metrics["feat_cosine"] = means["feat_psnr"], means["feat_cosine"]
    metrics["num_samples"] = len(scores)
    details = {**means, "num_samples": len(scores), "num_nvs_samples": acc.counts.get("nvs_psnr", 0),
               "seconds_per_frame_median": sorted(times)[len(times) // 2] if times else None,
               "image_rows": "input / rendered / rendered depth / LiDAR depth [/ dense GT depth] "
                             "[/ next-frame GT / novel view]"}
    return {"metrics": metrics, "details": details}


def _progress(indices: list[int], progress: bool, desc: str = "eval") -> Any:
    if not progress:
        return indices
    from tqdm import tqdm

    return tqdm(indices, desc=desc, unit="sample", mininterval=1.0 if sys.stderr.isatty() else 30.0)


@torch.no_grad()
def evaluate(model: DistillNeRFModel, dataset: Any, indices: list[int] | None = None, images_dir: Path | None = None,
             num_images: int = 4, device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Run the protocol; returns {"metrics": exact JSON dict, "details": everything}."""
    model.eval()
    dev = torch.device(device)
    indices = list(range(len(dataset))) if indices is None else indices
    scores = []
    for n, idx in enumerate(_progress(indices, progress)):
        item = dataset[idx]
        scores.append(score_sample(model, item, dev, _image_path(images_dir, n, num_images, item)))
    return summarise(scores)


def _part_scores(folder: Path, stem: str, header: dict[str, Any] | None) -> tuple[dict[str, Any] | None,
                                                                                  dict[int, dict[str, Any]]]:
    """(the parts' header, their scores by sample index); parts of another evaluation (another header than
    `header`, or than each other) are an error naming them."""
    seen, scores = header, {}
    for line in read_parts(folder, stem):
        if isinstance(line.get("header"), dict):
            if seen is not None and line["header"] != seen:
                raise ValueError(f"{folder}/{stem}.rank*.jsonl hold the parts of another evaluation ({line['header']}"
                                 f" vs {seen}); remove them or write to another --json")
            seen = line["header"]
        elif isinstance(line.get("index"), int) and isinstance(line.get("score"), dict):
            scores[line["index"]] = line["score"]
    return seen, scores


@torch.no_grad()
def evaluate_shard(model: DistillNeRFModel, dataset: Any, indices: list[int], folder: Path, stem: str,
                   header: dict[str, Any], shard: Shard, images_dir: Path | None = None, num_images: int = 4,
                   device: str = "cpu", progress: bool = True) -> dict[str, Any] | None:
    """This rank's share of the samples (sorted sample tokens modulo the world size; samples its parts already
    hold are skipped), each sample's score appended to FOLDER/STEM.rank<k>.jsonl. With a process group the
    ranks then meet and rank 0 returns the merged result (`merge_parts`); otherwise (and on other ranks) None."""
    model.eval()
    dev = torch.device(device)
    header = {**header, "indices": list(indices)}
    _, done = _part_scores(folder, stem, header)
    mine = shard.owns([dataset.sample_tokens[i] for i in indices])
    todo = [(n, i) for n, i in enumerate(indices) if dataset.sample_tokens[i] in mine and i not in done]
    journal = Journal(part_path(folder, stem, shard.rank))
    journal.append({"header": header})
    for n, idx in _progress(todo, progress, f"eval rank {shard.rank}"):
        item = dataset[idx]
        journal.append({"index": idx, "score": score_sample(model, item, dev,
                                                            _image_path(images_dir, n, num_images, item))})
    if init_group(shard):
        barrier()
        result = merge_parts(folder, stem) if shard.rank == 0 else None
        barrier()
        return result
    return None


def merge_parts(folder: Path, stem: str) -> dict[str, Any]:
    """The evaluation result of the ranks' parts: every sample of the header's indices scored, averaged in their
    order (= the single-process result). A sample no part holds is a ValueError (rerun the job: it resumes)."""
    header, scores = _part_scores(folder, stem, None)
    if header is None:
        raise FileNotFoundError(f"no rank parts ({stem}.rank<k>.jsonl with a header) to merge in {folder}")
    missing = [i for i in header["indices"] if i not in scores]
    if missing:
        raise ValueError(f"{folder}/{stem}.rank*.jsonl: {len(missing)} of {len(header['indices'])} samples not "
                         f"scored yet (first index {missing[0]}); rerun the job, it resumes")
    return summarise([scores[i] for i in header["indices"]])


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
