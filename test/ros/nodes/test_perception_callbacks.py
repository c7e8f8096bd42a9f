"""Every callback of every node is guarded: an exception in a timer, subscription or service callback is logged,
counted, reported in /diagnostics (and a service answers success=false with the reason), the node keeps
running. Model sidecars are checked against a schema at configure (bad teacher blocks name the key), a
CLIP-distilled model without its CLIP weights answers queries with the reason. Degraded states (CPU
fallback, semantic_queries not applied, compiling, shut down) are WARN with their reason. Over DDS with the
real node; docs/reliability.md maps each behaviour to its test."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
from conftest import REPO
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from teacher_helpers import CLIP_CONFIG, CLIP_NAME, save_tiny_clip
from test_perception_robustness import NODE, T0, Harness

from distillnerf_core.model.distillnerf import DistillNeRFModel, ModelConfig
from distillnerf_core.training.checkpoints import save_checkpoint
from distillnerf_ros.nodes.guarded import is_guarded
from distillnerf_ros.srv import QueryScene

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def unguarded_callbacks(node) -> list[str]:
    """Every timer, subscription and service of `node` whose callback is not wrapped by the guard."""
    entities = [("timer", t, getattr(t.callback, "__name__", "?")) for t in node.timers]
    entities += [("subscription", s, s.topic_name) for s in node.subscriptions]
    entities += [("service", s, s.srv_name) for s in node.services]
    return [f"{kind} {name}" for kind, entity, name in entities
            if entity.callback is not None and not is_guarded(entity.callback)]


def call(session, node, queries, threshold=0.5, timeout_s=30.0) -> QueryScene.Response:
    client = node.create_client(QueryScene, f"{NODE}/query_scene")
    assert session.spin_until(client.service_is_ready, 20), "~/query_scene not available"
    future = client.call_async(QueryScene.Request(queries=queries, threshold=threshold))
    assert session.spin_until(future.done, timeout_s), "the call was never answered"
    node.destroy_client(client)
    return future.result()


def test_every_callback_of_every_node_is_guarded(session, tiny_checkpoint, tmp_path):
    from train_helpers import make_tiny_dataroot

    from distillnerf_ros.nodes.dataroot_publisher import DatarootPublisher
    from distillnerf_ros.nodes.rig_monitor import RigMonitorNode

    harness = Harness(session, tiny_checkpoint)
    assert harness.node.status_message == "active"
    assert len(list(harness.node.subscriptions)) >= 8 and len(list(harness.node.services)) >= 10
    monitor = session.node("rig_monitor", RigMonitorNode, parameter_overrides=[
        Parameter(k, value=v) for k, v in harness.rig.parameters().items()])
    root = make_tiny_dataroot(tmp_path / "root", frames=1)
    publisher = DatarootPublisher(str(root), "v1.0-synthetic", context=session.context)
    try:
        for node in (harness.node, monitor, publisher):
            assert not unguarded_callbacks(node), f"{node.get_name()}: {unguarded_callbacks(node)}"
    finally:
        publisher.destroy_node()


def test_exceptions_in_callbacks_are_counted_reported_answered_and_the_node_goes_on(session, tiny_checkpoint,
                                                                                     monkeypatch):
    harness = Harness(session, tiny_checkpoint)
    node = harness.node
    assert harness.good_frame_is_processed(T0)

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug in a callback")

    monkeypatch.setattr(node.queries, "answer", broken)  # the service
    answer = call(session, harness.rig.source, ["car"])
    assert not answer.success and "a bug in a callback" in answer.message, answer.message
    monkeypatch.setattr(node.rig, "_tf_callback", broken)  # a subscription
    harness.rig.publish_static()
    monkeypatch.setattr(node.rig, "_retry_waiting", broken)  # what the rig's 20 ms timer calls
    assert session.spin_until(lambda: node.callback_errors.counts["_on_timer"] > 2, 10)
    assert session.spin_until(lambda: node.callback_errors.counts["/tf_static"] >= 1, 10)
    status = harness.fresh_status()
    values = harness.values(status)
    assert int(values["callback_errors/~/query_scene"]) == 1, values
    assert int(values["callback_errors/_on_timer"]) > 2 and "a bug" in values["callback_last_error/_on_timer"]
    assert status.level == DiagnosticStatus.WARN and "a bug in a callback" in status.message, status.message
    monkeypatch.undo()
    import distillnerf_ros.nodes.perception as perception

    monkeypatch.setattr(perception, "diagnostic_values", broken)  # the diagnostics timer itself
    status = harness.fresh_status()
    assert status.level == DiagnosticStatus.WARN and "diagnostics incomplete" in status.message, status.message
    monkeypatch.undo()
    assert harness.good_frame_is_processed(T0 + 1_000_000_000), "the node keeps processing"
    assert node.worker.running and node.counters["errors"] == 0


def test_rig_monitor_survives_and_reports_an_exception_in_its_callbacks(session, monkeypatch):
    from diagnostic_msgs.msg import DiagnosticArray

    from distillnerf_ros.nodes.rig_monitor import RigMonitorNode
    from ros_helpers import SmallRig

    rig = SmallRig(session)
    monitor = session.node("rig_monitor", RigMonitorNode, parameter_overrides=[
        Parameter(k, value=v) for k, v in {**rig.parameters(), "tf_wait": 0.5}.items()])
    statuses = []
    session.node("listener").create_subscription(
        DiagnosticArray, "/diagnostics", lambda m: statuses.extend(s for s in m.status if "rig" in s.name), 10)
    rig.wait_for_node()

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug in the rig input")

    monkeypatch.setattr(monitor.rig, "_tf_callback", broken)
    rig.publish_static()
    assert session.spin_until(lambda: monitor.callback_errors.counts["/tf_static"] >= 1, 10)
    count = len(statuses)
    assert session.spin_until(lambda: len(statuses) > count, 5), "no /diagnostics"
    values = {kv.key: kv.value for kv in statuses[-1].values}
    assert int(values["callback_errors//tf_static"]) >= 1 and "a bug" in values["callback_last_error//tf_static"]
    assert statuses[-1].level == DiagnosticStatus.WARN and "a bug in the rig input" in statuses[-1].message
    monkeypatch.undo()
    rig.publish_static()
    rig.publish_frame(T0)
    assert session.spin_until(lambda: bool(monitor.frames), 20), "the monitor goes on"


def default_model_copy(folder: Path, edit) -> Path:
    """models/default copied to `folder`, its model.json edited by edit(sidecar)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "model.json"):
        shutil.copy(REPO / "models" / "default" / name, folder / name)
    sidecar = json.loads((folder / "model.json").read_text())
    edit(sidecar)
    (folder / "model.json").write_text(json.dumps(sidecar))
    return folder / "model.safetensors"


