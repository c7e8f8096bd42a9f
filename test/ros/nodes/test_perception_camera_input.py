"""The camera input path never loses the frame for one bad camera and never silently corrupts one: bad or absurd
distortion, ROI and binning (REP-104), rectified topics (P) against raw ones (K + D), camera poses beyond
float32 or absurdly far, and a /tf edge that would close a loop, each over real DDS on the real node, with the
other cameras (or a later good frame) still processed. docs/reliability.md maps each behaviour to its test."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo
from test_perception_robustness import Harness as RobustnessHarness
from tf2_msgs.msg import TFMessage

from distillnerf_ros.conversions.nuscenes_messages import stamp_from_us, transform_stamped
from ros_helpers import RosSession, SmallRig

NODE = "/distillnerf_perception"
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
T0 = 1_700_000_000 * 1_000_000_000


class Harness(RobustnessHarness):
    """The robustness harness (depth of `depth_camera`, /diagnostics) plus front's depth CameraInfo and a record
    of what the model is given (images, K per camera) for each frame."""

    def __init__(self, session: RosSession, checkpoint, monkeypatch, depth_camera: str = "front",
                 **parameters) -> None:
        super().__init__(session, checkpoint, depth_camera, **parameters)
        self.depth_info: list[CameraInfo] = []
        self.inputs: list[tuple[list[np.ndarray], list[np.ndarray]]] = []  # (images, K) given to the model
        predict = self.node.predictor.predict

        def recording(images, intrinsics, *args, **kwargs):
            self.inputs.append(([i.copy() for i in images], [np.asarray(k, dtype=np.float64) for k in intrinsics]))
            return predict(images, intrinsics, *args, **kwargs)

        monkeypatch.setattr(self.node.predictor, "predict", recording)
        session.nodes[-1].create_subscription(CameraInfo, f"{NODE}/front/depth/camera_info", self.depth_info.append,
                                              RELIABLE)

    def frame_is_processed(self, stamp_ns: int = T0, edit=None, timeout_s: float = 30.0, until=None) -> bool:
        """Publish a frame (again every second until an output comes): True once depth arrives (and `until()`
        holds after it: a frame published before may be the one processed)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            before = len(self.depth)
            self.rig.publish_frame(stamp_ns, edit)
            arrived = self.session.spin_until(lambda count=before: len(self.depth) > count, 1.0)
            if arrived and (until is None or until()):
                return True
            stamp_ns += 50_000_000
        return False

    def all_cameras(self) -> bool:
        return not self.node.last["missing"]

    def fresh_values(self, timeout_s: float = 10.0) -> tuple[object, dict[str, str]]:
        """The node's next diagnostics status and its values."""
        count = len(self.statuses)
        assert self.session.spin_until(lambda: len(self.statuses) > count, timeout_s), "no /diagnostics"
        status = self.statuses[-1]
        return status, {kv.key: kv.value for kv in status.values}

    def only_left_is_left_out(self, reason: str) -> None:
        """The frame was processed without `left`, whose reason names `reason`; WARN in /diagnostics."""
        missing = self.node.last["missing"]
        assert list(missing) == ["left"] and reason in missing["left"], missing
        assert self.node.counters["errors"] == 0, self.node.last
        status, values = self.fresh_values()
        assert reason in values.get("missing/left", ""), values
        assert status.level >= status.WARN, status.message


def distort_left(model: str, d: list[float]):
    def edit(camera, info, image):
        if camera == "left":
            info.distortion_model, info.d = model, d
    return edit


@pytest.mark.parametrize("model,d,reason", [
    ("plumb_bob", [math.nan, 0.0, 0.0, 0.0, 0.0], "non-finite distortion"),
    ("plumb_bob", [0.0, math.inf, 0.0, 0.0, 0.0], "non-finite distortion"),
    ("rational_polynomial", [0.0, 0.0, 0.0, 0.0, 0.0, -2.0, 0.0, 0.0], "denominator"),
])
def test_a_camera_with_non_finite_or_singular_distortion_is_left_out_and_the_others_processed(
        session, tiny_checkpoint, monkeypatch, model, d, reason):
    harness = Harness(session, tiny_checkpoint, monkeypatch)
    assert harness.frame_is_processed(T0, distort_left(model, d)), f"the others must go on: {harness.node.last}"
    harness.only_left_is_left_out(reason)
    assert harness.frame_is_processed(T0 + 1_000_000_000, until=harness.all_cameras), harness.node.last


