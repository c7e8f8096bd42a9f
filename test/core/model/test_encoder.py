"""2D encoders: FPN from scratch and a local-file pretrained ViT (never downloaded)."""

import pytest
import torch
from safetensors.torch import save_file

from distillnerf_core.model.distillnerf import DistillNeRFModel, ModelConfig
from distillnerf_core.model.encoder import EncoderConfig, FPNEncoder, ImageEncoder

VIT = "vit_small_patch14_dinov2"
VIT_KWARGS = {"embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 56}


def _save_tiny_vit(path):
    import timm

    torch.manual_seed(0)
    vit = timm.create_model(VIT, pretrained=False, num_classes=0, dynamic_img_size=True, **VIT_KWARGS)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    return vit


def test_fpn_shape_and_grad():
    enc = FPNEncoder([8, 16, 16], 12)
    x = torch.rand(2, 3, 32, 64, requires_grad=True)
    y = enc(x)
    assert y.shape == (2, 12, 16, 32), f"FPN output {tuple(y.shape)}"
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_vit_loads_local_safetensors(tmp_path):
    path = tmp_path / "tiny_vit.safetensors"
    vit = _save_tiny_vit(path)
    cfg = EncoderConfig(
        fpn_widths=[8, 16], out_channels=16, vit_name=VIT, vit_weights=str(path), vit_kwargs=VIT_KWARGS, vit_channels=8
    )
    enc = ImageEncoder(cfg)
    for key, value in vit.state_dict().items():
        assert torch.equal(enc.vit.vit.state_dict()[key], value), f"ViT weight {key} not loaded from file"
    assert not any(p.requires_grad for p in enc.vit.vit.parameters()), "pretrained ViT must be frozen"
    feats = enc(torch.rand(2, 3, 32, 64), (16, 32))
    assert feats.shape == (2, 16, 16, 32)
    enc.train()
    assert not enc.vit.vit.training, "frozen ViT must stay in eval mode"


def test_vit_missing_file_is_clear(tmp_path):
    missing = tmp_path / "absent.safetensors"
    cfg = EncoderConfig(vit_name=VIT, vit_weights=str(missing), vit_kwargs=VIT_KWARGS)
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        ImageEncoder(cfg)


def test_vit_corrupted_file_is_clear(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    cfg = EncoderConfig(vit_name=VIT, vit_weights=str(bad), vit_kwargs=VIT_KWARGS)
    with pytest.raises(ValueError, match="bad.safetensors"):
        ImageEncoder(cfg)


def test_model_with_vit_runs(tmp_path):
    path = tmp_path / "tiny_vit.safetensors"
    _save_tiny_vit(path)
    cfg = ModelConfig.load("tiny")
    cfg.encoder.vit_name, cfg.encoder.vit_weights = VIT, str(path)
    cfg.encoder.vit_kwargs, cfg.encoder.vit_channels = VIT_KWARGS, 8
    from distillnerf_core.model.cameras import ring_rig

    model = DistillNeRFModel(cfg)
    rig = ring_rig(2, (32, 64))
    out = model(torch.rand(1, 2, 3, 32, 64), rig.intrinsics, rig.cam2ego)
    assert out.rgb.shape == (1, 2, 3, 32, 64)
