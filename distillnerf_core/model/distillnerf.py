"""DistillNeRF: images of one timestamp -> sparse voxel density/feature field -> rendered views.

Pipeline (one module per stage): encoder.py (2D features) -> lift.py (two-stage LSS points) ->
voxels.py (two-level mean pooling) -> sparse_conv.py (coarse refinement) -> renderer.py (volume
rendering for any cameras) -> decoder.py (RGB CNN, foundation-feature head).

`encode` builds the scene once; `render` draws any number of target camera sets from it (input views,
other timestamps, virtual cameras). Per-stage wall times land in `stage_ms` after every call; set
`profile_stages = True` to synchronise CUDA around each stage for exact numbers (the benchmark does).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distillnerf_core import configs
from distillnerf_core.model.cameras import CameraRig
from distillnerf_core.model.decoder import DecoderConfig, FeatureHead, FeatureHeadConfig, RGBDecoder
from distillnerf_core.model.encoder import EncoderConfig, ImageEncoder
from distillnerf_core.model.lift import LiftConfig, LiftOutput, LiftSplat
from distillnerf_core.model.renderer import RendererConfig, RenderOutput, VolumeRenderer, VoxelField
from distillnerf_core.model.sparse_conv import SparseCNN, SparseConvConfig
from distillnerf_core.model.voxels import VoxelConfig, voxelize
from distillnerf_core.teachers.identity import validate_teacher_identity
from distillnerf_core.teachers.pca import FeaturePCA

STAGES = ("encoder", "lift", "voxelize", "sparse_conv", "render", "decode")
COMPILABLE_STAGES = ("encoder", "lift", "decoder")  # the stages whose tensor shapes the config fixes
logger = logging.getLogger(__name__)


@dataclass
class ModelConfig:
    """The whole DistillNeRF model: one section per stage, each configured next to its class."""

    name: str = "custom"
    """A label stored with checkpoints (the shipped configs use their own name)."""
    image_hw: list[int] = field(default_factory=lambda: [128, 228])
    """(H, W) the input images are resized to."""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    """2D image encoder (`encoder.py`)."""
    lift: LiftConfig = field(default_factory=LiftConfig)
    """Two-stage depth lift (`lift.py`)."""
    voxels: VoxelConfig = field(default_factory=VoxelConfig)
    """Sparse voxel levels and contraction radius (`voxels.py`)."""
    sparse_conv: SparseConvConfig = field(default_factory=SparseConvConfig)
    """Sparse 3D CNN (`sparse_conv.py`)."""
    renderer: RendererConfig = field(default_factory=RendererConfig)
    """Volume renderer (`renderer.py`)."""
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    """RGB decoder (`decoder.py`)."""
    feature_head: FeatureHeadConfig = field(default_factory=FeatureHeadConfig)
    """Foundation-feature head (`decoder.py`)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON / YAML serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """A validated ModelConfig from a nested dict (e.g. the JSON stored beside a checkpoint)."""
        cfg = configs.from_dict(cls, data)
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, name_or_path: str | Path) -> ModelConfig:
        """A shipped config by name (`tiny`, `small`, `paper`) or a model YAML file."""
        path = configs.resolve(name_or_path, configs.MODEL_CONFIG_DIR)
        try:
            return cls.from_dict(configs.read_yaml(path))
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def validate(self) -> None:
        """Reject inconsistent sizes early with a message naming the field."""
        v = self.voxels
        if v.fine_resolution % v.coarse_resolution != 0:
            raise ValueError(
                f"voxels.fine_resolution ({v.fine_resolution}) must be a multiple of "
                f"voxels.coarse_resolution ({v.coarse_resolution})"
            )
        if len(v.radius) != 3 or min(v.radius) <= 0:
            raise ValueError(f"voxels.radius must be 3 positive numbers, got {v.radius}")
        if self.renderer.lookup not in ("nearest", "trilinear"):
            raise ValueError(f"renderer.lookup must be 'nearest' or 'trilinear', got {self.renderer.lookup!r}")
        if len(self.image_hw) != 2:
            raise ValueError(f"image_hw must be [H, W], got {self.image_hw}")
        if not 0.0 < self.lift.near < self.lift.linear_far <= self.lift.far:
            raise ValueError("lift needs 0 < near < linear_far <= far")
        if self.lift.fine_candidates < 1 or self.lift.contracted_bins < 0:
            raise ValueError("lift.fine_candidates must be >= 1 and lift.contracted_bins >= 0")
        if (self.encoder.vit_name is None) != (self.encoder.vit_weights is None):
            raise ValueError("encoder.vit_name and encoder.vit_weights must be given together")
        fh = self.feature_head
        validate_teacher_identity(fh.teacher, fh.teacher_dim, fh.dim)


@dataclass
class SceneEncoding:
    """The 3D representation of one frame (per batch element) plus the lift outputs used by losses."""

    field: VoxelField
    lift: LiftOutput
    input_rig: CameraRig  # input cameras at the model's image size

    @property
    def points_lifted(self) -> int:
        return self.lift.points.shape[0] * self.lift.points.shape[1]

    @property
    def voxels_occupied(self) -> dict[str, int]:
        return {"coarse": self.field.coarse.num_voxels, "fine": self.field.fine.num_voxels}


