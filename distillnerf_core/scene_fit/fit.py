"""Fit one SceneField per scene of a nuScenes-format dataroot and cache its renders (`distillnerf-fit-scene`).

Per scene: every keyframe's cameras (all of them) and LiDAR sweep are loaded through NuScenesDataset at
`FitConfig.image_hw`; poses go to the scene's local frame (the first keyframe's ego pose: float32-safe) via
the dataroot's ego poses. Keyframes with index % holdout_every == holdout_offset are held out of the fit (their
PSNR / LiDAR AbsRel are the field's novel-view quality); `lidar_holdout` of the training frames' LiDAR pixels
are held out too. Ego-body pixels (masks 0) are never sampled. Loss per step on a random ray batch: RGB MSE,
LiDAR distance L1 (relative), free space (weight in front of the LiDAR return), plane TV, and on the pixels the
segmenter calls sky (`FitConfig.sky_mask`: the dataroot's segmenter cache, else the segmenter run on the
images; data/sky.py) an opacity -> 0 term (log(1 + optical depth)), so that sky rays go to the field's sky
model with no density along them, as the reference's fields do (a share `sky_fraction` of each step's rays is
drawn from them). A sky pixel with a LiDAR return is not sky (the return is a surface).
Then every keyframe (held-out ones included: rendered from the field as novel views) and camera gets its
depth and the virtual cameras' RGB + depth at `render_hw`, written as data/nerf_targets.py describes; the real
cameras' segmenter-sky pixels are written as sky (depth 0, which training turns into the sky depth).
Under torchrun (RANK / WORLD_SIZE; distillnerf_core/sharding.py) each rank fits the scenes it is assigned (sorted
scene names modulo the world size; each scene's record file is its proof of completion, so a killed rank loses
its current scene only), journals them in OUT/manifest.rank<k>.jsonl and leaves manifest.json to the merge
(`merge_fit`: rank 0 after a barrier, or `distillnerf-fit-scene --merge`), which writes what one process writes.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from distillnerf_core.checked_files import (
    DataFileError,
    atomic_write,
    file_name,
    file_record,
    matches_record,
    read_json,
    require,
    write_json,
)
from distillnerf_core.data.datasets import NuScenesDataset, dataroot_cameras
from distillnerf_core.data.nerf_targets import (
    DEFAULT_OFFSETS,
    FORMAT_VERSION,
    MANIFEST,
    entry_path,
    read_manifest,
    virtual_cam2ego,
)
from distillnerf_core.geometry import invert_transform
from distillnerf_core.model.cameras import pixel_rays, rescale_intrinsics
from distillnerf_core.scene_fit.field import FieldConfig, RayBundle, SceneField, plane_tv
from distillnerf_core.sharding import (
    Journal,
    barrier,
    init_group,
    part_path,
    rank_threads,
    read_parts,
    remove_parts,
    shard_from_env,
)

logger = logging.getLogger(__name__)

PART_STEM = "manifest"  # the ranks' parts: OUT/manifest.rank<k>.jsonl


@dataclass
class FitConfig:
    """How a scene is fitted and what is rendered into the cache."""

    field: FieldConfig = dc_field(default_factory=FieldConfig)
    """The field's size and sampling."""
    image_hw: list[int] = dc_field(default_factory=lambda: [192, 336])
    """Images (and LiDAR, min-pooled) are loaded at this size (H, W) for fitting."""
    render_hw: list[int] = dc_field(default_factory=lambda: [64, 114])
    """Cached targets are rendered at this size (H, W); the dataset resizes them to the model's sizes."""
    steps: int = 600
    """Optimiser steps per scene."""
    rays: int = 1024
    """Rays per step."""
    lr: float = 0.03
    """Adam learning rate (decays exponentially to lr / 10 over the steps)."""
    lidar_weight: float = 2.0
    """Weight of the LiDAR distance L1 (relative: |d - d_lidar| / d_lidar)."""
    free_space_weight: float = 1.0
    """Weight of the rendering weight that lies before 0.95 x the LiDAR distance."""
    tv_weight: float = 1e-3
    """Weight of the planes' total variation."""
    lidar_fraction: float = 0.5
    """Share of each step's rays drawn from pixels with a LiDAR return."""
    lidar_holdout: float = 0.1
    """Share of the training frames' LiDAR pixels held out of the fit (scored in the manifest)."""
    holdout_every: int = 4
    """Keyframes with index % holdout_every == holdout_offset are not fitted (0 = fit every keyframe)."""
    holdout_offset: int = 1
    """See holdout_every."""
    offsets: list[list[float]] = dc_field(default_factory=lambda: [list(o) for o in DEFAULT_OFFSETS])
    """Virtual cameras: shifts (m) in each camera's optical frame (x right, y down, z forward)."""
    chunk: int = 4096
    """Rays per chunk when rendering the cache."""
    seed: int = 0
    """Seed of the field's initialisation and ray sampling."""
    sky_mask: str = "auto"
    """Sky pixels: "auto" (the dataroot's segmenter feature cache when it has one, else the segmenter run on the
    images), "segmenter" (always run it), "none", or a segmenter cache (a name under DATAROOT/features/ or a dir)."""
    sky_weight: float = 0.01
    """Weight of the opacity -> 0 term on sky rays, log(1 + optical depth) = log(1 - log(1 - opacity)) (0 = sky
    rays are ordinary rays). Chosen on DDAD scene 02 at 400 steps (exploratory fits, not stored: 0.1 rendered
    slightly more of the sky as sky but cost PSNR on the fitted and the held-out frames; what 0.01 does is in
    docs/results/scene_fields.md)."""
    sky_fraction: float = 0.125
    """Share of each step's rays drawn from the sky pixels (when there are any)."""
    sky_segmenter_width: int = 1024
    """Width the segmenter runs at on the images (aspect kept; never wider than the image)."""