@pytest.mark.parametrize("d", [[1e6, 0.0, 0.0, 0.0, 0.0], [-1e6, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1e3, 0.0, 0.0]])
def test_a_camera_whose_absurd_distortion_leaves_a_tiny_rectified_area_is_refused(session, tiny_checkpoint,
                                                                                   monkeypatch, d):
    harness = Harness(session, tiny_checkpoint, monkeypatch)
    assert harness.frame_is_processed(T0, distort_left("plumb_bob", d)), harness.node.last
    harness.only_left_is_left_out("of the rectified image with a source pixel")
    assert "left" not in harness.node.last["distortion"], "a refused camera is not reported as rectified"


def crop_front(x: int, y: int, w: int, h: int, binning: int = 1, image_too: bool = True):
    """front: a CameraInfo with an ROI (w x h at x, y; zero: the full sensor) and binning, the image that
    region of the full image binned (with image_too; else the full image is sent)."""
    def edit(camera, info, image):
        if camera != "front":
            return
        info.roi.x_offset, info.roi.y_offset, info.roi.width, info.roi.height = x, y, w, h
        info.binning_x = info.binning_y = binning
        if not image_too:
            return
        pixels = np.frombuffer(bytes(image.data), np.uint8).reshape(image.height, image.width, 3)
        region = pixels[y:y + (h or image.height), x:x + (w or image.width)][::binning, ::binning]
        image.height, image.width, image.step = region.shape[0], region.shape[1], region.shape[1] * 3
        image.data = np.ascontiguousarray(region).tobytes()
    return edit


@pytest.mark.parametrize("roi,binning,expected_k", [
    ((16, 12, 32, 24), 1, [[40.0, 0.0, 16.0], [0.0, 40.0, 12.0]]),  # a crop: same focal, shifted centre
    ((0, 0, 0, 0), 2, [[20.0, 0.0, 16.0], [0.0, 20.0, 12.0]]),  # 2x2 binning of the full sensor
    ((8, 8, 48, 32), 2, [[20.0, 0.0, 12.0], [0.0, 20.0, 8.0]]),  # both
])
def test_camera_info_roi_and_binning_are_applied_exactly_to_k_and_the_depth_camera_info(
        session, tiny_checkpoint, monkeypatch, roi, binning, expected_k):
    harness = Harness(session, tiny_checkpoint, monkeypatch)
    assert harness.frame_is_processed(T0, crop_front(*roi, binning)), harness.node.last
    assert not harness.node.last["missing"], harness.node.last["missing"]
    images, intrinsics = harness.inputs[-1]
    np.testing.assert_allclose(intrinsics[0][:2], expected_k, atol=1e-9)  # front: the model's K of the sent image
    assert session.spin_until(lambda: bool(harness.depth_info), 10)
    depth, info = harness.depth[-1], harness.depth_info[-1]
    sent_w, sent_h = (roi[2] or 64) // binning, (roi[3] or 48) // binning
    scale = np.diag([depth.width / sent_w, depth.height / sent_h, 1.0])
    np.testing.assert_allclose(np.reshape(info.k, (3, 3)), scale @ np.vstack([expected_k, [0, 0, 1]]), atol=1e-6)
    assert "ROI" in harness.node.last["distortion"]["front"], harness.node.last["distortion"]


def test_an_image_whose_size_does_not_match_its_roi_is_refused_never_taken_as_a_reduction(
        session, tiny_checkpoint, monkeypatch):
    harness = Harness(session, tiny_checkpoint, monkeypatch, depth_camera="back")
    assert harness.frame_is_processed(T0, crop_front(16, 12, 32, 24, image_too=False)), harness.node.last
    missing = harness.node.last["missing"]
    assert list(missing) == ["front"] and "ROI" in missing["front"], missing

    def half_size(camera, info, image):  # a half-size image, no ROI: not the described size
        if camera == "front":
            crop_front(0, 0, 0, 0, binning=2)(camera, info, image)
            info.binning_x = info.binning_y = 0
    assert harness.frame_is_processed(T0 + 1_000_000_000, half_size, until=lambda: "is for 64x48 but the image is"
                                      in harness.node.last["missing"].get("front", "")), harness.node.last
    missing = harness.node.last["missing"]
    assert list(missing) == ["front"] and "is for 64x48 but the image is 32x24" in missing["front"], missing


