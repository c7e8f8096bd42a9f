#!/usr/bin/env python3
"""The round trip dataroot -> distillnerf-nusc2bag -> distillnerf-bag2nusc at full size, and what survives it.

    .venv/bin/python benchmarks/bag2nusc_roundtrip.py [--json benchmarks/results/bag2nusc_roundtrip.json]

Sources: the real nuScenes keyframe (data/nuscenes_sample), the real DDAD frames (data/ddad_scene02 through
distillnerf-dgp2nusc, ego masks derived) and a synthetic drive (distillnerf-synth, 4 keyframes, 6 cameras
456x256). Per source: the keyframes and records back, the largest difference of the calibration (extrinsic,
intrinsics), of the ego poses (for sensors that share a stamp but not their ego pose, as DDAD's cameras do:
against the pose the bag's /tf holds at that stamp, and that spread itself), the images whose bytes are
unchanged, the sweeps whose points are unchanged, and the seconds each conversion took (in-process, imports
excluded). test/ros/tools/test_bag2nusc.py asserts the same on small inputs; this records the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distillnerf_core.data.dgp import DDAD_CAMERAS, write_dataroot  # noqa: E402
from distillnerf_core.data.nuscenes_tables import NUSCENES_CAMERAS, load_sensor_records  # noqa: E402
from distillnerf_core.data.synthetic.export import write_dataroot as synthesize  # noqa: E402
from distillnerf_core.geometry import make_transform  # noqa: E402
from distillnerf_core.provenance import command_line, provenance  # noqa: E402

SYNTH = {"frames": 4, "seed": 101, "width": 456, "height": 256}


def bag_ego_poses(bag: Path) -> dict[int, np.ndarray]:
    """map <- base_link per stamp (us) as the bag's /tf holds it (a stamp sent twice: the later one, as TF)."""
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    typestore, poses = get_typestore(Stores.ROS2_KILTED), {}
    with Reader(bag) as reader:
        for connection, _, data in reader.messages(connections=[c for c in reader.connections if c.topic == "/tf"]):
            for t in typestore.deserialize_cdr(data, connection.msgtype).transforms:
                q, p = t.transform.rotation, t.transform.translation
                poses[(t.header.stamp.sec * 10**9 + t.header.stamp.nanosec) // 1000] = make_transform(
                    [q.w, q.x, q.y, q.z], [p.x, p.y, p.z])
    return poses


def compare(original: Path, converted: Path, bag: Path, channels: list[str]) -> dict:
    """What of the original's keyframe records came back unchanged (see the module docstring)."""
    want = {(r.channel, r.timestamp_us): r for r in load_sensor_records(original)
            if r.is_key_frame and r.channel in [*channels, "LIDAR_TOP"]}
    got = {(r.channel, r.timestamp_us): r for r in load_sensor_records(converted)}
    by_stamp: dict[int, list[np.ndarray]] = {}
    for (_, stamp), record in want.items():
        by_stamp.setdefault(stamp, []).append(record.global_from_ego)
    spread = {t: max(float(np.abs(p - poses[0]).max()) for p in poses) for t, poses in by_stamp.items()}
    in_bag = bag_ego_poses(bag)
    out = {"records": len(want), "records_back": sum(k in got for k in want), "extrinsic_max_diff": 0.0,
           "intrinsics_max_diff": 0.0, "ego_pose_max_diff": 0.0, "ego_pose_max_diff_to_bag_tf": 0.0,
           "shared_stamp_ego_pose_spread": max(spread.values()), "images": 0, "images_same_bytes": 0,
           "sweeps": 0, "sweeps_same_points": 0, "lidar_points": 0}
    for key, record in want.items():
        back = got[key]
        out["extrinsic_max_diff"] = max(out["extrinsic_max_diff"],
                                        float(np.abs(record.ego_from_sensor - back.ego_from_sensor).max()))
        out["ego_pose_max_diff"] = max(out["ego_pose_max_diff"],
                                       float(np.abs(record.global_from_ego - back.global_from_ego).max()))
        out["ego_pose_max_diff_to_bag_tf"] = max(out["ego_pose_max_diff_to_bag_tf"],
                                                 float(np.abs(in_bag[key[1]] - back.global_from_ego).max()))
        if record.modality == "camera":
            out["images"] += 1
            out["images_same_bytes"] += record.path.read_bytes() == back.path.read_bytes()
            out["intrinsics_max_diff"] = max(out["intrinsics_max_diff"],
                                             float(np.abs(record.intrinsics - back.intrinsics).max()))
        else:
            points = np.fromfile(record.path, "<f4").reshape(-1, 5)
            out["sweeps"] += 1
            out["lidar_points"] += len(points)
            out["sweeps_same_points"] += bool(np.array_equal(points, np.fromfile(back.path, "<f4").reshape(-1, 5)))
    return out


def round_trip(name: str, root: Path, work: Path, channels: list[str], **options) -> dict:
    from distillnerf_ros.tools import bag2nusc, nusc2bag

    bag, converted = work / f"{name}_bag", work / f"{name}_converted"
    started = time.perf_counter()
    nusc2bag.convert(root, bag, progress=False)
    to_bag = time.perf_counter() - started
    started = time.perf_counter()
    report = bag2nusc.convert(bag, converted, bag2nusc.Options(cameras=channels, lidar_topic="/LIDAR_TOP",
                                                                 **options))
    back = time.perf_counter() - started
    return {"keyframes": report["keyframes"], "skipped": report["skipped"], "nusc2bag_s": round(to_bag, 2),
            "bag2nusc_s": round(back, 2), **compare(root, converted, bag, channels)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "bag2nusc_roundtrip.json")
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="distillnerf_bag2nusc_") as tmp:
        work = Path(tmp)
        results["nuScenes keyframe"] = round_trip("keyframe", REPO / "data" / "nuscenes_sample", work,
                                                  list(NUSCENES_CAMERAS))
        ddad = write_dataroot(REPO / "data" / "ddad_scene02", work / "ddad")
        results["DDAD (3 frames)"] = round_trip("ddad", ddad, work, list(DDAD_CAMERAS), rate=0.0,
                                                max_camera_delay=0.05)
        synthesize(work / "synthetic", progress=False, threads=1, **SYNTH)
        results[f"synthetic drive ({SYNTH['frames']} keyframes)"] = round_trip("synthetic", work / "synthetic", work,
                                                                              list(NUSCENES_CAMERAS))
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    doc = {"sources": results, "provenance": provenance(
        command_line("python benchmarks/bag2nusc_roundtrip.py", argv), model="none",
        data="data/nuscenes_sample, data/ddad_scene02, distillnerf-synth seed 101 (4 keyframes, 456x256)",
        load=f"a 2-core machine shared by 8 engineers: load average {load} (1 / 5 / 15 min) at the end; seconds"
             " are wall time")}
    for name, r in results.items():
        print(f"{name:32s} {r['keyframes']} keyframes, {r['records_back']}/{r['records']} records;"
              f" extrinsic {r['extrinsic_max_diff']:.1e}, K {r['intrinsics_max_diff']:.1e}, ego pose"
              f" {r['ego_pose_max_diff']:.1e} (to the bag's TF {r['ego_pose_max_diff_to_bag_tf']:.1e}; shared-stamp"
              f" spread {r['shared_stamp_ego_pose_spread']:.1e}); images same bytes {r['images_same_bytes']}/"
              f"{r['images']}, sweeps same points {r['sweeps_same_points']}/{r['sweeps']}; nusc2bag"
              f" {r['nusc2bag_s']} s, bag2nusc {r['bag2nusc_s']} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
