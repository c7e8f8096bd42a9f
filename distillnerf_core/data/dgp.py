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
- Input is checked, never trusted: every file name (images, point clouds, the calibration key) must resolve,
  symlinks followed, inside the scene folder; every field read has its type, finiteness and range checked
  (unit quaternions, positive focal lengths, image sizes that match the files, finite LiDAR points within
  MAX_POINT_M); camera files must decode as JPEG / PNG; point clouds are read without pickle and bounded in
  size. Each refusal is a DGPFormatError naming the file and the key; the tables are written with
  allow_nan=False (never a `NaN` in the JSON).
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
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

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


MAX_JSON_BYTES = 256 * 2**20  # a scene or calibration file
MAX_POINT_CLOUD_BYTES = 2**30  # the uncompressed `data` array of one point-cloud .npz
MAX_IMAGE_SIDE = 16384  # pixels
MAX_COORDINATE_M = 1e7  # |translation| of any pose (metres), far inside float32
MAX_POINT_M = 1e5  # |X|, |Y|, |Z| of a LiDAR point (metres)
MAX_FOCAL_PX = 1e6
UNIT_TOLERANCE = 1e-3  # |‖q‖ - 1| a rotation quaternion may have
_MISSING = object()


def _get(record: object, key: str, kind: type | tuple[type, ...], where: str, default: object = _MISSING):
    """record[key] of the type `kind`; anything else is a DGPFormatError naming `where`.key (bool is no number)."""
    if not isinstance(record, dict):
        raise DGPFormatError(f"{where}: expected an object, got {type(record).__name__}")
    at = f"{where} {key}" if where.endswith(":") else f"{where}.{key}"  # "file: key" / "file: a.b.key"
    if key not in record:
        if default is not _MISSING:
            return default
        raise DGPFormatError(f"{at}: missing")
    value = record[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in ((int, float), int, float)):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise DGPFormatError(f"{at}: expected {names}, got {type(value).__name__} {str(value)[:40]!r}")
    return value


def _number(record: object, key: str, where: str, low: float, high: float, default: object = _MISSING) -> float:
    """A finite number record[key] in [low, high] (the bounds keep it finite in float32 too)."""
    value = _get(record, key, (int, float), where, default)
    try:
        number = float(value)
    except OverflowError:
        number = float("inf")
    if not (np.isfinite(number) and low <= number <= high):
        raise DGPFormatError(f"{where}.{key}: {value!r} is not a finite number in [{low:g}, {high:g}]")
    return number


def _pose(record: object, where: str) -> np.ndarray:
    """4x4 transform of a DGP pose {rotation: {qw, qx, qy, qz}, translation: {x, y, z}}: finite numbers, a unit
    quaternion (a zero or non-unit one is no rotation), translations within MAX_COORDINATE_M."""
    rotation = _get(record, "rotation", dict, where)
    translation = _get(record, "translation", dict, where)
    q = np.array([_number(rotation, k, f"{where}.rotation", -2.0, 2.0) for k in ("qw", "qx", "qy", "qz")])
    norm = float(np.linalg.norm(q))
    if abs(norm - 1.0) > UNIT_TOLERANCE:
        raise DGPFormatError(f"{where}.rotation: quaternion norm {norm:.6g}; a rotation needs a unit quaternion")
    t = [_number(translation, k, f"{where}.translation", -MAX_COORDINATE_M, MAX_COORDINATE_M) for k in "xyz"]
    return make_transform(q / norm, t)


def _inside(root: Path, relative: object, where: str) -> Path:
    """The resolved path of a file name from the scene, which must stay inside the scene folder `root`
    (no absolute names, no `..` out of it, no symlink that leads out): the file decides nothing else."""
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise DGPFormatError(f"{where}: expected a relative file name, got {type(relative).__name__} "
                             f"{str(relative)[:60]!r}")
    if PurePosixPath(relative).is_absolute() or Path(relative).is_absolute():
        raise DGPFormatError(f"{where}: {relative!r} is an absolute path, outside the scene folder {root}")
    base = root.resolve()
    resolved = (base / relative).resolve()
    if not resolved.is_relative_to(base):
        raise DGPFormatError(f"{where}: {relative!r} resolves to {resolved}, outside the scene folder {root}")
    return resolved


