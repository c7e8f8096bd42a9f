"""2D image encoders: a trainable FPN from scratch and an optional frozen pretrained ViT beside it.

The paper pairs a frozen DINOv2-based depth ViT with a trainable FPN. Pretrained weights are read from
a LOCAL safetensors file only; nothing is ever downloaded (timm models are built with pretrained=False).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class EncoderConfig:
    """2D image encoder: a trainable FPN (always) plus an optional frozen pretrained ViT beside it."""

    fpn_widths: list[int] = field(default_factory=lambda: [32, 64, 96, 128])
    """Channels of the FPN's four stages (strides 2, 4, 8, 16)."""
    out_channels: int = 64
    """Channels of the fused feature map handed to the lift."""
    vit_name: str | None = None
    """timm model name of the frozen ViT (e.g. "vit_base_patch14_dinov2"); None = FPN only."""
    vit_weights: str | None = None
    """LOCAL .safetensors file of the ViT; never downloaded. Required with `vit_name`."""
    vit_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra timm constructor kwargs (tiny test models set depth / width here)."""
    vit_channels: int = 128
    """Projection width of the ViT features (the paper's 128)."""



def _conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    groups = 8 if cout % 8 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(groups, cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.GroupNorm(groups, cout),
        nn.ReLU(inplace=True),
    )


class FPNEncoder(nn.Module):
    """Bottom-up conv stages at strides 2, 4, 8, ... and a top-down FPN merged at stride 2."""

    def __init__(self, widths: list[int], out_channels: int) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        cin = 3
        for width in widths:
            self.stages.append(_conv_block(cin, width, stride=2))
            cin = width
        self.laterals = nn.ModuleList(nn.Conv2d(w, out_channels, 1) for w in widths)
        self.smooth = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> features (B, out_channels, ~H/2, ~W/2)."""
        feats = []
        x = images
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        top = self.laterals[-1](feats[-1])
        for lateral, feat in zip(reversed(self.laterals[:-1]), reversed(feats[:-1]), strict=True):
            top = lateral(feat) + F.interpolate(top, size=feat.shape[-2:], mode="bilinear", align_corners=False)
        return self.smooth(top)


VIT_KWARGS_ALLOWED = frozenset({
    "img_size", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "qk_norm",
    "init_values", "class_token", "no_embed_class", "reg_tokens", "pre_norm", "fc_norm", "global_pool",
    "dynamic_img_pad", "drop_rate", "pos_drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate",
})
"""Architecture keys a checkpoint's `vit_kwargs` may pass to timm. Anything else (`checkpoint_path`,
`pretrained`, `pretrained_cfg*`, `cache_dir`, ...) could make timm read or unpickle a file, so it is refused
before timm is called: weights come only from `vit_weights` (safetensors)."""


def check_vit_kwargs(kwargs: dict[str, Any]) -> None:
    """ValueError naming every key of `kwargs` outside VIT_KWARGS_ALLOWED."""
    refused = sorted(set(kwargs) - VIT_KWARGS_ALLOWED)
    if refused:
        raise ValueError(f"encoder.vit_kwargs {refused} not allowed (allowed: {sorted(VIT_KWARGS_ALLOWED)});"
                         " pretrained weights come only from encoder.vit_weights (safetensors)")


class PretrainedViT(nn.Module):
    """Frozen timm ViT (DINOv2-style) whose patch tokens become a dense feature map.

    Weights come from `weights_path` (safetensors). `load_weights=False` builds the architecture only,
    for when a DistillNeRF checkpoint already carries the weights.
    """

    def __init__(
        self,
        name: str,
        weights_path: str,
        out_channels: int,
        timm_kwargs: dict | None = None,
        load_weights: bool = True,
    ) -> None:
        super().__init__()
        import timm  # optional dependency, only needed for this encoder

        check_vit_kwargs(timm_kwargs or {})
        kwargs = {"num_classes": 0, "dynamic_img_size": True}
        kwargs.update(timm_kwargs or {})
        self.vit = timm.create_model(name, pretrained=False, **kwargs)
        if load_weights:
            self.vit.load_state_dict(load_safetensors_state_dict(weights_path))
        self.vit.requires_grad_(False)
        self.vit.eval()
        self.patch = int(self.vit.patch_embed.patch_size[0])
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.proj = nn.Conv2d(self.vit.num_features, out_channels, 1)

    def train(self, mode: bool = True) -> PretrainedViT:
        super().train(mode)
        self.vit.eval()  # frozen: never switch dropout / norm statistics to training
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> projected patch features (B, out_channels, H/p, W/p)."""
        h, w = images.shape[-2:]
        gh, gw = max(1, round(h / self.patch)), max(1, round(w / self.patch))
        x = F.interpolate(images, size=(gh * self.patch, gw * self.patch), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        with torch.no_grad():
            tokens = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens :]
        grid = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, gh, gw)
        return self.proj(grid)


def load_safetensors_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a local safetensors file, with errors that name the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained encoder weights not found: {path} (weights are never downloaded)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"cannot read pretrained encoder weights {path}: {err}") from err


class ImageEncoder(nn.Module):
    """FPN features, plus frozen-ViT features when configured, fused at the requested resolution."""

    def __init__(self, cfg: EncoderConfig, load_pretrained: bool = True) -> None:
        super().__init__()
        self.fpn = FPNEncoder(cfg.fpn_widths, cfg.out_channels)
        self.vit: PretrainedViT | None = None
        self.out_channels = cfg.out_channels
        if cfg.vit_name is not None:
            self.vit = PretrainedViT(
                cfg.vit_name, cfg.vit_weights, cfg.vit_channels, cfg.vit_kwargs, load_weights=load_pretrained
            )
            self.fuse = nn.Conv2d(cfg.out_channels + cfg.vit_channels, cfg.out_channels, 1)

    def forward(self, images: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
        """images (B, 3, H, W) -> features (B, out_channels, *out_hw)."""
        feats = F.interpolate(self.fpn(images), size=out_hw, mode="bilinear", align_corners=False)
        if self.vit is not None:
            vit = F.interpolate(self.vit(images), size=out_hw, mode="bilinear", align_corners=False)
            feats = self.fuse(torch.cat([feats, vit], dim=1))
        return feats
