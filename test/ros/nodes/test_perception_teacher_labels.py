"""perception_node with `semantic_source: teacher` over loopback DDS: the bundled model (whose distilled
oracle features mean nothing on a real rig) on the real nuScenes keyframe, labels from the live ESPNetv2
segmenter. The segmenter stays off the per-frame path until `~/query_scene` is called; the reply says where
the labels come from; the vocabulary is closed; `semantic_queries` labels every frame's `~/occupancy`."""

from __future__ import annotations

import numpy as np
from rcl_interfaces.srv import GetParameters
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from test_perception_semantics import NODE, call, play_keyframe, start

from distillnerf_core.teachers.segmenter import CLASS_NAMES
from distillnerf_ros.conversions.pointcloud import pointcloud2_to_points
from distillnerf_ros.nodes.perception_diagnostics import diagnostic_values
from distillnerf_ros.nodes.perception_parameters import bundled_model_path
from distillnerf_ros.srv import QueryScene

WIDTH = 256  # the segmenter's input width: small for CI's CPU (the default is 1024)


def labelling_call_and_a_parameter_read(session) -> QueryScene.Response:
    """A call that runs the segmenter on the newest frame and, 0.1 s later, a read of the node's parameters (a
    service of the node's default callback group, like /diagnostics, TF and the camera callbacks); asserts that
    the read is answered while the call is still being labelled: the executor thread is not held by the
    segmenter."""
    client = session.node("client").create_client(QueryScene, f"{NODE}/query_scene")
    reader = session.node("reader").create_client(GetParameters, f"{NODE}/get_parameters")
    assert client.wait_for_service(timeout_sec=10), "~/query_scene is not offered"
    assert reader.wait_for_service(timeout_sec=10), "~/get_parameters is not offered"
    labelling = client.call_async(QueryScene.Request(queries=["vehicle", "road", "building", "vegetation"]))
    session.spin_until(lambda: False, 0.1)  # the node takes the call and starts the segmenter
    read = reader.call_async(GetParameters.Request(names=["semantic_source"]))
    assert session.spin_until(read.done, 20), "no answer to the parameter read"
    assert not labelling.done(), "the parameter read waited for the segmenter: the executor thread was held"
    assert read.result().values[0].string_value == "teacher"
    assert session.spin_until(labelling.done, 30), "no answer to the labelling call"
    return labelling.result()


def test_teacher_source_answers_queries_from_the_live_segmenter(session):
    node = start(session, bundled_model_path(), semantic_source="teacher", semantic_teacher_width=WIDTH)
    source = diagnostic_values(node)["semantic_source"]
    assert source.startswith("teacher: labels from the live segmenter ESPNetv2 Cityscapes") and f"{WIDTH} px" in source
    assert diagnostic_values(node)["query_domain"].startswith("labels from the live segmenter")
    early = call(session, ["car"])
    assert not early.success and "no frame with occupancy processed yet" in early.message

    clouds: list = []
    play_keyframe(session, clouds)
    assert [f.name for f in clouds[-1].fields] == ["x", "y", "z", "rgb", "density"], "no labels per frame"
    prediction, _ = node.queries._latest
    assert prediction.teacher_frame.classes is None, "the segmenter has not run: nothing asked for labels"
    assert min(image.shape[1] for image in prediction.teacher_frame.images) >= WIDTH, "decoded for the segmenter"

    response = labelling_call_and_a_parameter_read(session)
    assert response.success, response.message
    assert "labels from the live segmenter" in response.message and "closed vocabulary" in response.message
    assert "teacher: oracle" not in response.message, "the labels are not the distilled model's"
    assert response.cloud.header == clouds[-1].header, "the answer is about the newest processed frame"
    points = pointcloud2_to_points(response.cloud)
    labels = points["label"]
    assert len(points) > 0 and set(np.unique(labels)) <= {0, 1, 2, 3}
    assert (labels == 1).sum() > 20, "the real keyframe's road is labelled"
    road_z, tall_z = points["z"][labels == 1], points["z"][(labels == 2) | (labels == 3)]
    assert np.median(road_z) + 1.0 < np.median(tall_z), "road voxels lie below building / vegetation voxels"
    assert len(response.max_scores) == 4 and all(0 <= s <= 1 for s in response.max_scores)
    classes = prediction.teacher_frame.classes
    assert classes is not None and 0 < int(classes.seen.sum()) < len(classes.seen), "hidden voxels are unlabelled"

    again = call(session, ["road"], threshold=0.5)
    assert again.success and prediction.teacher_frame.classes is classes, "one segmenter run per frame"
    assert diagnostic_values(node)["query_domain"].startswith("labels from the live segmenter"), "no stale verdict"
    unknown = call(session, ["a red car"])
    assert not unknown.success and "closed vocabulary" in unknown.message and "road" in unknown.message


