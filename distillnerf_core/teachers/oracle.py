"""The oracle teacher of the synthetic world: a fixed random unit embedding per semantic class.

Its dense feature at a pixel is the embedding of the pixel's ground-truth class plus a little Gaussian
noise; its "text" embedding of a class name is that same embedding. It stands in for CLIP where no CLIP
weights exist, exercising exactly the CLIP path (cache -> PCA -> distillation -> text queries) except for
the teacher, and makes zero-shot semantic occupancy measurable against the synthetic semantic voxels. It
knows only its class names: any other text is an error listing them.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from distillnerf_core.teachers.base import Teacher, TeacherConfig


def _normalise_name(text: str) -> str:
    return text.strip().lower().replace(" ", "_").replace("-", "_")


class OracleTeacher(Teacher):
    """Per-class unit embeddings (C, D): `features_from_semantics` for images, `encode_text` for names."""

    kind = "oracle"
    has_text = True

    def __init__(self, cfg: TeacherConfig) -> None:
        super().__init__(cfg)
        if not cfg.oracle_classes:
            raise ValueError("the oracle teacher needs its class names (oracle_classes); distillnerf-cache-features "
                             "reads them from the dataroot's gt/meta.json")
        self.classes = [_normalise_name(c) for c in cfg.oracle_classes]
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"oracle class names must be distinct, got {cfg.oracle_classes}")
        self.dim = int(cfg.oracle_dim)
        gen = torch.Generator().manual_seed(int(cfg.oracle_seed))
        self.register_buffer("embeddings", F.normalize(torch.randn(len(self.classes), self.dim, generator=gen), dim=-1))

    def identity(self) -> dict:
        cfg = self.cfg
        return {"kind": "oracle", "model": "oracle", "dim": self.dim, "classes": list(self.classes),
                "seed": int(cfg.oracle_seed), "noise": float(cfg.oracle_noise), "stride": int(cfg.oracle_stride)}

    def known_texts(self) -> list[str]:
        return list(self.classes)

    def features_from_semantics(self, semantics: np.ndarray | torch.Tensor, key: str) -> torch.Tensor:
        """(h, w) class ids -> (D, h, w) features; the noise is seeded by `key` (e.g. the image's token)."""
        sem = torch.as_tensor(np.asarray(semantics), dtype=torch.long)
        if sem.numel() and (int(sem.min()) < 0 or int(sem.max()) >= len(self.classes)):
            raise ValueError(f"semantic ids {int(sem.min())}..{int(sem.max())} outside the oracle's "
                             f"{len(self.classes)} classes")
        feats = self.embeddings[sem].permute(2, 0, 1)
        seed = int.from_bytes(hashlib.sha256(f"{self.cfg.oracle_seed}/{key}".encode()).digest()[:8], "little")
        gen = torch.Generator().manual_seed(seed & 0x7FFFFFFFFFFFFFFF)
        noise = torch.randn(feats.shape, generator=gen) * (self.cfg.oracle_noise / self.dim**0.5)
        return feats + noise

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        unknown = [t for t in texts if _normalise_name(t) not in self.classes]
        if unknown:
            raise ValueError(f"unknown queries {unknown}: this model was distilled from the oracle teacher, which "
                             f"knows only its class names: {', '.join(self.classes)}")
        index = torch.tensor([self.classes.index(_normalise_name(t)) for t in texts], dtype=torch.long)
        return self.embeddings[index]
