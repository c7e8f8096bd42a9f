"""semantic_source "teacher": voxels labelled by the live segmenter where they are VISIBLE.

Visibility on constructed scenes (a wall with a voxel behind it, a camera without a surface, the road seen at
a grazing angle), averaging over the cameras that see a voxel, the closed-vocabulary query maths; then the
real segmenter (shipped ESPNetv2 weights) labelling the real nuScenes keyframe through ScenePredictor with the
bundled model, checked against the segmenter's own probability maps sampled independently.
"""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import REPO

from distillnerf_core.geometry import make_transform, quaternion_to_matrix
from distillnerf_core.inference import ScenePredictor
from distillnerf_core.teacher_semantics import (
    TeacherSemanticsConfig,
    VoxelClasses,
    average_seen,
    camera_pixels,
    cell_probes,
    probe_visibility,
    query_classes,
    visible_in_cameras,
)
from distillnerf_core.teachers.segmenter import CLASS_NAMES, load_segmenter, resolve_queries, segmenter_input_hw

OPTICAL = quaternion_to_matrix([0.5, -0.5, 0.5, -0.5])  # camera looking along ego +x (x right = -y, y down = -z)
CONFIG = TeacherSemanticsConfig(depth_tolerance_voxels=0.5)


def forward_camera(height: float = 0.0) -> torch.Tensor:
    return torch.tensor(make_transform(OPTICAL, [0, 0, height]), dtype=torch.float32)[None]


def pinhole(w: int = 40, h: int = 20, f: float = 20.0) -> torch.Tensor:
    return torch.tensor([[[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]]])


def test_a_voxel_behind_the_rendered_wall_is_hidden_one_on_it_or_where_no_surface_is_seen():
    # Left half of the image: a wall rendered at 10 m (opacity 1); right half: nothing (opacity 0.1).
    depth = torch.full((1, 20, 40), 10.0)
    opacity = torch.ones(1, 20, 40)
    opacity[..., 20:] = 0.1
    centers = torch.tensor([[10.0, 2.0, 0.0],   # on the wall (left of the axis: ego +y = image left)
                            [14.0, 2.0, 0.0],   # behind the wall, same pixel region: hidden
                            [14.0, -2.0, 0.0],  # as far, right half where no surface was rendered: seen
                            [-5.0, 0.0, 0.0],   # behind the camera
                            [10.5, 2.0, 0.0]])  # half a voxel behind the surface: its front face is on it
    seen = visible_in_cameras(centers, 1.0, depth, opacity, pinhole(), forward_camera(), CONFIG)
    assert seen[0].tolist() == [True, False, True, False, True]
    _, _, _, inside = camera_pixels(centers, pinhole(), forward_camera(), (20, 40))
    assert inside[0].tolist() == [True, True, True, False, True], "projection alone would keep the hidden one"


def test_road_cells_seen_at_a_grazing_angle_are_visible_the_layer_below_is_hidden():
    # Camera 1.5 m above a flat road (z = 0); the rendered depth is the plane's; cells of 0.5 m whose top face is
    # the road (centre z = -0.25) lie ON the surface; the centre of a far one is metres behind the plane's depth.
    K, E = pinhole(200, 100, 100.0), forward_camera(1.5)
    v = torch.arange(100).float() + 0.5
    rows = torch.where(v > 50, 100.0 * 1.5 / (v - 50).clamp(min=1e-3), torch.full_like(v, 120.0))
    depth = rows[None, :, None].expand(1, 100, 200).contiguous()
    opacity = (v > 50).float()[None, :, None].expand(1, 100, 200).contiguous()
    xs = torch.arange(5.25, 30.0, 0.5)
    top = torch.stack([xs, torch.zeros_like(xs), torch.full_like(xs, -0.25)], dim=1)
    below = top - torch.tensor([0.0, 0.0, 0.5])
    config = TeacherSemanticsConfig(depth_tolerance_voxels=0.25)
    assert visible_in_cameras(top, 0.5, depth, opacity, K, E, config).all()
    assert not visible_in_cameras(below, 0.5, depth, opacity, K, E, config)[0, 4:].any()
    # probes, not the centre alone: the ray through a far road cell's centre meets the road cells in front of it
    centre_only = probe_visibility(top[:, None], depth, opacity, K, E, 0.5, config)[0, :, 0]
    assert not centre_only[xs > 10].any()


def test_probabilities_are_averaged_over_the_cameras_that_see_a_voxel():
    p = torch.zeros(3, 2, 4)
    p[0, :, 0] = 1.0
    p[1, :, 1] = 1.0
    p[2, :, 2] = 1.0
    seen = torch.tensor([[True, False], [True, False], [False, False]])
    classes = average_seen(p, seen)
    assert classes.probabilities[0].tolist() == [0.5, 0.5, 0.0, 0.0]
    assert classes.cameras.tolist() == [2, 0] and classes.probabilities[1].sum() == 0


