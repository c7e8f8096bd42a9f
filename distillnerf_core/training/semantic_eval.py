"""Zero-shot semantic occupancy against ground-truth semantic voxels (the synthetic world's `gt/`).

Per sample: the model's density on the ground-truth voxel grid (same extent, size and ego frame, density >
`threshold` = occupied), each occupied voxel labelled by text queries of the evaluated class names through
the stored PCA (softmax over the classes, no background option: the reference's protocol), compared with
the semantic voxels (0 = free). Like Occ3D, only voxels the cameras can see count: a voxel is visible when
its centre projects into some camera no further than the ground-truth depth at that pixel plus one voxel
(sky pixels see through). Reported, summed over samples:

    per-class IoU and mIoU            |pred = c and gt = c| / |pred = c or gt = c|
    best single-class baseline        every occupied voxel labelled with one class c; the best c's mIoU
    geometric IoU                     occupied vs free, |pred occupied and gt occupied| / |either|
    label accuracy on occupied        where both say occupied (by an evaluated class): share of correct labels,
                                      i.e. the semantics alone, without the geometry's errors
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from distillnerf_core.data.datasets import collate_samples
from distillnerf_core.model.distillnerf import DistillNeRFModel
from distillnerf_core.model.occupancy import OccupancyConfig, grid_centers, query_occupancy
from distillnerf_core.teachers.query import QueryConfig, SemanticQuerier

# Voxel classes of the synthetic world (lane markings are labelled road in voxels, sky is never a voxel).
SYNTHETIC_VOXEL_CLASSES = ("road", "sidewalk", "terrain", "building", "car", "pedestrian", "vegetation", "pole")


def visible_voxels(centers: torch.Tensor, intrinsics: torch.Tensor, cam2ego: torch.Tensor, image_hw: tuple[int, int],
                   depth: torch.Tensor, margin: float) -> torch.Tensor:
    """(P,) bool: centre (P, 3) seen by some camera in front of the GT surface (+ margin); depth (N, h, w)."""
    h, w = depth.shape[-2:]
    scale = torch.tensor([w / image_hw[1], h / image_hw[0], 1.0], dtype=intrinsics.dtype)
    seen = torch.zeros(centers.shape[0], dtype=torch.bool)
    for K, E, d in zip(intrinsics, cam2ego, depth, strict=True):
        cam_from_ego = torch.linalg.inv(E)
        pc = centers @ cam_from_ego[:3, :3].T + cam_from_ego[:3, 3]
        z = pc[:, 2]
        uvw = pc @ (K * scale[:, None]).T
        u, v = uvw[:, 0] / z.clamp(min=1e-6), uvw[:, 1] / z.clamp(min=1e-6)
        inside = (z > 0.1) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        surface = d[v.long().clamp(0, h - 1), u.long().clamp(0, w - 1)]
        seen |= inside & ((surface <= 0) | (z <= surface + margin))
    return seen


@torch.no_grad()
def semantic_occupancy_eval(model: DistillNeRFModel, dataset: Any, indices: list[int] | None = None,
                            classes: tuple[str, ...] = SYNTHETIC_VOXEL_CLASSES, threshold: float = 0.1,
                            device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Per-class IoU, mIoU, best single-class baseline and geometric IoU (camera-visible voxels and all voxels)."""
    if model.feature_pca is None:
        raise ValueError("the model was not distilled from a teacher (no PCA): no semantic occupancy")
    if dataset.gt_meta is None:
        raise ValueError(f"{dataset.dataroot} has no semantic voxel ground truth (gt/meta.json)")
    names = list(dataset.gt_meta["classes"])
    class_ids = [names.index(c) for c in classes]
    spec = dataset.gt_meta["voxels"]
    lo, hi = spec["pc_range"][:3], spec["pc_range"][3:]
    occ_cfg = OccupancyConfig((lo[0], hi[0]), (lo[1], hi[1]), (lo[2], hi[2]), float(spec["voxel_size"]), threshold)
    teacher = model.config.feature_head.teacher
    querier = SemanticQuerier(model.feature_pca, teacher, config=QueryConfig(background=False))
    querier.check(list(classes))
    model.eval()
    dev = torch.device(device)
    n = len(classes)
    sums = {m: {k: torch.zeros(n, dtype=torch.long) for k in ("inter", "union", "single_inter", "single_union")}
            for m in ("visible", "all")}
    geo = {m: [0, 0] for m in ("visible", "all")}
    agree = {m: [0, 0] for m in ("visible", "all")}  # labels right where prediction and GT are both occupied
    indices = list(range(len(dataset))) if indices is None else indices
    iterator = indices
    if progress:
        from tqdm import tqdm

        iterator = tqdm(indices, desc="semantic occupancy", unit="sample", mininterval=1.0 if sys.stderr.isatty()
                        else 30.0)
    for idx in iterator:
        batch = collate_samples([dataset[idx]])
        images = batch["images"].to(dev)
        scene = model.encode(images, batch["intrinsics"].to(dev), batch["cam2ego"].to(dev))
        occ = query_occupancy(model, scene, 0, occ_cfg)
        gt = batch["voxel_semantics"][0]
        if tuple(occ.density_grid.shape) != tuple(gt.shape):
            raise ValueError(f"occupancy grid {tuple(occ.density_grid.shape)} != ground truth {tuple(gt.shape)}")
        pred = torch.zeros_like(gt)
        if occ.features.shape[0]:
            labels = querier.query(occ.features.cpu(), list(classes)).label
            ix = occ.occupied_index.cpu()
            pred[ix[:, 0], ix[:, 1], ix[:, 2]] = torch.tensor(class_ids)[labels]
        centers = grid_centers(occ_cfg.x_range, occ_cfg.y_range, occ_cfg.z_range, occ_cfg.voxel_size).reshape(-1, 3)
        visible = visible_voxels(centers, batch["intrinsics"][0], batch["cam2ego"][0], tuple(images.shape[-2:]),
                                 batch["dense_depth"][0], occ_cfg.voxel_size).view(gt.shape)
        for mode, mask in (("visible", visible), ("all", torch.ones_like(visible))):
            p, g = pred[mask], gt[mask]
            occupied = p > 0
            for j, c in enumerate(class_ids):
                pc, gc = p == c, g == c
                sums[mode]["inter"][j] += int((pc & gc).sum())
                sums[mode]["union"][j] += int((pc | gc).sum())
                sums[mode]["single_inter"][j] += int((occupied & gc).sum())
                sums[mode]["single_union"][j] += int((occupied | gc).sum())
            geo[mode][0] += int((occupied & (g > 0)).sum())
            geo[mode][1] += int((occupied | (g > 0)).sum())
            both = occupied & torch.isin(g, torch.tensor(class_ids))
            agree[mode][0] += int((p[both] == g[both]).sum())
            agree[mode][1] += int(both.sum())
    result: dict[str, Any] = {"classes": list(classes), "threshold": threshold, "samples": len(indices),
                              "voxel_size": occ_cfg.voxel_size, "teacher": teacher.get("kind")}
    for mode in ("visible", "all"):
        s = sums[mode]
        present = s["union"] > 0
        iou = s["inter"].double() / s["union"].clamp(min=1).double()
        single = s["single_inter"].double() / s["single_union"].clamp(min=1).double()
        k = int(present.sum())
        best = int(torch.argmax(single))
        result[mode] = {
            "per_class_iou": {c: (float(iou[j]) if bool(present[j]) else None) for j, c in enumerate(classes)},
            "miou": float(iou[present].sum() / max(1, k)),
            "single_class_baseline": {"class": classes[best], "miou": float(single[best] / max(1, k))},
            "geometric_iou": geo[mode][0] / max(1, geo[mode][1]),
            "label_accuracy_on_occupied": agree[mode][0] / max(1, agree[mode][1]),
            "voxels_occupied_in_both": agree[mode][1],
            "classes_present": k,
        }
    return result


