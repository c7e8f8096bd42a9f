"""Feature caches: a teacher's dense features for every keyframe camera image, computed once.

Layout, beside the images of a nuScenes-format dataroot (DIR = DATAROOT/features/<name> by default):

    DIR/manifest.json                       format_version, teacher identity (kind, model, weights file and
                                            sha256, settings), dim, dtype, version, cameras, entries, complete
    DIR/<CHANNEL>/<sample_data token>.safetensors   one tensor "features": float16 (D, h, w) for that image

Entries are written atomically (temp file + rename) and recorded in the manifest's `files` (size + sha256 per
entry, the manifest itself rewritten atomically as entries are added), so a rerun with the same teacher skips
exactly the entries that verify and recomputes any other (a truncated or altered entry is redone, not
skipped); a rerun with a different teacher into the same directory is an error. Under torchrun (RANK /
WORLD_SIZE, distillnerf_core/sharding.py) each rank computes the images it is assigned (sorted sample_data
tokens modulo the world size), appends each entry's record to its own part DIR/manifest.rank<k>.jsonl (a killed
rank loses its current image only) and never writes manifest.json: rank 0 merges the parts after a barrier, or
`merge_cache` (`distillnerf-cache-features --merge`) does, into the manifest a single process writes; the parts
are removed once a complete manifest holds them. Non-finite features are
never written. Training and evaluation read entries through `load_entry`, which checks each one (a readable
safetensors file holding only a float16 `features` (D, h, w) with D = the manifest's dim, every value
finite): a missing or malformed entry is an error naming the file, never a silent dummy.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from distillnerf_core.checked_files import (
    DataFileError,
    atomic_write,
    file_record,
    load_npz,
    matches_record,
    path_component,
    read_json,
    require,
    write_json,
)
from distillnerf_core.sharding import Journal, barrier, init_group, part_path, read_parts, remove_parts, shard_from_env
from distillnerf_core.teachers.base import Teacher, TeacherConfig

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PART_STEM = "manifest"  # the ranks' parts: manifest.rank<k>.jsonl
FEATURES_DIR = "features"
MAX_ENTRY_BYTES = 2**30
MANIFEST_KEYS = {"teacher": dict, "dim": int, "dtype": str, "version": str, "cameras": list, "complete": bool,
                 "entries": int}
MANIFEST_EVERY = 32  # entries between two manifest rewrites (a kill loses at most these to recomputation)


def build_teacher(cfg: TeacherConfig) -> Teacher:
    """The teacher `cfg` describes (weights from its local file)."""
    cfg.validate()
    if cfg.kind == "clip":
        from distillnerf_core.teachers.clip import ClipTeacher

        return ClipTeacher(cfg)
    if cfg.kind == "dinov2":
        from distillnerf_core.teachers.dinov2 import DinoV2Teacher

        return DinoV2Teacher(cfg)
    if cfg.kind == "segmenter":
        from distillnerf_core.teachers.segmenter import SegmenterTeacher

        return SegmenterTeacher(cfg)
    from distillnerf_core.teachers.oracle import OracleTeacher

    return OracleTeacher(cfg)


def resolve_cache(dataroot: str | Path, name_or_path: str | Path) -> Path:
    """A cache directory: an existing directory holding a manifest, else DATAROOT/features/<name>."""
    path = Path(name_or_path)
    if (path / MANIFEST).is_file():
        return path
    return Path(dataroot) / FEATURES_DIR / str(name_or_path)


def read_manifest(cache: str | Path) -> dict[str, Any]:
    """The manifest of a cache directory; FileNotFoundError names it and says how to make it."""
    path = Path(cache) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"feature cache manifest not found: {path} (make the cache with "
                                "distillnerf-cache-features)")
    manifest = read_json(path, "feature cache manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataFileError(f"{path}: cache format_version {manifest.get('format_version')!r}, this code reads "
                            f"{FORMAT_VERSION}")
    for key, kind in MANIFEST_KEYS.items():
        require(manifest, key, kind, path)
    if manifest["dim"] <= 0 or not all(isinstance(c, str) for c in manifest["cameras"]):
        raise DataFileError(f"{path}: key 'dim' must be > 0 and 'cameras' a list of channel names")
    if not isinstance(manifest.setdefault("files", {}), dict):
        raise DataFileError(f"{path}: key 'files' is a {type(manifest['files']).__name__}, expected an object")
    return manifest


def entry_key(channel: str, sd_token: str) -> str:
    """An entry's key in the manifest's `files`: its path relative to the cache."""
    return f"{channel}/{sd_token}.safetensors"


def entry_path(cache: str | Path, channel: str, sd_token: str) -> Path:
    """DIR/<CHANNEL>/<token>.safetensors; a channel or token from the tables that is not a plain name is refused."""
    return Path(cache) / path_component(channel, "camera channel") / \
        f"{path_component(sd_token, 'sample_data token')}.safetensors"


def load_entry(cache: str | Path, channel: str, sd_token: str, manifest: dict[str, Any] | None = None
               ) -> torch.Tensor:
    """(D, h, w) float32 features of one image; a missing entry is a FileNotFoundError naming it, a malformed
    one (unreadable, other tensors, dtype or shape, D other than the manifest's dim, a size other than the
    manifest records, non-finite values) a DataFileError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = entry_path(cache, channel, sd_token)
    if not path.is_file():
        raise FileNotFoundError(f"feature cache entry missing: {path} (run distillnerf-cache-features for this "
                                "dataroot again; it resumes)")
    rerun = "(run distillnerf-cache-features again: it recomputes entries that do not verify)"
    size = path.stat().st_size
    record = (manifest or {}).get("files", {}).get(entry_key(channel, sd_token))
    if size > MAX_ENTRY_BYTES or (isinstance(record, dict) and record.get("bytes") != size):
        raise DataFileError(f"{path}: {size} bytes, the manifest records {record.get('bytes') if record else None}"
                            f" (limit {MAX_ENTRY_BYTES}) {rerun}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise DataFileError(f"{path}: not a readable feature cache entry (truncated or corrupt: {error}) {rerun}") \
            from error
    if set(tensors) != {"features"}:
        raise DataFileError(f"{path}: holds tensors {sorted(tensors)}, a feature cache entry holds only 'features'")
    feats = tensors["features"]
    dim = (manifest or {}).get("dim")
    if feats.dtype != torch.float16 or feats.ndim != 3 or (dim is not None and feats.shape[0] != dim):
        raise DataFileError(f"{path}: key 'features' is {feats.dtype} {tuple(feats.shape)}, expected float16"
                            f" (D, h, w) with D = {dim if dim is not None else 'the teacher dim'}")
    if not bool(torch.isfinite(feats).all()):
        raise DataFileError(f"{path}: key 'features' holds non-finite values {rerun}")
    return feats.float()


def resize_features(feats: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(..., D, h, w) -> (..., D, H, W): identity at equal size, else bilinear (antialiased when shrinking)."""
    if tuple(feats.shape[-2:]) == tuple(hw):
        return feats
    lead = feats.shape[:-3]
    flat = feats.reshape(-1, *feats.shape[-3:])
    shrink = hw[0] < feats.shape[-2] or hw[1] < feats.shape[-1]
    out = F.interpolate(flat, size=tuple(hw), mode="bilinear", align_corners=False, antialias=shrink)
    return out.reshape(*lead, feats.shape[-3], *hw)


def _write_entry(path: Path, feats: torch.Tensor, image: str = "") -> dict[str, Any]:
    """Write one entry atomically; returns its manifest record. Non-finite features (also after the cast to
    float16) are an error naming the image, never an entry."""
    from safetensors.torch import save_file

    half = feats.detach().to(torch.float16).contiguous().cpu()
    if not bool(torch.isfinite(half).all()):
        raise DataFileError(f"the teacher gave non-finite features (or values past float16) for {image or path.name};"
                            f" not written to {path}")
    atomic_write(path, lambda tmp: save_file({"features": half}, str(tmp)))
    return file_record(path)


def _comparable(identity: dict[str, Any]) -> dict[str, Any]:
    """The identity without local paths (a weights file may move; its sha256 must not change)."""
    return {k: v for k, v in identity.items() if k not in ("weights", "model_config")}


def camera_channels(nusc: Any) -> list[str]:
    """Camera channels of a dataroot's sensor table, in table order."""
    return [s["channel"] for s in nusc.sensor if s["modality"] == "camera"]


def nearest_grid(array: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest sample of a (H, W) label map at the centres of an (h, w) grid (labels never mix)."""
    rows = np.minimum(((np.arange(hw[0]) + 0.5) * array.shape[0] / hw[0]).astype(np.int64), array.shape[0] - 1)
    cols = np.minimum(((np.arange(hw[1]) + 0.5) * array.shape[1] / hw[1]).astype(np.int64), array.shape[1] - 1)
    return array[rows[:, None], cols[None, :]]


def keyframe_images(nusc: Any, cameras: list[str]) -> list[tuple[str, dict]]:
    """(channel, sample_data record) of every keyframe camera image, scene by scene."""
    out = []
    for scene in nusc.scene:
        tok = scene["first_sample_token"]
        while tok:
            sample = nusc.get("sample", tok)
            for ch in cameras:
                if ch not in sample["data"]:
                    raise KeyError(f"sample {tok} has no {ch} (has {sorted(sample['data'])})")
                out.append((ch, nusc.get("sample_data", sample["data"][ch])))
            tok = sample["next"]
    return out


def cache_features(dataroot: str | Path, version: str, teacher_cfg: TeacherConfig, name: str | None = None,
                   out: str | Path | None = None, cameras: list[str] | None = None, device: str = "cpu",
                   progress: bool = True) -> dict[str, Any]:
    """Compute and store the teacher's features of every keyframe camera image; returns a summary."""
    from nuscenes.nuscenes import NuScenes

    dataroot = Path(dataroot)
    if not (dataroot / version).is_dir():
        raise FileNotFoundError(f"nuScenes version folder not found: {dataroot / version}")
    if teacher_cfg.kind == "oracle" and not teacher_cfg.oracle_classes:
        meta = dataroot / "gt" / "meta.json"
        if not meta.is_file():
            raise FileNotFoundError(f"the oracle teacher needs the synthetic ground truth, missing: {meta}")
        classes = require(read_json(meta, "synthetic ground-truth meta file"), "classes", list, meta)
        if not classes or not all(isinstance(c, str) for c in classes):
            raise DataFileError(f"{meta}: key 'classes' must be a non-empty list of class names")
        teacher_cfg.oracle_classes = list(classes)
    teacher = build_teacher(teacher_cfg).to(device)
    identity = teacher.identity()
    cache = Path(out) if out else dataroot / FEATURES_DIR / (name or teacher_cfg.kind)
    manifest_path = cache / MANIFEST
    records: dict[str, Any] = {}
    if manifest_path.is_file():
        old = read_manifest(cache)
        if _comparable(old["teacher"]) != _comparable(identity):
            raise ValueError(f"{cache} holds features of another teacher ({old['teacher']}); use another --name "
                             "or remove that directory")
        records = old["files"]
    records.update(_part_records(cache, identity))  # entries a sharded run recorded (they are newer)
    cache.mkdir(parents=True, exist_ok=True)
    nusc = NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    cams = list(cameras or camera_channels(nusc))
    manifest = {"format_version": FORMAT_VERSION, "teacher": identity, "dim": teacher.dim, "dtype": "float16",
                "version": version, "dataroot": str(dataroot.resolve()), "cameras": cams,
                "layout": "<CHANNEL>/<sample_data token>.safetensors: 'features' float16 (D, h, w)",
                "settings": teacher_cfg.to_dict(), "complete": False, "entries": 0}
    images = keyframe_images(nusc, cams)
    shard = shard_from_env()
    device = shard.device(device)
    mine = shard.owns([sd["token"] for _, sd in images])
    # Resume: an entry is kept only when it is the file the manifest recorded (size + sha256).
    verified = {}
    todo, unverified = [], []
    for ch, sd in images:
        key, path = entry_key(ch, sd["token"]), entry_path(cache, ch, sd["token"])
        if matches_record(path, records.get(key)):
            verified[key] = records[key]
        elif sd["token"] in mine:
            if path.is_file():
                unverified.append(path)
            todo.append((ch, sd))
    if unverified:
        logger.warning("%d entries do not match their manifest record (truncated, altered or unrecorded; first %s): "
                       "recomputed", len(unverified), unverified[0])
    manifest["files"] = verified
    journal = Journal(part_path(cache, PART_STEM, shard.rank)) if shard.sharded else None
    if journal is not None:  # the header: what the merge needs to write the manifest this run would write
        journal.append({"header": {k: v for k, v in manifest.items() if k != "files"}})
    else:
        write_json(manifest_path, manifest)

    def written(ch: str, sd: dict, feats: torch.Tensor) -> None:
        key = entry_key(ch, sd["token"])
        manifest["files"][key] = _write_entry(entry_path(cache, ch, sd["token"]), feats, sd["filename"])
        if journal is not None:
            journal.append({"key": key, "record": manifest["files"][key]})
        elif len(manifest["files"]) % MANIFEST_EVERY == 0:
            write_json(manifest_path, manifest)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=f"cache {teacher.kind}" + (f" rank {shard.rank}" if shard.sharded else ""),
                   unit="image")
    started = time.perf_counter()
    grid: list[int] | None = None
    if teacher.kind == "oracle":
        stride = teacher_cfg.oracle_stride
        for ch, sd in todo:
            gt = dataroot / "gt" / ch / f"{sd['token']}.npz"
            if not gt.is_file():
                raise FileNotFoundError(f"the oracle teacher needs the synthetic ground truth, missing: {gt}")
            sem = load_npz(gt, {"semantics": ("iu", 2)}, "ground-truth file")["semantics"]
            classes = len(teacher_cfg.oracle_classes)
            if sem.size == 0 or int(sem.min()) < 0 or int(sem.max()) >= classes:
                raise DataFileError(f"{gt}: key 'semantics' holds class ids outside 0..{classes - 1} (gt/meta.json)")
            hw = (max(1, sem.shape[0] // stride), max(1, sem.shape[1] // stride))
            feats = teacher.features_from_semantics(nearest_grid(sem, hw), sd["token"])
            written(ch, sd, feats)
            grid = list(feats.shape[-2:])
            if bar is not None:
                bar.update(1)
    elif teacher.kind == "segmenter":
        # Not the bicubic ViT path: the decoded uint8 image goes through the segmenter's own exact preprocessing
        # (Pillow BILINEAR to its input size), one image per forward (cameras may differ in size).
        for ch, sd in todo:
            path = dataroot / sd["filename"]
            if not path.is_file():
                raise FileNotFoundError(f"missing image: {path}")
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"))
            feats = teacher.features_from_rgb([rgb])[0].cpu()
            written(ch, sd, feats)
            grid = list(feats.shape[-2:])
            if bar is not None:
                bar.update(1)
    else:
        h, w = teacher_cfg.input_hw
        for start in range(0, len(todo), teacher_cfg.batch_size):
            chunk = todo[start:start + teacher_cfg.batch_size]
            batch = []
            for _, sd in chunk:
                path = dataroot / sd["filename"]
                if not path.is_file():
                    raise FileNotFoundError(f"missing image: {path}")
                with Image.open(path) as im:
                    rgb = im.convert("RGB").resize((w, h), Image.BICUBIC)
                batch.append(torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1))
            feats = teacher.dense_features(torch.stack(batch).to(device)).cpu()
            for (ch, sd), f in zip(chunk, feats, strict=True):
                written(ch, sd, f)
            grid = list(feats.shape[-2:])
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - started
    summary = {"cache": str(cache), "images": len(images), "computed": len(todo), "dim": teacher.dim,
               "seconds": seconds, "teacher": identity, "rank": shard.rank, "world_size": shard.world_size}
    if journal is not None:
        journal.append({"end": {"seconds": seconds, "computed": len(todo)}})
        if init_group(shard):
            barrier()
            if shard.rank == 0:
                summary["merged"] = merge_cache(cache)["complete"]
            barrier()
        return summary
    manifest.update(complete=True, entries=len(images), grid_hw=grid or manifest.get("grid_hw"), seconds=seconds)
    if grid is None and images:
        manifest["grid_hw"] = list(load_entry(cache, images[0][0], images[0][1]["token"], manifest).shape[-2:])
    write_json(manifest_path, manifest)
    remove_parts(cache, PART_STEM)
    return summary


def _part_records(cache: Path, identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """The entry records of every rank's part in `cache` (later lines win); a part written for another teacher is
    an error naming it."""
    records: dict[str, Any] = {}
    for line in read_parts(cache, PART_STEM):
        if "header" in line and identity is not None and \
                _comparable(line["header"].get("teacher", {})) != _comparable(identity):
            raise ValueError(f"{cache} holds a rank's part ({PART_STEM}.rank*.jsonl) of another teacher "
                             f"({line['header'].get('teacher')}); use another --name or remove that directory")
        if isinstance(line.get("key"), str) and isinstance(line.get("record"), dict):
            records[line["key"]] = line["record"]
    return records


def merge_cache(cache: str | Path) -> dict[str, Any]:
    """Write DIR/manifest.json from the ranks' parts (and an earlier manifest): the manifest a single process
    writes (entries in the dataroot's order; only `seconds` differs: the slowest rank's). When every image has a
    verified entry the manifest is complete and the parts are removed; otherwise it lists the entries there are
    (complete false) and the parts stay (rerun the job: it resumes). Returns the manifest."""
    from nuscenes.nuscenes import NuScenes

    cache = Path(cache)
    lines = read_parts(cache, PART_STEM)
    headers = [line["header"] for line in lines if isinstance(line.get("header"), dict)]
    if not headers:
        raise FileNotFoundError(f"no rank parts ({PART_STEM}.rank<k>.jsonl with a header) to merge in {cache}")
    base = headers[-1]
    for other in headers:
        if {**other, "teacher": _comparable(other["teacher"])} != {**base, "teacher": _comparable(base["teacher"])}:
            raise ValueError(f"{cache}: the ranks' parts were written with other settings ({other} vs {base}); "
                             "rerun with one setting into a fresh directory")
    records = read_manifest(cache)["files"] if (cache / MANIFEST).is_file() else {}
    records.update(_part_records(cache, base["teacher"]))
    nusc = NuScenes(version=base["version"], dataroot=base["dataroot"], verbose=False)
    images = keyframe_images(nusc, base["cameras"])
    files, missing = {}, []
    for ch, sd in images:
        key = entry_key(ch, sd["token"])
        if matches_record(entry_path(cache, ch, sd["token"]), records.get(key)):
            files[key] = records[key]
        else:
            missing.append(key)
    manifest = {**base, "files": files}
    manifest.update(complete=not missing, entries=len(images) if not missing else len(files))
    if files:  # a single process records the grid of the last image it computed: the last one
        ch, sd = next((c, s) for c, s in reversed(images) if entry_key(c, s["token"]) in files)
        manifest["grid_hw"] = list(load_entry(cache, ch, sd["token"], manifest).shape[-2:])
    ends = [line["end"]["seconds"] for line in lines if isinstance(line.get("end"), dict)]
    manifest["seconds"] = max(ends) if ends else 0.0
    write_json(cache / MANIFEST, manifest)
    if missing:
        logger.warning("%s: %d of %d entries missing after the merge (first %s); rerun the job to compute them",
                       cache, len(missing), len(images), missing[0])
    else:
        remove_parts(cache, PART_STEM)
    return manifest


def sample_vectors(cache: str | Path, entries: list[tuple[str, str]], max_vectors: int = 200_000,
                   max_entries: int = 256, seed: int = 0) -> torch.Tensor:
    """(P, D) feature vectors drawn from up to `max_entries` cached images (channel, token): for fitting a PCA."""
    rng = random.Random(seed)
    chosen = entries if len(entries) <= max_entries else rng.sample(entries, max_entries)
    per = max(1, max_vectors // max(1, len(chosen)))
    gen = torch.Generator().manual_seed(seed)
    parts = []
    manifest = read_manifest(cache)
    for ch, tok in chosen:
        f = load_entry(cache, ch, tok, manifest)
        flat = f.reshape(f.shape[0], -1).T
        if flat.shape[0] > per:
            flat = flat[torch.randperm(flat.shape[0], generator=gen)[:per]]
        parts.append(flat)
    if not parts:
        raise ValueError(f"no cached features to fit a PCA on in {cache}")
    return torch.cat(parts)
