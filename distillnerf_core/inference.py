"""Run a trained model on one multi-camera frame given as plain arrays: what a ROS node (or any other
runtime) needs, with no ROS in it.

`ScenePredictor` loads a checkpoint onto a device, resizes each camera to the model's input size (scaling
its intrinsics), encodes the scene once and produces only the outputs asked for: per-camera depth (camera
z-depth) and rendered RGB, occupied voxels with colour and density, and a bird's-eye occupancy map.

Semantic labels come from one of two sources (`semantic_source`): "distilled" (the model's own features
against text embeddings, teachers/query.py) or "teacher" (a live 2D segmenter run on the frame's images, each
voxel labelled by the pixels where it is visible: teacher_semantics.py; the segmenter runs only when a frame
is labelled, never in a plain predict).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage

from distillnerf_core.model.cameras import ring_rig
from distillnerf_core.model.distillnerf import DistillNeRFModel
from distillnerf_core.model.occupancy import OccupancyConfig, query_occupancy
from distillnerf_core.teacher_semantics import (
    SEMANTIC_SOURCES,
    TeacherFrame,
    TeacherSemanticsConfig,
    VoxelClasses,
    camera_pixels,
    label_voxels,
    query_classes,
    resolve_weights,
)
from distillnerf_core.teachers.query import QueryConfig, QueryResult, SemanticQuerier, SemanticsUnavailableError
from distillnerf_core.training.calibration import DomainVerdict
from distillnerf_core.training.checkpoints import load_checkpoint

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceUnavailableError(RuntimeError):
    """The requested device does not exist on this machine."""


def resolve_device(requested: str) -> torch.device:
    """`auto` -> cuda when available else cpu; `cuda` / `cuda:N` must exist (DeviceUnavailableError)."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as error:
        raise ValueError(f"invalid device '{requested}' (use auto, cpu, cuda or cuda:N)") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(f"device '{requested}' requested but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(f"device '{requested}' requested but only {torch.cuda.device_count()}"
                                         " CUDA device(s) exist")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device '{requested}' (use auto, cpu, cuda or cuda:N)")
    return device


@dataclass
class FramePrediction:
    """Outputs for one frame; fields not asked for are None. Arrays are numpy, ego frame = output frame."""

    depth: np.ndarray | None = None  # (N, h, w) float32 camera z-depth in metres
    opacity: np.ndarray | None = None  # (N, h, w) float32 accumulated ray opacity in [0, 1], with depth
    depth_intrinsics: np.ndarray | None = None  # (N, 3, 3) K of the depth images
    rgb: np.ndarray | None = None  # (N, H, W, 3) uint8 rendered at the model's input size
    rgb_intrinsics: np.ndarray | None = None
    voxel_centers: np.ndarray | None = None  # (V, 3) float32
    voxel_density: np.ndarray | None = None  # (V,) float32
    voxel_rgb: np.ndarray | None = None  # (V, 3) uint8, from the input image that sees the voxel
    voxel_features: torch.Tensor | None = None  # (V, F) for semantic queries
    voxel_label: np.ndarray | None = None  # (V,) int32 index into semantic_queries, -1 = background (none)
    voxel_score: np.ndarray | None = None  # (V,) float32 probability of the best query
    query_max_scores: np.ndarray | None = None  # (Q,) float32 max over voxels of each query's probability
    query_domain: DomainVerdict | None = None  # the queried features against the calibration's domain check
    teacher_frame: TeacherFrame | None = None  # semantic_source "teacher": what a later query labels from
    bev_probability: np.ndarray | None = None  # (ny, nx) occupancy probability, NaN where no camera sees
    bev_origin: tuple[float, float] = (0.0, 0.0)  # x, y of the grid corner
    voxel_size: float = 0.0
    model_ms: float = 0.0
    stage_ms: dict[str, float] = field(default_factory=dict)