def teacher_edit(key, value):
    def edit(sidecar):
        teacher = sidecar["config"]["feature_head"]["teacher"]
        if "." in key:
            outer, inner = key.split(".")
            teacher[outer][inner] = value
        else:
            teacher[key] = value
    return edit


def bundled_teacher_cases() -> dict[str, tuple[str, object]]:
    """Bad values of the bundled model's teacher block, from its own sidecar (its kind, its dims): the cases hold
    for an oracle-distilled and a segmenter-distilled bundled model alike."""
    config = json.loads((REPO / "models" / "default" / "model.json").read_text())["config"]["feature_head"]
    dim, kind = config["teacher"]["dim"], config["teacher"]["kind"]
    cases = {
        "sha_int": ("weights_sha256", 12345), "sha_text": ("weights_sha256", "not hex"),
        "sha_list": ("weights_sha256", ["ab"]), "dim_mismatch": ("dim", dim - 1), "dim_text": ("dim", str(dim)),
        "dim_negative": ("dim", -dim), "classes_string": ("classes", "car"), "classes_ints": ("classes", [1, 2]),
        "kind_unknown": ("kind", "sam"), "pca_dim": ("pca.dim", config["dim"] - 1),
        "pca_variance": ("pca.explained_variance", 7.0),
    }
    if kind == "oracle":
        cases |= {"seed_text": ("seed", "0"), "noise_nan": ("noise", float("nan"))}
    if kind == "segmenter":
        cases |= {"outputs_unknown": ("outputs", "logits"), "floor_positive": ("log_prob_floor", 1.0),
                  "stride_zero": ("stride", 0)}
    return cases


