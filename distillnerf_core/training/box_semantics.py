"""Semantic scores against box annotations (real data without dense labels): the metrics of
benchmarks/real_semantics.py, kept here so that tests can check them on inputs with known answers.

    points_in_boxes          which points lie inside which oriented 3D boxes (optionally grown by a margin)
    voxel_box_scores         share of class voxels inside boxes; boxes (within a range) holding >= 1 such voxel
    box_mask                 2D box interiors rasterised at an evaluation resolution (pixel centres)
    precision_recall         of a boolean prediction against a boolean target over valid pixels
    pr_curve                 precision / recall of every threshold of a score map
    recall_at_precision      the best recall a score reaches at or above a precision (an operating point)
    row_prior                per camera and image row, the class frequencies of reference label maps
    mean_iou                 per-class IoU of two label maps over valid pixels
    ego_vehicle_blobs        vehicle-labelled blobs that touch the ego-body mask or the image bottom (the ego car)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def points_in_boxes(points: torch.Tensor, centers: torch.Tensor, rotations: torch.Tensor, sizes: torch.Tensor,
                    margin: float = 0.0) -> torch.Tensor:
    """(P, B) bool: point p inside box b grown by `margin` metres on every side.

    points (P, 3); centers (B, 3); rotations (B, 3, 3) frame_from_box; sizes (B, 3) full extents along the
    box's x, y, z axes (length, width, height)."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if points.shape[0] == 0 or centers.shape[0] == 0:
        return torch.zeros(points.shape[0], centers.shape[0], dtype=torch.bool)
    local = torch.einsum("bji,pbj->pbi", rotations, points[:, None, :] - centers[None])  # R^T (p - c)
    return (local.abs() <= sizes[None] / 2 + margin).all(dim=-1)


def voxel_box_scores(centers: torch.Tensor, is_class: torch.Tensor, box_centers: torch.Tensor,
                     box_rotations: torch.Tensor, box_sizes: torch.Tensor, margins: Sequence[float] = (0.0, 0.5),
                     max_range: float = 40.0) -> dict:
    """Voxel centres (V, 3) labelled `is_class` (V,) bool against boxes of that class.

    Per margin m: `in_boxes_m` = share of class voxels inside some box grown by m (None without class voxels),
    `occupied_in_boxes_m` = the same share for every voxel (what chance placement scores), and `boxes_hit_m` =
    how many of the boxes whose centre lies within `max_range` (horizontal distance) hold >= 1 class voxel."""
    out: dict = {"class_voxels": int(is_class.sum()), "occupied_voxels": int(centers.shape[0])}
    near = torch.linalg.norm(box_centers[:, :2], dim=1) <= max_range if box_centers.shape[0] else \
        torch.zeros(0, dtype=torch.bool)
    out["boxes_in_range"] = int(near.sum())
    for m in margins:
        inside = points_in_boxes(centers, box_centers, box_rotations, box_sizes, m)  # (V, B)
        any_box = inside.any(dim=1)
        n = int(is_class.sum())
        out[f"in_boxes_{m:g}"] = float(any_box[is_class].double().mean()) if n else None
        out[f"occupied_in_boxes_{m:g}"] = float(any_box.double().mean()) if centers.shape[0] else None
        hit = inside[is_class].any(dim=0) if n else torch.zeros(box_centers.shape[0], dtype=torch.bool)
        out[f"boxes_hit_{m:g}"] = int((hit & near).sum())
    return out


def box_mask(boxes: Sequence[tuple[float, float, float, float]], native_hw: tuple[int, int],
             out_hw: tuple[int, int]) -> np.ndarray:
    """(h, w) bool: pixels of an out_hw image whose centre, in native pixels, lies inside some box (x, y, w, h)."""
    h, w = out_hw
    sy, sx = native_hw[0] / h, native_hw[1] / w
    rows = (np.arange(h) + 0.5) * sy
    cols = (np.arange(w) + 0.5) * sx
    mask = np.zeros((h, w), dtype=bool)
    for x, y, bw, bh in boxes:
        if bw < 0 or bh < 0:
            raise ValueError(f"box with negative size: x {x}, y {y}, w {bw}, h {bh}")
        r = (rows >= y) & (rows < y + bh)
        c = (cols >= x) & (cols < x + bw)
        mask |= r[:, None] & c[None, :]
    return mask


