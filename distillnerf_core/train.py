"""`distillnerf-train`: self-supervised training on any nuScenes-format dataroot.

    distillnerf-train --config train_small --dataroot D --version V --out RUN [--max-steps N]
                      [--max-minutes M] [--resume]
    torchrun --nproc_per_node 2 -m distillnerf_core.train ...      (DDP: gloo on CPU, nccl on GPU)

Checkpoints: RUN/checkpoints/step_XXXXXXXX/ holds model.safetensors + model.json (weights + model config,
see checkpoint.py) and train_state.safetensors + train_state.json (optimizer tensors; optimizer groups,
scheduler, grad scaler, step, train config). A checkpoint is written into a hidden temp directory, every
file fsynced, a COMPLETE marker written last, then the directory is renamed into place (atomic), so a
kill at any moment leaves either the previous checkpoints or a complete new one; `--resume` takes the
newest one that loads. The last `keep_last` (2) are kept. At the end RUN/model.safetensors + model.json
hold the final weights (what distillnerf-eval and the ROS node load). Nothing is pickled.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from .cameras import CameraRig
from .checkpoint import CheckpointError, load_weights, read_metadata, save_checkpoint
from .config import CONFIG_DIR, CONFIG_NAMES, ModelConfig, _build, config_from_dict, load_config
from .losses import DistillNeRFLoss, LossConfig
from .model import DistillNeRFModel, ModelOutput

CKPT_RE = re.compile(r"^step_(\d{8})$")
COMPLETE = "COMPLETE"


# ------------------------------------------------------------------------------------------------ config
@dataclass
class OptimConfig:
    """Adam as in the reference (lr 2e-4, betas (0, 0.99)), grad-norm clip 35, optional warmup / cosine."""

    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.0, 0.99])
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 35.0
    warmup_steps: int = 0
    schedule: str = "constant"  # "constant" or "cosine" (to min_lr_ratio * lr at max_steps)
    min_lr_ratio: float = 0.1


@dataclass
class DataConfig:
    batch_size: int = 1  # per process
    num_workers: int = 2
    cameras: list[str] | None = None  # default: the 6 nuScenes cameras
    depth_range: list[float] = field(default_factory=lambda: [1.0, 80.0])
    split: str = "all"  # nuScenes split name (train, val, mini_train, ...) or "all"
    load_next: bool = False  # load the next keyframe (needed only when loss.nvs_l1 > 0)


@dataclass
class TrainConfig:
    """Everything `distillnerf-train` needs besides paths; YAML-loadable (unknown keys are errors)."""

    model: str = "small"  # shipped model config name or a YAML path (relative to the train YAML)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # nested, merged into the model config
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    max_steps: int = 10000
    ckpt_every: int = 200
    keep_last: int = 2
    log_every: int = 10
    image_every: int = 200
    amp: str = "auto"  # auto (bf16 if supported, else fp16 + GradScaler; CUDA only), bf16, fp16, off
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_train_config(name_or_path: str | Path) -> TrainConfig:
    """A train YAML by path, by shipped name (`train_small` -> configs/train_small.yaml), or a bare model
    config name (`tiny`, `small`, `paper`) meaning the default training settings for that model."""
    s = str(name_or_path)
    if s in CONFIG_NAMES:
        return TrainConfig(model=s)
    path = Path(s)
    if not path.is_file():
        shipped = CONFIG_DIR / f"{s}.yaml"
        if not shipped.is_file():
            raise FileNotFoundError(f"train config '{s}' is neither a file nor a shipped config in {CONFIG_DIR}")
        path = shipped
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    try:
        cfg = _build(TrainConfig, data, "")
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    if cfg.model not in CONFIG_NAMES and not Path(cfg.model).is_absolute():
        cfg.model = str((path.parent / cfg.model).resolve())
    return cfg


def model_config(cfg: TrainConfig) -> ModelConfig:
    base = load_config(cfg.model).to_dict()
    return config_from_dict(_deep_merge(base, cfg.model_overrides))


# ------------------------------------------------------------------------------------------------ state
def optimizer_to_flat(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state_dict -> (tensors for safetensors, JSON-able rest)."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        plain = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                plain[k] = v
        meta["state"][str(idx)] = plain
    return tensors, meta


def optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in meta["state"].items()}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def _jsonable(obj: Any) -> Any:
    try:
        json.dumps(obj)
        return obj
    except TypeError:
        if isinstance(obj, dict):
            return {k: _jsonable(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [_jsonable(v) for v in obj]
        if torch.is_tensor(obj) and obj.numel() == 1:
            return obj.item()
        return None


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_training_checkpoint(run: Path, step: int, model: DistillNeRFModel, optimizer: torch.optim.Optimizer,
                             scheduler: Any, scaler: Any, cfg: TrainConfig, keep_last: int = 2,
                             extra: dict[str, Any] | None = None) -> Path:
    """Write RUN/checkpoints/step_XXXXXXXX atomically (temp dir + rename) and prune to `keep_last`."""
    root = run / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_checkpoint(model, tmp / "model.safetensors", extra={"step": step, **(extra or {})})
    tensors, opt_meta = optimizer_to_flat(optimizer.state_dict())
    save_file(tensors, str(tmp / "train_state.safetensors"))
    state = {
        "step": step,
        "optimizer": opt_meta,
        "scheduler": _jsonable(scheduler.state_dict()) if scheduler is not None else None,
        "scaler": _jsonable(scaler.state_dict()) if scaler is not None and scaler.is_enabled() else None,
        "train_config": cfg.to_dict(),
        "time": time.time(),
    }
    (tmp / "train_state.json").write_text(json.dumps(state, indent=1))
    (tmp / COMPLETE).write_text(f"{step}\n")
    _fsync_dir(tmp)
    if final.exists():  # re-saving a step after a resume: move the old one aside first
        old = root / f".old-step_{step:08d}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    complete = sorted(p for p in root.iterdir() if CKPT_RE.match(p.name))
    for old in complete[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run: str | Path) -> list[Path]:
    """Complete checkpoint directories of a run, newest first (temp dirs and those without COMPLETE skipped)."""
    root = Path(run) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if CKPT_RE.match(p.name) and (p / COMPLETE).is_file()]
    return sorted(found, key=lambda p: int(CKPT_RE.match(p.name).group(1)), reverse=True)


def load_training_state(ckpt: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(optimizer tensors, train_state.json) of a checkpoint dir; raises CheckpointError if unreadable."""
    try:
        state = json.loads((ckpt / "train_state.json").read_text())
        tensors = load_file(str(ckpt / "train_state.safetensors"))
    except Exception as err:  # noqa: BLE001 - any failure means "not usable"
        raise CheckpointError(f"{ckpt}: unreadable training state ({err})") from err
    return tensors, state


