"""The demo's output recorder over loopback DDS: one bag per source by time window, every topic the node
publishes, each publisher's offered QoS; the bags read back with rosbags, independently of the recorder."""

from __future__ import annotations

import pytest
import yaml
from builtin_interfaces.msg import Time
from conftest import REPO
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from nav_msgs.msg import OccupancyGrid
from rclpy.duration import Duration
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosbags.interfaces import QosDurability
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Float64, Header

from distillnerf_ros.nodes.perception import PerceptionNode
from distillnerf_ros.nodes.perception_outputs import LATCHED_QOS, RELIABLE_QOS
from distillnerf_ros.tools.demo import NODE, OutputRecorder, bag_qos, output_topics
from ros_helpers import RosSession, wait_for_match

KEYFRAME_NS = 1_532_402_927_647_423_000  # 2018
SYNTHETIC_NS = 1_600_000_000_500_000_000  # 2020
SPAN_NS = 1_000_000_000
DEBUG_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, lifespan=Duration(seconds=30))


def stamp(ns: int) -> Time:
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def read_bag(bag):
    """(topic -> connection, [(topic, bag time ns, message)]) with rosbags' own reader and typestore."""
    typestore = get_typestore(Stores.ROS2_KILTED)
    with Reader(bag) as reader:
        connections = {c.topic: c for c in reader.connections}
        messages = [(c.topic, t, typestore.deserialize_cdr(data, c.msgtype)) for c, t, data in reader.messages()]
    return connections, messages


