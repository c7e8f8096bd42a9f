"""CameraRigInput's latency paths: a waiting set goes out as soon as what it waited for arrives (not on the
next retry tick), and decoding shared with a thread pool gives the serial result without waiting for a busy
helper. Callbacks are called directly, without spinning, so no timer can be what released a set."""

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage

from distillnerf_core.geometry import make_transform, quaternion_to_matrix
from distillnerf_core.rectify import Rectifier
from distillnerf_ros.conversions.camera_info import CameraIntrinsics, intrinsics_to_camera_info
from distillnerf_ros.conversions.images import rgb_to_compressed_image, rgb_to_image
from distillnerf_ros.conversions.nuscenes_messages import stamp_from_us, transform_stamped
from distillnerf_ros.input.rig_input import CameraRigInput, RigFrame, input_qos, share_jobs, topics_from_format

CAMERAS = ["front", "left", "back"]
OPTICAL = quaternion_to_matrix([0.5, -0.5, 0.5, -0.5])
K = np.array([[100.0, 0, 32], [0, 100.0, 24], [0, 0, 1]])
T0_US = 1_700_000_000_000_000


def header(camera: str, stamp_us: int) -> Header:
    return Header(stamp=stamp_from_us(stamp_us), frame_id=f"{camera}_optical")


def static_tf(cameras: list[str]) -> TFMessage:
    return TFMessage(transforms=[
        transform_stamped("base_link", f"{c}_optical", stamp_from_us(0), make_transform(OPTICAL, [i, 0.0, 1.5]))
        for i, c in enumerate(cameras)])


def make_rig(session, name: str, frames: list) -> CameraRigInput:
    # tf_wait 10 s: a set released within the test can only have been released by a callback, not by expiry.
    return CameraRigInput(session.node(name), topics_from_format(CAMERAS, f"/{name}/{{camera}}/image",
                                                                 f"/{name}/{{camera}}/info", compressed=False),
                          frames.append, output_frame="base_link", fixed_frame="map", max_camera_delay_s=0.05,
                          reference_camera=None, qos=input_qos("reliable", 10), tf_wait_s=10.0)


def send(rig: CameraRigInput, stamp_us: int, info_first: bool) -> None:
    """One set: per camera its CameraInfo and image, in the order given."""
    for camera in CAMERAS:
        info = intrinsics_to_camera_info(CameraIntrinsics(K, 64, 48), header(camera, stamp_us))
        image = rgb_to_image(np.zeros((48, 64, 3), np.uint8), header(camera, stamp_us))
        if info_first:
            rig._info_callback(camera)(info)
        rig._image_callback(camera)(image)
        if not info_first:
            rig._info_callback(camera)(info)


def test_a_set_goes_out_when_its_last_camera_info_arrives(session):
    frames = []
    rig = make_rig(session, "latency_info", frames)
    rig._tf_callback(static_tf(CAMERAS), static=True)
    send(rig, T0_US, info_first=True)  # CameraInfo with every image, same stamp: the rig pairs them from now on
    assert len(frames) == 1, f"a complete set with TF and CameraInfo was not released at once: {rig.stats}"
    send(rig, T0_US + 100_000, info_first=False)  # the executor ran the images before their CameraInfos
    assert len(frames) == 2, f"the set waited for a retry tick after its last CameraInfo arrived: {rig.stats}"
    assert frames[1].stamp_ns == (T0_US + 100_000) * 1000 and frames[1].cameras == CAMERAS
    rig.destroy()


def test_a_set_goes_out_when_its_transform_arrives(session):
    frames = []
    rig = make_rig(session, "latency_tf", frames)
    send(rig, T0_US, info_first=True)
    assert not frames, "a frame was released before any camera had TF"
    rig._tf_callback(static_tf(CAMERAS), static=True)
    assert len(frames) == 1, f"the set waited for a retry tick after its TF arrived: {rig.stats}"
    assert frames[0].cameras == CAMERAS and not frames[0].missing
    rig.destroy()


def mixed_frame() -> RigFrame:
    """JPEGs of different content, one unsupported encoding and one distorted camera (rectified)."""
    rng = np.random.default_rng(0)
    names = ["a", "bad", "c", "distorted", "e"]
    messages, infos = [], []
    for name in names:
        pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        info = intrinsics_to_camera_info(CameraIntrinsics(K, 64, 48), header(name, T0_US))
        if name == "bad":
            message = rgb_to_image(pixels, header(name, T0_US))
            message.encoding = "yuv422"
        else:
            message = rgb_to_compressed_image(pixels, header(name, T0_US))
        if name == "distorted":
            info.distortion_model, info.d = "plumb_bob", [0.1, -0.05, 0.0, 0.0, 0.0]
        messages.append(message)
        infos.append(info)
    return RigFrame(stamp_ns=T0_US * 1000, output_frame="base_link", cameras=names, frame_ids=names,
                    stamps_ns=[T0_US * 1000] * len(names), messages=messages, infos=infos,
                    output_from_camera=[np.eye(4)] * len(names), rectifier=Rectifier())


def test_decoding_on_a_pool_gives_the_serial_result():
    serial, pooled = mixed_frame(), mixed_frame()
    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = pooled.decode(pool=pool)
    assert failures == serial.decode() and list(failures) == ["bad"]
    assert pooled.cameras == serial.cameras == ["a", "c", "distorted", "e"]
    assert pooled.missing == serial.missing and pooled.distortion == serial.distortion == {
        "a": "raw image: K", "c": "raw image: K", "distorted": "rectified (plumb_bob)", "e": "raw image: K"}
    for got, want in zip(pooled.images, serial.images, strict=True):
        assert np.array_equal(got, want)
    assert all(np.array_equal(a.K, b.K) for a, b in zip(pooled.intrinsics, serial.intrinsics, strict=True))
    assert [m.header.frame_id for m in pooled.messages] == ["a_optical", "c_optical", "distorted_optical",
                                                            "e_optical"]


def test_shared_jobs_do_not_wait_for_a_helper_that_gets_no_cpu():
    def fail() -> int:
        raise ValueError("bad camera")

    release = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(release.wait, 10)  # the only helper is busy (descheduled, on a loaded machine)
        outcomes = share_jobs([lambda: 0, fail, lambda: 2], pool)
        assert all(outcome.done() for outcome in outcomes), "this thread must run the jobs the pool has not started"
        release.set()
    assert [outcomes[0].result(), outcomes[2].result()] == [0, 2]
    with pytest.raises(ValueError, match="bad camera"):
        outcomes[1].result()
