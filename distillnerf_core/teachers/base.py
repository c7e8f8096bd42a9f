"""What every 2D foundation-model teacher shares: its configuration, its identity and local-only weights.

A teacher turns camera images into dense feature maps (B, D, h, w) and, when it has a text tower (CLIP,
the oracle), prompts into unit embeddings (Q, D) in the same space. Weights come ONLY from a local file
the user names (`weights`); nothing is downloaded, and a missing, unreadable or mismatched file is an
error naming it. The identity (kind, model, weights file name and sha256, settings) is written into every
feature-cache manifest and into the checkpoints distilled from that cache, so a model always says which
teacher it was distilled from, and a text encoder can be rebuilt for queries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distillnerf_core.checked_files import sha256_file

TEACHER_KINDS = ("clip", "dinov2", "oracle", "segmenter")
SEGMENTER_OUTPUTS = ("log_probs", "log_probs+features")
DEFAULT_TEMPLATES = [
    "a photo of a {}.",
    "a photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of a {} on the street.",
    "there is a {} in the scene.",
]


class TeacherWeightsError(ValueError):
    """A teacher weights file is missing, unreadable or does not match the architecture; names the file."""


@dataclass
class TeacherConfig:
    """Which 2D foundation model dense features are distilled from (weights from local files only)."""

    kind: str = "clip"
    """"clip" (open_clip, MaskCLIP-style dense features + text), "dinov2" (timm ViT-*/14), "oracle" or "segmenter"
    (ESPNetv2 Cityscapes, the shipped real weights: class log-probabilities, a closed vocabulary)."""
    model: str = ""
    """open_clip model name (e.g. ViT-L-14-336) or timm model name (e.g. vit_base_patch14_dinov2)."""
    weights: str | None = None
    """LOCAL .safetensors file with the model's state dict; required for clip and dinov2, never downloaded
    (segmenter: None = the weights shipped in data/weights/espnetv2_s2_cityscapes/)."""
    model_config: str | None = None
    """open_clip JSON model config for an architecture open_clip does not ship (registered before building)."""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra timm constructor kwargs for dinov2 (tiny test models set depth / width here)."""
    input_hw: list[int] = field(default_factory=lambda: [224, 392])
    """(H, W) images are resized to before the ViT; rounded to multiples of the patch size."""
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    """Prompt templates ("{}" = the text); the text embedding is the renormalised mean over them."""
    batch_size: int = 8
    """Images per teacher forward when caching."""
    oracle_classes: list[str] | None = None
    """Oracle: class names in id order (None = those of the dataroot's gt/meta.json when caching)."""
    oracle_dim: int = 128
    """Oracle: embedding dimension."""
    oracle_noise: float = 0.2
    """Oracle: expected norm of the Gaussian noise added to each pixel's unit class embedding."""
    oracle_seed: int = 0
    """Oracle: seed of the class embeddings (and of the per-image noise, with the image's token)."""
    oracle_stride: int = 8
    """Oracle: the feature grid is the native image size divided by this (nearest-sampled semantics)."""
    segmenter_outputs: str = "log_probs"
    """Segmenter: what is cached and distilled: "log_probs" (the 20 class log-probabilities) or
    "log_probs+features" (those first, then the 32-channel penultimate decoder map)."""
    segmenter_width: int = 1024
    """Segmenter: input width (a multiple of 16; the height keeps the image's aspect, rounded to 16): 1024 is the
    width it was trained at."""
    segmenter_stride: int = 8
    """Segmenter: the cached grid is the segmenter input divided by this (2, 4, 8 or 16). 8 gives 128x72 for a
    1600x900 image at width 1024: finer than the model configs render (64x114 at most), at 1/64 of the storage
    of the full-resolution maps (a 20-channel float16 entry of 370 KB)."""

    def validate(self) -> None:
        """Reject an unknown kind or a missing model name / weights file, naming the field."""
        if self.kind not in TEACHER_KINDS:
            raise ValueError(f"teacher kind must be one of {TEACHER_KINDS}, got {self.kind!r}")
        if self.kind in ("clip", "dinov2"):
            if not self.model:
                raise ValueError(f"teacher kind {self.kind!r} needs a model name (--model)")
            if not self.weights:
                raise ValueError(f"teacher kind {self.kind!r} needs a LOCAL weights file (--weights); "
                                 "weights are never downloaded")
            if self.model.startswith(("hf-hub:", "local-dir:")):
                raise ValueError(f"teacher model {self.model!r}: give a plain model name plus --weights "
                                 "(hub and directory schemas are not used: nothing is downloaded)")
        if self.kind == "segmenter":
            if self.segmenter_outputs not in SEGMENTER_OUTPUTS:
                raise ValueError(f"segmenter_outputs must be one of {SEGMENTER_OUTPUTS}, "
                                 f"got {self.segmenter_outputs!r}")
            if self.segmenter_width < 16 or self.segmenter_width % 16:
                raise ValueError(f"segmenter_width must be a positive multiple of 16, got {self.segmenter_width}")
            if self.segmenter_stride not in (2, 4, 8, 16):
                raise ValueError(f"segmenter_stride must be 2, 4, 8 or 16 (it divides the input, a multiple of 16), "
                                 f"got {self.segmenter_stride}")
        if len(self.input_hw) != 2 or min(self.input_hw) <= 0:
            raise ValueError(f"teacher input_hw must be [H, W] > 0, got {self.input_hw}")
        if any("{}" not in t for t in self.templates) or not self.templates:
            raise ValueError("every teacher prompt template must contain '{}'")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


