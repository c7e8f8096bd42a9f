"""Stopping the child processes (nodes, bag players) that the demo and the benchmarks start."""

from __future__ import annotations

import subprocess


def stop_process(process: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGTERM (nodes shut down cleanly on it), then SIGKILL if it has not exited within `timeout_s`."""
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
