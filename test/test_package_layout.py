"""The package's promises about its own layout: a ROS-free core, the service definition, params that exist."""

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import rclpy
import yaml
from conftest import REPO

ROS_MODULES = {"rclpy", "sensor_msgs", "std_msgs", "geometry_msgs", "nav_msgs", "tf2_msgs", "builtin_interfaces",
               "diagnostic_msgs", "rosgraph_msgs", "rcl_interfaces", "launch", "launch_ros", "distillnerf_ros",
               "rosbags"}


def imported_top_level_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module.split(".")[0])
    return modules


@pytest.mark.parametrize("path", sorted((REPO / "distillnerf_core").rglob("*.py")), ids=lambda p: p.name)
def test_core_library_imports_no_ros(path):
    ros_imports = imported_top_level_modules(path) & ROS_MODULES
    assert not ros_imports, f"{path.relative_to(REPO)} imports ROS modules {ros_imports}; the core must stay ROS-free"


def test_query_scene_service_matches_its_specification():
    from distillnerf_ros.srv import QueryScene

    request, response = QueryScene.Request(), QueryScene.Response()
    assert request.get_fields_and_field_types() == {"queries": "sequence<string>", "threshold": "float"}
    assert response.get_fields_and_field_types() == {"success": "boolean", "message": "string",
                                                     "cloud": "sensor_msgs/PointCloud2",
                                                     "max_scores": "sequence<float>"}


def test_package_xml_names_the_package_and_its_interface_group():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.findtext("name") == "distillnerf_ros"
    assert root.findtext("export/build_type") == "ament_cmake"
    assert root.findtext("member_of_group") == "rosidl_interface_packages"


# Modules that come with a ROS package of another name (rosdep keys are package names).
ROS_PACKAGE_OF = {"rclpy": "rclpy", "launch": "launch", "launch_ros": "launch_ros",
                  "ament_index_python": "ament_index_python"}


def test_package_xml_declares_every_ros_package_the_code_and_launch_file_use():
    root = ET.parse(REPO / "package.xml").getroot()
    declared = {e.text for e in root if e.tag in ("depend", "exec_depend")}
    sources = [*(REPO / "distillnerf_ros").rglob("*.py"), *(REPO / "launch").glob("*.py"),
               *(p for p in (REPO / "scripts").iterdir() if p.is_file() and p.suffix == "")]
    used = set()
    for path in sources:
        if path.read_text().startswith("#!/usr/bin/env bash"):
            continue
        used |= {m for m in imported_top_level_modules(path) if m in ROS_MODULES | set(ROS_PACKAGE_OF)}
    used -= {"distillnerf_ros", "rosbags"}  # this package; rosbags is a pip package (requirements-core.txt)
    launch_text = (REPO / "launch" / "perception.launch.py").read_text()
    used |= {"rviz2"} if 'executable="rviz2"' in launch_text else set()
    used |= {"ros2bag", "rosbag2_storage_mcap"} if '"ros2", "bag", "play"' in launch_text else set()
    missing = {ROS_PACKAGE_OF.get(m, m) for m in used} - declared
    assert not missing, f"package.xml lacks <exec_depend> for {sorted(missing)}: rosdep could not install them"


def test_installed_programs_and_directories_exist():
    cmake = (REPO / "CMakeLists.txt").read_text()
    programs = ("perception_node", "rig_monitor", "dataroot_publisher", "nusc2bag", "bag2nusc", "play", "nusc_sample")
    for program in (f"scripts/{name}" for name in programs):
        assert program in cmake and (REPO / program).stat().st_mode & 0o111, f"{program} missing or not executable"
    for directory in ("launch", "config", "rviz", "data"):
        assert any((REPO / directory).iterdir()), f"{directory}/ is installed but empty"


@pytest.mark.ros  # rclpy.init and a PerceptionNode: a DDS participant
def test_parameter_file_sets_only_declared_parameters_and_loads_into_the_node():
    from distillnerf_ros.nodes.perception import PerceptionNode

    params_file = REPO / "config" / "perception.yaml"
    values = yaml.safe_load(params_file.read_text())["/**"]["ros__parameters"]
    context = rclpy.Context()
    rclpy.init(context=context, args=["--ros-args", "--params-file", str(params_file)])
    try:
        node = PerceptionNode(context=context)
        for name, value in values.items():
            assert node.has_parameter(name), f"config/perception.yaml sets '{name}', which the node does not declare"
            assert node.get_parameter(name).value == value, f"parameter '{name}' did not load from the YAML file"
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
