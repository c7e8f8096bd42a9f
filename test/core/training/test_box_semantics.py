"""Box-based semantic metrics (training/box_semantics.py) on constructed inputs whose answers are known, and
the DDAD box reader (data/dgp_boxes.py) against the LiDAR sweep the boxes were annotated on."""

import math

import numpy as np
import pytest
import torch
from conftest import REPO

from distillnerf_core.data.dgp import load_dgp_points, read_scene
from distillnerf_core.data.dgp_boxes import read_boxes_2d, read_boxes_3d
from distillnerf_core.training.box_semantics import (
    box_mask,
    ego_vehicle_blobs,
    mean_iou,
    points_in_boxes,
    pr_curve,
    precision_recall,
    recall_at_precision,
    row_prior,
    voxel_box_scores,
)

DDAD = REPO / "data" / "ddad_scene02"


def rot_z(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def test_points_in_a_rotated_box_and_the_margin():
    # a 4 m long, 2 m wide, 1.5 m high box at (10, 0, 1) turned 90 degrees: its length runs along ego y
    centers, rotations = torch.tensor([[10.0, 0.0, 1.0]], dtype=torch.float64), rot_z(math.pi / 2)[None]
    sizes = torch.tensor([[4.0, 2.0, 1.5]], dtype=torch.float64)
    points = torch.tensor([[10.0, 1.9, 1.0],    # along the length: inside
                           [11.5, 0.0, 1.0],    # 1.5 m across a 1 m half-width: outside, inside at +0.5 m
                           [10.0, 0.0, 1.8],    # 0.8 m above the centre, half-height 0.75: outside, inside at +0.5
                           [13.0, 0.0, 1.0]],   # 3 m across: outside even at +0.5
                          dtype=torch.float64)
    assert points_in_boxes(points, centers, rotations, sizes)[:, 0].tolist() == [True, False, False, False]
    assert points_in_boxes(points, centers, rotations, sizes, 0.5)[:, 0].tolist() == [True, True, True, False]
    with pytest.raises(ValueError, match="margin"):
        points_in_boxes(points, centers, rotations, sizes, -1.0)
    assert points_in_boxes(points[:0], centers, rotations, sizes).shape == (0, 1)


def test_voxel_box_scores_counts_class_voxels_and_boxes_hit():
    boxes = (torch.tensor([[10.0, 0.0, 0.0], [-30.0, 0.0, 0.0], [60.0, 0.0, 0.0]], dtype=torch.float64),
             torch.eye(3, dtype=torch.float64).expand(3, 3, 3), torch.full((3, 3), 2.0, dtype=torch.float64))
    centers = torch.tensor([[10.0, 0.0, 0.0], [10.9, 0.0, 0.0], [11.4, 0.0, 0.0], [0.0, 0.0, 0.0],
                            [60.0, 0.0, 0.0]], dtype=torch.float64)
    is_car = torch.tensor([True, True, True, True, False])
    s = voxel_box_scores(centers, is_car, *boxes)
    assert s["class_voxels"] == 4 and s["boxes_in_range"] == 2  # the box at 60 m is out of range
    assert s["in_boxes_0"] == pytest.approx(2 / 4) and s["in_boxes_0.5"] == pytest.approx(3 / 4)
    assert s["occupied_in_boxes_0"] == pytest.approx(3 / 5)  # the non-car voxel at 60 m is in a box
    assert s["boxes_hit_0"] == 1 and s["boxes_hit_0.5"] == 1  # the -30 m box has no car voxel
    none = voxel_box_scores(centers, torch.zeros(5, dtype=torch.bool), *boxes)
    assert none["in_boxes_0"] is None and none["boxes_hit_0"] == 0


def test_box_mask_uses_pixel_centres():
    # native 100 x 200 -> 10 x 20 (10 px per cell): cell centres at 5, 15, 25, ...
    mask = box_mask([(20.0, 10.0, 30.0, 20.0)], (100, 200), (10, 20))
    assert np.argwhere(mask.any(axis=0)).ravel().tolist() == [2, 3, 4]
    assert np.argwhere(mask.any(axis=1)).ravel().tolist() == [1, 2]
    assert mask.sum() == 6
    assert box_mask([], (100, 200), (10, 20)).sum() == 0
    with pytest.raises(ValueError, match="negative"):
        box_mask([(0.0, 0.0, -1.0, 5.0)], (100, 200), (10, 20))


def test_precision_recall_over_valid_pixels():
    pred = np.array([1, 1, 0, 0, 1], dtype=bool)
    target = np.array([1, 0, 1, 0, 1], dtype=bool)
    valid = np.array([1, 1, 1, 1, 0], dtype=bool)  # the last pixel (an ego-body pixel) does not count
    r = precision_recall(pred, target, valid)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 1) and r["precision"] == 0.5 and r["recall"] == 0.5
    empty = precision_recall(np.zeros(3, bool), np.zeros(3, bool))
    assert empty["precision"] is None and empty["recall"] is None
    with pytest.raises(ValueError, match="shapes differ"):
        precision_recall(pred, target[:3])


