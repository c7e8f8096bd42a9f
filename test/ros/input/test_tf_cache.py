import numpy as np
import pytest
from geometry_msgs.msg import TransformStamped
from tf2_msgs.msg import TFMessage

from distillnerf_core.geometry import invert_transform, make_transform, quaternion_to_matrix
from distillnerf_ros.conversions.nuscenes_messages import stamp_from_us, transform_stamped
from distillnerf_ros.input.tf_cache import ExtrapolationError, FrameNotAvailableError, TfCache

S = 1_000_000_000


def yaw(angle: float, translation=(0.0, 0.0, 0.0)) -> np.ndarray:
    return make_transform([np.cos(angle / 2), 0, 0, np.sin(angle / 2)], translation)


def cache_with_rig() -> TfCache:
    cache = TfCache(cache_duration_s=10.0)
    cam = make_transform(quaternion_to_matrix([0.5, -0.5, 0.5, -0.5]), [1.7, 0.0, 1.5])  # optical, forward
    cache.set_transform("base_link", "cam_front", 0, cam, static=True)
    cache.set_transform("map", "base_link", 10 * S, yaw(0.0, (100, 0, 0)), static=False)
    cache.set_transform("map", "base_link", 11 * S, yaw(np.pi / 2, (110, 0, 0)), static=False)
    return cache


def test_static_chain_and_inverse():
    cache = cache_with_rig()
    base_from_cam = cache.lookup("base_link", "cam_front", 10 * S)
    assert np.allclose(base_from_cam[:3, 2], [1, 0, 0]), "optical z axis must point forward (x) in base_link"
    assert np.allclose(cache.lookup("cam_front", "base_link", 10 * S), invert_transform(base_from_cam))


def test_dynamic_transform_is_interpolated_in_time():
    cache = cache_with_rig()
    middle = cache.lookup("map", "base_link", int(10.5 * S))
    assert np.allclose(middle[:3, 3], [105, 0, 0]), "translation must be linearly interpolated"
    assert np.allclose(middle[:3, :3], yaw(np.pi / 4)[:3, :3]), "rotation must be slerped to 45 degrees"
    chained = cache.lookup("map", "cam_front", int(10.5 * S))
    assert np.allclose(chained, middle @ cache.lookup("base_link", "cam_front", 0))


def test_extrapolation_and_unknown_frames_are_clear_errors():
    cache = cache_with_rig()
    with pytest.raises(ExtrapolationError, match=r"map' -> 'base_link'.*500\.0 ms after the newest"):
        cache.lookup("map", "cam_front", int(11.5 * S))
    with pytest.raises(FrameNotAvailableError, match="'cam_back' has not been received"):
        cache.lookup("base_link", "cam_back", 10 * S)
    cache.set_transform("odom", "wheel", 10 * S, np.eye(4), static=True)
    with pytest.raises(FrameNotAvailableError, match="no TF chain connects"):
        cache.lookup("map", "wheel", 10 * S)


def test_backwards_time_jump_clears_dynamic_history_but_keeps_static():
    cache = cache_with_rig()
    cache.set_transform("map", "base_link", 1 * S, yaw(0.0, (5, 0, 0)), static=False)  # a looped bag
    assert cache.resets == 1
    assert np.allclose(cache.lookup("map", "base_link", 1 * S)[:3, 3], [5, 0, 0])
    with pytest.raises(ExtrapolationError):
        cache.lookup("map", "base_link", 10 * S)
    assert cache.can_transform("base_link", "cam_front", 1 * S), "static transforms must survive a reset"


def test_history_is_bounded_by_duration():
    cache = TfCache(cache_duration_s=2.0)
    for second in range(100):
        cache.set_transform("map", "base_link", second * S, yaw(0.0, (second, 0, 0)), static=False)
    with pytest.raises(ExtrapolationError, match="before the oldest"):
        cache.lookup("map", "base_link", 90 * S)
    assert np.allclose(cache.lookup("map", "base_link", int(98.5 * S))[:3, 3], [98.5, 0, 0])
    assert len(cache._dynamic["base_link"].stamps) == 3, "history must hold only cache_duration_s of data"


def test_out_of_order_messages_are_inserted_in_time_order():
    cache = TfCache()
    for second in (3, 1, 2):
        cache.set_transform("map", "base_link", second * S, yaw(0.0, (second, 0, 0)), static=False)
    assert np.allclose(cache.lookup("map", "base_link", int(1.5 * S))[:3, 3], [1.5, 0, 0])


def test_tf_message_feeding_and_ego_motion_compensation():
    cache = TfCache()
    camera = make_transform(quaternion_to_matrix([0.5, -0.5, 0.5, -0.5]), [1.0, 0.0, 1.5])
    static = TFMessage(transforms=[transform_stamped("base_link", "cam_front", TransformStamped().header.stamp,
                                                     camera)])
    cache.add_message(static, static=True)
    for second, x in ((10, 0.0), (11, 9.0)):  # driving forward at 9 m/s
        msg = TFMessage(transforms=[transform_stamped("map", "base_link", TransformStamped().header.stamp,
                                                      yaw(0.0, (x, 0, 0)))])
        msg.transforms[0].header.stamp.sec = second
        cache.add_message(msg, static=False)
    # A camera that fired 0.5 s before the trigger sits 4.5 m behind in the trigger's base_link.
    compensated = cache.lookup_across_time("base_link", 11 * S, "cam_front", int(10.5 * S), "map")
    assert np.allclose(compensated[:3, 3], [1.0 - 4.5, 0.0, 1.5])


