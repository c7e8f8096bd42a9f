"""Orderly stop on SIGINT / SIGTERM for the node executables.

rclpy's own handlers shut the context down underneath a running node: a worker thread still inside a
frame then outlives the interpreter (`terminate called without an active exception`, exit -6), and the
lifecycle shutdown that follows cannot log or publish (`Failed to publish log message to rosout`). Here
the signal only sets a flag; the spin loop returns, the node stops its threads and is destroyed while the
context is still valid, and the process exits 0.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import rclpy
from rclpy.executors import Executor
from rclpy.signals import SignalHandlerOptions


class StopRequest:
    """Set by SIGINT or SIGTERM (the handlers are installed by `init_without_signal_handlers`)."""

    def __init__(self) -> None:
        self.signal_name = ""

    def __bool__(self) -> bool:
        return bool(self.signal_name)

    def handle(self, signum, _frame) -> None:
        self.signal_name = signal.Signals(signum).name


def init_without_signal_handlers(args: list[str] | None = None) -> StopRequest:
    """rclpy.init with rclpy's signal handlers off and ours on: returns the flag the signals set."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = StopRequest()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop.handle)
    return stop


def spin_until_stopped(executor: Executor, stop: StopRequest, done: Callable[[], bool] = lambda: False,
                       period_s: float = 0.1) -> None:
    """Spin until a signal arrives, `done()` is true or the context is shut down by someone else."""
    while not stop and not done() and rclpy.ok():
        executor.spin_once(timeout_sec=period_s)
