"""distillnerf-bag2nusc: round trips dataroot -> nusc2bag -> bag2nusc on the real nuScenes keyframe, the real DDAD
frames and a synthetic drive (same calibration, ego poses, JPEG bytes and LiDAR points); a 5-camera raw rig with
distortion and odometry-only poses written here as a bag; refusals naming topic and stamp."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from conftest import REPO
from nav_msgs.msg import Odometry
from rclpy.serialization import serialize_message
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage

from distillnerf_core.data.dgp import DDAD_CAMERAS, write_dataroot
from distillnerf_core.data.nuscenes_tables import load_sensor_records
from distillnerf_core.geometry import make_transform, matrix_to_quaternion, quaternion_to_matrix
from distillnerf_ros.tools import nusc2bag
from distillnerf_ros.tools.bag2nusc import Bag2NuscError, Options, convert, main

KEYFRAME = REPO / "data" / "nuscenes_sample"
DDAD = REPO / "data" / "ddad_scene02"
TYPESTORE = get_typestore(Stores.ROS2_KILTED)
TOL = 1e-6


def round_trip(dataroot: Path, tmp: Path, storage: str = "mcap", **options) -> tuple[Path, dict]:
    bag = tmp / "bag"
    nusc2bag.convert(dataroot, bag, storage=storage, progress=False)
    out = tmp / "converted"
    return out, convert(bag, out, Options(**options))


def bag_ego_poses(bag: Path) -> dict[int, np.ndarray]:
    """map <- base_link per stamp (us) as the bag's /tf holds it, read with rosbags (an independent reader); a
    stamp sent twice keeps the later transform, as TF does."""
    poses = {}
    with Reader(bag) as reader:
        for connection, _, data in reader.messages(connections=[c for c in reader.connections if c.topic == "/tf"]):
            for t in TYPESTORE.deserialize_cdr(data, connection.msgtype).transforms:
                q, p = t.transform.rotation, t.transform.translation
                ns = t.header.stamp.sec * 10**9 + t.header.stamp.nanosec
                poses[ns // 1000] = make_transform([q.w, q.x, q.y, q.z], [p.x, p.y, p.z])
    return poses


def assert_same_keyframes(original: Path, converted: Path, channels: list[str], lidar: bool = True,
                          bag: Path | None = None) -> float:
    """Every keyframe record of `original` is in `converted` with the same stamp, calibration (1e-6), ego pose
    (1e-6 m / rad), file bytes (cameras) and points (LiDAR). Where sensors of `original` share a stamp but not
    their ego pose (DDAD), a bag holds one pose at that stamp: the converted pose must be the bag's (1e-6) and
    one of the originals (1e-6). Returns the largest such disagreement of the originals (0 when none)."""
    want = {(r.channel, r.timestamp_us): r for r in load_sensor_records(original)
            if r.is_key_frame and r.channel in channels + (["LIDAR_TOP"] if lidar else [])}
    got = {(r.channel, r.timestamp_us): r for r in load_sensor_records(converted)}
    assert set(want) <= set(got), f"missing after the round trip: {sorted(set(want) - set(got))[:4]}"
    by_stamp: dict[int, list[np.ndarray]] = {}
    for (_, stamp_us), record in want.items():
        by_stamp.setdefault(stamp_us, []).append(record.global_from_ego)
    spread = {t: max(np.abs(p - poses[0]).max() for p in poses) for t, poses in by_stamp.items()}
    in_bag = bag_ego_poses(bag) if bag is not None and max(spread.values()) > 0 else {}
    for key, record in want.items():
        back = got[key]
        error = np.abs(record.ego_from_sensor - back.ego_from_sensor).max()
        assert error < TOL, f"{key}: ego_from_sensor differs by {error}"
        if spread[key[1]] > 0:
            assert np.abs(back.global_from_ego - in_bag[key[1]]).max() < TOL, f"{key}: not the bag's ego pose"
            assert min(np.abs(back.global_from_ego - p).max() for p in by_stamp[key[1]]) < TOL
        else:
            error = np.abs(record.global_from_ego - back.global_from_ego).max()
            assert error < TOL, f"{key}: global_from_ego differs by {error}"
        if record.modality == "camera":
            assert np.abs(record.intrinsics - back.intrinsics).max() < TOL, f"{key}: K differs"
            assert (record.width, record.height) == (back.width, back.height)
            assert record.path.read_bytes() == back.path.read_bytes(), f"{key}: JPEG bytes changed"
        else:
            points = np.fromfile(record.path, "<f4").reshape(-1, 5)
            assert np.array_equal(points, np.fromfile(back.path, "<f4").reshape(-1, 5)), f"{key}: points changed"
    assert len(want) == len({k for k in want if k in got})
    return max(spread.values())


def test_nuscenes_keyframe_round_trip_is_exact_and_the_devkit_loads_it(tmp_path):
    out, report = round_trip(KEYFRAME, tmp_path, lidar_topic="/LIDAR_TOP")
    assert report["keyframes"] == 1 and report["skipped"] == {}
    assert assert_same_keyframes(KEYFRAME, out, list(Options().cameras)) == 0
    from nuscenes.nuscenes import NuScenes

    tables = sorted(p.stem for p in (out / "v1.0-bag").glob("*.json"))
    assert len(tables) == 13, tables
    nusc = NuScenes("v1.0-bag", str(out), verbose=False)
    (sample,) = nusc.sample
    assert sorted(sample["data"]) == sorted([*Options().cameras, "LIDAR_TOP"])
    assert json.loads((out / "bag2nusc.json").read_text())["keyframes"] == 1


def test_ddad_round_trip_from_sqlite_with_the_ddad_parameter_file(tmp_path):
    root = write_dataroot(DDAD, tmp_path / "ddad", masks=False)
    bag = tmp_path / "bag"
    nusc2bag.convert(root, bag, storage="sqlite3", progress=False)
    out = tmp_path / "converted"
    assert main([str(bag), "--out", str(out), "--params", str(REPO / "config" / "ddad.yaml"),
                 "--lidar-topic", "/LIDAR_TOP", "--rate", "0"]) == 0
    # DDAD's six cameras of a frame share one stamp, but the ego poses their DGP sensor poses give disagree by up
    # to 9.1 mm: the bag (TF) holds one of them, the converter returns exactly that one
    spread = assert_same_keyframes(root, out, list(DDAD_CAMERAS), bag=bag)
    assert 0.008 < spread < 0.0092, spread
    assert len(load_sensor_records(out)) == 3 * 7


SYNTH_CAMERAS = ["CAM_FRONT", "CAM_FRONT_LEFT", "CAM_FRONT_RIGHT"]  # distillnerf-synth's front3 rig


@pytest.fixture(scope="module")
def synthetic_drive(tmp_path_factory):
    """A 2-keyframe synthetic drive (distillnerf-synth's world, front3 rig, 64x32 cameras) and its bag."""
    from distillnerf_core.data.synthetic.export import write_dataroot as synth
    from distillnerf_core.data.synthetic.world import VoxelSpec

    root = tmp_path_factory.mktemp("synth") / "root"
    synth(root, frames=2, seed=11, cameras="front3", width=64, height=32, voxel_spec=VoxelSpec(voxel_size=1.6),
          progress=False, threads=1)
    bag = root.parent / "bag"
    nusc2bag.convert(root, bag, progress=False)
    return root, bag


def test_synthetic_drive_round_trip(synthetic_drive, tmp_path):
    root, bag = synthetic_drive
    report = convert(bag, tmp_path / "converted", Options(cameras=SYNTH_CAMERAS, lidar_topic="/LIDAR_TOP", rate=2.0))
    assert report["keyframes"] == 2 and report["skipped"] == {}, report
    assert assert_same_keyframes(root, tmp_path / "converted", SYNTH_CAMERAS) == 0
    assert len(load_sensor_records(tmp_path / "converted")) == 2 * 4
    # at 1 Hz only the first of the 2 Hz keyframes is kept
    one = convert(bag, tmp_path / "one", Options(cameras=SYNTH_CAMERAS, lidar_topic="/LIDAR_TOP", rate=1.0))
    assert one["keyframes"] == 1 and one["between_keyframes"] == 1, one
    # --start / --end cut the drive (fit on one part, score on another): only the second keyframe
    late = convert(bag, tmp_path / "late", Options(cameras=SYNTH_CAMERAS, lidar_topic="/LIDAR_TOP", start=0.25))
    assert late["keyframes"] == 1 and late["first_stamp_ns"] == report["last_stamp_ns"], late


# -- a rig written here: 5 raw cameras with plumb_bob distortion, poses from nav_msgs/Odometry only --------------
W, H = 64, 48
K = np.array([[40.0, 0.0, 32.0], [0.0, 40.0, 24.0], [0.0, 0.0, 1.0]])
D = [-0.3, 0.06, 0.002, -0.001, 0.0]
RIG = [f"cam{i}" for i in range(5)]
YAW_RATE, SPEED = 0.4, 8.0  # rad/s, m/s: constant, so slerp / lerp between odometry stamps are exact
T0 = 1_700_000_000 * 10**9


def stamp(ns: int) -> Time:
    return Time(sec=ns // 10**9, nanosec=ns % 10**9)


def ego_at(ns: int) -> np.ndarray:
    t = (ns - T0) / 1e9
    yaw = YAW_RATE * t
    return make_transform([np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)], [SPEED * t, 0.0, 0.0])


def camera_extrinsic(i: int) -> np.ndarray:
    """base_link <- optical camera i, looking out at 72 degree steps, 1.5 m up."""
    yaw = 2 * np.pi * i / 5
    body = make_transform([np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)], [0.5 * np.cos(yaw), 0.5 * np.sin(yaw), 1.5])
    optical = np.eye(4)
    optical[:3, :3] = quaternion_to_matrix([0.5, -0.5, 0.5, -0.5])
    return body @ optical


