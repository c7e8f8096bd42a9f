"""Helpers for tests that run real rclpy nodes in-process over loopback DDS."""

from __future__ import annotations

import time
from collections.abc import Callable

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node


class RosSession:
    """An rclpy context of its own with an executor spun from the test thread (no spin thread to join)."""

    def __init__(self) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.nodes: list[Node] = []

    def node(self, name: str, node_class: type[Node] = Node, **kwargs) -> Node:
        node = node_class(name, context=self.context, **kwargs) if node_class is Node else node_class(
            context=self.context, **kwargs)
        self.executor.add_node(node)
        self.nodes.append(node)
        return node

    def spin_until(self, condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return True
            self.executor.spin_once(timeout_sec=0.02)
        return condition()

    def close(self) -> None:
        for node in self.nodes:
            self.executor.remove_node(node)
            node.destroy_node()
        self.executor.shutdown()
        rclpy.try_shutdown(context=self.context)


def wait_for_match(session: RosSession, publishers: list, timeout_s: float = 10.0) -> None:
    """Block until every publisher has a subscriber, so nothing sent is lost to discovery."""
    if not session.spin_until(lambda: all(p.get_subscription_count() > 0 for p in publishers), timeout_s):
        raise AssertionError(f"publishers {[p.topic_name for p in publishers]} found no subscriber in {timeout_s} s")
