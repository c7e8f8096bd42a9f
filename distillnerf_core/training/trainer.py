"""The training loop: self-supervised training on any nuScenes-format dataroot, single process or DDP.

`train()` (a `Trainer`: set-up, steps, checkpoints, logs) builds the model from a TrainConfig, resumes from
the newest complete checkpoint when asked, and writes atomic checkpoints (training/checkpoints.py), tensorboard
scalars and pictures, train_log.jsonl and train_summary.json into the run directory. The command line is
`distillnerf-train` (cli/train.py).
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

from distillnerf_core.data.datasets import collate_samples, dataroot_cameras, make_dataset
from distillnerf_core.model.cameras import CameraRig
from distillnerf_core.model.distillnerf import DistillNeRFModel, ModelOutput
from distillnerf_core.portable_paths import portable_path
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
    """Forward + loss in one module (so DDP sees one forward): renders the input cameras and, from the same
    scene encoding, the next keyframe's cameras when the NVS loss is on, a neighbouring keyframe's cameras when
    the batch carries them (data.neighbour_targets) and the field's virtual cameras."""

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
        neighbour = self.neighbour_views(scene, batch, image_hw)
        total, terms = self.loss(out, batch, nvs_rgb, virtual, neighbour)
        # Only the loss may carry the graph out of forward: DDP (find_unused_parameters) walks the graph of
        # every returned tensor, and e.g. the unsupervised feature head would count as used but get no grad.
        detached = ModelOutput(**{k: v.detach() if torch.is_tensor(v) else v for k, v in vars(out).items()})
        return total, {k: v.detach() for k, v in terms.items()}, detached


    def neighbour_views(self, scene: Any, batch: dict[str, Any], image_hw: tuple[int, int]
                        ) -> dict[str, torch.Tensor] | None:
        """The batch's neighbouring keyframe cameras (data.neighbour_targets) rendered from this frame's encoding;
        None when the batch has none. Samples without a neighbour carry their own cameras (finite poses) and are
        rendered in the same call; their loss terms are left out by has_neighbour."""
        c = self.loss.cfg
        if not (c.neighbour_rgb_l1 or c.neighbour_rgb_ssim or c.neighbour_lidar or c.neighbour_sky):
            return None  # every neighbour term is off: nothing to render for
        if "neighbour_images" not in batch or not bool(batch["has_neighbour"].any()):
            return None
        views = self.model.render(scene, CameraRig(batch["neighbour_intrinsics"], batch["neighbour_cam2ego"],
                                                   image_hw), features=False)
        return {"rgb": views.rgb, "depth": views.depth}

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


class NonFiniteTrainingError(RuntimeError):
    """Training stopped on a non-finite loss or non-finite weights; the message names the step and the
    samples. Nothing of that step is saved."""


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


