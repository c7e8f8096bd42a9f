"""The node never dies and never lies: each bad input (invalid TF, negative stamps, a failing transition, a bad
K, distortion, a query flood, ...) over real DDS on the real node, then a good frame that must still be
processed. docs/reliability.md maps each behaviour to its test."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import TransformStamped
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from tf2_msgs.msg import TFMessage

from distillnerf_ros.conversions.images import image_to_depth
from distillnerf_ros.conversions.nuscenes_messages import stamp_from_us, transform_stamped
from distillnerf_ros.nodes.perception import PerceptionNode
from ros_helpers import RosSession, SmallRig

NODE = "/distillnerf_perception"
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
T0 = 1_700_000_000 * 1_000_000_000


class Harness:
    """The real node on a SmallRig, a depth listener on one camera (the first) and a /diagnostics listener."""

    def __init__(self, session: RosSession, checkpoint, depth_camera: str = "front", **parameters) -> None:
        self.session = session
        self.rig = SmallRig(session)
        overrides = {"device": "cpu", "tf_wait": 0.5, "model_path": str(checkpoint), **self.rig.parameters(),
                     **parameters}
        self.node = session.node("perception", PerceptionNode,
                                 parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        self.depth: list[Image] = []
        self.statuses = []
        listener = session.node("listener")
        listener.create_subscription(Image, f"{NODE}/{depth_camera}/depth", self.depth.append, RELIABLE)
        listener.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        if self.node.status_message == "active":
            self.rig.wait_for_node()
            self.rig.publish_static()

    def _on_diagnostics(self, message: DiagnosticArray) -> None:
        self.statuses.extend(s for s in message.status if s.name.startswith("distillnerf_perception"))

    def good_frame_is_processed(self, stamp_ns: int = T0, timeout_s: float = 30.0) -> bool:
        """Publish a good frame (again every second until an output comes): True once depth arrives."""
        before, deadline = len(self.depth), time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.rig.publish_frame(stamp_ns)
            if self.session.spin_until(lambda: len(self.depth) > before, 1.0):
                return True
            stamp_ns += 50_000_000
        return False

    def fresh_status(self, timeout_s: float = 5.0):
        """The node's next diagnostics status."""
        count = len(self.statuses)
        assert self.session.spin_until(lambda: len(self.statuses) > count, timeout_s), "no /diagnostics"
        return self.statuses[-1]

    @staticmethod
    def values(status) -> dict[str, str]:
        return {kv.key: kv.value for kv in status.values}


