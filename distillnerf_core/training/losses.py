"""Self-supervised training losses (reference weights in `LossConfig`), each term returned for logging.

    rgb_l1        L1 between decoded RGB and the target images ([0, 1])
    rgb_ssim      1 - SSIM (gaussian 11x11, sigma 1.5), the local structural term used in place of LPIPS
                  when no local VGG weights file is given (LPIPS is never downloaded)
    lidar_coarse  LiDAR depth on the coarse lift depth;  lidar_render  ... on the volume-rendered depth:
                  both clamped to [1e-5, 80] m, divided by 80, MSE + 0.1 L1 over valid (> 0) pixels only
    dense_coarse / dense_render  dense depth (synthetic GT now, NeRF-distilled depth later): clamped to 120 m,
                  pixels whose target is < 50 m normalised by 50, the rest by 120, MSE + 0.1 L1. Dense GT of 0
                  (sky / no surface) becomes `dense_sky_depth` (the reference gives sky 115 m); None skips it
    nerf_coarse / nerf_render  the dense-depth loss above (same normalisation, sky = 0 -> dense_sky_depth) against
                  a per-scene field's rendered depth (`batch["nerf_depth"]`, DataConfig.nerf_targets)
    sky           with `batch["sky_mask"]` (the segmenter's sky, DataConfig.sky_mask; data/sky.py) those pixels get
                  the target dense_sky_depth in the dense-depth terms, as the reference does: in dense_* and
                  nerf_* (overriding the GT / field depth there), and where a sample has neither (real data: LiDAR
                  only) dense_coarse / dense_render are computed on the sky pixels alone (the only dense target
                  there is), weighted as in the reference's per-pixel mean: the mean over the sky pixels times their
                  share of the valid rays. A sky pixel with a LiDAR return keeps no sky target (the return is a
                  measured surface: the segmenter is wrong there, or the cell holds a thin structure in front)
    virtual_rgb / virtual_depth  with probability `virtual_prob` per camera per step, one of the field's
                  virtual cameras (shifted in the camera's frame) rendered by the model from the same encoding:
                  RGB L1 and the dense-depth loss against the field's renders (`virtual` argument, the trainer)
    entropy       mean entropy of the normalised ray-sample weights (peaky rays)
    opacity       BCE of the accumulated opacity against 1 (every ray hits something; sky is far, not empty)
    nvs_l1        optional: L1 on the NEXT keyframe's cameras rendered from the current frame
    neighbour_rgb_l1 / neighbour_rgb_ssim / neighbour_lidar / neighbour_sky  with data.neighbour_targets: a
                  neighbouring keyframe's cameras (poses through the ego poses) rendered from the current frame's
                  encoding (`neighbour` argument, the trainer), scored as the current frame is: RGB L1 and
                  1 - SSIM against its images, the LiDAR loss on the rendered depth against ITS sweep, and the
                  sky depth target on its segmenter sky (batch neighbour_sky_mask; weighted by the sky's share of
                  the valid rays, as the sky-only dense term above; a sky pixel with a return keeps none).
                  Samples without a neighbour (has_neighbour False) are left out
    feature       MSE between the rendered feature image and the teacher's cached features, PCA-projected and
                  min-max normalised by the model's stored PCA (`batch["feature_target"]`, set by the trainer)

All depths are camera z-depths at the render resolution (what the model and the dataset both give).
Pixels where `batch["masks"]` is 0 (the ego car's own body) are left out of every term above; at the render
resolution a ray counts only if every image pixel it covers is valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from distillnerf_core.training.metrics import resize_mask
from distillnerf_core.training.metrics import ssim as ssim_fn


@dataclass
class LossConfig:
    """Weights of every term (0 disables it) and the reference's normalisation constants."""

    rgb_l1: float = 1.0
    """L1 between rendered and input RGB."""
    rgb_ssim: float = 0.2
    """1 - SSIM between rendered and input RGB."""
    lpips: float = 0.0
    """LPIPS (VGG); > 0 needs `lpips_vgg_weights`."""
    lpips_vgg_weights: str | None = None
    """LOCAL VGG16 .safetensors file for LPIPS; never downloaded."""
    lidar_coarse: float = 10.0
    """LiDAR depth loss on the lift's coarse depth."""
    lidar_render: float = 10.0
    """LiDAR depth loss on the rendered depth."""
    lidar_max_depth: float = 80.0
    """LiDAR loss clamps and normalises depth by this (m)."""
    dense_coarse: float = 10.0
    """Dense-depth loss on the lift's coarse depth (where the sample has dense depth)."""
    dense_render: float = 10.0
    """Dense-depth loss on the rendered depth."""
    dense_near: float = 50.0
    """Dense targets closer than this (m) are normalised by it..."""
    dense_far: float = 120.0
    """...the rest by this, which also clamps both sides (m)."""
    dense_sky_depth: float | None = 115.0
    """Depth (m) given to pixels without a dense target (sky) and to the segmenter's sky pixels (batch sky_mask);
    None: no sky target (dense zeros left out, the sky mask unused)."""
    nerf_coarse: float = 10.0
    """Dense-depth loss against the per-scene field's depth on the coarse depth (where the batch has nerf_depth)."""
    nerf_render: float = 10.0
    """Dense-depth loss against the per-scene field's depth on the rendered depth."""
    virtual_prob: float = 0.0
    """Probability, per camera and step, of adding one random virtual camera of the field as a target."""
    virtual_rgb: float = 1.0
    """L1 between the model's render of a virtual camera and the field's RGB there."""
    virtual_depth: float = 10.0
    """Dense-depth loss between the model's virtual-camera depth and the field's."""
    entropy: float = 0.01
    """Entropy of the ray weights (pushes each ray towards one surface)."""
    opacity: float = 0.1
    """-log(opacity): every ray should end on something."""
    nvs_l1: float = 0.0
    """L1 on the next keyframe's cameras rendered from this frame (novel views; loads the next keyframe)."""
    neighbour_rgb_l1: float = 1.0
    """L1 on a neighbouring keyframe's cameras rendered from this frame (only with data.neighbour_targets)."""
    neighbour_rgb_ssim: float = 0.2
    """1 - SSIM on the neighbour's rendered cameras."""
    neighbour_lidar: float = 10.0
    """LiDAR depth loss of the neighbour's rendered depth against the neighbour's own sweep."""
    neighbour_sky: float = 10.0
    """Sky depth target (dense_sky_depth) on the neighbour's segmenter sky pixels (needs a sky mask)."""
    l1_ratio: float = 0.1
    """Depth losses are MSE + l1_ratio * L1."""
    feature: float | None = None
    """Foundation-feature distillation (MSE in PCA space); None = 10 with data.features set, else 0."""


