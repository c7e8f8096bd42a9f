"""The perception node's own parameters (the camera-input ones are in input/rig_input.py): declaration with
descriptions and ranges, checks on set, and the core configs built from them.

Defaults that a core dataclass owns (the occupancy grid: OccupancyConfig) are read from that dataclass,
never retyped here.
"""

from __future__ import annotations

from pathlib import Path

from rcl_interfaces.msg import FloatingPointRange, ParameterDescriptor, SetParametersResult
from rclpy.node import Node

from distillnerf_core.model.occupancy import OccupancyConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLED_MODEL = Path("models") / "default" / "model.safetensors"
DEVICES_HELP = "auto (cuda when available), cpu, cuda or cuda:N"
PRECISIONS = ("fp32", "bf16", "fp16")
MAX_QUERIES = 64
MAX_QUERY_CHARS = 512


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


def validate_queries(queries: list[str]) -> str | None:
    """Why a list of text queries is unacceptable, or None."""
    if not queries:
        return "no queries given"
    if len(queries) > MAX_QUERIES:
        return f"{len(queries)} queries exceed the limit of {MAX_QUERIES}"
    for index, query in enumerate(queries):
        if not query.strip():
            return f"query {index} is empty"
        if len(query) > MAX_QUERY_CHARS:
            return f"query {index} has {len(query)} characters, more than the limit of {MAX_QUERY_CHARS}"
    return None


def _describe(text: str, read_only: bool = True, **ranges) -> ParameterDescriptor:
    return ParameterDescriptor(description=text, read_only=read_only, **ranges)


def _positive(limit: float) -> list[FloatingPointRange]:
    return [FloatingPointRange(from_value=0.0, to_value=limit)]


def declare_perception_parameters(node: Node) -> None:
    """Declare the model, output and diagnostics parameters of perception_node."""
    occupancy = OccupancyConfig()
    node.declare_parameter("model_path", "", _describe("checkpoint (.safetensors + .json); empty: bundled model"))
    node.declare_parameter("device", "auto", _describe(DEVICES_HELP))
    node.declare_parameter("device_fallback", True, _describe("fall back to the CPU when CUDA is requested but"
                                                              " absent (false: configure fails)"))
    node.declare_parameter("precision", "fp32", _describe("fp32, bf16 or fp16 (fp16: CUDA only)"))
    node.declare_parameter("torch_threads", 0, _describe("CPU threads for torch (0: torch's default)"))
    node.declare_parameter("compile", False, _describe(
        "torch.compile the encoder, lift and RGB decoder (measured on an H200: paper forward 29 -> 22 ms; not"
        " measured on a CPU); configure compiles them on a warm-up frame of len(cameras) cameras (seconds to a"
        " minute on a GPU, minutes on a CPU), a frame with another camera count compiles once more; a stage that"
        " fails to compile runs eagerly and /diagnostics shows compile_errors"))
    node.declare_parameter("autostart", True, _describe("configure and activate on start"))
    node.declare_parameter("occupancy_x_range", [float(v) for v in occupancy.x_range],
                           _describe("m, ego x range of the occupancy grid"))
    node.declare_parameter("occupancy_y_range", [float(v) for v in occupancy.y_range], _describe("m, ego y range"))
    node.declare_parameter("occupancy_z_range", [float(v) for v in occupancy.z_range], _describe("m, ego z range"))
    node.declare_parameter("occupancy_voxel_size", float(occupancy.voxel_size), _describe(
        "m, cell size of occupancy and the BEV grid", floating_point_range=_positive(10.0)))
    node.declare_parameter("occupancy_threshold", float(occupancy.threshold), _describe(
        "density above which a cell is occupied", floating_point_range=_positive(1000.0)))
    node.declare_parameter("depth_min_opacity", 0.5, _describe(
        "depth is NaN (REP-118: no depth) where the rendered ray's opacity is below this; ~/<camera>/depth/opacity"
        " carries the opacity", False, floating_point_range=[FloatingPointRange(from_value=0.0, to_value=1.0)]))
    node.declare_parameter("publish_rendered", False, _describe("publish ~/<camera>/rendered RGB", False))
    node.declare_parameter("semantic_queries", [""], _describe("text queries labelled every frame", False))
    node.declare_parameter("processing_time_warn_ms", 1500.0, _describe(
        "diagnostics WARN above this processing time", False, floating_point_range=_positive(1e6)))
    node.declare_parameter("processing_time_error_ms", 5000.0, _describe(
        "diagnostics ERROR above this processing time", False, floating_point_range=_positive(1e6)))


def validate_parameter_change(node: Node, parameters) -> SetParametersResult:
    """The on-set check of the writable parameters (read-only ones are refused by rclpy itself)."""
    values = {p.name: p.value for p in parameters}
    if "semantic_queries" in values:
        queries = [q for q in values["semantic_queries"] if q]
        reason = validate_queries(queries) if queries else None
        if reason:
            return SetParametersResult(successful=False, reason=f"semantic_queries: {reason}")
    warn = values.get("processing_time_warn_ms", node.get_parameter("processing_time_warn_ms").value)
    error = values.get("processing_time_error_ms", node.get_parameter("processing_time_error_ms").value)
    if warn > error:
        return SetParametersResult(successful=False, reason=f"processing_time_warn_ms ({warn}) must not exceed"
                                                            f" processing_time_error_ms ({error})")
    return SetParametersResult(successful=True)


def occupancy_config_from_parameters(node: Node) -> OccupancyConfig:
    """The OccupancyConfig the occupancy_* parameters describe (validated: ValueError names the field)."""
    ranges = {axis: tuple(float(v) for v in node.get_parameter(f"occupancy_{axis}_range").value)
              for axis in ("x", "y", "z")}
    config = OccupancyConfig(ranges["x"], ranges["y"], ranges["z"],
                             node.get_parameter("occupancy_voxel_size").value,
                             node.get_parameter("occupancy_threshold").value)
    config.validate()
    return config


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
