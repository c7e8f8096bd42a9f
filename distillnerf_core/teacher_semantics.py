"""Voxel labels from a live 2D segmenter (`semantic_source: teacher`): the classes of the pixels where each
occupied voxel is VISIBLE, instead of the model's distilled features.

A model whose geometry was trained elsewhere (the bundled synthetic-oracle model on a real rig) has features
that mean nothing there; a real segmenter run on the same frame's images does. Each occupied voxel takes the
segmenter's class probabilities at its projection in every camera that sees it, averaged over those cameras:

    probes(v)     = v's centre and the centres of its 6 faces
    seen(c, v, k) = probe k projects inside camera c (in front of it) and is not behind the rendered surface
                    there: its z-depth <= the rendered depth at its pixel (bilinear) + `depth_tolerance_voxels`
                    voxel sizes, or that ray accumulated less than `min_opacity` (no surface to hide it)
    p(c, v)       = mean over the probes seen in c of softmax(segmenter logits at the probe's pixel)
    p(v)          = mean over the cameras that see some probe of v; a voxel no camera sees gets no label.

Why probes and not the centre alone: the surface of an occupied cell lies on its faces. The road seen from
1.5 m at 20 m is hit by the ray through a road cell's top face, while the ray through its centre meets the
road metres earlier (in the cells in front): a centre-only test calls nearly every road cell hidden by the
road. Why bilinear depth: at grazing angles one rendered pixel row spans metres of depth.

A text's probability is the sum over its classes (`teachers.segmenter.resolve_queries`: class names and
aliases, a closed vocabulary); "none of the queries" gets the rest, 1 - p(union of the queried classes), and a
voxel whose best query scores below it is background (-1), as the distilled path's background option.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from distillnerf_core.teachers.query import QueryResult

SEMANTIC_SOURCES = ("distilled", "teacher")


@dataclass(frozen=True)
class TeacherSemanticsConfig:
    """How the live segmenter labels voxels."""

    width: int = 1024
    """Segmenter input width (aspect kept, multiples of 16); it was trained at 1024 wide. Cost grows with its
    square (benchmarks/teacher_labels_cost.py)."""
    weights: str | None = None
    """Segmenter .safetensors file; None = the weights shipped with the package."""
    depth_tolerance_voxels: float = 1.0
    """A probe (cell centre or face centre) is hidden where it lies more than this many voxel sizes behind the
    rendered depth at its pixel (a rendered surface is an expectation spread over the ray's samples)."""
    min_opacity: float = 0.5
    """Rays that accumulate less opacity have no rendered surface: nothing there hides a voxel."""
    near: float = 0.1
    """Points closer to a camera than this (m, z-depth) are not in its view."""

    def validate(self) -> None:
        """Reject values that cannot label anything, naming the field."""
        if self.width < 16:
            raise ValueError(f"teacher semantics width must be >= 16, got {self.width}")
        if not self.depth_tolerance_voxels >= 0:
            raise ValueError("teacher semantics depth_tolerance_voxels must be >= 0, got "
                             f"{self.depth_tolerance_voxels}")
        if not 0.0 <= self.min_opacity <= 1.0:
            raise ValueError(f"teacher semantics min_opacity must be in [0, 1], got {self.min_opacity}")
        if not self.near > 0:
            raise ValueError(f"teacher semantics near must be > 0, got {self.near}")


@dataclass
class TeacherFrame:
    """What labelling a frame's voxels needs, kept with its FramePrediction so that a later query can label it
    (the segmenter runs only then): the images as given, their K, the voxels, the rendered depth / opacity and
    K of those maps (or `render_depth`, which renders them at the first labelling). Tensors stay on the
    predictor's device."""

    images: list[np.ndarray]  # (H, W, 3) uint8 per camera, as given to predict
    intrinsics: torch.Tensor  # (N, 3, 3) K of those images
    ego_from_camera: torch.Tensor  # (N, 4, 4)
    voxel_centers: torch.Tensor  # (V, 3)
    voxel_size: float
    depth: torch.Tensor | None = None  # (N, h, w) rendered camera z-depth
    opacity: torch.Tensor | None = None  # (N, h, w) accumulated opacity of those rays
    depth_intrinsics: torch.Tensor | None = None  # (N, 3, 3) K of the depth maps
    render_depth: Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
    classes: VoxelClasses | None = None  # filled by the first labelling (once per frame)
    render_ms: float = 0.0  # the depth render of the first labelling (0 when the frame rendered depth anyway)

    def set_depth(self, depth: torch.Tensor, opacity: torch.Tensor, depth_intrinsics: torch.Tensor) -> None:
        self.depth, self.opacity, self.depth_intrinsics = depth, opacity, depth_intrinsics

    def ensure_depth(self) -> None:
        """Render depth now if the frame did not (then drop the scene the renderer held)."""
        if self.depth is None:
            if self.render_depth is None:
                raise ValueError("the teacher frame has neither rendered depth nor a scene to render it from")
            import time

            started = time.perf_counter()
            self.set_depth(*self.render_depth())
            self.render_ms = 1000.0 * (time.perf_counter() - started)
        self.render_depth = None


@dataclass
class VoxelClasses:
    """Per occupied voxel: class probabilities averaged over the cameras that see it (zeros where none does),
    and how many cameras see it."""

    probabilities: torch.Tensor  # (V, C) float32, CPU
    cameras: torch.Tensor  # (V,) int64, CPU
    segmenter_ms: float = 0.0  # the segmenter's forward passes
    labelling_ms: float = 0.0  # projection, visibility and sampling

    @property
    def seen(self) -> torch.Tensor:
        return self.cameras > 0


def camera_pixels(points: torch.Tensor, K: torch.Tensor, ego_from_camera: torch.Tensor, hw: tuple[int, int],
                  near: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """u, v, camera z-depth (N, P) and in-view mask of ego-frame points (P, 3) in cameras K (N, 3, 3) with
    ego_from_camera (N, 4, 4) and images of hw. Pixel i covers [i, i + 1) (K scaled as scaled_intrinsics)."""
    camera_from_ego = torch.linalg.inv(ego_from_camera)
    cam = points[None] @ camera_from_ego[:, :3, :3].transpose(1, 2) + camera_from_ego[:, None, :3, 3]
    z = cam[..., 2]
    pix = cam @ K.transpose(1, 2)
    u = pix[..., 0] / z.clamp(min=1e-6)
    v = pix[..., 1] / z.clamp(min=1e-6)
    inside = (z > near) & (u >= 0) & (u < hw[1]) & (v >= 0) & (v < hw[0])
    return u, v, z, inside


FACE_OFFSETS = torch.tensor([[0, 0, 0], [-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1]],
                            dtype=torch.float32) / 2  # the centre, then the 6 face centres (in voxel sizes)


def cell_probes(centers: torch.Tensor, voxel_size: float) -> torch.Tensor:
    """(P, 7, 3) points of each cell that a camera may see: its centre and its 6 face centres."""
    return centers[:, None] + voxel_size * FACE_OFFSETS.to(centers)[None]


def bilinear(maps: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(N, h, w) maps read bilinearly (pixel centres at i + 0.5, border clamped) at pixel coordinates (N, P)."""
    return sample_logits(maps[:, None], u, v)[..., 0]


def candidate_cells(centers: torch.Tensor, K: torch.Tensor, ego_from_camera: torch.Tensor, hw: tuple[int, int],
                    radius: float, near: float) -> torch.Tensor:
    """(P,) mask of the cells of which some point within `radius` of the centre may project into one camera
    (K (3, 3), ego_from_camera (4, 4)): a cheap bound that leaves out most cells before their probes are
    projected (each cell is in the view of one or two of six cameras)."""
    u, v, z, _ = camera_pixels(centers, K[None], ego_from_camera[None], hw, near)
    u, v, z = u[0], v[0], z[0]
    close = z <= near + 2 * radius  # near the camera: always projected
    depth = (z - radius).clamp(min=1e-6)
    margin_u = radius * (K[0, 0] + (u - K[0, 2]).abs()) / depth  # |du| of a point within radius (first order
    margin_v = radius * (K[1, 1] + (v - K[1, 2]).abs()) / depth  # in the offset; exact bound for z > radius)
    within = (u >= -margin_u) & (u < hw[1] + margin_u) & (v >= -margin_v) & (v < hw[0] + margin_v)
    return (z > near - radius) & (close | within)


def probe_visibility(probes: torch.Tensor, depth: torch.Tensor, opacity: torch.Tensor,
                     depth_intrinsics: torch.Tensor, ego_from_camera: torch.Tensor, voxel_size: float,
                     config: TeacherSemanticsConfig) -> torch.Tensor:
    """(N, P, K) mask: camera n sees probe k of cell p (in view and not behind the rendered surface)."""
    n_cells, n_probes = probes.shape[:2]
    hw = (int(depth.shape[-2]), int(depth.shape[-1]))
    seen = torch.zeros(depth.shape[0], n_cells, n_probes, dtype=torch.bool, device=probes.device)
    radius = voxel_size * float(FACE_OFFSETS.norm(dim=1).max())
    for n in range(depth.shape[0]):
        cells = candidate_cells(probes[:, 0], depth_intrinsics[n], ego_from_camera[n], hw, radius,
                                config.near).nonzero()[:, 0]
        if cells.numel() == 0:
            continue
        u, v, z, inside = camera_pixels(probes[cells].reshape(-1, 3), depth_intrinsics[n:n + 1],
                                        ego_from_camera[n:n + 1], hw, config.near)
        surface = bilinear(depth[n:n + 1], u, v)
        solid = bilinear(opacity[n:n + 1], u, v) >= config.min_opacity
        in_front = z <= surface + config.depth_tolerance_voxels * voxel_size
        seen[n, cells] = (inside & (in_front | ~solid)).view(-1, n_probes)
    return seen


def visible_in_cameras(centers: torch.Tensor, voxel_size: float, depth: torch.Tensor, opacity: torch.Tensor,
                       depth_intrinsics: torch.Tensor, ego_from_camera: torch.Tensor,
                       config: TeacherSemanticsConfig) -> torch.Tensor:
    """(N, P) mask: camera n sees some probe of the cell centred at p."""
    probes = cell_probes(centers, voxel_size)
    return probe_visibility(probes, depth, opacity, depth_intrinsics, ego_from_camera, voxel_size, config).any(-1)


def sample_logits(logits: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Logits (N, C, h, w) bilinearly sampled (align_corners=False, border) at pixel coordinates (N, P) of the
    map -> (N, P, C): the logits the segmenter's own resize (to the image's size) would give there."""
    h, w = logits.shape[-2:]
    grid = torch.stack([2.0 * u / w - 1.0, 2.0 * v / h - 1.0], dim=-1)[:, None]  # (N, 1, P, 2)
    sampled = F.grid_sample(logits, grid.to(logits.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return sampled[:, :, 0].transpose(1, 2)


def average_seen(probabilities: torch.Tensor, seen: torch.Tensor) -> VoxelClasses:
    """Mean over cameras of (N, P, C) probabilities where seen (N, P); zeros and 0 cameras where none sees."""
    weights = seen.to(probabilities.dtype)[..., None]
    count = seen.sum(dim=0)
    mean = (probabilities * weights).sum(dim=0) / count.clamp(min=1)[:, None].to(probabilities.dtype)
    return VoxelClasses(mean.float().cpu(), count.cpu())


def label_voxels(frame: TeacherFrame, segmenter, config: TeacherSemanticsConfig) -> VoxelClasses:
    """Run the segmenter on the frame's images (per camera: one (C, h, w) logit map alive at a time) and label
    its voxels by the pixels where they are visible. `segmenter`: teachers.segmenter.Segmenter."""
    import time

    from distillnerf_core.teachers.segmenter import NUM_CLASSES, segmenter_input_hw

    centers = frame.voxel_centers
    n_cams, n_vox = len(frame.images), centers.shape[0]
    if n_vox == 0:
        return VoxelClasses(torch.zeros(0, NUM_CLASSES), torch.zeros(0, dtype=torch.int64))
    frame.ensure_depth()  # visibility needs the rendered surface (rendered now if the frame did not)
    started = time.perf_counter()
    probes = cell_probes(centers, frame.voxel_size)
    visible = probe_visibility(probes, frame.depth, frame.opacity, frame.depth_intrinsics, frame.ego_from_camera,
                               frame.voxel_size, config)  # (N, P, K)
    probabilities = torch.zeros(n_cams, n_vox, NUM_CLASSES, device=centers.device)
    segmenter_s = 0.0
    for camera, image in enumerate(frame.images):
        image_hw = image.shape[:2]
        hw = segmenter_input_hw(image_hw, config.width)
        scale = torch.tensor([[hw[1] / image_hw[1], 0, 0], [0, hw[0] / image_hw[0], 0], [0, 0, 1]],
                             dtype=frame.intrinsics.dtype, device=centers.device)
        cells = visible[camera].any(dim=1).nonzero()[:, 0]
        if cells.numel() == 0:
            continue  # no visible voxel: the segmenter need not run on this camera
        u, v, _, inside = camera_pixels(probes[cells].reshape(-1, 3), scale @ frame.intrinsics[camera:camera + 1],
                                        frame.ego_from_camera[camera:camera + 1], hw, config.near)
        pick = visible[camera, cells] & inside.view(len(cells), -1)  # depth maps and images may differ at edges
        visible[camera, cells] = pick
        if not pick.any():
            continue
        t0 = time.perf_counter()
        logits = segmenter.logits([image], hw).to(centers.device)
        segmenter_s += time.perf_counter() - t0
        flat = pick.reshape(-1)
        p = torch.softmax(sample_logits(logits, u[:, flat], v[:, flat])[0].float(), dim=-1)  # (pairs, C)
        cell = cells[:, None].expand_as(pick).reshape(-1)[flat]
        summed = torch.zeros(n_vox, NUM_CLASSES, device=centers.device).index_add_(0, cell, p)
        probabilities[camera] = summed / visible[camera].sum(dim=1).clamp(min=1)[:, None]
    classes = average_seen(probabilities, visible.any(dim=-1))
    classes.segmenter_ms = 1000.0 * segmenter_s
    classes.labelling_ms = 1000.0 * (time.perf_counter() - started - segmenter_s)
    return classes


def query_classes(classes: VoxelClasses, texts: Sequence[str], class_ids: Sequence[Sequence[int]]) -> QueryResult:
    """Label voxels with texts of the closed vocabulary: p(text) = sum of its classes' probabilities; a voxel is
    background (-1) where none sees it or "none of the queries" (1 - p(union)) beats its best text."""
    if len(texts) != len(class_ids) or not texts:
        raise ValueError(f"need one class-id tuple per text, got {len(texts)} texts and {len(class_ids)} tuples")
    probs = classes.probabilities
    per_text = torch.stack([probs[:, list(ids)].sum(dim=1) for ids in class_ids], dim=1).clamp(0.0, 1.0)
    union = sorted({c for ids in class_ids for c in ids})
    other = (1.0 - probs[:, union].sum(dim=1)).clamp(min=0.0)
    seen = classes.seen
    score, label = per_text.max(dim=1) if per_text.shape[0] else (torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    label = torch.where(seen & (score >= other), label, torch.full_like(label, -1))
    score = torch.where(seen, score, torch.zeros_like(score))
    per_text = torch.where(seen[:, None], per_text, torch.zeros_like(per_text))
    max_scores = per_text.amax(dim=0) if per_text.shape[0] else torch.zeros(len(texts))
    return QueryResult(list(texts), label, score, per_text, max_scores)


def resolve_weights(weights: str | Path | None) -> Path:
    """The segmenter weights file: the given one (must exist) or the shipped one."""
    from distillnerf_core.teachers.segmenter import default_weights_path

    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"segmenter weights not found: {path}")
        return path
    return default_weights_path()
