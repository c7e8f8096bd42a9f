"""PCA of teacher features to the feature head's dimension, min-max normalised (the reference's recipe).

project:      x (..., D) -> y = ((x - mean) @ components - low) / (high - low)   (k-dim, ~[0, 1])
reconstruct:  y -> (y * (high - low) + low) @ components.T + mean                 (back in teacher space)

`low` / `high` are the smallest / largest PCA coordinate over the fitting set (one pair for all components,
so components keep their relative variance and the loss weighs them by it). The buffers live in the model
(`DistillNeRFModel.feature_pca`) and so in its safetensors checkpoint; the teacher's identity sits in the
model config (`feature_head.teacher`) and so in the JSON sidecar.

Text queries compare a rendered / voxel feature with a unit text embedding t by the cosine of its
reconstruction: cos(x_hat, t). This is computed in k dimensions (the text "projected with the PCA":
x_hat . t = c . (components.T t) + mean . t, and |x_hat|^2 = |c|^2 + 2 c . (components.T mean) + |mean|^2 for
orthonormal components), never materialising D-dim features per voxel.
"""

from __future__ import annotations

import torch
from torch import nn


class FeaturePCA(nn.Module):
    """PCA + min-max normalisation buffers: mean (D,), components (D, k), low (1,), high (1,)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        if not 0 < out_dim <= in_dim:
            raise ValueError(f"PCA to {out_dim} dims needs teacher features with at least that many channels "
                             f"(teacher has {in_dim}); lower feature_head.dim")
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("components", torch.eye(in_dim, out_dim))
        self.register_buffer("low", torch.zeros(1))
        self.register_buffer("high", torch.ones(1))

    @classmethod
    def fit(cls, samples: torch.Tensor, out_dim: int) -> tuple[FeaturePCA, torch.Tensor]:
        """Fit on (P, D) feature vectors; returns the PCA and each component's explained variance ratio (k,)."""
        if samples.dim() != 2 or samples.shape[0] < 2:
            raise ValueError(f"PCA needs (P >= 2, D) samples, got {tuple(samples.shape)}")
        x = samples.double()
        mean = x.mean(0)
        centred = x - mean
        cov = centred.T @ centred / (x.shape[0] - 1)
        evals, evecs = torch.linalg.eigh(cov)
        order = torch.argsort(evals, descending=True)[:out_dim]
        comps = evecs[:, order]
        # Deterministic sign: the largest-magnitude entry of each component is positive.
        signs = torch.sign(comps.gather(0, comps.abs().argmax(0, keepdim=True)))
        comps = comps * torch.where(signs == 0, torch.ones_like(signs), signs)
        coords = centred @ comps
        pca = cls(samples.shape[1], out_dim)
        pca.mean.copy_(mean.float())
        pca.components.copy_(comps.float())
        low, high = float(coords.min()), float(coords.max())
        pca.low.fill_(low)
        pca.high.fill_(high if high > low else low + 1.0)
        explained = evals[order].clamp(min=0) / evals.clamp(min=0).sum().clamp(min=1e-12)
        return pca, explained.float()

    def _span(self) -> torch.Tensor:
        return (self.high - self.low).clamp(min=1e-12)

    def project(self, x: torch.Tensor, channel_dim: int = -1) -> torch.Tensor:
        """Teacher features -> normalised k-dim PCA features, channels along `channel_dim`."""
        x = x.movedim(channel_dim, -1).float()
        y = ((x - self.mean) @ self.components - self.low) / self._span()
        return y.movedim(-1, channel_dim)

    def coords(self, y: torch.Tensor, channel_dim: int = -1) -> torch.Tensor:
        """Normalised features -> raw PCA coordinates (centred, unscaled)."""
        y = y.movedim(channel_dim, -1).float()
        return (y * self._span() + self.low).movedim(-1, channel_dim)

    def reconstruct(self, y: torch.Tensor, channel_dim: int = -1) -> torch.Tensor:
        """Normalised k-dim features -> D-dim teacher-space features."""
        c = self.coords(y, channel_dim).movedim(channel_dim, -1)
        return (c @ self.components.T + self.mean).movedim(-1, channel_dim)

    def cosine_to_text(self, y: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """cos(reconstruct(y), t) for normalised features y (V, k) and text embeddings (Q, D) -> (V, Q)."""
        c = self.coords(y)
        t = torch.nn.functional.normalize(text.float(), dim=-1)
        dots = c @ (self.components.T @ t.T) + (t @ self.mean)[None]
        mean_k = self.components.T @ self.mean
        norm2 = (c * c).sum(-1) + 2 * (c @ mean_k) + (self.mean * self.mean).sum()
        return dots / norm2.clamp(min=1e-12).sqrt()[:, None]
