"""PointCloud2 <-> numpy structured arrays, and OccupancyGrid from a 2D array (no sensor_msgs_py needed).

Points are built from the array's bytes in one go: building PointCloud2 point by point in Python is about
100x slower.
"""

from __future__ import annotations

import numpy as np
from geometry_msgs.msg import Pose
from nav_msgs.msg import MapMetaData, OccupancyGrid
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

# PointField datatype codes <-> numpy dtypes (sensor_msgs/PointField constants).
_FIELD_TO_DTYPE = {
    PointField.INT8: np.dtype("i1"),
    PointField.UINT8: np.dtype("u1"),
    PointField.INT16: np.dtype("<i2"),
    PointField.UINT16: np.dtype("<u2"),
    PointField.INT32: np.dtype("<i4"),
    PointField.UINT32: np.dtype("<u4"),
    PointField.FLOAT32: np.dtype("<f4"),
    PointField.FLOAT64: np.dtype("<f8"),
}
_DTYPE_TO_FIELD = {dtype.str: code for code, dtype in _FIELD_TO_DTYPE.items()}
_DTYPE_TO_FIELD["|i1"], _DTYPE_TO_FIELD["|u1"] = PointField.INT8, PointField.UINT8


class PointCloudError(ValueError):
    """A point array or PointCloud2 that cannot be converted; the message says why."""


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 colours -> float32 values holding 0x00RRGGBB bits (the `rgb` field RViz reads)."""
    rgb = np.asarray(rgb, dtype=np.uint32)
    packed = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    return packed.astype("<u4").view("<f4")


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """Inverse of pack_rgb: float32 `rgb` values -> (N, 3) uint8."""
    bits = np.ascontiguousarray(packed, dtype="<f4").view("<u4")
    return np.stack([(bits >> 16) & 255, (bits >> 8) & 255, bits & 255], axis=1).astype(np.uint8)


def make_points(xyz: np.ndarray, rgb: np.ndarray | None = None, **scalar_fields: np.ndarray) -> np.ndarray:
    """Structured array with float32 x, y, z, optional packed rgb, and any scalar fields given by name.

    Scalar fields keep their numeric type (e.g. label uint16, score / density float32).
    """
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise PointCloudError(f"xyz must have shape (N, 3), got {xyz.shape}")
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if rgb is not None:
        fields.append(("rgb", "<f4"))
    for name, values in scalar_fields.items():
        values = np.asarray(values)
        if values.shape != (len(xyz),):
            raise PointCloudError(f"field '{name}' has shape {values.shape}, expected ({len(xyz)},)")
        fields.append((name, values.dtype.newbyteorder("<").str))
    points = np.empty(len(xyz), dtype=fields)
    points["x"], points["y"], points["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    if rgb is not None:
        points["rgb"] = pack_rgb(rgb)
    for name, values in scalar_fields.items():
        points[name] = values
    return points


def points_to_pointcloud2(points: np.ndarray, header: Header) -> PointCloud2:
    """Unordered (height 1), dense PointCloud2 of a structured array, fields in the array's order."""
    if points.dtype.names is None:
        raise PointCloudError("points must be a numpy structured array (see make_points)")
    fields = []
    for name in points.dtype.names:
        dtype, offset = points.dtype.fields[name][:2]
        if dtype.str not in _DTYPE_TO_FIELD:
            raise PointCloudError(f"field '{name}' has unsupported dtype {dtype}")
        fields.append(PointField(name=name, offset=offset, datatype=_DTYPE_TO_FIELD[dtype.str], count=1))
    cloud = PointCloud2(header=header, height=1, width=len(points), fields=fields)
    cloud.is_bigendian = False
    cloud.point_step = points.dtype.itemsize
    cloud.row_step = cloud.point_step * len(points)
    cloud.is_dense = True
    cloud.data = np.ascontiguousarray(points).tobytes()
    return cloud


def pointcloud2_to_points(cloud: PointCloud2) -> np.ndarray:
    """Structured array of a PointCloud2 (all its scalar fields), for tests and bag tools."""
    if cloud.is_bigendian:
        raise PointCloudError("big-endian PointCloud2 is not supported")
    names, formats, offsets = [], [], []
    for field in cloud.fields:
        if field.datatype not in _FIELD_TO_DTYPE or field.count != 1:
            raise PointCloudError(f"field '{field.name}' has unsupported datatype {field.datatype}"
                                  f" or count {field.count}")
        names.append(field.name)
        formats.append(_FIELD_TO_DTYPE[field.datatype])
        offsets.append(field.offset)
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": cloud.point_step})
    count = cloud.width * cloud.height
    if len(cloud.data) < count * cloud.point_step:
        raise PointCloudError(f"cloud data has {len(cloud.data)} bytes, expected {count * cloud.point_step}")
    raw = np.frombuffer(cloud.data, dtype=np.uint8)
    if cloud.height > 1 and cloud.row_step != cloud.width * cloud.point_step:
        raw = raw.reshape(cloud.height, cloud.row_step)[:, : cloud.width * cloud.point_step]
    return np.ascontiguousarray(raw).view(dtype)[:count].copy()


def occupancy_grid_from_probabilities(probabilities: np.ndarray, resolution: float, origin_xy: tuple[float, float],
                                      header: Header) -> OccupancyGrid:
    """OccupancyGrid of a (ny, nx) array of occupancy probabilities in [0, 1] (NaN = unknown -> -1).

    Row i is y = origin_y + (i + 0.5) * resolution, column j is x likewise (REP-105 map convention); the
    origin is the grid corner with identity orientation.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2:
        raise PointCloudError(f"occupancy must be a 2D (ny, nx) array, got shape {probabilities.shape}")
    if resolution <= 0:
        raise PointCloudError(f"resolution must be positive, got {resolution}")
    values = np.full(probabilities.shape, -1, dtype=np.int8)
    known = np.isfinite(probabilities)
    values[known] = np.rint(np.clip(probabilities[known], 0.0, 1.0) * 100).astype(np.int8)
    origin = Pose()
    origin.position.x, origin.position.y = float(origin_xy[0]), float(origin_xy[1])
    origin.orientation.w = 1.0
    info = MapMetaData(resolution=float(resolution), width=probabilities.shape[1],
                       height=probabilities.shape[0], origin=origin)
    info.map_load_time = header.stamp
    grid = OccupancyGrid(header=header, info=info)
    grid.data = values.ravel().tobytes()
    return grid
