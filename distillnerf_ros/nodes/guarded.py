"""One guard for every callback a node registers: rclpy re-raises an exception of a callback out of spin and
the process ends, so each node of this package is a `GuardedNode` and every `create_timer`,
`create_subscription` and `create_service` it (or the rig input, or rclpy's parameter services and time
source) makes goes through the guard.

An exception in a guarded callback is logged (throttled per callback), counted (`callback_errors/<name>`, the
name being the timer's callback, the subscription's topic or the service's name), kept with its reason
(`callback_last_error/<name>`) for /diagnostics (WARN while recent), and a service call is answered with
`success=false` and the reason where the response has those fields. The node keeps running. An `async def`
callback (rclpy runs it as a task, the response going out when it returns) gets an `async def` guard, which
catches what it raises before or after any await.
`GuardedNode.on_callback_error(name, reason)` lets a node react (its diagnostics timer failing: publish a
reduced status instead).
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

GUARD_MARK = "__distillnerf_guarded__"


class CallbackErrors:
    """Exceptions caught in callbacks: count and last reason per callback name, and when it last happened."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.reasons: dict[str, str] = {}
        self._at: dict[str, float] = {}

    def record(self, name: str, error: BaseException) -> str:
        reason = f"{type(error).__name__}: {error}"
        with self._lock:
            self.counts[name] += 1
            self.reasons[name] = reason
            self._at[name] = time.monotonic()
        return reason

    def recent(self, hold_s: float = 10.0) -> dict[str, str]:
        """{name: last reason} of the callbacks that failed within the last hold_s seconds."""
        now = time.monotonic()
        with self._lock:
            return {name: self.reasons[name] for name, at in sorted(self._at.items()) if now - at <= hold_s}

    def values(self) -> dict[str, Any]:
        """The /diagnostics keys: callback_errors (total), callback_errors/<name>, callback_last_error/<name>."""
        with self._lock:
            values: dict[str, Any] = {"callback_errors": sum(self.counts.values())}
            values.update({f"callback_errors/{name}": n for name, n in sorted(self.counts.items())})
            values.update({f"callback_last_error/{name}": why for name, why in sorted(self.reasons.items())})
        return values


def is_guarded(callback: Callable | None) -> bool:
    return bool(getattr(callback, GUARD_MARK, False))


def _callable_name(callback: Callable) -> str:
    name = getattr(callback, "__name__", None) or type(callback).__name__
    return name


class GuardedNode:
    """Mixin placed before rclpy's Node (or LifecycleNode): guards every timer, subscription and service."""

    @property
    def callback_errors(self) -> CallbackErrors:
        errors = self.__dict__.get("_callback_errors")
        if errors is None:  # created lazily: Node.__init__ makes parameter services before ours runs
            errors = self.__dict__["_callback_errors"] = CallbackErrors()
        return errors

    def on_callback_error(self, name: str, reason: str) -> None:
        """Called after a guarded callback failed (already logged and counted); nodes may override."""

    def guard(self, name: str, callback: Callable, service: bool = False) -> Callable:
        """`callback` wrapped so that an exception is logged, counted and reported instead of raised; for a
        service the response comes back with success=false and the reason."""
        if is_guarded(callback):
            return callback
        if inspect.iscoroutinefunction(callback):  # rclpy runs it as a task: the guard must be a coroutine too
            return self._guard_coroutine(name, callback, service)

        @functools.wraps(callback)  # keeps the signature: rclpy looks for a TimerInfo parameter in it
        def run(*args, **kwargs):
            try:
                return callback(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - the one boundary between a callback and rclpy's spin
                return self._caught(name, error, args if service else None)

        setattr(run, GUARD_MARK, True)
        return run

    def _guard_coroutine(self, name: str, callback: Callable, service: bool) -> Callable:
        """The guard of an `async def` callback (a service answered once work off the executor thread is
        done): an exception raised while it runs or after any of its awaits is caught the same way."""

        @functools.wraps(callback)
        async def run(*args, **kwargs):
            try:
                return await callback(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - the one boundary between a callback and rclpy's spin
                return self._caught(name, error, args if service else None)

        setattr(run, GUARD_MARK, True)
        return run

    def _caught(self, name: str, error: Exception, service_args: tuple | None):
        """Record and report `error`; a service's answer (success=false and the reason), else None."""
        reason = self.callback_errors.record(name, error)
        self._report_callback_error(name, reason)
        if service_args is not None:
            return _failed_response(service_args[1] if len(service_args) > 1 else None, name, reason)
        return None

    def guard_existing_callbacks(self) -> None:
        """Guard what was registered without create_* (rclpy's lifecycle services are built directly)."""
        for service in self.services:
            service.callback = self.guard(service.srv_name, service.callback, service=True)
        for entity in (*self.timers, *self.subscriptions):
            if entity.callback is not None:
                entity.callback = self.guard(getattr(entity, "topic_name", None) or _callable_name(entity.callback),
                                             entity.callback)

    def _report_callback_error(self, name: str, reason: str) -> None:
        try:
            if self.callback_errors.counts[name] == 1:  # the first failure of each callback, always
                self.get_logger().error(f"callback {name} failed: {reason}")
            else:  # repeats (a timer failing every 20 ms), throttled
                self.get_logger().error(f"callback {name} failed again: {reason}", throttle_duration_sec=5.0)
            self.on_callback_error(name, reason)
        except Exception as error:  # noqa: BLE001 - reporting must never raise into the executor either
            self.callback_errors.record(f"{name}/report", error)

    def create_timer(self, timer_period_sec, callback, *args, **kwargs):
        if callback is not None:
            callback = self.guard(_callable_name(callback), callback)
        return super().create_timer(timer_period_sec, callback, *args, **kwargs)

    def create_subscription(self, msg_type, topic, callback, *args, **kwargs):
        return super().create_subscription(msg_type, topic, self.guard(topic, callback), *args, **kwargs)

    def create_service(self, srv_type, srv_name, callback, *args, **kwargs):
        return super().create_service(srv_type, srv_name, self.guard(srv_name, callback, service=True), *args,
                                      **kwargs)


def _failed_response(response, name: str, reason: str):
    """A fresh response of the same type saying why (success=false, message) where it has those fields."""
    if response is None:
        return None
    fresh = type(response)()
    if hasattr(fresh, "success"):
        fresh.success = False
    if hasattr(fresh, "message"):
        fresh.message = f"internal error in {name}: {reason}"[:4096]
    elif hasattr(fresh, "reason"):
        fresh.reason = f"internal error in {name}: {reason}"[:4096]
    return fresh