BAD_TEACHERS = bundled_teacher_cases()


@pytest.mark.parametrize("case", sorted(BAD_TEACHERS))
def test_a_bad_teacher_block_in_the_sidecar_fails_configure_naming_the_key(session, tmp_path, case):
    key, value = BAD_TEACHERS[case]
    checkpoint = default_model_copy(tmp_path / "model", teacher_edit(key, value))
    harness = Harness(session, checkpoint)
    assert harness.node.status_message == "configure failed", harness.node.status_message
    status = harness.fresh_status()
    assert status.level == DiagnosticStatus.ERROR, status.message
    assert f"feature_head.teacher.{key}" in status.message, status.message
    session.spin_until(lambda: False, 1.5)  # the diagnostics timer keeps running on the failed node
    assert harness.fresh_status().level == DiagnosticStatus.ERROR


def test_the_node_process_with_a_bad_teacher_block_stays_up_reports_error_and_exits_0(tmp_path):
    import signal

    from diagnostic_msgs.msg import DiagnosticArray
    from test_perception_process import node_process, stop_cleanly

    from ros_helpers import RosSession, SmallRig

    checkpoint = default_model_copy(tmp_path / "model", teacher_edit("weights_sha256", 12345))
    session = RosSession()
    try:
        rig = SmallRig(session)
        statuses = []
        session.node("listener").create_subscription(DiagnosticArray, "/diagnostics", lambda m: statuses.extend(
            s for s in m.status if s.name.startswith("distillnerf_perception")), 10)
        with node_process("perception_node", rig, checkpoint, session) as process:
            assert session.spin_until(lambda: len(statuses) >= 3 or process.poll() is not None, 90), "no /diagnostics"
            assert process.poll() is None, f"the node process ended with {process.returncode}"
            assert statuses[-1].level == DiagnosticStatus.ERROR, statuses[-1].message
            assert "feature_head.teacher.weights_sha256" in statuses[-1].message, statuses[-1].message
            stop_cleanly(process, signal.SIGINT)
    finally:
        session.close()


