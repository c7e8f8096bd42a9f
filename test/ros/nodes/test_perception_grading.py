"""The node grades itself, over real DDS on the real node: recon PSNR of graded frames on ~/debug/recon_psnr
(per camera too), LiDAR depth AbsRel / delta1 with `lidar_topic`, windowed medians in /diagnostics and a WARN
naming the cameras whose PSNR is below grading_psnr_warn_db; only every grading_every_n_frames-th frame
renders RGB. The bundled model on held-out synthetic frames (its domain) against the real nuScenes keyframe."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import REPO
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import Float64

from distillnerf_ros.conversions.nuscenes_messages import camera_messages, ego_pose_tf_message, lidar_message
from distillnerf_ros.nodes.dataroot_publisher import DatarootPublisher
from distillnerf_ros.nodes.perception import PerceptionNode
from ros_helpers import RosSession, SmallRig, wait_for_match

NODE = "/distillnerf_perception"
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
T0 = 1_700_000_000 * 1_000_000_000


class Grades:
    """Listens to the grading topics and the node's /diagnostics."""

    def __init__(self, session: RosSession, cameras: list[str]) -> None:
        self.session = session
        self.series: dict[str, list[float]] = {}
        listener = session.node("grades")
        topics = ["debug/recon_psnr", "debug/depth_abs_rel", "debug/depth_delta1",
                  *(f"{c.lower()}/debug/recon_psnr" for c in cameras)]
        for topic in topics:
            self.series[topic] = []
            listener.create_subscription(Float64, f"{NODE}/{topic}",
                                         lambda m, t=topic: self.series[t].append(m.data), RELIABLE)
        self.statuses: list[DiagnosticStatus] = []
        listener.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self.statuses.extend(
            s for s in m.status if s.name.startswith("distillnerf_perception")), 10)

    def wait(self, topic: str, count: int, timeout_s: float = 240.0) -> list[float]:
        assert self.session.spin_until(lambda: len(self.series[topic]) >= count, timeout_s), (
            f"{topic}: {len(self.series[topic])} of {count} messages")
        return self.series[topic]

    def status_where(self, condition, timeout_s: float = 30.0) -> DiagnosticStatus:
        seen = len(self.statuses)
        assert self.session.spin_until(lambda: any(condition(s) for s in self.statuses[seen:]), timeout_s), (
            f"no such status; last: {self.statuses[-1].message if self.statuses else None}")
        return next(s for s in self.statuses[seen:] if condition(s))


