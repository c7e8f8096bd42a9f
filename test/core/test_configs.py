"""Config loading: shipped names, paper sizes, strict keys."""

import pytest

from distillnerf_core import configs
from distillnerf_core.model.distillnerf import ModelConfig
from distillnerf_core.model.lift import depth_bin_edges


@pytest.mark.parametrize("name", configs.MODEL_CONFIG_NAMES)
def test_shipped_configs_load(name):
    cfg = ModelConfig.load(name)
    assert isinstance(cfg, ModelConfig)
    assert cfg.name == name, f"{name}.yaml declares name {cfg.name!r}"


def test_paper_config_has_reference_sizes():
    cfg = ModelConfig.load("paper")
    assert cfg.image_hw == [128, 228], f"paper input must be 128x228 (HxW), got {cfg.image_hw}"
    bins = depth_bin_edges(cfg.lift).numel() - 1
    assert bins == 286, f"paper must have D = 286 depth bins, got {bins}"
    assert cfg.lift.fine_candidates == 15
    assert (cfg.voxels.coarse_resolution, cfg.voxels.fine_resolution) == (128, 512)
    assert cfg.sparse_conv.width == 128
    assert cfg.feature_head.dim == 64
    assert cfg.renderer.render_scale == 0.5


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lift:\n  fine_candidatez: 3\n")
    with pytest.raises(ValueError, match=r"lift\.fine_candidatez"):
        ModelConfig.load(path)
    with pytest.raises(ValueError, match="bogus"):
        ModelConfig.from_dict({"bogus": 1})


def test_dict_round_trip():
    cfg = ModelConfig.load("small")
    again = ModelConfig.from_dict(cfg.to_dict())
    assert again == cfg, "config -> dict -> config changed the config"


def test_invalid_values_rejected(tmp_path):
    with pytest.raises(ValueError, match="lookup"):
        ModelConfig.from_dict({"renderer": {"lookup": "cubic"}})
    with pytest.raises(ValueError, match="fine_resolution"):
        ModelConfig.from_dict({"voxels": {"coarse_resolution": 100, "fine_resolution": 256}})
    with pytest.raises(ValueError, match=r"lift\.fine_candidates' must be int"):
        ModelConfig.from_dict({"lift": {"fine_candidates": "15"}})
    with pytest.raises(ValueError, match=r"feature_head\.enabled' must be bool"):
        ModelConfig.from_dict({"feature_head": {"enabled": 1}})
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        ModelConfig.load(tmp_path / "nope.yaml")
