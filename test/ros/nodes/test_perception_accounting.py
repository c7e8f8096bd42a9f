"""Every camera set that reaches the node ends in a counter of /diagnostics, also across a lifecycle cycle and
a clock jump (the soak found about one set per loop of a bag that no counter explained). Real node, real DDS."""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from rosgraph_msgs.msg import Clock
from std_msgs.msg import Header
from test_perception_robustness import T0, Harness

from distillnerf_ros.conversions.images import rgb_to_image
from ros_helpers import wait_for_match

S = 1_000_000_000


def publish_images(harness: Harness, stamp_ns: int, cameras, frame_id=None) -> None:
    """Images only (no CameraInfo) of `cameras` at stamp_ns."""
    sec, nanosec = divmod(stamp_ns, S)
    for camera in cameras:
        header = Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame_id or camera)
        harness.rig.images[camera].publish(rgb_to_image(np.full((harness.rig.height, harness.rig.width, 3), 90,
                                                                np.uint8), header))


def test_sets_held_at_a_deactivation_are_counted_and_counters_survive_it(session, tiny_checkpoint):
    harness = Harness(session, tiny_checkpoint)
    assert harness.good_frame_is_processed(T0)
    node = harness.node
    received = node.rig_counts()["images_received/front"]
    assert received >= 1
    publish_images(harness, T0 + S, ["front", "left"])  # 2 of 3 cameras: the set stays pending
    assert session.spin_until(lambda: node.rig_counts()["images_received/left"] >= received + 1, 10)
    node.trigger_deactivate()
    assert node.losses()["sets_discarded_on_stop"] == 1, node.losses()
    values = harness.values(harness.fresh_status())
    assert values["sets_discarded_on_stop"] == "1" and int(values["images_received/front"]) >= received + 1, values
    node.trigger_activate()
    harness.rig.wait_for_node()
    assert harness.good_frame_is_processed(T0 + 2 * S)
    counts = node.rig_counts()  # cumulative over both activations
    assert counts["images_received/front"] >= received + 2 and counts["sets_discarded_on_stop"] == 1, counts

    def every_frame_ended() -> bool:  # each frame handed to the worker is processed or in a loss counter
        losses = node.losses()
        return node.rig_counts()["frames_submitted"] == node.counters["processed"] + sum(
            losses[key] for key in ("dropped_busy", "frames_discarded_on_stop", "errors", "skipped_no_cameras"))
    assert session.spin_until(every_frame_ended, 10), (node.rig_counts(), node.losses(), node.counters)


def test_a_set_with_no_usable_camera_is_counted(session, tiny_checkpoint):
    harness = Harness(session, tiny_checkpoint, tf_wait=0.2)
    publish_images(harness, T0, harness.rig.cameras)  # TF (static) there, but no CameraInfo ever
    assert session.spin_until(lambda: harness.node.losses()["sets_dropped_no_cameras"] == 1, 10), harness.node.losses()
    status = harness.fresh_status()
    assert status.level == status.WARN and "sets_dropped_no_cameras 1" in status.message, status.message
    assert harness.good_frame_is_processed(T0 + S)


def test_a_clock_jump_counts_the_waiting_set_and_discards_old_images_still_on_their_way(session, tiny_checkpoint):
    harness = Harness(session, tiny_checkpoint, tf_wait=5.0, use_sim_time=True)
    clock = session.node("clock").create_publisher(Clock, "/clock", 10)
    wait_for_match(session, [clock])
    node = harness.node

    def set_clock(stamp_ns: int) -> None:
        clock.publish(Clock(clock=Time(sec=stamp_ns // S, nanosec=stamp_ns % S)))
        assert session.spin_until(lambda: node.get_clock().now().nanoseconds == stamp_ns, 5)

    set_clock(T0 + 20 * S)
    assert harness.good_frame_is_processed(T0 + 20 * S)
    publish_images(harness, T0 + 21 * S, harness.rig.cameras, frame_id="no_tf_yet")  # waits for TF (5 s)
    assert session.spin_until(lambda: node.rig is not None and node.rig._waiting is not None, 5)
    set_clock(T0)  # back 20 s, as a looped bag: the waiting set is of the old timeline
    assert session.spin_until(lambda: node.losses()["sets_discarded_on_reset"] == 1, 5), node.losses()
    discarded = node.losses()["images_discarded_on_reset"]
    publish_images(harness, T0 + 21 * S + 1000, ["front"])  # a straggler of the old timeline
    assert session.spin_until(lambda: node.losses()["images_discarded_on_reset"] == discarded + 1, 5)
    assert harness.good_frame_is_processed(T0 + S // 10), "the first set of the new timeline must be processed"
    stamp = harness.depth[-1].header.stamp
    assert T0 <= stamp.sec * S + stamp.nanosec < T0 + S, "the straggler must not have joined the new timeline's set"
    values = harness.values(harness.fresh_status())
    assert int(values["sets_discarded_on_reset"]) == 1 and int(values["tf_resets/clock_jump"]) >= 1, values