@dataclass
class RenderedViews:
    """Target views: rgb (B, M, 3, H, W) at target image size; the rest at render size (h, w).

    rgb, features and field_features are None when `render` was asked for depth only.
    """

    rgb: torch.Tensor | None
    depth: torch.Tensor  # camera z-depth (B, M, h, w)
    opacity: torch.Tensor  # (B, M, h, w)
    features: torch.Tensor | None  # (B, M, D, h, w) foundation features, None if the head is off
    weights: torch.Tensor  # (B, M, h, w, S) ray sample weights
    field_features: torch.Tensor | None  # (B, M, C, h, w) composited raw field features (decoder input)


@dataclass
class ModelOutput(RenderedViews):
    """Forward output: rendered target views plus the input-camera lift depths at the render size."""

    coarse_depth: torch.Tensor | None = None  # (B, N, h, w) z-depth of the coarse LSS stage
    fine_depth: torch.Tensor | None = None  # (B, N, h, w) z-depth of the fine LSS stage
    lift_coarse_weights: torch.Tensor | None = None  # (B, N, D, h', w')
    lift_fine_weights: torch.Tensor | None = None  # (B, N, K, h', w')
    points_lifted: int = 0
    voxels_occupied: dict[str, int] | None = None


def as_rig(cameras: CameraRig | dict[str, Any]) -> CameraRig:
    """Accept a CameraRig or a dict with intrinsics, cam2ego, image_hw (and optional camera_ids)."""
    if isinstance(cameras, CameraRig):
        return cameras
    return CameraRig(cameras["intrinsics"], cameras["cam2ego"], tuple(cameras["image_hw"]), cameras.get("camera_ids"))


