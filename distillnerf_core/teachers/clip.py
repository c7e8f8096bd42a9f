"""CLIP teacher through open_clip: MaskCLIP-style dense patch features and averaged-template text embeddings.

Dense features (MaskCLIP, Zhou et al. 2022): the image runs through every block but the last; of the last
block only the value path is kept, i.e. for each patch token x: out_proj(W_v ln_1(x)), then the tower's
ln_post and projection into the joint image-text embedding. The query-key attention of the last block
pools every token into the class token, which is what makes CLIP's own dense tokens unaligned with text;
the value path keeps each patch's own content in the space the text embeddings live in. (The last block's
residual and MLP are left out too, as in ClearCLIP, which found them to add noise to dense predictions.)

Positional embeddings are interpolated (bicubic) to the patch grid of `input_hw`, so non-square camera
images keep their aspect. Weights: the model is built with `open_clip.create_model(name, pretrained=None)`
(random initialisation, nothing downloaded) and its full state dict is read from the user's local
.safetensors file; any mismatch is an error naming the file. For OpenAI-trained weights use the
`-quickgelu` model names (e.g. ViT-L-14-336-quickgelu) so the activation matches.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from distillnerf_core.teachers.base import Teacher, TeacherConfig, load_strict, read_weights

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def build_open_clip(cfg: TeacherConfig, load_weights: bool = True) -> nn.Module:
    """The open_clip model `cfg.model` (its JSON config registered first when given) with local weights."""
    import open_clip

    if cfg.model_config:
        path = Path(cfg.model_config)
        if not path.is_file():
            raise FileNotFoundError(f"open_clip model config not found: {path}")
        if path.stem != cfg.model:
            raise ValueError(f"open_clip model config {path} defines model {path.stem!r}, not {cfg.model!r} "
                             "(open_clip names a JSON config by its file name)")
        open_clip.add_model_config(path)
    if cfg.model not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {cfg.model!r} (give --model-config JSON for a custom one)")
    model = open_clip.create_model(cfg.model, pretrained=None, pretrained_image=False, pretrained_text=False)
    if load_weights:
        load_strict(model, read_weights(cfg.weights, f"CLIP {cfg.model}"), cfg.weights, f"open_clip {cfg.model}")
    model.eval().requires_grad_(False)
    return model


class ClipTeacher(Teacher):
    """open_clip ViT: `dense_features` (B, D, h, w) and `encode_text` (Q, D), both unit-normalised."""

    kind = "clip"
    has_text = True

    def __init__(self, cfg: TeacherConfig) -> None:
        super().__init__(cfg)
        import open_clip

        self.model = build_open_clip(cfg)
        visual = self.model.visual
        if not hasattr(visual, "conv1") or getattr(visual, "attn_pool", None) is not None:
            raise ValueError(f"open_clip model {cfg.model!r}: MaskCLIP dense features need a plain ViT image "
                             "tower (no ResNet, timm or attention-pool tower)")
        last = visual.transformer.resblocks[-1]
        if not isinstance(last.attn, nn.MultiheadAttention) or last.attn.in_proj_weight is None:
            raise ValueError(f"open_clip model {cfg.model!r}: its last block has no packed q/k/v projection")
        self.patch = tuple(int(p) for p in visual.patch_size)
        self.dim = int(visual.output_dim)
        pp = getattr(visual, "preprocess_cfg", {}) or {}
        self.register_buffer("mean", torch.tensor(pp.get("mean", OPENAI_MEAN)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pp.get("std", OPENAI_STD)).view(1, 3, 1, 1), persistent=False)
        self.tokenizer = open_clip.get_tokenizer(cfg.model)

    def grid_hw(self) -> tuple[int, int]:
        """Patch grid of `input_hw` (rounded to whole patches)."""
        h, w = self.cfg.input_hw
        return max(1, round(h / self.patch[0])), max(1, round(w / self.patch[1]))

    def _positional(self, gh: int, gw: int) -> torch.Tensor:
        visual = self.model.visual
        pos = visual.positional_embedding
        g0, g1 = visual.grid_size
        if (gh, gw) == (g0, g1):
            return pos
        grid = pos[1:].reshape(1, g0, g1, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(gh, gw), mode="bicubic", align_corners=False)
        return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(gh * gw, -1).to(pos.dtype)])

    @torch.no_grad()
    def dense_features(self, images: torch.Tensor) -> torch.Tensor:
        visual = self.model.visual
        gh, gw = self.grid_hw()
        x = F.interpolate(images, size=(gh * self.patch[0], gw * self.patch[1]), mode="bicubic",
                          align_corners=False, antialias=True).clamp(0, 1)
        x = visual.conv1((x - self.mean) / self.std)
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = visual.ln_pre(torch.cat([cls, x], dim=1) + self._positional(gh, gw).to(x.dtype))
        transformer = visual.transformer
        blocks = transformer.resblocks
        x = x if transformer.batch_first else x.transpose(0, 1)
        for block in blocks[:-1]:
            x = block(x)
        x = x if transformer.batch_first else x.transpose(0, 1)
        last = blocks[-1]
        d = last.attn.embed_dim
        w_v = last.attn.in_proj_weight[2 * d:]
        b_v = last.attn.in_proj_bias[2 * d:] if last.attn.in_proj_bias is not None else None
        v = last.ls_1(last.attn.out_proj(F.linear(last.ln_1(x), w_v, b_v)))
        tokens = visual.ln_post(v[:, 1:]) @ visual.proj
        tokens = F.normalize(tokens.float(), dim=-1)
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, gh, gw)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        templates = self.cfg.templates
        prompts = [t.format(text) for text in texts for t in templates]
        device = self.model.visual.proj.device
        emb = F.normalize(self.model.encode_text(self.tokenizer(prompts).to(device)).float(), dim=-1)
        emb = emb.view(len(texts), len(templates), -1).mean(dim=1)
        return F.normalize(emb, dim=-1)
