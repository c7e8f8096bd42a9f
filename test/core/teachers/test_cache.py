"""The oracle teacher's feature cache on a tiny synthetic dataroot: layout, manifest, resume, and the dataset
loading it (a missing entry is an error, never a dummy)."""

import json

import numpy as np
import pytest
import torch
from train_helpers import VERSION, make_tiny_dataroot

from distillnerf_core.cli import cache_features as cli
from distillnerf_core.data.datasets import DataConfig, make_dataset
from distillnerf_core.teachers.base import TeacherConfig
from distillnerf_core.teachers.cache import cache_features, entry_path, load_entry, read_manifest
from distillnerf_core.teachers.oracle import OracleTeacher


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_tiny_dataroot(tmp_path_factory.mktemp("synth_cache"), frames=2)


@pytest.fixture(scope="module")
def cache(root):
    assert cli.main(["--dataroot", str(root), "--version", VERSION, "--teacher", "oracle", "--oracle-stride", "2",
                     "--no-progress"]) == 0
    return root / "features" / "oracle"


def test_manifest_and_entries(root, cache):
    manifest = read_manifest(cache)
    assert manifest["complete"] and manifest["entries"] == 2 * 6 and manifest["dim"] == 128
    assert manifest["teacher"]["kind"] == "oracle" and manifest["teacher"]["classes"][6] == "car"
    sample_data = json.loads((root / VERSION / "sample_data.json").read_text())
    cams = [sd for sd in sample_data if sd["fileformat"] == "jpg"]
    assert len(cams) == 12
    for sd in cams:
        channel = sd["filename"].split("/")[1]
        assert entry_path(cache, channel, sd["token"]).is_file()
    assert manifest["grid_hw"] == [16, 32], "32x64 images at stride 2"


def test_features_are_the_class_embeddings(root, cache):
    sd = next(sd for sd in json.loads((root / VERSION / "sample_data.json").read_text()) if sd["fileformat"] == "jpg")
    channel = sd["filename"].split("/")[1]
    feats = load_entry(cache, channel, sd["token"])
    with np.load(root / "gt" / channel / f"{sd['token']}.npz") as gt:
        sem = torch.as_tensor(gt["semantics"][1::2, 1::2].astype(np.int64))  # nearest at stride 2
    classes = json.loads((root / "gt" / "meta.json").read_text())["classes"]
    teacher = OracleTeacher(TeacherConfig(kind="oracle", oracle_classes=classes))
    cos = torch.nn.functional.cosine_similarity(feats, teacher.embeddings[sem].permute(2, 0, 1), dim=0)
    assert float(cos.min()) > 0.9, "each pixel's feature is its class embedding plus a little noise"
    assert float(cos.max()) < 0.9999, "and the noise is there"


def test_resume_and_other_teacher(root, cache):
    victim = next((cache / "CAM_FRONT").glob("*.safetensors"))
    victim.unlink()
    summary = cache_features(root, VERSION, TeacherConfig(kind="oracle", oracle_stride=2), progress=False)
    assert summary["computed"] == 1 and summary["images"] == 12 and victim.is_file()
    with pytest.raises(ValueError, match="another teacher"):
        cache_features(root, VERSION, TeacherConfig(kind="oracle", oracle_stride=2, oracle_seed=5), progress=False)


def test_dataset_loads_the_cache_and_refuses_missing_entries(root, cache):
    data = DataConfig(features="oracle")
    ds = make_dataset(str(root), VERSION, (32, 64), data, (8, 16), load_next=False)
    item = ds[0]
    assert item["teacher_features"].shape == (6, 128, 8, 16)
    assert item["teacher_features"].dtype == torch.float32
    victim = next((cache / "CAM_BACK").glob("*.safetensors"))
    saved = victim.read_bytes()
    victim.unlink()
    try:
        index = next(i for i in range(len(ds)) if victim.stem in json.dumps(
            [s for s in json.loads((root / VERSION / "sample_data.json").read_text())
             if s["sample_token"] == ds.sample_tokens[i]]))
        with pytest.raises(FileNotFoundError, match=victim.name):
            ds[index]
    finally:
        victim.write_bytes(saved)
    with pytest.raises(FileNotFoundError, match="manifest"):
        make_dataset(str(root), VERSION, (32, 64), DataConfig(features="clip_absent"), (8, 16))