file_sha256 = sha256_file  # the name the teachers and their tests use


def read_weights(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """Tensors of a local .safetensors file; errors name the file (never unpickles, never downloads)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights not found: {path} (weights are never downloaded; "
                                "give a local .safetensors file)")
    if path.suffix != ".safetensors":
        raise TeacherWeightsError(f"{path}: {what} weights must be a .safetensors file (pickle files are not "
                                  "loaded; convert once with safetensors.torch.save_file(model.state_dict()))")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise TeacherWeightsError(f"{path}: not a readable safetensors file ({err})") from err


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], path: str | Path, what: str) -> None:
    """Load `state` into `module`; any missing, unexpected or mis-shaped tensor is an error naming the file."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        detail = []
        if missing:
            detail.append(f"missing {missing[:4]}{'...' if len(missing) > 4 else ''}")
        if unexpected:
            detail.append(f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}")
        if shapes:
            k = sorted(shapes)[0]
            detail.append(f"shape of {k!r}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}")
        raise TeacherWeightsError(f"{path}: does not match the {what} architecture ({'; '.join(detail)})")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


class Teacher(nn.Module):
    """Dense features (and, where it has a text tower, text embeddings) of a frozen foundation model."""

    kind: str = ""
    dim: int = 0
    has_text: bool = False

    def __init__(self, cfg: TeacherConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.weights_sha256 = file_sha256(cfg.weights) if cfg.weights and Path(cfg.weights).is_file() else None

    def identity(self) -> dict[str, Any]:
        """JSON-able description stored in cache manifests and checkpoints (which teacher, which weights)."""
        cfg = self.cfg
        ident: dict[str, Any] = {"kind": self.kind, "model": cfg.model, "dim": self.dim}
        if cfg.weights:
            ident.update(weights=str(Path(cfg.weights).resolve()), weights_sha256=self.weights_sha256)
        if cfg.model_config:
            ident["model_config"] = str(Path(cfg.model_config).resolve())
        if cfg.model_kwargs:
            ident["model_kwargs"] = dict(cfg.model_kwargs)
        if self.kind != "oracle":
            ident["input_hw"] = list(cfg.input_hw)
        if self.has_text:
            ident["templates"] = list(cfg.templates)
        return ident

    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> features (B, D, h, w)."""
        raise NotImplementedError(f"teacher {self.kind!r} computes features from images")

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """texts -> (Q, D) unit embeddings in the dense features' space."""
        raise ValueError(f"teacher {self.kind!r} ({self.cfg.model}) has no text encoder: a model distilled from it "
                         "cannot answer text queries (distil from CLIP or the oracle for that)")

    def known_texts(self) -> list[str] | None:
        """The only texts it can encode (the oracle's class names), None = open vocabulary."""
        return None
