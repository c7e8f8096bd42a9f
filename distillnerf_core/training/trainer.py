"""The training loop: self-supervised training on any nuScenes-format dataroot, single process or DDP.

`train()` builds the model from a TrainConfig, resumes from the newest complete checkpoint when asked, and
writes atomic checkpoints (training/checkpoints.py), tensorboard scalars and pictures, train_log.jsonl and
train_summary.json into the run directory. The command line is `distillnerf-train` (cli/train.py).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from distillnerf_core.data.datasets import collate_samples, make_dataset
from distillnerf_core.model.cameras import CameraRig
from distillnerf_core.model.distillnerf import DistillNeRFModel, ModelOutput
from distillnerf_core.training.checkpoints import (
    find_resumable,
    load_training_state,
    load_weights,
    optimizer_from_flat,
    save_checkpoint,
    save_training_checkpoint,
)
from distillnerf_core.training.config import OptimConfig, TrainConfig, model_config
from distillnerf_core.training.features import feature_target, load_init_weights, prepare_feature_distillation
from distillnerf_core.training.losses import DistillNeRFLoss

logger = logging.getLogger(__name__)


class TrainStep(nn.Module):
    """Forward + loss in one module (so DDP sees one forward): renders the input cameras and, when the
    NVS loss is on, the next keyframe's cameras from the same scene encoding."""

    def __init__(self, model: DistillNeRFModel, loss: DistillNeRFLoss) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor], ModelOutput]:
        m = self.model
        image_hw = tuple(batch["images"].shape[-2:])
        m.stage_ms = {}
        scene = m.encode(batch["images"], batch["intrinsics"], batch["cam2ego"])
        out = m.output(scene, m.render(scene, CameraRig(batch["intrinsics"], batch["cam2ego"], image_hw)), image_hw)
        nvs_rgb = None
        if self.loss.cfg.nvs_l1 and "next_images" in batch and bool(batch["has_next"].any()):
            nvs_rgb = m.render(scene, CameraRig(batch["next_intrinsics"], batch["next_cam2ego"], image_hw)).rgb
        if m.feature_pca is not None and "teacher_features" in batch:
            batch = {**batch, "feature_target": feature_target(m.feature_pca, batch["teacher_features"])}
        virtual = self.virtual_views(scene, batch, image_hw)
        total, terms = self.loss(out, batch, nvs_rgb, virtual)
        # Only the loss may carry the graph out of forward: DDP (find_unused_parameters) walks the graph of
        # every returned tensor, and e.g. the unsupervised feature head would count as used but get no grad.
        detached = ModelOutput(**{k: v.detach() if torch.is_tensor(v) else v for k, v in vars(out).items()})
        return total, {k: v.detach() for k, v in terms.items()}, detached


    def virtual_views(self, scene: Any, batch: dict[str, Any], image_hw: tuple[int, int]
                      ) -> dict[str, torch.Tensor] | None:
        """With probability loss.virtual_prob per camera, one of its V virtual cameras (uniform), rendered from
        the same encoding; None when none is drawn or the batch has no field targets."""
        p = self.loss.cfg.virtual_prob
        if p <= 0 or "virtual_cam2ego" not in batch:
            return None
        poses = batch["virtual_cam2ego"]  # (B, N, V, 4, 4)
        B, N, V = poses.shape[:3]
        selected = torch.rand(B, N, device=poses.device) < p
        if not bool(selected.any()):
            return None
        choice = torch.randint(V, (B, N), device=poses.device)
        cam2ego = poses.gather(2, choice.view(B, N, 1, 1, 1).expand(B, N, 1, 4, 4)).squeeze(2)
        # the unselected cameras are rendered too (one batched call is simpler than ragged subsets); their
        # loss terms are masked out by `selected`
        views = self.model.render(scene, CameraRig(batch["intrinsics"], cam2ego, image_hw), features=False)
        return {"rgb": views.rgb, "depth": views.depth, "choice": choice, "selected": selected}