@dataclass
class SceneData:
    """Everything of one scene the fit needs, in its local frame (the first keyframe's ego)."""

    images: torch.Tensor  # (F, N, 3, H, W)
    valid: torch.Tensor  # (F, N, H, W) bool
    lidar: torch.Tensor  # (F, N, H, W) z-depth, 0 = none
    intrinsics: torch.Tensor  # (F, N, 3, 3) at image_hw
    cam2local: torch.Tensor  # (F, N, 4, 4)
    sd_tokens: list[list[str]]  # (F, N)
    dense: torch.Tensor | None  # (F, N, H, W) exact GT where the dataroot has it
    sky: torch.Tensor | None = None  # (F, N, H, W) bool: the segmenter's sky (None: no sky mask)


def load_scene(dataset: NuScenesDataset, indices: list[int]) -> SceneData:
    """Load keyframes `indices` (one scene) of `dataset` into the first keyframe's ego frame."""
    items = [dataset[i] for i in indices]
    origin = invert_transform(items[0]["ref_ego2global"].numpy())
    c2l = [torch.as_tensor(origin @ it["ref_ego2global"].numpy() @ it["cam2ego"].double().numpy(), dtype=torch.float32)
           for it in items]
    tokens = []
    for i in indices:
        sample = dataset.nusc.get("sample", dataset.sample_tokens[i])
        tokens.append([sample["data"][ch] for ch in dataset.cameras])
    H, W = dataset.image_size
    valid = torch.stack([it["masks"] > 0.5 for it in items])
    return SceneData(images=torch.stack([it["images"] for it in items]), valid=valid,
                     lidar=torch.stack([it["lidar_depth"] for it in items]),
                     intrinsics=torch.stack([it["intrinsics"] for it in items]), cam2local=torch.stack(c2l),
                     sd_tokens=tokens,
                     dense=torch.stack([it["dense_depth"] for it in items]) if "dense_depth" in items[0] else None)


def sky_source(dataroot: str | Path, setting: str) -> tuple[Path | None, bool]:
    """(segmenter cache, run the segmenter on the images) of a `FitConfig.sky_mask` setting; a named cache that is
    missing or of another teacher, or an unknown word, is an error naming it."""
    from distillnerf_core.data.sky import resolve_sky_cache

    if setting == "segmenter":
        return None, True
    if setting == "none":
        return None, False
    cache = resolve_sky_cache(dataroot, setting)
    return cache, cache is None  # "auto" without a cache: the segmenter on the images


