"""distillnerf_core.provenance: what a results JSON records about its run, and that it names no machine path."""

from __future__ import annotations

import json
import os

from conftest import REPO

from distillnerf_core.provenance import command_line, git_commit, model_identity, portable, provenance


def test_provenance_has_every_fact_report_py_prints_and_no_absolute_path():
    prov = provenance("python benchmarks/x.py --json benchmarks/results/x.json", model="random weights",
                      data="random images")
    assert {"command", "commit", "uncommitted_changes", "model", "data", "machine", "date"} <= set(prov)
    assert prov["model"] == "random weights" and prov["date"].endswith(" UTC")
    assert "CPU cores" in prov["machine"]
    text = json.dumps(prov)
    assert str(REPO) not in text and os.uname().nodename not in prov["machine"]


def test_the_commit_is_the_checkout_head_or_unknown_outside_git(tmp_path):
    commit, _ = git_commit(REPO)
    assert commit != "unknown" and len(commit) >= 7
    assert git_commit(tmp_path) == ("unknown", None)


def test_paths_are_written_relative_to_the_repository_or_by_name():
    assert portable(REPO / "data" / "nuscenes_sample") == "data/nuscenes_sample"
    assert portable("/tmp/scratch/run/model.safetensors") == "model.safetensors"
    argv = ["--json", str(REPO / "benchmarks" / "results" / "s.json"), "--work=/tmp/w/x", "--minutes", "3"]
    line = command_line("python benchmarks/soak.py", argv)
    assert line == "python benchmarks/soak.py --json benchmarks/results/s.json --work=x --minutes 3"


def test_a_bundled_model_is_named_with_the_commit_that_last_changed_it(tmp_path):
    identity = model_identity(REPO / "models" / "default" / "model.safetensors")
    assert identity.startswith("models/default/model.safetensors (last changed in ")
    assert model_identity(tmp_path / "x.safetensors") == "x.safetensors"
