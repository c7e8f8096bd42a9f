"""The ESPNetv2 segmenter (our implementation, the shipped real weights) against its reference facts.

The facts (step-1 sha256, label-map sha256, logits at 5 pixels) come from data/weights/espnetv2_s2_cityscapes/
checks.json, computed with the authors' code; the reference label map PNG is shipped beside it."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from conftest import REPO
from PIL import Image
from safetensors.torch import load_file, save_file

from distillnerf_core.teachers import segmenter as seg
from distillnerf_core.teachers.base import TeacherWeightsError

WEIGHTS_DIR = REPO / "data" / "weights" / "espnetv2_s2_cityscapes"
CHECKS = json.loads((WEIGHTS_DIR / "checks.json").read_text())
FRONT = CHECKS["nuscenes_CAM_FRONT"]
JPEG = REPO / "data" / "nuscenes_sample" / "samples" / "CAM_FRONT" / \
    "n015-2018-07-24-11-22-45+0800__CAM_FRONT__1532402927612460.jpg"
STEP1_SHA256 = "79bd48200541db7ee74b3fbb375481d9890481ba2c20895988fffe82dcd2153d"  # the weights README, step 1


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def segmenter() -> seg.Segmenter:
    return seg.load_segmenter()


@pytest.fixture(scope="module")
def front() -> np.ndarray:
    """CAM_FRONT as the node / cache read it: the JPEG decoded to uint8 RGB (1600x900)."""
    return np.asarray(Image.open(JPEG).convert("RGB"))


@pytest.fixture(scope="module")
def front_outputs(segmenter, front) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, penultimate features) of CAM_FRONT at 1024x512: one forward for all the tests."""
    return segmenter.logits_and_features([front], hw=(512, 1024))


@pytest.fixture(scope="module")
def front_logits(front_outputs) -> torch.Tensor:
    return front_outputs[0]


def test_shipped_weights_are_the_checked_file():
    path = seg.default_weights_path()
    assert path == WEIGHTS_DIR / "espnetv2_s2_cityscapes.safetensors"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == CHECKS["safetensors_sha256"]
    assert (WEIGHTS_DIR / "LICENSE").read_text().startswith("MIT License")


def test_step1_preprocessing_reproduces_the_reference_input(front):
    assert hashlib.sha256(JPEG.read_bytes()).hexdigest() == FRONT["image_sha256"]
    assert _sha(seg.resize_image(front, (512, 1024))) == STEP1_SHA256
    x = seg.normalise([seg.resize_image(front, (512, 1024))])
    assert x.shape == (1, 3, 512, 1024) and x.is_contiguous()
    np.testing.assert_allclose(x[0, :, 0, 0].numpy(), FRONT["input_tensor"]["x[0,:,0,0]"], atol=1e-5)
    np.testing.assert_allclose(x.mean(dim=(0, 2, 3)).numpy(), FRONT["input_tensor"]["channel_means"], atol=1e-5)


def test_label_map_reproduces_the_reference(front_logits):
    labels = front_logits.argmax(1)[0].numpy().astype(np.uint8)
    reference = np.asarray(Image.open(WEIGHTS_DIR / "ref_labels_nuscenes_CAM_FRONT_1024x512.png"))
    agreement = float((labels == reference).mean())
    print(f"agreement with the reference label map: {100 * agreement:.4f} %")
    assert agreement >= 0.999
    # exact: the sha256 of the reference label map (computed with the authors' code, same torch)
    assert _sha(labels) == FRONT["argmax_uint8_1024x512_sha256"]
    sky = labels == seg.SKY_CLASS
    assert round(float(sky[:170].mean()), 3) == FRONT["sky_fraction_top_third"]
    assert float(sky[341:].mean()) == FRONT["sky_fraction_bottom_third"]


def test_logits_at_checked_pixels(front_logits):
    assert front_logits.shape == (1, seg.NUM_CLASSES, 512, 1024)
    for key, values in FRONT["logits_at"].items():
        r, c = (int(v) for v in key.split(","))
        np.testing.assert_allclose(front_logits[0, :, r, c].numpy(), values, atol=2e-3, err_msg=key)
    assert abs(float(front_logits.mean()) - FRONT["logits"]["mean"]) < 1e-4
    assert abs(float(front_logits.std()) - FRONT["logits"]["std"]) < 1e-4


