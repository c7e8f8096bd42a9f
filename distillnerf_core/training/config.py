"""Training configuration: what `distillnerf-train` runs, loadable from a train YAML (unknown keys are errors).

A train YAML names a model config (`model: small` or a path relative to the YAML) plus `model_overrides`
merged into it, the loss weights (`training/losses.py`), the optimiser, the data and the loop settings.
Shipped ones live in `distillnerf_core/configs/train/`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distillnerf_core import configs
from distillnerf_core.data.datasets import DataConfig
from distillnerf_core.model.distillnerf import ModelConfig
from distillnerf_core.training.losses import LossConfig


@dataclass
class OptimConfig:
    """Adam as in the reference (lr 2e-4, betas (0, 0.99)), grad-norm clip 35, optional warmup / cosine."""

    lr: float = 2e-4
    """Peak learning rate."""
    betas: list[float] = field(default_factory=lambda: [0.0, 0.99])
    """Adam betas."""
    eps: float = 1e-8
    """Adam epsilon."""
    weight_decay: float = 0.0
    """L2 weight decay."""
    grad_clip: float = 35.0
    """Gradient-norm clip."""
    warmup_steps: int = 0
    """Linear warmup from 0 over this many steps."""
    schedule: str = "constant"
    """"constant" or "cosine" (decays to min_lr_ratio * lr at max_steps)."""
    min_lr_ratio: float = 0.1
    """Final learning rate of the cosine schedule, as a fraction of `lr`."""


@dataclass
class TrainConfig:
    """Everything `distillnerf-train` needs besides paths; YAML-loadable (unknown keys are errors)."""

    model: str = "small"
    """Shipped model config name or a model YAML path (relative to the train YAML)."""
    model_overrides: dict[str, Any] = field(default_factory=dict)
    """Nested dict merged into the model config (e.g. {renderer: {lookup: trilinear}})."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Loss weights (`training/losses.py`)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and schedule."""
    data: DataConfig = field(default_factory=DataConfig)
    """Dataset and loader (`data/datasets.py`)."""
    max_steps: int = 10000
    """Optimiser steps of the whole run (a resumed run continues towards it)."""
    ckpt_every: int = 200
    """Write a resumable checkpoint every this many steps (and always at the end)."""
    keep_last: int = 2
    """Resumable checkpoints kept on disk."""
    log_every: int = 10
    """Scalars to tensorboard and train_log.jsonl every this many steps."""
    image_every: int = 200
    """Input / rendered / depth pictures to tensorboard every this many steps (0 = never)."""
    amp: str = "auto"
    """Mixed precision: auto (CUDA: bf16 if supported, else fp16 + GradScaler; CPU: off), bf16 (CUDA or CPU),
    fp16 (CUDA only, with loss scaling) or off."""
    compile: bool = False
    """torch.compile the encoder, lift and RGB decoder (`DistillNeRFModel.compile_stages`): the first steps
    compile (up to minutes); a stage that fails to compile trains eagerly, with a warning."""
    seed: int = 0
    """Seed of weights and data order."""
    init: str | None = None
    """Start from this checkpoint's weights (not with --resume); tensors it lacks (a new PCA) keep theirs."""
    init_fresh: list[str] = field(default_factory=list)
    """Modules (tensor-name prefixes, e.g. feature_head, encoder.frozen_2d, encoder.fuse) that start fresh
    with `init` instead of taking the checkpoint's tensors: for a checkpoint whose head or encoder differ.
    Any other difference between the checkpoint and the model is an error that names the modules to list."""

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (stored with every checkpoint)."""
        return asdict(self)


def load_train_config(name_or_path: str | Path) -> TrainConfig:
    """A train YAML by path or shipped name (`train_small` -> configs/train/train_small.yaml), or a bare model
    config name (`tiny`, `small`, `paper`) meaning the default training settings for that model."""
    if str(name_or_path) in configs.MODEL_CONFIG_NAMES:
        return TrainConfig(model=str(name_or_path))
    path = configs.resolve(name_or_path, configs.TRAIN_CONFIG_DIR)
    try:
        cfg = configs.from_dict(TrainConfig, configs.read_yaml(path))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    if cfg.model not in configs.MODEL_CONFIG_NAMES and not Path(cfg.model).is_absolute():
        cfg.model = str((path.parent / cfg.model).resolve())
    return cfg


def model_config(cfg: TrainConfig) -> ModelConfig:
    """The model config a training run builds: the named config with `model_overrides` merged in."""
    base = ModelConfig.load(cfg.model).to_dict()
    return ModelConfig.from_dict(configs.deep_merge(base, cfg.model_overrides))