def values(status: DiagnosticStatus) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def start_node(session: RosSession, **parameters) -> PerceptionNode:
    # processing-time levels out of the way: on a loaded 2-core machine a frame can take longer than the ERROR level
    overrides = {"input_reliability": "reliable", "device": "cpu", "tf_wait": 2.0, "grading_every_n_frames": 1,
                 "lidar_topic": "/LIDAR_TOP", "processing_time_warn_ms": 1e6, "processing_time_error_ms": 1e6
                 } | parameters
    node = session.node("perception", PerceptionNode,
                        parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
    assert node.status_message == "active", node.last["error"]
    return node


class KeyframePublisher:
    """A nuScenes-format dataroot's keyframes, one at a time: TF, the LiDAR sweep on /LIDAR_TOP, the cameras."""

    def __init__(self, session: RosSession, dataroot) -> None:
        self.session = session
        self.source = session.node("keyframe", DatarootPublisher, dataroot=str(dataroot), version=None)
        self.lidar = self.source.create_publisher(PointCloud2, "/LIDAR_TOP", RELIABLE)
        keyframes = [r for r in self.source.records if r.is_key_frame]
        self.samples = list(dict.fromkeys(r.sample_token for r in keyframes))
        self.records = {s: [r for r in keyframes if r.sample_token == s] for s in self.samples}

    def wait_for_node(self) -> None:
        wait_for_match(self.session, [*self.source.image_pubs.values(), *self.source.info_pubs.values(), self.lidar],
                       20)

    def publish(self, sample: str) -> None:
        records = self.records[sample]
        for record in records:
            self.source.tf_pub.publish(ego_pose_tf_message(record))
        for record in records:
            if record.modality == "lidar":
                self.lidar.publish(lidar_message(record))
        for record in records:
            if record.modality == "camera":
                image, info = camera_messages(record)
                self.source.info_pubs[record.channel].publish(info)
                self.source.image_pubs[record.channel].publish(image)


@pytest.fixture(scope="module")
def synthetic_dataroot(tmp_path_factory):
    """Two held-out synthetic keyframes (seed 999, the bundled model's held-out seed) at its rig, 456x256."""
    from distillnerf_core.data.synthetic.export import write_dataroot

    root = tmp_path_factory.mktemp("synthetic")
    write_dataroot(root, scenes=1, frames=2, seed=999, width=456, height=256, progress=False)
    return root


def eval_abs_rel(dataroot) -> list[float]:
    """distillnerf-eval's per-sample LiDAR AbsRel of the bundled model on every keyframe of the dataroot."""
    from distillnerf_core.data.datasets import DataConfig, make_dataset
    from distillnerf_core.training.checkpoints import load_checkpoint
    from distillnerf_core.training.eval import evaluate
    from distillnerf_ros.nodes.perception_parameters import bundled_model_path

    model = load_checkpoint(bundled_model_path(), "cpu")
    render_hw = model.renderer.render_hw(tuple(model.config.image_hw))
    dataset = make_dataset(str(dataroot), "v1.0-synthetic", model.config.image_hw, DataConfig(), render_hw)
    return [evaluate(model, dataset, [i], progress=False)["metrics"]["abs_rel"] for i in range(len(dataset))]


@pytest.mark.slow
def test_synthetic_frames_grade_high_without_warn_and_lidar_abs_rel_matches_eval(session, synthetic_dataroot):
    """In the model's domain: recon PSNR above the threshold on every camera, no grading WARN, and the LiDAR
    AbsRel of each frame within 5% (relative) of distillnerf-eval's on the same keyframe (measured: 1.7% and 1.7%
    apart, 0.128 / 0.130 and 0.085 / 0.086). Not equal: the node decodes each 456x256 JPEG at libjpeg's 1/2 DCT
    scale where the dataset resizes the full image with PIL, so the model sees slightly other pixels; the
    projection, the min-pooling and the metric are the same code."""
    node = start_node(session, model_path="")
    grades = Grades(session, list(node.get_parameter("cameras").value))
    keyframes = KeyframePublisher(session, synthetic_dataroot)
    keyframes.wait_for_node()
    for count, sample in enumerate(keyframes.samples, start=1):
        keyframes.publish(sample)
        grades.wait("debug/depth_abs_rel", count)
    psnr = grades.series["debug/recon_psnr"]
    threshold = node.get_parameter("grading_psnr_warn_db").value
    assert len(psnr) == 2 and min(psnr) > threshold, f"synthetic recon PSNR {psnr} (threshold {threshold})"
    assert len(grades.series["cam_front/debug/recon_psnr"]) == 2
    status = grades.status_where(lambda s: values(s).get("grading/depth_graded") == "2")
    assert "recon PSNR" not in status.message, status.message
    assert float(values(status)["recon_psnr_median"]) > threshold
    expected = eval_abs_rel(synthetic_dataroot)
    measured = grades.series["debug/depth_abs_rel"]
    assert np.allclose(measured, expected, rtol=0.05), f"node AbsRel {measured}, distillnerf-eval {expected}"
    assert all(0.5 < d <= 1.0 for d in grades.series["debug/depth_delta1"])


@pytest.mark.slow
def test_the_real_keyframe_grades_below_a_threshold_and_warns_naming_the_cameras(session):
    """The real nuScenes keyframe (published as the other keyframe tests publish it, plus its LiDAR sweep) with
    grading_psnr_warn_db above what the synthetic-trained bundled model renders it at (its default does not
    separate this keyframe from the model's domain: docs/node.md): /diagnostics WARNs with the recon PSNR and the
    cameras below the threshold, whose per-camera values are below it; the depth is graded too."""
    node = start_node(session, model_path="", grading_psnr_warn_db=30.0)
    grades = Grades(session, list(node.get_parameter("cameras").value))
    keyframes = KeyframePublisher(session, REPO / "data" / "nuscenes_sample")
    keyframes.wait_for_node()
    keyframes.publish(keyframes.samples[0])
    psnr = grades.wait("debug/recon_psnr", 1)[0]
    threshold = node.get_parameter("grading_psnr_warn_db").value
    assert psnr < threshold, f"real keyframe recon PSNR {psnr} dB is not below {threshold}"
    status = grades.status_where(lambda s: "recon PSNR" in s.message)
    assert status.level == DiagnosticStatus.WARN, status.message
    low = [key.split("/")[1] for key, value in values(status).items()
           if key.startswith("recon_psnr/") and float(value) < threshold]
    assert low and all(camera in status.message for camera in low), (status.message, values(status))
    abs_rel = grades.wait("debug/depth_abs_rel", 1)[0]
    assert math.isfinite(abs_rel) and abs_rel > 0


def test_only_every_nth_frame_is_graded_and_zero_turns_grading_off(session, tiny_checkpoint):
    """grading_every_n_frames: 2 renders RGB for 2 of 4 frames (only their PSNR is published, no ~/<cam>/rendered
    without publish_rendered), 0 grades none and drops the windows (no WARN left from earlier grades); the frames
    themselves are all processed."""
    rig = SmallRig(session)
    node = session.node("perception", PerceptionNode, parameter_overrides=[Parameter(k, value=v) for k, v in {
        "device": "cpu", "tf_wait": 0.5, "model_path": str(tiny_checkpoint), "grading_every_n_frames": 2,
        **rig.parameters()}.items()])
    rgb_flags = []
    predict = node.predictor.predict
    node.predictor.predict = lambda *a, **k: rgb_flags.append(k["rgb"]) or predict(*a, **k)
    grades = Grades(session, rig.cameras)
    depth = []
    session.node("depth").create_subscription(Image, f"{NODE}/front/depth", depth.append, RELIABLE)
    rig.wait_for_node()
    rig.publish_static()
    for index in range(4):
        rig.publish_frame(T0 + index * 100_000_000)
        assert session.spin_until(lambda i=index: node.counters["processed"] > i, 60), node.counters
    grades.wait("debug/recon_psnr", 2)
    assert rgb_flags == [False, True, False, True]
    assert "recon PSNR" in (node.grading.warning() or ""), "a random model's recon PSNR is below the threshold"
    assert len(grades.wait("front/debug/recon_psnr", 2)) == 2
    assert node.set_parameters([Parameter("grading_every_n_frames", value=0)])[0].successful
    rig.publish_frame(T0 + 500_000_000)
    assert session.spin_until(lambda: node.counters["processed"] > 4, 60), node.counters
    assert rgb_flags[-1] is False and len(grades.series["debug/recon_psnr"]) == 2
    # a random model is out of any domain: its grades WARNed; turned off, no WARN stays from them
    assert node.grading.warning() is None
    status = grades.status_where(lambda s: values(s).get("grading/frames_seen") == "5")
    assert values(status)["recon_psnr_median"] == "None" and "recon PSNR" not in status.message, status.message


def test_a_malformed_lidar_sweep_is_refused_counted_and_grading_goes_on(session, tiny_checkpoint):
    """A PointCloud2 without x, y, z on lidar_topic is refused and counted (grading/lidar_rejected, the reason in
    grading/lidar); the node keeps running, and the next good sweep grades the next frame's depth."""
    from std_msgs.msg import Header

    from distillnerf_ros.conversions.nuscenes_messages import stamp_from_us
    from distillnerf_ros.conversions.pointcloud import make_points, points_to_pointcloud2

    rig = SmallRig(session)
    node = session.node("perception", PerceptionNode, parameter_overrides=[Parameter(k, value=v) for k, v in {
        "device": "cpu", "tf_wait": 0.5, "model_path": str(tiny_checkpoint), "grading_every_n_frames": 1,
        "lidar_topic": "/small_rig/lidar", **rig.parameters()}.items()])
    grades = Grades(session, rig.cameras)
    lidar = rig.source.create_publisher(PointCloud2, "/small_rig/lidar", RELIABLE)
    rig.wait_for_node()
    wait_for_match(session, [lidar])
    rig.publish_static()
    header = Header(stamp=stamp_from_us(T0 // 1000), frame_id="base_link")
    bad = points_to_pointcloud2(make_points(np.zeros((10, 3), np.float32)), header)
    bad.fields = [f for f in bad.fields if f.name not in ("x", "y")]
    lidar.publish(bad)
    assert session.spin_until(lambda: node.grading.counts["lidar_rejected"] == 1, 30), node.grading.counts
    status = grades.status_where(lambda s: values(s).get("grading/lidar_rejected") == "1")
    assert "sweep rejected" in values(status)["grading/lidar"], values(status)
    angles = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    ring = np.stack([8 * np.cos(angles), 8 * np.sin(angles), np.full(angles.size, 1.5)], axis=1)  # a wall 8 m away
    lidar.publish(points_to_pointcloud2(make_points(ring.astype(np.float32)), header))
    rig.publish_frame(T0)
    abs_rel = grades.wait("debug/depth_abs_rel", 1, 60)[0]
    assert math.isfinite(abs_rel) and node.grading.counts["depth_graded"] == 1
    assert node.counters["errors"] == 0 and node.status_message == "active"
