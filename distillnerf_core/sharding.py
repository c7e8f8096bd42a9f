"""Offline jobs over torchrun ranks and machines: which rank does which item, per-rank journals, the merge.

`distillnerf-cache-features`, `distillnerf-eval` and `distillnerf-fit-scene` read torchrun's environment
(`RANK`, `WORLD_SIZE`, `LOCAL_RANK`; a plain run is rank 0 of 1):

- Assignment: the job's item keys (sample_data tokens, sample indices, scene names) sorted, the i-th key done by
  rank i % WORLD_SIZE. It depends only on the keys and the world size, so every rank computes it alone, each item
  is done by exactly one rank, and a rerun with the same world size gives each rank the same items.
- Journal: each rank appends one JSON line per finished item to its own part (`<stem>.rank<k>.jsonl`), flushed
  and fsynced. A rank killed mid-item leaves at most a torn last line, which readers drop (with a warning): it
  loses its current item only. A rerun (any world size) reads every part, so finished items are not redone.
- Merge: when torchrun made a process group (MASTER_ADDR set) the ranks meet at a barrier and rank 0 writes the
  final manifest / metrics from the parts; without one (independent jobs, e.g. a cluster array) each rank writes
  its part and the job's `--merge` invocation writes the final result. The merged result is the one a single
  process writes (same records, same order; the timing fields differ).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

BARRIER_HOURS = 72.0
"""How long rank 0 waits at the final barrier for the slowest rank (ranks of a dataset-scale job finish hours apart;
torch's default of 30 minutes would fail the merge)."""


@dataclass(frozen=True)
class Shard:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def sharded(self) -> bool:
        return self.world_size > 1

    def owns(self, keys: list[str]) -> set[str]:
        """The keys (of all the job's `keys`) this rank does: sorted, every world_size-th from its rank."""
        ordered = sorted(set(keys))
        return set(ordered[self.rank::self.world_size])

    def device(self, device: str) -> str:
        """`cuda` means this rank's GPU (cuda:LOCAL_RANK) when several ranks run; any other device is kept."""
        return f"cuda:{self.local_rank}" if device == "cuda" and self.sharded else device


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def shard_from_env() -> Shard:
    """The Shard torchrun's environment describes (rank 0 of 1 when it is absent); bad values are an error naming
    the variable."""
    world, rank, local = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"RANK={rank} / WORLD_SIZE={world} / LOCAL_RANK={local}: need WORLD_SIZE >= 1, "
                         "0 <= RANK < WORLD_SIZE, LOCAL_RANK >= 0")
    return Shard(rank, world, local)


def rank_threads(shard: Shard, threads: int | None = None) -> None:
    """torch's CPU threads: `threads` when given, else, when several ranks share this machine, its cores split
    between them (LOCAL_WORLD_SIZE ranks here), as the trainer does; a single process keeps torch's default."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    elif shard.sharded:
        local = _env_int("LOCAL_WORLD_SIZE", shard.world_size)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local)))


def init_group(shard: Shard) -> bool:
    """Join torchrun's process group (gloo: the barrier only moves a token) when several ranks run and a rendezvous
    is given (MASTER_ADDR); True when a group exists afterwards. Without a rendezvous the ranks are independent
    jobs and the result is merged by a `--merge` invocation."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return True
    if not shard.sharded or not os.environ.get("MASTER_ADDR") or not dist.is_available():
        return False
    dist.init_process_group("gloo", rank=shard.rank, world_size=shard.world_size,
                            timeout=timedelta(hours=BARRIER_HOURS))
    return True


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def part_path(folder: Path, stem: str, rank: int) -> Path:
    return Path(folder) / f"{stem}.rank{rank}.jsonl"


def part_paths(folder: Path, stem: str) -> list[Path]:
    """Every rank's part of `stem` in `folder` (any world size a run had), by rank."""
    parts = Path(folder).glob(f"{stem}.rank*.jsonl")

    def rank_of(p: Path) -> int:
        tail = p.name[len(stem) + len(".rank"):-len(".jsonl")]
        return int(tail) if tail.isdigit() else 1 << 30
    return sorted(parts, key=rank_of)


class Journal:
    """One rank's append-only part: a JSON object per line, each line flushed and fsynced as it is written."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())


def read_part(path: Path) -> list[dict[str, Any]]:
    """The complete records of one part; a torn line (a rank killed while writing it) is dropped with a warning."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            if not line.endswith("\n"):
                logger.warning("%s: line %d is incomplete (the rank was stopped while writing it); ignored", path, n)
                break
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s: line %d is not JSON; ignored", path, n)
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def read_parts(folder: Path, stem: str) -> list[dict[str, Any]]:
    """The records of every rank's part of `stem`, rank by rank."""
    out: list[dict[str, Any]] = []
    for path in part_paths(folder, stem):
        out.extend(read_part(path))
    return out


def remove_parts(folder: Path, stem: str) -> None:
    """Delete the parts once the merged result that holds them is written."""
    for path in part_paths(folder, stem):
        path.unlink(missing_ok=True)