def pattern(x: np.ndarray, y: np.ndarray, i: int) -> np.ndarray:
    """A smooth colour pattern over normalised pinhole coordinates (what an undistorted camera would see)."""
    return np.stack([128 + 90 * np.sin(5 * x + i), 128 + 90 * np.cos(6 * y), 128 + 60 * np.sin(2 * (x + y))],
                    -1)


def undistort(xd: np.ndarray, yd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse plumb_bob by fixed-point iteration (independent of the package's forward map)."""
    k1, k2, p1, p2, k3 = D
    x, y = xd.copy(), yd.copy()
    for _ in range(50):
        r2 = x * x + y * y
        radial = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
        x = (xd - (2 * p1 * x * y + p2 * (r2 + 2 * x * x))) / radial
        y = (yd - (p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)) / radial
    return x, y


def pixel_rays() -> tuple[np.ndarray, np.ndarray]:
    u, v = np.meshgrid(np.arange(W) + 0.0, np.arange(H) + 0.0)
    return (u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1]


def distorted_image(i: int) -> np.ndarray:
    return np.clip(np.rint(pattern(*undistort(*pixel_rays()), i)), 0, 255).astype(np.uint8)


def camera_info(frame: str, ns: int, d=D, model: str = "plumb_bob") -> CameraInfo:
    info = CameraInfo(header=Header(stamp=stamp(ns), frame_id=frame), width=W, height=H, distortion_model=model)
    info.d, info.k = list(d), K.ravel().tolist()
    info.r, info.p = np.eye(3).ravel().tolist(), np.hstack([K, np.zeros((3, 1))]).ravel().tolist()
    return info


def write_rig_bag(path: Path, frames: int = 3, drop: tuple[str, int] | None = ("cam3", 1), d=D,
                  model: str = "plumb_bob", corrupt: str | None = None) -> list[int]:
    """Odometry at 20 Hz (odom -> base_link), cameras at 10 Hz each 7 ms after the previous one; returns the
    cam0 stamps. `drop` leaves one camera's image of one frame out; `corrupt` breaks a message."""
    from distillnerf_ros.conversions.images import rgb_to_image
    from distillnerf_ros.conversions.nuscenes_messages import transform_stamped

    messages = []
    static = TFMessage(transforms=[transform_stamped("base_link", c, stamp(T0), camera_extrinsic(i))
                                   for i, c in enumerate(RIG)])
    messages.append(("/tf_static", "tf2_msgs/msg/TFMessage", T0, static))
    for k in range(2 * frames + 2):
        ns = T0 + k * 50_000_000
        odom = Odometry(header=Header(stamp=stamp(ns), frame_id="odom"), child_frame_id="base_link")
        pose = ego_at(ns)
        w, x, y, z = matrix_to_quaternion(pose[:3, :3])
        odom.pose.pose.orientation.w, odom.pose.pose.orientation.x = float(w), float(x)
        odom.pose.pose.orientation.y, odom.pose.pose.orientation.z = float(y), float(z)
        odom.pose.pose.position.x, odom.pose.pose.position.y = float(pose[0, 3]), float(pose[1, 3])
        messages.append(("/odom", "nav_msgs/msg/Odometry", ns, odom))
    cam0 = []
    for f in range(frames):
        for i, camera in enumerate(RIG):
            ns = T0 + 20_000_000 + f * 100_000_000 + i * 7_000_000
            cam0 += [ns] if i == 0 else []
            if drop == (camera, f):
                continue
            info = camera_info(camera, ns, d, model)
            image = rgb_to_image(distorted_image(i), Header(stamp=stamp(ns), frame_id=camera))
            if corrupt == "info" and (camera, f) == ("cam2", 1):
                info.k[0] = float("nan")
            if corrupt == "image" and (camera, f) == ("cam2", 1):
                image.data = bytes(image.data)[:100]
            messages.append((f"/{camera}/camera_info", "sensor_msgs/msg/CameraInfo", ns, info))
            messages.append((f"/{camera}/image_raw", "sensor_msgs/msg/Image", ns, image))
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connections = {}
        for topic, msgtype, ns, message in sorted(messages, key=lambda m: m[2]):
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype, typestore=TYPESTORE)
            writer.write(connections[topic], ns, serialize_message(message))
    return cam0


# a relative topic format, as a node in the root namespace resolves it: /cam0/image_raw
RIG_OPTIONS = dict(cameras=RIG, image_topic_format="{camera}/image_raw", compressed=False, fixed_frame="odom",
                   odometry_topic="/odom", rate=0.0, tolerance=0.05)


def test_five_camera_rig_with_distortion_and_odometry_only(tmp_path):
    cam0 = write_rig_bag(tmp_path / "bag")
    from PIL import Image as PILImage

    (tmp_path / "masks").mkdir()
    body = np.full((H, W), 255, np.uint8)
    body[-10:] = 0  # cam1 sees the car's body in its bottom 10 rows
    PILImage.fromarray(body).save(tmp_path / "masks" / "cam1.png")
    report = convert(tmp_path / "bag", tmp_path / "out", Options(**RIG_OPTIONS, masks=str(tmp_path / "masks")))
    mask = np.asarray(PILImage.open(tmp_path / "out" / "masks" / "cam1.png"))
    assert sorted(report["masks"]) == ["cam1"] and mask[-6:].max() == 0 and mask[:30].min() == 255, report["masks"]
    assert report["keyframes"] == 2 and report["skipped"] == {"camera cam3 missing": 1}, report
    records = {(r.channel, r.timestamp_us): r for r in load_sensor_records(tmp_path / "out")}
    x, y = pixel_rays()
    for (channel, _), record in records.items():
        if channel == "LIDAR_TOP":
            assert record.path.stat().st_size == 0, "a camera-only bag gets empty sweeps"
            continue
        i = RIG.index(channel)
        stamp_ns = record.timestamp_us * 1000
        assert np.abs(record.global_from_ego - ego_at(stamp_ns)).max() < TOL, f"{channel}: interpolated ego pose"
        assert np.abs(record.ego_from_sensor - camera_extrinsic(i)).max() < TOL, f"{channel}: extrinsic"
        assert np.abs(record.intrinsics - K).max() < TOL
        rectified = np.asarray(PILImage.open(record.path), dtype=np.float64)
        expected = pattern(x, y, i)
        inner = np.s_[6:-6, 6:-6]  # away from the border (bilinear lookups of the edge pixels)
        error = np.abs(rectified - expected)[inner].mean()
        unrectified = np.abs(distorted_image(i) - expected)[inner].mean()
        assert error < 3.0 and unrectified > 4 * error, f"{channel}: rectified {error:.2f}, raw {unrectified:.2f}"
    sample_stamps = sorted({r.timestamp_us * 1000 for r in records.values() if r.channel == "cam0"})
    assert sample_stamps == [cam0[0], cam0[2]], "frame 1 (cam3 missing) is skipped"


@pytest.mark.parametrize("case,expected", [
    ("absurd", "its distortion cannot be rectified"),
    ("unknown_model", "is not supported"),
    ("info", "non-finite K"),
    ("image", "image data has"),
])
def test_unusable_messages_are_errors_naming_topic_and_stamp(tmp_path, capsys, case, expected):
    d, model = {"absurd": ([3.0, 9.0, 0, 0, 0], "plumb_bob"), "unknown_model": (D, "kannala_brandt_9")}.get(
        case, (D, "plumb_bob"))
    write_rig_bag(tmp_path / "bag", frames=2, drop=None, d=d, model=model,
                  corrupt=case if case in ("info", "image") else None)
    args = [str(tmp_path / "bag"), "--out", str(tmp_path / "out"), "--cameras", ",".join(RIG),
            "--image-topic-format", "/{camera}/image_raw", "--compressed", "false", "--fixed-frame", "odom",
            "--odometry-topic", "/odom", "--rate", "0", "--tolerance", "0.05"]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert expected in error and " s" in error and "Traceback" not in error, error
    if case in ("info", "image"):
        assert "/cam2/" in error and "1700000000.134000000 s" in error, error
    else:
        assert "/cam0/image_raw at 1700000000.020000000 s" in error, error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag"], "a failed conversion left files behind"


def test_what_cannot_be_used_is_skipped_with_the_reason_or_refused(tmp_path, capsys):
    from PIL import Image as PILImage

    write_rig_bag(tmp_path / "bag", frames=2, drop=None)
    # no pose source: every stamp skipped, the error lists why
    with pytest.raises(Bag2NuscError, match=r"(?s)no keyframe.*no TF at that stamp.*'odom' has not been received"):
        convert(tmp_path / "bag", tmp_path / "out", Options(**{**RIG_OPTIONS, "odometry_topic": ""}))
    no_info = Options(**{**RIG_OPTIONS, "camera_info_topic_format": "/{camera}/no"})
    with pytest.raises(Bag2NuscError, match=r"(?s)no keyframe.*CameraInfo of cam0 never seen: e.g. nothing on /cam0/"):
        convert(tmp_path / "bag", tmp_path / "out", no_info)
    with pytest.raises(Bag2NuscError, match=r"topics \['/cam0/image_rect_compressed'"):
        convert(tmp_path / "bag", tmp_path / "out", Options(cameras=RIG))
    with pytest.raises(Bag2NuscError, match=r"has type \['sensor_msgs/msg/Image'\].*--compressed false"):
        convert(tmp_path / "bag", tmp_path / "out", Options(cameras=RIG, image_topic_format="/{camera}/image_raw"))
    with pytest.raises(Bag2NuscError, match="cameras = .* is not allowed"):
        convert(tmp_path / "bag", tmp_path / "out", Options(cameras=["1bad"]))
    (tmp_path / "masks").mkdir()
    PILImage.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "masks" / "cam2.png")
    with pytest.raises(Bag2NuscError, match=r"--masks .*cam2.png is 10x10, but cam2's images are 64x48"):
        convert(tmp_path / "bag", tmp_path / "out", Options(**RIG_OPTIONS, masks=str(tmp_path / "masks")))
    (tmp_path / "exists").mkdir()
    assert main([str(tmp_path / "bag"), "--out", str(tmp_path / "exists")]) == 2
    assert "exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag", "exists", "masks"]



