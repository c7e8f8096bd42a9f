"""Typed model configuration, loadable from YAML.

Every size the paper fixes (input resolution, depth bins, voxel levels, widths) is a field here so the
same code runs the `tiny` test model, the `small` CPU demo and the `paper` reference sizes. Unknown
YAML keys are an error: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
CONFIG_NAMES = ("tiny", "small", "paper")


@dataclass
class EncoderConfig:
    """2D image encoder: a trainable FPN (always) plus an optional frozen pretrained ViT beside it."""

    fpn_widths: list[int] = field(default_factory=lambda: [32, 64, 96, 128])
    out_channels: int = 64
    vit_name: str | None = None  # timm model name, e.g. "vit_base_patch14_dinov2"
    vit_weights: str | None = None  # LOCAL .safetensors path; never downloaded
    vit_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm kwargs (tiny test models)
    vit_channels: int = 128  # projection width of the ViT features (the paper's 128)


@dataclass
class LiftConfig:
    """Two-stage lift-splat-shoot: coarse depth bins, then fine candidates around the coarse depth."""

    feature_stride: int = 1  # lift runs on the input image downsampled by this factor
    near: float = 0.1
    linear_far: float = 50.0  # linear bins of `linear_step` from `near` up to here
    linear_step: float = 0.2
    far: float = 120.0  # then `contracted_bins` bins uniform in contracted distance up to here
    contracted_bins: int = 37
    feature_dim: int = 64  # per-point image feature carried into the voxels
    hidden: int = 128
    two_stage: bool = True  # False = one-stage ablation: coarse bins become the lifted points
    fine_candidates: int = 15
    fine_spacing_ratio: float = 0.025
    fine_spacing_min: float = 0.05
    fine_spacing_max: float = 0.3
    fine_hidden: int = 64
    logit_clamp: float = 30.0


@dataclass
class VoxelConfig:
    """Two sparse levels in contracted [-1, 1]^3 and the per-axis contraction radius (metres)."""

    coarse_resolution: int = 128
    fine_resolution: int = 512
    radius: list[float] = field(default_factory=lambda: [50.0, 50.0, 6.4])
    fine_level: bool = True  # False = coarse-only ablation: no fine level (rendering and the CNN see coarse only)


@dataclass
class SparseConvConfig:
    """Sparse 3D CNN refining the coarse level (27-neighbour kernels, LayerNorm)."""

    width: int = 128
    num_layers: int = 4
    out_features: int = 32  # coarse-level feature channels after refinement (+ 1 density logit)
    coarse_only: bool = False  # ablation: do not fold the pooled fine level into the coarse input


@dataclass
class RendererConfig:
    """Volume rendering of the voxel field for arbitrary target cameras."""

    render_scale: float = 0.5  # render resolution as a fraction of the target image size
    lookup: str = "nearest"  # "nearest" or "trilinear"
    fine_samples: int = 30
    fine_sample_spacing: float = 0.1
    jitter: bool = True  # jitter coarse samples inside their bins in training mode
    max_depth: float = 120.0
    chunk_rays: int = 16384  # rays rendered at once (bounds peak memory)
    feature_weight_threshold: float = 1e-4  # skip feature lookups of samples below this weight (0 = exact)


@dataclass
class DecoderConfig:
    """2D CNN from the rendered feature image to full-resolution RGB, conditioned per camera."""

    width: int = 160
    num_blocks: int = 2
    groups: int = 8
    camera_embed_dim: int = 32
    num_camera_embeddings: int = 16


@dataclass
class FeatureHeadConfig:
    """Per-sample MLP rendering a D-dim foundation-feature image (CLIP / DINOv2 distillation)."""

    enabled: bool = True
    dim: int = 64
    hidden: int = 64


@dataclass
class ModelConfig:
    """The whole DistillNeRF model; `image_hw` is the (H, W) the input images are resized to."""

    name: str = "custom"
    image_hw: list[int] = field(default_factory=lambda: [128, 228])
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    lift: LiftConfig = field(default_factory=LiftConfig)
    voxels: VoxelConfig = field(default_factory=VoxelConfig)
    sparse_conv: SparseConvConfig = field(default_factory=SparseConvConfig)
    renderer: RendererConfig = field(default_factory=RendererConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    feature_head: FeatureHeadConfig = field(default_factory=FeatureHeadConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON / YAML serialisable)."""
        return dataclasses.asdict(self)

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


_SCALARS = {int: int, float: float, bool: bool, str: str}


def _build(cls: type, data: Any, where: str) -> Any:
    """Recursively build dataclass `cls` from a dict, naming the first unknown key found."""
    if not isinstance(data, dict):
        raise ValueError(f"config section '{where or 'root'}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ValueError(f"unknown config key '{path}' (allowed here: {', '.join(sorted(names))})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, path)
            continue
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        expected = _SCALARS.get(hint)
        if expected is not None and (not isinstance(value, expected) or isinstance(value, bool) != (hint is bool)):
            raise ValueError(f"config key '{path}' must be {hint.__name__}, got {value!r}")
        if isinstance(hint, types.GenericAlias) and hint.__origin__ is list:
            if not isinstance(value, list | tuple):
                raise ValueError(f"config key '{path}' must be a list, got {value!r}")
            value = list(value)
        kwargs[key] = value
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """ModelConfig from a nested dict (e.g. the JSON stored beside a checkpoint)."""
    cfg = _build(ModelConfig, data, "")
    cfg.validate()
    return cfg


def load_config(path_or_name: str | Path) -> ModelConfig:
    """Load a config by shipped name (`tiny`, `small`, `paper`) or from a YAML file path."""
    if str(path_or_name) in CONFIG_NAMES:
        path = CONFIG_DIR / f"{path_or_name}.yaml"
    else:
        path = Path(path_or_name)
        if not path.is_file():
            raise FileNotFoundError(
                f"config '{path_or_name}' is neither a shipped name {CONFIG_NAMES} nor an existing file"
            )
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    try:
        return config_from_dict(data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
