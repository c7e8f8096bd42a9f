"""Decoders from the rendered field: an RGB CNN (per-camera conditioned) and a foundation-feature head.

The RGB decoder turns the low-resolution rendered feature image into full-resolution RGB with one 2x
upsample; group norm is modulated by a learned per-camera embedding so each physical camera can learn
its own colour response. The feature head is a per-sample MLP applied before compositing, so the
rendered D-dim image is a proper volume rendering of a feature field (CLIP / DINOv2 distillation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DecoderConfig:
    """2D CNN from the rendered feature image to full-resolution RGB, conditioned per camera."""

    width: int = 160
    """Channels of the decoder blocks."""
    num_blocks: int = 2
    """Camera-conditioned residual blocks."""
    groups: int = 8
    """GroupNorm groups."""
    camera_embed_dim: int = 32
    """Width of the learned per-camera embedding."""
    num_camera_embeddings: int = 16
    """Distinct camera ids the decoder can condition on (rigs with more cameras need more)."""


@dataclass
class FeatureHeadConfig:
    """Per-sample MLP rendering a D-dim foundation-feature image (CLIP / DINOv2 distillation)."""

    enabled: bool = True
    """Render the feature image at all."""
    dim: int = 64
    """Feature channels (the PCA-reduced teacher dimension)."""
    hidden: int = 64
    """Hidden width of the MLP."""
    teacher_dim: int = 0
    """Channels of the teacher features distilled into the head (the PCA's input); 0 = not distilled, no PCA."""
    teacher: dict[str, Any] = field(default_factory=dict)
    """Identity of that teacher (kind, model, weights sha256, settings; `teachers/base.py`), set by training."""


class CameraGroupNorm(nn.Module):
    """GroupNorm whose scale and shift come from a camera embedding."""

    def __init__(self, groups: int, channels: int, embed_dim: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, affine=False)
        self.affine = nn.Linear(embed_dim, 2 * channels)

    def forward(self, x: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        scale, shift = self.affine(embed)[:, :, None, None].chunk(2, dim=1)
        return self.norm(x) * (1 + scale) + shift


class ConditionedBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int, embed_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = CameraGroupNorm(groups, cout, embed_dim)

    def forward(self, x: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x), embed))


class RGBDecoder(nn.Module):
    """(B*M, C, h, w) rendered features -> (B*M, 3, H, W) RGB in [0, 1]."""

    def __init__(self, cfg: DecoderConfig, in_channels: int) -> None:
        super().__init__()
        self.num_embeddings = cfg.num_camera_embeddings
        self.embed = nn.Embedding(cfg.num_camera_embeddings, cfg.camera_embed_dim)
        self.inp = ConditionedBlock(in_channels, cfg.width, cfg.groups, cfg.camera_embed_dim)
        self.low = nn.ModuleList(
            ConditionedBlock(cfg.width, cfg.width, cfg.groups, cfg.camera_embed_dim) for _ in range(cfg.num_blocks)
        )
        self.high = ConditionedBlock(cfg.width, cfg.width // 2, cfg.groups, cfg.camera_embed_dim)
        self.out = nn.Conv2d(cfg.width // 2, 3, 3, padding=1)

    def check_camera_ids(self, camera_ids: torch.Tensor, max_id: int | None = None) -> None:
        """ValueError for an id without an embedding (kept out of `forward`: the host sync would break its
        torch.compile graph). `max_id`: the ids' maximum where the host knows it (no read from the device)."""
        largest = int(camera_ids.max()) if max_id is None else max_id
        if largest >= self.num_embeddings:
            raise ValueError(
                f"camera id {largest} >= decoder.num_camera_embeddings "
                f"({self.num_embeddings}); raise it in the config"
            )

    def forward(self, feats: torch.Tensor, camera_ids: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
        """`check_camera_ids` first: an id out of range fails inside the embedding lookup here."""
        embed = self.embed(camera_ids)
        x = self.inp(feats, embed)
        for block in self.low:
            x = x + block(x, embed)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        x = self.high(x, embed)
        if x.shape[-2:] != tuple(out_hw):
            x = F.interpolate(x, size=out_hw, mode="bilinear", align_corners=False)
        return torch.sigmoid(self.out(x))


class FeatureHead(nn.Module):
    """Per-sample MLP mapping field features to the D-dim foundation-feature space."""

    def __init__(self, cfg: FeatureHeadConfig, in_channels: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_channels, cfg.hidden), nn.ReLU(inplace=True), nn.Linear(cfg.hidden, cfg.dim)
        )

    def forward(self, sample_features: torch.Tensor) -> torch.Tensor:
        return self.mlp(sample_features)
