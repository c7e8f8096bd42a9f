"""What can crash or abort a node process (a clock jump after lifecycle cycles; a signal while a frame is
being processed) is tried in a child process, so a crash is a test failure and not the end of the test run.
The nodes talk over loopback DDS to this test process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import REPO
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Float64

from ros_helpers import RosSession, SmallRig

TEST_DIR = REPO / "test"
T0 = 1_700_000_000 * 1_000_000_000
CRASH_MARKERS = ("terminate called", "Traceback", "Failed to complete transition",
                 "Failed to publish log message to rosout", "Segmentation fault", "failed to add time jump callback")


def run_child(script: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TEST_DIR), str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=timeout_s, env=env, cwd=REPO)


def test_clock_jumps_after_lifecycle_cycles_neither_crash_nor_fail_the_node(tiny_checkpoint):
    result = run_child(f"""
        import gc
        import conftest  # loopback DDS, this run's domain
        from rclpy.lifecycle import TransitionCallbackReturn
        from rclpy.parameter import Parameter
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Image
        from builtin_interfaces.msg import Time
        from distillnerf_ros.nodes.perception import PerceptionNode
        from ros_helpers import RosSession, SmallRig

        session = RosSession()
        rig = SmallRig(session)
        params = {{"device": "cpu", "tf_wait": 0.5, "model_path": {str(tiny_checkpoint)!r}, **rig.parameters()}}
        node = session.node("perception", PerceptionNode,
                            parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        failures = 0
        for cycle in range(30):
            failures += node.trigger_deactivate() != TransitionCallbackReturn.SUCCESS
            gc.collect()
            failures += node.trigger_activate() != TransitionCallbackReturn.SUCCESS
        print("failed transitions", failures, flush=True)
        clock = session.node("clock").create_publisher(Clock, "/clock", 10)
        node.set_parameters([Parameter("use_sim_time", value=True)])  # a clock change: jump callbacks run
        for seconds in (1_700_000_100, 1_700_000_090, 1_700_000_000):  # then /clock goes back as a looped bag
            clock.publish(Clock(clock=Time(sec=seconds)))
            session.spin_until(lambda: False, 0.3)
        print("resets", dict(node.rig.tf.resets_by_kind), flush=True)
        depth = []
        session.node("sink").create_subscription(Image, "/distillnerf_perception/front/depth", depth.append, 10)
        rig.wait_for_node()
        rig.publish_static()
        for i in range(20):
            rig.publish_frame(1_700_000_000_000_000_000 + i * 50_000_000)
            if session.spin_until(lambda: bool(depth), 1.0):
                break
        print("processed after the jumps", len(depth), flush=True)
        session.close()
    """)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"exit {result.returncode}: {output[-3000:]}"
    assert "failed transitions 0" in output, output[-3000:]
    assert "'clock_jump'" in output, f"the rig must still hear clock jumps: {output[-3000:]}"
    assert "processed after the jumps 1" in output, output[-3000:]
    assert not any(marker in output for marker in CRASH_MARKERS), output[-3000:]


def start_node_process(executable: str, rig: SmallRig, checkpoint) -> subprocess.Popen:
    params = {"model_path": str(checkpoint), "device": "cpu", "tf_wait": 0.5, **rig.parameters()}
    args = []
    for key, value in params.items():
        if isinstance(value, list):
            value = "[" + ",".join(value) + "]"
        elif isinstance(value, bool):
            value = str(value).lower()
        args += ["-p", f"{key}:={value}"]
    return subprocess.Popen([sys.executable, str(REPO / "scripts" / executable), "--ros-args", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())


def finish(process: subprocess.Popen, timeout_s: float = 20) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        return -999, output
    return process.returncode, output


@contextlib.contextmanager
def node_process(name: str, rig, checkpoint, session: RosSession):
    """A node executable in its own process; killed if still running afterwards, the session closed."""
    process = start_node_process(name, rig, checkpoint)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        session.close()


def stop_cleanly(process: subprocess.Popen, sig: signal.Signals) -> None:
    """Send `sig`: the process must exit 0 without any crash marker in its output."""
    process.send_signal(sig)
    code, output = finish(process)
    assert code == 0, f"exit {code} on {sig.name}: {output[-3000:]}"
    assert not any(marker in output for marker in CRASH_MARKERS), output[-3000:]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("busy", [True, False], ids=["processing", "idle"])
def test_perception_node_exits_0_on_sigint_or_sigterm_idle_or_processing(tiny_checkpoint, sig, busy):
    session = RosSession()
    rig = SmallRig(session)
    with node_process("perception_node", rig, tiny_checkpoint, session) as process:
        started, outputs = [], []
        sink = session.node("sink")
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        sink.create_subscription(Float64, "/distillnerf_perception/debug/input_delay_ms", started.append, 10)
        sink.create_subscription(Image, "/distillnerf_perception/front/depth", outputs.append, reliable)
        rig.wait_for_node()
        rig.publish_static()
        stamp = T0
        deadline = time.monotonic() + 60
        while not outputs and time.monotonic() < deadline:  # up and processing
            rig.publish_frame(stamp)
            stamp += 50_000_000
            session.spin_until(lambda: bool(outputs), 0.2)
        assert outputs, "the node never produced an output"
        if busy:  # frames keep coming: the signal lands while a frame is being processed
            count = len(started)
            while len(started) == count and time.monotonic() < deadline:
                rig.publish_frame(stamp)
                stamp += 50_000_000
                session.spin_until(lambda c=count: len(started) > c, 0.05)
        else:
            session.spin_until(lambda: False, 1.0)
        stop_cleanly(process, sig)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_rig_monitor_exits_0_on_sigint_or_sigterm(tiny_checkpoint, sig):
    session = RosSession()
    rig = SmallRig(session)
    with node_process("rig_monitor", rig, tiny_checkpoint, session) as process:
        rig.wait_for_node()
        rig.publish_static()
        rig.publish_frame(T0)
        session.spin_until(lambda: False, 1.0)
        stop_cleanly(process, sig)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_dataroot_publisher_exits_0_on_sigint_or_sigterm(sig):
    process = subprocess.Popen([sys.executable, str(REPO / "scripts" / "dataroot_publisher"), "--dataroot",
                                str(REPO / "data" / "nuscenes_sample")], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    time.sleep(3)  # waiting for subscribers
    process.send_signal(sig)
    code, output = finish(process)
    assert code == 0, f"exit {code} on {sig.name}: {output[-3000:]}"
    assert not any(marker in output for marker in CRASH_MARKERS), output[-3000:]
