"""perception_node over real rclpy / loopback DDS: outputs on the real keyframe, the query service, parameter
validation, and bad input (the node keeps running and says why)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO
from diagnostic_msgs.msg import DiagnosticArray
from nav_msgs.msg import OccupancyGrid
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Float64, Header
from tf2_msgs.msg import TFMessage

from distillnerf_core.geometry import make_transform, quaternion_to_matrix
from distillnerf_ros.conversions.camera_info import CameraIntrinsics, intrinsics_to_camera_info
from distillnerf_ros.conversions.images import image_to_depth, rgb_to_image
from distillnerf_ros.conversions.nuscenes_messages import stamp_from_us, transform_stamped
from distillnerf_ros.conversions.pointcloud import pointcloud2_to_points
from distillnerf_ros.input.rig_input import TF_STATIC_QOS
from distillnerf_ros.nodes.dataroot_publisher import DatarootPublisher
from distillnerf_ros.nodes.perception import PerceptionNode
from distillnerf_ros.srv import QueryScene
from ros_helpers import RosSession, wait_for_match

NODE = "/distillnerf_perception"
RELIABLE = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def start_node(session: RosSession, **parameters) -> PerceptionNode:
    overrides = {"input_reliability": "reliable", "device": "cpu", "tf_wait": 1.0} | parameters
    return session.node("perception", PerceptionNode,
                        parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])


def listen(session: RosSession, node, topics: dict[str, type]) -> dict:
    received = {}
    for topic, kind in topics.items():
        qos = LATCHED if kind is OccupancyGrid else RELIABLE
        node.create_subscription(kind, topic, lambda m, t=topic: received.setdefault(t, m), qos)
    return received


def test_outputs_on_the_real_keyframe(session, tiny_checkpoint):
    node = start_node(session, model_path=str(tiny_checkpoint))
    assert node.status_message == "active", node.last["error"]
    sink = session.node("sink")
    topics = {f"{NODE}/occupancy": PointCloud2, f"{NODE}/occupancy_grid": OccupancyGrid,
              f"{NODE}/cam_front/depth": Image, f"{NODE}/cam_front/depth/camera_info": CameraInfo,
              f"{NODE}/cam_back_left/depth": Image, f"{NODE}/debug/processing_time_ms": Float64,
              f"{NODE}/debug/pipeline_latency_ms": Float64}
    received = listen(session, sink, topics)
    publisher = session.node("keyframe", DatarootPublisher, dataroot=str(REPO / "data/nuscenes_sample"), version=None)
    wait_for_match(session, list(publisher.image_pubs.values()))
    publisher.publish_all()
    assert session.spin_until(lambda: len(received) == len(topics), 60), (
        f"missing outputs {sorted(set(topics) - set(received))}; node: {node.counters} {node.last}")

    trigger = stamp_from_us(1532402927647423)  # CAM_BACK_LEFT, the last camera to fire
    cloud = received[f"{NODE}/occupancy"]
    assert (cloud.header.frame_id, cloud.header.stamp) == ("base_link", trigger)
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "rgb", "density"]
    points = pointcloud2_to_points(cloud)
    inside = (np.abs(points["x"]) <= 40) & (np.abs(points["y"]) <= 40) & (points["z"] >= -5) & (points["z"] <= 3)
    assert inside.all() and (points["density"] > 0.1).all(), "occupied voxels must lie in the grid, above threshold"
    grid = received[f"{NODE}/occupancy_grid"]
    assert (grid.header.frame_id, grid.header.stamp) == ("base_link", trigger)
    assert (grid.info.width, grid.info.height, grid.info.resolution) == (160, 160, 0.5)
    assert (grid.info.origin.position.x, grid.info.origin.position.y) == (-40.0, -40.0)
    cells = np.asarray(grid.data)
    assert cells.min() >= -1 and cells.max() <= 100
    depth_msg = received[f"{NODE}/cam_front/depth"]
    info = received[f"{NODE}/cam_front/depth/camera_info"]
    assert depth_msg.encoding == "32FC1" and depth_msg.header.frame_id == "cam_front"
    assert depth_msg.header.stamp == trigger, "depth must carry the trigger stamp like every output"
    depth = image_to_depth(depth_msg)
    assert depth.shape == (info.height, info.width) and np.nanmin(depth) > 0
    assert received[f"{NODE}/debug/processing_time_ms"].data > 0
    assert node.counters["processed"] == 1 and node.counters["errors"] == 0


def call(session: RosSession, client, queries: list[str], threshold: float = 0.5):
    assert client.wait_for_service(timeout_sec=10), "~/query_scene is not offered"
    future = client.call_async(QueryScene.Request(queries=queries, threshold=threshold))
    assert session.spin_until(future.done, 10), "no answer from ~/query_scene"
    return future.result()


@pytest.mark.parametrize("queries,expected", [
    ([], "no queries given"),
    (["car"] * 1000, "1000 queries exceed the limit"),
    (["x" * 10_000], "10000 characters, more than the limit"),
    (["   "], "query 0 is empty"),
    (["voiture garée", "歩行者"], "not distilled from a foundation model"),
])
def test_query_service_bounds_input_and_explains_failures(session, tiny_checkpoint, queries, expected):
    start_node(session, model_path=str(tiny_checkpoint))
    client = session.node("client").create_client(QueryScene, f"{NODE}/query_scene")
    response = call(session, client, queries)
    assert not response.success and expected in response.message, response.message


def test_parameter_changes_are_validated(session, tiny_checkpoint):
    node = start_node(session, model_path=str(tiny_checkpoint))
    result = node.set_parameters([Parameter("processing_time_warn_ms", value=9000.0)])[0]
    assert not result.successful and "must not exceed processing_time_error_ms" in result.reason
    result = node.set_parameters([Parameter("semantic_queries", value=["q"] * 100)])[0]
    assert not result.successful and "exceed the limit" in result.reason
    result = node.set_parameters([Parameter("device", value="cuda")])[0]
    assert not result.successful, "device is read-only at run time"
    result = node.set_parameters([Parameter("occupancy_threshold", value=-1.0)])[0]
    assert not result.successful, "a negative threshold is outside the declared range"
    assert node.set_parameters([Parameter("publish_rendered", value=True)])[0].successful


def diagnostics_of(session: RosSession, node: PerceptionNode) -> DiagnosticArray:
    received = []
    session.node("diag_listener").create_subscription(DiagnosticArray, "/diagnostics", received.append, 10)
    assert session.spin_until(lambda: any(s.name.startswith(node.get_name()) for m in received for s in m.status), 5)
    return next(s for m in reversed(received) for s in m.status if s.name.startswith(node.get_name()))


def corrupt(path):
    path.write_bytes(b"garbage" * 100)
    return path


@pytest.mark.parametrize("make_bad,expected", [
    (lambda path: path.parent / "missing.safetensors", "not found"),
    (corrupt, "checksum mismatch"),
])
def test_bad_model_path_fails_configure_cleanly(session, tiny_checkpoint, tmp_path, make_bad, expected):
    copy = tmp_path / "model.safetensors"
    copy.write_bytes(tiny_checkpoint.read_bytes())
    (tmp_path / "model.json").write_text(tiny_checkpoint.with_suffix(".json").read_text())
    node = start_node(session, model_path=str(make_bad(copy)))
    assert node.status_message == "configure failed" and expected in node.last["error"], node.last
    status = diagnostics_of(session, node)
    assert status.level == status.ERROR and any(expected in kv.value for kv in status.values)


@pytest.mark.parametrize("ament_prefix_path", [None, "/nonexistent/ros/prefix"])
def test_empty_model_path_loads_the_bundled_model(session, monkeypatch, ament_prefix_path):
    # pip-only setups have no ament index at all; a sourced workspace may not hold this package
    if ament_prefix_path is None:
        monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    else:
        monkeypatch.setenv("AMENT_PREFIX_PATH", ament_prefix_path)
    node = start_node(session, model_path="")
    assert node.status_message == "active", node.last
    assert node.model_path == REPO / "models" / "default" / "model.safetensors"
    assert node.predictor.model.config.name == "small"


def test_cuda_requested_but_absent(session, tiny_checkpoint):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    strict = start_node(session, model_path=str(tiny_checkpoint), device="cuda", device_fallback=False)
    assert strict.status_message == "configure failed" and "CUDA is not available" in strict.last["error"]
    fallback = session.node("perception_fallback", PerceptionNode, parameter_overrides=[
        Parameter("model_path", value=str(tiny_checkpoint)), Parameter("device", value="cuda")])
    assert fallback.status_message == "active" and str(fallback.predictor.device) == "cpu"
    assert "running on the CPU" in fallback.last["error"]


def test_bad_camera_input_is_reported_and_the_node_keeps_running(session, tiny_checkpoint):
    cameras = ["good", "badenc", "badsize", "naninfo", "notf", "noinfo", "stuck"]
    node = start_node(session, model_path=str(tiny_checkpoint), cameras=cameras, compressed=False,
                      image_topic_format="/bad/{camera}/image", camera_info_topic_format="/bad/{camera}/info",
                      fixed_frame="none", tf_wait=0.5)
    sink = session.node("sink")
    received = listen(session, sink, {f"{NODE}/good/depth": Image})
    source = session.node("source")
    images = {c: source.create_publisher(Image, f"/bad/{c}/image", RELIABLE) for c in cameras}
    infos = {c: source.create_publisher(CameraInfo, f"/bad/{c}/info", RELIABLE) for c in cameras}
    tf_static = source.create_publisher(TFMessage, "/tf_static", TF_STATIC_QOS)
    wait_for_match(session, [*images.values(), *infos.values(), tf_static])
    optical = quaternion_to_matrix([0.5, -0.5, 0.5, -0.5])
    tf_static.publish(TFMessage(transforms=[
        transform_stamped("base_link", c, stamp_from_us(0), make_transform(optical, [1.0, 0.0, 1.5]))
        for c in cameras if c != "notf"]))
    K = np.array([[40.0, 0, 32], [0, 40.0, 24], [0, 0, 1]])
    stamp = stamp_from_us(1_700_000_000_000_000)
    for camera in cameras:
        header = Header(stamp=stamp, frame_id=camera)
        info = intrinsics_to_camera_info(CameraIntrinsics(K, 64 if camera != "badsize" else 128, 48), header)
        if camera == "naninfo":
            info.k[0] = float("nan")
        if camera != "noinfo":
            infos[camera].publish(info)
    session.spin_until(lambda: False, 0.3)
    old_stamp = stamp_from_us(1_700_000_000_000_000 - 5_000_000)
    for camera in cameras:
        image = rgb_to_image(np.full((48, 64, 3), 90, np.uint8),
                             Header(stamp=old_stamp if camera == "stuck" else stamp, frame_id=camera))
        if camera == "badenc":
            image.encoding = "yuv422"
        images[camera].publish(image)
    assert session.spin_until(lambda: bool(received), 30), f"no depth for the good camera: {node.last}"
    missing = node.last["missing"]
    assert "yuv422" in missing["badenc"]
    assert "128x48 but the image is 64x48" in missing["badsize"]
    assert "non-finite K" in missing["naninfo"]
    assert "TF not available" in missing["notf"] and "'notf' has not been received" in missing["notf"]
    assert "no CameraInfo received" in missing["noinfo"]
    assert "5000.0 ms older than the trigger" in missing["stuck"]
    status = diagnostics_of(session, node)
    assert status.level == status.WARN and "missing cameras" in status.message
    assert node.status_message == "active" and node.counters["errors"] == 0


def test_lifecycle_creates_enables_and_destroys_the_outputs(session, tiny_checkpoint):
    node = start_node(session, model_path=str(tiny_checkpoint), autostart=False)
    topic = f"{NODE}/occupancy"
    assert node.status_message == "unconfigured" and node.outputs is None
    assert diagnostics_of(session, node).message == "unconfigured", "diagnostics report in every state"
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert session.spin_until(lambda: bool(node.get_publishers_info_by_topic(topic)), 5)
    assert not any(p.is_activated for p in node.outputs.all()), "configured: publishers exist but stay silent"
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert all(p.is_activated for p in node.outputs.all()) and node.worker.running
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert not any(p.is_activated for p in node.outputs.all()) and not node.worker.running and node.rig is None
    assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert node.outputs is None and node.predictor is None
    assert session.spin_until(lambda: not node.get_publishers_info_by_topic(topic), 5), "cleanup destroys them"


def test_compile_parameter_compiles_on_configure_then_processes_frames(session, tiny_checkpoint):
    """compile: the static stages compile on a warm-up frame started at configure; the first real 6-camera frame
    compiles nothing more, its outputs arrive, and /diagnostics says no stage fell back to eager."""
    from torch._dynamo.utils import counters

    from distillnerf_ros.nodes.perception_diagnostics import diagnostic_values

    node = start_node(session, model_path=str(tiny_checkpoint), compile=True)
    assert node.status_message == "active", node.last["error"]
    # the warm-up frame runs off the executor thread ("compiling" in /diagnostics meanwhile)
    assert session.spin_until(lambda: "compile" not in node.degraded, 280), "the warm-up frame never ended"
    assert diagnostic_values(node)["compile_errors"] == "none"
    graphs = counters["stats"]["unique_graphs"]
    received = listen(session, session.node("sink"), {f"{NODE}/occupancy": PointCloud2})
    publisher = session.node("keyframe", DatarootPublisher, dataroot=str(REPO / "data/nuscenes_sample"), version=None)
    wait_for_match(session, list(publisher.image_pubs.values()))
    publisher.publish_all()
    # processed is counted after the outputs are published: wait for both
    assert session.spin_until(lambda: bool(received) and node.counters["processed"] == 1, 60), (
        f"no ~/occupancy; node: {node.counters} {node.last}")
    assert counters["stats"]["unique_graphs"] == graphs, "the first frame compiled again after the warm-up"
    assert node.counters["processed"] == 1 and node.counters["errors"] == 0


def test_no_negative_latency_when_the_clock_is_behind_the_images(session, tiny_checkpoint):
    """use_sim_time with no /clock yet (time 0) and images stamped in 2018: the frame is processed, but neither
    the input delay nor the pipeline latency is published (they would be negative); clock_behind_stamp counts
    them."""
    node = start_node(session, model_path=str(tiny_checkpoint), use_sim_time=True)
    assert node.status_message == "active", node.last["error"]
    latencies = []
    received = listen(session, session.node("sink"), {f"{NODE}/occupancy": PointCloud2})
    for series in ("pipeline_latency_ms", "input_delay_ms"):
        session.node(f"sink_{series}").create_subscription(Float64, f"{NODE}/debug/{series}", latencies.append,
                                                           RELIABLE)
    publisher = session.node("keyframe", DatarootPublisher, dataroot=str(REPO / "data/nuscenes_sample"), version=None)
    wait_for_match(session, list(publisher.image_pubs.values()))
    publisher.publish_all()
    assert session.spin_until(lambda: bool(received) and node.counters["processed"] == 1, 60), (
        f"no ~/occupancy; node: {node.counters} {node.last}")
    session.spin_until(lambda: False, 0.5)  # a latency message would have arrived by now
    assert latencies == [], f"negative latency published: {[m.data for m in latencies]}"
    assert node.counters["processed"] == 1
    assert node.counters["clock_behind_stamp"] == 2, "one per since-stamp series: input delay and latency"