def test_invalid_transforms_in_a_message_are_rejected_and_the_rest_kept():
    cache = TfCache()
    good = transform_stamped("base_link", "cam", stamp_from_us(1), np.eye(4))
    nan = transform_stamped("base_link", "cam_nan", stamp_from_us(1), np.eye(4))
    nan.transform.translation.x = float("nan")
    zero_q = transform_stamped("base_link", "cam_q", stamp_from_us(1), np.eye(4))
    zero_q.transform.rotation.w = 0.0
    self_loop = transform_stamped("base_link", "base_link", stamp_from_us(1), np.eye(4))
    assert cache.add_message(TFMessage(transforms=[nan, zero_q, self_loop, good]), static=True) == 3
    assert cache.rejected == 3 and cache.can_transform("base_link", "cam", 0)
    assert "base_link" in cache.last_rejection


def test_dynamic_frames_are_bounded_and_stale_ones_expire():
    cache = TfCache(cache_duration_s=10.0, max_dynamic_frames=100)
    for i in range(1000):
        cache.set_transform("map", f"f{i}", 5 * S, np.eye(4), static=False)
    assert cache.dynamic_frame_count == 100 and cache.evicted == 900
    assert cache.has_frame("f999") and not cache.has_frame("f0"), "the least recently updated goes first"
    cache.set_transform("map", "base_link", 30 * S, np.eye(4), static=False)
    assert cache.dynamic_frame_count == 1 and cache.expired + cache.evicted == 1000
    assert cache.frames == {"map", "base_link"}
    cache.set_transform("map", "base_link", 1 * S, np.eye(4), static=False)  # 29 s back: a looped bag
    assert cache.resets_by_kind == {"backwards_jump": 1} and cache.resets == 1


def test_a_jump_clears_only_the_old_timelines_future():
    cache = TfCache()
    for second in (10, 11):  # the end of a bag's first pass
        cache.set_transform("map", "base_link", second * S, yaw(0.0, (second, 0, 0)), static=False)
        cache.set_transform("base_link", "wheel", second * S, yaw(0.0), static=False)
    cache.set_transform("map", "base_link", 1 * S, yaw(0.0, (1, 0, 0)), static=False)  # the loop restarts
    assert not cache.has_frame("wheel"), "history stamped after the new time + 1 s is gone"
    cache.set_transform("base_link", "wheel", int(1.5 * S), yaw(0.1), static=False)  # the new pass goes on
    assert cache.resets_by_kind == {"backwards_jump": 1}
    assert np.allclose(cache.lookup("map", "base_link", 1 * S)[:3, 3], [1, 0, 0])
    with pytest.raises(ExtrapolationError):
        cache.lookup("map", "base_link", 10 * S)
    # the node's clock jumps to 0.2 s: what is stamped up to 0.2 s + margin (1.2 s) stays, the rest goes
    cache.clear_dynamic("clock_jump", keep_until_ns=int(1.2 * S))
    assert cache.can_transform("map", "base_link", 1 * S) and not cache.has_frame("wheel")
    cache.clear_dynamic("clock_jump")
    assert not cache.has_frame("base_link") and cache.resets_by_kind == {"backwards_jump": 1, "clock_jump": 2}


@pytest.mark.parametrize("static", [False, True])
def test_an_edge_that_would_close_a_loop_is_refused_and_the_tree_kept(static):
    cache = cache_with_rig()
    before = cache.lookup("map", "cam_front", 10 * S)
    closing = transform_stamped("cam_front", "map", stamp_from_us(10 * S // 1000), np.eye(4))  # map under its camera
    assert cache.add_message(TFMessage(transforms=[closing]), static=static) == 1
    assert cache.loops_refused == 1 and "would close a TF loop (map -> base_link -> cam_front -> map)" in \
        cache.last_rejection, cache.last_rejection
    assert np.allclose(cache.lookup("map", "cam_front", 10 * S), before), "the good tree is kept"
    cache.set_transform("map", "base_link", 12 * S, yaw(0.0, (120, 0, 0)), static=False)
    assert np.allclose(cache.lookup("map", "cam_front", 12 * S)[:3, 3], [121.7, 0, 1.5]), "later sets work"


def test_a_static_edge_held_back_by_a_loop_through_a_dynamic_one_is_applied_once_that_edge_goes():
    cache = TfCache()
    cache.set_transform("cam_front", "base_link", 1 * S, np.eye(4), static=False)  # a bogus dynamic edge, first
    cam = make_transform(quaternion_to_matrix([0.5, -0.5, 0.5, -0.5]), [1.7, 0.0, 1.5])
    with pytest.raises(ValueError, match="held back: it would close a TF loop"):
        cache.set_transform("base_link", "cam_front", 0, cam, static=True)  # latched calibration, later
    assert cache.loops_refused == 1
    cache.set_transform("map", "base_link", 2 * S, np.eye(4), static=False)  # base_link's real parent again
    assert np.allclose(cache.lookup("base_link", "cam_front", 2 * S), cam), "the held-back calibration applies"
    with pytest.raises(ValueError, match="refused: it would close a TF loop"):
        cache.set_transform("cam_front", "base_link", 3 * S, np.eye(4), static=False)
    assert np.allclose(cache.lookup("map", "cam_front", 2 * S), cam)
