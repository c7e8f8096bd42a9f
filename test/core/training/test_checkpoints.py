"""Checkpoints: bit-exact round trip, no pickle, clear errors for wrong or corrupted files."""

import json
import pickle

import pytest
import torch

from distillnerf_core.model.cameras import ring_rig
from distillnerf_core.model.distillnerf import DistillNeRFModel, ModelConfig
from distillnerf_core.training.checkpoints import CheckpointError, load_checkpoint, load_weights, save_checkpoint


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = DistillNeRFModel("tiny").eval()
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_checkpoint(model, path, extra={"step": 7})
    return model, path


def test_round_trip_is_bit_exact(saved):
    model, path = saved
    loaded = load_checkpoint(path).eval()
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"tensor {key} changed in the round trip"
    assert loaded.config == model.config, "config changed in the round trip"
    rig = ring_rig(2, (32, 64))
    images = torch.rand(1, 2, 3, 32, 64)
    with torch.no_grad():
        assert torch.equal(
            model(images, rig.intrinsics, rig.cam2ego).rgb, loaded(images, rig.intrinsics, rig.cam2ego).rgb
        ), "outputs differ after reload"


def test_sidecar_and_atomic_write(saved):
    _, path = saved
    meta = json.loads(path.with_suffix(".json").read_text())
    for key in ("format_version", "package_version", "config", "weights_sha256"):
        assert key in meta, f"sidecar lacks {key}"
    assert meta["extra"] == {"step": 7}
    leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


def test_pickle_is_refused(saved, tmp_path):
    model, _ = saved
    pt = tmp_path / "model.pt"
    torch.save(model.state_dict(), pt)
    with pytest.raises(CheckpointError, match="model.pt"):
        load_weights(model, pt)
    disguised = tmp_path / "disguised.safetensors"
    disguised.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="disguised.safetensors.*pickle"):
        load_weights(model, disguised)
    zipped = tmp_path / "zipped.safetensors"
    torch.save(model.state_dict(), zipped)
    with pytest.raises(CheckpointError, match="zipped.safetensors"):
        load_weights(model, zipped)


def test_corruption_and_missing_files(saved, tmp_path):
    model, path = saved
    bad = tmp_path / "bad.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    bad.write_bytes(bytes(data))
    bad.with_suffix(".json").write_text(path.with_suffix(".json").read_text())
    with pytest.raises(CheckpointError, match="bad.safetensors.*checksum"):
        load_checkpoint(bad)
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="trunc.safetensors"):
        load_weights(model, truncated)
    with pytest.raises(FileNotFoundError, match="absent.json"):
        load_checkpoint(tmp_path / "absent.safetensors")
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        load_weights(model, tmp_path / "nothing.safetensors")


def test_shape_mismatch_names_tensor(saved):
    _, path = saved
    cfg = ModelConfig.load("tiny")
    cfg.sparse_conv.width = 24
    other = DistillNeRFModel(cfg)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: shape mismatch for 'sparse_cnn\.stem\.weight'"):
        load_weights(other, path)
