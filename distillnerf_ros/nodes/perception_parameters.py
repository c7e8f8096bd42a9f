"""The core configs and paths perception_node's parameters describe (occupancy grid, model path).

The parameters themselves (types, defaults, ranges, descriptions, the on-set check) are in the one schema,
parameter_schema.py, which the node declares them from; the text-query limits are there too.
"""

from __future__ import annotations

from pathlib import Path

from rclpy.node import Node

from distillnerf_core.inference import PRECISIONS as PRECISION_DTYPES
from distillnerf_core.model.occupancy import OccupancyConfig
from distillnerf_core.teacher_semantics import TeacherSemanticsConfig
from distillnerf_ros.nodes.parameter_schema import MAX_QUERIES, MAX_QUERY_CHARS, validate_queries

__all__ = ["BUNDLED_MODEL", "MAX_QUERIES", "MAX_QUERY_CHARS", "PRECISIONS", "bundled_model_path",
           "model_path_from_parameters", "occupancy_config_from_parameters", "semantic_source_from_parameters",
           "validate_queries"]

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLED_MODEL = Path("models") / "default" / "model.safetensors"
PRECISIONS = tuple(PRECISION_DTYPES)


def bundled_model_path() -> Path | None:
    """The shipped default model: the installed share directory first, then this source tree."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("distillnerf_ros")) / BUNDLED_MODEL)
    except (ImportError, LookupError, OSError, ValueError):
        pass  # no ament index (pip-only setup, AMENT_PREFIX_PATH unset) or the package is not installed there
    candidates.append(REPO_ROOT / BUNDLED_MODEL)
    return next((path for path in candidates if path.is_file()), None)


def occupancy_config_from_parameters(node: Node) -> OccupancyConfig:
    """The OccupancyConfig the occupancy_* parameters describe (validated: ValueError names the field)."""
    ranges = {axis: tuple(float(v) for v in node.get_parameter(f"occupancy_{axis}_range").value)
              for axis in ("x", "y", "z")}
    config = OccupancyConfig(ranges["x"], ranges["y"], ranges["z"],
                             node.get_parameter("occupancy_voxel_size").value,
                             node.get_parameter("occupancy_threshold").value)
    config.validate()
    return config


def semantic_source_from_parameters(node: Node) -> tuple[str, TeacherSemanticsConfig]:
    """semantic_source and, for "teacher", the live segmenter's settings (semantic_teacher_*)."""
    weights = node.get_parameter("semantic_teacher_weights").value
    config = TeacherSemanticsConfig(width=node.get_parameter("semantic_teacher_width").value,
                                    weights=str(Path(weights).expanduser()) if weights else None)
    return node.get_parameter("semantic_source").value, config


def model_path_from_parameters(node: Node) -> Path:
    """model_path, or the bundled model when it is empty (FileNotFoundError when that is not installed)."""
    path = node.get_parameter("model_path").value
    if path:
        return Path(path).expanduser()
    bundled = bundled_model_path()
    if bundled is None:
        raise FileNotFoundError(f"model_path is empty and the bundled model ({BUNDLED_MODEL}) is not"
                                " installed; set model_path to a .safetensors checkpoint")
    return bundled