def _mse_l1(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, l1_ratio: float) -> torch.Tensor:
    """MSE + l1_ratio * L1 over valid pixels; exactly 0 (with a graph) when nothing is valid."""
    valid = valid & torch.isfinite(target)
    if not bool(valid.any()):
        return pred.sum() * 0.0
    diff = pred[valid] - target[valid]
    return (diff**2).mean() + l1_ratio * diff.abs().mean()


def lidar_depth_loss(pred: torch.Tensor, target: torch.Tensor, max_depth: float = 80.0,
                     l1_ratio: float = 0.1) -> torch.Tensor:
    """Reference LiDAR loss: clamp both to [1e-5, max_depth], divide by max_depth, MSE + 0.1 L1 where target > 0."""
    valid = target > 0
    p = pred.clamp(1e-5, max_depth) / max_depth
    t = target.clamp(1e-5, max_depth) / max_depth
    return _mse_l1(p, t, valid, l1_ratio)


def dense_depth_loss(pred: torch.Tensor, target: torch.Tensor, near: float = 50.0, far: float = 120.0,
                     sky_depth: float | None = 115.0, l1_ratio: float = 0.1) -> torch.Tensor:
    """Reference dense-depth loss: clamp to `far`; target < near: both / near, else both / far; MSE + 0.1 L1."""
    target = target.clone()
    if sky_depth is not None:
        target[target <= 0] = sky_depth
    valid = target > 0
    t = target.clamp(max=far)
    p = pred.clamp(1e-5, far)
    scale = torch.where(t < near, torch.full_like(t, near), torch.full_like(t, far))
    return _mse_l1(p / scale, t / scale, valid, l1_ratio)


def with_sky(target: torch.Tensor | None, sky: torch.Tensor, sky_depth: float) -> torch.Tensor:
    """A dense target with the sky pixels set to `sky_depth`; `target` None = no target (NaN) but the sky."""
    base = torch.full(sky.shape, float("nan"), device=sky.device) if target is None else target
    return torch.where(sky, torch.full_like(base, sky_depth), base)


