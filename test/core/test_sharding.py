"""The offline jobs sharded over ranks (distillnerf_core/sharding.py): two torchrun ranks on the CPU (gloo) give
the result of one process (cache entries byte for byte, the manifest but for its timing, the eval metrics), and
ranks without a process group (independent jobs) merge with --merge; a rank killed mid-write loses one item."""

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import REPO
from shard_driver import FIT
from train_helpers import VERSION, make_tiny_dataroot

from distillnerf_core.cli import cache_features as cache_cli
from distillnerf_core.cli import eval as eval_cli
from distillnerf_core.cli import fit_scene as fit_cli
from distillnerf_core.sharding import Journal, Shard, part_paths, read_part, shard_from_env
from distillnerf_core.teachers.cache import MANIFEST

CACHE_ARGS = ["--teacher", "oracle", "--oracle-stride", "2", "--no-progress"]
TIMING = {"seconds"}
SCENE_TIMING = {"fit_wall_s", "fit_cpu_s", "total_wall_s", "total_cpu_s"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_tiny_dataroot(tmp_path_factory.mktemp("synth_shard"), scenes=2, frames=2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sharded(root, tiny_checkpoint, tmp_path_factory):
    """One torchrun launch, 2 ranks (gloo): test/shard_driver.py runs every sharded job in each rank."""
    out = tmp_path_factory.mktemp("sharded")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(REPO / "test" / "shard_driver.py"),
           str(root), VERSION, str(tiny_checkpoint), str(out)]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out, res.stdout


def _entries(cache):
    return {p.relative_to(cache).as_posix(): p.read_bytes() for p in cache.rglob("*.safetensors")}


def _manifest(cache):
    return {k: v for k, v in json.loads((cache / MANIFEST).read_text()).items() if k not in TIMING}


def _as_rank(monkeypatch, rank: int, world: int) -> None:
    """An independent job's environment: RANK / WORLD_SIZE and no rendezvous (no process group)."""
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)