class Trainer:
    """One training run, single process or one rank of a DDP run.

    Constructing it sets the run up (process group, run directory, model, optimizer, data, and the state of the
    newest complete checkpoint when resuming); `train()` runs the steps, logs and checkpoints them, writes the
    final weights and returns the summary (rank 0's view).
    """

    def __init__(self, cfg: TrainConfig, dataroot: str, version: str, out: str | Path, max_steps: int | None = None,
                 max_minutes: float | None = None, resume: bool = False, device: str | None = None,
                 threads: int | None = None, progress: bool = True) -> None:
        self.rank, self.world, local_rank = _dist_env()
        self.distributed = self.world > 1
        self.dev = self._set_up_process(device, local_rank, threads)
        if max_steps is not None:
            cfg.max_steps = max_steps
        self.cfg, self.dataroot, self.version, self.run = cfg, dataroot, version, Path(out)
        self.max_minutes, self.resume, self.progress = max_minutes, resume, progress
        # the cameras in model order, from the dataroot's sensor table unless data.cameras names them (recorded in
        # train_config.json, so evaluation finds the model's order)
        cfg.data.cameras = dataroot_cameras(dataroot, version, cfg.data.cameras)
        self._prepare_run_dir()
        self._build_model()
        self._build_optimizer()
        self.start_step = self._resume_from_checkpoint() if resume else 0
        self.ddp_module = self._wrap_for_ddp()
        self._build_loader()
        self.writer: Any = None  # tensorboard, rank 0 (opened by train())
        self.bar: Any = None  # progress bar, rank 0 (opened by train())
        self.step = self.start_step
        self.last_saved = self.start_step if resume else -1
        self.last: dict[str, float] = {}  # the latest step's loss, grad norm and loss terms (rank 0)
        self.t0 = time.perf_counter()  # reset when train() starts the steps
        self.data_time = 0.0  # seconds the steps waited for the loader

    # ------------------------------------------------------------------------------------------ set-up
    def _set_up_process(self, device: str | None, local_rank: int, threads: int | None) -> torch.device:
        """This process's device (cuda:LOCAL_RANK when CUDA is there), CPU threads (the cores shared by the
        ranks of this machine unless `threads`) and, when torchrun started several ranks, the process group."""
        if device is None:
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        dev = torch.device(device)
        if dev.type == "cpu":
            torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get(
                "LOCAL_WORLD_SIZE", self.world)))))
        if self.distributed and not dist.is_initialized():
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        return dev

    def _prepare_run_dir(self) -> None:
        """Rank 0: create the run directory and remove the half-written checkpoints a killed run left."""
        if self.rank != 0:
            return
        self.run.mkdir(parents=True, exist_ok=True)
        checkpoints = self.run / "checkpoints"
        for stale in checkpoints.glob(".tmp-step_*") if checkpoints.is_dir() else []:
            shutil.rmtree(stale, ignore_errors=True)

    def _build_model(self) -> None:
        """The seeded model (feature PCA fitted, init weights loaded unless resuming, stages compiled when
        cfg.compile), the forward + loss module and the trainable parameters."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        self.mcfg = model_config(cfg)
        pca = prepare_feature_distillation(cfg, self.mcfg, self.dataroot, seed=cfg.seed, verbose=self.rank == 0)
        self.model = DistillNeRFModel(self.mcfg).to(self.dev)
        if pca is not None:
            self.model.feature_pca.load_state_dict(pca.state_dict())
        if cfg.init and not self.resume:
            load_init_weights(self.model, cfg.init, cfg.init_fresh)
        if cfg.compile:
            self.model.compile_stages()
        self.step_module = TrainStep(self.model, DistillNeRFLoss(cfg.loss).to(self.dev))
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def _build_optimizer(self) -> None:
        """Adam, the warmup / cosine learning-rate schedule, the autocast dtype and the fp16 gradient scaler."""
        o = self.cfg.optim
        self.optimizer = torch.optim.Adam(self.params, lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                          weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(o, self.cfg.max_steps))
        self.amp_dtype = resolve_amp(self.cfg.amp, self.dev)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    def _resume_from_checkpoint(self) -> int:
        """Load weights, optimizer, scheduler and scaler state of the newest usable checkpoint; its step (0 and
        a warning when there is none)."""
        ckpt = find_resumable(self.run)
        if ckpt is None:
            if self.rank == 0:
                logger.warning("--resume: no complete checkpoint in %s/checkpoints, starting from step 0", self.run)
            return 0
        load_weights(self.model, ckpt / "model.safetensors")
        tensors, state = load_training_state(ckpt)
        self.optimizer.load_state_dict(optimizer_from_flat(tensors, state["optimizer"]))
        if state.get("scheduler"):
            sd = dict(state["scheduler"])
            sd["lr_lambdas"] = [None] * len(self.scheduler.lr_lambdas)
            self.scheduler.load_state_dict(sd)
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        if self.rank == 0:
            logger.info("resumed from %s at step %d", ckpt, step)
        return step

    def _wrap_for_ddp(self) -> nn.Module:
        """The module the steps call: the forward + loss module, wrapped in DistributedDataParallel under DDP."""
        if not self.distributed:
            return self.step_module
        return nn.parallel.DistributedDataParallel(self.step_module, find_unused_parameters=True,
                                                   device_ids=[self.dev.index] if self.dev.type == "cuda" else None)

    def _build_loader(self) -> None:
        """The dataset, its per-rank shuffling sampler and the loader (batches collated, pinned on CUDA)."""
        cfg = self.cfg
        render_hw = self.model.renderer.render_hw(tuple(self.mcfg.image_hw))
        load_next = cfg.data.load_next or cfg.loss.nvs_l1 > 0
        dataset = make_dataset(self.dataroot, self.version, self.mcfg.image_hw, cfg.data, render_hw,
                               load_next=load_next)
        self.sampler = DistributedSampler(dataset, num_replicas=self.world, rank=self.rank, shuffle=True,
                                          seed=cfg.seed, drop_last=False)
        workers = cfg.data.num_workers
        self.loader = DataLoader(dataset, batch_size=cfg.data.batch_size, sampler=self.sampler, num_workers=workers,
                                 collate_fn=collate_samples, pin_memory=self.dev.type == "cuda", drop_last=False,
                                 persistent_workers=workers > 0, worker_init_fn=_worker_init if workers > 0 else None,
                                 prefetch_factor=2 if workers > 0 else None)
        self.steps_per_epoch = max(1, len(self.loader))

    # ------------------------------------------------------------------------------------------ the run
    def train(self) -> dict[str, Any]:
        """Step until cfg.max_steps or the time budget, checkpointing every cfg.ckpt_every steps and at the end;
        then the final weights (run/model.safetensors) and the summary (train_summary.json)."""
        self._open_logs()
        self.model.train()
        self.t0 = time.perf_counter()
        stop = self.step >= self.cfg.max_steps
        epoch = self.step // self.steps_per_epoch
        while not stop:
            self.sampler.set_epoch(epoch)
            t_data = time.perf_counter()
            for batch in self.loader:
                self.data_time += time.perf_counter() - t_data
                self._step(batch)
                stop = self._should_stop()
                if self.rank == 0 and (self.step % self.cfg.ckpt_every == 0 or stop):
                    self._save_training_checkpoint()
                if stop:
                    break
                t_data = time.perf_counter()
            epoch += 1
        self._save_final_weights()
        self._close_logs()
        return self._finish()

    def _step(self, batch: dict[str, Any]) -> None:
        """One optimizer step and one scheduler step on `batch`; rank 0 logs it."""
        batch = _to_device(batch, self.dev)
        total, terms, out, grad_norm = optimizer_step(self.ddp_module, batch, self.optimizer, self.scaler,
                                                      self.params, self.cfg.optim.grad_clip, self.amp_dtype,
                                                      self.dev.type)
        self._refuse_non_finite(total, terms, grad_norm, batch)
        self.scheduler.step()
        self.step += 1
        if self.rank == 0:
            self.last = {"loss": float(total.detach()), "grad_norm": float(grad_norm),
                         **{k: float(v.detach()) for k, v in terms.items()}}
            self._log_step(batch, out)

    def _refuse_non_finite(self, total: torch.Tensor, terms: dict[str, torch.Tensor], grad_norm: torch.Tensor,
                           batch: dict[str, Any]) -> None:
        """Stop (NonFiniteTrainingError naming the step and the samples) on a non-finite loss, or on non-finite
        weights after a non-finite gradient that the grad scaler did not skip. Under DDP the ranks agree."""
        problem = ""
        if not bool(torch.isfinite(total.detach())):
            bad = sorted(k for k, v in terms.items() if not bool(torch.isfinite(v.detach()).all()))
            problem = f"the loss is {float(total.detach())} (non-finite terms: {', '.join(bad) or 'the total'})"
        elif not self.scaler.is_enabled() and not bool(torch.isfinite(grad_norm)):
            weights = [n for n, p in self.model.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
            if weights:
                problem = f"the gradient norm is {float(grad_norm)} and {len(weights)} weights are non-finite " \
                          f"(first {weights[:3]})"
        flag = 1.0 if problem else 0.0
        if self.distributed:
            flags = torch.tensor([flag], device=self.dev)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            flag = float(flags.item())
        if flag:
            saved = f"the newest checkpoint is step {self.last_saved}" if self.last_saved > 0 else "no checkpoint"
            raise NonFiniteTrainingError(
                f"training stopped at step {self.step + 1}: {problem or 'another rank saw a non-finite loss'} on "
                f"samples {batch.get('sample_token')}; nothing of this step is saved ({saved}). Check the data of "
                "these samples and the learning rate")

    def _should_stop(self) -> bool:
        """cfg.max_steps reached or the time budget spent; under DDP every rank must take the same decision
        (time budgets differ per process), so the ranks agree on it."""
        out_of_time = self.max_minutes is not None and (time.perf_counter() - self.t0) > 60.0 * self.max_minutes
        stop = self.step >= self.cfg.max_steps or out_of_time
        if self.distributed:
            flag = torch.tensor([1.0 if stop else 0.0], device=self.dev)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item() > 0)
        return stop

    # ------------------------------------------------------------------------------------------ checkpoints
    def _save_training_checkpoint(self) -> None:
        """Rank 0: an atomic checkpoint of this step (weights + optimizer, scheduler and scaler state)."""
        save_training_checkpoint(self.run, self.step, self.model, self.optimizer, self.scheduler, self.scaler,
                                 self.cfg.to_dict(), self.cfg.keep_last)
        self.last_saved = self.step

    def _save_final_weights(self) -> None:
        """Rank 0: a checkpoint of the last step unless it has one, and the weights as run/model.safetensors."""
        if self.rank != 0:
            return
        if self.last_saved != self.step:
            self._save_training_checkpoint()
        save_checkpoint(self.model, self.run / "model.safetensors",
                        extra={"step": self.step, "dataroot": portable_path(self.dataroot), "version": self.version})

    # ------------------------------------------------------------------------------------------ logs
    def _open_logs(self) -> None:
        """Rank 0: the tensorboard writer (when tensorboard is installed), train_config.json and, unless
        progress is off, the progress bar."""
        if self.rank != 0:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run / "tb"))
        except ImportError:
            logger.warning("tensorboard not installed: no event files")
        recorded = self.cfg.to_dict()  # a file that travels with the weights: no path of this machine
        if recorded.get("init"):
            recorded["init"] = portable_path(recorded["init"])
        (self.run / "train_config.json").write_text(json.dumps(recorded, indent=2))
        if self.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=self.cfg.max_steps, initial=self.start_step, desc="train", unit="step",
                            dynamic_ncols=True, mininterval=1.0 if sys.stderr.isatty() else 30.0)

    def _log_step(self, batch: dict[str, Any], out: ModelOutput) -> None:
        """Rank 0, after a step: the progress bar; on the first and every cfg.log_every-th step the tensorboard
        scalars and a train_log.jsonl line; on the first and every cfg.image_every-th step the rendered views."""
        step, cfg = self.step, self.cfg
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{self.last['loss']:.4f}", refresh=False)
        log_now = step % cfg.log_every == 0 or step == 1
        if self.writer is not None and log_now:
            self._write_scalars()
        if log_now:
            with open(self.run / "train_log.jsonl", "a") as fh:
                fh.write(json.dumps({"step": step, "time_s": time.perf_counter() - self.t0, **self.last}) + "\n")
        if self.writer is not None and cfg.image_every > 0 and (step % cfg.image_every == 0 or step == 1):
            _log_images(self.writer, step, batch, out)

    def _write_scalars(self) -> None:
        """Tensorboard: the latest losses and grad norm, the learning rate, steps/s and the data-wait fraction."""
        step, writer = self.step, self.writer
        for k, v in self.last.items():
            writer.add_scalar(f"loss/{k}" if k not in ("grad_norm",) else k, v, step)
        writer.add_scalar("lr", self.scheduler.get_last_lr()[0], step)
        elapsed = time.perf_counter() - self.t0
        writer.add_scalar("perf/steps_per_s", (step - self.start_step) / max(elapsed, 1e-9), step)
        writer.add_scalar("perf/data_wait_fraction", self.data_time / max(elapsed, 1e-9), step)

    def _close_logs(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()

    # ------------------------------------------------------------------------------------------ the end
    def _finish(self) -> dict[str, Any]:
        """The summary, written by rank 0; under DDP also the ranks' weight digests, then the process group
        is torn down."""
        elapsed = time.perf_counter() - self.t0
        summary = {"step": self.step, "start_step": self.start_step, "elapsed_s": elapsed,
                   "steps_per_s": (self.step - self.start_step) / max(elapsed, 1e-9),
                   "data_wait_fraction": self.data_time / max(elapsed, 1e-9), "last": self.last,
                   "world_size": self.world}
        if self.rank == 0:
            self._write_summary(summary)
        if self.distributed:
            self._compare_rank_weights(summary)
            self._destroy_process_group()
        return summary

    def _write_summary(self, summary: dict[str, Any]) -> None:
        (self.run / "train_summary.json").write_text(json.dumps(summary, indent=2))

    def _compare_rank_weights(self, summary: dict[str, Any]) -> None:
        """Consistency check: every rank must hold bit-identical weights (DDP averages gradients). The digests
        go into the summary (rewritten by rank 0); a mismatch is logged."""
        hashes: list[Any] = [None] * self.world
        dist.all_gather_object(hashes, weights_digest(self.model))
        summary["rank_weight_sha256"] = hashes
        if self.rank == 0:
            self._write_summary(summary)
            if len(set(hashes)) != 1:
                logger.warning("ranks hold different weights: %s", hashes)

    def _destroy_process_group(self) -> None:
        dist.barrier()
        # The DDP reducer holds the process group: free it first so that destroy really tears the group down
        # now, not in the interpreter's finalisation (a rank once aborted at exit after a finished run).
        self.ddp_module = None
        gc.collect()
        dist.destroy_process_group()


def train(cfg: TrainConfig, dataroot: str, version: str, out: str | Path, max_steps: int | None = None,
          max_minutes: float | None = None, resume: bool = False, device: str | None = None,
          threads: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Run (or continue) a training; returns a summary dict (rank 0's view). See Trainer."""
    return Trainer(cfg, dataroot, version, out, max_steps=max_steps, max_minutes=max_minutes, resume=resume,
                   device=device, threads=threads, progress=progress).train()
