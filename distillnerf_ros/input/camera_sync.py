"""Multi-camera synchronisation in the latest-message style (Autoware BEVFusion), not a 6-way
ApproximateTime filter: each camera keeps only its newest unused message, so nothing ever queues.

A set is emitted
- with a `reference_camera`: whenever that camera's message arrives (choose the camera that fires last in
  the rig's cycle);
- without one: as soon as every camera has a fresh message, or when a camera laps the others (sends a
  second message before the set completed), so a dead camera can never stall the pipeline;
- and, through `flush_idle`, when no camera has sent anything for a while (the rig or the bag stopped, or
  the last images of a set were lost on the way): an incomplete set is never held forever without a word.
Cameras whose stamp is more than `max_camera_delay_s` away from the set's trigger stamp are left out, and
each left-out camera is reported with the reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

NS_PER_MS = 1_000_000


@dataclass
class CameraSet:
    """Messages of one synchronised instant."""

    trigger_stamp_ns: int
    messages: dict[str, Any]  # camera -> message, only cameras within max_camera_delay
    stamps_ns: dict[str, int]
    missing: dict[str, str] = field(default_factory=dict)  # camera -> why it is not in the set


@dataclass
class SyncStatistics:
    sets_emitted: int = 0
    sets_dropped: int = 0  # fewer than min_cameras usable
    overwritten: Counter = field(default_factory=Counter)  # camera -> messages replaced before use
    missing: Counter = field(default_factory=Counter)  # (camera, reason kind) -> count
    discarded_on_reset: int = 0  # pending messages dropped by reset() (time went backwards)
    sets_discarded_on_reset: int = 0  # incomplete sets a reset() dropped messages of (each set counted once)
    sets_flushed_idle: int = 0  # incomplete sets closed by flush_idle() (no camera sent anything for a while)


class LatestCameraSynchronizer:
    """Latest-message-per-camera synchroniser; see the module docstring for when sets are emitted."""

    def __init__(self, camera_names: list[str], max_camera_delay_s: float, reference_camera: str | None = None,
                 min_cameras: int = 1) -> None:
        if not camera_names:
            raise ValueError("the synchroniser needs at least one camera")
        if len(set(camera_names)) != len(camera_names):
            raise ValueError(f"camera names must be unique, got {camera_names}")
        if reference_camera is not None and reference_camera not in camera_names:
            raise ValueError(f"reference camera '{reference_camera}' is not one of {camera_names}")
        if max_camera_delay_s <= 0:
            raise ValueError(f"max_camera_delay_s must be positive, got {max_camera_delay_s}")
        if not 1 <= min_cameras <= len(camera_names):
            raise ValueError(f"min_cameras must be in [1, {len(camera_names)}], got {min_cameras}")
        self.camera_names = list(camera_names)
        self.reference_camera = reference_camera
        self.max_delay_ns = int(max_camera_delay_s * 1e9)
        self.min_cameras = min_cameras
        self.stats = SyncStatistics()
        self._pending: dict[str, tuple[int, Any]] = {}
        self._ever_received: set[str] = set()
        self._last_arrival_s = 0.0  # caller's clock (flush_idle's `now_s`) at the newest add()

    def add(self, camera: str, stamp_ns: int, message: Any, now_s: float = 0.0) -> CameraSet | None:
        """Offer a camera's message; returns a set when this message completes or triggers one. `now_s`
        (a steady clock) is when it arrived, for flush_idle."""
        if camera not in self.camera_names:
            raise KeyError(f"unknown camera '{camera}' (configured: {self.camera_names})")
        self._ever_received.add(camera)
        self._last_arrival_s = now_s
        emitted = None
        if camera in self._pending:
            if self.reference_camera is None:
                emitted = self._emit()  # this camera lapped the others: close the incomplete set first
            else:
                self.stats.overwritten[camera] += 1
        self._pending[camera] = (stamp_ns, message)
        if self.reference_camera is not None:
            if camera == self.reference_camera:
                emitted = self._emit()
        elif len(self._pending) == len(self.camera_names):
            emitted = self._emit()
        return emitted

    def reset(self, keep_until_ns: int | None = None) -> None:
        """Drop pending messages (after a backwards time jump, e.g. a looped bag); they are counted. With
        `keep_until_ns`, messages stamped up to it (already of the new timeline) stay pending."""
        stale = [camera for camera, (stamp, _) in self._pending.items()
                 if keep_until_ns is None or stamp > keep_until_ns]
        for camera in stale:
            del self._pending[camera]
        self.stats.discarded_on_reset += len(stale)
        self.stats.sets_discarded_on_reset += bool(stale)

    def discard_pending(self) -> int:
        """Forget the pending incomplete set (the input is going away); returns 1 if there was one, else 0."""
        had = bool(self._pending)
        self._pending.clear()
        return int(had)

    def flush_idle(self, now_s: float, idle_s: float) -> CameraSet | None:
        """Close the pending incomplete set when no camera has sent a message for `idle_s` (same clock as
        add's `now_s`): the last set of a bag, or one whose other images were lost, would otherwise wait
        for a lap that never comes. The absent cameras are reported as usual; None when nothing is pending,
        the input is not idle yet, or the set has fewer than min_cameras (counted in sets_dropped)."""
        if not self._pending or now_s - self._last_arrival_s < idle_s:
            return None
        self.stats.sets_flushed_idle += 1
        return self._emit()

    def _emit(self) -> CameraSet | None:
        if self.reference_camera is not None:
            trigger = self._pending[self.reference_camera][0]
        else:
            trigger = max(stamp for stamp, _ in self._pending.values())
        camera_set = CameraSet(trigger_stamp_ns=trigger, messages={}, stamps_ns={})
        for camera in self.camera_names:
            if camera not in self._pending:
                kind = "absent" if camera in self._ever_received else "never_received"
                reason = ("no message since the previous set" if kind == "absent"
                          else "no message received yet")
                self._record_missing(camera_set, camera, kind, reason)
                continue
            stamp, message = self._pending[camera]
            offset_ms = (stamp - trigger) / NS_PER_MS
            if abs(stamp - trigger) > self.max_delay_ns:
                direction = "older" if offset_ms < 0 else "newer"
                self._record_missing(camera_set, camera, "stale",
                                     f"stale: {abs(offset_ms):.1f} ms {direction} than the trigger stamp"
                                     f" (max_camera_delay {self.max_delay_ns / NS_PER_MS:.0f} ms)")
                continue
            camera_set.messages[camera] = message
            camera_set.stamps_ns[camera] = stamp
        self._pending.clear()
        if len(camera_set.messages) < self.min_cameras:
            self.stats.sets_dropped += 1
            return None
        self.stats.sets_emitted += 1
        return camera_set

    def _record_missing(self, camera_set: CameraSet, camera: str, kind: str, reason: str) -> None:
        camera_set.missing[camera] = reason
        self.stats.missing[(camera, kind)] += 1
