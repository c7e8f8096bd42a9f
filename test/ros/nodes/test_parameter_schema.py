"""The one parameter schema (distillnerf_ros/nodes/parameter_schema.py) against the real nodes over DDS, the
params files in config/ and the generated docs table: every parameter declared from it with its range or
allowed values, refused values refused with a reason, a bad params file stops the node naming the value."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import rclpy
import yaml
from conftest import REPO
from rcl_interfaces.msg import ParameterType
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient

from distillnerf_ros.nodes.parameter_schema import (
    ROS_BUILTIN_PARAMETERS,
    SCHEMA,
    ParameterValueError,
    markdown_table,
    validate_values,
)
from distillnerf_ros.nodes.perception import PerceptionNode
from distillnerf_ros.nodes.rig_monitor import RigMonitorNode
from ros_helpers import RosSession

NODE_CLASSES = {"perception_node": PerceptionNode, "rig_monitor": RigMonitorNode}
ROS_TYPES = {"bool": ParameterType.PARAMETER_BOOL, "int": ParameterType.PARAMETER_INTEGER,
             "float": ParameterType.PARAMETER_DOUBLE, "string": ParameterType.PARAMETER_STRING,
             "float_array": ParameterType.PARAMETER_DOUBLE_ARRAY,
             "string_array": ParameterType.PARAMETER_STRING_ARRAY}
NO_MODEL = {"autostart": False}  # declared parameters only: no model is loaded


def start(session: RosSession, program: str, **parameters):
    overrides = (NO_MODEL if program == "perception_node" else {}) | parameters
    return session.node(program, NODE_CLASSES[program],
                        parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])


def answer(session: RosSession, future, what: str):
    assert session.spin_until(future.done, 10), f"no answer to {what} over DDS"
    return future.result()


def parameter_client(session: RosSession, node) -> AsyncParameterClient:
    client = AsyncParameterClient(session.node("parameter_client"), node.get_fully_qualified_name())
    assert session.spin_until(lambda: client.services_are_ready(), 10), "the node's parameter services are not up"
    return client


@pytest.mark.parametrize("program", ["perception_node", "rig_monitor"])
def test_a_running_node_declares_exactly_the_schema_parameters_each_with_its_range_or_allowed_values(
        session, program):
    schema = SCHEMA[program]
    node = start(session, program)
    client = parameter_client(session, node)
    listed = answer(session, client.list_parameters(), "list_parameters").result.names
    assert sorted(set(listed) - set(ROS_BUILTIN_PARAMETERS)) == sorted(schema.names)
    descriptors = answer(session, client.describe_parameters(list(schema.names)), "describe_parameters").descriptors
    for spec, descriptor in zip(schema.parameters, descriptors, strict=True):
        assert descriptor.name == spec.name
        assert descriptor.type == ROS_TYPES[spec.type], f"{spec.name}: declared type {descriptor.type}"
        assert descriptor.read_only == spec.read_only, f"{spec.name}: read_only {descriptor.read_only}"
        assert spec.description in descriptor.description
        assert descriptor.additional_constraints == spec.allowed_text() != "", spec.name
        if spec.type == "float":
            bounds = descriptor.floating_point_range
            assert [(b.from_value, b.to_value) for b in bounds] == [spec.range[:2]], f"{spec.name}: {bounds}"
        elif spec.type == "int":
            bounds = descriptor.integer_range
            assert [(b.from_value, b.to_value) for b in bounds] == [spec.range[:2]], f"{spec.name}: {bounds}"
        else:
            assert not descriptor.floating_point_range and not descriptor.integer_range


@pytest.mark.parametrize("name,value,reason", [
    ("depth_min_opacity", 2.0, "out of range"),
    ("processing_time_warn_ms", 9000.0, "must not exceed processing_time_error_ms"),
    ("processing_time_error_ms", 1000.0, "must not exceed processing_time_error_ms"),
    ("semantic_queries", ["car", "   "], "query 1 is empty"),
    ("semantic_queries", ["x" * 600], "more than the limit of 512"),
    ("semantic_queries", ["car"] * 65, "exceed the limit of 64"),
    ("publish_rendered", "yes", "Wrong parameter type"),
    ("device", "cpu", "read-only"),
    ("input_reliability", "reliable", "read-only"),
])
def test_a_change_outside_the_schema_over_dds_is_refused_with_its_reason_and_not_applied(
        session, name, value, reason):
    node = start(session, "perception_node")
    before = node.get_parameter(name).value
    client = parameter_client(session, node)
    result = answer(session, client.set_parameters([Parameter(name, value=value)]), "set_parameters").results[0]
    assert not result.successful and reason in result.reason, result.reason
    assert node.get_parameter(name).value == before


def test_a_change_inside_the_schema_over_dds_is_applied(session):
    node = start(session, "perception_node")
    client = parameter_client(session, node)
    changes = [Parameter("depth_min_opacity", value=0.25), Parameter("semantic_queries", value=["car", "road"]),
               Parameter("processing_time_warn_ms", value=4000.0)]
    results = answer(session, client.set_parameters(changes), "set_parameters").results
    assert all(r.successful for r in results), [r.reason for r in results]
    assert node.get_parameter("depth_min_opacity").value == 0.25
    assert list(node.get_parameter("semantic_queries").value) == ["car", "road"]


@pytest.mark.parametrize("program,name,value", [
    ("perception_node", "input_reliability", "fast"),
    ("perception_node", "device", "gpu7"),
    ("perception_node", "precision", "fp8"),
    ("perception_node", "min_cameras", 0),
    ("perception_node", "occupancy_z_range", [3.0, -5.0]),
    ("perception_node", "model_path", "models/default/model.pt"),
    ("perception_node", "tf_wait", 1),  # an int where a float is declared
    ("rig_monitor", "input_reliability", "fast"),
    ("rig_monitor", "max_frames", -1),
    ("rig_monitor", "image_topic_format", "/camera/image"),  # no {camera}: every camera on one topic
    ("rig_monitor", "cameras", ["CAM_FRONT", "CAM_FRONT"]),
])
def test_a_params_file_value_outside_the_schema_stops_the_node_naming_parameter_and_value(
        tmp_path, program, name, value):
    params_file = tmp_path / "bad.yaml"
    params_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": {name: value}}}))
    context = rclpy.Context()
    rclpy.init(context=context, args=["--ros-args", "--params-file", str(params_file)])
    try:
        with pytest.raises(ParameterValueError) as refused:
            NODE_CLASSES[program](context=context, parameter_overrides=[Parameter("autostart", value=False)])
    finally:
        rclpy.try_shutdown(context=context)
    message = str(refused.value)
    shown = str(value)[:20] if not isinstance(value, list) else str(value[0])
    assert f"'{name}'" in message and shown in message and "allowed" in message, message


@pytest.mark.parametrize("name,value,expected", [
    ("reference_camera", "CAM_NOWHERE", "reference_camera 'CAM_NOWHERE' is not one of cameras"),
    ("processing_time_warn_ms", 6000.0, "processing_time_warn_ms (6000.0) must not exceed processing_time_error_ms"),
])
def test_a_params_file_breaking_a_rule_across_parameters_stops_the_node_saying_which(tmp_path, name, value,
                                                                                      expected):
    params_file = tmp_path / "bad.yaml"
    params_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": {name: value}}}))
    context = rclpy.Context()
    rclpy.init(context=context, args=["--ros-args", "--params-file", str(params_file)])
    try:
        with pytest.raises(ParameterValueError, match=re.escape(expected)):
            PerceptionNode(context=context, parameter_overrides=[Parameter("autostart", value=False)])
    finally:
        rclpy.try_shutdown(context=context)


@pytest.mark.parametrize("program", ["perception_node", "rig_monitor"])
def test_the_program_exits_2_naming_a_params_file_value_outside_the_schema(tmp_path, program):
    params_file = tmp_path / "bad.yaml"
    params_file.write_text("/**:\n  ros__parameters:\n    input_reliability: fast\n")
    process = subprocess.run([sys.executable, str(REPO / "scripts" / program), "--ros-args", "--params-file",
                              str(params_file)], capture_output=True, text=True, timeout=120, env=os.environ.copy())
    output = process.stdout + process.stderr
    assert process.returncode == 2, output[-2000:]
    assert "'input_reliability' = 'fast' is not allowed" in output and "best_effort | reliable" in output, output
    assert "Traceback" not in output, output[-2000:]


def params_of(path) -> dict:
    return yaml.safe_load(path.read_text())["/**"]["ros__parameters"]


def test_perception_yaml_sets_every_perception_node_parameter_to_an_allowed_value():
    assert validate_values("perception_node", params_of(REPO / "config" / "perception.yaml"), complete=True) == []


def test_ddad_yaml_over_perception_yaml_sets_only_schema_parameters_to_allowed_values():
    base, ddad = params_of(REPO / "config" / "perception.yaml"), params_of(REPO / "config" / "ddad.yaml")
    assert ddad and validate_values("perception_node", ddad) == []
    assert validate_values("perception_node", base | ddad, complete=True) == []
    rig = {k: v for k, v in (base | ddad).items() if k in SCHEMA["rig_monitor"].names}
    assert validate_values("rig_monitor", rig) == [], "rig_monitor reads the camera-input part of these files"


def test_validate_values_reports_unknown_missing_and_refused_parameters():
    problems = validate_values("rig_monitor", {"camera": ["A"], "min_cameras": 0}, complete=True)
    assert "rig_monitor has no parameter 'camera'" in problems
    assert any("'min_cameras' = 0 is not allowed" in p for p in problems)
    assert "rig_monitor: parameter 'cameras' is missing" in problems


def test_perception_yaml_names_the_classes_the_bundled_model_answers():
    comment = (REPO / "config" / "perception.yaml").read_text()
    teacher = json.loads((REPO / "models" / "default" / "model.json").read_text())["config"]["feature_head"]["teacher"]
    listed = re.search(r"model\.json: ([a-z_,\s#]+)\)", comment).group(1)
    assert [c.strip() for c in listed.replace("#", "").split(",")] == teacher["classes"]
    assert f"bundled one is {teacher['kind']}-distilled" in comment, "the comment names the bundled model's teacher"


@pytest.mark.parametrize("program", sorted(SCHEMA))
def test_markdown_table_has_one_row_per_parameter_with_its_allowed_values(program):
    schema = SCHEMA[program]
    rows = [line for line in markdown_table(program).splitlines() if line.startswith("| `")]
    names = [re.match(r"\| `(?:--)?([^`]+)`", row).group(1).replace("-", "_") for row in rows]
    assert names == list(schema.names)
    for row, spec in zip(rows, schema.parameters, strict=True):
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
        assert len(cells) == 6, row
        assert cells[1] == spec.type and cells[3] == spec.allowed_text().replace("|", "\\|") != "", row
        assert cells[4] == ("command line" if schema.command_line else "yes" if spec.read_only else "no"), row


def test_dataroot_publisher_refuses_an_option_outside_the_schema():
    process = subprocess.run([sys.executable, str(REPO / "scripts" / "dataroot_publisher"), "--dataroot",
                              str(REPO / "data" / "nuscenes_sample"), "--linger", "-1"], capture_output=True,
                             text=True, timeout=60)
    assert process.returncode == 2 and "--linger" in process.stderr and "0.0 .. 3600.0" in process.stderr, (
        process.stderr)