def test_queries_sum_their_classes_and_leave_unseen_and_other_voxels_unlabelled():
    n = len(CLASS_NAMES)
    probs = torch.zeros(4, n)
    probs[0, CLASS_NAMES.index("car")] = 0.5
    probs[0, CLASS_NAMES.index("truck")] = 0.3
    probs[0, CLASS_NAMES.index("road")] = 0.2
    probs[1, CLASS_NAMES.index("road")] = 0.9
    probs[1, CLASS_NAMES.index("car")] = 0.1
    probs[2, CLASS_NAMES.index("building")] = 0.7  # neither query: "other" 0.7 wins
    probs[2, CLASS_NAMES.index("road")] = 0.3
    classes = VoxelClasses(probs, torch.tensor([2, 1, 1, 0]))  # voxel 3 seen by no camera
    texts = ["vehicle", "Road"]
    result = query_classes(classes, texts, resolve_queries(texts))
    assert result.label.tolist() == [0, 1, -1, -1]
    assert result.score.tolist() == pytest.approx([0.8, 0.9, 0.3, 0.0])
    assert result.probabilities[0].tolist() == pytest.approx([0.8, 0.2])
    assert result.max_scores.tolist() == pytest.approx([0.8, 0.9])


# -- the real segmenter on the real nuScenes keyframe, through ScenePredictor -------------------------------------

WIDTH = 384  # cheaper than the default 1024 on CI's CPU; the labels are still the segmenter's own


@pytest.fixture(scope="module")
def labelled():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from grading_cost import keyframes  # the node's decode (JPEG draft) of the bundled keyframe

    predictor = ScenePredictor(REPO / "models/default/model.safetensors", "cpu", semantic_source="teacher",
                               teacher_semantics=TeacherSemanticsConfig(width=WIDTH))
    frame = keyframes(REPO / "data/nuscenes_sample", predictor.decode_hw)[0]
    prediction = predictor.predict(frame["images"], frame["K"], frame["output_from_camera"], depth=False)
    assert prediction.teacher_frame.classes is None, "no query yet: the segmenter has not run"
    assert prediction.teacher_frame.depth is None and prediction.depth is None, "nor the depth render"
    texts = ["road", "building", "vegetation", "car", "sky"]
    return predictor, frame, prediction, texts, predictor.query(texts, prediction)


def test_the_real_segmenter_labels_the_real_keyframe_where_voxels_are_visible(labelled):
    predictor, frame, prediction, texts, result = labelled
    assert all(image.shape[1] >= WIDTH for image in frame["images"]), "decoded at least the segmenter's width"
    classes = prediction.teacher_frame.classes
    seen = classes.seen
    assert 0.05 < seen.float().mean() < 0.9, "some voxels are hidden behind the rendered surface, many are seen"
    assert prediction.teacher_frame.render_ms > 0 and prediction.teacher_frame.render_depth is None
    assert (result.label[~seen] == -1).all() and (result.score[~seen] == 0).all(), "unseen voxels: no label"
    assert torch.allclose(classes.probabilities[seen].sum(dim=1), torch.ones(int(seen.sum())), atol=1e-4)
    # The labels mean something: road voxels lie lower than building / vegetation voxels, nothing seen is sky.
    z = prediction.teacher_frame.voxel_centers[:, 2]
    road, tall = z[result.label == 0], z[(result.label == 1) | (result.label == 2)]
    assert len(road) > 50 and len(tall) > 50, result.label.bincount(minlength=len(texts) + 1)
    assert road.median() + 1.0 < tall.median(), (road.median(), tall.median())
    assert result.max_scores[texts.index("sky")] < 0.5


