"""Read a DGP scene (TRI's format: DDAD and other DGP datasets) and write it as a nuScenes-format dataroot.

DGP layout read here (see data/ddad_scene02/README.md):

    scene_<sha>.json           samples[] (datum_keys, calibration_key) and data[] (datums: id.name,
                               id.timestamp, datum.image | datum.point_cloud with filename and pose)
    calibration/<key>.json     names[], intrinsics[] (fx, fy, cx, cy, skew), extrinsics[] (sensor -> body)
    rgb/<CAMERA>/<t>.jpg, point_cloud/<LIDAR>/<t>.npz (key `data`: X, Y, Z, INTENSITY in the sensor frame)

Conventions of the conversion (`write_dataroot`, the `distillnerf-dgp2nusc` command):

- Channel names: a camera datum `CAMERA_nn` keeps its name as the nuScenes channel (`CAMERA_01` ...);
  the LiDAR datum `LIDAR` becomes `LIDAR_TOP` (the channel the dataset and the bag tools read). Any
  other sensor name is an error. `DDAD_CAMERAS` lists DDAD's 6 cameras in the nuScenes rig's order
  (front, front-right, front-left, back, back-left, back-right), the order a model trained on the nuScenes
  rig conditions its per-camera decoder on.
- Poses: a DGP datum pose is the SENSOR's pose in the world at the datum's time; the ego (vehicle body)
  pose at that time is pose_body = pose_sensor * inverse(extrinsic). Every sample_data row gets its own
  ego_pose row (each camera's ego pose at its own timestamp), calibrated_sensor = the extrinsic.
- Timestamps: DDAD's file names are times in units of 100 ns, and the ISO `id.timestamp` strings were
  written as if those numbers were microseconds (year 2464). With `timestamp_unit="100ns"` (default) the
  ISO string is read back to that integer N, checked against a numeric file name, and converted to
  microseconds exactly as (N + 5) // 10. `timestamp_unit="us"` takes the ISO time as it is. A result
  outside the years 2000-2100 is an error that suggests the other unit.
- LiDAR: nuScenes `.pcd.bin` layout, float32 x 5 = x, y, z, intensity (as DGP gives it, 0-1 for DDAD),
  ring (DGP has none: 0), in the LiDAR frame.
- Output is written to a temporary folder beside OUT and renamed into place: a failed conversion
  leaves no partial dataroot.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from distillnerf_core.geometry import invert_transform, make_transform, matrix_to_quaternion

VERSION = "v1.0-dgp"
LIDAR_CHANNEL = "LIDAR_TOP"
CAMERA_NAME = re.compile(r"^CAMERA_\d{2}$")
LIDAR_NAMES = {"LIDAR": LIDAR_CHANNEL}
# DDAD's cameras in the nuScenes rig's order (front, front-right, front-left, back, back-left, back-right);
# the directions are checked against the extrinsics in test/core/data/test_dgp.py.
DDAD_CAMERAS = ("CAMERA_01", "CAMERA_06", "CAMERA_05", "CAMERA_09", "CAMERA_07", "CAMERA_08")
MAP_FILENAME = "maps/dgp_placeholder.png"
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


class DGPFormatError(ValueError):
    """A DGP scene that cannot be converted; the message names the file and the key."""


@dataclass(frozen=True)
class DGPDatum:
    """One sensor reading: where its file is, when it was taken, where the sensor was."""

    key: str
    name: str  # DGP sensor name, e.g. CAMERA_01, LIDAR
    channel: str  # nuScenes channel, e.g. CAMERA_01, LIDAR_TOP
    modality: str  # camera | lidar
    path: Path
    timestamp_us: int
    world_from_sensor: np.ndarray  # 4x4
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class DGPSensorCalibration:
    name: str
    body_from_sensor: np.ndarray  # 4x4 extrinsic (sensor -> vehicle body)
    intrinsics: np.ndarray | None  # 3x3 for cameras


@dataclass
class DGPScene:
    root: Path
    scene_file: Path
    name: str
    log: str
    calibration_file: Path
    calibration: dict[str, DGPSensorCalibration]
    frames: list[dict[str, DGPDatum]] = field(default_factory=list)  # per sample: DGP name -> datum

    @property
    def cameras(self) -> list[str]:
        """Camera channels present in every frame, sorted by name."""
        names = set.intersection(*(set(f) for f in self.frames)) if self.frames else set()
        return sorted(self.frames[0][n].channel for n in names if self.frames[0][n].modality == "camera")

    def ego_pose(self, datum: DGPDatum) -> np.ndarray:
        """world <- body at the datum's timestamp: pose_sensor * inverse(extrinsic)."""
        return datum.world_from_sensor @ invert_transform(self.calibration[datum.name].body_from_sensor)

    def lidar(self, index: int) -> DGPDatum:
        return next(d for d in self.frames[index].values() if d.modality == "lidar")


