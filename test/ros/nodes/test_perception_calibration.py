"""Query scores outside the calibration's domain are said so, over real DDS with the real node and the bundled
(calibrated) model, whatever its teacher: on the real nuScenes keyframe `~/query_scene` answers with an
OUT OF DOMAIN sentence first and /diagnostics WARNs with it (`query_domain` too) where
benchmarks/query_calibration.py measured the keyframe out of the domain (the bundled oracle-distilled model: it
is), with no such sentence where it measured it in; on a held-out synthetic frame of the world the calibration
was evaluated on (its domain) the same query carries no such sentence and /diagnostics says it is in the domain.
The threshold is the one stored in models/default/model.json."""

from __future__ import annotations

import json

import pytest
from conftest import REPO
from diagnostic_msgs.msg import DiagnosticStatus
from sensor_msgs.msg import PointCloud2
from test_perception_grading import NODE, RELIABLE, Grades, KeyframePublisher, start_node, values
from test_perception_queries import call, clients

RESULTS = json.loads((REPO / "benchmarks" / "results" / "query_calibration.json").read_text())


@pytest.fixture(scope="module")
def synthetic_frame(tmp_path_factory):
    """One held-out synthetic keyframe (not trained on) of the world the calibration was evaluated on (its
    record: seed, rig, look, size; a record without one was made with distillnerf-synth's defaults, seed 999)."""
    from distillnerf_core.data.synthetic.export import write_dataroot

    world = RESULTS["calibration"]["evaluated_on"].get("world") or {}
    root = tmp_path_factory.mktemp("synthetic")
    write_dataroot(root, scenes=1, frames=1, seed=int(world.get("seed", 999)), cameras=world.get("rig", "nuscenes"),
                   width=int(world.get("width", 456)), height=int(world.get("height", 256)),
                   look=world.get("look", "plain"), progress=False)
    return root


def query_after(session, grades: Grades, node, keyframes: KeyframePublisher, client, processed: int):
    keyframes.publish(keyframes.samples[0])
    assert session.spin_until(lambda: node.counters["processed"] >= processed, 240), node.counters
    return call(session, client, ["car", "road"])


@pytest.mark.slow
def test_a_real_frame_is_answered_out_of_domain_and_a_synthetic_one_in_it(session, synthetic_frame):
    node = start_node(session, model_path="", grading_every_n_frames=0)  # no PSNR WARN in the way
    assert node.predictor.teacher["calibration"]["domain_check"], "the bundled model stores a domain check"
    grades = Grades(session, list(node.get_parameter("cameras").value))
    client = clients(session, 1)[0]
    # the node skips outputs nobody subscribes to: occupancy (what the query labels) needs a subscriber
    occupancy = session.node("occupancy").create_subscription(PointCloud2, f"{NODE}/occupancy", lambda _: None,
                                                              RELIABLE)
    assert session.spin_until(lambda: occupancy.get_publisher_count() > 0, 20), "~/occupancy not matched"

    (measured,) = [f for f in RESULTS["frames"]["real"] if f["source"].startswith("nuScenes")]
    real = KeyframePublisher(session, REPO / "data" / "nuscenes_sample")
    real.wait_for_node()
    answer = query_after(session, grades, node, real, client, 1)
    if measured["in_domain"]:  # the benchmark measured this model in its domain on the keyframe: no warning
        assert answer.success and "OUT OF DOMAIN" not in answer.message, (answer.message, measured["statistic"])
    else:
        assert answer.success and answer.message.startswith("OUT OF DOMAIN"), answer.message
        assert node.predictor.teacher["calibration"]["domain"] in answer.message, answer.message
        assert "not calibrated" in answer.message, answer.message
        status = grades.status_where(lambda s: "query scores OUT OF DOMAIN" in s.message)
        assert status.level == DiagnosticStatus.WARN, status.message
        assert values(status)["query_domain"].startswith("OUT OF DOMAIN"), values(status)

    synthetic = KeyframePublisher(session, synthetic_frame)
    synthetic.wait_for_node()
    answer = query_after(session, grades, node, synthetic, client, 2)
    assert answer.success and "OUT OF DOMAIN" not in answer.message, answer.message
    status = grades.status_where(lambda s: values(s).get("query_domain", "").startswith("in the calibration domain"))
    assert "OUT OF DOMAIN" not in status.message, status.message
