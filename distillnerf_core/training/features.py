"""Foundation-feature distillation glue for training and evaluation.

`prepare_feature_distillation` runs before the model is built: when `data.features` names a feature cache it
records the teacher (manifest identity + dimension) in the model config, resolves the loss weight (10 unless
set) and fits the PCA (to `feature_head.dim`) on the cached features; the trainer copies that PCA into the
model, whose buffers then travel in every checkpoint. `feature_metrics` scores rendered features against the
teacher: feat_psnr on the normalised PCA features (the reference's "CLIP feature PSNR"), and the cosine
similarity between the PCA reconstruction and the teacher's own D-dim features.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from distillnerf_core.model.distillnerf import ModelConfig
from distillnerf_core.portable_paths import portable_path
from distillnerf_core.teachers.pca import FeaturePCA

logger = logging.getLogger(__name__)

# The normalised PCA targets differ by ~0.01 per channel (MSE) between classes, where the depth terms (weight 10)
# sit at ~0.005: 10 keeps the feature term on the same scale as the others (not tuned further).
DEFAULT_FEATURE_WEIGHT = 10.0


def cache_entries(cache: Any, cameras: list[str]) -> list[tuple[str, str]]:
    """(channel, sample_data token) of every cached image of these cameras."""
    from pathlib import Path

    entries = []
    for ch in cameras:
        folder = Path(cache) / ch
        entries += [(ch, p.stem) for p in sorted(folder.glob("*.safetensors"))] if folder.is_dir() else []
    return entries


def prepare_feature_distillation(train_cfg: Any, mcfg: ModelConfig, dataroot: str, seed: int = 0,
                                 max_vectors: int = 200_000, verbose: bool = True) -> FeaturePCA | None:
    """Set up distillation from `train_cfg.data.features` (if any); returns the fitted PCA or None."""
    from distillnerf_core.data.nuscenes_tables import NUSCENES_CAMERAS
    from distillnerf_core.teachers.cache import read_manifest, resolve_cache, sample_vectors

    loss = train_cfg.loss
    features = train_cfg.data.features
    if features is None:
        if loss.feature:
            raise ValueError("loss.feature > 0 needs data.features (a teacher feature cache made with "
                             "distillnerf-cache-features)")
        loss.feature = 0.0
        return None
    if loss.feature is None:
        loss.feature = DEFAULT_FEATURE_WEIGHT
    if not mcfg.feature_head.enabled:
        raise ValueError("data.features is set but the model's feature_head is disabled")
    cache = resolve_cache(dataroot, features)
    manifest = read_manifest(cache)
    if not manifest.get("complete"):
        raise ValueError(f"feature cache {cache} is incomplete (interrupted?): run distillnerf-cache-features again")
    cameras = train_cfg.data.cameras or list(NUSCENES_CAMERAS)
    entries = cache_entries(cache, cameras)
    vectors = sample_vectors(cache, entries, max_vectors=max_vectors, seed=seed)
    if vectors.shape[1] != int(manifest["dim"]):
        raise ValueError(f"{cache}: entries have {vectors.shape[1]} channels, manifest says {manifest['dim']}")
    if int(manifest["dim"]) < mcfg.feature_head.dim:
        # A teacher with fewer channels than the head (the segmenter's 20 log-probabilities) needs no reduction:
        # the head renders all of them (a full-rank PCA, i.e. only the min-max normalisation).
        logger.info("feature distillation: the %s teacher has %d channels, fewer than feature_head.dim %d: the "
                    "feature head renders %d", manifest["teacher"].get("kind"), manifest["dim"],
                    mcfg.feature_head.dim, manifest["dim"])
        mcfg.feature_head.dim = int(manifest["dim"])
    pca, explained = FeaturePCA.fit(vectors, mcfg.feature_head.dim)
    teacher = dict(manifest["teacher"])
    teacher["pca"] = {"dim": mcfg.feature_head.dim, "explained_variance": float(explained.sum()),
                      "fit_vectors": int(vectors.shape[0]), "cache": portable_path(cache, dataroot)}
    mcfg.feature_head.teacher_dim = int(manifest["dim"])
    mcfg.feature_head.teacher = teacher
    if verbose:
        logger.info("feature distillation: %s %s (%s-d) -> PCA %d-d explaining %.1f%% of the variance "
                    "(%d vectors from %d images), loss weight %s", teacher["kind"], teacher.get("model"),
                    manifest["dim"], mcfg.feature_head.dim, 100 * float(explained.sum()), vectors.shape[0],
                    min(len(entries), 256), loss.feature)
    return pca


def feature_target(pca: FeaturePCA, teacher_features: torch.Tensor) -> torch.Tensor:
    """(B, N, D, h, w) teacher features -> (B, N, k, h, w) normalised PCA targets."""
    return pca.project(teacher_features, channel_dim=2)


@torch.no_grad()
def feature_metrics(pca: FeaturePCA, rendered: torch.Tensor, teacher: torch.Tensor) -> dict[str, float]:
    """feat_psnr (normalised PCA space, -10 log10 MSE) and feat_cosine (mean per-pixel cosine in teacher
    space) of rendered (N, k, h, w) against teacher (N, D, h, w) features."""
    target = pca.project(teacher, channel_dim=1)
    mse = float(((rendered.float() - target) ** 2).mean())
    recon = pca.reconstruct(rendered.float(), channel_dim=1)
    cosine = float(torch.nn.functional.cosine_similarity(recon, teacher.float(), dim=1).mean())
    return {"feat_psnr": -10.0 * torch.log10(torch.tensor(max(mse, 1e-12))).item(), "feat_cosine": cosine}


def _under(name: str, prefixes: Sequence[str]) -> bool:
    """Whether tensor `name` belongs to one of the modules `prefixes` (whole dotted components only)."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _modules_of(names: Sequence[str]) -> list[str]:
    """The modules (first two dotted components, e.g. encoder.fuse) the tensors `names` belong to."""
    return sorted({".".join(n.split(".")[:2]) for n in names})