def channel_for(name: str, where: str) -> tuple[str, str]:
    """(nuScenes channel, modality) of a DGP sensor name; unknown names are a DGPFormatError naming `where`."""
    if CAMERA_NAME.match(name):
        return name, "camera"
    if name in LIDAR_NAMES:
        return LIDAR_NAMES[name], "lidar"
    raise DGPFormatError(f"{where}: unknown sensor name {name!r} (expected CAMERA_nn or one of {sorted(LIDAR_NAMES)})")


def _pose(record: dict, where: str) -> np.ndarray:
    try:
        r, t = record["rotation"], record["translation"]
        return make_transform([r["qw"], r["qx"], r["qy"], r["qz"]], [t["x"], t["y"], t["z"]])
    except (KeyError, TypeError) as error:
        raise DGPFormatError(f"{where}: pose needs rotation (qw, qx, qy, qz) and translation (x, y, z): "
                             f"missing {error}") from error


def parse_timestamp_us(iso: str, unit: str = "100ns", filename: str | None = None, where: str = "") -> int:
    """Microseconds since the epoch of a DGP `id.timestamp` (see the module docstring for `unit`)."""
    if unit not in ("100ns", "us"):
        raise ValueError(f"timestamp unit must be '100ns' or 'us', not {unit!r}")
    text = iso.rstrip("Z")
    try:
        fmt = "%Y-%m-%dT%H:%M:%S.%f" if "." in text else "%Y-%m-%dT%H:%M:%S"
        stamp = _dt.datetime.strptime(text, fmt).replace(tzinfo=_dt.timezone.utc)
    except ValueError as error:
        raise DGPFormatError(f"{where}: id.timestamp {iso!r} is not an ISO-8601 UTC time") from error
    raw = (stamp - _EPOCH) // _dt.timedelta(microseconds=1)
    stem = Path(filename).stem if filename else ""
    if stem.isdigit() and int(stem) != raw:
        raise DGPFormatError(f"{where}: file name {filename} ({stem}) disagrees with id.timestamp {iso!r} ({raw})")
    us = (raw + 5) // 10 if unit == "100ns" else raw
    year = (_EPOCH + _dt.timedelta(microseconds=us)).year
    if not 2000 <= year <= 2100:
        other = "us" if unit == "100ns" else "100ns"
        raise DGPFormatError(f"{where}: id.timestamp {iso!r} read in units of {unit} is in the year {year}; "
                             f"try timestamp_unit={other!r}")
    return us


def find_scene_file(scene_dir: Path) -> Path:
    files = sorted(scene_dir.glob("scene*.json"))
    if len(files) != 1:
        raise FileNotFoundError(f"expected one scene*.json in {scene_dir}, found {[f.name for f in files]}")
    return files[0]


def _load_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"missing {what}: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DGPFormatError(f"{path}: not valid JSON ({error})") from error


def _read_calibration(path: Path) -> dict[str, DGPSensorCalibration]:
    calib = _load_json(path, "DGP calibration file")
    for key in ("names", "extrinsics", "intrinsics"):
        if key not in calib:
            raise DGPFormatError(f"{path}: key {key!r} missing")
    if not len(calib["names"]) == len(calib["extrinsics"]) == len(calib["intrinsics"]):
        raise DGPFormatError(f"{path}: names, extrinsics and intrinsics differ in length")
    out = {}
    for i, name in enumerate(calib["names"]):
        intr = calib["intrinsics"][i]
        K = None
        if CAMERA_NAME.match(name):
            try:
                K = np.array([[intr["fx"], intr.get("skew", 0.0), intr["cx"]], [0.0, intr["fy"], intr["cy"]],
                              [0.0, 0.0, 1.0]])
            except KeyError as error:
                raise DGPFormatError(f"{path}: intrinsics[{i}] ({name}) lacks {error}") from error
            if K[0, 0] <= 0 or K[1, 1] <= 0:
                raise DGPFormatError(f"{path}: intrinsics[{i}] ({name}) has non-positive focal lengths")
        out[name] = DGPSensorCalibration(name, _pose(calib["extrinsics"][i], f"{path}: extrinsics[{i}] ({name})"), K)
    return out


