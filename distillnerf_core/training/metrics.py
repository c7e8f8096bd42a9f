"""Evaluation metrics of the reference protocol.

PSNR = -10 log10(MSE) on images in [0, 1]; SSIM with data range 1, an 11x11 gaussian window (sigma 1.5),
C1 = (0.01)^2, C2 = (0.03)^2, 'valid' filtering (no padding), averaged over the map and channels.
Depth: AbsRel, SqRel, RMSE, RMSE-log, delta < 1.25 / 1.25^2 / 1.25^3 on pixels whose ground truth lies in
(min_depth, max_depth] (reference: (1e-3, 80]); predictions clipped to [min_depth, max_depth].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")


def psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image PSNR (dB) of (..., C, H, W) tensors in [0, 1]; MSE floored at 1e-10 (100 dB).

    `mask` (..., H, W) bool: only True pixels count (e.g. not the ego car's body).
    """
    err = (pred.float() - target.float()) ** 2
    if mask is None:
        mse = err.flatten(-3).mean(-1)
    else:
        m = mask.unsqueeze(-3).expand_as(err).float()
        mse = (err * m).flatten(-3).sum(-1) / m.flatten(-3).sum(-1).clamp_min(1.0)
    return -10.0 * torch.log10(mse.clamp_min(1e-10))


def resize_mask(mask: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """A (..., H, W) bool validity mask at (h, w): a cell is valid only if every pixel it covers is."""
    if tuple(mask.shape[-2:]) == tuple(hw):
        return mask.bool()
    lead = mask.shape[:-2]
    area = F.interpolate(mask.float().reshape(-1, 1, *mask.shape[-2:]), size=tuple(hw), mode="area")
    return (area > 0.999).reshape(*lead, *hw)


def _gaussian_window(size: int = 11, sigma: float = 1.5, device: torch.device | None = None) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2.0
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(pred: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5,
         data_range: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image SSIM of (B, C, H, W) tensors (differentiable). Images smaller than the window use a
    window of the image's smaller side (odd), so tiny test images still work. `mask` (B, H, W) bool: the SSIM
    map is averaged only over windows whose every pixel is True."""
    if pred.dim() == 3:
        return ssim(pred[None], target[None], window, sigma, data_range, None if mask is None else mask[None])[0]
    pred, target = pred.float(), target.float()
    c = pred.shape[1]
    size = min(window, pred.shape[-1], pred.shape[-2])
    size = size if size % 2 == 1 else size - 1
    g = _gaussian_window(size, sigma, pred.device)
    gx = g.view(1, 1, 1, size).expand(c, 1, 1, size)
    gy = g.view(1, 1, size, 1).expand(c, 1, size, 1)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(x, gx, groups=c), gy, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(pred), blur(target)
    sxx = blur(pred * pred) - mu_x**2
    syy = blur(target * target) - mu_y**2
    sxy = blur(pred * target) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    smap = num / den
    if mask is None:
        return smap.flatten(1).mean(-1)
    # 'valid' filtering: map pixel (i, j) is the window at image rows i..i+size-1; keep all-valid windows
    m = -F.max_pool2d(-mask.float().unsqueeze(1), size, stride=1)
    m = m.expand_as(smap)
    return (smap * m).flatten(1).sum(-1) / m.flatten(1).sum(-1).clamp_min(1.0)


def depth_metrics(pred: torch.Tensor, gt: torch.Tensor, min_depth: float = 1e-3, max_depth: float = 80.0,
                  mask: torch.Tensor | None = None) -> dict[str, float] | None:
    """The 7 standard depth metrics over all pixels with gt in (min_depth, max_depth] (and `mask`).

    Returns None when no pixel is valid (the caller skips the sample instead of averaging a NaN).
    """
    pred, gt = pred.double(), gt.double()
    valid = (gt > min_depth) & (gt <= max_depth)
    if mask is not None:
        valid &= mask
    if not bool(valid.any()):
        return None
    p = pred[valid].clamp(min_depth, max_depth)
    g = gt[valid]
    ratio = torch.maximum(p / g, g / p)
    return {
        "abs_rel": float(((p - g).abs() / g).mean()),
        "sq_rel": float(((p - g) ** 2 / g).mean()),
        "rmse": float(torch.sqrt(((p - g) ** 2).mean())),
        "rmse_log": float(torch.sqrt(((torch.log(p) - torch.log(g)) ** 2).mean())),
        "delta1": float((ratio < 1.25).double().mean()),
        "delta2": float((ratio < 1.25**2).double().mean()),
        "delta3": float((ratio < 1.25**3).double().mean()),
    }


class MeanAccumulator:
    """Running means of named scalars (per-sample metrics averaged over samples); NaN/None are skipped."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, value: float | None) -> None:
        if value is None or not math.isfinite(value):
            return
        self.sums[name] = self.sums.get(name, 0.0) + float(value)
        self.counts[name] = self.counts.get(name, 0) + 1

    def add_all(self, values: dict[str, float] | None, prefix: str = "") -> None:
        for k, v in (values or {}).items():
            self.add(prefix + k, v)

    def mean(self, name: str) -> float | None:
        return self.sums[name] / self.counts[name] if self.counts.get(name) else None

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}
