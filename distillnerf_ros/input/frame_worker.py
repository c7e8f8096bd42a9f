"""A one-slot frame queue served by one worker thread, with no ROS in it.

Producers (camera callbacks) `submit` frames; the worker thread calls `work(frame)` on the newest one.
Nothing queues: a frame that arrives while the previous one is still waiting replaces it (newest wins) and
the replaced one is counted as `dropped_busy`. An exception raised by `work` never ends the worker
thread: it is counted in `errors`, kept in `last_error` and handed to `on_error`, and the worker goes on
with the next frame. `stop()` wakes and joins the thread (a frame still waiting is counted as
`discarded_on_stop`); `start()` may be called again afterwards. Every submitted frame ends in exactly one
counter, or is still waiting or running.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

Frame = TypeVar("Frame")


@dataclass
class FrameWorkerCounters:
    """What happened to the frames offered to a FrameWorker."""

    submitted: int = 0  # frames offered by submit()
    processed: int = 0  # work() returned normally
    dropped_busy: int = 0  # replaced by a newer frame before the worker took them
    dropped_stopped: int = 0  # offered while the worker was not running
    discarded_on_stop: int = 0  # waiting in the slot when stop() was called (never processed)
    errors: int = 0  # work() raised


class FrameWorker(Generic[Frame]):
    """Runs `work` on the newest submitted frame, on a thread of its own; see the module docstring."""

    def __init__(self, work: Callable[[Frame], None], on_error: Callable[[BaseException], None] | None = None,
                 name: str = "frame_worker", poll_s: float = 0.1) -> None:
        self._work = work
        self._on_error = on_error
        self._name = name
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._slot: Frame | None = None
        self._has_frame = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy = False
        self.counters = FrameWorkerCounters()
        self.last_error = ""

    @property
    def running(self) -> bool:
        """Whether the worker thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def busy(self) -> bool:
        """Whether `work` is running now."""
        return self._busy

    def start(self) -> None:
        """Start the worker thread (no-op when it is already running)."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def submit(self, frame: Frame) -> bool:
        """Offer a frame; False when it was not accepted (the worker is stopped). A frame still waiting is
        replaced and counted as dropped_busy."""
        with self._lock:
            self.counters.submitted += 1
            if not self.running or self._stop.is_set():
                self.counters.dropped_stopped += 1
                return False
            if self._has_frame:
                self.counters.dropped_busy += 1
            self._slot, self._has_frame = frame, True
        self._wake.set()
        return True

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the worker after its current frame and forget a waiting one; True when the thread ended
        within `timeout_s` (a `work` call that never returns cannot be interrupted)."""
        self._stop.set()
        self._wake.set()
        thread, joined = self._thread, True
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=timeout_s)
            joined = not thread.is_alive()
        with self._lock:
            self.counters.discarded_on_stop += self._has_frame
            self._slot, self._has_frame = None, False
        if joined:
            self._thread = None
        return joined

    def _take(self) -> tuple[bool, Frame | None]:
        with self._lock:
            frame, had = self._slot, self._has_frame
            self._slot, self._has_frame = None, False
            return had, frame

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=self._poll_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            had, frame = self._take()
            if had:
                self._run(frame)

    def _run(self, frame: Frame) -> None:
        self._busy = True
        try:
            self._work(frame)
        except Exception as error:  # noqa: BLE001 - no frame may end the worker; reported instead
            self.counters.errors += 1
            self.last_error = f"{type(error).__name__}: {error}"
            if self._on_error is not None:
                try:
                    self._on_error(error)
                except Exception:  # noqa: BLE001 - a failing reporter must not end the worker either
                    traceback.print_exc()
        else:
            self.counters.processed += 1
        finally:
            self._busy = False
