"""The one schema of every node parameter: type, default, range or allowed values, unit, read-only, description.

`SCHEMA` maps each program (perception_node, rig_monitor, dataroot_publisher) to its NodeSchema. The nodes
declare their parameters from it (`declare_parameters`: descriptors with ranges, values of a params file
checked at declare, an on-set check of the writable ones), `config/*.yaml` is tested against it, and
docs/node.md's parameter tables are generated from it (`markdown_table`). dataroot_publisher takes command-line
options instead of ROS parameters (`add_arguments` builds its argparse options from the same table).

Pure data and pure-Python checks: importable without rclpy (declare_parameters imports it when called) and
without torch: perception_node's entries read facts the core owns (OccupancyConfig's defaults, the
precisions of distillnerf_core.inference), never retyped, so they are built (importing the core model code)
the first time SCHEMA["perception_node"] is looked up; rig_monitor and dataroot_publisher stay light.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from distillnerf_core.data.nuscenes_tables import NUSCENES_CAMERAS

TYPES = ("bool", "int", "float", "string", "float_array", "string_array")
PYTHON_TYPES = {"bool": bool, "int": int, "float": float, "string": str}
ROS_BUILTIN_PARAMETERS = ("use_sim_time", "start_type_description_service")  # rclpy declares these on every node

RELIABILITIES = ("best_effort", "reliable")
MAX_CAMERAS = 64
MAX_QUERIES = 64
MAX_QUERY_CHARS = 512
MAX_NAME_CHARS = 256


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


def _frame_queries_check(value: list[str]) -> str | None:
    """semantic_queries: [""] (or only empty strings) means none; otherwise validate_queries on the others."""
    queries = [q for q in value if q]
    return validate_queries(queries) if queries else None


@dataclass(frozen=True)
class ParameterSpec:
    """One parameter. Every one is bounded: numbers by `range`, strings by `choices` or `pattern`, arrays by
    `count` (and their elements by `range` / `pattern`); booleans are true/false."""

    name: str
    type: str  # one of TYPES
    default: Any
    description: str
    read_only: bool = True
    unit: str = ""
    range: tuple[float, float] | tuple[float, float, float] | None = None  # min, max[, step]; inclusive
    choices: tuple[str, ...] | None = None
    pattern: str | None = None  # full match, of a string or of each string of a string_array
    pattern_text: str = ""  # the pattern in words (docs, errors)
    count: tuple[int, int] | None = None  # arrays: fewest and most elements
    max_chars: int | None = None  # strings and each string of a string_array
    increasing: bool = False  # float_array: strictly increasing ([low, high] with low < high)
    unique: bool = False  # string_array: no duplicates
    check: Callable[[Any], str | None] | None = None  # a further rule on the value: why it is refused, or None
    check_text: str = ""  # that rule in words
    required: bool = False  # command-line options only: must be given

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"{self.name}: type must be one of {TYPES}, got {self.type!r}")
        bounded = {"bool": True, "int": self.range, "float": self.range,
                   "string": self.choices or self.pattern, "float_array": self.count and self.range,
                   "string_array": self.count and (self.pattern or self.max_chars)}[self.type]
        if not bounded:
            raise ValueError(f"{self.name}: a {self.type} parameter needs its range or allowed values")
        if self.default is not None and not self.required and validate_value(self, self.default) is not None:
            raise ValueError(f"{self.name}: default {self.default!r} is not allowed: "
                             f"{validate_value(self, self.default)}")

    def allowed_text(self) -> str:
        """The range or allowed values in words: `0.0 .. 1.0`, `best_effort | reliable`, ..."""
        parts = []
        if self.type == "bool":
            parts.append("true | false")
        if self.choices:
            parts.append(" | ".join(self.choices))
        if self.pattern_text:
            parts.append(self.pattern_text)
        if self.count:
            low, high = self.count
            what = "strings" if self.type == "string_array" else "numbers"
            parts.append(f"{low} {what}" if low == high else f"{low} .. {high} {what}")
        if self.range:
            text = f"{_number(self.range[0])} .. {_number(self.range[1])}" + (f" {self.unit}" if self.unit else "")
            if len(self.range) > 2 and self.range[2]:
                text += f" in steps of {_number(self.range[2])}"
            parts.append(("each " + text) if self.type == "float_array" else text)
        if self.increasing:
            parts.append("low < high")
        if self.max_chars:
            parts.append(f"at most {self.max_chars} characters" + (" each" if self.type == "string_array" else ""))
        if self.unique:
            parts.append("no duplicates")
        if self.check_text:
            parts.append(self.check_text)
        return "; ".join(parts)


@dataclass(frozen=True)
class CrossRule:
    """A rule over several parameters of one node: `check(values)` says why they are refused, or None."""

    names: tuple[str, ...]
    check: Callable[[Mapping[str, Any]], str | None]
    text: str


@dataclass(frozen=True)
class NodeSchema:
    """The parameters of one program. `command_line`: they are command-line options, not ROS parameters."""

    node_name: str  # the ROS node name
    parameters: tuple[ParameterSpec, ...]
    rules: tuple[CrossRule, ...] = ()
    command_line: bool = False

    def spec(self, name: str) -> ParameterSpec:
        return next(spec for spec in self.parameters if spec.name == name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.parameters)


def _number(value: float) -> str:
    """A float as YAML needs it (1500.0, never 1500 or 1.5e+03 for a float parameter); an int as is."""
    return repr(float(value)) if isinstance(value, float) else str(value)


# -- checks of one value (pure Python) ---------------------------------------------------------------------
def _type_problem(spec: ParameterSpec, value: Any) -> str | None:
    if spec.type in PYTHON_TYPES:
        expected = PYTHON_TYPES[spec.type]
        if type(value) is not expected:  # rclpy types strictly: 1 is not a float parameter, True is not an int
            return f"expected a {spec.type}, got {type(value).__name__}"
        return None
    element = float if spec.type == "float_array" else str
    if not isinstance(value, list | tuple) or not all(type(v) is element for v in value):
        return f"expected a list of {'floats' if element is float else 'strings'}"
    return None


def validate_value(spec: ParameterSpec, value: Any) -> str | None:
    """Why `value` is not allowed for `spec` (type, range, choices, pattern, count, ...), or None."""
    problem = _type_problem(spec, value)
    if problem:
        return problem
    if spec.type in ("int", "float") and spec.range:
        low, high = spec.range[:2]
        if not low <= value <= high:
            return f"{value} is outside {_number(low)} .. {_number(high)}"
        if len(spec.range) > 2 and spec.range[2] and (value - low) % spec.range[2]:
            return f"{value} is not {_number(low)} plus a multiple of {_number(spec.range[2])}"
    strings = [value] if spec.type == "string" else list(value) if spec.type == "string_array" else []
    if spec.count:
        low, high = spec.count
        if len(value) > high:
            return f"{len(value)} entries exceed the limit of {high}"
        if len(value) < low:
            return f"{len(value)} entries, fewer than the {low} required"
    if spec.type == "float_array":
        if spec.range and not all(spec.range[0] <= v <= spec.range[1] for v in value):
            return f"{list(value)} has a value outside {_number(spec.range[0])} .. {_number(spec.range[1])}"
        if spec.increasing and not all(a < b for a, b in zip(value, value[1:], strict=False)):
            return f"{list(value)} must be [low, high] with low < high"
    for index, text in enumerate(strings):
        where = f"entry {index} " if spec.type == "string_array" else ""
        if spec.max_chars and len(text) > spec.max_chars:
            return f"{where}has {len(text)} characters, more than the limit of {spec.max_chars}"
        if spec.choices and text not in spec.choices:
            return f"{where}{text!r} is not one of {' | '.join(spec.choices)}"
        if spec.pattern and not re.fullmatch(spec.pattern, text):
            return f"{where}{text!r} is not {spec.pattern_text or 'a match of ' + spec.pattern}"
    if spec.unique and len(set(value)) != len(value):
        duplicates = sorted({v for v in value if list(value).count(v) > 1})
        return f"duplicate entries {duplicates}"
    if spec.check is not None:
        return spec.check(value)
    return None


# -- the table ---------------------------------------------------------------------------------------------
CAMERA_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
TOPIC_FORMAT = r"(?:[~/A-Za-z0-9_]|\{camera\})*\{camera\}(?:[/A-Za-z0-9_]|\{camera\})*"
TOPIC_FORMAT_TEXT = "a topic name of letters, digits, _ and / with the placeholder {camera}"
FRAME_ID = r"[A-Za-z0-9_][A-Za-z0-9_.\-/]*"
FRAME_ID_TEXT = "a TF frame id (letters, digits, _ . - /; no leading /)"
OCCUPANCY_EXTENT = (-1000.0, 1000.0)  # m, bounds of each occupancy_*_range value


def _reference_in_cameras(values: Mapping[str, Any]) -> str | None:
    reference, cameras = values["reference_camera"], list(values["cameras"])
    if reference and reference not in cameras:
        return f"reference_camera '{reference}' is not one of cameras {cameras}"
    return None


def _warn_not_above_error(values: Mapping[str, Any]) -> str | None:
    warn, error = values["processing_time_warn_ms"], values["processing_time_error_ms"]
    if warn > error:
        return f"processing_time_warn_ms ({warn}) must not exceed processing_time_error_ms ({error})"
    return None


RIG_PARAMETERS = (
    ParameterSpec("cameras", "string_array", list(NUSCENES_CAMERAS), "camera names; fill {camera} in the topics",
                  count=(1, MAX_CAMERAS), pattern=CAMERA_NAME,
                  pattern_text="each a name of letters, digits and _ (not starting with a digit)",
                  max_chars=MAX_NAME_CHARS, unique=True),
    ParameterSpec("image_topic_format", "string", "/{camera}/image_rect_compressed", "image topic per camera",
                  pattern=TOPIC_FORMAT, pattern_text=TOPIC_FORMAT_TEXT, max_chars=MAX_NAME_CHARS),
    ParameterSpec("camera_info_topic_format", "string", "/{camera}/camera_info", "CameraInfo topic per camera",
                  pattern=TOPIC_FORMAT, pattern_text=TOPIC_FORMAT_TEXT, max_chars=MAX_NAME_CHARS),
    ParameterSpec("compressed", "bool", True, "images are sensor_msgs/CompressedImage (JPEG/PNG); false:"
                  " sensor_msgs/Image"),
    ParameterSpec("output_frame", "string", "base_link", "frame of the outputs (REP-105 body frame)",
                  pattern=FRAME_ID, pattern_text=FRAME_ID_TEXT, max_chars=MAX_NAME_CHARS),
    ParameterSpec("fixed_frame", "string", "map", "world frame used to compensate ego motion between camera"
                  " stamps; ignored while absent from /tf", pattern=FRAME_ID, pattern_text=FRAME_ID_TEXT,
                  max_chars=MAX_NAME_CHARS),
    ParameterSpec("max_camera_delay", "float", 0.1, "a camera further than this from the trigger stamp is left"
                  " out of the set", unit="s", range=(0.001, 10.0)),
    ParameterSpec("reference_camera", "string", "", "camera whose arrival triggers a set (the one that fires"
                  " last); empty: when all cameras are fresh", pattern=f"(?:{CAMERA_NAME})?",
                  pattern_text="empty or one of cameras", max_chars=MAX_NAME_CHARS),
    ParameterSpec("min_cameras", "int", 1, "fewest usable cameras for a set to be processed (at most"
                  " len(cameras) apply)", range=(1, MAX_CAMERAS)),
    ParameterSpec("input_reliability", "string", "best_effort", "QoS reliability of the camera inputs:"
                  " best_effort (sensor data; also hears reliable publishers) or reliable", choices=RELIABILITIES),
    ParameterSpec("input_depth", "int", 5, "keep-last depth of the input subscriptions", unit="messages",
                  range=(1, 100)),
    ParameterSpec("rectify", "bool", True, "rectify images whose CameraInfo has non-zero distortion (plumb_bob,"
                  " rational_polynomial, equidistant); false: use them as pinhole images and say so in"
                  " diagnostics"),
    ParameterSpec("image_rectified", "string", "auto", "the images are rectified (REP-104, image_proc: use P's"
                  " left 3x3, ignore D) or raw (use K and rectify with D); auto: rectified when the image topic"
                  " has a part starting image_rect (the default /{camera}/image_rect_compressed), raw otherwise",
                  choices=("auto", "true", "false")),
    ParameterSpec("rectify_min_valid_fraction", "float", 0.5, "leave out a raw camera whose rectified image has"
                  " a source pixel for less than this fraction of its pixels (absurd distortion coefficients)",
                  range=(0.01, 1.0)),
    ParameterSpec("max_camera_distance", "float", 100.0, "leave out a camera that TF places further than this"
                  " from output_frame (checked in float32, the model's precision)", unit="m", range=(0.1, 10000.0)),
    ParameterSpec("check_optical_frames", "bool", True, "leave out cameras whose frame is not an optical frame"
                  " (REP-103: z forward, y down) in the z-up output frame"),
    ParameterSpec("tf_wait", "float", 0.5, "wait this long for TF and CameraInfo of a camera set before leaving"
                  " cameras out", unit="s", range=(0.0, 10.0)),
)
RIG_RULES = (CrossRule(("reference_camera", "cameras"), _reference_in_cameras, "reference_camera is one of cameras"),)


@cache
def perception_parameters() -> tuple[ParameterSpec, ...]:
    """perception_node's own parameters (model, outputs, diagnostics), after RIG_PARAMETERS; imports the core
    model code for OccupancyConfig's defaults and the inference precisions."""
    from distillnerf_core.inference import PRECISIONS
    from distillnerf_core.model.occupancy import OccupancyConfig
    from distillnerf_core.teacher_semantics import SEMANTIC_SOURCES, TeacherSemanticsConfig

    occupancy = OccupancyConfig()
    teacher = TeacherSemanticsConfig()

    def occupancy_range(axis: str, text: str) -> ParameterSpec:
        return ParameterSpec(f"occupancy_{axis}_range", "float_array",
                             [float(v) for v in getattr(occupancy, f"{axis}_range")], text, unit="m",
                             count=(2, 2), range=OCCUPANCY_EXTENT, increasing=True)

    return (
        ParameterSpec("model_path", "string", "", "checkpoint (.safetensors with its .json beside it); empty: the"
                      " bundled model (models/default/model.safetensors)", pattern=r"(?:.*\.safetensors)?",
                      pattern_text="empty or a path ending in .safetensors", max_chars=4096),
        ParameterSpec("device", "string", "auto", "torch device: auto (cuda when available), cpu, cuda or cuda:N",
                      pattern=r"auto|cpu|cuda(?::[0-9]+)?", pattern_text="auto | cpu | cuda | cuda:N"),
        ParameterSpec("device_fallback", "bool", True, "fall back to the CPU when CUDA is requested but absent"
                      " (false: configure fails)"),
        ParameterSpec("precision", "string", "fp32", "inference precision (fp16: CUDA only; on a CPU fallback fp16"
                      " runs as fp32)", choices=tuple(PRECISIONS)),
        ParameterSpec("torch_threads", "int", 0, "CPU threads for torch (0: torch's default)", unit="threads",
                      range=(0, 1024)),
        ParameterSpec("compile", "bool", False,
                      "torch.compile the encoder, lift and RGB decoder (measured on an H200: paper forward 29 -> 22 ms;"
                      " not measured on a CPU); configure starts compiling them on a warm-up frame of len(cameras)"
                      " cameras on a thread of its own (seconds to a minute on a GPU, minutes on a CPU; /diagnostics"
                      " WARNs compiling meanwhile, services answer, the first frame waits), a frame with another"
                      " camera count compiles once more; a stage that fails to compile runs eagerly and /diagnostics"
                      " shows compile_errors"),
        ParameterSpec("autostart", "bool", True, "configure and activate on start (false: drive the node with"
                      " lifecycle transitions)"),
        occupancy_range("x", "ego x extent (forward) of the occupancy grid"),
        occupancy_range("y", "ego y extent (left) of the occupancy grid"),
        occupancy_range("z", "ego z extent (up) of the occupancy grid"),
        ParameterSpec("occupancy_voxel_size", "float", float(occupancy.voxel_size), "cell size of the occupancy"
                      " grid; also the OccupancyGrid (BEV) resolution", unit="m", range=(0.01, 10.0)),
        ParameterSpec("occupancy_threshold", "float", float(occupancy.threshold), "density above which a cell is"
                      " occupied", range=(0.0, 1000.0)),
        ParameterSpec("depth_min_opacity", "float", 0.5, "depth is NaN (REP-118: no depth) where the rendered ray's"
                      " opacity is below this; ~/<camera>/depth/opacity carries the opacity", read_only=False,
                      range=(0.0, 1.0)),
        ParameterSpec("publish_rendered", "bool", False, "publish ~/<camera>/rendered RGB", read_only=False),
        ParameterSpec("semantic_queries", "string_array", [""], "text queries every frame's ~/occupancy voxels are"
                      " labelled with ([\"\"]: none); the model must be distilled from a teacher that answers them (or"
                      " semantic_source teacher: the segmenter labels every frame)",
                      read_only=False, count=(1, MAX_QUERIES), max_chars=MAX_QUERY_CHARS, check=_frame_queries_check,
                      check_text="[\"\"] or non-blank queries"),
        ParameterSpec("semantic_source", "string", "distilled", "where voxel labels come from: distilled (the"
                      " model's own features against text, as its teacher answers them) or teacher (the live"
                      " ESPNetv2 Cityscapes segmenter run on the frame's camera images, each occupied voxel labelled"
                      " by the pixels where it is visible in the rendered depth; closed vocabulary: its 20 classes"
                      " and aliases). teacher decodes images at least semantic_teacher_width wide and runs the"
                      " segmenter only for a ~/query_scene call (on the newest frame) or with semantic_queries",
                      choices=tuple(SEMANTIC_SOURCES)),
        ParameterSpec("semantic_teacher_width", "int", teacher.width, "semantic_source teacher: the segmenter's"
                      " input width (aspect kept; it was trained at 1024); its cost grows with the square",
                      unit="px", range=(64, 2048, 16)),
        ParameterSpec("semantic_teacher_weights", "string", "", "semantic_source teacher: segmenter weights"
                      " (.safetensors); empty: the shipped ESPNetv2 Cityscapes weights",
                      pattern=r"(?:.*\.safetensors)?", pattern_text="empty or a path ending in .safetensors",
                      max_chars=4096),
        ParameterSpec("processing_time_warn_ms", "float", 1500.0, "diagnostics WARN above this processing time",
                      read_only=False, unit="ms", range=(0.0, 1e6)),
        ParameterSpec("processing_time_error_ms", "float", 5000.0, "diagnostics ERROR above this processing time",
                      read_only=False, unit="ms", range=(0.0, 1e6)),
        *GRADING_PARAMETERS,
    )