def test_probabilities_labels_and_features(segmenter, front, front_outputs):
    assert front_outputs[1].shape == (1, seg.FEATURE_DIM, 256, 512), "the penultimate map is at H/2"
    small = seg.resize_image(front, (128, 256))
    probs = segmenter.probabilities([small, small], hw=(128, 256), out_hw=(90, 160))
    assert probs.shape == (2, 20, 90, 160)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 90, 160))
    labels = segmenter.labels([small], hw=(128, 256), out_hw=(90, 160))
    assert labels.dtype == torch.int64 and labels.shape == (1, 90, 160)
    assert torch.equal(labels[0], probs[0].argmax(0))
    logits, feats = segmenter.logits_and_features([small], hw=(128, 256))
    assert feats.shape == (1, seg.FEATURE_DIM, 64, 128)
    torch.testing.assert_close(logits, segmenter.logits([small], hw=(128, 256)))
    assert segmenter.prepare([small]).shape == (1, 3, 512, 1024), "default size: 1024 wide, aspect kept"


def test_input_sizes():
    assert seg.segmenter_input_hw((900, 1600)) == (576, 1024)
    assert seg.segmenter_input_hw((1216, 1936)) == (640, 1024)
    assert seg.segmenter_input_hw((512, 1024)) == (512, 1024)
    assert seg.segmenter_input_hw((900, 1600), width=512) == (288, 512)
    for hw in [(520, 1040), (900, 1600), (0, 16)]:
        with pytest.raises(ValueError, match="multiples of 16"):
            seg.check_input_hw(hw)


def test_refusals(segmenter, front, tmp_path):
    with pytest.raises(ValueError, match="multiples of 16.*520, 1040"):
        segmenter.logits([front], hw=(520, 1040))
    with pytest.raises(ValueError, match="uint8 RGB"):
        segmenter.logits([front.astype(np.float32)])
    with pytest.raises(ValueError, match="uint8 RGB"):
        segmenter.logits([front[..., 0]])
    with pytest.raises(ValueError, match="different sizes"):
        segmenter.logits([front, front[:450]])
    with pytest.raises(FileNotFoundError, match="gone.safetensors"):
        seg.Segmenter(tmp_path / "gone.safetensors")
    pickle = tmp_path / "espnetv2.pth"
    pickle.write_bytes(b"\x80\x04not loaded")
    with pytest.raises(TeacherWeightsError, match="espnetv2.pth.*pickle files are not loaded"):
        seg.Segmenter(pickle)
    state = load_file(str(seg.default_weights_path()))
    del state["bu_dec_l4.merge_layer.3.bias"]
    wrong = tmp_path / "wrong.safetensors"
    save_file(state, str(wrong))
    with pytest.raises(TeacherWeightsError, match="wrong.safetensors.*missing.*bu_dec_l4.merge_layer.3.bias"):
        seg.Segmenter(wrong)


def test_one_shared_instance(segmenter):
    assert seg.load_segmenter() is segmenter
    assert seg.load_segmenter(seg.default_weights_path(), "cpu") is segmenter
    assert not any(p.requires_grad for p in segmenter.net.parameters()) and not segmenter.net.training


def test_vocabulary():
    assert len(seg.CLASS_NAMES) == 20 and seg.CLASS_NAMES[seg.SKY_CLASS] == "sky"
    assert seg.resolve_queries(["car", "Traffic  Light", "traffic_light", "vehicle", "two-wheeler", "sky"]) == [
        (13,), (6,), (6,), (13, 14, 15), (17, 18), (10,)]
    names = seg.known_query_names()
    assert names[:20] == list(seg.CLASS_NAMES) and "vehicle" in names
    for alias, classes in seg.ALIASES.items():
        assert seg.resolve_queries([alias]) == [tuple(seg.CLASS_NAMES.index(c) for c in classes)]
    with pytest.raises(ValueError, match=r"unknown queries \['spaceship'\].*closed vocabulary.*road, sidewalk"
                                         r".*vehicle = car \+ truck \+ bus"):
        seg.resolve_queries(["car", "spaceship"])
    with pytest.raises(ValueError, match="no text queries"):
        seg.resolve_queries([])
    with pytest.raises(ValueError, match="empty text query"):
        seg.resolve_queries(["car", " "])


def test_missing_shipped_weights_name_both_places(monkeypatch, tmp_path):
    from distillnerf_core.data import bundled

    real = bundled.bundled_data
    monkeypatch.setattr(bundled, "bundled_data",
                        lambda name: real(name, source_data=tmp_path / "data", prefixes=str(tmp_path / "install")))
    with pytest.raises(FileNotFoundError, match=r"ESPNetv2.*data/weights/espnetv2_s2_cityscapes.*"
                                                r"share/distillnerf_ros/data/weights/espnetv2_s2_cityscapes"):
        seg.default_weights_path()
