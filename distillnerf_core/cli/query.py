"""`distillnerf-query`: text queries against a distilled model on one sample: per-camera and bird's-eye heatmaps.

    distillnerf-query --checkpoint CKPT --dataroot D --version V --sample TOKEN --text car [--text building] \\
        --out query.png [--teacher-weights CLIP.safetensors] [--temperature 0.01] [--background-cosine 0.5]

For each text, one row of the PNG: the input cameras with the per-pixel probability of that query (the
rendered feature image scored against the text, softmax across the queries and the background option)
overlaid in red, and a bird's-eye heatmap (ego at the centre, x forward = up, y left = left; the maximum
over height of the occupied voxels' probability on the 0.5 m occupancy grid). The model must have been
distilled from a teacher with text (CLIP or the oracle); an oracle-distilled model knows only its class
names and rejects other texts with the list of those it knows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from distillnerf_core.cli import configure_logging
from distillnerf_core.data.datasets import DataConfig, collate_samples, make_dataset
from distillnerf_core.model.cameras import CameraRig
from distillnerf_core.model.occupancy import OccupancyConfig, query_occupancy
from distillnerf_core.teachers.query import QueryConfig, SemanticQuerier
from distillnerf_core.training.checkpoints import load_checkpoint, resolve_checkpoint


def overlay(image: torch.Tensor, prob: torch.Tensor) -> np.ndarray:
    """(3, H, W) image in [0, 1] and (h, w) probability -> (H, W, 3) uint8 with red where prob is high."""
    p = F.interpolate(prob[None, None].float(), size=image.shape[-2:], mode="bilinear", align_corners=False)[0]
    red = torch.tensor([1.0, 0.1, 0.1])[:, None, None]
    out = image * (1 - 0.7 * p) + red * 0.7 * p
    return (out.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def bev_heatmap(index: torch.Tensor, prob: torch.Tensor, shape: tuple[int, int, int], size: int) -> np.ndarray:
    """(size, size, 3) uint8: max over z of voxel probabilities, x forward = up, y left = left, ego centred."""
    grid = torch.zeros(shape[0], shape[1])
    if index.shape[0]:
        flat = index[:, 0] * shape[1] + index[:, 1]
        grid.view(-1).scatter_reduce_(0, flat, prob.float(), "amax")
    occupied = torch.zeros(shape[0], shape[1], dtype=torch.bool)
    if index.shape[0]:
        occupied.view(-1)[index[:, 0] * shape[1] + index[:, 1]] = True
    img = torch.where(occupied[..., None], torch.tensor([0.35, 0.35, 0.35]), torch.tensor([0.0, 0.0, 0.0]))
    img = img * (1 - grid[..., None]) + torch.tensor([1.0, 0.15, 0.1]) * grid[..., None]
    img = img.flip(0).flip(1)  # rows: +x at the top; columns: +y (left) on the left
    arr = (img.numpy() * 255 + 0.5).astype(np.uint8)
    pil = Image.fromarray(arr).resize((size, size), Image.NEAREST)
    draw = ImageDraw.Draw(pil)
    c = size // 2
    draw.rectangle([c - 2, c - 4, c + 2, c + 4], fill=(0, 200, 0))
    return np.asarray(pil)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = argparse.ArgumentParser(prog="distillnerf-query", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dataroot", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--sample", required=True, help="sample token (keyframe)")
    parser.add_argument("--text", action="append", required=True, help="a text query (repeat for several)")
    parser.add_argument("--out", required=True, type=Path, help="PNG to write")
    parser.add_argument("--teacher-weights", help="CLIP weights for a CLIP-distilled model (default: the path "
                        "recorded at distillation; its sha256 must match)")
    parser.add_argument("--temperature", type=float, default=QueryConfig.temperature,
                        help="softmax temperature (default: the model's calibrated one, see distillnerf-calibrate; "
                        "else 0.01 over cosines)")
    parser.add_argument("--background-cosine", type=float, help="cosine of the background option (default: the "
                        "teacher's, oracle 0.5, CLIP 0.2)")
    parser.add_argument("--no-background", action="store_true", help="no background option")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_checkpoint(resolve_checkpoint(args.checkpoint), args.device).eval()
    try:
        if model.feature_pca is None:
            raise ValueError("this model was not distilled from a foundation model: it cannot answer text queries")
        querier = SemanticQuerier(model.feature_pca, model.config.feature_head.teacher,
                                  config=QueryConfig(args.temperature, not args.no_background, args.background_cosine),
                                  weights=args.teacher_weights)
        texts = querier.check(args.text)
    except (ValueError, FileNotFoundError) as err:
        print(f"distillnerf-query: {err}", file=sys.stderr)
        return 2
    render_hw = model.renderer.render_hw(tuple(model.config.image_hw))
    dataset = make_dataset(args.dataroot, args.version, model.config.image_hw, DataConfig(), render_hw,
                           load_next=False)
    if args.sample not in dataset.sample_tokens:
        print(f"distillnerf-query: sample {args.sample} not in {args.dataroot} ({args.version}); e.g. "
              f"{dataset.sample_tokens[:3]}", file=sys.stderr)
        return 2
    batch = collate_samples([dataset[dataset.sample_tokens.index(args.sample)]])
    dev = torch.device(args.device)
    images = batch["images"].to(dev)
    hw = tuple(images.shape[-2:])
    occ_cfg = OccupancyConfig()
    with torch.no_grad():
        scene = model.encode(images, batch["intrinsics"].to(dev), batch["cam2ego"].to(dev))
        views = model.render(scene, CameraRig(batch["intrinsics"].to(dev), batch["cam2ego"].to(dev), hw), rgb=False)
        pixel_probs = querier.probabilities(views.features[0], texts, channel_dim=1).cpu()  # (N, h, w, Q[+1])
        occ = query_occupancy(model, scene, 0, occ_cfg)
        voxel = querier.query(occ.features.cpu(), texts)
    rows = []
    for q, text in enumerate(texts):
        tiles = [overlay(images[0, n].cpu(), pixel_probs[n, ..., q]) for n in range(images.shape[1])]
        tiles.append(bev_heatmap(occ.occupied_index.cpu(), voxel.probabilities[:, q], tuple(occ.density_grid.shape),
                                 hw[0]))
        row = Image.fromarray(np.concatenate([np.pad(t, ((0, 2), (0, 2), (0, 0)), constant_values=255)
                                              for t in tiles], axis=1))
        ImageDraw.Draw(row).text((4, 4), f"{text}: max voxel score {float(voxel.max_scores[q]):.2f}, "
                                 f"{int((voxel.label == q).sum())} voxels labelled", fill=(255, 255, 0))
        rows.append(np.asarray(row))
        print(f"{text!r}: max voxel score {float(voxel.max_scores[q]):.3f}, {int((voxel.label == q).sum())} of "
              f"{voxel.label.shape[0]} occupied voxels labelled, pixel share "
              f"{float((pixel_probs.argmax(-1) == q).float().mean()):.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.out)
    print(f"teacher {model.config.feature_head.teacher.get('kind')}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