def rectified_front_with_raw_info(camera, info, image):
    """front: a CameraInfo with the raw camera's D (k2 = -0.33) and a rectified P (focal 30, K's is 40), and a
    left-to-right ramp image 0, 4, 8, ..."""
    if camera == "front":
        info.distortion_model = "plumb_bob"
        info.d = [0.0, -0.33, 0.0, 0.0, 0.0]
        info.p = [30.0, 0.0, 32.0, 0.0, 0.0, 30.0, 24.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ramp = np.repeat((np.arange(image.width, dtype=np.uint8) * 4)[None, :, None], 3, axis=2)
        image.data = np.repeat(ramp, image.height, axis=0).tobytes()


@pytest.mark.parametrize("image_rectified", ["true", "false", "auto"])
def test_rectified_images_use_p_and_ignore_d_and_raw_ones_are_rectified_with_k_and_d(
        session, tiny_checkpoint, monkeypatch, image_rectified):
    harness = Harness(session, tiny_checkpoint, monkeypatch, image_rectified=image_rectified)
    assert harness.frame_is_processed(T0, rectified_front_with_raw_info), harness.node.last
    images, intrinsics = harness.inputs[-1]
    front_k, front = intrinsics[0], images[0]
    _, values = harness.fresh_values()
    if image_rectified == "true":
        assert front_k[0, 0] == 30.0 and front_k[1, 1] == 30.0, front_k
        assert front[0, 0, 0] == 0 and front[0, 63, 0] == 252, "a rectified image is not rectified again"
        assert values["distortion/front"] == "rectified image: P (D ignored)", values
    else:  # raw (auto: the rig's topic is .../image, a raw topic name)
        assert front_k[0, 0] == 40.0, front_k
        assert 35 < front[0, 0, 0] < 50, "a raw image is rectified with K and D"
        assert values["distortion/front"] == "rectified (plumb_bob)", values
    assert values["distortion/left"].startswith("rectified image" if image_rectified == "true" else "raw image: K")


def place_left(rig: SmallRig, x: float) -> None:
    pose = rig.camera_pose(1)
    pose[0, 3] = x
    rig.tf_static.publish(TFMessage(transforms=[
        *(transform_stamped("base_link", c, stamp_from_us(0), rig.camera_pose(i))
          for i, c in enumerate(rig.cameras) if c != "left"),
        transform_stamped("base_link", "left", stamp_from_us(0), pose)]))


@pytest.mark.parametrize("x,reason", [(1e300, "not finite in float32"), (1e20, "max_camera_distance"),
                                      (150.0, "max_camera_distance")])
def test_a_camera_placed_beyond_float32_or_absurdly_far_is_left_out(session, tiny_checkpoint, monkeypatch, x,
                                                                    reason):
    harness = Harness(session, tiny_checkpoint, monkeypatch)
    place_left(harness.rig, x)
    assert session.spin_until(lambda: harness.node.rig.tf.can_transform("base_link", "left", 0), 10)
    assert harness.frame_is_processed(T0), harness.node.last
    harness.only_left_is_left_out(reason)
    assert all(np.all(np.isfinite(k)) for k in harness.inputs[-1][1])


def test_a_dynamic_tf_edge_closing_a_loop_with_a_static_one_is_refused_and_later_sets_go_on(
        session, tiny_checkpoint, monkeypatch):
    harness = Harness(session, tiny_checkpoint, monkeypatch)
    assert harness.frame_is_processed(T0)
    tf = harness.node.rig.tf
    for second in range(3):  # base_link under its own camera: static base_link -> front, dynamic front -> base_link
        harness.rig.tf.publish(TFMessage(transforms=[
            transform_stamped("front", "base_link", stamp_from_us((T0 + second * 1_000_000_000) // 1000), np.eye(4))]))
    assert session.spin_until(lambda: tf.rejected >= 3, 10), tf.rejected
    for second in (1, 2):  # the sets after it keep being processed, with every camera
        assert harness.frame_is_processed(T0 + second * 1_000_000_000, until=harness.all_cameras), (
            harness.node.losses(), harness.node.last["missing"])
    _, values = harness.fresh_values()
    assert "would close a TF loop" in values["last_error/tf"] and int(values["tf_loops_refused"]) >= 3, values
    assert harness.node.losses()["sets_dropped_tf"] == 0 and tf.loops_refused == tf.rejected