class DistillNeRFModel(nn.Module):
    """The DistillNeRF model. `config` is a ModelConfig or a shipped config name / YAML path.

    `load_pretrained=False` skips reading the frozen ViT's weight file (a checkpoint provides them).
    """

    def __init__(self, config: ModelConfig | str = "small", load_pretrained: bool = True) -> None:
        super().__init__()
        cfg = ModelConfig.load(config) if isinstance(config, str) else config
        cfg.validate()
        self.config = cfg
        self.encoder = ImageEncoder(cfg.encoder, load_pretrained=load_pretrained)
        self.lift = LiftSplat(cfg.lift, cfg.encoder.out_channels)
        self.sparse_cnn = SparseCNN(cfg.sparse_conv, cfg.lift.feature_dim + 1)
        self.renderer = VolumeRenderer(cfg.renderer, self.lift.bin_edges)
        field_dim = cfg.lift.feature_dim + cfg.sparse_conv.out_features
        self.decoder = RGBDecoder(cfg.decoder, field_dim + 1)
        self.feature_head = FeatureHead(cfg.feature_head, field_dim) if cfg.feature_head.enabled else None
        # PCA + normalisation of the distilled teacher's features (buffers, so they travel in the checkpoint).
        fh = cfg.feature_head
        self.feature_pca = FeaturePCA(fh.teacher_dim, fh.dim) if fh.enabled and fh.teacher_dim > 0 else None
        self.stage_ms: dict[str, float] = {}
        self.profile_stages = False
        self._compiled: dict[str, nn.Module] = {}
        self.compile_errors: dict[str, str] = {}

    def compile_stages(self, backend: str = "inductor") -> None:
        """`torch.compile` the encoder, the lift and the RGB decoder: their shapes depend only on the config
        and the camera count, so their many small elementwise kernels fuse. Voxelize, the sparse CNN and the
        renderer (data-dependent sizes) stay eager. Each compiles at its first call (seconds to a minute; a
        new camera count compiles once more, then shapes are treated as dynamic). Each stage must compile as
        one graph (`fullgraph`); a stage whose compilation fails runs eagerly from then on, with the reason
        in `compile_errors` (the forward never fails for it). Parameters and the state dict are shared with
        the eager modules. `backend` is torch.compile's ("inductor" generates kernels; "eager" and
        "aot_eager" only trace, for tests)."""
        self._compiled = {name: torch.compile(getattr(self, name), backend=backend, fullgraph=True)
                          for name in COMPILABLE_STAGES}
        self.compile_errors = {}

    def _run(self, name: str, *args: Any) -> Any:
        """Call stage `name`, compiled when `compile_stages` was called and its compilation works."""
        module = getattr(self, name)
        compiled = self._compiled.get(name)
        if compiled is None:
            return module(*args)
        try:
            return compiled(*args)
        except Exception as err:  # noqa: BLE001 - dynamo/inductor raise many types; the eager stage raises input errors
            out = module(*args)
            self._compiled.pop(name)
            self.compile_errors[name] = f"{type(err).__name__}: {err}"
            logger.warning("torch.compile of the %s failed, running it eagerly: %s", name, self.compile_errors[name])
            return out

    @contextmanager
    def _stage(self, name: str, device: torch.device) -> Iterator[None]:
        sync = self.profile_stages and device.type == "cuda"
        if sync:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        yield
        if sync:
            torch.cuda.synchronize(device)
        self.stage_ms[name] = self.stage_ms.get(name, 0.0) + 1000.0 * (time.perf_counter() - start)

    def encode(self, images: torch.Tensor, intrinsics: torch.Tensor, cam2ego: torch.Tensor) -> SceneEncoding:
        """Build the voxel field from images (B, N, 3, H, W) in [0, 1] and their cameras."""
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be (B, N, 3, H, W), got {tuple(images.shape)}")
        cfg = self.config
        b, n = images.shape[:2]
        rig = CameraRig(intrinsics, cam2ego, tuple(images.shape[-2:]))
        hw = tuple(cfg.image_hw)
        flat = images.reshape(b * n, 3, *images.shape[-2:])
        if tuple(images.shape[-2:]) != hw:
            flat = F.interpolate(flat, size=hw, mode="bilinear", align_corners=False, antialias=True)
            rig = rig.resized(hw)
        # Channels-last convolutions: encoder 10-20% and RGB decoder ~40% faster on the CPU (oneDNN), and the
        # layout tensor cores want for bf16 / fp16 on GPUs; values equal up to rounding.
        flat = flat.contiguous(memory_format=torch.channels_last)
        stride = cfg.lift.feature_stride
        lift_hw = (hw[0] // stride, hw[1] // stride)
        dev = images.device
        with self._stage("encoder", dev):
            feats = self._run("encoder", flat, lift_hw)
        with self._stage("lift", dev):
            lifted = self._run("lift", feats, rig.resized(lift_hw).rays())
        with self._stage("voxelize", dev):
            coarse, fine = voxelize(
                lifted.points,
                lifted.values,
                cfg.voxels.coarse_resolution,
                cfg.voxels.fine_resolution,
                cfg.voxels.radius,
            )
            if not cfg.voxels.fine_level:
                fine = fine.emptied()
        with self._stage("sparse_conv", dev):
            coarse = self.sparse_cnn(coarse, fine)
        # voxelize pools both levels from the same points: nested (no check, no host sync)
        field = VoxelField(coarse, fine, tuple(cfg.voxels.radius), cfg.lift.logit_clamp, nested=True)
        return SceneEncoding(field, lifted, rig)

    def render(self, scene: SceneEncoding, targets: CameraRig | dict[str, Any], rgb: bool = True,
               features: bool = True) -> RenderedViews:
        """Render a set of target cameras (any number, any poses) from an encoded scene.

        `rgb=False` skips the RGB decoder; with `features=False` as well, no field features are looked up
        or composited (depth, opacity and weights only: the depth-only fast path).
        """
        rig = as_rig(targets)
        dev = rig.intrinsics.device
        b, m = rig.batch_size, rig.num_cameras
        with self._stage("render", dev):
            out: RenderOutput = self.renderer(scene.field, rig, self.feature_head if features else None,
                                              features=rgb or features)
        image = None
        if rgb:
            with self._stage("decode", dev):
                depth_channel = (out.depth / self.config.renderer.max_depth)[:, :, None]
                dec_in = torch.cat([out.features, depth_channel.to(out.features.dtype)], dim=2).flatten(0, 1)
                dec_in = dec_in.contiguous(memory_format=torch.channels_last)
                camera_ids = rig.camera_ids.repeat(b)
                self.decoder.check_camera_ids(camera_ids, rig.max_camera_id)
                image = self._run("decoder", dec_in, camera_ids, rig.image_hw)
                image = image.view(b, m, 3, *rig.image_hw)
        return RenderedViews(
            rgb=image,
            depth=out.depth,
            opacity=out.opacity,
            features=out.head_features,
            weights=out.weights,
            field_features=out.features,
        )

    def forward(
        self,
        images: torch.Tensor,
        intrinsics: torch.Tensor,
        cam2ego: torch.Tensor,
        targets: CameraRig | dict[str, Any] | None = None,
    ) -> ModelOutput:
        """Encode the input cameras and render `targets` (default: the input cameras at input size)."""
        self.stage_ms = dict.fromkeys(STAGES, 0.0)
        scene = self.encode(images, intrinsics, cam2ego)
        if targets is None:
            targets = CameraRig(intrinsics, cam2ego, tuple(images.shape[-2:]))
        return self.output(scene, self.render(scene, targets), tuple(images.shape[-2:]))

    def output(self, scene: SceneEncoding, views: RenderedViews, image_hw: tuple[int, int]) -> ModelOutput:
        """`views` plus what the losses need from the lift: its depths at the render size and its weights."""
        render_hw = self.renderer.render_hw(image_hw)

        def at_render(depth: torch.Tensor) -> torch.Tensor:
            return F.interpolate(depth, size=render_hw, mode="bilinear", align_corners=False)

        return ModelOutput(
            **vars(views),
            coarse_depth=at_render(scene.lift.coarse_depth),
            fine_depth=at_render(scene.lift.fine_depth),
            lift_coarse_weights=scene.lift.coarse_weights,
            lift_fine_weights=scene.lift.fine_weights,
            points_lifted=scene.points_lifted,
            voxels_occupied=scene.voxels_occupied,
        )