def find_resumable(run: str | Path) -> Path | None:
    """The newest checkpoint of `run` whose model and training state both load (verified, not assumed)."""
    from .checkpoint import load_state

    for ckpt in list_checkpoints(run):
        try:
            read_metadata(ckpt / "model.safetensors")
            load_state(ckpt / "model.safetensors")
            load_training_state(ckpt)
            return ckpt
        except (CheckpointError, FileNotFoundError, OSError) as err:
            print(f"skipping unusable checkpoint {ckpt}: {err}", file=sys.stderr)
    return None


# ------------------------------------------------------------------------------------------------ steps
class TrainStep(nn.Module):
    """Forward + loss in one module (so DDP sees one forward): renders the input cameras and, when the
    NVS loss is on, the next keyframe's cameras from the same scene encoding."""

    def __init__(self, model: DistillNeRFModel, loss: DistillNeRFLoss) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor], ModelOutput]:
        m = self.model
        images = batch["images"]
        image_hw = tuple(images.shape[-2:])
        m.stage_ms = {}
        scene = m.encode(images, batch["intrinsics"], batch["cam2ego"])
        views = m.render(scene, CameraRig(batch["intrinsics"], batch["cam2ego"], image_hw))
        render_hw = m.renderer.render_hw(image_hw)

        def at_render(depth: torch.Tensor) -> torch.Tensor:
            return F.interpolate(depth, size=render_hw, mode="bilinear", align_corners=False)

        out = ModelOutput(**vars(views), coarse_depth=at_render(scene.lift.coarse_depth),
                          fine_depth=at_render(scene.lift.fine_depth))
        nvs_rgb = None
        if self.loss.cfg.nvs_l1 and "next_images" in batch and bool(batch["has_next"].any()):
            nvs_rgb = m.render(scene, CameraRig(batch["next_intrinsics"], batch["next_cam2ego"], image_hw)).rgb
        total, terms = self.loss(out, batch, nvs_rgb)
        # Only the loss may carry the graph out of forward: DDP (find_unused_parameters) walks the graph of
        # every returned tensor, and e.g. the unsupervised feature head would count as used but get no grad.
        detached = ModelOutput(**{k: v.detach() if torch.is_tensor(v) else v for k, v in vars(out).items()})
        return total, {k: v.detach() for k, v in terms.items()}, detached


