"""Camera rigs for the synthetic world: the real nuScenes 6-camera rig and simpler ones.

`nuscenes` reads the real calibration (intrinsics, camera-to-ego extrinsics, LiDAR-to-ego) and the
real firing offsets of the cameras relative to the LiDAR from the keyframe in data/nuscenes_sample;
intrinsics are scaled from the native 1600x900 to the requested resolution. `waymo5` (5 cameras:
front, front-left/right at +-45 deg, side-left/right at +-90 deg) and `front3` (the Waymo variant's 3
front cameras) are pinhole rigs with a 55 deg horizontal field of view on the roof. A comma-separated
list of nuScenes channels selects a subset of the nuScenes rig.

`random` rigs are drawn per scene, deterministic from (seed, scene index): `random5` .. `random8` have that
many cameras, `random` a count in 5..8 drawn once per seed (every scene of a dataroot has the same channels, as
the loader needs). Per scene and camera: the mount (a roof height of 1.40-1.95 m for the vehicle, +-8 cm per
camera, the camera 0.3-0.9 m out from the roof centre towards its view), yaw (+-6 deg around the layout's),
pitch (-2..+7 deg down), horizontal field of view (the layout's range per camera), the principal point (+-2 %
of the image) and, for half of the cameras (LENS_PROBABILITY), a barrel lens distortion (lens.random_lens; the
export renders the raw image through it and rectifies it: a raw render plus a geometry-only render for the
exact ground truth, ~1.4x a pinhole camera's cost, which is why not every camera has one). Layouts (channel,
yaw, field of view): 5 = Waymo's (front, front-left/right at +-45 deg, sides at +-90 deg), 6 = nuScenes'
(front, front-left/right at +-55, back-left/right at +-110, back), 7 = a ring like Argoverse 2's (front,
+-45, +-100, +-150), 8 = the ring and a narrow front camera. Channel names never make a 5/7/8-camera rig a
superset of the nuScenes six (the loader would read only those six).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distillnerf_core.data.bundled import bundled_data
from distillnerf_core.data.nuscenes_tables import NUSCENES_CAMERAS
from distillnerf_core.data.synthetic.lens import Lens, random_lens
from distillnerf_core.geometry import make_transform

RIG_NAMES = ("nuscenes", "waymo5", "front3", "random", "random5", "random6", "random7", "random8")
# LIDAR_TOP of the real keyframe (used by the non-nuScenes rigs, which need no calibration file).
NUSCENES_LIDAR_TRANSLATION = [0.943713, 0.0, 1.84023]
NUSCENES_LIDAR_ROTATION = [0.7077955119163518, -0.006492242056004365, 0.010646214713995808, -0.7063073142877817]


@dataclass
class CameraSpec:
    channel: str
    K: np.ndarray  # (3, 3) at the rig's render resolution
    width: int
    height: int
    cam2ego: np.ndarray  # (4, 4) optical camera frame (x right, y down, z forward) to ego
    time_offset_us: int  # firing time relative to the LiDAR keyframe timestamp
    lens: Lens | None = None  # a distorted lens (the raw image is rectified to K); None: pinhole


@dataclass
class Rig:
    name: str
    cameras: list[CameraSpec]
    lidar2ego: np.ndarray


def optical_to_ego(yaw_deg: float, translation, pitch_down_deg: float = 0.0) -> np.ndarray:
    """cam2ego of a camera looking along ego yaw `yaw_deg` (x forward, y left), optical axes."""
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_down_deg)
    fwd = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), -math.sin(pitch)])
    right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
    down = np.cross(fwd, right)
    return make_transform(np.stack([right, down, fwd], axis=1), translation)


def _pinhole(width: int, height: int, hfov_deg: float) -> np.ndarray:
    f = width / 2 / math.tan(math.radians(hfov_deg) / 2)
    return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])


def load_nuscenes_rig(width: int, height: int, channels=NUSCENES_CAMERAS,
                      calibration_root: str | Path | None = None) -> Rig:
    root = Path(calibration_root) if calibration_root is not None else bundled_data("nuscenes_sample")
    table_dir = next((p for p in sorted(root.glob("v1.0-*")) if (p / "calibrated_sensor.json").exists()), None)
    if table_dir is None:
        raise FileNotFoundError(f"no v1.0-*/calibrated_sensor.json under {root} (the nuScenes rig is read from it)")
    tables = {n: json.loads((table_dir / f"{n}.json").read_text()) for n in
              ("sensor", "calibrated_sensor", "sample_data")}
    channel_of = {s["token"]: s["channel"] for s in tables["sensor"]}
    calib = {channel_of[c["sensor_token"]]: c for c in tables["calibrated_sensor"]}
    stamp = {}
    for sd in tables["sample_data"]:
        stamp[channel_of[next(c["sensor_token"] for c in tables["calibrated_sensor"]
                              if c["token"] == sd["calibrated_sensor_token"])]] = (sd["timestamp"], sd)
    lidar_t = stamp["LIDAR_TOP"][0]
    cams = []
    for ch in channels:
        if ch not in calib:
            raise KeyError(f"camera {ch} not in {table_dir / 'calibrated_sensor.json'}")
        c = calib[ch]
        t, sd = stamp[ch]
        sx, sy = width / sd["width"], height / sd["height"]
        K = np.diag([sx, sy, 1.0]) @ np.array(c["camera_intrinsic"], dtype=float)
        cams.append(CameraSpec(ch, K, width, height, make_transform(c["rotation"], c["translation"]),
                               int(t - lidar_t)))
    lid = calib["LIDAR_TOP"]
    return Rig("nuscenes", cams, make_transform(lid["rotation"], lid["translation"]))


# Random rig layouts: (channel, yaw deg, horizontal field of view range deg), in the table's camera order.
_FRONT, _NARROW = (45.0, 70.0), (28.0, 40.0)
_SIDE, _BACK = (55.0, 90.0), (70.0, 110.0)
RANDOM_LAYOUTS = {
    5: [("CAM_FRONT", 0, _FRONT), ("CAM_FRONT_RIGHT", -45, _SIDE), ("CAM_FRONT_LEFT", 45, _SIDE),
        ("CAM_SIDE_LEFT", 90, _SIDE), ("CAM_SIDE_RIGHT", -90, _SIDE)],
    6: [("CAM_FRONT", 0, _FRONT), ("CAM_FRONT_RIGHT", -55, _SIDE), ("CAM_FRONT_LEFT", 55, _SIDE),
        ("CAM_BACK", 180, _BACK), ("CAM_BACK_LEFT", 110, _SIDE), ("CAM_BACK_RIGHT", -110, _SIDE)],
    7: [("CAM_FRONT", 0, _FRONT), ("CAM_FRONT_RIGHT", -45, _SIDE), ("CAM_FRONT_LEFT", 45, _SIDE),
        ("CAM_BACK_LEFT", 150, _SIDE), ("CAM_BACK_RIGHT", -150, _SIDE), ("CAM_SIDE_LEFT", 100, _SIDE),
        ("CAM_SIDE_RIGHT", -100, _SIDE)],
}
RANDOM_LAYOUTS[8] = RANDOM_LAYOUTS[7] + [("CAM_FRONT_NARROW", 0, _NARROW)]
LENS_PROBABILITY = 0.5  # share of a random rig's cameras with a distorted lens


def random_camera_count(name: str, seed: int) -> int:
    """Cameras of a `random*` rig: the digit of `randomN`, for `random` a count in 5..8 fixed by the seed."""
    if name == "random":
        return int(np.random.default_rng([int(seed), 31337]).integers(5, 9))
    digits = name[len("random"):]
    count = int(digits) if digits.isdigit() else -1
    if count not in RANDOM_LAYOUTS:
        raise ValueError(f"unknown rig {name!r}: random rigs have {min(RANDOM_LAYOUTS)}-{max(RANDOM_LAYOUTS)} cameras")
    return count


def random_rig(width: int, height: int, cameras: int, seed: int, scene_index: int, lenses: bool = True) -> Rig:
    """The random rig of one scene (module docstring), deterministic from (seed, scene_index); `lenses` False
    keeps the same draws and leaves the lenses pinhole."""
    rng = np.random.default_rng([int(seed), int(scene_index), 2718])
    roof = float(rng.uniform(1.40, 1.95))
    roof_x = float(rng.uniform(0.6, 1.4))
    base_pitch = float(rng.uniform(0.0, 4.0))
    layout = RANDOM_LAYOUTS[cameras]
    offsets = np.linspace(-45000, -5000, len(layout)).astype(int)
    cams = []
    for (channel, yaw0, (fov_lo, fov_hi)), offset in zip(layout, offsets, strict=True):
        yaw = yaw0 + float(rng.uniform(-6.0, 6.0))
        pitch = float(np.clip(base_pitch + rng.normal(0.0, 2.0), -2.0, 7.0))
        hfov = float(rng.uniform(fov_lo, fov_hi))
        reach = float(rng.uniform(0.3, 0.9))
        a = math.radians(yaw)
        translation = [roof_x + reach * math.cos(a), 0.7 * reach * math.sin(a), roof + float(rng.uniform(-0.08, 0.08))]
        K = _pinhole(width, height, hfov)
        K[0, 2] += float(rng.uniform(-0.02, 0.02)) * width
        K[1, 2] += float(rng.uniform(-0.02, 0.02)) * height
        lens = random_lens(rng, K, (width, height))
        lensed = bool(rng.random() < LENS_PROBABILITY) and lenses  # drawn either way: lenses=False keeps the rest
        cams.append(CameraSpec(channel, K, width, height, optical_to_ego(yaw, translation, pitch),
                               int(offset) + int(rng.integers(-2000, 2001)), lens if lensed else None))
    rig = Rig(f"random{cameras}", cams, make_transform(NUSCENES_LIDAR_ROTATION, NUSCENES_LIDAR_TRANSLATION))
    return rig


def load_rig(name: str, width: int, height: int, calibration_root: str | Path | None = None, seed: int = 0,
             scene_index: int = 0, lenses: bool = True) -> Rig:
    """The rig `name` (RIG_NAMES or a comma list of nuScenes channels) at this image size; `seed`,
    `scene_index` and `lenses` only shape the random rigs (the fixed ones are the same for every scene)."""
    lidar2ego = make_transform(NUSCENES_LIDAR_ROTATION, NUSCENES_LIDAR_TRANSLATION)
    if name.startswith("random"):
        return random_rig(width, height, random_camera_count(name, seed), seed, scene_index, lenses)
    if name == "nuscenes":
        return load_nuscenes_rig(width, height, NUSCENES_CAMERAS, calibration_root)
    if name == "waymo5":
        layout = [("CAM_FRONT", 0), ("CAM_FRONT_LEFT", 45), ("CAM_FRONT_RIGHT", -45), ("CAM_SIDE_LEFT", 90),
                  ("CAM_SIDE_RIGHT", -90)]
    elif name == "front3":
        layout = [("CAM_FRONT", 0), ("CAM_FRONT_LEFT", 45), ("CAM_FRONT_RIGHT", -45)]
    elif all(ch.strip() in NUSCENES_CAMERAS for ch in name.split(",")):
        rig = load_nuscenes_rig(width, height, [c.strip() for c in name.split(",")], calibration_root)
        rig.name = "custom"
        return rig
    else:
        raise ValueError(f"unknown rig {name!r}: use one of {RIG_NAMES} or a comma list of {NUSCENES_CAMERAS}")
    offsets = np.linspace(-45000, -5000, len(layout)).astype(int)
    cams = [CameraSpec(ch, _pinhole(width, height, 55.0), width, height,
                       optical_to_ego(yaw, [1.5 * math.cos(math.radians(yaw)), 0.2 * math.sin(math.radians(yaw)),
                                            2.0], 2.0), int(off))
            for (ch, yaw), off in zip(layout, offsets, strict=True)]
    return Rig(name, cams, lidar2ego)
