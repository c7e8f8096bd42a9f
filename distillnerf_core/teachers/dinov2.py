"""DINOv2 teacher through timm: the patch tokens of any ViT-*/14 (e.g. vit_base_patch14_dinov2) as dense features.

The model is built with `timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True)`
(so any input aspect works; timm interpolates the positional embedding) and its state dict is read from the
user's local .safetensors file; a mismatch is an error naming the file. DINOv2 has no text tower: a model
distilled from it renders DINOv2 features but cannot answer text queries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distillnerf_core.teachers.base import Teacher, TeacherConfig, load_strict, read_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DinoV2Teacher(Teacher):
    """timm ViT-*/14: `dense_features` (B, D, h, w), the final-norm patch tokens (register tokens dropped)."""

    kind = "dinov2"
    has_text = False

    def __init__(self, cfg: TeacherConfig) -> None:
        super().__init__(cfg)
        import timm

        kwargs = {"num_classes": 0, "dynamic_img_size": True, **cfg.model_kwargs}
        try:
            self.vit = timm.create_model(cfg.model, pretrained=False, **kwargs)
        except RuntimeError as err:  # timm: "Unknown model"
            raise ValueError(f"timm cannot build {cfg.model!r}: {err}") from err
        load_strict(self.vit, read_weights(cfg.weights, f"DINOv2 {cfg.model}"), cfg.weights, f"timm {cfg.model}")
        self.vit.eval().requires_grad_(False)
        self.patch = int(self.vit.patch_embed.patch_size[0])
        if self.patch != 14:
            raise ValueError(f"timm model {cfg.model!r} has patch size {self.patch}; the DINOv2 teacher expects "
                             "a ViT-*/14")
        self.dim = int(self.vit.num_features)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def grid_hw(self) -> tuple[int, int]:
        h, w = self.cfg.input_hw
        return max(1, round(h / self.patch)), max(1, round(w / self.patch))

    @torch.no_grad()
    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        gh, gw = self.grid_hw()
        x = F.interpolate(images, size=(gh * self.patch, gw * self.patch), mode="bicubic", align_corners=False,
                          antialias=True).clamp(0, 1)
        tokens = self.vit.forward_features((x - self.mean) / self.std)[:, self.vit.num_prefix_tokens:]
        return tokens.float().transpose(1, 2).reshape(tokens.shape[0], -1, gh, gw)
