"""ros2 launch distillnerf_ros perception.launch.py [config:=FILE] [use_sim_time:=true] [bag:=DIR] [rviz:=true]

Starts perception_node with config/perception.yaml; with bag:=DIR also plays that rosbag2 with /clock
(`ros2 bag play --clock --loop`, so pass use_sim_time:=true), and with rviz:=true opens RViz with the
package's display config.
"""

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    share = Path(get_package_share_directory("distillnerf_ros"))
    use_sim_time = LaunchConfiguration("use_sim_time")
    bag = LaunchConfiguration("bag")
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=str(share / "config" / "perception.yaml"),
                              description="parameter file"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="true when playing a bag --clock"),
        DeclareLaunchArgument("bag", default_value="", description="rosbag2 to play with --clock --loop"),
        DeclareLaunchArgument("rviz", default_value="false", description="start RViz with the package's config"),
        Node(package="distillnerf_ros", executable="perception_node", name="distillnerf_perception",
             output="screen", parameters=[LaunchConfiguration("config"), {"use_sim_time": use_sim_time}]),
        ExecuteProcess(cmd=["ros2", "bag", "play", bag, "--clock", "--loop"], output="screen",
                       condition=IfCondition(PythonExpression(["'", bag, "' != ''"]))),
        Node(package="rviz2", executable="rviz2", name="rviz2", output="screen",
             arguments=["-d", str(share / "rviz" / "distillnerf.rviz")],
             parameters=[{"use_sim_time": use_sim_time}], condition=IfCondition(LaunchConfiguration("rviz"))),
    ])