def _single_process(monkeypatch) -> None:
    """No torchrun variables at all (a RANK left over from _as_rank would be a rank of a world of one)."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)


def test_assignment_exactly_once_and_env_checked(monkeypatch):
    keys = [f"tok{i:02d}" for i in range(11)][::-1]
    shares = [Shard(r, 3).owns(keys) for r in range(3)]
    assert set().union(*shares) == set(keys) and sum(len(s) for s in shares) == len(keys)
    assert [len(s) for s in shares] == [4, 4, 3]
    assert Shard(1, 3).owns(keys) == Shard(1, 3).owns(sorted(keys)), "the keys' order does not matter"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2 / WORLD_SIZE=2"):
        shard_from_env()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="RANK='x'"):
        shard_from_env()
    assert Shard(1, 2, 1).device("cuda") == "cuda:1" and Shard().device("cuda") == "cuda"


def test_torn_line_is_dropped(tmp_path):
    part = tmp_path / "p.rank0.jsonl"
    Journal(part).append({"key": "a"})
    with open(part, "a") as fh:
        fh.write('{"key": "b", "rec')  # a rank killed while writing its line
    assert read_part(part) == [{"key": "a"}]


@pytest.mark.slow
def test_cache_two_torchrun_ranks_equal_one_process(root, sharded, monkeypatch):
    _single_process(monkeypatch)
    assert cache_cli.main(["--dataroot", str(root), "--version", VERSION, *CACHE_ARGS]) == 0
    single = root / "features" / "oracle"
    out, stdout = sharded
    sharded = out / "cache"
    assert "rank 0 of 2: cached 12 of 24" in stdout and "rank 1 of 2: cached 12 of 24" in stdout
    assert _entries(sharded) == _entries(single) and len(_entries(single)) == 24
    assert _manifest(sharded) == _manifest(single)
    assert not part_paths(sharded, "manifest"), "the merged manifest holds the parts: they are removed"


def test_cache_independent_ranks_resume_and_merge(root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "jobs"
    args = ["--dataroot", str(root), "--version", VERSION, *CACHE_ARGS, "--out", str(out)]
    _as_rank(monkeypatch, 0, 2)
    assert cache_cli.main(args) == 0
    assert not (out / MANIFEST).exists(), "a rank never writes the manifest"
    # rank 0 killed while recording its last entry: the rerun recomputes that entry only
    part = part_paths(out, "manifest")[0]
    text = part.read_text().splitlines(keepends=True)
    last_entry = max(i for i, line in enumerate(text) if line.startswith('{"key"'))
    part.write_text("".join(text[:last_entry]) + text[last_entry][:20])
    capsys.readouterr()
    assert cache_cli.main(args) == 0
    assert "rank 0 of 2: cached 1 of 24" in capsys.readouterr().out
    assert cache_cli.main([*args, "--merge"]) == 1, "rank 1 has not run: the merge is incomplete"
    assert json.loads((out / MANIFEST).read_text())["complete"] is False
    _as_rank(monkeypatch, 1, 2)
    assert cache_cli.main(args) == 0
    assert cache_cli.main([*args, "--merge"]) == 0
    single = root / "features" / "oracle"
    if not (single / MANIFEST).is_file():
        _single_process(monkeypatch)
        assert cache_cli.main(["--dataroot", str(root), "--version", VERSION, *CACHE_ARGS]) == 0
    assert _manifest(out) == _manifest(single) and _entries(out) == _entries(single)


@pytest.mark.slow
def test_eval_two_torchrun_ranks_equal_one_process(root, tiny_checkpoint, sharded, tmp_path, monkeypatch):
    _single_process(monkeypatch)
    assert eval_cli.main(["--checkpoint", str(tiny_checkpoint), "--dataroot", str(root), "--version", VERSION,
                          "--threads", "1", "--no-progress", "--json", str(tmp_path / "single.json"),
                          "--details-json", str(tmp_path / "single_details.json")]) == 0
    out, _ = sharded
    single = json.loads((tmp_path / "single.json").read_text())
    assert single["num_samples"] == 4 and single["psnr"] is not None
    assert json.loads((out / "eval.json").read_text()) == single, "the same numbers, bit for bit"
    details = [json.loads(p.read_text()) for p in (tmp_path / "single_details.json", out / "details.json")]
    for d in details:
        d.pop("seconds_per_frame_median")
    assert details[0] == details[1]
    assert not part_paths(out, "eval.json"), "the written JSON holds the parts: they are removed"


def test_eval_merge_refuses_missing_samples(root, tiny_checkpoint, tmp_path, monkeypatch, capsys):
    args = ["--checkpoint", str(tiny_checkpoint), "--dataroot", str(root), "--version", VERSION, "--threads", "1",
            "--no-progress", "--json", str(tmp_path / "e.json")]
    _as_rank(monkeypatch, 1, 2)
    assert eval_cli.main(args) == 0
    part = tmp_path / "e.json.rank1.jsonl"

    def scored() -> int:
        return sum('"score"' in line for line in part.read_text().splitlines())
    assert scored() == 2
    assert eval_cli.main(args) == 0 and scored() == 2, "a rerun resumes: nothing is scored twice"
    assert eval_cli.main([*args, "--merge"]) == 2
    assert "2 of 4 samples not scored yet" in capsys.readouterr().err
    _as_rank(monkeypatch, 0, 2)
    assert eval_cli.main(args) == 0
    assert eval_cli.main([*args, "--merge"]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["num_samples"] == 4


def _scenes(out):
    manifest = json.loads((out / MANIFEST).read_text())
    for record in manifest["scenes"].values():
        for key in SCENE_TIMING:
            record.pop(key)
    return manifest


@pytest.mark.slow
def test_fit_scene_two_torchrun_ranks_equal_one_process(root, sharded, tmp_path, monkeypatch, capsys):
    _single_process(monkeypatch)
    single = tmp_path / "single"
    assert fit_cli.main(["--dataroot", str(root), "--version", VERSION, *FIT, "--out", str(single)]) == 0
    out = sharded[0] / "nerf"
    manifest = _scenes(single)
    assert len(manifest["scenes"]) == 2 and manifest["complete"]
    assert _scenes(out) == manifest
    assert list(json.loads((out / MANIFEST).read_text())["scenes"]) == list(manifest["scenes"]), "the same order"
    entries = {p.relative_to(single).as_posix(): p.read_bytes() for p in single.rglob("*.npz")}
    assert len(entries) == 2 * 2 * 6
    assert {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.npz")} == entries
    assert not part_paths(out, "manifest")
    # independent jobs: rank 1 alone, an incomplete merge, then rank 0 and a complete one
    jobs = tmp_path / "jobs"
    args = ["--dataroot", str(root), "--version", VERSION, *FIT, "--out", str(jobs)]
    _as_rank(monkeypatch, 1, 2)
    assert fit_cli.main(args) == 0 and not (jobs / MANIFEST).exists()
    assert fit_cli.main([*args, "--merge"]) == 1
    _as_rank(monkeypatch, 0, 2)
    assert fit_cli.main(args) == 0 and fit_cli.main([*args, "--merge"]) == 0
    assert _scenes(jobs) == manifest