def test_bag_recorded_live_from_the_node_input_topics_converts_like_the_dataroot(synthetic_drive, session, tmp_path):
    """The synthetic drive published live over DDS on the node's input topics (dataroot_publisher), recorded here
    as `ros2 bag record` would (bag time = receive time), converted: the cameras' stamps, calibration, ego poses
    and JPEG bytes are the dataroot's (no LiDAR topic: empty sweeps at the reference camera's stamps)."""
    import time as _time

    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CompressedImage

    from distillnerf_ros.input.rig_input import TF_QOS, TF_STATIC_QOS
    from distillnerf_ros.nodes.dataroot_publisher import DatarootPublisher
    from ros_helpers import wait_for_match

    root, _ = synthetic_drive
    options = Options(cameras=SYNTH_CAMERAS)  # the node's topics: /{camera}/image_rect_compressed, .../camera_info
    source = session.node("source", DatarootPublisher, dataroot=str(root), version=None)
    recorder, received = session.node("recorder"), []
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    topics = {"/tf": (TFMessage, TF_QOS), "/tf_static": (TFMessage, TF_STATIC_QOS)}
    for camera in options.cameras:
        topics[options.image_topic(camera)] = (CompressedImage, reliable)
        topics[options.info_topic(camera)] = (CameraInfo, reliable)
    for topic, (cls, qos) in topics.items():
        recorder.create_subscription(cls, topic, lambda data, t=topic: received.append((t, _time.time_ns(), data)),
                                     qos, raw=True)
    wait_for_match(session, [*source.image_pubs.values(), *source.info_pubs.values(), source.tf_pub])
    sent = source.publish_all()
    assert session.spin_until(lambda: len(received) >= sent + 1, 10.0), f"{len(received)} of {sent + 1} received"
    with Writer(tmp_path / "live", version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connections = {t: writer.add_connection(t, cls.__module__.split(".")[0] + "/msg/" + cls.__name__,
                                                typestore=TYPESTORE) for t, (cls, _) in topics.items()}
        for topic, bag_ns, data in received:
            writer.write(connections[topic], bag_ns, data)
    report = convert(tmp_path / "live", tmp_path / "out", options)
    assert report["keyframes"] == 2 and report["reference"] == "CAM_FRONT", report
    assert assert_same_keyframes(root, tmp_path / "out", list(options.cameras), lidar=False) == 0
    stamps = {r.timestamp_us * 1000 for r in load_sensor_records(root)}
    assert not stamps & {bag_ns for _, bag_ns, _ in received}, "bag times are receive times, not the stamps"


def test_fine_tune_recipe_on_a_tiny_bag(synthetic_drive, tiny_checkpoint, tmp_path, capsys):
    """docs/tools.md's recipe end to end: bag -> bag2nusc -> distillnerf-train --init -> distillnerf-eval (the tiny
    model stands in for the bundled one, whose step costs ~10 s on a CPU)."""
    from distillnerf_core.cli import eval as eval_cli
    from distillnerf_core.cli import train as train_cli

    _, bag = synthetic_drive
    data = tmp_path / "mycar"
    cameras = ",".join(SYNTH_CAMERAS)
    assert main([str(bag), "--out", str(data), "--cameras", cameras, "--lidar-topic", "/LIDAR_TOP"]) == 0
    assert train_cli.main(["--config", "train_tiny", "--init", str(tiny_checkpoint), "--dataroot", str(data),
                           "--version", "v1.0-bag", "--out", str(tmp_path / "run"), "--max-steps", "1",
                           "--no-progress", "--threads", "1"]) == 0
    assert eval_cli.main(["--checkpoint", str(tmp_path / "run" / "model.safetensors"), "--dataroot", str(data),
                          "--version", "v1.0-bag", "--json", str(tmp_path / "eval.json"), "--no-progress",
                          "--threads", "1"]) == 0
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert metrics["num_samples"] == 2 and np.isfinite(metrics["psnr"]) and 0 < metrics["abs_rel"] < 10, metrics
