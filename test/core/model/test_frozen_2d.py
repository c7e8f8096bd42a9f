"""encoder.frozen_2d: segmenter: the shipped ESPNetv2 as a frozen multi-scale branch beside the trainable FPN.

Real weights (the shipped file), tiny model and images (a few hundred ms a forward)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from distillnerf_core.model.cameras import ring_rig
from distillnerf_core.model.distillnerf import DistillNeRFModel, ModelConfig
from distillnerf_core.model.encoder import EncoderConfig, ImageEncoder
from distillnerf_core.teachers.segmenter import default_weights_path
from distillnerf_core.training.checkpoints import CheckpointError, load_checkpoint, save_checkpoint, sidecar_path
from distillnerf_core.training.features import load_init_weights
from distillnerf_core.training.losses import DistillNeRFLoss
from distillnerf_core.training.trainer import TrainStep, optimizer_step

CAMERAS = 1  # the cost is per op, not per pixel: one camera keeps these tests cheap


def _config(frozen: bool = True) -> ModelConfig:
    cfg = ModelConfig.load("tiny")
    cfg.encoder.frozen_2d = "segmenter" if frozen else None
    return cfg


def _batch(model: DistillNeRFModel) -> dict:
    hw = tuple(model.config.image_hw)
    rig = ring_rig(CAMERAS, hw)
    render_hw = model.renderer.render_hw(hw)
    return {"images": torch.rand(1, CAMERAS, 3, *hw), "intrinsics": rig.intrinsics, "cam2ego": rig.cam2ego,
            "lidar_depth": 5 + 20 * torch.rand(1, CAMERAS, *render_hw)}


def test_frozen_branch_never_updates_in_a_training_step():
    torch.manual_seed(0)
    model = DistillNeRFModel(_config()).train()
    branch = model.encoder.frozen_2d
    assert not branch.net.training, "model.train() must leave the frozen segmenter in eval mode"
    frozen_before = {k: v.clone() for k, v in branch.net.state_dict().items()}  # weights AND BatchNorm statistics
    trained_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("encoder.frozen_2d.net.") for n in trained_before), "frozen weights are trainable"
    params = [p for p in model.parameters() if p.requires_grad]
    step = TrainStep(model, DistillNeRFLoss())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    batch = _batch(model)
    for _ in range(2):  # the fusion starts at zero on the branch: its projection gets a gradient from step 2 on
        total, *_ = optimizer_step(step, batch, optimizer, scaler, params, 35.0, None, "cpu")
        assert torch.isfinite(total)
    changed = [k for k, v in branch.net.state_dict().items() if not torch.equal(v, frozen_before[k])]
    assert not changed, f"frozen segmenter tensors changed in training: {changed[:4]}"
    assert all(p.grad is None for p in branch.net.parameters()), "the frozen segmenter got gradients"
    moved = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, trained_before[n])}
    for name in ("encoder.frozen_2d.proj.weight", "encoder.fuse.weight", "encoder.fpn.smooth.weight"):
        assert name in moved, f"{name} did not train"


def test_output_shape_any_image_size():
    cfg = EncoderConfig(fpn_widths=[8, 16], out_channels=16, frozen_2d="segmenter", frozen_2d_channels=8)
    enc = ImageEncoder(cfg)
    assert enc.frozen_2d.input_hw((40, 70)) == (32, 64), "segmenter input: multiples of 16, aspect kept"
    feats = enc(torch.rand(2, 3, 40, 70), (10, 18))
    assert feats.shape == (2, 16, 10, 18)
    assert torch.isfinite(feats).all()
    wide = ImageEncoder(EncoderConfig(fpn_widths=[8], out_channels=8, frozen_2d="segmenter", frozen_2d_width=128))
    assert wide.frozen_2d.input_hw((40, 70)) == (80, 128)


@pytest.mark.parametrize(("changes", "match"), [
    ({"frozen_2d": "dinov2"}, "encoder.frozen_2d must be one of"),
    ({"frozen_2d": "segmenter", "vit_name": "vit_small_patch14_dinov2", "vit_weights": "x.safetensors"},
     "alternatives"),
    ({"frozen_2d": "segmenter", "frozen_2d_width": 100}, "frozen_2d_width"),
    ({"frozen_2d": "segmenter", "frozen_2d_channels": 0}, "frozen_2d_channels"),
])
def test_bad_config_is_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        ImageEncoder(EncoderConfig(fpn_widths=[8], out_channels=8, **changes))


def test_missing_weights_file_is_named(tmp_path):
    cfg = EncoderConfig(fpn_widths=[8], out_channels=8, frozen_2d="segmenter",
                        frozen_2d_weights=str(tmp_path / "absent.safetensors"))
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        ImageEncoder(cfg)


def test_checkpoint_leaves_frozen_weights_out_and_loads_strictly(tmp_path):
    torch.manual_seed(0)
    model = DistillNeRFModel(_config()).eval()
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    stored = load_file(str(path))
    assert not [k for k in stored if k.startswith("encoder.frozen_2d.net.")], "frozen weights saved"
    assert "encoder.frozen_2d.proj.weight" in stored and "encoder.fuse.weight" in stored
    meta = json.loads(sidecar_path(path).read_text())
    from distillnerf_core.checked_files import sha256_file

    assert meta["config"]["encoder"]["frozen_2d"] == "segmenter"
    assert meta["config"]["encoder"]["frozen_2d_sha256"] == sha256_file(default_weights_path())
    loaded = load_checkpoint(path).eval()
    batch = _batch(model)
    with torch.no_grad():
        a = model(batch["images"], batch["intrinsics"], batch["cam2ego"]).depth
        b = loaded(batch["images"], batch["intrinsics"], batch["cam2ego"]).depth
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a state dict that carries the frozen tensors must carry exactly the file's values
    full = {**model.state_dict(), **{f"encoder.frozen_2d.net.{k}": v for k, v in
                                     model.encoder.frozen_2d.net.state_dict().items()}}
    loaded.load_state_dict(full)
    key = "encoder.frozen_2d.net.base_net.level1.conv.weight"
    full[key] = full[key] + 1
    with pytest.raises(ValueError, match="differs from the weights file"):
        loaded.load_state_dict(full)
    # the sidecar records another frozen file than the one there now: refused, naming both
    meta["config"]["encoder"]["frozen_2d_sha256"] = "0" * 64
    sidecar_path(path).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not the frozen branch this model was trained with"):
        load_checkpoint(path)


def test_init_from_a_model_without_the_branch_needs_init_fresh_and_starts_where_it_was(tmp_path):
    torch.manual_seed(0)
    plain = DistillNeRFModel(_config(frozen=False)).eval()
    path = save_checkpoint(plain, tmp_path / "plain.safetensors")
    torch.manual_seed(1)
    model = DistillNeRFModel(_config()).eval()
    with pytest.raises(CheckpointError, match="--init-fresh encoder.frozen_2d,encoder.fuse"):
        load_init_weights(model, str(path))
    with pytest.raises(CheckpointError, match="no tensor"):
        load_init_weights(model, str(path), ["encoder.frozen_2d", "encoder.fuse", "encoder.fusion"])
    fresh = load_init_weights(model, str(path), ["encoder.frozen_2d", "encoder.fuse"])
    assert sorted(fresh) == ["encoder.frozen_2d.proj.bias", "encoder.frozen_2d.proj.weight",
                             "encoder.fuse.bias", "encoder.fuse.weight"]
    batch = _batch(model)
    with torch.no_grad():  # the fusion starts as the identity on the FPN: the same model as the checkpoint
        a = plain(batch["images"], batch["intrinsics"], batch["cam2ego"]).depth
        b = model(batch["images"], batch["intrinsics"], batch["cam2ego"]).depth
    torch.testing.assert_close(a, b)


def test_init_fresh_head_of_another_width(tmp_path):
    torch.manual_seed(0)
    wide = DistillNeRFModel(_config(frozen=False))
    path = save_checkpoint(wide, tmp_path / "wide.safetensors")
    cfg = _config(frozen=False)
    cfg.feature_head.dim = wide.config.feature_head.dim // 2
    narrow = DistillNeRFModel(cfg)
    with pytest.raises(CheckpointError, match="shape mismatches.*--init-fresh feature_head"):
        load_init_weights(narrow, str(path))
    head_before = {k: v.clone() for k, v in narrow.feature_head.state_dict().items()}
    load_init_weights(narrow, str(path), ["feature_head"])
    assert all(torch.equal(v, head_before[k]) for k, v in narrow.feature_head.state_dict().items())
    assert torch.equal(narrow.encoder.fpn.smooth.weight, wide.encoder.fpn.smooth.weight)


def test_train_default_frozen2d_is_train_default_with_the_branch():
    from distillnerf_core.training.config import load_train_config, model_config

    plain, frozen = load_train_config("train_default"), load_train_config("train_default_frozen2d")
    assert model_config(frozen).encoder.frozen_2d == "segmenter" and model_config(plain).encoder.frozen_2d is None
    settings = frozen.to_dict()
    settings["model_overrides"] = {}
    assert settings == plain.to_dict(), "the two stage-1 configs must differ only in the frozen branch"


def test_init_fresh_needs_init(tmp_path, capsys):
    from distillnerf_core.cli.train import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--config", "tiny", "--dataroot", str(tmp_path), "--version", "v1.0-mini", "--out", str(tmp_path / "run"),
              "--init-fresh", "feature_head"])
    assert exit_info.value.code == 2 and "--init-fresh needs --init" in capsys.readouterr().err
