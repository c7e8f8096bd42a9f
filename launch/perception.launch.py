"""ros2 launch distillnerf_ros perception.launch.py [config:=FILE] [use_sim_time:=true] [bag:=DIR] [rviz:=true]

Starts perception_node with config/perception.yaml; with bag:=DIR also plays that rosbag2 with /clock and
--loop (so pass use_sim_time:=true): through `ros2 bag play` where the ros2 command has its `bag` verb, else
through the package's own player (lib/distillnerf_ros/play, or `python -m distillnerf_ros.tools.play`), which
needs no rosbag2. With rviz:=true opens RViz with the package's display config.

What it refuses, before it starts anything: bag:=DIR when no player exists, rviz:=true when rviz2 is not
installed (the launch fails with a message that says what is missing, exit code 1). When the node, the player
or RViz exits with an error while running, the launch stops everything it started and fails too.
"""

import importlib.util
import os
import shutil
import sys
from importlib.metadata import entry_points
from pathlib import Path

from ament_index_python.packages import PackageNotFoundError, get_package_prefix, get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


class LaunchRefused(RuntimeError):
    """A launch argument asks for a program this machine does not have (launch reports it, exit code 1)."""


def ros2_bag_available() -> bool:
    """`ros2` on PATH with its `bag` verb (the ros2bag package registers it as a ros2cli command)."""
    return shutil.which("ros2") is not None and any(
        entry.name == "bag" for entry in entry_points(group="ros2cli.command"))


def package_player() -> list[str] | None:
    """The package's rclpy player: the installed executable, else its module in this interpreter."""
    try:
        installed = Path(get_package_prefix("distillnerf_ros")) / "lib" / "distillnerf_ros" / "play"
    except PackageNotFoundError:
        installed = None
    if installed is not None and os.access(installed, os.X_OK):
        return [str(installed)]
    try:
        found = importlib.util.find_spec("distillnerf_ros.tools.play") is not None
    except (ImportError, ValueError):
        found = False
    return [sys.executable, "-m", "distillnerf_ros.tools.play"] if found else None


def player_command(bag: str) -> list[str]:
    """The command that plays `bag` with /clock in a loop; LaunchRefused when no player exists."""
    if ros2_bag_available():
        return ["ros2", "bag", "play", bag, "--clock", "--loop"]
    player = package_player()
    if player is None:
        raise LaunchRefused(
            f"bag:={bag} needs a bag player: `ros2 bag` (rosbag2: install ros-$ROS_DISTRO-rosbag2) is not "
            "available and neither is the package's player (lib/distillnerf_ros/play or the module "
            "distillnerf_ros.tools.play): install the package (colcon build) or rosbag2")
    return [*player, bag, "--clock", "--loop"]


def check_rviz() -> None:
    """rviz:=true needs rviz2 installed (its package in the ament index and its executable)."""
    try:
        prefix = Path(get_package_prefix("rviz2"))
    except PackageNotFoundError:
        prefix = None
    if prefix is None or not os.access(prefix / "lib" / "rviz2" / "rviz2", os.X_OK):
        raise LaunchRefused("rviz:=true but rviz2 is not installed (install ros-$ROS_DISTRO-rviz2, or launch with "
                            "rviz:=false and view the topics elsewhere)")


def truthy(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes", "on")


def fail_on_error_exit(what: str):
    """An OnProcessExit handler: a non-zero exit of `what` while the launch runs ends the launch with an error
    (launch then stops every process it started and returns 1)."""
    def on_exit(event, context):
        if event.returncode != 0 and not context.is_shutdown:
            def refuse(_context):
                raise LaunchRefused(f"{what} exited with code {event.returncode}")
            return [OpaqueFunction(function=refuse)]
        return None
    return on_exit


def preflight(context) -> list:
    """Every check before anything starts: a refused argument must not leave a started node behind."""
    bag = LaunchConfiguration("bag").perform(context)
    if bag:
        player_command(bag)
    if truthy(LaunchConfiguration("rviz").perform(context)):
        check_rviz()
    return []


def player_and_rviz(context, share: Path) -> list:
    actions = []
    bag = LaunchConfiguration("bag").perform(context)
    if bag:
        player = ExecuteProcess(cmd=player_command(bag), name="bag_player", output="screen")
        actions += [player, RegisterEventHandler(OnProcessExit(target_action=player,
                                                               on_exit=fail_on_error_exit("the bag player")))]
    if truthy(LaunchConfiguration("rviz").perform(context)):
        rviz = Node(package="rviz2", executable="rviz2", name="rviz2", output="screen",
                    arguments=["-d", str(share / "rviz" / "distillnerf.rviz")],
                    parameters=[{"use_sim_time": LaunchConfiguration("use_sim_time")}])
        actions += [rviz, RegisterEventHandler(OnProcessExit(target_action=rviz, on_exit=fail_on_error_exit("rviz2")))]
    return actions


def generate_launch_description() -> LaunchDescription:
    share = Path(get_package_share_directory("distillnerf_ros"))
    use_sim_time = LaunchConfiguration("use_sim_time")
    node = Node(package="distillnerf_ros", executable="perception_node", name="distillnerf_perception",
                output="screen", parameters=[LaunchConfiguration("config"), {"use_sim_time": use_sim_time}])
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=str(share / "config" / "perception.yaml"),
                              description="parameter file"),
        DeclareLaunchArgument("use_sim_time", default_value="false", description="true when playing a bag --clock"),
        DeclareLaunchArgument("bag", default_value="",
                              description="rosbag2 to play with --clock --loop (ros2 bag, else the package's play)"),
        DeclareLaunchArgument("rviz", default_value="false", description="start RViz with the package's config"),
        OpaqueFunction(function=preflight),
        node,
        RegisterEventHandler(OnProcessExit(target_action=node, on_exit=fail_on_error_exit("perception_node"))),
        OpaqueFunction(function=player_and_rviz, args=[share]),
    ])
