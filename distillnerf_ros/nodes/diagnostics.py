"""Publishing one DiagnosticStatus on /diagnostics, shared by the nodes."""

from __future__ import annotations

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
