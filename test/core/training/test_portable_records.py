"""Files that travel (model sidecars, training configs, results JSON) never name the machine that wrote them."""

import json
import re
from pathlib import Path

import pytest
from conftest import REPO
from train_helpers import VERSION, make_tiny_dataroot

from distillnerf_core.cli import cache_features as cache_cli
from distillnerf_core.portable_paths import portable_path
from distillnerf_core.training.config import load_train_config
from distillnerf_core.training.trainer import train

# An absolute path into a scratch, home or checkout folder ($TMPDIR / $OUT placeholders are fine).
MACHINE_PATH = re.compile(r"(?<![\w$.])/(tmp|work|root|home|mnt|old_root|Users|var/folders|private)/")


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _machine_paths(path: Path) -> list[str]:
    return [s for s in _strings(json.loads(path.read_text())) if MACHINE_PATH.search(s)]


def test_portable_path_is_relative_inside_the_base_and_a_name_outside(tmp_path):
    assert portable_path(tmp_path / "a" / "b.json", tmp_path) == "a/b.json"
    assert portable_path("/somewhere/else/model.safetensors", tmp_path) == "model.safetensors"
    assert portable_path("") == ""


@pytest.mark.parametrize("folder", ["models", "benchmarks/results"])
def test_shipped_json_names_no_machine_path(folder):
    files = sorted((REPO / folder).rglob("*.json"))
    assert files, f"no JSON under {folder}"
    found = {str(f.relative_to(REPO)): paths for f in files if (paths := _machine_paths(f))}
    assert not found, f"machine paths in shipped JSON (write them relative or as names): {found}"


def test_a_distilled_run_records_no_machine_path(tmp_path):
    root = make_tiny_dataroot(tmp_path / "data", frames=1)
    assert cache_cli.main(["--dataroot", str(root), "--version", VERSION, "--teacher", "oracle",
                           "--no-progress"]) == 0
    cfg = load_train_config("train_tiny")
    cfg.data.features = "oracle"
    first = tmp_path / "first"
    train(cfg, str(root), VERSION, first, max_steps=1, threads=1, progress=False)
    cfg.init = str(first / "model.safetensors")
    second = tmp_path / "second"
    train(cfg, str(root), VERSION, second, max_steps=1, threads=1, progress=False)
    for written in ("model.json", "train_config.json", "train_summary.json"):
        if (second / written).is_file():
            leaked = [s for s in _strings(json.loads((second / written).read_text())) if str(tmp_path) in s]
            assert not leaked, f"{written} records this machine's paths: {leaked}"
    meta = json.loads((second / "model.json").read_text())
    assert meta["config"]["feature_head"]["teacher"]["pca"]["cache"] == "features/oracle"
