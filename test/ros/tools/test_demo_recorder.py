"""The demo's output recorder over loopback DDS: one bag per source, every topic, the publishers' QoS."""

from __future__ import annotations

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from nav_msgs.msg import OccupancyGrid
from rosbags.interfaces import QosDurability
from rosbags.rosbag2 import Reader
from std_msgs.msg import Float64, Header

from distillnerf_ros.tools.demo import LATCHED, NODE, RELIABLE, OutputRecorder
from ros_helpers import RosSession, wait_for_match

KEYFRAME_NS = 1_532_402_927_647_423_000  # 2018
SYNTHETIC_NS = 1_600_000_000_500_000_000  # 2020


def stamp(ns: int) -> Time:
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def test_one_bag_per_source_with_every_topic_and_its_qos(tmp_path):
    session = RosSession()
    try:
        recorder = OutputRecorder(session.node("recorder"), tmp_path / "outputs")
        fake = session.node("fake_perception")
        grid_pub = fake.create_publisher(OccupancyGrid, f"/{NODE}/occupancy_grid", LATCHED)
        model_pub = fake.create_publisher(Float64, f"/{NODE}/debug/model_time_ms", RELIABLE)
        diag_pub = fake.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE)
        wait_for_match(session, [grid_pub, model_pub, diag_pub])
        for count, (source, ns) in enumerate((("keyframe", KEYFRAME_NS), ("synthetic", SYNTHETIC_NS)), start=1):
            recorder.start(source, ns)
            grid_pub.publish(OccupancyGrid(header=Header(stamp=stamp(ns), frame_id="base_link")))
            model_pub.publish(Float64(data=42.0))
            # Diagnostics are stamped with the node's own clock (here: now, 2026), not the bag's time.
            diag_pub.publish(DiagnosticArray(header=Header(stamp=fake.get_clock().now().to_msg()), status=[
                DiagnosticStatus(name=f"{NODE}: node", message="active")]))
            assert session.spin_until(lambda n=count: len(recorder.series["model"]) >= n
                                      and recorder.status == "active", 10), f"{source}: nothing recorded"
            session.spin_until(lambda: False, 0.3)
        recorder.finish()
    finally:
        session.close()

    assert [bag.name for bag in recorder.bags] == ["keyframe", "synthetic"]
    for bag, ns in zip(recorder.bags, (KEYFRAME_NS, SYNTHETIC_NS), strict=True):
        with Reader(bag) as reader:
            topics = {c.topic: c for c in reader.connections}
            assert set(topics) == {f"/{NODE}/occupancy_grid", f"/{NODE}/debug/model_time_ms", "/diagnostics"}
            assert reader.start_time == ns and reader.duration <= 1, (
                f"{bag.name}: spans {reader.start_time} + {reader.duration} ns; a bag must hold one source's time")
            grid_qos = topics[f"/{NODE}/occupancy_grid"].ext.offered_qos_profiles
            assert grid_qos and grid_qos[0].durability == QosDurability.TRANSIENT_LOCAL, (
                "the latched grid must replay latched (RViz's Map display subscribes transient-local)")
            assert all(c.ext.offered_qos_profiles for c in reader.connections), "every topic records its QoS"