def clip_distilled_checkpoint(folder: Path, teacher_dim: int, weights: Path, model_config: Path,
                              sha: str = "0" * 64) -> Path:
    """A tiny model 'distilled' from a tiny CLIP: PCA buffers of teacher_dim channels, a clip identity."""
    cfg = ModelConfig.load("tiny")
    cfg.feature_head.teacher_dim = teacher_dim
    cfg.feature_head.teacher = {"kind": "clip", "model": CLIP_NAME, "dim": teacher_dim, "weights": str(weights),
                                "weights_sha256": sha, "model_config": str(model_config), "input_hw": [56, 56],
                                "pca": {"dim": cfg.feature_head.dim, "explained_variance": 0.9, "fit_vectors": 10}}
    path = folder / "clip_model.safetensors"
    save_checkpoint(DistillNeRFModel(cfg, load_pretrained=False), path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("problem", ["weights_missing", "embedding_dim_mismatch"])
def test_a_clip_model_that_cannot_embed_text_answers_queries_with_the_reason(session, tmp_path, problem):
    from distillnerf_core.teachers.base import file_sha256

    cfg_path, weights = save_tiny_clip(tmp_path / "clip")
    if problem == "weights_missing":
        checkpoint = clip_distilled_checkpoint(tmp_path, CLIP_CONFIG["embed_dim"], tmp_path / "gone.safetensors",
                                               cfg_path)
        reason = "CLIP weights for text queries not found"
    else:  # the CLIP file embeds in 32 channels, the model's PCA expects 16
        checkpoint = clip_distilled_checkpoint(tmp_path, 16, weights, cfg_path, file_sha256(weights))
        reason = "channels"
    harness = Harness(session, checkpoint, semantic_queries=["car"])
    occupancy = []
    session.nodes[-1].create_subscription(PointCloud2, f"{NODE}/occupancy", occupancy.append, RELIABLE)
    assert harness.node.status_message == "active", harness.node.last
    assert harness.good_frame_is_processed(T0), "frames go on without the labels"
    assert session.spin_until(lambda: bool(occupancy), 10)
    for _ in range(2):  # the same answer again (the failure is kept, not retried per call)
        answer = call(session, harness.rig.source, ["car"])
        assert not answer.success and reason in answer.message, answer.message
    status = harness.fresh_status()
    assert status.level == DiagnosticStatus.WARN and "semantic_queries" in status.message, status.message
    assert "text queries unavailable" in status.message and reason in status.message, status.message
    assert reason in harness.values(status)["semantic_queries"]
    assert harness.node.counters["errors"] == 0 and not harness.node.callback_errors.counts


def test_a_cuda_fallback_to_the_cpu_is_a_warning_with_the_reason(session, tiny_checkpoint):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    harness = Harness(session, tiny_checkpoint, device="cuda")
    assert harness.node.status_message == "active"
    status = harness.fresh_status()
    assert status.level == DiagnosticStatus.WARN and "CPU" in status.message and "cuda" in status.message, (
        status.message)


def test_semantic_queries_not_applied_is_a_warning_with_the_reason(session, tiny_checkpoint):
    harness = Harness(session, tiny_checkpoint, semantic_queries=["car"])  # an undistilled model
    occupancy = []
    session.nodes[-1].create_subscription(PointCloud2, f"{NODE}/occupancy", occupancy.append, RELIABLE)
    assert harness.good_frame_is_processed(T0)
    assert session.spin_until(lambda: bool(occupancy), 10)
    status = harness.fresh_status()
    assert status.level == DiagnosticStatus.WARN, status.message
    assert "semantic_queries not applied" in status.message and "not distilled" in status.message, status.message


def test_compiling_does_not_block_diagnostics_or_services_and_is_reported(session, tiny_checkpoint, monkeypatch):
    from distillnerf_core.inference import ScenePredictor

    release = threading.Event()
    started = threading.Event()

    def slow_warm_up(self, num_cameras, rgb=False):
        started.set()
        release.wait(60)
        return 0.0

    monkeypatch.setattr(ScenePredictor, "warm_up", slow_warm_up)
    monkeypatch.setattr(DistillNeRFModel, "compile_stages", lambda self: None)  # nothing compiled for real
    harness = Harness(session, tiny_checkpoint, compile=True)
    try:
        assert started.wait(10), "the warm-up frame must start"
        status = harness.fresh_status()
        assert "compiling" in status.message and status.level == DiagnosticStatus.WARN, status.message
        answer = call(session, harness.rig.source, ["car"])  # the service answers meanwhile
        assert not answer.success and answer.message
    finally:
        release.set()
    assert session.spin_until(lambda: "compiling" not in harness.fresh_status().message, 20)
    harness.rig.wait_for_node()
    harness.rig.publish_static()
    assert harness.good_frame_is_processed(T0)


def test_a_shut_down_node_reports_finalized_without_stale_timings(session, tiny_checkpoint):
    harness = Harness(session, tiny_checkpoint, processing_time_warn_ms=0.0)
    assert harness.good_frame_is_processed(T0)
    assert "processing" in harness.fresh_status().message
    harness.node.trigger_shutdown()
    status = harness.fresh_status()
    assert status.message.startswith("finalized") and "processing" not in status.message, status.message
    assert status.level == DiagnosticStatus.WARN, status.message
