"""Checkpoints: safetensors weights + a JSON sidecar (config, format and package versions, checksum).

Loading never unpickles: pickle-based files (.pt / .pth / .ckpt / .pkl, or any file that starts like
a pickle or a torch zip archive) are refused. Both files are written atomically (temp file +
os.replace) so a crash never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from distillnerf_core import __version__
from distillnerf_core.checked_files import sha256_file
from distillnerf_core.model.distillnerf import DistillNeRFModel, ModelConfig

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CKPT_RE = re.compile(r"^step_(\d{8})$")
COMPLETE = "COMPLETE"  # written last into a training checkpoint directory
PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin"}


class CheckpointError(ValueError):
    """A checkpoint file is unusable; the message names the file and what is wrong."""


def sidecar_path(path: str | Path) -> Path:
    """The JSON written beside `<name>.safetensors`: `<name>.json`."""
    return Path(path).with_suffix(".json")


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise




def refuse_non_finite(tensors: dict[str, torch.Tensor], path: str | Path, what: str = "weights") -> None:
    """CheckpointError naming `path` and the tensors when any floating-point tensor holds a NaN or inf."""
    bad = [k for k, v in tensors.items() if torch.is_tensor(v) and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path}: refusing to save non-finite {what}: {len(bad)} tensors hold NaN or inf "
                              f"(first {bad[:3]}); nothing was written")


def save_checkpoint(model: DistillNeRFModel, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write `path` (.safetensors) and its JSON sidecar; `extra` (JSON-able) is stored in the sidecar.
    Non-finite weights are refused (CheckpointError), never saved."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoint path must end in .safetensors, got {path}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    refuse_non_finite(tensors, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format_version": str(FORMAT_VERSION)}))
    meta = {
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "torch_version": torch.__version__,
        "config": model.config.to_dict(),
        "weights_file": path.name,
        "weights_sha256": sha256_file(path),
        "extra": extra or {},
    }
    write_metadata(path, meta)
    return path


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length, then a JSON object."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9:
        return False
    header_length = int.from_bytes(head[:8], "little")
    return 0 < header_length <= size - 8 and head[8:9] == b"{"


def _refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: refusing a pickle-based checkpoint ({path.suffix}); "
            "only .safetensors + .json checkpoints are loaded (pickle can run code)"
        )
    if _looks_like_safetensors(path):
        return
    with open(path, "rb") as handle:
        head = handle.read(2)
    if head[:1] == b"\x80" or head == b"PK":
        raise CheckpointError(f"{path}: file is a pickle / torch.save archive, not safetensors; refusing to load")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON sidecar of a checkpoint, validated."""
    side = sidecar_path(path)
    if not side.is_file():
        raise FileNotFoundError(f"checkpoint metadata not found: {side} (expected beside {Path(path).name})")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{side}: not valid JSON ({err})") from err
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{side}: checkpoint format_version {version!r}, this code reads {FORMAT_VERSION}")
    if "config" not in meta:
        raise CheckpointError(f"{side}: no 'config' entry")
    return meta


def write_metadata(path: str | Path, meta: dict[str, Any]) -> Path:
    """Rewrite the JSON sidecar of checkpoint `path` (atomically) with `meta`, e.g. after a calibration was added;
    the weights file and its checksum stay as they are. Returns the sidecar's path."""
    side = sidecar_path(path)
    _atomic_write(side, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2, sort_keys=True)))
    return side


def load_state(path: str | Path, verify_checksum: bool = True) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors checkpoint, refusing pickles and reporting corruption by file name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint weights not found: {path}")
    _refuse_pickle(path)
    if verify_checksum and sidecar_path(path).is_file():
        expected = read_metadata(path).get("weights_sha256")
        if expected and expected != sha256_file(path):
            raise CheckpointError(
                f"{path}: checksum mismatch with {sidecar_path(path).name} (file corrupted or replaced)"
            )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err


def load_weights(model: DistillNeRFModel, path: str | Path) -> None:
    """Load weights into an existing model; any missing, unexpected or mis-shaped tensor is an error."""
    state = load_state(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: tensors missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for key, value in own.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"{path}: shape mismatch for '{key}': file {tuple(state[key].shape)}, model {tuple(value.shape)}"
            )
        if state[key].dtype != value.dtype:
            raise CheckpointError(f"{path}: dtype mismatch for '{key}': file {state[key].dtype}, model {value.dtype}")
    model.load_state_dict(state)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> DistillNeRFModel:
    """Rebuild the model from the sidecar config and load its weights (the ViT file is not needed)."""
    meta = read_metadata(path)
    try:
        config = ModelConfig.from_dict(meta["config"])
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{sidecar_path(path)}: invalid config ({err})") from err
    try:
        model = DistillNeRFModel(config, load_pretrained=False)
    except ValueError as err:  # e.g. a frozen 2D branch whose weights file is not the one the model was built with
        raise CheckpointError(f"{sidecar_path(path)}: cannot build its model ({err})") from err
    load_weights(model, path)
    return model.to(device)


# Training checkpoints: RUN/checkpoints/step_XXXXXXXX/ directories written atomically.
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
                             scheduler: Any, scaler: Any, train_config: dict[str, Any], keep_last: int = 2,
                             extra: dict[str, Any] | None = None) -> Path:
    """Write RUN/checkpoints/step_XXXXXXXX atomically (temp dir + rename) and prune to `keep_last`."""
    root = run / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    refuse_non_finite(model.state_dict(), final)
    tensors, opt_meta = optimizer_to_flat(optimizer.state_dict())
    refuse_non_finite(tensors, final, "optimizer state")
    tmp = root / f".tmp-step_{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_checkpoint(model, tmp / "model.safetensors", extra={"step": step, **(extra or {})})
    save_file(tensors, str(tmp / "train_state.safetensors"))
    state = {
        "step": step,
        "optimizer": opt_meta,
        "scheduler": _jsonable(scheduler.state_dict()) if scheduler is not None else None,
        "scaler": _jsonable(scaler.state_dict()) if scaler is not None and scaler.is_enabled() else None,
        "train_config": train_config,
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
    except Exception as err:  # any failure means "not usable"
        raise CheckpointError(f"{ckpt}: unreadable training state ({err})") from err
    return tensors, state


def find_resumable(run: str | Path) -> Path | None:
    """The newest checkpoint of `run` whose model and training state both load (verified, not assumed)."""
    for ckpt in list_checkpoints(run):
        try:
            read_metadata(ckpt / "model.safetensors")
            load_state(ckpt / "model.safetensors")
            load_training_state(ckpt)
            return ckpt
        except (CheckpointError, FileNotFoundError, OSError) as err:
            logger.warning("skipping unusable checkpoint %s: %s", ckpt, err)
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """A model .safetensors from a file, a run directory or a training checkpoint directory."""
    p = Path(path)
    if p.is_file():
        return p
    if (p / "model.safetensors").is_file():
        return p / "model.safetensors"
    found = list_checkpoints(p)
    if found:
        return found[0] / "model.safetensors"
    raise FileNotFoundError(f"no checkpoint at {p} (expected a .safetensors file, a run dir or a checkpoint dir)")