def _image_size(path: Path, where: str) -> tuple[int, int]:
    """(width, height) of a JPEG or PNG camera file; anything else is a DGPFormatError naming the file."""
    try:
        with Image.open(path) as image:
            kind, size = image.format, image.size
            image.load()  # decodes it: a truncated or corrupt image fails here, not in training
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DGPFormatError(f"{where}: {path} is not a readable image: {error}") from error
    if kind not in ("JPEG", "PNG"):
        raise DGPFormatError(f"{where}: {path} is a {kind} image; camera files must be JPEG or PNG")
    if not all(1 <= side <= MAX_IMAGE_SIDE for side in size):
        raise DGPFormatError(f"{where}: {path} is {size[0]}x{size[1]}, outside 1..{MAX_IMAGE_SIDE} pixels a side")
    return size


def parse_timestamp_us(iso: str, unit: str = "100ns", filename: str | None = None, where: str = "") -> int:
    """Microseconds since the epoch of a DGP `id.timestamp` (see the module docstring for `unit`)."""
    if unit not in ("100ns", "us"):
        raise ValueError(f"timestamp unit must be '100ns' or 'us', not {unit!r}")
    if not isinstance(iso, str):
        raise DGPFormatError(f"{where}: expected an ISO-8601 string, got {type(iso).__name__} {str(iso)[:40]!r}")
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
    if path.stat().st_size > MAX_JSON_BYTES:
        raise DGPFormatError(f"{path}: {path.stat().st_size} bytes, over the {MAX_JSON_BYTES}-byte limit of a {what}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise DGPFormatError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise DGPFormatError(f"{path}: a {what} is a JSON object, this is a {type(data).__name__}")
    return data


def _read_calibration(path: Path) -> dict[str, DGPSensorCalibration]:
    calib = _load_json(path, "DGP calibration file")
    where = f"{path}:"
    names = _get(calib, "names", list, where)
    extrinsics = _get(calib, "extrinsics", list, where)
    intrinsics = _get(calib, "intrinsics", list, where)
    if not len(names) == len(extrinsics) == len(intrinsics):
        raise DGPFormatError(f"{path}: names, extrinsics and intrinsics differ in length")
    out = {}
    for i, name in enumerate(names):
        if not isinstance(name, str):
            raise DGPFormatError(f"{path}: names[{i}]: expected a string, got {type(name).__name__}")
        if name in out:
            raise DGPFormatError(f"{path}: names[{i}]: {name!r} appears twice")
        K = None
        if CAMERA_NAME.match(name):
            at = f"{path}: intrinsics[{i}] ({name})"
            intr = intrinsics[i]
            fx, fy = (_number(intr, k, at, 1e-6, MAX_FOCAL_PX) for k in ("fx", "fy"))
            cx, cy = (_number(intr, k, at, -MAX_FOCAL_PX, MAX_FOCAL_PX) for k in ("cx", "cy"))
            skew = _number(intr, "skew", at, -MAX_FOCAL_PX, MAX_FOCAL_PX, default=0.0)
            K = np.array([[fx, skew, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        out[name] = DGPSensorCalibration(name, _pose(extrinsics[i], f"{path}: extrinsics[{i}] ({name})"), K)
    return out


def read_scene(scene_dir: str | Path, timestamp_unit: str = "100ns") -> DGPScene:
    """Parse and check a DGP scene folder; every error names the file and the key."""
    root = Path(scene_dir)
    scene_file = find_scene_file(root)
    _inside(root, scene_file.name, f"{root}: {scene_file.name}")
    scene = _load_json(scene_file, "DGP scene file")
    samples = _get(scene, "samples", list, f"{scene_file}:")
    data = {}
    for j, d in enumerate(_get(scene, "data", list, f"{scene_file}:")):
        key = _get(d, "key", str, f"{scene_file}: data[{j}]")
        if key in data:
            raise DGPFormatError(f"{scene_file}: data[key={key}]: the key appears twice in data[]")
        data[key] = d
    calib_keys = {_get(x, "calibration_key", str, f"{scene_file}: samples[{i}]") for i, x in enumerate(samples)}
    if len(calib_keys) != 1:
        raise DGPFormatError(f"{scene_file}: samples[].calibration_key must be one key, "
                             f"found {sorted(map(str, calib_keys))}")
    calib_key = calib_keys.pop()
    calib_file = _inside(root, f"calibration/{calib_key}.json", f"{scene_file}: samples[].calibration_key")
    calibration = _read_calibration(calib_file)
    name = _get(scene, "name", str, f"{scene_file}:", default="") or root.name
    log = _get(scene, "log", str, f"{scene_file}:", default="") or root.name
    out = DGPScene(root, scene_file, name, log, calib_file, calibration)
    for i, sample in enumerate(samples):
        frame: dict[str, DGPDatum] = {}
        for key in _get(sample, "datum_keys", list, f"{scene_file}: samples[{i}]", default=[]):
            where = f"{scene_file}: samples[{i}].datum_keys {key}"
            if not isinstance(key, str) or key not in data:
                raise DGPFormatError(f"{where}: no datum with that key in data[]")
            d = data[key]
            where = f"{scene_file}: data[key={key}]"
            ident = _get(d, "id", dict, where)
            name = _get(ident, "name", str, f"{where}.id")
            channel, modality = channel_for(name, f"{where} id.name")
            if name not in calibration:
                raise DGPFormatError(f"{calib_file}: names has no entry {name!r} (needed by {where})")
            kind = "image" if modality == "camera" else "point_cloud"
            body = _get(_get(d, "datum", dict, where), kind, dict, f"{where}.datum")
            at = f"{where}.datum.{kind}"
            filename = _get(body, "filename", str, at)
            path = _inside(root, filename, f"{at}.filename")
            if not path.is_file():
                raise FileNotFoundError(f"{where}: {'image' if modality == 'camera' else 'point cloud'} file "
                                        f"{root / filename} is missing")
            if name in frame:
                raise DGPFormatError(f"{where}: sample {i} has two {name} datums")
            stamp = parse_timestamp_us(_get(ident, "timestamp", str, f"{where}.id"), timestamp_unit, filename,
                                       f"{where} id.timestamp")
            width = height = 0
            if modality == "camera":
                width, height = _image_size(path, f"{at}.filename")
                for side, actual in (("width", width), ("height", height)):
                    declared = _number(body, side, at, 1, MAX_IMAGE_SIDE, default=actual)
                    if declared != actual:
                        raise DGPFormatError(f"{at}.{side}: {declared:g}, but {path.name} is {width}x{height}")
            frame[name] = DGPDatum(key, name, channel, modality, path, stamp, _pose(_get(body, "pose", dict, at),
                                                                                   f"{at}.pose"), width, height)
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
    """(N, 4) float64 X, Y, Z, INTENSITY of a DGP point-cloud .npz (key `data`), in the sensor frame.

    Read without pickle (object arrays are refused), the array's uncompressed size bounded by
    MAX_POINT_CLOUD_BYTES before it is read, every value finite and the coordinates within MAX_POINT_M."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
        if "data.npy" not in members:
            raise DGPFormatError(f"{path}: key 'data' missing (has {[n.removesuffix('.npy') for n in members]})")
        if members["data.npy"].file_size > MAX_POINT_CLOUD_BYTES:
            raise DGPFormatError(f"{path}: key 'data' is {members['data.npy'].file_size} bytes uncompressed, over"
                                 f" the {MAX_POINT_CLOUD_BYTES}-byte limit")
        with np.load(path, allow_pickle=False) as z:
            data = z["data"]
    except zipfile.BadZipFile as error:
        raise DGPFormatError(f"{path}: not a NumPy .npz archive (a zip of .npy arrays): {error}") from error
    except (ValueError, OSError, EOFError, zlib.error) as error:
        raise DGPFormatError(f"{path}: key 'data' cannot be read (truncated, corrupt or an object array): "
                             f"{error}") from error
    if data.dtype.kind not in "fiu" or data.ndim != 2 or data.shape[1] < 4:
        raise DGPFormatError(f"{path}: key 'data' is {data.dtype} {data.shape}, expected (N, 4) numbers X, Y, Z,"
                             " INTENSITY")
    points = data[:, :4].astype(np.float64)
    bad = ~np.isfinite(points) | (np.abs(points) > np.array([MAX_POINT_M] * 3 + [np.finfo(np.float32).max]))
    if bad.any():
        row = int(np.argwhere(bad)[0, 0])
        raise DGPFormatError(f"{path}: key 'data' row {row} is non-finite or past {MAX_POINT_M:g} m: {points[row]}")
    return points


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
            try:
                text = json.dumps(rows, indent=1, allow_nan=False)
            except ValueError as error:  # a non-finite number got past the reader: never write NaN into JSON
                raise DGPFormatError(f"{version}/{name}.json: {error} (scene {scene.scene_file})") from error
            (tmp / version / f"{name}.json").write_text(text)
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