def load_init_weights(model: torch.nn.Module, path: str, fresh: Sequence[str] = ()) -> list[str]:
    """Start training from a checkpoint's weights (`TrainConfig.init`); returns the tensors that start fresh.

    Every tensor must match by name and shape, except the PCA buffers (those come from this run's feature cache:
    an undistilled checkpoint has none, a distilled one may have been fitted on another cache) and the modules
    named in `fresh` (`TrainConfig.init_fresh`, `--init-fresh`): those keep this model's fresh initialisation,
    whatever the checkpoint holds for them (e.g. a 64-channel feature head onto a 20-channel one, or a frozen 2D
    branch the checkpoint never had). Any other difference is an error naming the modules to list there.
    """
    from distillnerf_core.training.checkpoints import CheckpointError, load_state, resolve_checkpoint

    file = resolve_checkpoint(path)
    fresh = [p.strip().strip(".") for p in fresh if p.strip().strip(".")]
    state = {k: v for k, v in load_state(file).items() if not k.startswith("feature_pca.")}
    own = model.state_dict()
    unknown = [p for p in fresh if not any(_under(k, [p]) for k in (*own, *state))]
    if unknown:
        raise CheckpointError(f"init_fresh {unknown}: no tensor of the model or of {file} is under these modules "
                              f"(modules: {_modules_of(list(own))})")
    missing = sorted(k for k in set(own) - set(state) if not k.startswith("feature_pca.") and not _under(k, fresh))
    unexpected = sorted(k for k in set(state) - set(own) if not _under(k, fresh))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape and not _under(k, fresh))
    if missing or unexpected or shapes:
        raise CheckpointError(f"{file}: cannot initialise from it (missing {missing[:4]}, unexpected "
                              f"{unexpected[:4]}, shape mismatches {shapes[:4]}); to start those modules fresh "
                              f"instead, say so: --init-fresh {','.join(_modules_of(missing + unexpected + shapes))}")
    kept = {k: v for k, v in state.items() if k in own and not _under(k, fresh)}
    started_fresh = sorted(k for k in own if k not in kept and not k.startswith("feature_pca."))
    model.load_state_dict({**own, **kept})
    if fresh:
        logger.info("init from %s: %d tensors loaded, %d start fresh (%s)", file, len(kept), len(started_fresh),
                    ", ".join(_modules_of(started_fresh)) or "none")
    return started_fresh