def weights_digest(model: nn.Module) -> str:
    """sha256 over every state_dict tensor's bytes (names sorted): equal digests = identical weights."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def lr_lambda(cfg: OptimConfig, max_steps: int):
    def fn(step: int) -> float:
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
        if cfg.schedule == "cosine":
            t = min(1.0, step / max(1, max_steps))
            return warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
        return warm

    return fn


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def make_dataset(dataroot: str, version: str, mcfg: ModelConfig, data: DataConfig, render_hw: tuple[int, int],
                 load_next: bool | None = None, split: str | None = None):
    from .datasets import NUSCENES_CAMERAS, NuScenesDataset

    split = split or data.split
    scenes = None
    if split != "all":
        from nuscenes.utils.splits import create_splits_scenes

        splits = create_splits_scenes()
        if split not in splits:
            raise ValueError(f"unknown split {split!r}; one of all, {', '.join(sorted(splits))}")
        scenes = splits[split]
    return NuScenesDataset(
        dataroot, version, image_size=tuple(mcfg.image_hw), render_size=render_hw,
        cameras=data.cameras or NUSCENES_CAMERAS, scenes=scenes, depth_range=tuple(data.depth_range),
        load_next=data.load_next if load_next is None else load_next,
    )


def _dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment (1 process when absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _log_images(writer: Any, step: int, batch: dict[str, Any], out: ModelOutput) -> None:
    from .vis import camera_grid, colorize_depth, upsample_to

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
    model = DistillNeRFModel(mcfg).to(dev)
    loss_fn = DistillNeRFLoss(cfg.loss).to(dev)
    step_module = TrainStep(model, loss_fn)
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    optimizer = torch.optim.Adam(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(o, cfg.max_steps))
    amp = cfg.amp
    amp_dtype = None
    if dev.type == "cuda" and amp != "off":
        if amp == "auto":
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        amp_dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    start_step = 0
    if resume:
        ckpt = find_resumable(run)
        if ckpt is None:
            if rank == 0:
                print(f"--resume: no complete checkpoint in {run}/checkpoints, starting from step 0", file=sys.stderr)
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
                print(f"resumed from {ckpt} at step {start_step}", file=sys.stderr)

    ddp_module: nn.Module = step_module
    if distributed:
        ddp_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=True)

    render_hw = model.renderer.render_hw(tuple(mcfg.image_hw))
    load_next = cfg.data.load_next or cfg.loss.nvs_l1 > 0
    dataset = make_dataset(dataroot, version, mcfg, cfg.data, render_hw, load_next=load_next)
    from .datasets import collate_samples

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
            print("tensorboard not installed: no event files", file=sys.stderr)
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
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                total, terms, out = ddp_module(batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, o.grad_clip)
            scaler.step(optimizer)
            scaler.update()
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
                save_training_checkpoint(run, step, model, optimizer, scheduler, scaler, cfg, cfg.keep_last)
                last_saved = step
            if stop:
                break
            t_data = time.perf_counter()
        epoch += 1
    if rank == 0:
        if last_saved != step:
            save_training_checkpoint(run, step, model, optimizer, scheduler, scaler, cfg, cfg.keep_last)
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
                print(f"WARNING: ranks hold different weights: {hashes}", file=sys.stderr)
        dist.barrier()
        dist.destroy_process_group()
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distillnerf-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="train YAML (path or shipped name, e.g. train_small) "
                        "or a model config name (tiny, small, paper) with default training settings")
    parser.add_argument("--dataroot", required=True)
    parser.add_argument("--version", required=True, help="e.g. v1.0-trainval, v1.0-mini, v1.0-synthetic")
    parser.add_argument("--out", required=True, help="run directory (checkpoints, tensorboard, logs)")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--max-minutes", type=float, help="wall-clock budget; a checkpoint is written at the end")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    parser.add_argument("--split", help="override data.split (all, train, val, mini_train, ...)")
    parser.add_argument("--ckpt-every", type=int, help="override ckpt_every")
    parser.add_argument("--workers", type=int, help="override data.num_workers")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK if available)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads on CPU")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    cfg = load_train_config(args.config)
    if args.split:
        cfg.data.split = args.split
    if args.ckpt_every:
        cfg.ckpt_every = args.ckpt_every
    if args.workers is not None:
        cfg.data.num_workers = args.workers
    summary = train(cfg, args.dataroot, args.version, args.out, args.max_steps, args.max_minutes, args.resume,
                    args.device, args.threads, not args.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done: step {summary['step']} ({summary['steps_per_s']:.3f} steps/s, "
              f"data wait {100 * summary['data_wait_fraction']:.1f}%), "
              f"final weights {Path(args.out) / 'model.safetensors'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