def _masked_mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of `values` over True entries of `valid` (same shape); 0 with a graph when none is valid."""
    if valid is None:
        return values.mean()
    return (values * valid).sum() / valid.sum().clamp_min(1)


def weight_entropy_loss(weights: torch.Tensor, eps: float = 1e-10, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over (valid) rays of -sum p log p with p = w / sum(w) along the last dim (samples)."""
    p = weights / weights.sum(-1, keepdim=True).clamp_min(eps)
    return _masked_mean(-(p * torch.log(p.clamp_min(eps))).sum(-1), valid)


def opacity_loss(opacity: torch.Tensor, eps: float = 1e-5, valid: torch.Tensor | None = None) -> torch.Tensor:
    """BCE(opacity, 1) = -log(opacity), opacity clamped to [eps, 1 - eps], over (valid) rays."""
    return _masked_mean(-torch.log(opacity.clamp(eps, 1.0 - eps)), valid)


def rgb_l1_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error of (..., 3, H, W) images over pixels where `valid` (..., H, W) is True."""
    return _masked_mean((pred - target).abs(), None if valid is None else valid.unsqueeze(-3).expand_as(pred))


def rgb_ssim_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """1 - mean SSIM over images; pred/target (..., 3, H, W); windows centred on invalid pixels are skipped."""
    mask = None if valid is None else valid.flatten(0, -3)
    return 1.0 - ssim_fn(pred.flatten(0, -4), target.flatten(0, -4), mask=mask).mean()


class LPIPSVGG(torch.nn.Module):
    """LPIPS-style perceptual distance on a VGG16 trunk loaded ONLY from a local torchvision weights file.

    Without the learned LPIPS linear heads this is the unweighted variant (channel-normalised feature
    differences averaged over the 5 VGG stages). Raises FileNotFoundError when the file is missing.
    """

    def __init__(self, weights_path: str) -> None:
        super().__init__()
        from pathlib import Path

        from safetensors.torch import load_file
        from torchvision.models import vgg16

        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(f"LPIPS VGG weights not found: {path} (they are never downloaded)")
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: only .safetensors VGG weights are loaded (no pickle)")
        net = vgg16(weights=None)
        net.load_state_dict(load_file(str(path)))
        self.features = net.features.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        self.taps = {3, 8, 15, 22, 29}
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x, y = (pred - self.mean) / self.std, (target - self.mean) / self.std
        total = pred.new_zeros(())
        for i, layer in enumerate(self.features):
            x, y = layer(x), layer(y)
            if i in self.taps:
                nx = x / (x.norm(dim=1, keepdim=True) + 1e-10)
                ny = y / (y.norm(dim=1, keepdim=True) + 1e-10)
                total = total + ((nx - ny) ** 2).sum(1).mean()
            if i >= max(self.taps):
                break
        return total


class DistillNeRFLoss(torch.nn.Module):
    """Weighted sum of the terms above. `forward` returns (total, {term: unweighted value})."""

    def __init__(self, cfg: LossConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or LossConfig()
        self.lpips = None
        if self.cfg.lpips > 0:
            if not self.cfg.lpips_vgg_weights:
                raise ValueError("loss.lpips > 0 needs loss.lpips_vgg_weights (a local VGG16 .safetensors file; "
                                 "weights are never downloaded); set loss.lpips to 0 to train without LPIPS")
            self.lpips = LPIPSVGG(self.cfg.lpips_vgg_weights)

    def forward(self, out: Any, batch: dict[str, Any], nvs_rgb: torch.Tensor | None = None,
                virtual: dict[str, torch.Tensor] | None = None, neighbour: dict[str, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`virtual`: rgb (B, N, 3, H, W) and depth (B, N, h, w) of the model's virtual-camera renders, `choice`
        (B, N) which of the field's V virtual cameras each is, `selected` (B, N) bool which cameras count.
        `neighbour`: rgb (B, N, 3, H, W) and depth (B, N, h, w) of the model's renders of the batch's
        neighbour_* cameras."""
        cfg = self.cfg
        terms: dict[str, torch.Tensor] = {}
        images = batch["images"]
        pred = out.rgb.float()
        # (B, N, H, W) False on the ego car's body; valid_r: the same at the render size (None: all valid)
        valid = batch["masks"] > 0.5 if "masks" in batch else None
        valid_r = None if valid is None else resize_mask(valid, tuple(out.depth.shape[-2:]))
        if cfg.rgb_l1:
            terms["rgb_l1"] = rgb_l1_loss(pred, images, valid)
        if cfg.rgb_ssim:
            terms["rgb_ssim"] = rgb_ssim_loss(pred, images, valid)
        if self.lpips is not None:
            # masked target pixels take the prediction's value (no error there, no gradient through it)
            target = images if valid is None else torch.where(valid.unsqueeze(2), images, pred.detach())
            terms["lpips"] = self.lpips(pred.flatten(0, 1), target.flatten(0, 1))
        lidar = batch.get("lidar_depth")
        if lidar is not None and valid_r is not None:
            lidar = torch.where(valid_r, lidar, torch.zeros_like(lidar))  # 0 = no target
        if lidar is not None:
            if cfg.lidar_coarse and out.coarse_depth is not None:
                terms["lidar_coarse"] = lidar_depth_loss(out.coarse_depth.float(), lidar, cfg.lidar_max_depth,
                                                         cfg.l1_ratio)
            if cfg.lidar_render:
                terms["lidar_render"] = lidar_depth_loss(out.depth.float(), lidar, cfg.lidar_max_depth, cfg.l1_ratio)
        dense = batch.get("dense_depth")
        nerf = batch.get("nerf_depth")
        sky = batch.get("sky_mask")
        share = None  # sky-only dense target: the sky pixels' share of the valid rays
        if sky is not None and cfg.dense_sky_depth is not None:
            if lidar is not None:
                sky = sky & ~(lidar > 0)
            if nerf is not None:
                nerf = with_sky(nerf, sky, cfg.dense_sky_depth)
            if dense is None and nerf is None:  # without any dense target the sky is the dense target
                in_view = sky if valid_r is None else sky & valid_r
                rays = valid_r.sum() if valid_r is not None else torch.tensor(sky.numel(), device=sky.device)
                share = in_view.sum() / rays.clamp_min(1)
            if dense is not None or nerf is None:
                dense = with_sky(dense, sky, cfg.dense_sky_depth)
        if dense is not None and valid_r is not None:
            dense = torch.where(valid_r, dense, torch.full_like(dense, float("nan")))  # NaN = no target (not sky)
        if dense is not None:
            kw = dict(near=cfg.dense_near, far=cfg.dense_far, sky_depth=cfg.dense_sky_depth, l1_ratio=cfg.l1_ratio)
            # a sky-only target weighs its pixels as the reference's dense loss does (a mean over every pixel, the
            # sky's share of it): the mean over the sky pixels alone, times their share of the valid rays
            scale = 1.0 if share is None else share
            if cfg.dense_coarse and out.coarse_depth is not None:
                terms["dense_coarse"] = scale * dense_depth_loss(out.coarse_depth.float(), dense, **kw)
            if cfg.dense_render:
                terms["dense_render"] = scale * dense_depth_loss(out.depth.float(), dense, **kw)
        if nerf is not None:
            if valid_r is not None:
                nerf = torch.where(valid_r, nerf, torch.full_like(nerf, float("nan")))
            kw = dict(near=cfg.dense_near, far=cfg.dense_far, sky_depth=cfg.dense_sky_depth, l1_ratio=cfg.l1_ratio)
            if cfg.nerf_coarse and out.coarse_depth is not None:
                terms["nerf_coarse"] = dense_depth_loss(out.coarse_depth.float(), nerf, **kw)
            if cfg.nerf_render:
                terms["nerf_render"] = dense_depth_loss(out.depth.float(), nerf, **kw)
        if virtual is not None and bool(virtual["selected"].any()):
            terms.update(self._virtual_terms(virtual, batch, valid, valid_r))
        if neighbour is not None and bool(batch["has_neighbour"].any()):
            terms.update(self._neighbour_terms(neighbour, batch, valid, valid_r))
        if cfg.entropy:
            terms["entropy"] = weight_entropy_loss(out.weights.float(), valid=valid_r)
        if cfg.opacity:
            terms["opacity"] = opacity_loss(out.opacity.float(), valid=valid_r)
        if cfg.nvs_l1 and nvs_rgb is not None and "next_images" in batch:
            has = batch["has_next"].to(pred.device)
            if bool(has.any()):
                terms["nvs_l1"] = rgb_l1_loss(nvs_rgb.float()[has], batch["next_images"][has],
                                              None if valid is None else valid[has])
        if cfg.feature:
            if "feature_target" not in batch or out.features is None:
                raise ValueError("loss.feature > 0 needs teacher features (data.features, a feature cache) and "
                                 "an enabled feature head")
            terms["feature"] = feature_loss(out.features.float(), batch["feature_target"], valid_r)
        total = pred.new_zeros(())
        for name, value in terms.items():
            total = total + getattr(cfg, name) * value
        return total, terms


    def _virtual_terms(self, virtual: dict[str, torch.Tensor], batch: dict[str, Any], valid: torch.Tensor | None,
                       valid_r: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """RGB L1 + dense depth on the selected cameras' virtual views (ego-body masks of the source camera)."""
        cfg, sel, choice = self.cfg, virtual["selected"], virtual["choice"]
        b, n = torch.nonzero(sel, as_tuple=True)
        c = choice[b, n]
        target_rgb = batch["virtual_images"][b, n, c]
        target_depth = batch["virtual_depth"][b, n, c].clone()
        terms = {}
        if cfg.virtual_rgb:
            terms["virtual_rgb"] = rgb_l1_loss(virtual["rgb"][b, n].float(), target_rgb,
                                               None if valid is None else valid[b, n])
        if cfg.virtual_depth:
            if valid_r is not None:
                target_depth[~valid_r[b, n]] = float("nan")
            terms["virtual_depth"] = dense_depth_loss(virtual["depth"][b, n].float(), target_depth,
                                                      near=cfg.dense_near, far=cfg.dense_far,
                                                      sky_depth=cfg.dense_sky_depth, l1_ratio=cfg.l1_ratio)
        return terms


    def _neighbour_terms(self, neighbour: dict[str, torch.Tensor], batch: dict[str, Any], valid: torch.Tensor | None,
                         valid_r: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The neighbour_* terms over the samples that have a neighbour (the module docstring). The ego-body masks
        are per camera, so the current frame's masks hold for the neighbour's cameras too."""
        cfg = self.cfg
        has = batch["has_neighbour"].to(neighbour["rgb"].device)
        rgb, depth = neighbour["rgb"][has].float(), neighbour["depth"][has].float()
        images = batch["neighbour_images"][has]
        v = None if valid is None else valid[has]
        v_r = None if valid_r is None else valid_r[has]
        terms: dict[str, torch.Tensor] = {}
        if cfg.neighbour_rgb_l1:
            terms["neighbour_rgb_l1"] = rgb_l1_loss(rgb, images, v)
        if cfg.neighbour_rgb_ssim:
            terms["neighbour_rgb_ssim"] = rgb_ssim_loss(rgb, images, v)
        lidar = batch["neighbour_lidar_depth"][has]
        if v_r is not None:
            lidar = torch.where(v_r, lidar, torch.zeros_like(lidar))  # 0 = no target
        if cfg.neighbour_lidar:
            terms["neighbour_lidar"] = lidar_depth_loss(depth, lidar, cfg.lidar_max_depth, cfg.l1_ratio)
        sky = batch.get("neighbour_sky_mask")
        if cfg.neighbour_sky and sky is not None and cfg.dense_sky_depth is not None:
            sky = sky[has] & ~(lidar > 0)
            if v_r is not None:
                sky = sky & v_r
            rays = v_r.sum() if v_r is not None else torch.tensor(sky.numel(), device=sky.device)
            share = sky.sum() / rays.clamp_min(1)
            terms["neighbour_sky"] = share * dense_depth_loss(
                depth, with_sky(None, sky, cfg.dense_sky_depth), near=cfg.dense_near, far=cfg.dense_far,
                sky_depth=cfg.dense_sky_depth, l1_ratio=cfg.l1_ratio)
        return terms


def feature_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between rendered (..., k, h, w) and target PCA features of the same shape, over the pixels where
    `valid` (..., h, w) is True (all when None)."""
    if pred.shape != target.shape:
        raise ValueError(f"rendered features {tuple(pred.shape)} vs teacher targets {tuple(target.shape)}")
    squared = (pred - target) ** 2
    if valid is None:
        return squared.mean()
    weight = valid.unsqueeze(-3).to(squared.dtype).expand_as(squared)
    return (squared * weight).sum() / weight.sum().clamp_min(1.0)
