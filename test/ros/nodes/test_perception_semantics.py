"""perception_node's text queries over loopback DDS with models distilled (tiny config, two training steps on a
tiny synthetic dataroot) from the synthetic oracle teacher and from a tiny random CLIP loaded through
open_clip like a user's weights, and from the real ESPNetv2 segmenter (the shipped weights): `~/query_scene`
returns a labelled cloud, `semantic_queries` labels `~/occupancy` every frame, texts the oracle (or the
segmenter's closed vocabulary) does not know are refused with the names it knows."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from teacher_helpers import CLIP_NAME, save_tiny_clip
from train_helpers import VERSION, make_tiny_dataroot

from distillnerf_core.cli import cache_features
from distillnerf_core.training.config import load_train_config
from distillnerf_core.training.trainer import train
from distillnerf_ros.conversions.pointcloud import pointcloud2_to_points
from distillnerf_ros.nodes.dataroot_publisher import DatarootPublisher
from distillnerf_ros.nodes.perception import PerceptionNode
from distillnerf_ros.nodes.perception_diagnostics import diagnostic_values
from distillnerf_ros.srv import QueryScene
from ros_helpers import RosSession, wait_for_match

NODE = "/distillnerf_perception"
RELIABLE = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return make_tiny_dataroot(tmp_path_factory.mktemp("semantic_root"), frames=1)


def distilled(tmp_path_factory, root, cache_args: list[str], name: str):
    assert cache_features.main(["--dataroot", str(root), "--version", VERSION, *cache_args, "--name", name,
                                "--no-progress"]) == 0
    cfg = load_train_config("train_tiny")
    cfg.data.features = name
    run = tmp_path_factory.mktemp(f"{name}_run")
    train(cfg, str(root), VERSION, run, max_steps=2, threads=1, progress=False)
    return run / "model.safetensors"


@pytest.fixture(scope="module")
def oracle_checkpoint(tmp_path_factory, tiny_root):
    return distilled(tmp_path_factory, tiny_root, ["--teacher", "oracle"], "oracle")


@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory, tiny_root):
    config, weights = save_tiny_clip(tmp_path_factory.mktemp("clip"))
    return distilled(tmp_path_factory, tiny_root, ["--teacher", "clip", "--model", CLIP_NAME, "--weights",
                                                   str(weights), "--model-config", str(config), "--input-hw",
                                                   "28", "56"], "tinyclip")


@pytest.fixture(scope="module")
def segmenter_checkpoint(tmp_path_factory, tiny_root):
    return distilled(tmp_path_factory, tiny_root, ["--teacher", "segmenter", "--segmenter-width", "128"], "segmenter")


def start(session: RosSession, checkpoint, **parameters) -> PerceptionNode:
    overrides = {"input_reliability": "reliable", "device": "cpu", "tf_wait": 1.0,
                 "model_path": str(checkpoint)} | parameters
    node = session.node("perception", PerceptionNode,
                        parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
    assert node.status_message == "active", node.last["error"]
    return node


def play_keyframe(session: RosSession, clouds: list) -> None:
    session.node("sink").create_subscription(PointCloud2, f"{NODE}/occupancy", clouds.append, RELIABLE)
    publisher = session.node("keyframe", DatarootPublisher, dataroot=str(REPO / "data/nuscenes_sample"), version=None)
    wait_for_match(session, list(publisher.image_pubs.values()))
    publisher.publish_all()
    assert session.spin_until(lambda: bool(clouds), 60), "no ~/occupancy from the keyframe"


def call(session: RosSession, queries: list[str], threshold: float = 0.0) -> QueryScene.Response:
    client = session.node("client").create_client(QueryScene, f"{NODE}/query_scene")
    assert client.wait_for_service(timeout_sec=10), "~/query_scene is not offered"
    future = client.call_async(QueryScene.Request(queries=queries, threshold=threshold))
    assert session.spin_until(future.done, 20), "no answer from ~/query_scene"
    return future.result()


def test_query_service_labels_the_newest_frame(session, oracle_checkpoint):
    node = start(session, oracle_checkpoint)
    assert diagnostic_values(node)["teacher"].startswith("oracle"), "diagnostics name the teacher"
    early = call(session, ["car"])
    assert not early.success and "no frame with occupancy processed yet" in early.message

    clouds: list = []
    play_keyframe(session, clouds)
    response = call(session, ["car", "building"], threshold=0.0)
    assert response.success, response.message
    assert "teacher: oracle" in response.message
    assert [f.name for f in response.cloud.fields] == ["x", "y", "z", "rgb", "density", "label", "score"]
    points = pointcloud2_to_points(response.cloud)
    assert len(points) > 0 and set(np.unique(points["label"])) <= {0, 1}, "threshold 0 keeps only labelled voxels"
    assert ((points["score"] >= 0) & (points["score"] <= 1)).all()
    assert len(response.max_scores) == 2 and all(0 <= s <= 1 for s in response.max_scores)
    assert response.cloud.header == clouds[-1].header, "the answer is about the newest processed frame"

    strict = call(session, ["car", "building"], threshold=1.01)
    assert strict.success and strict.cloud.width == 0, "no voxel scores above 1"
    unknown = call(session, ["a red car"])
    assert not unknown.success and "knows only its class names" in unknown.message and "road" in unknown.message


def test_semantic_queries_label_every_frame(session, oracle_checkpoint):
    node = start(session, oracle_checkpoint, semantic_queries=["car", "road", "building"])
    clouds: list = []
    play_keyframe(session, clouds)
    assert [f.name for f in clouds[-1].fields] == ["x", "y", "z", "rgb", "density", "label", "score"]
    labels = pointcloud2_to_points(clouds[-1])["label"]
    assert labels.min() >= -1 and labels.max() <= 2, "labels index the queries, -1 = background"
    assert node.last["semantic_queries"].startswith("labelling every frame")


def test_semantic_queries_the_model_cannot_answer_are_reported(session, oracle_checkpoint):
    node = start(session, oracle_checkpoint, semantic_queries=["a red car"])
    clouds: list = []
    play_keyframe(session, clouds)
    assert [f.name for f in clouds[-1].fields] == ["x", "y", "z", "rgb", "density"], "unlabelled, not wrong"
    assert "not applied" in diagnostic_values(node)["semantic_queries"]


def test_query_service_with_a_clip_distilled_model_answers_any_text(session, clip_checkpoint):
    start(session, clip_checkpoint)
    clouds: list = []
    play_keyframe(session, clouds)
    response = call(session, ["a red car parked by the road", "a building"], threshold=0.0)
    assert response.success, response.message
    assert "teacher: clip" in response.message
    assert [f.name for f in response.cloud.fields][-2:] == ["label", "score"]
    assert len(response.max_scores) == 2


def test_query_service_with_a_segmenter_distilled_model_answers_its_closed_vocabulary(session, segmenter_checkpoint):
    node = start(session, segmenter_checkpoint)
    assert diagnostic_values(node)["teacher"].startswith("segmenter espnetv2_s2_cityscapes")
    clouds: list = []
    play_keyframe(session, clouds)
    response = call(session, ["vehicle", "road", "traffic_light"], threshold=0.0)
    assert response.success, response.message
    assert "teacher: segmenter" in response.message and "closed vocabulary" in response.message
    points = pointcloud2_to_points(response.cloud)
    assert set(np.unique(points["label"])) <= {0, 1, 2}
    assert ((points["score"] >= 0) & (points["score"] <= 1 + 1e-6)).all()
    assert len(response.max_scores) == 3 and all(0 <= s <= 1 + 1e-6 for s in response.max_scores)
    unknown = call(session, ["a red car"])
    assert not unknown.success and "closed vocabulary" in unknown.message
    assert "vehicle = car + truck + bus" in unknown.message and "sidewalk" in unknown.message