def test_voxel_probabilities_are_the_segmenters_own_maps_at_the_visible_pixels(labelled):
    """Independent check of projection and sampling: softmax maps at the image's size (Segmenter.probabilities,
    the reference's resize), read at the pixel of each visible probe (cell centre, face centres), averaged over
    a camera's probes, then over the cameras that see the cell."""
    predictor, frame, prediction, _, _ = labelled
    teacher = prediction.teacher_frame
    probes = cell_probes(teacher.voxel_centers, teacher.voxel_size)
    visible = probe_visibility(probes, teacher.depth, teacher.opacity, teacher.depth_intrinsics,
                               teacher.ego_from_camera, teacher.voxel_size, predictor.teacher_semantics)
    segmenter = load_segmenter()
    cells = len(teacher.voxel_centers)
    total, count = torch.zeros(cells, len(CLASS_NAMES)), torch.zeros(cells)
    for camera, image in enumerate(frame["images"]):
        hw = image.shape[:2]
        maps = segmenter.probabilities([image], segmenter_input_hw(hw, WIDTH), out_hw=hw)[0]
        u, v, _, inside = camera_pixels(probes.reshape(-1, 3), teacher.intrinsics[camera:camera + 1],
                                        teacher.ego_from_camera[camera:camera + 1], hw)
        pick = visible[camera].reshape(-1) & inside[0]
        read = torch.zeros(len(pick), len(CLASS_NAMES))
        read[pick] = maps[:, v[0, pick].long(), u[0, pick].long()].T
        per_cell = pick.view(cells, -1).sum(dim=1)
        sees = per_cell > 0
        total[sees] += read.view(cells, -1, len(CLASS_NAMES)).sum(dim=1)[sees] / per_cell[sees, None]
        count[sees] += 1
    mine = prediction.teacher_frame.classes
    assert torch.equal(mine.cameras, count.long()), "the same cameras see the same voxels"
    # probe_visibility projects only the cells near each camera's view: the same as projecting every probe
    hw = tuple(teacher.depth.shape[-2:])
    _, _, _, inside = camera_pixels(probes.reshape(-1, 3), teacher.depth_intrinsics, teacher.ego_from_camera, hw)
    every = inside.view(len(frame["images"]), cells, -1)
    assert torch.equal(visible & every, visible), "only probes in view are visible"
    assert (every.any(-1) & ~visible.any(-1)).any(), "some cells in view are hidden"
    brute = probe_visibility(probes, teacher.depth, teacher.opacity, teacher.depth_intrinsics,
                             teacher.ego_from_camera, teacher.voxel_size,
                             replace(predictor.teacher_semantics, depth_tolerance_voxels=1e6))
    assert torch.equal(brute, every), "with no depth test, every probe in view is visible (none left out)"
    both = count > 0
    expected = total[both] / count[both, None]
    agree = (expected.argmax(1) == mine.probabilities[both].argmax(1)).float().mean()
    assert agree > 0.97, f"top class agrees on {agree:.3f} of the seen voxels"
    assert (expected - mine.probabilities[both]).abs().mean() < 0.02


def test_more_queries_on_the_same_frame_reuse_its_labels_and_unknown_texts_are_refused(labelled):
    predictor, _, prediction, _, _ = labelled
    classes = prediction.teacher_frame.classes
    again = predictor.query(["vehicle", "person"], prediction)
    assert prediction.teacher_frame.classes is classes, "the segmenter ran once for this frame"
    car = predictor.query(["car", "truck", "bus"], prediction)
    assert torch.allclose(again.probabilities[:, 0], car.probabilities.sum(dim=1).clamp(max=1), atol=1e-6)
    assert "vehicle" in predictor.known_queries and predictor.text_query_problem() is None
    with pytest.raises(ValueError, match="closed vocabulary.*road"):
        predictor.check_queries(["a red car"])


def test_semantic_queries_in_predict_label_with_the_live_segmenter(labelled):
    predictor, frame, _, _, _ = labelled
    front = slice(0, 2)  # two cameras: the segmenter runs once more, on them only
    prediction = predictor.predict(frame["images"][front], frame["K"][front], frame["output_from_camera"][front],
                                   depth=True, semantic_queries=["road", "vehicle"])
    teacher = prediction.teacher_frame
    assert teacher.render_depth is None and teacher.render_ms == 0, "the frame's own depth render was used"
    assert np.array_equal(teacher.depth.numpy(), prediction.depth)
    assert prediction.teacher_frame.classes is not None
    assert prediction.voxel_label.shape == (len(prediction.voxel_centers),)
    assert set(np.unique(prediction.voxel_label)) <= {-1, 0, 1} and (prediction.voxel_label == 0).any()


def test_bad_teacher_settings_are_refused_by_name(tmp_path):
    model = REPO / "models/default/model.safetensors"
    with pytest.raises(ValueError, match="semantic_source"):
        ScenePredictor(model, "cpu", semantic_source="lidar")
    with pytest.raises(FileNotFoundError, match="segmenter weights not found"):
        ScenePredictor(model, "cpu", semantic_source="teacher",
                       teacher_semantics=TeacherSemanticsConfig(weights=str(tmp_path / "none.safetensors")))
    with pytest.raises(ValueError, match="depth_tolerance_voxels"):
        ScenePredictor(model, "cpu", semantic_source="teacher",
                       teacher_semantics=TeacherSemanticsConfig(depth_tolerance_voxels=-1))
