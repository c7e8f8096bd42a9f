"""2D image encoders: a trainable FPN from scratch and an optional frozen pretrained 2D branch beside it.

The paper pairs a frozen DINOv2-based depth ViT with a trainable FPN. Two frozen branches can take the ViT's
place: a timm ViT (`encoder.vit_name`) or the shipped real-trained ESPNetv2 Cityscapes segmenter
(`encoder.frozen_2d: segmenter`, `FrozenSegmenterBranch`). Pretrained weights are read from a LOCAL
safetensors file only; nothing is ever downloaded (timm models are built with pretrained=False).
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
    frozen_2d: str | None = None
    """A frozen real-trained 2D branch fused with the FPN: "segmenter" (the shipped ESPNetv2 Cityscapes
    segmenter's multi-scale decoder maps) or None. An alternative to `vit_name` (not both)."""
    frozen_2d_weights: str | None = None
    """LOCAL .safetensors file of the frozen branch; None = the segmenter weights shipped with the package. The
    weights are not stored in model.safetensors: they are read from this file whenever the model is built."""
    frozen_2d_sha256: str | None = None
    """sha256 of those weights: recorded when the model is first built, verified whenever it is built again
    (a checkpoint whose frozen weights changed under it is refused)."""
    frozen_2d_width: int = 0
    """Input width of the frozen branch (a multiple of 16, aspect kept); 0 = the model's image width rounded
    to a multiple of 16 (cheap; the segmenter was trained at 1024 wide)."""
    frozen_2d_channels: int = 32
    """Projection width of the frozen branch's features before the fusion with the FPN."""



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


FROZEN_2D_KINDS = ("segmenter",)
SEGMENTER_MAP_CHANNELS = (64, 48, 32, 32, 20)
"""Channels of the segmenter maps the frozen branch fuses: its decoder at H/16, H/8, H/4, the penultimate map
(H/2) and the class log-probabilities (H/2) (`ESPNetv2Segmentation.decoder_maps`)."""


def check_frozen_2d(cfg: EncoderConfig) -> None:
    """ValueError naming the field when the frozen-branch settings are unusable."""
    if cfg.frozen_2d is None:
        return
    if cfg.frozen_2d not in FROZEN_2D_KINDS:
        raise ValueError(f"encoder.frozen_2d must be one of {list(FROZEN_2D_KINDS)} or null, got {cfg.frozen_2d!r}")
    if cfg.vit_name is not None:
        raise ValueError("encoder.frozen_2d and encoder.vit_name are alternatives (one frozen 2D branch): "
                         f"got frozen_2d={cfg.frozen_2d!r} and vit_name={cfg.vit_name!r}")
    if cfg.frozen_2d_width < 0 or cfg.frozen_2d_width % 16:
        raise ValueError(f"encoder.frozen_2d_width must be 0 (the image width) or a positive multiple of 16, "
                         f"got {cfg.frozen_2d_width}")
    if cfg.frozen_2d_channels < 1:
        raise ValueError(f"encoder.frozen_2d_channels must be >= 1, got {cfg.frozen_2d_channels}")


def _state_dict_without_frozen(module: nn.Module, state_dict: dict, prefix: str, _: Any) -> None:
    """State-dict post-hook of FrozenSegmenterBranch: drop the frozen network's tensors (they come from its file)."""
    for key in [k for k in state_dict if k.startswith(f"{prefix}net.")]:
        del state_dict[key]


class FrozenSegmenterBranch(nn.Module):
    """The shipped ESPNetv2 Cityscapes segmenter, frozen, as a multi-scale 2D feature extractor.

    Its decoder maps (H/16 .. H/2) and class log-probabilities are resized to the lift's grid, concatenated and
    projected by a trainable 1x1 conv (`proj`). The network stays in eval mode (its BatchNorm statistics never
    move) and without gradients. Its weights are NOT part of the model's state dict: they are read (strictly)
    from `weights` every time the model is built and checked against the sha256 the config recorded; a state
    dict that does carry them must hold exactly these values.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        from distillnerf_core.checked_files import sha256_file
        from distillnerf_core.teachers.base import load_strict, read_weights
        from distillnerf_core.teachers.segmenter import (
            IMAGENET_MEAN,
            IMAGENET_STD,
            ESPNetv2Segmentation,
            default_weights_path,
        )

        path = Path(cfg.frozen_2d_weights) if cfg.frozen_2d_weights else default_weights_path()
        digest = sha256_file(path) if path.is_file() else None
        if cfg.frozen_2d_sha256 and digest is not None and digest != cfg.frozen_2d_sha256:
            raise ValueError(f"encoder.frozen_2d weights {path} have sha256 {digest}, the model was built with "
                             f"{cfg.frozen_2d_sha256}: not the frozen branch this model was trained with")
        net = ESPNetv2Segmentation()
        load_strict(net, read_weights(path, "frozen 2D branch (ESPNetv2 segmenter)"), path,
                    "ESPNetv2 (s=2.0, 20 classes)")
        cfg.frozen_2d_sha256 = digest  # recorded in the model config, so checkpoints name their frozen weights
        self.net = net.eval().requires_grad_(False)
        self.width = cfg.frozen_2d_width
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.proj = nn.Conv2d(sum(SEGMENTER_MAP_CHANNELS), cfg.frozen_2d_channels, 1)
        self.register_state_dict_post_hook(_state_dict_without_frozen)
        self.register_load_state_dict_pre_hook(self._frozen_from_file)

    def _frozen_from_file(self, module: nn.Module, state_dict: dict, prefix: str, *_: Any) -> None:
        """Load pre-hook: the frozen tensors come from the file, not from the state dict. A state dict that
        carries them (a strict load of a checkpoint that saved them) must hold exactly the file's values."""
        for key, value in self.net.state_dict().items():
            name = f"{prefix}net.{key}"
            if name in state_dict and not torch.equal(state_dict[name].to(value.device, value.dtype), value):
                raise ValueError(f"{name}: the state dict's frozen segmenter tensor differs from the weights file")
            state_dict[name] = value

    def train(self, mode: bool = True) -> FrozenSegmenterBranch:
        super().train(mode)
        self.net.eval()  # frozen: BatchNorm statistics must never move (they would in train mode, even no_grad)
        return self

    def input_hw(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """(h, w) the segmenter runs at: `width` (0 = the image width) rounded to 16, aspect kept."""
        from distillnerf_core.teachers.segmenter import segmenter_input_hw

        return segmenter_input_hw(image_hw, self.width or int(image_hw[1]))

    def forward(self, images: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> projected features (B, frozen_2d_channels, *out_hw)."""
        hw = self.input_hw(tuple(images.shape[-2:]))
        with torch.no_grad():
            x = images
            if tuple(x.shape[-2:]) != hw:
                down = hw[0] < x.shape[-2] or hw[1] < x.shape[-1]
                x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=down)
            x = ((x - self.mean) / self.std).contiguous()
            *maps, logits = self.net.decoder_maps(x)
            maps.append(torch.log_softmax(logits, dim=1))
            maps = [F.interpolate(m, size=out_hw, mode="bilinear", align_corners=False) for m in maps]
            stacked = torch.cat(maps, dim=1)
        return self.proj(stacked)


class ImageEncoder(nn.Module):
    """FPN features, plus frozen-branch (ViT or segmenter) features when configured, fused at the requested
    resolution."""

    def __init__(self, cfg: EncoderConfig, load_pretrained: bool = True) -> None:
        super().__init__()
        check_frozen_2d(cfg)
        self.fpn = FPNEncoder(cfg.fpn_widths, cfg.out_channels)
        self.vit: PretrainedViT | None = None
        self.frozen_2d: FrozenSegmenterBranch | None = None
        self.out_channels = cfg.out_channels
        if cfg.vit_name is not None:
            self.vit = PretrainedViT(
                cfg.vit_name, cfg.vit_weights, cfg.vit_channels, cfg.vit_kwargs, load_weights=load_pretrained
            )
            self.fuse = nn.Conv2d(cfg.out_channels + cfg.vit_channels, cfg.out_channels, 1)
        if cfg.frozen_2d is not None:
            # the segmenter's weights are read from their file even when a checkpoint follows: it does not hold them
            self.frozen_2d = FrozenSegmenterBranch(cfg)
            self.fuse = nn.Conv2d(cfg.out_channels + cfg.frozen_2d_channels, cfg.out_channels, 1)
            # The fusion starts as the identity on the FPN and zero on the branch: a model initialised from a
            # checkpoint without the branch (`--init ... --init-fresh encoder.frozen_2d,encoder.fuse`) starts out
            # computing exactly what that checkpoint did, and the branch's share grows as it trains.
            with torch.no_grad():
                self.fuse.weight.zero_()
                self.fuse.weight[:, : cfg.out_channels, 0, 0].copy_(torch.eye(cfg.out_channels))
                self.fuse.bias.zero_()

    def forward(self, images: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
        """images (B, 3, H, W) -> features (B, out_channels, *out_hw)."""
        feats = F.interpolate(self.fpn(images), size=out_hw, mode="bilinear", align_corners=False)
        if self.vit is not None:
            vit = F.interpolate(self.vit(images), size=out_hw, mode="bilinear", align_corners=False)
            feats = self.fuse(torch.cat([feats, vit], dim=1))
        if self.frozen_2d is not None:
            feats = self.fuse(torch.cat([feats, self.frozen_2d(images, out_hw)], dim=1))
        return feats