# Self-grading (nodes/perception_grading.py). The PSNR threshold from a measurement of the bundled model on
# the CPU with the JPEGs decoded as the node decodes them (benchmarks/grading_cost.py ->
# benchmarks/results/grading_cost.json; docs/node.md "Self-grading"): held-out synthetic keyframes (its domain)
# read 19.7 and 18.2 dB (median over cameras), the real nuScenes keyframe 19.2 dB: the PSNR does not separate
# them for this model, so 17.0 dB sits below its domain (a WARN means a frame the model renders badly, e.g.
# DDAD at ~14.4 dB in distillnerf-eval), not "any real frame".
GRADING_PARAMETERS = (
    ParameterSpec("grading_every_n_frames", "int", 10, "grade every N-th frame that reaches the worker: it also"
                  " renders RGB (and depth) and publishes ~/debug/recon_psnr (with lidar_topic ~/debug/depth_abs_rel,"
                  " ~/debug/depth_delta1); 0: off", read_only=False, unit="frames", range=(0, 1_000_000)),
    ParameterSpec("grading_psnr_warn_db", "float", 17.0, "diagnostics WARN, naming the cameras, when the recon PSNR"
                  " (median over the last grading_window graded frames) is below this: the input is out of the"
                  " model's domain", read_only=False, unit="dB", range=(0.0, 100.0)),
    ParameterSpec("grading_window", "int", 10, "graded frames the /diagnostics medians are taken over",
                  unit="frames", range=(1, 10_000)),
    ParameterSpec("lidar_topic", "string", "", "sensor_msgs/PointCloud2 LiDAR sweeps the rendered depth of graded"
                  " frames is scored against (x, y, z in the cloud's frame; TF to the cameras); empty: no depth"
                  " grading", pattern=r"(?:[~/A-Za-z0-9_]+)?", pattern_text="empty or a topic name",
                  max_chars=MAX_NAME_CHARS),
    ParameterSpec("lidar_max_delay", "float", 0.1, "a graded frame is scored against the sweep nearest its stamp"
                  " within this", unit="s", range=(0.001, 10.0)),
)


