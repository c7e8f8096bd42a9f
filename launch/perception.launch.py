"""ros2 launch distillnerf_ros perception.launch.py [config:=FILE] [use_sim_time:=true] [rviz:=true]

Starts the camera-rig input node with config/perception.yaml. (The perception node with the model
replaces rig_monitor here once it lands; the parameters stay the same.)
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    share = Path(get_package_share_directory("distillnerf_ros"))
    use_sim_time = LaunchConfiguration("use_sim_time")
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=str(share / "config" / "perception.yaml"),
                              description="parameter file"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="true when playing a bag --clock"),
        DeclareLaunchArgument("rviz", default_value="false", description="start RViz with the package's config"),
        Node(package="distillnerf_ros", executable="rig_monitor", name="rig_monitor", output="screen",
             parameters=[LaunchConfiguration("config"), {"use_sim_time": use_sim_time}]),
        Node(package="rviz2", executable="rviz2", name="rviz2", output="screen",
             arguments=["-d", str(share / "rviz" / "distillnerf.rviz")],
             parameters=[{"use_sim_time": use_sim_time}], condition=IfCondition(LaunchConfiguration("rviz"))),
    ])
