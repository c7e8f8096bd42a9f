"""DataConfig.jpeg_draft: JPEGs decoded at a DCT reduction give the same geometry (intrinsics, LiDAR targets) and
nearly the same pixels as a full decode + resize; a reduction really happens, and never below the input size."""

import pytest
import torch
from PIL import Image
from train_helpers import VERSION, make_tiny_dataroot

from distillnerf_core.data.datasets import DataConfig, make_dataset


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_tiny_dataroot(tmp_path_factory.mktemp("synth_draft"), frames=1)  # 64x32 JPEGs


@pytest.mark.parametrize("hw", [(8, 16), (12, 20)])
def test_draft_same_geometry_close_pixels(root, hw, monkeypatch):
    full = make_dataset(str(root), VERSION, hw, DataConfig(sky_mask="none"), (hw[0] // 2, hw[1] // 2))[0]
    drafted_sizes = []

    def recording(method):
        def record(self, *args, **kwargs):  # the size the decoder produced, before the resize to hw
            drafted_sizes.append(self.size)
            return method(self, *args, **kwargs)
        return record
    for name in ("resize", "copy"):  # the dataset resizes a decoded image, or copies one already at the input size
        monkeypatch.setattr(Image.Image, name, recording(getattr(Image.Image, name)))
    draft = make_dataset(str(root), VERSION, hw, DataConfig(sky_mask="none", jpeg_draft=True),
                         (hw[0] // 2, hw[1] // 2))[0]
    # 64x32 -> the smallest reduction at least hw: 1/4 (16x8) for 16x8, 1/2 (32x16) for 20x12
    assert set(drafted_sizes) == {(16, 8) if hw == (8, 16) else (32, 16)}
    for key in ("intrinsics", "cam2ego", "lidar_depth", "masks"):
        assert torch.equal(full[key], draft[key]), key
    assert draft["images"].shape == full["images"].shape == (6, 3, *hw)
    assert not torch.equal(draft["images"], full["images"]), "another decode, other pixels"
    assert float((draft["images"] - full["images"]).abs().mean()) < 0.03
