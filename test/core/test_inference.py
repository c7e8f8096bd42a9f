import numpy as np
import pytest
import torch

from distillnerf_core.geometry import make_transform, quaternion_to_matrix
from distillnerf_core.inference import (
    DeviceUnavailableError,
    OccupancyConfig,
    ScenePredictor,
    occupancy_probability,
    project_points,
    resolve_device,
    scaled_intrinsics,
)
from distillnerf_core.model.distillnerf import DistillNeRFModel

OPTICAL = quaternion_to_matrix([0.5, -0.5, 0.5, -0.5])  # camera looking along ego +x


def ring(n: int, width: int, height: int):
    K = np.array([[width / 2, 0, width / 2], [0, width / 2, height / 2], [0, 0, 1.0]])
    angles = np.linspace(0, 2 * np.pi, n + 1)[:-1]
    yaw = [make_transform([np.cos(a / 2), 0, 0, np.sin(a / 2)], [0, 0, 1.5]) for a in angles]
    return [K] * n, [y @ make_transform(OPTICAL, [0, 0, 0]) for y in yaw]


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return ScenePredictor(DistillNeRFModel("tiny", load_pretrained=False), "cpu",
                          occupancy=OccupancyConfig(voxel_size=1.0, threshold=0.0))


def test_outputs_have_the_promised_shapes_for_cameras_of_any_size(predictor):
    Ks, extrinsics = ring(3, 160, 90)
    images = [np.random.default_rng(i).integers(0, 255, (90, 160, 3), dtype=np.uint8) for i in range(3)]
    images[1] = np.zeros((45, 80, 3), np.uint8)  # a camera with a different resolution
    Ks[1] = scaled_intrinsics(Ks[1], (90, 160), (45, 80))
    out = predictor.predict(images, Ks, extrinsics, depth=True, rgb=True, occupancy=True)
    h, w = predictor.input_hw
    assert out.rgb.shape == (3, h, w, 3) and out.rgb.dtype == np.uint8
    assert out.depth.shape[0] == 3 and out.depth.dtype == np.float32 and (out.depth > 0).all()
    render_h, render_w = out.depth.shape[1:]
    assert np.allclose(out.depth_intrinsics[0][0, 0], Ks[0][0, 0] * render_w / 160)
    assert out.bev_probability.shape == (80, 80), "rows = y cells, columns = x cells of the 80 m grid at 1 m"
    assert len(out.voxel_centers) == len(out.voxel_density) == len(out.voxel_rgb) == len(out.voxel_features)
    assert out.model_ms > 0 and set(out.stage_ms) >= {"encoder", "lift", "render"}


def test_only_requested_outputs_are_computed(predictor):
    Ks, extrinsics = ring(2, 64, 32)
    out = predictor.predict([np.zeros((32, 64, 3), np.uint8)] * 2, Ks, extrinsics, depth=True, rgb=False,
                            occupancy=False)
    assert out.depth is not None and out.rgb is None and out.voxel_centers is None and out.bev_probability is None


def test_projection_and_occupancy_probability():
    K = torch.tensor([[[100.0, 0, 50], [0, 100.0, 25], [0, 0, 1]]])
    ego_from_camera = torch.tensor(make_transform(OPTICAL, [0, 0, 0]), dtype=torch.float32)[None]
    u, v, visible = project_points(torch.tensor([[10.0, 0, 0], [-10.0, 0, 0], [10.0, 1.0, 0.5]]), K,
                                   ego_from_camera, (50, 100))
    assert visible.tolist() == [[True, False, True]], "a point behind the camera must not be visible"
    assert torch.allclose(u[0, [0, 2]], torch.tensor([50.0, 40.0])) and torch.allclose(v[0, [0, 2]],
                                                                                       torch.tensor([25.0, 20.0]))
    density = torch.tensor([0.0, float(np.log(2) / 0.5)])
    assert torch.allclose(occupancy_probability(density, 0.5), torch.tensor([0.0, 0.5]))


def test_bad_arguments_are_clear_errors(predictor):
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="unsupported device"):
        resolve_device("mps")
    with pytest.raises(ValueError, match="precision"):
        ScenePredictor(DistillNeRFModel("tiny", load_pretrained=False), "cpu", precision="int8")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        ScenePredictor(DistillNeRFModel("tiny", load_pretrained=False), "cpu", precision="fp16")
    Ks, extrinsics = ring(2, 64, 32)
    with pytest.raises(ValueError, match="same non-zero number"):
        predictor.predict([np.zeros((32, 64, 3), np.uint8)], Ks, extrinsics)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        predictor.predict([np.zeros((32, 64), np.uint8)] * 2, Ks, extrinsics)


@pytest.mark.slow
def test_compiled_predictor_gives_the_eager_predictions():
    """ScenePredictor(compile=True) compiles the static stages (inductor on the CPU) with the same outputs."""
    torch.manual_seed(0)
    model = DistillNeRFModel("tiny", load_pretrained=False)
    eager = ScenePredictor(model, "cpu", occupancy=OccupancyConfig(voxel_size=1.0, threshold=0.0))
    Ks, poses = ring(6, 96, 64)
    images = [np.random.default_rng(i).integers(0, 255, (64, 96, 3), dtype=np.uint8) for i in range(6)]
    want = eager.predict(images, Ks, poses, rgb=True)
    compiled = ScenePredictor(model, "cpu", occupancy=OccupancyConfig(voxel_size=1.0, threshold=0.0), compile=True)
    from torch._dynamo.utils import counters

    assert compiled.warm_up(6, rgb=True) > 0  # compiles the 6-camera graphs now, not at the first frame
    graphs = counters["stats"]["unique_graphs"]
    got = compiled.predict(images, Ks, poses, rgb=True)
    assert counters["stats"]["unique_graphs"] == graphs, "the first real frame compiled again after warm_up"
    assert model.compile_errors == {}, f"stages fell back to eager: {model.compile_errors}"
    np.testing.assert_allclose(got.depth, want.depth, rtol=1e-4, atol=1e-4, err_msg="depth differs when compiled")
    assert np.abs(got.rgb.astype(int) - want.rgb.astype(int)).max() <= 1, "RGB differs when compiled"
    np.testing.assert_allclose(got.voxel_density, want.voxel_density, rtol=1e-4, atol=1e-5)


def test_device_upload_resizes_like_one_image_at_a_time():
    """The GPU input path (issue 26 item 3: uint8 pixels uploaded once per image size, converted and resized in
    one batch on the device), run here on the CPU, gives each image exactly what uploading and resizing it
    alone gives; mixed sizes keep their order."""
    import torch.nn.functional as F

    from distillnerf_core.inference import upload_resized

    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, size, dtype=np.uint8) for size in ((90, 160, 3), (45, 80, 3), (90, 160, 3))]
    images[1].flags.writeable = False  # a decoded JPEG may be read-only
    hw = (32, 57)
    batched = upload_resized(images, hw, torch.device("cpu"))
    for i, image in enumerate(images):
        alone = torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255.0
        alone = F.interpolate(alone, size=hw, mode="bilinear", align_corners=False, antialias=True)[0]
        assert torch.equal(batched[i], alone), f"image {i} differs"
    same = upload_resized([images[0]], (90, 160), torch.device("cpu"))  # no resize at the input size
    assert torch.equal(same[0], torch.from_numpy(images[0]).permute(2, 0, 1).float() / 255.0)