def load_scene_sky(dataset: NuScenesDataset, indices: list[int], cache: Path | None, width: int) -> torch.Tensor:
    """(F, N, H, W) bool at the dataset's image size: the segmenter's sky of keyframes `indices`, from `cache`
    (segmenter features) or, without one, the segmenter run on the full-resolution images."""
    from PIL import Image

    from distillnerf_core.data.datasets import _table_path
    from distillnerf_core.data.sky import segment_sky, sky_from_features
    from distillnerf_core.teachers.cache import load_entry
    from distillnerf_core.teachers.cache import read_manifest as read_cache_manifest

    hw = dataset.image_size
    manifest = read_cache_manifest(cache) if cache is not None else None
    frames = []
    for i in indices:
        sample = dataset.nusc.get("sample", dataset.sample_tokens[i])
        masks = []
        for ch in dataset.cameras:
            sd = dataset.nusc.get("sample_data", sample["data"][ch])
            if cache is not None:
                masks.append(sky_from_features(load_entry(cache, ch, sd["token"], manifest), hw))
                continue
            with Image.open(_table_path(dataset.dataroot, sd)) as im:
                image = np.asarray(im.convert("RGB"))
            masks.append(segment_sky([image], hw, width)[0])
        frames.append(torch.stack(masks))
    return torch.stack(frames)


def make_field(cfg: FitConfig, data: SceneData) -> SceneField:
    """A field centred on the scene's camera positions, its linear region covering them + radius_xy."""
    pos = data.cam2local[..., :3, 3].reshape(-1, 3)
    lo, hi = pos.min(0).values, pos.max(0).values
    center = 0.5 * (lo + hi)
    half = 0.5 * (hi - lo)
    radius = torch.stack([half[0] + cfg.field.radius_xy, half[1] + cfg.field.radius_xy,
                          torch.tensor(cfg.field.radius_z)])
    center[2] = center[2] - 1.0  # cameras sit ~1.5 m up; the interesting z range is mostly below/around them
    F_, N = data.images.shape[:2]
    return SceneField(cfg.field, center, torch.maximum(torch.full_like(radius, 1.0), radius), F_ * N)


