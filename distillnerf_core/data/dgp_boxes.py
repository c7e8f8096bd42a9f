"""The 2D and 3D box annotations of a DGP scene (DDAD), read for evaluation only (training needs none).

A DGP datum lists its annotation files by annotation-type id: "0" = bounding_box_2d, "1" = bounding_box_3d
(the ids of `scene.ontologies`, whose ontology file maps `class_id` to a name). A camera datum's 2D boxes are
in its image's native pixels (x, y = top-left corner, w, h); the LiDAR datum's 3D boxes are in the LiDAR frame,
which is the body frame in DDAD (LiDAR extrinsic = identity), i.e. the reference ego frame of a dataroot written
by `dgp.write_dataroot` (ego pose at the LiDAR timestamp). A 3D box's pose is its centre and rotation; its
`length` runs along the box x axis, `width` along y, `height` along z (DGP's convention).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distillnerf_core.data.dgp import DGPFormatError, find_scene_file
from distillnerf_core.data.dgp import _load_json as _load  # the scene reader's size-bounded JSON object read
from distillnerf_core.geometry import quaternion_to_matrix

BOX_2D, BOX_3D = "0", "1"  # DGP annotation-type ids
# DDAD's vehicle classes (ontology names): what a "car" / "vehicle" prediction may rightly fall on.
VEHICLE_CLASSES = ("Car", "Truck", "Bus/RV/Caravan")


@dataclass(frozen=True)
class Box2D:
    """An axis-aligned image box in native pixels: columns x .. x + w, rows y .. y + h."""

    class_name: str
    instance_id: int
    x: float
    y: float
    w: float
    h: float


@dataclass(frozen=True)
class Box3D:
    """An oriented box: ego_from_box rotation (3, 3) + centre (3,), size = (length, width, height) in metres."""

    class_name: str
    instance_id: int
    center: np.ndarray
    rotation: np.ndarray
    size: np.ndarray
    num_points: int = 0


def read_ontology(scene_dir: str | Path, annotation_type: str = BOX_3D) -> dict[int, str]:
    """class_id -> name of the ontology the scene uses for `annotation_type`."""
    root = Path(scene_dir)
    scene = _load(find_scene_file(root), "DGP scene file")
    key = scene.get("ontologies", {}).get(annotation_type)
    if key is None:
        raise DGPFormatError(f"{find_scene_file(root)}: ontologies has no entry for annotation type {annotation_type}")
    items = _load(root / "ontology" / f"{key}.json", "DGP ontology file").get("items", [])
    return {int(item["id"]): str(item["name"]) for item in items}


def _annotation_files(scene_dir: Path, annotation_type: str) -> list[dict[str, Path]]:
    """Per sample: sensor name -> the annotation file of that type (sensors without one left out)."""
    scene_file = find_scene_file(scene_dir)
    scene = _load(scene_file, "DGP scene file")
    data = {d["key"]: d for d in scene.get("data", [])}
    out = []
    for i, sample in enumerate(scene.get("samples", [])):
        files = {}
        for key in sample.get("datum_keys", []):
            d = data.get(key)
            if d is None:
                raise DGPFormatError(f"{scene_file}: samples[{i}] datum {key} is not in data[]")
            body = next(iter(d["datum"].values()))
            rel = body.get("annotations", {}).get(annotation_type)
            if rel:
                files[d["id"]["name"]] = scene_dir / rel
        out.append(files)
    return out


def read_boxes_2d(scene_dir: str | Path, frame: int) -> dict[str, list[Box2D]]:
    """Camera name -> its 2D boxes in sample `frame` (native pixels)."""
    root = Path(scene_dir)
    names = read_ontology(root, BOX_2D)
    out: dict[str, list[Box2D]] = {}
    for sensor, path in _annotation_files(root, BOX_2D)[frame].items():
        boxes = []
        for a in _load(path, "DGP 2D box file").get("annotations", []):
            b = a["box"]
            boxes.append(Box2D(names[int(a["class_id"])], int(a["instance_id"]), float(b["x"]), float(b["y"]),
                               float(b["w"]), float(b["h"])))
        out[sensor] = boxes
    return out


def read_boxes_3d(scene_dir: str | Path, frame: int, sensor: str = "LIDAR") -> list[Box3D]:
    """The 3D boxes of sample `frame` in `sensor`'s frame (LIDAR = DDAD's body frame = the reference ego frame)."""
    root = Path(scene_dir)
    names = read_ontology(root, BOX_3D)
    files = _annotation_files(root, BOX_3D)[frame]
    if sensor not in files:
        raise DGPFormatError(f"{root}: sample {frame} has no 3D boxes for {sensor} (has {sorted(files)})")
    boxes = []
    for a in _load(files[sensor], "DGP 3D box file").get("annotations", []):
        b = a["box"]
        r, t = b["pose"]["rotation"], b["pose"]["translation"]
        rotation = quaternion_to_matrix(np.array([r["qw"], r["qx"], r["qy"], r["qz"]], dtype=np.float64))
        boxes.append(Box3D(names[int(a["class_id"])], int(a["instance_id"]),
                           np.array([t["x"], t["y"], t["z"]], dtype=np.float64), rotation,
                           np.array([b["length"], b["width"], b["height"]], dtype=np.float64),
                           int(a.get("num_points", 0))))
    return boxes