def format_semantic_table(result: dict[str, Any]) -> str:
    """A text table: per-class IoU, mIoU, baseline and geometric IoU for visible and all voxels."""
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    lines = [f"{'':<24}{'visible':>10}{'all':>10}"]
    for c in result["classes"]:
        lines.append(f"{'IoU ' + c:<24}{f(result['visible']['per_class_iou'][c]):>10}"
                     f"{f(result['all']['per_class_iou'][c]):>10}")
    lines.append(f"{'mIoU':<24}{f(result['visible']['miou']):>10}{f(result['all']['miou']):>10}")
    v, a = result["visible"]["single_class_baseline"], result["all"]["single_class_baseline"]
    lines.append(f"{'best single class mIoU':<24}{f(v['miou']):>10}{f(a['miou']):>10}   ({v['class']} / "
                 f"{a['class']})")
    geo_v, geo_a = result["visible"]["geometric_iou"], result["all"]["geometric_iou"]
    lines.append(f"{'geometric IoU':<24}{f(geo_v):>10}{f(geo_a):>10}")
    acc_v, acc_a = result["visible"]["label_accuracy_on_occupied"], result["all"]["label_accuracy_on_occupied"]
    lines.append(f"{'label acc. (both occ.)':<24}{f(acc_v):>10}{f(acc_a):>10}")
    return "\n".join(lines)