DATAROOT_PUBLISHER_OPTIONS = (
    ParameterSpec("dataroot", "string", None, "nuScenes-format dataroot whose camera records are published",
                  pattern=r".+", pattern_text="a directory path", required=True),
    ParameterSpec("version", "string", "", "table folder, e.g. v1.0-mini (empty: the only one)",
                  pattern=r"[A-Za-z0-9_.\-]*", pattern_text="empty or a folder name (letters, digits, _ . -)",
                  max_chars=MAX_NAME_CHARS),
    ParameterSpec("wait_subscribers", "float", 20.0, "wait this long for a subscriber on every image and"
                  " CameraInfo topic (exit 1 after)", unit="s", range=(0.0, 3600.0)),
    ParameterSpec("linger", "float", 3.0, "keep serving (reliable resends, latched /tf_static) this long after"
                  " publishing", unit="s", range=(0.0, 3600.0)),
)

class _Table(Mapping):
    """SCHEMA: program name -> NodeSchema, each built on its first lookup (see the module docstring)."""

    def __init__(self, builders: dict[str, Callable[[], NodeSchema]]) -> None:
        self._builders = builders

    def __getitem__(self, node_name: str) -> NodeSchema:
        return self._builders[node_name]()

    def __iter__(self) -> Iterator[str]:
        return iter(self._builders)

    def __len__(self) -> int:
        return len(self._builders)