def read_scene(scene_dir: str | Path, timestamp_unit: str = "100ns") -> DGPScene:
    """Parse and check a DGP scene folder; every error names the file and the key."""
    root = Path(scene_dir)
    scene_file = find_scene_file(root)
    scene = _load_json(scene_file, "DGP scene file")
    for key in ("samples", "data"):
        if key not in scene:
            raise DGPFormatError(f"{scene_file}: key {key!r} missing")
    data = {d.get("key"): d for d in scene["data"]}
    calib_keys = {s.get("calibration_key") for s in scene["samples"]}
    if len(calib_keys) != 1 or None in calib_keys:
        raise DGPFormatError(f"{scene_file}: samples[].calibration_key must be one key, "
                             f"found {sorted(map(str, calib_keys))}")
    calib_key = calib_keys.pop()
    calib_file = root / "calibration" / f"{calib_key}.json"
    calibration = _read_calibration(calib_file)
    out = DGPScene(root, scene_file, scene.get("name") or root.name, scene.get("log") or root.name, calib_file,
                   calibration)
    for i, sample in enumerate(scene["samples"]):
        frame: dict[str, DGPDatum] = {}
        for key in sample.get("datum_keys", []):
            where = f"{scene_file}: samples[{i}].datum_keys {key}"
            if key not in data:
                raise DGPFormatError(f"{where}: no datum with that key in data[]")
            d = data[key]
            name = d.get("id", {}).get("name")
            where = f"{scene_file}: data[key={key}]"
            channel, modality = channel_for(str(name), f"{where} id.name")
            if name not in calibration:
                raise DGPFormatError(f"{calib_file}: names has no entry {name!r} (needed by {where})")
            body = d.get("datum", {}).get("image" if modality == "camera" else "point_cloud")
            if body is None or "filename" not in body:
                raise DGPFormatError(f"{where}: datum.{'image' if modality == 'camera' else 'point_cloud'}"
                                     ".filename missing")
            path = root / body["filename"]
            if not path.is_file():
                raise FileNotFoundError(f"{where}: {'image' if modality == 'camera' else 'point cloud'} file "
                                        f"{path} is missing")
            if name in frame:
                raise DGPFormatError(f"{where}: sample {i} has two {name} datums")
            stamp = parse_timestamp_us(d.get("id", {}).get("timestamp", ""), timestamp_unit, body["filename"],
                                       f"{where} id.timestamp")
            frame[name] = DGPDatum(key, name, channel, modality, path, stamp,
                                   _pose(body.get("pose") or {}, f"{where} pose"),
                                   int(body.get("width", 0)), int(body.get("height", 0)))
        lidars = [n for n, d in frame.items() if d.modality == "lidar"]
        if len(lidars) != 1:
            raise DGPFormatError(f"{scene_file}: samples[{i}] needs exactly one LiDAR datum, has {lidars}")
        if out.frames:
            for name, datum in frame.items():
                prev = out.frames[-1].get(name)
                if prev is not None and datum.timestamp_us <= prev.timestamp_us:
                    raise DGPFormatError(
                        f"{scene_file}: timestamps out of order: samples[{i}] {name} (key {datum.key}) at "
                        f"{datum.timestamp_us} us is not after samples[{i - 1}] (key {prev.key}) at "
                        f"{prev.timestamp_us} us")
        out.frames.append(frame)
    if not out.frames:
        raise DGPFormatError(f"{scene_file}: samples is empty")
    return out


def load_dgp_points(path: str | Path) -> np.ndarray:
    """(N, 4) float64 X, Y, Z, INTENSITY of a DGP point-cloud .npz (key `data`), in the sensor frame."""
    with np.load(path) as z:
        if "data" not in z:
            raise DGPFormatError(f"{path}: key 'data' missing (has {list(z.keys())})")
        data = np.asarray(z["data"], dtype=np.float64)
    if data.ndim != 2 or data.shape[1] < 4:
        raise DGPFormatError(f"{path}: 'data' has shape {data.shape}, expected (N, 4) X, Y, Z, INTENSITY")
    return data[:, :4]


def _token(*parts: object) -> str:
    """Deterministic 32-hex token (nuScenes style)."""
    return hashlib.md5("/".join(str(p) for p in ("dgp", *parts)).encode()).hexdigest()


def _pose_row(tok: str, stamp: int, transform: np.ndarray) -> dict:
    return {"token": tok, "timestamp": int(stamp), "rotation": matrix_to_quaternion(transform[:3, :3]).tolist(),
            "translation": transform[:3, 3].tolist()}