def precision_recall(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None) -> dict:
    """tp / fp / fn counts, precision (None without positive predictions) and recall (None without targets)."""
    if pred.shape != target.shape or (valid is not None and valid.shape != pred.shape):
        raise ValueError(f"shapes differ: pred {pred.shape}, target {target.shape}, "
                         f"valid {None if valid is None else valid.shape}")
    v = np.ones_like(pred, dtype=bool) if valid is None else valid.astype(bool)
    p, t = pred.astype(bool) & v, target.astype(bool) & v
    tp, fp, fn = int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())
    return {"tp": tp, "fp": fp, "fn": fn, "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None}


def pr_curve(scores: np.ndarray, target: np.ndarray, valid: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and threshold of every distinct score: a pixel is predicted positive where score >=
    threshold. Ties share one point (a score map of few values, like a row prior, has few points)."""
    v = np.ones(scores.shape, dtype=bool) if valid is None else valid.astype(bool)
    s, t = scores[v].astype(np.float64), target[v].astype(bool)
    if t.sum() == 0:
        raise ValueError("no positive target pixels: precision / recall undefined")
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # last index of each run of equal scores
    tp = np.cumsum(t)[last]
    predicted = last + 1
    return tp / predicted, tp / t.sum(), s[last]


def recall_at_precision(scores: np.ndarray, target: np.ndarray, precision: float,
                        valid: np.ndarray | None = None) -> float:
    """The highest recall of a threshold whose precision is >= `precision` (0 when none reaches it)."""
    prec, rec, _ = pr_curve(scores, target, valid)
    ok = prec >= precision - 1e-12
    return float(rec[ok].max()) if ok.any() else 0.0


def row_prior(labels: np.ndarray, valid: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, h, C) class frequencies per camera and image row from reference label maps (F, N, h, w) (F frames),
    counting valid pixels only; a row without any valid pixel gets uniform frequencies."""
    if labels.shape != valid.shape or labels.ndim != 4:
        raise ValueError(f"labels and valid must both be (frames, cameras, h, w), got {labels.shape}, {valid.shape}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}")
    onehot = np.eye(num_classes, dtype=np.float64)[labels] * valid[..., None]  # (F, N, h, w, C)
    counts = onehot.sum(axis=(0, 3))  # (N, h, C)
    total = counts.sum(axis=-1, keepdims=True)
    return np.where(total > 0, counts / np.maximum(total, 1), 1.0 / num_classes)


def mean_iou(pred: np.ndarray, ref: np.ndarray, classes: Sequence[int], valid: np.ndarray | None = None) -> dict:
    """Per-class IoU over valid pixels for the classes present in either map, and their mean (mIoU)."""
    v = np.ones(pred.shape, dtype=bool) if valid is None else valid.astype(bool)
    per = {}
    for c in classes:
        p, r = (pred == c) & v, (ref == c) & v
        union = int((p | r).sum())
        if union:
            per[int(c)] = int((p & r).sum()) / union
    return {"per_class": per, "miou": float(np.mean(list(per.values()))) if per else None,
            "accuracy": float(((pred == ref) & v).sum() / max(int(v.sum()), 1))}


def ego_vehicle_blobs(vehicle: np.ndarray, body: np.ndarray, keep: np.ndarray, grow: int = 2) -> np.ndarray:
    """(N, h, w) bool: the connected blobs of `vehicle` pixels (per camera) that touch the ego-body mask `body`
    (grown by `grow` pixels) or the bottom image row, minus `keep` (annotated boxes are never taken).

    Why: a segmenter labels the ego car's own panels "car"; a body mask made from image motion misses the
    glossy ones (they mirror the moving scene), and the blobs it misses adjoin it."""
    from scipy import ndimage as ndi

    if not vehicle.shape == body.shape == keep.shape or vehicle.ndim != 3:
        raise ValueError(f"vehicle, body and keep must all be (cameras, h, w), got {vehicle.shape}, {body.shape}, "
                         f"{keep.shape}")
    out = np.zeros(vehicle.shape, dtype=bool)
    for n in range(vehicle.shape[0]):
        blobs, _ = ndi.label(vehicle[n])
        near = ndi.binary_dilation(body[n], iterations=grow) if grow > 0 and body[n].any() else body[n].copy()
        near[-1] = True
        touching = np.unique(blobs[near & vehicle[n]])
        out[n] = np.isin(blobs, touching[touching > 0]) & ~keep[n]
    return out
