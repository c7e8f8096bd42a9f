"""Tiny randomly initialised teachers of the real architectures, saved as safetensors the way a user's real
weights would be (open_clip ViT config with small width / depth; timm ViT-S/14 DINOv2 with small width)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

CLIP_NAME = "tiny-test-ViT-14"
CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 56, "layers": 2, "width": 64, "patch_size": 14, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
DINO_NAME = "vit_small_patch14_dinov2"
DINO_KWARGS = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 56}


def save_tiny_clip(folder: Path, seed: int = 0, config: dict | None = None, name: str = CLIP_NAME) -> tuple[Path, Path]:
    """(model config JSON, weights .safetensors) of a random tiny open_clip model."""
    import open_clip

    folder.mkdir(parents=True, exist_ok=True)
    cfg_path = folder / f"{name}.json"
    cfg_path.write_text(json.dumps(config or CLIP_CONFIG))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(seed)
    model = open_clip.create_model(name, pretrained=None, pretrained_image=False, pretrained_text=False)
    weights = folder / f"{name}-{seed}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return cfg_path, weights


def save_tiny_dinov2(folder: Path, seed: int = 0) -> Path:
    import timm

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vit = timm.create_model(DINO_NAME, pretrained=False, num_classes=0, dynamic_img_size=True, **DINO_KWARGS)
    weights = folder / "tiny_dinov2.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(weights))
    return weights
