"""Publishing one DiagnosticStatus on /diagnostics, shared by the nodes."""

from __future__ import annotations

import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.publisher import Publisher


def publish_status(node: Node, publisher: Publisher, level: bytes, name: str, hardware_id: str, message: str,
                   values: dict) -> None:
    """One status with `values` as string key/values, stamped with the node's clock."""
    status = DiagnosticStatus(level=level, name=name, hardware_id=hardware_id, message=message,
                              values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
    array = DiagnosticArray(status=[status])
    array.header.stamp = node.get_clock().now().to_msg()
    publisher.publish(array)


class RecentIncreases:
    """Which counters grew within the last `hold_s` seconds, so a diagnostic raised by a drop stays raised
    long enough to be seen (a counter that goes down, e.g. a new input object, is a new baseline)."""

    def __init__(self, hold_s: float = 10.0) -> None:
        self.hold_s = hold_s
        self._values: dict[str, int] = {}
        self._grew_at: dict[str, float] = {}

    def update(self, counts: dict[str, int], now: float | None = None) -> dict[str, int]:
        """Record `counts`; returns those that grew within the hold time, with their current values."""
        now = time.monotonic() if now is None else now
        for name, value in counts.items():
            if value > self._values.get(name, 0):
                self._grew_at[name] = now
            self._values[name] = value
        return {name: counts[name] for name, at in self._grew_at.items()
                if name in counts and now - at <= self.hold_s}
