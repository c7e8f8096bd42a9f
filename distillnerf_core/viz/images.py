"""Small image helpers for tensorboard grids and evaluation PNGs (no matplotlib needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# A compact "turbo"-like colormap: 6 anchor colours interpolated linearly (near = red/yellow, far = blue).
_ANCHORS = torch.tensor([
    [0.99, 0.91, 0.14], [0.98, 0.55, 0.13], [0.83, 0.20, 0.20], [0.45, 0.12, 0.55], [0.15, 0.20, 0.60],
    [0.05, 0.05, 0.20],
])


def colorize_depth(depth: torch.Tensor, max_depth: float = 80.0) -> torch.Tensor:
    """(..., H, W) depth in metres -> (..., 3, H, W) RGB in [0, 1]; log-scaled, 0 / invalid = black."""
    d = depth.detach().float().cpu()
    valid = d > 0
    t = (torch.log1p(d.clamp(0, max_depth)) / np.log1p(max_depth)).clamp(0, 1)
    pos = t * (len(_ANCHORS) - 1)
    lo = pos.floor().long().clamp(0, len(_ANCHORS) - 2)
    frac = (pos - lo.float())[..., None]
    rgb = _ANCHORS[lo] * (1 - frac) + _ANCHORS[lo + 1] * frac
    rgb = rgb * valid[..., None]
    return rgb.movedim(-1, -3)


def upsample_to(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Nearest resize of (..., C, h, w) to (..., C, H, W)."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    lead = x.shape[:-3]
    flat = x.reshape(-1, *x.shape[-3:])
    return F.interpolate(flat.float(), size=hw, mode="nearest").reshape(*lead, x.shape[-3], *hw)


def camera_grid(rows: list[torch.Tensor], pad: int = 2) -> torch.Tensor:
    """Rows of (N, 3, H, W) images (same N, H, W) -> one (3, R*(H+pad), N*(W+pad)) image."""
    out = []
    for row in rows:
        row = F.pad(row.detach().float().cpu().clamp(0, 1), (0, pad, 0, pad), value=1.0)
        out.append(torch.cat(list(row), dim=-1))
    return torch.cat(out, dim=-2)


def save_png(image: torch.Tensor, path: str | Path) -> None:
    """(3, H, W) in [0, 1] -> PNG."""
    from PIL import Image

    arr = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