SCHEMA: Mapping[str, NodeSchema] = _Table({
    "perception_node": cache(lambda: NodeSchema(
        "distillnerf_perception", RIG_PARAMETERS + perception_parameters(),
        RIG_RULES + (CrossRule(("processing_time_warn_ms", "processing_time_error_ms"), _warn_not_above_error,
                               "processing_time_warn_ms <= processing_time_error_ms"),))),
    "rig_monitor": cache(lambda: NodeSchema("rig_monitor", RIG_PARAMETERS + (
        ParameterSpec("max_frames", "int", 0, "exit after this many synchronised frames (0: run until stopped)",
                      unit="frames", range=(0, 1_000_000_000)),), RIG_RULES)),
    "dataroot_publisher": cache(lambda: NodeSchema("nuscenes_dataroot_publisher", DATAROOT_PUBLISHER_OPTIONS,
                                                   command_line=True)),
})


def node_schema(node_name: str) -> NodeSchema:
    """The schema of a program (perception_node, rig_monitor, dataroot_publisher); KeyError names the known."""
    if node_name not in SCHEMA:
        raise KeyError(f"no parameter schema for {node_name!r}; known: {sorted(SCHEMA)}")
    return SCHEMA[node_name]


# -- checks of a node's values -----------------------------------------------------------------------------
class ParameterValueError(ValueError):
    """A parameter value outside its schema: the message names the parameter, the value and what is allowed."""


