"""The maths of the node's self-grading (distillnerf_core.inference_grading): reconstruction PSNR of a render
against its input, and rendered depth against LiDAR points projected as distillnerf-eval projects them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distillnerf_core.inference_grading import (
    MAX_PSNR_DB,
    lidar_depth_grades,
    lidar_depth_targets,
    median,
    recon_psnr,
)

K = np.array([[50.0, 0.0, 32.0], [0.0, 50.0, 24.0], [0.0, 0.0, 1.0]])


def test_a_render_equal_to_its_input_reads_the_capped_psnr():
    rendered = np.random.default_rng(0).integers(0, 256, (2, 24, 32, 3), dtype=np.uint8)
    inputs = torch.from_numpy(rendered).permute(0, 3, 1, 2).float() / 255.0
    assert recon_psnr(rendered, inputs).tolist() == [MAX_PSNR_DB, MAX_PSNR_DB]


def test_a_known_rgb_error_gives_its_psnr():
    rendered = np.full((1, 8, 8, 3), 100, np.uint8)
    inputs = torch.full((1, 3, 8, 8), 100 / 255.0) + 0.1  # MSE 0.01 -> 20 dB
    assert recon_psnr(rendered, inputs)[0] == pytest.approx(20.0, abs=1e-4)
    with pytest.raises(ValueError, match="differ in size"):
        recon_psnr(rendered, torch.zeros(1, 3, 4, 4))


def wall_points(distance: float) -> np.ndarray:
    """A flat wall `distance` m in front of an identity camera (optical frame), densely sampled."""
    x, y = np.meshgrid(np.linspace(-10, 10, 200), np.linspace(-8, 8, 160))
    return np.stack([x.ravel(), y.ravel(), np.full(x.size, distance)], axis=1)


def test_a_known_depth_offset_gives_the_expected_abs_rel_and_delta1():
    targets = lidar_depth_targets(wall_points(10.0), [np.eye(4)], [K], [(64, 48)], (12, 16))
    assert targets.shape == (1, 12, 16) and bool((targets[targets > 0] == 10.0).all())
    grade = lidar_depth_grades(np.full((1, 12, 16), 11.0, np.float32), targets)  # rendered 10% too far
    assert grade.frame["abs_rel"] == pytest.approx(0.1) and grade.frame["delta1"] == 1.0
    assert grade.cameras[0]["abs_rel"] == pytest.approx(0.1) and grade.points_per_camera == [12 * 16]
    grade = lidar_depth_grades(np.full((1, 12, 16), 14.0, np.float32), targets)  # 40% too far: outside 1.25
    assert grade.frame["abs_rel"] == pytest.approx(0.4) and grade.frame["delta1"] == 0.0


def test_lidar_points_move_into_each_camera_and_leave_the_protocol_range_out():
    behind = np.eye(4)
    behind[:3, :3] = np.diag([-1.0, 1.0, -1.0])  # a camera looking the other way sees nothing of the wall
    far = lidar_depth_targets(wall_points(90.0), [np.eye(4)], [K], [(64, 48)], (12, 16))
    targets = lidar_depth_targets(wall_points(10.0), [np.eye(4), behind], [K, K], [(64, 48), (64, 48)], (12, 16))
    assert float(far.max()) == 0.0, "returns beyond 80 m are no targets"
    assert float(targets[1].max()) == 0.0
    grade = lidar_depth_grades(np.full((2, 12, 16), 10.0, np.float32), targets)
    assert grade.frame["abs_rel"] == 0.0 and grade.cameras[1] is None and grade.points_per_camera[1] == 0


def test_median_skips_what_is_not_finite():
    assert median([1.0, float("nan"), 3.0, None]) == 2.0 and median([]) is None
