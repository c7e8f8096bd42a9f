#!/usr/bin/env bash
# Builds this package's ROS 2 interfaces (srv/QueryScene.srv) and installs the package into a venv
# that holds the PyPI ROS 2 wheels (no system ROS). On a machine with a ROS 2 install use colcon.
#
# usage: scripts/build_ros_interfaces.sh [--build-only | --install-only] VENV_DIR [LAUNCH_DIR] [ROS2CLI_DIR]
# --build-only configures and compiles the interfaces and installs nothing (it only edits the ROS wheels' CMake
# exports, trap 3 below), so that it can run while pip installs the rest: make does, as it needs only
# requirements-ros.txt. --install-only then installs what it built and the launch / ros2cli wheels.
# Without either flag it does both.
# LAUNCH_DIR (optional, may be ""): a folder of the pure-Python ROS 2 launch wheels (not on PyPI) and the
# composition_interfaces sources, e.g. ../shared/third_party/ros2_launch; with it, `launch` and `launch_ros`
# are installed too, so that the launch file can be tested without a ROS install.
# ROS2CLI_DIR (optional): a folder of the `ros2` command line wheels (ros2cli and its verbs, rosidl_runtime_py;
# not on PyPI), e.g. ../shared/third_party/ros2cli; with it, `ros2 topic/node/param/service/lifecycle/run`
# (and `ros2 launch` when LAUNCH_DIR is given too) are installed, so the README's commands run as typed.
# The three traps of the PyPI wheels (see README, "Installing without ROS"):
#  1. the build-tool wheels declare no dependencies: requirements.txt lists them all;
#  2. cmake needs AMENT_PREFIX_PATH to find rosidl_typesupport_c;
#  3. the wheels' exported CMake targets name the include directories of the machine that built them:
#     rewrite them to this interpreter's and numpy's.
set -euo pipefail

phase=all
case ${1:-} in
  --build-only) phase=build; shift ;;
  --install-only) phase=install; shift ;;
esac

venv=$(cd "$1" && pwd)
repo=$(cd "$(dirname "$0")/.." && pwd)
python="$venv/bin/python"
build_root="$repo/build/venv"

py_include=$("$python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
np_include=$("$python" -c "import numpy; print(numpy.get_include())")

# Trap 3: fix the foreign include paths in the exported targets (idempotent).
grep -rlZ --include='*Export.cmake' '/opt/python/cp311-cp311' "$venv/share" 2>/dev/null \
  | xargs -0 -r sed -i \
      -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#${np_include}#g" \
      -e "s#/opt/python/cp311-cp311/include/python3.11#${py_include}#g" || true

export AMENT_PREFIX_PATH="$venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"

cmake_package() {  # source_dir build_dir [extra cmake args]
  local src=$1 bld=$2
  shift 2
  if [ "$phase" != install ]; then
    cmake -S "$src" -B "$bld" -DCMAKE_INSTALL_PREFIX="$venv" -DBUILD_TESTING=OFF \
      -DPython3_EXECUTABLE="$python" -DPYTHON_EXECUTABLE="$python" "$@" >"$bld.configure.log" 2>&1 \
      || { cat "$bld.configure.log"; exit 1; }
    cmake --build "$bld" -j 2 >"$bld.build.log" 2>&1 || { cat "$bld.build.log"; exit 1; }
  fi
  if [ "$phase" != build ]; then
    (cd "$bld" && cmake --install . >"$bld.install.log" 2>&1) || { cat "$bld.install.log"; exit 1; }
  fi
}

mkdir -p "$build_root"

# tf2_msgs/TFMessage is needed to hear /tf; a ROS install has it, the PyPI wheels do not.
if ! "$python" -c "import tf2_msgs.msg" 2>/dev/null; then
  tf2_src="$build_root/tf2_msgs_src"
  mkdir -p "$tf2_src/msg"
  cp "$repo/scripts/tf2_msgs/package.xml" "$repo/scripts/tf2_msgs/CMakeLists.txt" "$tf2_src/"
  echo "geometry_msgs/TransformStamped[] transforms" >"$tf2_src/msg/TFMessage.msg"
  cmake_package "$tf2_src" "$build_root/tf2_msgs"
  echo "generated tf2_msgs/TFMessage ($phase)"
fi

# The package's interfaces; its Python sources are imported from the repository (pip install -e).
cmake_package "$repo" "$build_root/distillnerf_ros" -DINSTALL_PYTHON_SOURCES=OFF
launch_dir=${2:-}
if [ -n "$launch_dir" ] && ! "$python" -c "import composition_interfaces.srv" 2>/dev/null; then
  # launch_ros imports composition_interfaces, which is not on PyPI either: generate it like ours.
  cmake_package "$launch_dir/composition_interfaces" "$build_root/composition_interfaces"
fi
if [ "$phase" = build ]; then
  echo "built the interfaces in $build_root (not installed yet)"
  exit 0
fi
"$python" -c "from distillnerf_ros.srv import QueryScene; from tf2_msgs.msg import TFMessage" \
  || { echo "interfaces built but do not import" >&2; exit 1; }
echo "built distillnerf_ros interfaces into $venv"

if [ -n "$launch_dir" ]; then
  # Only what launching needs: launch_testing would register a pytest plugin, ros2launch needs ros2cli.
  wheels=()
  for name in launch launch_ros launch_xml launch_yaml osrf_pycommon; do
    wheels+=("$(ls "$launch_dir"/wheels/"$name"-[0-9]*.whl)")
  done
  "$python" -m pip install -q --no-deps "${wheels[@]}" 2>&1 | { grep -v "^WARNING: Location 'file://" || true; }
  "$python" -c "import launch, launch_ros.actions" || { echo "launch packages installed but do not import" >&2; exit 1; }
  echo "installed launch + launch_ros from $launch_dir"
fi

ros2cli_dir=${3:-}
if [ -n "$ros2cli_dir" ]; then
  # Their PyPI dependencies (pinned in constraints.txt), then the wheels themselves without dependencies.
  "$python" -m pip install -q argcomplete psutil -c "$repo/constraints.txt" 2>&1 \
    | { grep -v "^WARNING: Location 'file://" || true; }
  wheels=("$ros2cli_dir"/wheels/*.whl)
  if [ -n "$launch_dir" ]; then
    wheels+=("$(ls "$launch_dir"/wheels/ros2launch-[0-9]*.whl)")
  fi
  "$python" -m pip install -q --no-deps "${wheels[@]}" 2>&1 | { grep -v "^WARNING: Location 'file://" || true; }
  "$venv/bin/ros2" --help >/dev/null || { echo "ros2cli installed but \`ros2 --help\` fails" >&2; exit 1; }
  echo "installed the ros2 command line from $ros2cli_dir"
fi