def bad_transform(parent: str, child: str, translation=(0.0, 0.0, 0.0), rotation=(1.0, 0.0, 0.0, 0.0)):
    msg = TransformStamped(child_frame_id=child)
    msg.header.frame_id = parent
    msg.header.stamp = stamp_from_us(T0 // 1000)
    msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = translation
    w, x, y, z = rotation
    msg.transform.rotation.w, msg.transform.rotation.x, msg.transform.rotation.y, msg.transform.rotation.z = w, x, y, z
    return msg


BAD_TRANSFORMS = {
    "nan_translation": bad_transform("map", "base_link", translation=(math.nan, 0.0, 0.0)),
    "inf_translation": bad_transform("map", "odom", translation=(0.0, math.inf, 0.0)),
    "zero_quaternion": bad_transform("map", "base_link", rotation=(0.0, 0.0, 0.0, 0.0)),
    "nan_quaternion": bad_transform("map", "base_link", rotation=(math.nan, 0.0, 0.0, 1.0)),
    "parent_is_child": bad_transform("base_link", "base_link"),
    "empty_child": bad_transform("base_link", ""),
}


@pytest.mark.parametrize("topic", ["/tf", "/tf_static"])
def test_invalid_tf_transforms_are_rejected_counted_and_reported(session, tiny_checkpoint, topic):
    harness = Harness(session, tiny_checkpoint)
    assert harness.good_frame_is_processed(T0)
    publisher = harness.rig.tf if topic == "/tf" else harness.rig.tf_static
    good = transform_stamped("base_link", "spare_frame", stamp_from_us(T0 // 1000), np.eye(4))
    for transform in BAD_TRANSFORMS.values():  # each alone, and all together with a good one
        publisher.publish(TFMessage(transforms=[transform]))
    publisher.publish(TFMessage(transforms=[*BAD_TRANSFORMS.values(), good]))
    if topic == "/tf_static":
        harness.rig.publish_static()  # the rig's own static transforms come back (latched, last message wins)
    assert session.spin_until(lambda: harness.node.rig.tf.rejected >= 2 * len(BAD_TRANSFORMS), 10), (
        f"rejected {harness.node.rig.tf.rejected}")
    assert harness.node.rig.tf.can_transform("base_link", "spare_frame", 0), "good transforms of a message stay"
    assert harness.good_frame_is_processed(T0 + 1_000_000_000), "the node must keep processing after bad TF"
    status = harness.fresh_status()
    values = harness.values(status)
    assert int(values["tf_rejected"]) == 2 * len(BAD_TRANSFORMS), values
    assert "non-finite" in values["last_error/tf"] or "quaternion" in values["last_error/tf"] or \
        "invalid transform edge" in values["last_error/tf"], values
    assert status.level >= status.WARN and "rejected" in status.message, status.message


def test_images_with_negative_stamps_are_refused_and_the_worker_survives(session, tiny_checkpoint):
    harness = Harness(session, tiny_checkpoint)
    assert harness.good_frame_is_processed(T0)
    for _ in range(3):
        harness.rig.publish_frame(-5_000_000_000)
        session.spin_until(lambda: False, 0.3)
    status = harness.fresh_status()
    values = harness.values(status)
    assert any("negative stamp" in value for key, value in values.items() if key.startswith("rejected/")), values
    assert status.level >= status.WARN, status.message
    assert harness.good_frame_is_processed(T0 + 1_000_000_000), "the worker must survive a negative stamp"
    assert harness.node.worker.running and harness.node.counters["errors"] == 0


def test_an_exception_in_inference_is_counted_reported_and_processing_goes_on(session, tiny_checkpoint,
                                                                                     monkeypatch):
    harness = Harness(session, tiny_checkpoint)
    predict = harness.node.predictor.predict
    calls = []

    def fails_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("Nanoseconds value must not be negative")
        return predict(*args, **kwargs)

    monkeypatch.setattr(harness.node.predictor, "predict", fails_once)
    harness.rig.publish_frame(T0)
    assert session.spin_until(lambda: harness.node.counters["errors"] == 1, 10)
    status = harness.fresh_status()
    assert status.level >= status.WARN and "must not be negative" in harness.values(status)["error"]
    assert harness.good_frame_is_processed(T0 + 1_000_000_000)


def test_a_flood_of_tf_child_frames_is_bounded_and_expires(session, tiny_checkpoint):
    harness = Harness(session, tiny_checkpoint)
    assert harness.good_frame_is_processed(T0)
    tf = harness.node.rig.tf
    stamp = stamp_from_us(T0 // 1000)
    for batch in range(6):  # 6000 distinct child frames, more than the cache keeps
        harness.rig.tf.publish(TFMessage(transforms=[
            transform_stamped("map", f"flood_{batch}_{i}", stamp, np.eye(4)) for i in range(1000)]))
    assert session.spin_until(lambda: tf.evicted + tf.dynamic_frame_count >= 6000, 20), tf.dynamic_frame_count
    assert tf.dynamic_frame_count <= tf.max_dynamic_frames, "the number of dynamic frames must be bounded"
    started = time.monotonic()
    assert harness.good_frame_is_processed(T0 + 1_000_000_000)
    assert time.monotonic() - started < 10, "a flood must not leave the node slow"
    # dynamic edges that stopped updating expire once the rest of the tree moves past the cache duration
    later = stamp_from_us((T0 + 60 * 1_000_000_000) // 1000)
    harness.rig.tf.publish(TFMessage(transforms=[transform_stamped("map", "base_link", later, np.eye(4))]))
    assert session.spin_until(lambda: tf.dynamic_frame_count <= 1, 10), tf.dynamic_frame_count
    values = harness.values(harness.fresh_status())
    assert int(values["tf_evicted"]) + int(values["tf_expired"]) >= 6000, values


@pytest.mark.parametrize("tree", ["disconnected", "loop"])
def test_a_fixed_frame_not_connected_to_base_link_falls_back_and_says_so(session, tiny_checkpoint, tree):
    harness = Harness(session, tiny_checkpoint, fixed_frame="map")
    if tree == "disconnected":  # map exists, but in a tree of its own
        extra = [transform_stamped("map", "some_frame", stamp_from_us(0), np.eye(4))]
    else:  # map hangs in a loop that never reaches base_link
        extra = [transform_stamped("map", "loop_a", stamp_from_us(0), np.eye(4)),
                 transform_stamped("loop_a", "loop_b", stamp_from_us(0), np.eye(4)),
                 transform_stamped("loop_b", "map", stamp_from_us(0), np.eye(4))]
    harness.rig.publish_static(extra)
    assert session.spin_until(lambda: harness.node.rig.tf.has_frame("map"), 5)
    assert harness.good_frame_is_processed(T0), f"processing stopped: {harness.node.losses()}"
    status = harness.fresh_status()
    values = harness.values(status)
    assert "not connected" in values["last_error/fixed_frame"], values
    if tree == "loop":  # the edge that would close the loop is refused (said first): map is left disconnected
        assert "would close a TF loop" in values["last_error/tf"] and "tf_rejected" in status.message, values
    else:
        assert "without ego-motion" in status.message, status.message
    assert status.level == status.WARN and int(values["frames_uncompensated"]) >= 1


def test_frames_dropped_for_missing_tf_raise_the_diagnostic_level(session, tiny_checkpoint):
    harness = Harness(session, tiny_checkpoint, tf_wait=0.2)
    assert harness.good_frame_is_processed(T0)

    def unknown_frames(camera, info, image):
        image.header.frame_id = f"unknown_{camera}"  # frames nobody published TF for

    harness.rig.publish_frame(T0 + 1_000_000_000, unknown_frames)
    assert session.spin_until(lambda: harness.node.losses()["sets_dropped_tf"] >= 1, 5)
    status = harness.fresh_status()
    assert status.level == status.WARN and "sets_dropped_tf 1" in status.message, status.message


def checkpoint_with_encoder(tmp_path, checkpoint, **encoder) -> Path:
    """A copy of `checkpoint` whose sidecar sets encoder fields (a frozen ViT with timm kwargs)."""
    copy = tmp_path / "model.safetensors"
    copy.write_bytes(checkpoint.read_bytes())
    sidecar = json.loads(checkpoint.with_suffix(".json").read_text())
    sidecar["config"]["encoder"].update(encoder)
    copy.with_suffix(".json").write_text(json.dumps(sidecar))
    return copy


def test_a_failing_configure_is_logged_reported_as_error_and_can_be_retried(session, tiny_checkpoint, tmp_path, capfd):
    bad = checkpoint_with_encoder(tmp_path, tiny_checkpoint, vit_name="vit_tiny_patch16_224",
                                  vit_weights=str(tmp_path / "vit.safetensors"),
                                  vit_kwargs={"depth": 1, "num_heads": 0})  # timm: ZeroDivisionError
    harness = Harness(session, bad)
    node = harness.node
    assert node.status_message == "configure failed", node.status_message
    assert "ZeroDivisionError" in node.last["error"], node.last
    status = harness.fresh_status()
    assert status.level == status.ERROR and "ZeroDivisionError" in status.message, status.message
    assert "configure failed" in capfd.readouterr().err, "the failure must be logged"
    # the sidecar is repaired: the same node configures, activates and processes frames
    bad.with_suffix(".json").write_text(tiny_checkpoint.with_suffix(".json").read_text())
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    harness.rig.wait_for_node()
    harness.rig.publish_static()
    assert harness.good_frame_is_processed(T0)
    assert harness.fresh_status().level == DiagnosticStatus.OK


def test_an_exception_in_a_lifecycle_transition_is_logged_and_reported(session, tiny_checkpoint, monkeypatch, capfd):
    harness = Harness(session, tiny_checkpoint)
    node = harness.node

    def broken():
        raise RuntimeError("the device vanished")

    monkeypatch.setattr(node.predictor, "to_host", broken)
    assert node.trigger_deactivate() != TransitionCallbackReturn.SUCCESS
    status = harness.fresh_status()
    assert status.level == status.ERROR and "the device vanished" in status.message, status.message
    assert "deactivate failed" in capfd.readouterr().err


def test_sidecar_vit_kwargs_outside_the_allow_list_never_reach_timm(session, tiny_checkpoint, tmp_path, monkeypatch):
    import torch

    loads = []
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: loads.append(args) or {})
    payload = tmp_path / "payload.pt"
    payload.write_bytes(b"not even a pickle")
    bad = checkpoint_with_encoder(tmp_path, tiny_checkpoint, vit_name="vit_tiny_patch16_224",
                                  vit_weights=str(tmp_path / "vit.safetensors"),
                                  vit_kwargs={"depth": 1, "checkpoint_path": str(payload)})
    harness = Harness(session, bad)
    assert harness.node.status_message == "configure failed"
    assert "checkpoint_path" in harness.node.last["error"] and "not allowed" in harness.node.last["error"]
    assert not loads, f"torch.load was called on {loads}"


def test_depth_is_nan_below_the_opacity_threshold_and_opacity_is_published(session, tiny_checkpoint):
    harness = Harness(session, tiny_checkpoint, depth_min_opacity=0.0)
    opacity = []
    session.nodes[-1].create_subscription(Image, f"{NODE}/front/depth/opacity", opacity.append, RELIABLE)
    assert harness.good_frame_is_processed(T0)
    assert session.spin_until(lambda: bool(opacity), 5), "~/<cam>/depth/opacity must be published with depth"
    alpha = image_to_depth(opacity[-1])
    assert alpha.shape == image_to_depth(harness.depth[-1]).shape and (0 <= alpha).all() and (alpha <= 1.0001).all()
    threshold = float(np.median(alpha))  # half the rays below it: both cases occur in the next frame
    assert harness.node.set_parameters([Parameter("depth_min_opacity", value=threshold)])[0].successful
    count = len(opacity)
    assert harness.good_frame_is_processed(T0)  # the same frame again: the same opacity
    assert session.spin_until(lambda: len(opacity) > count, 5)
    depth, alpha = image_to_depth(harness.depth[-1]), image_to_depth(opacity[-1])
    invalid = alpha < threshold
    assert invalid.any() and (~invalid).any()
    assert np.isnan(depth[invalid]).all(), "REP-118: no depth where the ray hit nothing"
    assert np.isfinite(depth[~invalid]).all() and (depth[~invalid] > 0).all()
    result = harness.node.set_parameters([Parameter("depth_min_opacity", value=1.5)])[0]
    assert not result.successful, "an opacity threshold lies in [0, 1]"


@pytest.mark.parametrize("spoil,reason", [
    (lambda k: k.__setitem__(8, 0.0), "last row"),
    (lambda k: k.__setitem__(6, 0.5), "last row"),
    (lambda k: (k.__setitem__(0, 1e-30), k.__setitem__(4, 1e-30)), "focal length"),
    (lambda k: (k.__setitem__(0, 1e30), k.__setitem__(4, 1e30)), "focal length"),
    (lambda k: k.__setitem__(3, 5.0), "zero below the diagonal"),
])
def test_a_camera_with_an_invalid_k_is_left_out_and_the_others_processed(session, tiny_checkpoint, spoil, reason):
    harness = Harness(session, tiny_checkpoint)

    def spoil_left(camera, info, image):
        if camera == "left":
            k = list(info.k)
            spoil(k)
            info.k = k

    harness.rig.publish_frame(T0, spoil_left)
    assert session.spin_until(lambda: bool(harness.depth), 20), f"the others must be processed: {harness.node.last}"
    missing = harness.node.last["missing"]
    assert list(missing) == ["left"] and reason in missing["left"], missing
    assert harness.node.counters["errors"] == 0
    assert harness.good_frame_is_processed(T0 + 1_000_000_000)


@pytest.mark.parametrize("calls", [50, 150])
def test_simultaneous_scene_queries_are_all_answered_or_refused_as_busy(session, tiny_checkpoint, calls):
    from distillnerf_ros.nodes.perception import QUERY_BURST
    from distillnerf_ros.srv import QueryScene

    Harness(session, tiny_checkpoint)
    caller = session.node("callers")
    clients = [caller.create_client(QueryScene, f"{NODE}/query_scene") for _ in range(calls)]
    assert session.spin_until(lambda: all(c.service_is_ready() for c in clients), 30)
    futures = [c.call_async(QueryScene.Request(queries=["car"], threshold=0.5)) for c in clients]
    session.spin_until(lambda: all(f.done() for f in futures), 30)
    answered = [f.result() for f in futures if f.done()]
    assert len(answered) == calls, f"only {len(answered)} of {calls} calls were answered"
    assert all(not r.success and r.message for r in answered), "each answer says why it failed"
    busy = sum(r.message.startswith("busy:") for r in answered)
    assert busy <= max(0, calls - QUERY_BURST), f"{busy} refused as busy: at most the calls beyond the burst limit"


def non_optical_left(rig: SmallRig) -> None:
    """The rig's left camera published in a body-style frame (x forward, z up) instead of an optical one."""
    from distillnerf_core.geometry import make_transform

    rig.tf_static.publish(TFMessage(transforms=[
        transform_stamped("base_link", "left", stamp_from_us(0), make_transform(np.eye(3), [0.0, 0.0, 1.5]))]))


def test_a_camera_in_a_non_optical_frame_is_named_and_left_out(session, tiny_checkpoint):
    harness = Harness(session, tiny_checkpoint)
    non_optical_left(harness.rig)
    session.spin_until(lambda: False, 0.3)
    assert harness.good_frame_is_processed(T0), harness.node.last
    missing = harness.node.last["missing"]
    assert list(missing) == ["left"] and "REP-103" in missing["left"] and "optical" in missing["left"], missing
    status = harness.fresh_status()
    assert status.level == status.WARN and "left" in status.message, status.message


def test_rig_monitor_reports_a_camera_in_a_non_optical_frame(session):
    from distillnerf_ros.nodes.rig_monitor import RigMonitorNode

    rig = SmallRig(session)
    monitor = session.node("rig_monitor", RigMonitorNode, parameter_overrides=[
        Parameter(k, value=v) for k, v in {**rig.parameters(), "tf_wait": 0.5}.items()])
    statuses = []
    session.node("listener").create_subscription(
        DiagnosticArray, "/diagnostics", lambda m: statuses.extend(s for s in m.status if "rig" in s.name), 10)
    rig.wait_for_node()
    rig.publish_static()
    non_optical_left(rig)
    session.spin_until(lambda: False, 0.3)
    rig.publish_frame(T0)
    assert session.spin_until(lambda: bool(monitor.frames), 10)
    assert "REP-103" in monitor.frames[-1].missing.get("left", ""), monitor.frames[-1].missing
    count = len(statuses)
    assert session.spin_until(lambda: len(statuses) > count, 5)
    values = {kv.key: kv.value for kv in statuses[-1].values}
    assert "REP-103" in values.get("last_error/left", ""), values
    assert statuses[-1].level == DiagnosticStatus.WARN


def distorted_front(camera, info, image):
    """front: barrel distortion (k2 = -0.33, 33 % at its corners) and a left-to-right ramp 0, 4, 8, ..."""
    if camera == "front":
        info.distortion_model = "plumb_bob"
        info.d = [0.0, -0.33, 0.0, 0.0, 0.0]
        ramp = np.repeat((np.arange(image.width, dtype=np.uint8) * 4)[None, :, None], 3, axis=2)
        image.data = np.repeat(ramp, image.height, axis=0).tobytes()


@pytest.mark.parametrize("rectify", [True, False])
def test_distorted_camera_info_is_rectified_or_reported_as_unrectified(session, tiny_checkpoint, rectify, monkeypatch):
    harness = Harness(session, tiny_checkpoint, rectify=rectify)
    seen = []
    predict = harness.node.predictor.predict
    monkeypatch.setattr(harness.node.predictor, "predict",
                        lambda images, *args, **kwargs: seen.append([i.copy() for i in images]) or
                        predict(images, *args, **kwargs))
    harness.rig.publish_frame(T0, distorted_front)
    assert session.spin_until(lambda: bool(harness.depth), 20), harness.node.last
    status = harness.fresh_status()
    values = harness.values(status)
    front = seen[-1][0]
    if rectify:
        assert values["distortion/front"] == "rectified (plumb_bob)", values
        # the corner pixel sees the ray the distorted camera images 33 % closer to the centre: column ~10.6
        assert 35 < front[0, 0, 0] < 50 and front[24, 32, 0] == 128, front[[0, 24], [0, 32], 0]
        assert status.level == DiagnosticStatus.OK, status.message
    else:
        assert values["distortion/front"].startswith("distorted (plumb_bob"), values
        assert status.level == status.WARN and "without rectification" in status.message, status.message
        assert front[0, 0, 0] == 0, "not rectified: the image is used as it came"
    assert harness.good_frame_is_processed(T0 + 1_000_000_000)