def all_rays(data: SceneData, hw: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pixel of every (frame, camera) at `hw`: origins, directions (F, N, h, w, 3), z_per_distance (F, N, h, w)."""
    hw = hw or tuple(data.images.shape[-2:])
    K = rescale_intrinsics(data.intrinsics, tuple(data.images.shape[-2:]), hw)
    r = pixel_rays(K, data.cam2local, hw)
    return r.origins, r.directions, r.z_per_distance


def fit_field(cfg: FitConfig, data: SceneData, train_frames: list[int], progress: bool = True
              ) -> tuple[SceneField, dict[str, Any]]:
    """Optimise a field on `train_frames` of `data`; returns it and {held-out LiDAR mask, timings, losses}."""
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    field_ = make_field(cfg, data)
    F_, N, _, H, W = data.images.shape
    origins, dirs, zpd = all_rays(data)
    image_ids = torch.arange(F_ * N).view(F_, N, 1, 1).expand(F_, N, H, W)
    train = torch.zeros(F_, dtype=torch.bool)
    train[train_frames] = True
    usable = data.valid & train.view(F_, 1, 1, 1)
    has_lidar = (data.lidar > 0) & usable
    held_lidar = has_lidar & (torch.rand(has_lidar.shape, generator=g) < cfg.lidar_holdout)
    fit_lidar = has_lidar & ~held_lidar
    flat = lambda x: x.reshape(-1, *x.shape[4:])  # noqa: E731
    rgb_all = flat(data.images.permute(0, 1, 3, 4, 2))
    o_all, d_all, ids_all = flat(origins), flat(dirs), image_ids.reshape(-1)
    dist_all = (data.lidar / zpd).reshape(-1)
    pix_all = torch.nonzero(usable.reshape(-1)).squeeze(1)
    pix_lidar = torch.nonzero(fit_lidar.reshape(-1)).squeeze(1)
    lidar_ok = fit_lidar.reshape(-1)
    # sky rays: the segmenter's sky on usable training pixels without a LiDAR return (a return is a surface)
    sky_ok = (data.sky & usable & ~has_lidar).reshape(-1) if data.sky is not None else torch.zeros_like(lidar_ok)
    pix_sky = torch.nonzero(sky_ok).squeeze(1)
    opt = torch.optim.Adam(field_.parameters(), lr=cfg.lr, eps=1e-15)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 ** min(1.0, s / max(1, cfg.steps)))
    n_lidar = int(cfg.rays * cfg.lidar_fraction) if len(pix_lidar) else 0
    n_sky = min(int(cfg.rays * cfg.sky_fraction), cfg.rays - n_lidar) if len(pix_sky) and cfg.sky_weight else 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, desc="fit", unit="step", dynamic_ncols=True, leave=False)
    t0, c0, log = time.perf_counter(), time.process_time(), []
    for step in range(cfg.steps):
        sel = torch.cat([pix_all[torch.randint(len(pix_all), (cfg.rays - n_lidar - n_sky,), generator=g)],
                         pix_lidar[torch.randint(len(pix_lidar), (n_lidar,), generator=g)] if n_lidar else
                         pix_all[:0],
                         pix_sky[torch.randint(len(pix_sky), (n_sky,), generator=g)] if n_sky else pix_all[:0]])
        out = field_.render(RayBundle(o_all[sel], d_all[sel], ids_all[sel]), jitter=True)
        loss_rgb = F.mse_loss(out["rgb"], rgb_all[sel])
        loss = loss_rgb
        lid = lidar_ok[sel]
        if bool(lid.any()):
            d_gt = dist_all[sel][lid]
            loss = loss + cfg.lidar_weight * ((out["distance"][lid] - d_gt).abs() / d_gt).mean()
            before = (out["t"][lid] < 0.95 * d_gt[:, None]).float()
            loss = loss + cfg.free_space_weight * (out["weights"][lid] * before).sum(1).mean()
        sky = sky_ok[sel]
        loss_sky = loss.new_zeros(())
        if cfg.sky_weight and bool(sky.any()):
            # opacity -> 0: the ray's colour must come from the sky model, no density in front of it. BCE against
            # 0 is -log(1 - opacity) = the optical depth; its log1p keeps a gradient where the ray is saturated
            # (opacity 1.0 in float32: a fresh field's far rays) without letting far samples' long intervals swamp
            # the other terms
            loss_sky = torch.log1p(out["optical_depth"][sky]).mean()
            loss = loss + cfg.sky_weight * loss_sky
        if cfg.tv_weight:
            loss = loss + cfg.tv_weight * plane_tv(field_)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if bar is not None:
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(psnr=f"{-10 * math.log10(max(float(loss_rgb), 1e-10)):.2f}", refresh=False)
        if step % 250 == 0 or step == cfg.steps - 1:
            log.append({"step": step + 1, "loss": float(loss.detach()), "rgb_mse": float(loss_rgb.detach()),
                        "sky_bce": float(loss_sky.detach())})
    if bar is not None:
        bar.close()
    if field_.appearance is not None:
        # held-out images were never seen: give them their camera's mean code over the fitted frames (an unfitted
        # code is an arbitrary exposure the colour MLP never learnt to use)
        with torch.no_grad():
            codes = field_.appearance.weight.view(F_, N, -1)
            codes[~train] = codes[train].mean(0, keepdim=True).expand(int((~train).sum()), N, -1)
    return field_, {"held_lidar": held_lidar, "fit_wall_s": time.perf_counter() - t0,
                    "fit_cpu_s": time.process_time() - c0, "log": log}


@torch.no_grad()
def render_views(field_: SceneField, intrinsics: torch.Tensor, cam2local: torch.Tensor, image_ids: torch.Tensor,
                 from_hw: tuple[int, int], hw: tuple[int, int], chunk: int = 4096) -> dict[str, torch.Tensor]:
    """rgb (V, 3, h, w) and z-depth (V, h, w) (0 = sky) of V cameras (intrinsics at `from_hw`) at size `hw`."""
    K = rescale_intrinsics(intrinsics[None], from_hw, hw)
    r = pixel_rays(K, cam2local[None], hw)
    V = cam2local.shape[0]
    o, d = r.origins.reshape(-1, 3), r.directions.reshape(-1, 3)
    ids = image_ids.view(V, 1, 1).expand(V, *hw).reshape(-1)
    rgb, dist, opac = [], [], []
    for s in range(0, o.shape[0], chunk):
        out = field_.render(RayBundle(o[s:s + chunk], d[s:s + chunk], ids[s:s + chunk]))
        rgb.append(out["rgb"])
        dist.append(out["distance"])
        opac.append(out["opacity"])
    depth = torch.cat(dist).view(V, *hw) * r.z_per_distance[0]
    depth = torch.where(torch.cat(opac).view(V, *hw) > field_.cfg.sky_opacity, depth, torch.zeros_like(depth))
    return {"rgb": torch.cat(rgb).clamp(0, 1).view(V, *hw, 3).permute(0, 3, 1, 2), "depth": depth}


def _abs_rel(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> float | None:
    m = mask & (gt > 0) & (gt <= 80.0)
    if not bool(m.any()):
        return None
    p = pred[m].clamp(1e-3, 80.0)
    return float(((p - gt[m]).abs() / gt[m]).mean())


def _psnr(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> float:
    m = mask.unsqueeze(-3).expand_as(pred)
    return float(-10 * torch.log10(((pred - gt) ** 2)[m].mean().clamp_min(1e-10)))


def _pool_to(x: torch.Tensor, hw: tuple[int, int], how: str) -> torch.Tensor:
    """(..., H, W) -> (..., h, w): "area" mean, "min_positive" nearest return (0 = none), "all" logical and."""
    lead = x.shape[:-2]
    x = x.reshape(-1, 1, *x.shape[-2:]).float()
    if how == "area":
        y = F.adaptive_avg_pool2d(x, hw)
    elif how == "min_positive":
        y = -F.adaptive_max_pool2d(-torch.where(x > 0, x, torch.full_like(x, float("inf"))), hw)
        y = torch.where(torch.isinf(y), torch.zeros_like(y), y)
    else:
        y = -F.adaptive_max_pool2d(-x, hw)
    return y.reshape(*lead, *hw)


def render_sky(data: SceneData, frame: int, hw: tuple[int, int]) -> torch.Tensor | None:
    """(N, h, w) bool: render cells at least half of whose pixels the segmenter calls sky (None: no sky mask)."""
    if data.sky is None:
        return None
    return _pool_to(data.sky[frame], hw, "area") >= 0.5


def _sky_quality(depth: torch.Tensor, data: SceneData, frame: int, hw: tuple[int, int], valid: torch.Tensor
                 ) -> dict[str, float | None]:
    """How the field renders the sky of one frame (depth 0 = rendered as sky): `sky_share` of the valid cells
    the segmenter calls sky, `sky_rendered_as_sky` the share of those the field renders as sky (the raw render,
    before the targets' override), `top_rows_rendered_as_sky` the same over the top sixth of the rows without a
    LiDAR return (what the real-data benchmark's "sky rows depth" looks at)."""
    h = hw[0]
    top = valid & (torch.arange(h).view(1, h, 1) < h // 6) & (_pool_to(data.lidar[frame], hw, "min_positive") <= 0)
    share = lambda m: float((depth[m] <= 0).float().mean()) if bool(m.any()) else None  # noqa: E731
    out: dict[str, float | None] = {"top_rows_rendered_as_sky": share(top)}
    sky = render_sky(data, frame, hw)
    if sky is not None:
        out["sky_share"] = float((sky & valid).float().sum() / valid.float().sum().clamp_min(1.0))
        out["sky_rendered_as_sky"] = share(sky & valid)
    return out


@torch.no_grad()
def evaluate_field(field_: SceneField, data: SceneData, train_frames: list[int], held_lidar: torch.Tensor,
                   views: list[dict[str, torch.Tensor]], chunk: int = 4096, max_held: int = 8192
                   ) -> dict[str, Any]:
    """Quality: each frame's cameras at the cache size (`views`, from write_targets: PSNR against the area-
    downsampled images, LiDAR AbsRel against min-pooled LiDAR, ego body left out) and the held-out LiDAR pixels
    of the training frames, rendered exactly at their own pixel rays (at most `max_held`, a fixed subset)."""
    F_, N, _, H, W = data.images.shape
    hw = tuple(views[0]["depth"].shape[-2:])
    frames = []
    for f in range(F_):
        valid = _pool_to(data.valid[f], hw, "all") > 0.5
        row = {"frame": f, "role": "train" if f in train_frames else "held out",
               "psnr": _psnr(views[f]["rgb"], _pool_to(data.images[f], hw, "area"), valid),
               "lidar_abs_rel": _abs_rel(views[f]["depth"], _pool_to(data.lidar[f], hw, "min_positive"), valid)}
        if data.dense is not None:
            row["dense_abs_rel"] = _abs_rel(views[f]["depth"], _pool_to(data.dense[f], hw, "min_positive"), valid)
        row.update(_sky_quality(views[f]["depth"], data, f, hw, valid))
        frames.append(row)
    origins, dirs, zpd = all_rays(data)
    idx = torch.nonzero(held_lidar.reshape(-1)).squeeze(1)
    idx = idx[torch.randperm(len(idx), generator=torch.Generator().manual_seed(1))[:max_held]]
    ids = torch.arange(F_ * N).view(F_, N, 1, 1).expand(F_, N, H, W).reshape(-1)
    pred = []
    for s in range(0, len(idx), chunk):
        i = idx[s:s + chunk]
        out = field_.render(RayBundle(origins.reshape(-1, 3)[i], dirs.reshape(-1, 3)[i], ids[i]))
        z = out["distance"] * zpd.reshape(-1)[i]
        pred.append(torch.where(out["opacity"] > field_.cfg.sky_opacity, z, torch.zeros_like(z)))
    gt = data.lidar.reshape(-1)[idx]
    held = [r for r in frames if r["role"] == "held out"]
    trained = [r for r in frames if r["role"] == "train"]

    def avg(rows: list[dict], key: str) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    quality = {"held_out_lidar_abs_rel": _abs_rel(torch.cat(pred), gt, torch.ones_like(gt, dtype=torch.bool))
               if len(idx) else None, "held_out_lidar_pixels": int(len(idx)),
               "held_out_frames_psnr": avg(held, "psnr"), "held_out_frames_lidar_abs_rel": avg(held, "lidar_abs_rel"),
               "train_frames_psnr": avg(trained, "psnr"), "train_frames_lidar_abs_rel": avg(trained, "lidar_abs_rel"),
               "held_out_frames_sky_rendered_as_sky": avg(held, "sky_rendered_as_sky"),
               "train_frames_sky_rendered_as_sky": avg(trained, "sky_rendered_as_sky"),
               "held_out_frames_top_rows_rendered_as_sky": avg(held, "top_rows_rendered_as_sky"),
               "resolution_hw": list(hw), "frames": frames}
    if data.dense is not None:
        quality["dense_abs_rel"] = avg(frames, "dense_abs_rel")
        quality["held_out_frames_dense_abs_rel"] = avg(held, "dense_abs_rel")
    return quality


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Atomic (checked_files.atomic_write: an interrupted run leaves no half entry); returns the entry's record
    (size + sha256). A non-finite render (a diverged field) is an error, never an entry."""
    for key, array in arrays.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise DataFileError(f"{path}: the field rendered non-finite {key} (the fit diverged?); not written")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    atomic_write(path, write)
    return file_record(path)


@torch.no_grad()
def write_targets(field_: SceneField, cfg: FitConfig, data: SceneData, cameras: list[str], out: Path,
                  records: dict[str, Any] | None = None) -> list[dict[str, torch.Tensor]]:
    """Render and write every (keyframe, camera) entry of the scene (their records into `records`, keyed by
    path relative to `out`); returns per keyframe the real cameras' renders (rgb (N, 3, h, w), depth (N, h, w))
    for `evaluate_field`."""
    F_, N, _, H, W = data.images.shape
    hw = tuple(cfg.render_hw)
    offsets = torch.tensor(cfg.offsets, dtype=torch.float32)
    V = offsets.shape[0]
    real = []
    for f in range(F_):
        poses = torch.cat([data.cam2local[f][:, None], virtual_cam2ego(data.cam2local[f], offsets)], dim=1)  # (N,1+V)
        ids = (torch.arange(N) + f * N)[:, None].expand(N, 1 + V).reshape(-1)
        K = data.intrinsics[f][:, None].expand(N, 1 + V, 3, 3).reshape(-1, 3, 3)
        v = render_views(field_, K, poses.reshape(-1, 4, 4), ids, (H, W), hw, cfg.chunk)
        rgb = v["rgb"].view(N, 1 + V, 3, *hw)
        depth = v["depth"].view(N, 1 + V, *hw)
        real.append({"rgb": rgb[:, 0], "depth": depth[:, 0]})
        sky = render_sky(data, f, hw)  # the segmenter's sky is written as sky whatever the field renders there
        target = depth[:, 0] if sky is None else torch.where(sky, torch.zeros_like(depth[:, 0]), depth[:, 0])
        for n, ch in enumerate(cameras):
            path = entry_path(out, ch, data.sd_tokens[f][n])
            (records if records is not None else {})[path.relative_to(out).as_posix()] = _write_npz(path, {
                "depth": target[n].numpy().astype(np.float32),
                "virtual_rgb": (rgb[n, 1:].permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy(),
                "virtual_depth": depth[n, 1:].numpy().astype(np.float32),
                "offsets": offsets.numpy()})
    return real


def _settings(cfg: FitConfig) -> dict[str, Any]:
    return asdict(cfg)


def _finite_or_none(value: Any) -> Any:
    """The record with every non-finite float as None (a metric without valid pixels): standard JSON only."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value


def verified_scene_record(done: Path, out: Path) -> dict[str, Any] | None:
    """A complete scene's record when it reads and every entry it lists is the file written (size + sha256);
    None (and a warning naming what failed) when the scene must be fitted again."""
    try:
        record = read_json(done, "scene record")
        files = require(record, "files", dict, done)
        require(record, "quality", dict, done)
    except DataFileError as error:
        logger.warning("%s; the scene is fitted again", error)
        return None
    bad = [name for name, entry in files.items() if not matches_record(out / name, entry)]
    if bad or not files:
        logger.warning("%s: %d of its %d entries are missing or do not match their record (first: %s); the scene"
                       " is fitted again", done, len(bad), len(files), bad[:1])
        return None
    return record


def fit_dataroot(dataroot: str | Path, version: str, out: str | Path, cfg: FitConfig | None = None,
                 scenes: list[str] | None = None, cameras: list[str] | None = None, progress: bool = True,
                 threads: int | None = None) -> dict[str, Any]:
    """Fit and cache every (or the named) scene; scenes already complete in `out` are skipped. Returns the manifest."""
    cfg = cfg or FitConfig()
    shard = shard_from_env()
    rank_threads(shard, threads)  # ranks of one machine share its cores
    out = Path(out)
    cams = dataroot_cameras(dataroot, version, cameras)  # the sensor table's rig unless --cameras names them
    settings = _settings(cfg)
    manifest_path = out / MANIFEST
    for line in read_parts(out, PART_STEM) if out.is_dir() else []:  # a sharded run's parts: the same settings
        head = line.get("header", {}).get("manifest", {})
        if head and (head.get("settings"), head.get("cameras"), head.get("version")) != (settings, cams, version):
            raise ValueError(f"{out} holds a rank's part ({PART_STEM}.rank*.jsonl) made with other settings, cameras "
                             "or version; use another --out")
    if manifest_path.is_file():
        manifest = read_manifest(out)
        if (manifest.get("settings"), manifest.get("cameras"), manifest.get("version")) != (settings, cams, version):
            raise ValueError(f"{out} holds targets made with other settings, cameras or version; use another --out")
    else:
        manifest = {"format_version": FORMAT_VERSION, "dataroot": str(Path(dataroot).resolve()), "version": version,
                    "cameras": cams, "settings": settings, "scenes": {}}
    dataset = NuScenesDataset(dataroot, version, image_size=tuple(cfg.image_hw), render_size=tuple(cfg.image_hw),
                              cameras=cams, load_next=False, depth_range=(1.0, 80.0))
    sky_cache, sky_segmenter = sky_source(dataroot, cfg.sky_mask)
    sky_used = (f"segmenter cache {sky_cache.name}" if sky_cache is not None else
                f"segmenter on the images (width <= {cfg.sky_segmenter_width})" if sky_segmenter else "none")
    by_scene: dict[str, list[int]] = {}
    index = {tok: i for i, tok in enumerate(dataset.sample_tokens)}
    for scene in dataset.nusc.scene:
        tok, idx = scene["first_sample_token"], []
        while tok:
            idx.append(index[tok])
            tok = dataset.nusc.get("sample", tok)["next"]
        by_scene[scene["name"]] = idx
    wanted = scenes or list(by_scene)
    unknown = [s for s in wanted if s not in by_scene]
    if unknown:
        raise ValueError(f"unknown scenes {unknown}; the dataroot has {sorted(by_scene)}")
    for name in wanted:  # every entry path first: a token or channel that is not a plain name stops it here
        for i in by_scene[name]:
            sample = dataset.nusc.get("sample", dataset.sample_tokens[i])
            for ch in cams:
                if ch in sample["data"]:  # a missing camera is load_scene's error
                    entry_path(out, ch, sample["data"][ch])
    out.mkdir(parents=True, exist_ok=True)
    journal = None
    if shard.sharded:
        journal = Journal(part_path(out, PART_STEM, shard.rank))
        # the run's own manifest head (an earlier manifest's state, e.g. a merge's "complete", is not the run's)
        head = {"format_version": FORMAT_VERSION, "dataroot": str(Path(dataroot).resolve()), "version": version,
                "cameras": cams, "settings": settings}
        journal.append({"header": {"manifest": head, "wanted": list(wanted), "all_scenes": list(by_scene)}})
        mine = shard.owns(list(wanted))
        wanted = [name for name in wanted if name in mine]
    for name in wanted:
        done = out / "scenes" / f"{file_name(name)}.json"  # a scene name from the table is never a path
        if done.is_file() and (record := verified_scene_record(done, out)) is not None:
            manifest["scenes"][name] = record
            if progress:
                logger.info("%s: complete, skipped", name)
            continue
        t0, c0 = time.perf_counter(), time.process_time()
        data = load_scene(dataset, by_scene[name])
        if sky_cache is not None or sky_segmenter:
            data.sky = load_scene_sky(dataset, by_scene[name], sky_cache, cfg.sky_segmenter_width)
        n = len(by_scene[name])
        train = [f for f in range(n) if not (cfg.holdout_every and f % cfg.holdout_every == cfg.holdout_offset)]
        if not train:
            raise ValueError(f"{name}: every keyframe would be held out (holdout_every {cfg.holdout_every})")
        if progress:
            logger.info("%s: %d keyframes x %d cameras, fitting on %s", name, n, len(cams), train)
        field_, info = fit_field(cfg, data, train, progress)
        files: dict[str, Any] = {}
        views = write_targets(field_, cfg, data, cams, out, files)
        quality = evaluate_field(field_, data, train, info["held_lidar"], views, cfg.chunk)
        written = len(views) * len(cams)
        record = {"samples": [dataset.sample_tokens[i] for i in by_scene[name]], "train_frames": train,
                  "entries": written, "quality": quality, "fit_wall_s": info["fit_wall_s"],
                  "fit_cpu_s": info["fit_cpu_s"], "total_wall_s": time.perf_counter() - t0,
                  "total_cpu_s": time.process_time() - c0, "threads": torch.get_num_threads(), "log": info["log"],
                  "sky_mask": sky_used, "files": files}
        record = _finite_or_none(record)
        write_json(done, record)  # last: marks the scene complete
        manifest["scenes"][name] = record
        if journal is not None:
            journal.append({"scene": name})
        else:
            write_json(manifest_path, manifest)
        if progress:
            q = quality
            logger.info("%s: held-out LiDAR AbsRel %s, held-out frames PSNR %s, train PSNR %.2f; %.0f CPU s", name,
                        q["held_out_lidar_abs_rel"], q["held_out_frames_psnr"], q["train_frames_psnr"],
                        record["total_cpu_s"])
    if journal is not None:  # this rank's scenes only; the merge writes the manifest
        manifest.update(rank=shard.rank, world_size=shard.world_size)
        if init_group(shard):
            barrier()
            if shard.rank == 0:
                manifest["merged"] = not merge_fit(out)[1]
            barrier()
        return manifest
    manifest["complete"] = all((out / "scenes" / f"{file_name(s)}.json").is_file() for s in by_scene)
    write_json(manifest_path, manifest)
    remove_parts(out, PART_STEM)
    return manifest


def merge_fit(out: str | Path) -> tuple[dict[str, Any], list[str]]:
    """Write OUT/manifest.json from the ranks' parts and the scene records: what one process writes (an earlier
    manifest's scenes, then the run's scenes in the run's order; the records' timing is theirs). The parts are
    removed when every scene the run wanted is there; otherwise (a rank failed) they stay and the manifest lists the
    scenes done (rerun the job: it resumes). Returns (the manifest, the wanted scenes not fitted)."""
    out = Path(out)
    headers = [line["header"] for line in read_parts(out, PART_STEM) if isinstance(line.get("header"), dict)]
    if not headers:
        raise FileNotFoundError(f"no rank parts ({PART_STEM}.rank<k>.jsonl with a header) to merge in {out}")
    head = headers[-1]
    if any(h != head for h in headers):
        raise ValueError(f"{out}: the ranks' parts were written by runs with other settings or scenes; rerun "
                         "with one setting into a fresh --out")
    manifest = read_manifest(out) if (out / MANIFEST).is_file() else {**head["manifest"], "scenes": {}}
    missing = []
    for name in head["wanted"]:
        done = out / "scenes" / f"{file_name(name)}.json"
        record = verified_scene_record(done, out) if done.is_file() else None
        if record is None:
            missing.append(name)
        else:
            manifest["scenes"][name] = record
    manifest["complete"] = all((out / "scenes" / f"{file_name(s)}.json").is_file() for s in head["all_scenes"])
    write_json(out / MANIFEST, manifest)
    if missing:
        logger.warning("%s: %d of %d scenes not fitted after the merge (first %s); rerun the job to fit them", out,
                       len(missing), len(head["wanted"]), missing[0])
    else:
        remove_parts(out, PART_STEM)
    return manifest, missing