def test_teacher_source_with_semantic_queries_labels_every_frame(session):
    node = start(session, bundled_model_path(), semantic_source="teacher", semantic_teacher_width=WIDTH,
                 semantic_queries=["road", "vehicle", "sky"])
    clouds: list = []
    play_keyframe(session, clouds)
    assert [f.name for f in clouds[-1].fields] == ["x", "y", "z", "rgb", "density", "label", "score"]
    labels = pointcloud2_to_points(clouds[-1])["label"]
    assert labels.min() >= -1 and labels.max() <= 2 and (labels == 0).any()
    assert node.last["semantic_queries"].startswith("labelling every frame")
    assert len(CLASS_NAMES) == len(node.queries._latest[0].teacher_frame.classes.probabilities[0])


def test_a_call_being_labelled_when_the_node_cleans_up_is_answered_and_the_service_goes(session):
    node = start(session, bundled_model_path(), semantic_source="teacher", semantic_teacher_width=WIDTH)
    play_keyframe(session, [])
    client = session.node("client").create_client(QueryScene, f"{NODE}/query_scene")
    assert client.wait_for_service(timeout_sec=10), "~/query_scene is not offered"
    labelling = client.call_async(QueryScene.Request(queries=["road"]))
    session.spin_until(lambda: False, 0.1)  # the node takes the call and starts the segmenter
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS, "the segmenter finished before the model went"
    assert session.spin_until(labelling.done, 30), "the call in flight at cleanup was never answered"
    answer = labelling.result()
    assert answer.success or "releasing its model" in answer.message, answer.message
    assert session.spin_until(lambda: not client.service_is_ready(), 20), "the service must go once answered"
    assert node.status_message == "unconfigured" and int(diagnostic_values(node)["callback_errors"]) == 0
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert session.spin_until(client.service_is_ready, 20)
    again = client.call_async(QueryScene.Request(queries=["road"]))
    assert session.spin_until(again.done, 30) and "no frame with occupancy processed yet" in again.result().message


def test_an_unknown_semantic_source_or_missing_segmenter_weights_fail_configure(session, tmp_path):
    from distillnerf_ros.nodes.parameter_schema import ParameterValueError
    from distillnerf_ros.nodes.perception import PerceptionNode

    try:
        session.node("perception", PerceptionNode,
                     parameter_overrides=[Parameter("semantic_source", value="lidar")])
        raise AssertionError("semantic_source lidar was accepted")
    except ParameterValueError as error:
        assert "semantic_source" in str(error) and "distilled | teacher" in str(error)
    node = session.node("perception_weights", PerceptionNode, parameter_overrides=[
        Parameter("semantic_source", value="teacher"), Parameter("device", value="cpu"),
        Parameter("semantic_teacher_weights", value=str(tmp_path / "missing.safetensors"))])
    assert node.status_message == "configure failed"
    assert "segmenter weights not found" in diagnostic_values(node)["error"]