def refusal(node_name: str, spec: ParameterSpec, value: Any, reason: str) -> str:
    """The message of a refused value: node, parameter, value, why and what is allowed."""
    return (f"{node_name}: parameter '{spec.name}' = {value!r} is not allowed ({reason}); allowed: "
            f"{spec.allowed_text()}")


def validate_change(node_name: str, changes: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """Why setting `changes` on a node whose other values are `current` is refused, or None: each value
    against its schema entry, then the node's cross-parameter rules over the merged values (a rule whose
    parameters are not all known yet, as while the node declares them, is skipped). Names outside the
    schema (rclpy's own, e.g. use_sim_time) pass."""
    schema = node_schema(node_name)
    for name, value in changes.items():
        if name in schema.names:
            reason = validate_value(schema.spec(name), value)
            if reason:
                return refusal(node_name, schema.spec(name), value, reason)
    merged = {**current, **changes}
    for rule in schema.rules:
        if any(name in changes for name in rule.names) and all(name in merged for name in rule.names):
            reason = rule.check(merged)
            if reason:
                return f"{node_name}: {reason}"
    return None


def validate_values(node_name: str, values: Mapping[str, Any], complete: bool = False) -> list[str]:
    """Every problem of a set of values for a node (e.g. a params file's `ros__parameters`): names the
    schema does not have, values it refuses, broken cross-parameter rules (over the defaults for names not
    given) and, with `complete`, the schema's names that are missing."""
    schema = node_schema(node_name)
    problems = [f"{node_name} has no parameter '{name}'" for name in values if name not in schema.names]
    known = {name: value for name, value in values.items() if name in schema.names}
    for name, value in known.items():
        reason = validate_value(schema.spec(name), value)
        if reason:
            problems.append(refusal(node_name, schema.spec(name), value, reason))
    merged = {spec.name: spec.default for spec in schema.parameters} | known
    problems += [f"{node_name}: {reason}" for rule in schema.rules if (reason := rule.check(merged))]
    if complete:
        problems += [f"{node_name}: parameter '{name}' is missing" for name in schema.names if name not in values]
    return problems


# -- ROS -------------------------------------------------------------------------------------------------------
def descriptor_text(spec: ParameterSpec) -> str:
    """The descriptor's description: what it is, the unit and the range or allowed values."""
    unit = f"unit: {spec.unit}; " if spec.unit else ""
    return f"{spec.description} [{unit}allowed: {spec.allowed_text()}]"


def declare_parameters(node, node_name: str) -> None:
    """Declare every parameter of `node_name` on `node` from the schema: a ParameterDescriptor each
    (description with unit and allowed values, read_only, FloatingPointRange / IntegerRange for numbers so
    rclpy itself checks them on set, additional_constraints with the allowed values), and an on-set
    callback (validate_change) that checks choices, patterns, array bounds and the cross-parameter rules.
    rclpy runs both at declare too, so a value from a params file or an override that the schema refuses
    raises ParameterValueError naming the node, the parameter, the value and what is allowed."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
    from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException

    schema = node_schema(node_name)
    if schema.command_line:
        raise ValueError(f"{node_name} takes command-line options, not ROS parameters (use add_arguments)")
    refused: dict[str, str] = {}  # this callback's reasons, for the error raised at declare

    def on_set(parameters) -> SetParametersResult:
        changes = {p.name: p.value for p in parameters}
        current = {name: node.get_parameter(name).value for name in schema.names
                   if name not in changes and node.has_parameter(name)}
        reason = validate_change(node_name, changes, current)
        if reason:
            refused.update(dict.fromkeys(changes, reason))
        return SetParametersResult(successful=reason is None, reason=reason or "")

    node.add_on_set_parameters_callback(on_set)
    for spec in schema.parameters:
        step = spec.range[2] if spec.range and len(spec.range) > 2 else 0
        ranges = {}
        if spec.type == "float":
            ranges["floating_point_range"] = [FloatingPointRange(
                from_value=float(spec.range[0]), to_value=float(spec.range[1]), step=float(step))]
        elif spec.type == "int":
            ranges["integer_range"] = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]),
                                                    step=int(step))]
        descriptor = ParameterDescriptor(description=descriptor_text(spec), read_only=spec.read_only,
                                         additional_constraints=spec.allowed_text(), **ranges)
        try:
            default = list(spec.default) if isinstance(spec.default, list) else spec.default  # a copy per node
            node.declare_parameter(spec.name, default, descriptor)
        except (InvalidParameterValueException, InvalidParameterTypeException) as error:
            if spec.name in refused:  # our on-set check: its reason names the value and what is allowed
                raise ParameterValueError(refused[spec.name]) from None
            # rclpy's own range or type check (its text has the value)
            text = re.sub(rf"^Invalid parameter value \(.*\) for parameter\. Reason: |: {re.escape(spec.name)}$", "",
                          str(error))
            raise ParameterValueError(f"{node_name}: parameter '{spec.name}' is not allowed ({text}); allowed:"
                                      f" {spec.allowed_text()}") from None


# -- command-line options ----------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser, node_name: str) -> None:
    """argparse options (--name-with-dashes) for a command-line program's schema, checked as they are parsed."""
    for spec in node_schema(node_name).parameters:
        def parse(text: str, spec: ParameterSpec = spec) -> Any:
            try:
                value = PYTHON_TYPES[spec.type](text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected a {spec.type}, got {text!r}") from None
            reason = validate_value(spec, value)
            if reason:
                raise argparse.ArgumentTypeError(f"{reason}; allowed: {spec.allowed_text()}")
            return value

        unit = f" ({spec.unit})" if spec.unit else ""
        default = "" if spec.required else f"; default {spec.default!r}"
        parser.add_argument(f"--{spec.name.replace('_', '-')}", type=parse, required=spec.required,
                            default=spec.default, help=f"{spec.description}{unit}{default}")


# -- docs ----------------------------------------------------------------------------------------------------------
def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default_text(spec: ParameterSpec) -> str:
    if spec.required:
        return "(required)"
    if spec.type == "bool":
        return f"`{str(spec.default).lower()}`"
    if spec.type == "string":
        return f'`"{spec.default}"`'
    if spec.type == "string_array":
        return "`[" + ", ".join(f'"{v}"' for v in spec.default) + "]`"
    if spec.type == "float_array":
        return "`[" + ", ".join(_number(v) for v in spec.default) + "]`"
    return f"`{_number(spec.default)}`"


def markdown_table(node_name: str) -> str:
    """The parameter table of a program for docs/node.md: name | type | default | range / allowed |
    read-only | description (command-line programs: option names and `command line` in read-only)."""
    schema = node_schema(node_name)
    lines = ["| name | type | default | range / allowed | read-only | description |",
             "|---|---|---|---|---|---|"]
    for spec in schema.parameters:
        name = f"--{spec.name.replace('_', '-')}" if schema.command_line else spec.name
        read_only = "command line" if schema.command_line else "yes" if spec.read_only else "no"
        lines.append(f"| `{name}` | {spec.type} | {_cell(_default_text(spec))} | {_cell(spec.allowed_text())} |"
                     f" {read_only} | {_cell(spec.description)} |")
    if schema.rules:
        lines.append("")
        lines.append("Rules across parameters: " + "; ".join(rule.text for rule in schema.rules) + ".")
    return "\n".join(lines) + "\n"


def _main(argv: Sequence[str] | None = None) -> int:
    """python -m distillnerf_ros.nodes.parameter_schema NODE: print its markdown table."""
    parser = argparse.ArgumentParser(description=_main.__doc__)
    parser.add_argument("node", choices=sorted(SCHEMA))
    print(markdown_table(parser.parse_args(argv).node), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