def upload_resized(images: list[np.ndarray], hw: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(N, 3, H, W) float in [0, 1] at hw on `device` from HxWx3 uint8 images: the uint8 pixels go up once
    (one pinned staging buffer per image size, one asynchronous copy: a quarter of float32's bytes), then
    convert and resize there, one antialiased bilinear pass per image size. Per image the same operations as
    a one-image upload + resize, so the same values."""
    out = torch.empty(len(images), 3, *hw, device=device)  # filled per size when the sizes differ
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault(tuple(image.shape[:2]), []).append(i)
    for size, indices in by_size.items():
        staging = torch.empty(len(indices), *size, 3, dtype=torch.uint8, pin_memory=device.type == "cuda")
        host = staging.numpy()
        for slot, i in enumerate(indices):
            host[slot] = images[i]  # straight into the (pinned) staging buffer: one host copy
        batch = staging.to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 255.0
        if size != tuple(hw):
            batch = F.interpolate(batch, size=hw, mode="bilinear", align_corners=False, antialias=True)
        if len(by_size) == 1:
            return batch
        out[torch.as_tensor(indices, device=device)] = batch
    return out


def scaled_intrinsics(K: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """K of an image resized from from_hw to to_hw (aspect ratio may change)."""
    scale = np.diag([to_hw[1] / from_hw[1], to_hw[0] / from_hw[0], 1.0])
    return scale @ np.asarray(K, dtype=np.float64)


def occupancy_probability(density: torch.Tensor, voxel_size: float) -> torch.Tensor:
    """Chance a ray crossing one voxel is stopped in it: 1 - exp(-density * voxel_size)."""
    return 1.0 - torch.exp(-density.clamp(min=0) * voxel_size)


def project_points(points: torch.Tensor, K: torch.Tensor, ego_from_camera: torch.Tensor, hw: tuple[int, int]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel u, v and a visibility mask of ego-frame points (P, 3) in each camera: K (N,3,3), (N,4,4)."""
    u, v, _, visible = camera_pixels(points, K, ego_from_camera, hw)
    return u, v, visible


class ScenePredictor:
    """A loaded model that turns camera arrays into FramePredictions; one instance serves all cameras."""

    def __init__(self, model: DistillNeRFModel | str | Path, device: str = "auto", precision: str = "fp32",
                 occupancy: OccupancyConfig | None = None, teacher_weights: str | Path | None = None,
                 query: QueryConfig | None = None, compile: bool = False, semantic_source: str = "distilled",
                 teacher_semantics: TeacherSemanticsConfig | None = None) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got '{precision}'")
        self.device = resolve_device(device)
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision fp16 needs a CUDA device (use fp32 or bf16 on the CPU)")
        self.precision = precision
        self.model = load_checkpoint(model, self.device) if isinstance(model, str | Path) else model.to(self.device)
        self.model.eval()
        if compile:  # compiles at the first predict (call `warm_up` to take that cost before the first frame)
            self.model.compile_stages()
        self.occupancy = occupancy or OccupancyConfig()
        self.teacher_weights = teacher_weights  # CLIP weights for text queries (default: the path in the checkpoint)
        self.query_config = query or QueryConfig()
        self._querier: SemanticQuerier | None = None
        self._querier_error: SemanticsUnavailableError | None = None  # why it cannot be built (not retried)
        self._querier_lock = threading.Lock()  # the node's worker and its query service may both ask first
        if semantic_source not in SEMANTIC_SOURCES:
            raise ValueError(f"semantic_source must be one of {SEMANTIC_SOURCES}, got '{semantic_source}'")
        self.semantic_source = semantic_source
        self.teacher_semantics = teacher_semantics or TeacherSemanticsConfig()
        self.teacher_semantics.validate()
        self.segmenter = None
        if semantic_source == "teacher":  # loaded now: missing or bad weights fail here, not at the first query
            from distillnerf_core.teachers.segmenter import load_segmenter

            self.segmenter = load_segmenter(resolve_weights(self.teacher_semantics.weights), self.device)

    @property
    def live_teacher(self) -> bool:
        """Labels come from the live segmenter (semantic_source "teacher"), not from distilled features."""
        return self.segmenter is not None

    def segmenter_description(self) -> str:
        """The live segmenter, for replies and /diagnostics ('' in distilled mode)."""
        if self.segmenter is None:
            return ""
        return (f"live segmenter ESPNetv2 Cityscapes (weights sha256 {self.segmenter.sha256[:12]}, "
                f"{self.teacher_semantics.width} px wide)")

    @property
    def teacher(self) -> dict | None:
        """Identity of the teacher the model was distilled from (kind, model, weights sha256, ...), None if none."""
        return dict(self.model.config.feature_head.teacher) or None if self.model.feature_pca is not None else None

    def querier(self) -> SemanticQuerier:
        """The text querier (built once); SemanticsUnavailableError when the model cannot answer text queries."""
        with self._querier_lock:
            return self._built_querier()

    def _built_querier(self) -> SemanticQuerier:
        if self._querier is None:
            if self.model.feature_pca is None:
                raise SemanticsUnavailableError("this model was not distilled from a foundation model (no teacher "
                                                "and no PCA in its checkpoint), so it cannot answer text queries")
            if self._querier_error is not None:
                raise self._querier_error
            try:
                self._querier = SemanticQuerier(self.model.feature_pca, self.model.config.feature_head.teacher,
                                                config=self.query_config, weights=self.teacher_weights)
            except (OSError, ValueError) as error:  # missing or mismatched teacher weights: said, not raised again
                self._querier_error = (error if isinstance(error, SemanticsUnavailableError)
                                       else SemanticsUnavailableError(f"text queries unavailable: {error}"))
                raise self._querier_error from error
        return self._querier

    def text_query_problem(self) -> str | None:
        """Why text queries fail for a model distilled from a teacher with text (its CLIP weights file is
        missing, or building the text encoder failed); None when no problem is known (or the model has no text
        queries at all, which `teacher` says). Cheap: nothing is built here."""
        if self.live_teacher:
            return None  # labels from the segmenter, loaded at construction
        if self._querier_error is not None:
            return str(self._querier_error)
        teacher = self.teacher or {}
        if self._querier is None and teacher.get("kind") == "clip":
            path = self.teacher_weights or teacher.get("weights")
            if not path or not Path(path).is_file():
                return f"CLIP weights for text queries not found: {path}"
        return None

    def query_cache_size(self) -> tuple[int, int]:
        """(entries, bytes) of the text querier's bounded embedding cache; (0, 0) before it is built."""
        querier = self._querier
        return (querier.cache_entries, querier.cache_bytes) if querier is not None else (0, 0)

    @property
    def known_queries(self) -> list[str] | None:
        """The only texts the model answers (an oracle-distilled model's class names, the live segmenter's
        classes and aliases), None = open vocabulary."""
        if self.live_teacher:
            from distillnerf_core.teachers.segmenter import known_query_names

            return known_query_names()
        return self.querier().known_texts

    def check_queries(self, texts: Sequence[str]) -> list[str]:
        """Validate texts: SemanticsUnavailableError (cannot query at all) or ValueError naming unknown texts."""
        if self.live_teacher:
            from distillnerf_core.teachers.segmenter import resolve_queries

            resolve_queries(texts)  # a closed vocabulary: ValueError listing the names and aliases
            return [str(t) for t in texts]
        return self.querier().check(texts)

    def query(self, texts: Sequence[str], prediction: FramePrediction) -> QueryResult:
        """Label the occupied voxels of a prediction (made with occupancy=True) with text queries."""
        if self.live_teacher:
            from distillnerf_core.teachers.segmenter import resolve_queries

            ids = resolve_queries(texts)
            return query_classes(self.teacher_classes(prediction), [str(t) for t in texts], ids)
        if prediction.voxel_features is None:
            raise ValueError("the prediction has no voxel features (predict with occupancy=True)")
        return self.querier().query(prediction.voxel_features, texts)

    def teacher_classes(self, prediction: FramePrediction) -> VoxelClasses:
        """The live segmenter's class probabilities of the prediction's occupied voxels (computed at the first
        call for a frame, then kept with it: several queries on one frame run the segmenter once)."""
        frame = prediction.teacher_frame
        if frame is None:
            raise ValueError("the prediction has nothing to label from (predict with occupancy=True on a "
                             "predictor with semantic_source 'teacher')")
        if frame.classes is None:
            frame.classes = label_voxels(frame, self.segmenter, self.teacher_semantics)
        return frame.classes

    @property
    def input_hw(self) -> tuple[int, int]:
        return tuple(self.model.config.image_hw)

    @property
    def decode_hw(self) -> tuple[int, int]:
        """The smallest size images need to be decoded at (a JPEG may decode reduced to it): the model's input
        size, and with the live segmenter at least its width (it labels from the images as given)."""
        h, w = self.input_hw
        return (h, max(w, self.teacher_semantics.width)) if self.live_teacher else (h, w)

    def to_host(self) -> None:
        """Move the model to the CPU, freeing GPU memory while the node is inactive."""
        if self.device.type == "cuda":
            self.model.to("cpu")
            torch.cuda.empty_cache()

    def to_device(self) -> None:
        """Move the model back to its device (after to_host)."""
        self.model.to(self.device)

    def release(self) -> None:
        """Free the model's memory (the GPU's cache too)."""
        self.model = None
        self.segmenter = None  # the shared instance stays loaded for others (load_segmenter)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def warm_up(self, num_cameras: int, rgb: bool = False) -> float:
        """Predict one synthetic frame (random pixels, a ring of `num_cameras` cameras at the model's input
        size) so that compilation (`compile=True`) and first-call allocations happen now rather than at the
        first real frame of that camera count; returns its seconds."""
        rig = ring_rig(num_cameras, self.input_hw)
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (*self.input_hw, 3), dtype=np.uint8) for _ in range(num_cameras)]
        started = time.perf_counter()
        self.predict(images, list(rig.intrinsics[0].numpy()), list(rig.cam2ego[0].numpy()), rgb=rgb)
        return time.perf_counter() - started

    def _inputs(self, images: list[np.ndarray], intrinsics: list[np.ndarray], ego_from_camera: list[np.ndarray]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not images or not (len(images) == len(intrinsics) == len(ego_from_camera)):
            raise ValueError(f"need the same non-zero number of images ({len(images)}), intrinsics"
                             f" ({len(intrinsics)}) and extrinsics ({len(ego_from_camera)})")
        hw = self.input_hw
        scaled = []
        for image, K in zip(images, intrinsics, strict=True):
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(f"images must be HxWx3 uint8, got {image.shape} {image.dtype}")
            scaled.append(scaled_intrinsics(K, image.shape[:2], hw))
        if self.device.type == "cpu":
            images_t = torch.stack([self._resize(image, hw) for image in images])[None]
        else:
            images_t = upload_resized(images, hw, self.device)[None]
        K_t = torch.as_tensor(np.stack(scaled), dtype=torch.float32, device=self.device)[None]
        E_t = torch.as_tensor(np.stack(ego_from_camera), dtype=torch.float32, device=self.device)[None]
        return images_t, K_t, E_t

    def _host(self, tensor: torch.Tensor) -> np.ndarray:
        """`tensor` as a host array. From a GPU: an asynchronous copy into pinned memory (the array is valid
        once the device is synchronised, which `predict` does before it returns), so the outputs' copies
        overlap each other and the remaining GPU work instead of each waiting for the device. Only for
        outputs nothing reads before that (depth, opacity, RGB; the occupancy outputs are read by the
        teacher frame and copied synchronously)."""
        if tensor.device.type == "cpu":
            return tensor.numpy()
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        return host.copy_(tensor, non_blocking=True).numpy()

    def _resize(self, image: np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
        """(3, H, W) float tensor in [0, 1] at hw. Antialiased: PIL on the CPU (about 5x faster than torch
        there, measured on 1600x900 nuScenes images), torch on the GPU after uploading the uint8 pixels."""
        if tuple(image.shape[:2]) != hw and self.device.type == "cpu":
            image = np.asarray(PILImage.fromarray(image).resize((hw[1], hw[0]), PILImage.BILINEAR))
        pixels = image if image.flags.writeable else image.copy()  # torch refuses read-only buffers
        tensor = torch.from_numpy(pixels).to(self.device).permute(2, 0, 1)[None].float() / 255.0
        if tuple(image.shape[:2]) != hw:
            tensor = F.interpolate(tensor, size=hw, mode="bilinear", align_corners=False, antialias=True)
        return tensor[0]

    @torch.no_grad()
    def predict(self, images: list[np.ndarray], intrinsics: list[np.ndarray], ego_from_camera: list[np.ndarray],
                depth: bool = True, rgb: bool = False, occupancy: bool = True,
                semantic_queries: Sequence[str] | None = None) -> FramePrediction:
        """Encode one frame (N cameras, any sizes) and compute the requested outputs.

        `semantic_queries` (needs occupancy) labels the occupied voxels: voxel_label, voxel_score, query_max_scores.
        With semantic_source "teacher", occupancy also keeps the images (and the scene, for a depth render, when
        depth and rgb are not asked for) in `teacher_frame`; the segmenter and that render run only with
        semantic_queries or at a later `query`.
        """
        if semantic_queries:
            self.check_queries(semantic_queries)
            if not occupancy:
                raise ValueError("semantic_queries label occupied voxels: predict with occupancy=True")
        started = time.perf_counter()
        images_t, K_t, E_t = self._inputs(images, intrinsics, ego_from_camera)
        # the intrinsics as K_t holds them (float32), read from the host copy: no device read-back
        scaled = np.stack([scaled_intrinsics(K, image.shape[:2], self.input_hw)
                           for image, K in zip(images, intrinsics, strict=True)]).astype(np.float32)
        autocast = torch.autocast(self.device.type, dtype=PRECISIONS[self.precision],
                                  enabled=self.precision != "fp32")
        result = FramePrediction()
        self.model.stage_ms = {}
        with autocast:
            scene = self.model.encode(images_t, K_t, E_t)
            teacher_views = None  # the live segmenter's visibility test: this render's depth, else one at a query
            if depth or rgb:
                # Depth only: no RGB decoder and no feature lookups (the renderer's density pass suffices);
                # never the per-sample feature head, whose rendered image no FramePrediction field holds (it
                # was the costliest part of a CPU render: an MLP over every sample that carries weight).
                views = self.model.render(scene, {"intrinsics": K_t, "cam2ego": E_t, "image_hw": self.input_hw},
                                          rgb=rgb, features=False)
                render_hw = tuple(views.depth.shape[-2:])
                if occupancy and self.live_teacher:
                    teacher_views = (views.depth[0].float(), views.opacity[0].float(), render_hw)
                if depth:
                    result.depth = self._host(views.depth[0].float())
                    result.opacity = self._host(views.opacity[0].float())
                    result.depth_intrinsics = np.stack(
                        [scaled_intrinsics(K, self.input_hw, render_hw) for K in scaled])
                if rgb:
                    frames = (views.rgb[0].float().clamp(0, 1) * 255).round().byte()
                    result.rgb = self._host(frames.permute(0, 2, 3, 1).contiguous())
                    result.rgb_intrinsics = scaled.copy()
            if occupancy:
                self._occupancy(scene, images_t, K_t, E_t, result)
                if self.live_teacher:
                    result.teacher_frame = self._teacher_frame(images, intrinsics, scene, K_t, E_t, teacher_views,
                                                               result)
                if semantic_queries:
                    labelled = self.query(semantic_queries, result)
                    result.voxel_label = labelled.label.numpy().astype(np.int32)
                    result.voxel_score = labelled.score.numpy().astype(np.float32)
                    result.query_max_scores = labelled.max_scores.numpy().astype(np.float32)
                    result.query_domain = labelled.domain
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        result.model_ms = 1000.0 * (time.perf_counter() - started)
        result.stage_ms = dict(self.model.stage_ms)
        return result

    def _teacher_frame(self, images: list[np.ndarray], intrinsics: list[np.ndarray], scene, K_t: torch.Tensor,
                       E_t: torch.Tensor, views: tuple[torch.Tensor, torch.Tensor, tuple[int, int]] | None,
                       result: FramePrediction) -> TeacherFrame:
        """What the live segmenter labels from. Without a depth render in this frame (nobody asked for depth or
        RGB) the frame keeps its scene instead and renders depth at its first labelling: a frame nobody queries
        costs no render."""
        E = E_t[0]
        frame = TeacherFrame(images=list(images), intrinsics=torch.as_tensor(np.stack(intrinsics), dtype=torch.float32,
                                                                            device=E.device),
                             ego_from_camera=E.float(), voxel_centers=torch.as_tensor(result.voxel_centers,
                                                                                     device=E.device),
                             voxel_size=float(self.occupancy.voxel_size))
        if views is not None:
            frame.set_depth(*self._teacher_depth(views, K_t))
        else:
            frame.render_depth = lambda: self._teacher_depth(self._render_depth(scene, K_t, E_t), K_t)
        return frame

    @torch.no_grad()
    def _render_depth(self, scene, K_t: torch.Tensor, E_t: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        autocast = torch.autocast(self.device.type, dtype=PRECISIONS[self.precision], enabled=self.precision != "fp32")
        with autocast:
            views = self.model.render(scene, {"intrinsics": K_t, "cam2ego": E_t, "image_hw": self.input_hw},
                                      rgb=False, features=False)
        return views.depth[0].float(), views.opacity[0].float(), tuple(views.depth.shape[-2:])

    def _teacher_depth(self, views: tuple[torch.Tensor, torch.Tensor, tuple[int, int]], K_t: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        depth, opacity, render_hw = views
        depth_K = torch.stack([torch.as_tensor(scaled_intrinsics(K, self.input_hw, render_hw), dtype=torch.float32)
                               for K in K_t[0].cpu().numpy()]).to(depth.device)
        return depth, opacity, depth_K

    def _occupancy(self, scene, images_t: torch.Tensor, K_t: torch.Tensor, E_t: torch.Tensor,
                   result: FramePrediction) -> None:
        settings = self.occupancy
        grid = query_occupancy(self.model, scene, 0, settings)
        centers = grid.centers.float()
        result.voxel_centers = centers.cpu().numpy()
        result.voxel_density = grid.density.float().cpu().numpy()
        result.voxel_features = grid.features.float()
        result.voxel_rgb = self._colour(centers, images_t[0], K_t[0], E_t[0])
        probability = occupancy_probability(grid.density_grid.float(), settings.voxel_size).amax(dim=-1)
        seen = self._seen_columns(grid.density_grid.shape, settings, K_t[0], E_t[0], self.input_hw)
        bev = torch.where(seen, probability, torch.full_like(probability, float("nan")))
        result.bev_probability = bev.T.cpu().numpy()  # (X, Y) -> rows = y, columns = x (OccupancyGrid order)
        result.bev_origin = (settings.x_range[0], settings.y_range[0])
        result.voxel_size = settings.voxel_size

    def _colour(self, centers: torch.Tensor, images: torch.Tensor, K: torch.Tensor, E: torch.Tensor) -> np.ndarray:
        """Colour of each voxel from the first input camera that sees it (grey when none does)."""
        colours = torch.full((centers.shape[0], 3), 128, dtype=torch.uint8, device=centers.device)
        if centers.shape[0] == 0:
            return colours.cpu().numpy()
        hw = tuple(images.shape[-2:])
        u, v, visible = project_points(centers, K, E, hw)
        assigned = torch.zeros(centers.shape[0], dtype=torch.bool, device=centers.device)
        for camera in range(images.shape[0]):
            pick = visible[camera] & ~assigned
            if pick.any():
                x = u[camera, pick].long().clamp(0, hw[1] - 1)
                y = v[camera, pick].long().clamp(0, hw[0] - 1)
                colours[pick] = (images[camera, :, y, x].T * 255).round().byte()
                assigned |= pick
        return colours.cpu().numpy()

    @staticmethod
    def _seen_columns(grid_shape: tuple[int, ...], settings: OccupancyConfig, K: torch.Tensor, E: torch.Tensor,
                      hw: tuple[int, int]) -> torch.Tensor:
        """(X, Y) mask of BEV columns of which some cell lies in some camera's view; the rest are unknown."""
        nx, ny, nz = grid_shape
        s = settings.voxel_size
        device = K.device
        xs = settings.x_range[0] + s * (torch.arange(nx, device=device) + 0.5)
        ys = settings.y_range[0] + s * (torch.arange(ny, device=device) + 0.5)
        zs = settings.z_range[0] + s * (torch.arange(nz, device=device) + 0.5)
        cells = torch.stack(torch.meshgrid(xs, ys, zs, indexing="ij"), dim=-1).reshape(-1, 3)
        _, _, visible = project_points(cells, K, E, hw)
        return visible.any(dim=0).view(nx, ny, nz).any(dim=-1)
