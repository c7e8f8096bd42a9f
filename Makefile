# Two commands: `make demo` and `make test`. Both set up .venv (idempotent: each step re-runs only when
# its inputs change) and keep all ROS 2 traffic on loopback.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
PYTHON := $(VENV)/bin/python
# pip prints a warning for each package about this machine's extra index folders; hide only those lines.
PIP_QUIET := 2>&1 | { grep -v "^WARNING: Location 'file://" || true; }

export FASTDDS_DEFAULT_PROFILES_FILE := $(CURDIR)/config/fastdds_loopback.xml
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
# A per-run DDS domain so that concurrent runs on one machine do not hear each other.
export ROS_DOMAIN_ID ?= $(shell echo $$(( $$$$ % 90 + 10 )))

.PHONY: help setup demo test test-fast lint clean

help:
	@echo "make demo   set up .venv and run the perception node on replayed nuScenes + synthetic bags (demo_out/)"
	@echo "make test   set up .venv and run lint + every test"
	@echo "make test-fast  lint + the tests marked neither slow nor ros (no DDS; a contributor's loop)"
	@echo "make clean  remove .venv and build/"

# pip byte-compiles what it installs (a third of its CPU time in a fresh venv), kept: with PYTHONDONTWRITEBYTECODE
# set, as on these machines, a module without a .pyc would be compiled again by every process that imports it.
PIP_INSTALL = -m pip install -q

$(VENV)/bin/python:
	python3 -m venv $(VENV)

# The ROS wheels first (requirements-ros.txt): the interfaces build from them while pip installs the rest.
$(VENV)/.ros_deps: requirements-ros.txt constraints.txt | $(VENV)/bin/python
	$(PYTHON) $(PIP_INSTALL) -r requirements-ros.txt -c constraints.txt $(PIP_QUIET)
	touch $@

$(VENV)/.deps: requirements.txt requirements-core.txt requirements-ros.txt constraints.txt $(VENV)/.ros_deps
	$(PYTHON) $(PIP_INSTALL) -r requirements.txt -c constraints.txt $(PIP_QUIET)
	touch $@

$(VENV)/.editable: $(VENV)/.deps setup.py
	$(PYTHON) $(PIP_INSTALL) --no-deps --no-build-isolation -e . --config-settings editable_mode=compat $(PIP_QUIET)
	touch $@

# The launch packages are not on PyPI: when ../shared/third_party/ros2_launch exists (CI has it), install
# them from there so that the launch file's test runs; without it that test skips and says why.
LAUNCH_DIR := $(wildcard $(CURDIR)/../shared/third_party/ros2_launch)
# The same for the `ros2` command line (ros2cli and its verbs): test/ros/nodes/test_perception_ros2cli.py skips
# without it.
ROS2CLI_DIR := $(wildcard $(CURDIR)/../shared/third_party/ros2cli)
ROS_INTERFACE_ARGS := $(VENV) "$(LAUNCH_DIR)" "$(ROS2CLI_DIR)"

# cmake configures and compiles the interfaces (installing nothing) while .deps runs; the install waits for every
# pip run into .venv (two pips at once in one venv can read each other's half-written metadata).
$(VENV)/.ros_built: $(VENV)/.ros_deps CMakeLists.txt package.xml srv/QueryScene.srv scripts/build_ros_interfaces.sh \
                    scripts/tf2_msgs/CMakeLists.txt scripts/tf2_msgs/package.xml
	scripts/build_ros_interfaces.sh --build-only $(ROS_INTERFACE_ARGS)
	touch $@

$(VENV)/.ros_interfaces: $(VENV)/.ros_built $(VENV)/.deps $(VENV)/.editable \
                         $(wildcard $(LAUNCH_DIR)/wheels/*.whl) $(wildcard $(ROS2CLI_DIR)/wheels/*.whl)
	scripts/build_ros_interfaces.sh --install-only $(ROS_INTERFACE_ARGS)
	touch $@

# colcon in a venv of its own (its pytest plugins and setuptools cap stay out of .venv), for the test that
# builds the package with `colcon build` (test/test_colcon_build.py skips without it). Its own interpreter and
# site-packages: it installs alongside .venv's pips.
$(VENV)/.colcon: requirements-colcon.txt | $(VENV)/bin/python
	test -x $(VENV)/colcon/bin/python || python3 -m venv $(VENV)/colcon
	$(VENV)/colcon/bin/python $(PIP_INSTALL) -r requirements-colcon.txt $(PIP_QUIET)
	touch $@

# The steps above two at a time (this machine and CI have 2 cores): pip is mostly one core and disk, cmake the other.
SETUP = $(MAKE) --no-print-directory -j2
SETUP_TARGETS := $(VENV)/.editable $(VENV)/.ros_interfaces

setup:
	$(SETUP) $(SETUP_TARGETS)

demo: setup
	$(PYTHON) -m distillnerf_ros.tools.demo

lint: setup
	$(VENV)/bin/ruff check .

test:
	$(SETUP) $(SETUP_TARGETS) $(VENV)/.colcon
	$(VENV)/bin/ruff check .
	$(PYTHON) -m pytest test -q

# The markers are registered in pytest.ini: `ros` (test/ros/, test/test_launch.py, rclpy) and `slow`.
test-fast: lint
	$(PYTHON) -m pytest test -q -m "not slow and not ros"

clean:
	rm -rf $(VENV) build