def weights_digest(model: nn.Module) -> str:
    """sha256 over every state_dict tensor's bytes (names sorted): equal digests = identical weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def lr_lambda(cfg: OptimConfig, max_steps: int) -> Callable[[int], float]:
    """Learning-rate factor per step: linear warmup, then constant or cosine down to min_lr_ratio."""
    def fn(step: int) -> float:
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
        if cfg.schedule == "cosine":
            t = min(1.0, step / max(1, max_steps))
            return warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
        return warm

    return fn


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for `TrainConfig.amp` on `device` (None = fp32).

    CUDA: auto = bf16 where supported, else fp16 (with a GradScaler). CPU: auto = off; bf16 is honoured
    (CPU autocast supports it); fp16 is refused (no loss scaling on the CPU path).
    """
    if amp not in ("auto", "off", "bf16", "fp16"):
        raise ValueError(f"amp must be auto, off, bf16 or fp16, got {amp!r}")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "auto":
        amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp fp16 needs a CUDA device (use bf16 or off on the CPU)")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def optimizer_step(step_module: nn.Module, batch: dict[str, Any], optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, params: list[torch.Tensor], grad_clip: float,
                   amp_dtype: torch.dtype | None, device_type: str
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor], ModelOutput, torch.Tensor]:
    """One training step: forward + loss under autocast, (scaled) backward, unscale, clip, step.

    Returns (loss, loss terms, detached outputs, grad norm). The loss and its terms are fp32 (losses.py
    casts predictions up); the scaler skips the step when fp16 gradients overflowed.
    """
    with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
        total, terms, out = step_module(batch)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return total, terms, out, grad_norm


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (1 process when absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _log_images(writer: Any, step: int, batch: dict[str, Any], out: ModelOutput) -> None:
    from distillnerf_core.viz.images import camera_grid, colorize_depth, upsample_to

    hw = tuple(batch["images"].shape[-2:])
    rows = [batch["images"][0], out.rgb[0].detach(), upsample_to(colorize_depth(out.depth[0]), hw)]
    if "lidar_depth" in batch:
        rows.append(upsample_to(colorize_depth(batch["lidar_depth"][0]), hw))
    writer.add_image("views/input_rendered_depth_lidar", camera_grid(rows), step)


def train(cfg: TrainConfig, dataroot: str, version: str, out: str | Path, max_steps: int | None = None,
          max_minutes: float | None = None, resume: bool = False, device: str | None = None,
          threads: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Run (or continue) a training; returns a summary dict (rank 0's view)."""
    rank, world, local_rank = _dist_env()
    distributed = world > 1
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cpu":
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get(
            "LOCAL_WORLD_SIZE", world)))))
    if distributed and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if max_steps is not None:
        cfg.max_steps = max_steps
    run = Path(out)
    if rank == 0:
        run.mkdir(parents=True, exist_ok=True)
        for stale in (run / "checkpoints").glob(".tmp-step_*") if (run / "checkpoints").is_dir() else []:
            shutil.rmtree(stale, ignore_errors=True)
    torch.manual_seed(cfg.seed)
    mcfg = model_config(cfg)
    pca = prepare_feature_distillation(cfg, mcfg, dataroot, seed=cfg.seed, verbose=rank == 0)
    model = DistillNeRFModel(mcfg).to(dev)
    if pca is not None:
        model.feature_pca.load_state_dict(pca.state_dict())
    if cfg.init and not resume:
        load_init_weights(model, cfg.init)
    if cfg.compile:
        model.compile_stages()
    loss_fn = DistillNeRFLoss(cfg.loss).to(dev)
    step_module = TrainStep(model, loss_fn)
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    optimizer = torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(o, cfg.max_steps))
    amp_dtype = resolve_amp(cfg.amp, dev)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    start_step = 0
    if resume:
        ckpt = find_resumable(run)
        if ckpt is None:
            if rank == 0:
                logger.warning("--resume: no complete checkpoint in %s/checkpoints, starting from step 0", run)
        else:
            load_weights(model, ckpt / "model.safetensors")
            tensors, state = load_training_state(ckpt)
            optimizer.load_state_dict(optimizer_from_flat(tensors, state["optimizer"]))
            if state.get("scheduler"):
                sd = dict(state["scheduler"])
                sd["lr_lambdas"] = [None] * len(scheduler.lr_lambdas)
                scheduler.load_state_dict(sd)
            if state.get("scaler") and scaler.is_enabled():
                scaler.load_state_dict(state["scaler"])
            start_step = int(state["step"])
            if rank == 0:
                logger.info("resumed from %s at step %d", ckpt, start_step)

    ddp_module: nn.Module = step_module
    if distributed:
        ddp_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=True)

    render_hw = model.renderer.render_hw(tuple(mcfg.image_hw))
    load_next = cfg.data.load_next or cfg.loss.nvs_l1 > 0
    dataset = make_dataset(dataroot, version, mcfg.image_hw, cfg.data, render_hw, load_next=load_next)

    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=False)
    workers = cfg.data.num_workers
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, sampler=sampler, num_workers=workers,
                        collate_fn=collate_samples, pin_memory=dev.type == "cuda", drop_last=False,
                        persistent_workers=workers > 0, worker_init_fn=_worker_init if workers > 0 else None,
                        prefetch_factor=2 if workers > 0 else None)
    steps_per_epoch = max(1, len(loader))

    writer = None
    if rank == 0:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run / "tb"))
        except ImportError:
            logger.warning("tensorboard not installed: no event files")
        (run / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    bar = None
    if rank == 0 and progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.max_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                   mininterval=1.0 if sys.stderr.isatty() else 30.0)

    model.train()
    step = start_step
    t0 = time.perf_counter()
    data_time = 0.0
    last: dict[str, float] = {}
    log_path = run / "train_log.jsonl"
    stop = step >= cfg.max_steps
    epoch = step // steps_per_epoch
    last_saved = start_step if resume else -1
    while not stop:
        sampler.set_epoch(epoch)
        t_data = time.perf_counter()
        for batch in loader:
            data_time += time.perf_counter() - t_data
            batch = _to_device(batch, dev)
            total, terms, out, grad_norm = optimizer_step(ddp_module, batch, optimizer, scaler, params, o.grad_clip,
                                                          amp_dtype, dev.type)
            scheduler.step()
            step += 1
            if rank == 0:
                last = {"loss": float(total.detach()), "grad_norm": float(grad_norm),
                        **{k: float(v.detach()) for k, v in terms.items()}}
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{last['loss']:.4f}", refresh=False)
                if writer is not None and (step % cfg.log_every == 0 or step == 1):
                    for k, v in last.items():
                        writer.add_scalar(f"loss/{k}" if k not in ("grad_norm",) else k, v, step)
                    writer.add_scalar("lr", scheduler.get_last_lr()[0], step)
                    elapsed = time.perf_counter() - t0
                    writer.add_scalar("perf/steps_per_s", (step - start_step) / max(elapsed, 1e-9), step)
                    writer.add_scalar("perf/data_wait_fraction", data_time / max(elapsed, 1e-9), step)
                if step % cfg.log_every == 0 or step == 1:
                    with open(log_path, "a") as fh:
                        fh.write(json.dumps({"step": step, "time_s": time.perf_counter() - t0, **last}) + "\n")
                if writer is not None and cfg.image_every > 0 and (step % cfg.image_every == 0 or step == 1):
                    _log_images(writer, step, batch, out)
            out_of_time = max_minutes is not None and (time.perf_counter() - t0) > 60.0 * max_minutes
            stop = step >= cfg.max_steps or out_of_time
            if distributed:  # every rank must take the same decision (time budgets differ per process)
                flag = torch.tensor([1.0 if stop else 0.0], device=dev)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop = bool(flag.item() > 0)
            if rank == 0 and (step % cfg.ckpt_every == 0 or stop):
                save_training_checkpoint(run, step, model, optimizer, scheduler, scaler, cfg.to_dict(), cfg.keep_last)
                last_saved = step
            if stop:
                break
            t_data = time.perf_counter()
        epoch += 1
    if rank == 0:
        if last_saved != step:
            save_training_checkpoint(run, step, model, optimizer, scheduler, scaler, cfg.to_dict(), cfg.keep_last)
        save_checkpoint(model, run / "model.safetensors", extra={"step": step, "dataroot": str(dataroot),
                                                                   "version": version})
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    elapsed = time.perf_counter() - t0
    summary = {"step": step, "start_step": start_step, "elapsed_s": elapsed,
               "steps_per_s": (step - start_step) / max(elapsed, 1e-9),
               "data_wait_fraction": data_time / max(elapsed, 1e-9), "last": last, "world_size": world}
    if rank == 0:
        (run / "train_summary.json").write_text(json.dumps(summary, indent=2))
    if distributed:
        # Consistency check: every rank must hold bit-identical weights (DDP averages gradients).
        hashes: list[Any] = [None] * world
        dist.all_gather_object(hashes, weights_digest(model))
        summary["rank_weight_sha256"] = hashes
        if rank == 0:
            (run / "train_summary.json").write_text(json.dumps(summary, indent=2))
            if len(set(hashes)) != 1:
                logger.warning("ranks hold different weights: %s", hashes)
        dist.barrier()
        # The DDP reducer holds the process group: free it first so that destroy really tears the group down
        # now, not in the interpreter's finalisation (a rank once aborted at exit after a finished run).
        del ddp_module
        gc.collect()
        dist.destroy_process_group()
    return summary