def build_tables(scene: DGPScene) -> tuple[dict[str, list[dict]], list[tuple[DGPDatum, str]]]:
    """The 13 nuScenes tables of `scene` and (datum, dataroot-relative filename) for every data file."""
    sid = scene.scene_file.stem
    log_name = re.sub(r"[^A-Za-z0-9_.-]", "_", scene.log)
    log_tok, scene_tok = _token(sid, "log"), _token(sid, "scene")
    channels = sorted({d.channel: d for f in scene.frames for d in f.values()}.items())
    T: dict[str, list[dict]] = {"sensor": [], "calibrated_sensor": [], "ego_pose": [], "sample": [], "sample_data": []}
    calib_tok = {}
    for ch, d in channels:
        T["sensor"].append({"token": _token("sensor", ch), "channel": ch, "modality": d.modality})
        c = scene.calibration[d.name]
        calib_tok[ch] = _token(sid, "calib", ch)
        T["calibrated_sensor"].append({
            "token": calib_tok[ch], "sensor_token": _token("sensor", ch),
            "translation": c.body_from_sensor[:3, 3].tolist(),
            "rotation": matrix_to_quaternion(c.body_from_sensor[:3, :3]).tolist(),
            "camera_intrinsic": c.intrinsics.tolist() if c.intrinsics is not None else []})
    sample_toks = [_token(sid, "sample", i) for i in range(len(scene.frames))]
    files = []
    for i, frame in enumerate(scene.frames):
        lidar = scene.lidar(i)
        T["sample"].append({"token": sample_toks[i], "timestamp": lidar.timestamp_us, "scene_token": scene_tok,
                            "prev": sample_toks[i - 1] if i else "",
                            "next": sample_toks[i + 1] if i + 1 < len(scene.frames) else ""})
        for d in frame.values():
            sd_tok = _token(sid, "sd", d.channel, i)
            ext = "jpg" if d.modality == "camera" else "pcd.bin"
            if d.modality == "camera" and d.path.suffix.lower() not in (".jpg", ".jpeg"):
                ext = d.path.suffix.lstrip(".").lower()
            fname = f"samples/{d.channel}/{log_name}__{d.channel}__{d.timestamp_us}.{ext}"
            files.append((d, fname))
            width, height = d.width, d.height
            if d.modality == "camera" and not (width and height):
                with Image.open(d.path) as im:
                    width, height = im.size
            T["ego_pose"].append(_pose_row(sd_tok, d.timestamp_us, scene.ego_pose(d)))
            has = lambda j, ch=d.channel: any(x.channel == ch for x in scene.frames[j].values())  # noqa: E731
            T["sample_data"].append({
                "token": sd_tok, "sample_token": sample_toks[i], "ego_pose_token": sd_tok,
                "calibrated_sensor_token": calib_tok[d.channel], "timestamp": d.timestamp_us,
                "fileformat": "jpg" if d.modality == "camera" else "pcd", "is_key_frame": True,
                "height": height if d.modality == "camera" else 0, "width": width if d.modality == "camera" else 0,
                "filename": fname,
                "prev": _token(sid, "sd", d.channel, i - 1) if i and has(i - 1) else "",
                "next": _token(sid, "sd", d.channel, i + 1) if i + 1 < len(scene.frames) and has(i + 1) else ""})
    T["scene"] = [{"token": scene_tok, "log_token": log_tok, "nbr_samples": len(scene.frames),
                   "first_sample_token": sample_toks[0], "last_sample_token": sample_toks[-1],
                   "name": f"dgp-{scene.root.name}", "description": f"DGP scene {scene.scene_file.name}"}]
    first = scene.lidar(0).timestamp_us
    T["log"] = [{"token": log_tok, "logfile": log_name, "vehicle": "dgp",
                 "date_captured": (_EPOCH + _dt.timedelta(microseconds=first)).date().isoformat(),
                 "location": "unknown"}]
    T["map"] = [{"token": _token(sid, "map"), "log_tokens": [log_tok], "category": "semantic_prior",
                 "filename": MAP_FILENAME}]
    # No annotations are converted (depth and rendering need none); the devkit needs the tables.
    for name in ("instance", "sample_annotation", "category", "attribute", "visibility"):
        T[name] = []
    return T, files


def write_dataroot(scene: DGPScene | str | Path, out: str | Path, version: str = VERSION, masks: bool = True,
                   overwrite: bool = False) -> Path:
    """Write `scene` as a nuScenes-format dataroot at `out` (tables, images, .pcd.bin sweeps, ego-body masks).

    Everything goes to a temporary folder beside `out` first and is renamed into place at the end, so an
    error leaves no partial dataroot. An existing `out` is an error unless `overwrite`.
    """
    if not isinstance(scene, DGPScene):
        scene = read_scene(scene)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (pass overwrite=True / --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tables, files = build_tables(scene)
        (tmp / version).mkdir()
        for name, rows in tables.items():
            (tmp / version / f"{name}.json").write_text(json.dumps(rows, indent=1))
        (tmp / "maps").mkdir()
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp / MAP_FILENAME)
        for datum, fname in files:
            target = tmp / fname
            target.parent.mkdir(parents=True, exist_ok=True)
            if datum.modality == "camera":
                shutil.copyfile(datum.path, target)
            else:
                pts = load_dgp_points(datum.path)
                # nuScenes .pcd.bin: x, y, z, intensity, ring (unknown in DGP: 0), float32
                np.concatenate([pts, np.zeros((len(pts), 1))], axis=1).astype(np.float32).tofile(target)
        if masks:
            from distillnerf_core.data.ego_masks import write_masks

            write_masks(scene, tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