def test_pr_curve_ties_and_recall_at_precision():
    scores = np.array([0.9, 0.8, 0.8, 0.1])
    target = np.array([True, False, True, False])
    precision, recall, thresholds = pr_curve(scores, target)
    assert thresholds.tolist() == [0.9, 0.8, 0.1]  # the two 0.8 pixels are one operating point
    assert precision.tolist() == pytest.approx([1.0, 2 / 3, 0.5]) and recall.tolist() == [0.5, 1.0, 1.0]
    assert recall_at_precision(scores, target, 0.7) == 0.5
    assert recall_at_precision(scores, target, 0.6) == 1.0
    assert recall_at_precision(scores, target, 1.01) == 0.0
    with pytest.raises(ValueError, match="no positive"):
        pr_curve(scores, np.zeros(4, bool))


def test_row_prior_frequencies_valid_pixels_only():
    # 2 frames, 1 camera, 2 rows x 2 columns, 3 classes
    labels = np.array([[[[0, 1], [2, 2]]], [[[1, 1], [2, 0]]]])
    valid = np.ones_like(labels, dtype=bool)
    valid[:, :, 1, :] = False  # row 1 is never valid (ego body): uniform
    valid[1, 0, 0, 0] = False  # one pixel of row 0 left out
    f = row_prior(labels, valid, 3)
    assert f.shape == (1, 2, 3)
    assert f[0, 0].tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])  # pixels 0, 1, (x), 1
    assert f[0, 1].tolist() == pytest.approx([1 / 3] * 3)
    with pytest.raises(ValueError, match="labels must be in"):
        row_prior(labels + 3, valid, 3)


def test_mean_iou_over_present_classes():
    ref = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])
    r = mean_iou(pred, ref, classes=[0, 1, 2, 3])
    assert r["per_class"] == pytest.approx({0: 1 / 3, 1: 2 / 3, 2: 0.0})  # class 3 is in neither map
    assert r["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3) and r["accuracy"] == pytest.approx(3 / 5)


def test_ego_vehicle_blobs_touching_the_body_or_the_bottom():
    vehicle = np.zeros((1, 6, 6), dtype=bool)
    vehicle[0, 0, 0] = True          # a far car, alone: kept as scene
    vehicle[0, 2, 3:5] = True        # a blob just above the body mask (row 3): the ego car
    vehicle[0, 5, 0:2] = True        # a blob on the bottom row: the ego car
    vehicle[0, 1, 5] = True          # diagonal to that blob (not connected), 2 rows from the body: scene
    body = np.zeros_like(vehicle)
    body[0, 3, 3:5] = True
    keep = np.zeros_like(vehicle)
    keep[0, 2, 4] = True             # part of the body-touching blob lies in an annotated box
    out = ego_vehicle_blobs(vehicle, body, keep, grow=1)
    assert sorted(map(tuple, np.argwhere(out[0]))) == [(2, 3), (5, 0), (5, 1)]
    with pytest.raises(ValueError, match="cameras, h, w"):
        ego_vehicle_blobs(vehicle[0], body[0], keep[0])


def test_ddad_boxes_hold_the_lidar_points_they_were_annotated_on():
    scene = read_scene(DDAD)
    boxes_2d = read_boxes_2d(DDAD, 1)
    assert sorted(boxes_2d) == ["CAMERA_01", "CAMERA_05", "CAMERA_06", "CAMERA_07", "CAMERA_08", "CAMERA_09"]
    assert sum(len(b) for b in boxes_2d.values()) == 13 and boxes_2d["CAMERA_08"] == []
    assert {b.class_name for v in boxes_2d.values() for b in v} == {"Car", "Truck"}
    for frame in range(3):
        boxes = read_boxes_3d(DDAD, frame)
        assert len(boxes) == 13
        points = torch.as_tensor(load_dgp_points(scene.lidar(frame).path)[:, :3])
        centers = torch.as_tensor(np.stack([b.center for b in boxes]))
        rotations = torch.as_tensor(np.stack([b.rotation for b in boxes]))
        sizes = torch.as_tensor(np.stack([b.size for b in boxes]))
        inside = points_in_boxes(points, centers, rotations, sizes).sum(dim=0)
        swapped = points_in_boxes(points, centers, rotations, sizes[:, [1, 0, 2]]).sum(dim=0)
        for box, n, n_swapped in zip(boxes, inside.tolist(), swapped.tolist(), strict=True):
            if box.num_points >= 100:
                # the shipped sweep holds about a fifth of the points the annotation counted; length and width
                # swapped (or a wrong frame) lose most of them
                assert 0.12 <= n / box.num_points <= 0.3, (frame, box.instance_id, n, box.num_points)
                assert n_swapped < 0.5 * n
