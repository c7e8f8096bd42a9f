import pytest

from distillnerf_ros.input.camera_sync import LatestCameraSynchronizer

MS = 1_000_000
CAMERAS = ["front", "left", "right"]


def test_emits_when_every_camera_is_fresh():
    sync = LatestCameraSynchronizer(CAMERAS, max_camera_delay_s=0.1)
    assert sync.add("front", 1000 * MS, "f") is None
    assert sync.add("left", 1010 * MS, "l") is None
    camera_set = sync.add("right", 1020 * MS, "r")
    assert camera_set is not None and camera_set.trigger_stamp_ns == 1020 * MS
    assert camera_set.messages == {"front": "f", "left": "l", "right": "r"} and not camera_set.missing


def test_stale_camera_is_left_out_with_the_reason():
    sync = LatestCameraSynchronizer(CAMERAS, max_camera_delay_s=0.1)
    sync.add("front", 1000 * MS, "f")
    sync.add("left", 1150 * MS, "l")
    camera_set = sync.add("right", 1160 * MS, "r")
    assert set(camera_set.messages) == {"left", "right"}
    assert "160.0 ms older" in camera_set.missing["front"], camera_set.missing
    assert sync.stats.missing[("front", "stale")] == 1


def test_a_dead_camera_never_stalls_the_pipeline():
    sync = LatestCameraSynchronizer(CAMERAS, max_camera_delay_s=0.1)
    emitted = []
    for cycle in range(5):  # 'right' never publishes
        for offset, camera in enumerate(("front", "left")):
            result = sync.add(camera, (1000 + 100 * cycle + offset) * MS, camera)
            if result is not None:
                emitted.append(result)
    assert len(emitted) == 4, "each lap of the live cameras must close the incomplete set"
    assert emitted[0].missing["right"] == "no message received yet"
    assert set(emitted[-1].messages) == {"front", "left"}
    assert len(sync._pending) <= len(CAMERAS), "the synchroniser must never hold more than one message per camera"


def test_reference_camera_triggers_and_others_are_overwritten_not_queued():
    sync = LatestCameraSynchronizer(CAMERAS, max_camera_delay_s=0.05, reference_camera="right")
    sync.add("front", 1000 * MS, "f-old")
    sync.add("front", 1030 * MS, "f-new")
    sync.add("left", 1035 * MS, "l")
    camera_set = sync.add("right", 1040 * MS, "r")
    assert camera_set.messages == {"front": "f-new", "left": "l", "right": "r"}
    assert sync.stats.overwritten["front"] == 1
    assert sync.add("right", 1140 * MS, "r2").missing == {
        "front": "no message since the previous set", "left": "no message since the previous set"}


def test_min_cameras_drops_sets_that_are_too_small():
    sync = LatestCameraSynchronizer(CAMERAS, max_camera_delay_s=0.1, reference_camera="front", min_cameras=2)
    assert sync.add("front", 1000 * MS, "f") is None
    assert sync.stats.sets_dropped == 1 and sync.stats.sets_emitted == 0


@pytest.mark.parametrize("kwargs,message", [
    ({"camera_names": []}, "at least one camera"),
    ({"camera_names": ["a", "a"]}, "unique"),
    ({"camera_names": ["a"], "reference_camera": "b"}, "reference camera 'b'"),
    ({"camera_names": ["a"], "max_camera_delay_s": 0}, "positive"),
    ({"camera_names": ["a"], "min_cameras": 2}, "min_cameras"),
])
def test_bad_configuration_is_rejected_with_a_reason(kwargs, message):
    arguments = {"max_camera_delay_s": 0.1} | kwargs
    with pytest.raises(ValueError, match=message):
        LatestCameraSynchronizer(**arguments)


def test_unknown_camera_is_an_error():
    with pytest.raises(KeyError, match="unknown camera 'rear'"):
        LatestCameraSynchronizer(CAMERAS, 0.1).add("rear", 0, None)


def test_reset_keeps_messages_of_the_new_timeline_and_counts_the_rest():
    sync = LatestCameraSynchronizer(["a", "b", "c"], max_camera_delay_s=0.05)
    sync.add("a", 90_000_000_000, "old a")  # the end of the previous pass of a looped bag
    sync.add("b", 1_000_000_000, "new b")  # the next pass already began before the clock jumped
    sync.reset(keep_until_ns=2_000_000_000)
    assert sync.stats.discarded_on_reset == 1
    sync.add("a", 1_010_000_000, "new a")
    camera_set = sync.add("c", 1_020_000_000, "new c")
    assert camera_set is not None and sorted(camera_set.messages.values()) == ["new a", "new b", "new c"]
    sync.add("a", 1_030_000_000, "x")
    sync.reset()
    assert sync.stats.discarded_on_reset == 2


def test_an_incomplete_last_set_is_closed_once_the_input_goes_quiet():
    # The end of a bag, or the last images of a set lost on the way: no lap ever comes to close it.
    sync = LatestCameraSynchronizer(["a", "b", "c"], max_camera_delay_s=0.05)
    assert sync.add("a", 1_000_000_000, "a", now_s=10.0) is None
    assert sync.add("b", 1_000_000_000, "b", now_s=10.1) is None
    assert sync.flush_idle(now_s=11.0, idle_s=2.0) is None, "not idle yet: c may still come"
    camera_set = sync.flush_idle(now_s=12.2, idle_s=2.0)
    assert camera_set is not None and sorted(camera_set.messages) == ["a", "b"]
    assert camera_set.missing["c"] == "no message received yet"
    assert sync.stats.sets_flushed_idle == 1 and sync.stats.missing[("c", "never_received")] == 1
    assert sync.flush_idle(now_s=20.0, idle_s=2.0) is None, "nothing pending: nothing to close"


def test_reset_counts_each_incomplete_set_it_drops_once():
    sync = LatestCameraSynchronizer(["a", "b", "c"], max_camera_delay_s=0.05)
    sync.add("a", 90_000_000_000, "old a")
    sync.add("b", 90_010_000_000, "old b")  # two images of one set of the old timeline
    sync.reset(keep_until_ns=2_000_000_000)
    assert sync.stats.discarded_on_reset == 2 and sync.stats.sets_discarded_on_reset == 1
    sync.add("a", 1_000_000_000, "new a")
    sync.reset(keep_until_ns=2_000_000_000)  # only messages of the new timeline pending: nothing dropped
    assert sync.stats.sets_discarded_on_reset == 1
    assert sync.discard_pending() == 1 and sync.discard_pending() == 0
