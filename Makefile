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

$(VENV)/.deps: requirements.txt requirements-core.txt constraints.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q -r requirements.txt -c constraints.txt $(PIP_QUIET)
	touch $@

$(VENV)/.editable: $(VENV)/.deps setup.py
	$(PYTHON) -m pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=compat $(PIP_QUIET)
	touch $@

# The launch packages are not on PyPI: when ../shared/third_party/ros2_launch exists (CI has it), install
# them from there so that the launch file's test runs; without it that test skips and says why.
LAUNCH_DIR := $(wildcard $(CURDIR)/../shared/third_party/ros2_launch)
# The same for the `ros2` command line (ros2cli and its verbs): test/ros/nodes/test_perception_ros2cli.py skips
# without it.
ROS2CLI_DIR := $(wildcard $(CURDIR)/../shared/third_party/ros2cli)

$(VENV)/.ros_interfaces: $(VENV)/.deps CMakeLists.txt package.xml srv/QueryScene.srv scripts/build_ros_interfaces.sh \
                         $(wildcard $(LAUNCH_DIR)/wheels/*.whl) $(wildcard $(ROS2CLI_DIR)/wheels/*.whl)
	scripts/build_ros_interfaces.sh $(VENV) "$(LAUNCH_DIR)" "$(ROS2CLI_DIR)"
	touch $@

setup: $(VENV)/.editable $(VENV)/.ros_interfaces

# colcon in a venv of its own (its pytest plugins and setuptools cap stay out of .venv), for the test that
# builds the package with `colcon build` (test/test_colcon_build.py skips without it).
$(VENV)/.colcon: requirements-colcon.txt | $(VENV)/.deps
	test -x $(VENV)/colcon/bin/python || python3 -m venv $(VENV)/colcon
	$(VENV)/colcon/bin/python -m pip install -q -r requirements-colcon.txt $(PIP_QUIET)
	touch $@

demo: setup
	$(PYTHON) -m distillnerf_ros.tools.demo

lint: setup
	$(VENV)/bin/ruff check .

test: lint $(VENV)/.colcon
	$(PYTHON) -m pytest test -q

# The markers are registered in pytest.ini: `ros` (test/ros/, test/test_launch.py, rclpy) and `slow`.
test-fast: lint
	$(PYTHON) -m pytest test -q -m "not slow and not ros"

clean:
	rm -rf $(VENV) build
