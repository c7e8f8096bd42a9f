"""Feature caches made by distillnerf-cache-features (oracle teacher, tiny synthetic dataroot), then spoiled:
every read is checked and names the file, a resume redoes what does not verify, and distillnerf-train never
turns a bad entry into a saved model."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from train_helpers import VERSION, make_tiny_dataroot

from distillnerf_core.checked_files import DataFileError
from distillnerf_core.cli import cache_features as cache_cli
from distillnerf_core.cli import train as train_cli
from distillnerf_core.data.datasets import DataConfig, make_dataset
from distillnerf_core.teachers.base import TeacherConfig
from distillnerf_core.teachers.cache import cache_features, load_entry, read_manifest


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = make_tiny_dataroot(tmp_path_factory.mktemp("cache_files") / "root", frames=2)
    assert cache_cli.main(["--dataroot", str(root), "--version", VERSION, "--teacher", "oracle", "--oracle-stride",
                           "2", "--no-progress"]) == 0
    return root


@pytest.fixture
def root(made, tmp_path):
    """A private copy of the dataroot and its cache, free to spoil."""
    return shutil.copytree(made, tmp_path / "root")


def _cache(root):
    return root / "features" / "oracle"


def _entries(root):
    return sorted(_cache(root).glob("CAM_*/*.safetensors"))


def _rerun(root, capsys):
    code = cache_cli.main(["--dataroot", str(root), "--version", VERSION, "--teacher", "oracle", "--oracle-stride",
                           "2", "--no-progress"])
    return code, capsys.readouterr()


def _manifest_edit(case):
    def edit(path):
        text = path.read_text()
        if case == "a_list":
            path.write_text(json.dumps([json.loads(text)]))
        elif case == "truncated":
            path.write_text(text[: len(text) // 2])
        else:
            data = json.loads(text)
            if case == "missing_dim":
                del data["dim"]
            elif case == "dim_a_string":
                data["dim"] = "128"
            elif case == "files_a_list":
                data["files"] = []
            path.write_text(json.dumps(data))
    return edit


@pytest.mark.parametrize("case", ["a_list", "truncated", "missing_dim", "dim_a_string", "files_a_list"])
def test_a_malformed_feature_cache_manifest_is_an_error_naming_the_file_and_key(root, capsys, case):
    manifest = _cache(root) / "manifest.json"
    _manifest_edit(case)(manifest)
    with pytest.raises(DataFileError, match="manifest.json") as raised:
        make_dataset(str(root), VERSION, (32, 64), DataConfig(features="oracle"), (8, 16), load_next=False)
    key = {"missing_dim": "'dim'", "dim_a_string": "'dim'", "files_a_list": "'files'"}.get(case)
    assert key is None or key in str(raised.value), raised.value
    code, out = _rerun(root, capsys)
    assert code == 2 and out.err.startswith("distillnerf-cache-features: error: ") and "manifest.json" in out.err


@pytest.mark.parametrize("spoil", ["truncated", "same_size_altered", "replaced_by_garbage"])
def test_a_resume_recomputes_an_entry_that_does_not_match_its_manifest_record(root, capsys, spoil):
    victim = _entries(root)[3]
    data = victim.read_bytes()
    victim.write_bytes({"truncated": data[: len(data) // 2],
                        "same_size_altered": data[:-64] + bytes(b ^ 0x5A for b in data[-64:]),
                        "replaced_by_garbage": b"not a safetensors file"}[spoil])
    summary = cache_features(root, VERSION, TeacherConfig(kind="oracle", oracle_stride=2), progress=False)
    assert summary["computed"] == 1 and summary["images"] == 12, summary
    assert victim.read_bytes() == data, "the recomputed entry is the one the teacher gives"
    manifest = read_manifest(_cache(root))
    assert len(manifest["files"]) == 12 and manifest["complete"]


def _rewrite(path, tensors):
    save_file(tensors, str(path))


def _features(path):
    return load_file(str(path))["features"]


ENTRY_SPOILS = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:100]), "not a readable feature cache entry"),
    "nan_value": (lambda p: _rewrite(p, {"features": _features(p).index_fill(1, torch.tensor([0]), float("nan"))}),
                  "non-finite"),
    "another_tensor_name": (lambda p: _rewrite(p, {"feats": _features(p)}), "only 'features'"),
    "wrong_dim": (lambda p: _rewrite(p, {"features": _features(p)[:64].contiguous()}), "D = 128"),
    "float32": (lambda p: _rewrite(p, {"features": _features(p).float()}), "expected float16"),
}


@pytest.mark.parametrize("case", sorted(ENTRY_SPOILS))
def test_a_malformed_feature_entry_is_an_error_naming_the_file(root, case):
    ds = make_dataset(str(root), VERSION, (32, 64), DataConfig(features="oracle"), (8, 16), load_next=False)
    sample = ds.nusc.get("sample", ds.sample_tokens[0])
    token = sample["data"]["CAM_FRONT"]
    victim = _cache(root) / "CAM_FRONT" / f"{token}.safetensors"
    spoil, message = ENTRY_SPOILS[case]
    spoil(victim)
    with pytest.raises(DataFileError, match=victim.name):  # the size record or the content check
        ds[0]
    with pytest.raises(DataFileError, match=message) as raised:  # the content check alone (no size record)
        load_entry(_cache(root), "CAM_FRONT", token, {"dim": 128})
    assert victim.name in str(raised.value)


@pytest.mark.slow
def test_distillnerf_train_refuses_a_non_finite_feature_entry_and_saves_no_model(root, tmp_path, capsys):
    victim = _entries(root)[0]
    ENTRY_SPOILS["nan_value"][0](victim)
    run = tmp_path / "run"
    code = train_cli.main(["--config", "train_tiny", "--dataroot", str(root), "--version", VERSION, "--out", str(run),
                           "--features", "oracle", "--max-steps", "2", "--threads", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "distillnerf-train: error: " in err and victim.name in err and "non-finite" in err, err
    assert not (run / "model.safetensors").exists() and not list(run.glob("checkpoints/step_*"))


@pytest.mark.parametrize("case", ["truncated", "object_array", "semantics_missing", "float_semantics"])
def test_a_malformed_oracle_ground_truth_file_is_an_error_naming_it(root, capsys, case):
    victim_entry = _entries(root)[0]
    gt = root / "gt" / victim_entry.parent.name / f"{victim_entry.stem}.npz"
    victim_entry.unlink()  # so the rerun reads this ground truth again
    with np.load(gt) as z:
        arrays = {k: z[k] for k in z.files}
    if case == "truncated":
        gt.write_bytes(gt.read_bytes()[: gt.stat().st_size // 2])
    elif case == "object_array":
        np.savez(gt, **{**arrays, "semantics": np.array([[object()]], dtype=object)})
    elif case == "semantics_missing":
        np.savez(gt, depth=arrays["depth"])
    else:
        np.savez(gt, **{**arrays, "semantics": arrays["semantics"].astype(np.float32)})
    code, out = _rerun(root, capsys)
    assert code == 2, out.err
    assert out.err.startswith("distillnerf-cache-features: error: ") and gt.name in out.err, out.err
    assert "Traceback" not in out.err