def test_late_messages_land_in_their_own_sources_bag_with_the_publishers_qos(tmp_path):
    session = RosSession()
    try:
        recorder = OutputRecorder(session.node("recorder"), tmp_path / "outputs")
        fake = session.node(NODE)  # the perception node's name and its publishers' QoS
        grid_pub = fake.create_publisher(OccupancyGrid, f"/{NODE}/occupancy_grid", LATCHED_QOS)
        info_pub = fake.create_publisher(CameraInfo, f"/{NODE}/cam_front/depth/camera_info", RELIABLE_QOS)
        opacity_pub = fake.create_publisher(Image, f"/{NODE}/cam_front/depth/opacity", RELIABLE_QOS)
        model_pub = fake.create_publisher(Float64, f"/{NODE}/debug/model_time_ms", DEBUG_QOS)
        diag_pub = fake.create_publisher(DiagnosticArray, "/diagnostics", 10)
        clock_pub = session.node("player").create_publisher(Clock, "/clock", 10)
        publishers = [grid_pub, info_pub, opacity_pub, model_pub, diag_pub, clock_pub]
        wait_for_match(session, publishers)

        def clock(ns: int) -> None:
            clock_pub.publish(Clock(clock=stamp(ns)))
            assert session.spin_until(lambda: recorder.clock_ns == ns, 10), "the recorder did not hear /clock"

        def outputs(ns: int, model_ms: float) -> None:
            header = Header(stamp=stamp(ns), frame_id="base_link")
            grid_pub.publish(OccupancyGrid(header=header))
            opacity_pub.publish(Image(header=header))
            model_pub.publish(Float64(data=model_ms))
            # Diagnostics are stamped with the node's own clock (here: now, 2026), not the bag's time.
            diag_pub.publish(DiagnosticArray(header=Header(stamp=fake.get_clock().now().to_msg()), status=[
                DiagnosticStatus(name=f"{NODE}: node", message="active")]))

        recorder.start("keyframe", KEYFRAME_NS, KEYFRAME_NS + SPAN_NS)
        clock(KEYFRAME_NS + 200_000_000)
        outputs(KEYFRAME_NS, 42.0)
        assert session.spin_until(lambda: recorder.series["model"] == [42.0] and recorder.status == "active", 10)
        recorder.start("synthetic", SYNTHETIC_NS, SYNTHETIC_NS + SPAN_NS)
        # The keyframe's late messages arrive after the synthetic source started, before its /clock moved.
        info_pub.publish(CameraInfo(header=Header(stamp=stamp(KEYFRAME_NS), frame_id="cam_front")))
        model_pub.publish(Float64(data=43.0))
        assert session.spin_until(lambda: recorder.series["model"] == [42.0, 43.0], 10)
        session.spin_until(lambda: False, 0.3)  # the CameraInfo too
        clock(SYNTHETIC_NS + 100_000_000)
        outputs(SYNTHETIC_NS, 44.0)
        info_pub.publish(CameraInfo(header=Header(stamp=stamp(SYNTHETIC_NS), frame_id="cam_front")))
        assert session.spin_until(lambda: len(recorder.series["model"]) == 3, 10)
        session.spin_until(lambda: False, 0.5)
        offered = {p.topic_name: [bag_qos(i.qos_profile) for i in fake.get_publishers_info_by_topic(p.topic_name)]
                   for p in publishers[:-1]}
        recorder.finish()
    finally:
        session.close()

    assert [bag.name for bag in recorder.bags] == ["keyframe", "synthetic"]
    for bag, first_ns, model_ms in zip(recorder.bags, (KEYFRAME_NS, SYNTHETIC_NS), ([42.0, 43.0], [44.0]),
                                       strict=True):
        connections, messages = read_bag(bag)
        assert set(connections) == set(offered), f"{bag.name}: topics {sorted(connections)}"
        times = [t for _, t, _ in messages]
        assert first_ns <= min(times) and max(times) <= first_ns + SPAN_NS, (
            f"{bag.name}: spans {min(times)}..{max(times)} ns; a bag holds its source's time only")
        stamps = {(topic, m.header.stamp.sec) for topic, _, m in messages if hasattr(m, "header")
                  and topic != "/diagnostics"}
        assert all(sec == first_ns // 1_000_000_000 for _, sec in stamps), f"{bag.name}: other sources' outputs"
        assert [m.data for topic, _, m in messages if topic.endswith("/model_time_ms")] == model_ms, bag.name
        assert sum(topic.endswith("/camera_info") for topic, _, _ in messages) == 1, f"{bag.name}: its CameraInfo"
        for topic, connection in connections.items():
            assert connection.ext.offered_qos_profiles == offered[topic], (
                f"{bag.name} {topic}: recorded {connection.ext.offered_qos_profiles}, the publisher offers"
                f" {offered[topic]}")
        assert connections[f"/{NODE}/occupancy_grid"].ext.offered_qos_profiles[0].durability == (
            QosDurability.TRANSIENT_LOCAL), "the latched grid must replay latched (RViz's Map display)"
        lifespan = connections[f"/{NODE}/debug/model_time_ms"].ext.offered_qos_profiles[0].lifespan
        assert (lifespan.sec, lifespan.nsec) == (30, 0), "the publisher's lifespan, not the recorder's QoS"


@pytest.mark.parametrize("rig", ["config/perception.yaml", "config/ddad.yaml"])
def test_every_topic_the_node_publishes_is_recorded(tiny_checkpoint, rig):
    cameras = yaml.safe_load((REPO / rig).read_text())["/**"]["ros__parameters"].get("cameras")
    overrides = [Parameter("model_path", value=str(tiny_checkpoint)), Parameter("publish_rendered", value=True)]
    if cameras and rig != "config/perception.yaml":
        overrides.append(Parameter("cameras", value=cameras))
    session = RosSession()
    try:
        node = session.node("perception", PerceptionNode, parameter_overrides=overrides)
        assert node.status_message == "active", node.last
        # The node's own publishers, not the graph's view of a node name: a node of the same name in another
        # context of this process (an earlier test's) would answer a graph query by name.
        # rcl's lifecycle creates transition_event itself (it is not among the node's rclpy publishers).
        published = {f"/{NODE}/transition_event": ["lifecycle_msgs/msg/TransitionEvent"]}
        for publisher in node.publishers:
            kind = publisher.msg_type
            published.setdefault(publisher.topic_name, []).append(
                f"{kind.__module__.split('.')[0]}/msg/{kind.__name__}")
        assert 3 + 4 * len(node.outputs.depth) <= sum(t.startswith(f"/{NODE}/") and "/debug/" not in t
                                                      for t in published), f"occupancy, grid, transition_event and"\
            f" 4 topics per camera: {sorted(published)}"
    finally:
        session.close()
    recorded = {topic: f"{kind.__module__.split('.')[0]}/msg/{kind.__name__}"
                for topic, (kind, _) in output_topics().items()}
    infrastructure = {"/rosout", "/parameter_events"}
    missing = {t: types for t, types in published.items() if t not in recorded and t not in infrastructure}
    assert not missing, f"the node publishes topics the demo does not record: {missing}"
    assert all(recorded[t] in types for t, types in published.items() if t in recorded), published
    assert any(t.endswith("/depth/opacity") for t in published)
