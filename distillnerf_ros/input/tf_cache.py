"""A TF buffer over /tf and /tf_static, so the nodes need no tf2_ros (missing from the PyPI wheels).

Static transforms are kept forever; dynamic ones for `cache_duration_s`, interpolated in time (slerp +
lerp). Lookups are at a given stamp and never silently fall back to "latest": a stamp outside the history
is an ExtrapolationError naming the edge and the gap. A dynamic transform that goes back in time by more
than `backwards_jump_s` (a looped bag) clears the dynamic history instead of failing forever.

Whatever a neighbour publishes, the cache stays valid and bounded: a transform with a non-finite value, a
zero quaternion, parent == child or an empty frame id is rejected (counted in `rejected`, reason in
`last_rejection`), the others of its message are kept; at most `max_dynamic_frames` dynamic edges and
`max_static_frames` static ones are kept (the least recently updated dynamic edge is evicted first,
counted in `evicted`); an edge that would close a loop (its parent hangs below its child, e.g. a dynamic
edge under a static one) is refused and counted (`loops_refused`, also in `rejected`), so the tree stays a
tree and later lookups keep working (a static edge closing a loop through dynamic edges is held back and
applied once they no longer make one: latched /tf_static comes only once); a dynamic edge not updated for
`cache_duration_s` behind the newest stamp expires (`expired`). Resets are counted by kind in `resets_by_kind`.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from distillnerf_core.geometry import interpolate_transform, invert_transform, make_transform

NS_PER_S = 1_000_000_000


class TfLookupError(LookupError):
    """Base of the errors a lookup raises; the message says which frame or edge and why."""


class FrameNotAvailableError(TfLookupError):
    """A frame has not been received yet, or no chain connects the two frames."""


class ExtrapolationError(TfLookupError):
    """The requested stamp lies outside the history of a dynamic transform in the chain."""


@dataclass
class _EdgeHistory:
    parent: str
    stamps: list[int] = field(default_factory=list)  # sorted, nanoseconds
    transforms: list[np.ndarray] = field(default_factory=list)  # 4x4 parent <- child, same order as stamps


def transform_stamped_to_matrix(transform) -> np.ndarray:
    """4x4 parent <- child matrix of a geometry_msgs/Transform."""
    r, t = transform.rotation, transform.translation
    return make_transform(np.array([r.w, r.x, r.y, r.z]), np.array([t.x, t.y, t.z]))


def stamp_to_ns(stamp) -> int:
    """Nanoseconds of a builtin_interfaces/Time."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


class TfCache:
    """Transforms between frames at given stamps, fed with TFMessages or plain matrices."""

    def __init__(self, cache_duration_s: float = 10.0, backwards_jump_s: float = 1.0,
                 max_entries_per_edge: int = 10_000, max_dynamic_frames: int = 1_000,
                 max_static_frames: int = 1_000) -> None:
        self._cache_duration_ns = int(cache_duration_s * NS_PER_S)
        self._backwards_jump_ns = int(backwards_jump_s * NS_PER_S)
        self._max_entries = max_entries_per_edge
        self.max_dynamic_frames = max_dynamic_frames
        self.max_static_frames = max_static_frames
        self._static: dict[str, tuple[str, np.ndarray]] = {}  # child -> (parent, parent <- child)
        self._dynamic: dict[str, _EdgeHistory] = {}  # insertion order = least recently updated first
        self._parents: Counter = Counter()  # frame -> number of edges naming it as parent
        self._newest_ns = 0
        self._next_expiry_ns = 0
        self.resets_by_kind: Counter = Counter()
        self.rejected = 0
        self.last_rejection = ""
        self.evicted = 0
        self.expired = 0
        self.loops_refused = 0
        # child -> (parent, matrix): static edges held back because they closed a loop through dynamic edges
        self._pending_static: dict[str, tuple[str, np.ndarray]] = {}

    @property
    def resets(self) -> int:
        """Every clear of the dynamic history, whatever its kind."""
        return sum(self.resets_by_kind.values())

    @property
    def dynamic_frame_count(self) -> int:
        return len(self._dynamic)

    # -- feeding -------------------------------------------------------------------------------------
    def add_message(self, message, static: bool) -> int:
        """Add every valid transform of a tf2_msgs/TFMessage; returns how many were rejected (and why in
        `last_rejection`). Never raises for what the message holds."""
        rejected = 0
        for transform in message.transforms:
            try:
                self.set_transform(transform.header.frame_id, transform.child_frame_id,
                                   stamp_to_ns(transform.header.stamp),
                                   transform_stamped_to_matrix(transform.transform), static)
            except ValueError as error:
                rejected += 1
                self.rejected += 1
                self.last_rejection = f"{'/tf_static' if static else '/tf'}: {error}"
        return rejected

    def set_transform(self, parent: str, child: str, stamp_ns: int, parent_from_child: np.ndarray,
                      static: bool) -> None:
        """Record parent <- child at stamp_ns (ignored for static transforms, which hold at all times)."""
        parent, child = parent.lstrip("/"), child.lstrip("/")
        if not parent or not child or parent == child:
            raise ValueError(f"invalid transform edge '{parent}' -> '{child}'")
        if not np.all(np.isfinite(parent_from_child)):
            raise ValueError(f"transform '{parent}' -> '{child}' contains non-finite values")
        loop = self._path_up(parent, child)
        if loop is not None:
            self.loops_refused += 1
            looped = " -> ".join([*reversed(loop), child])
            if static and any(frame in self._dynamic for frame in loop[:-1]) and (
                    child in self._pending_static or len(self._pending_static) < self.max_static_frames):
                # Latched /tf_static comes once: a bogus dynamic edge that came first must not lose the rig's
                # calibration for good. Held back, applied as soon as the loop's dynamic edge goes.
                self._pending_static[child] = (parent, parent_from_child)
                raise ValueError(f"static transform '{parent}' -> '{child}' held back: it would close a TF loop"
                                 f" ({looped}) through dynamic edges; applied once they no longer make one")
            raise ValueError(f"transform '{parent}' -> '{child}' refused: it would close a TF loop ({looped});"
                             " the tree is kept as it was")
        if static:
            if child not in self._static and len(self._static) >= self.max_static_frames:
                raise ValueError(f"static transform '{parent}' -> '{child}' refused: the cache holds"
                                 f" {self.max_static_frames} static frames already")
            self._pending_static.pop(child, None)
            self._set_static(child, parent, parent_from_child)
            return
        self._pending_static.pop(child, None)  # as a static edge is, a pending one is replaced by a dynamic one
        self._remove_static(child)
        edge = self._dynamic.get(child)
        if edge is not None and edge.stamps and stamp_ns < edge.stamps[-1] - self._backwards_jump_ns:
            self.clear_dynamic("backwards_jump", keep_until_ns=stamp_ns + self._backwards_jump_ns)
            edge = self._dynamic.get(child)
        if edge is None or edge.parent != parent:
            self._remove_dynamic(child)
            edge = _EdgeHistory(parent)
            self._parents[parent] += 1
        else:
            del self._dynamic[child]  # re-inserted below: the dict stays ordered by last update
        self._dynamic[child] = edge
        self._insert(edge, stamp_ns, parent_from_child)
        self._newest_ns = max(self._newest_ns, stamp_ns)
        while len(self._dynamic) > self.max_dynamic_frames:
            self._remove_dynamic(next(iter(self._dynamic)))
            self.evicted += 1
        if self._newest_ns >= self._next_expiry_ns:
            self._expire()
        self._apply_pending_static()

    def _apply_pending_static(self) -> None:
        """Apply the held-back static edges that no longer close a loop (their dynamic edge changed or went)."""
        for child, (parent, matrix) in list(self._pending_static.items()):
            if self._path_up(parent, child) is None and (child in self._static
                                                         or len(self._static) < self.max_static_frames):
                del self._pending_static[child]
                self._set_static(child, parent, matrix)

    def _path_up(self, frame: str, ancestor: str) -> list[str] | None:
        """Frames from `frame` up to `ancestor` (included) when `ancestor` is above `frame`, else None."""
        path, seen = [], set()
        while frame is not None and frame not in seen:
            path.append(frame)
            if frame == ancestor:
                return path
            seen.add(frame)
            frame = self._parent(frame)
        return None

    def _set_static(self, child: str, parent: str, matrix: np.ndarray) -> None:
        self._remove_static(child)
        self._remove_dynamic(child)
        self._static[child] = (parent, matrix)
        self._parents[parent] += 1

    def _remove_static(self, child: str) -> None:
        old = self._static.pop(child, None)
        if old is not None:
            self._release_parent(old[0])

    def _remove_dynamic(self, child: str) -> None:
        old = self._dynamic.pop(child, None)
        if old is not None:
            self._release_parent(old.parent)

    def _release_parent(self, parent: str) -> None:
        self._parents[parent] -= 1
        if self._parents[parent] <= 0:
            del self._parents[parent]

    def _expire(self) -> None:
        """Drop dynamic edges whose newest transform is older than the cache duration behind the newest
        stamp of any edge (frames that stopped being published). Runs at most every cache_duration / 10."""
        horizon = self._newest_ns - self._cache_duration_ns
        stale = [child for child, edge in self._dynamic.items() if edge.stamps[-1] < horizon]
        for child in stale:
            self._remove_dynamic(child)
        self.expired += len(stale)
        self._next_expiry_ns = self._newest_ns + max(self._cache_duration_ns // 10, 1)

    def _insert(self, edge: _EdgeHistory, stamp_ns: int, matrix: np.ndarray) -> None:
        index = bisect.bisect_left(edge.stamps, stamp_ns)
        if index < len(edge.stamps) and edge.stamps[index] == stamp_ns:
            edge.transforms[index] = matrix
            return
        edge.stamps.insert(index, stamp_ns)
        edge.transforms.insert(index, matrix)
        oldest_kept = edge.stamps[-1] - self._cache_duration_ns
        while len(edge.stamps) > 1 and (edge.stamps[0] < oldest_kept or len(edge.stamps) > self._max_entries):
            edge.stamps.pop(0)
            edge.transforms.pop(0)

    def clear_dynamic(self, kind: str = "manual", keep_until_ns: int | None = None) -> None:
        """Forget dynamic transforms (on a backwards time jump); static ones stay. `kind` says why
        (backwards_jump: a transform went back in time; clock_jump: the node's clock did; manual).

        With `keep_until_ns`, only history stamped after it goes (the "future" of the old timeline): what
        already arrived for the new one (a looped bag's /tf on other edges) is kept."""
        for child, edge in list(self._dynamic.items()):
            keep = 0 if keep_until_ns is None else bisect.bisect_right(edge.stamps, keep_until_ns)
            if keep == 0:
                self._remove_dynamic(child)
            else:
                del edge.stamps[keep:], edge.transforms[keep:]
        self._newest_ns = max((edge.stamps[-1] for edge in self._dynamic.values()), default=0)
        self._next_expiry_ns = 0
        self.resets_by_kind[kind] += 1
        self._apply_pending_static()

    # -- queries -------------------------------------------------------------------------------------
    @property
    def frames(self) -> set[str]:
        """Every frame seen as a parent or a child."""
        return set(self._static) | set(self._dynamic) | set(self._parents)

    def has_frame(self, frame: str) -> bool:
        """Whether `frame` is known (as a parent or a child), in constant time."""
        return frame in self._static or frame in self._dynamic or frame in self._parents

    def lookup(self, target_frame: str, source_frame: str, stamp_ns: int) -> np.ndarray:
        """4x4 target <- source at stamp_ns: maps points in source_frame into target_frame."""
        target_frame, source_frame = target_frame.lstrip("/"), source_frame.lstrip("/")
        for frame in (target_frame, source_frame):
            if not self.has_frame(frame):
                raise FrameNotAvailableError(f"frame '{frame}' has not been received on /tf or /tf_static yet")
        if target_frame == source_frame:
            return np.eye(4)
        target_chain = self._chain_to_root(target_frame)
        source_chain = self._chain_to_root(source_frame)
        common = next((frame for frame in source_chain if frame in target_chain), None)
        if common is None:
            raise FrameNotAvailableError(
                f"no TF chain connects '{source_frame}' (root '{source_chain[-1]}') and '{target_frame}'"
                f" (root '{target_chain[-1]}')"
            )
        common_from_source = self._compose(source_chain[: source_chain.index(common)], stamp_ns)
        common_from_target = self._compose(target_chain[: target_chain.index(common)], stamp_ns)
        return invert_transform(common_from_target) @ common_from_source

    def can_transform(self, target_frame: str, source_frame: str, stamp_ns: int) -> bool:
        """Whether lookup() would succeed now."""
        try:
            self.lookup(target_frame, source_frame, stamp_ns)
        except TfLookupError:
            return False
        return True

    def _parent(self, frame: str) -> str | None:
        if frame in self._static:
            return self._static[frame][0]
        if frame in self._dynamic:
            return self._dynamic[frame].parent
        return None

    def _chain_to_root(self, frame: str) -> list[str]:
        chain = [frame]
        while (parent := self._parent(chain[-1])) is not None:
            if parent in chain:
                raise FrameNotAvailableError(f"TF tree has a loop through '{parent}'")
            chain.append(parent)
        return chain

    def _compose(self, frames_below_ancestor: list[str], stamp_ns: int) -> np.ndarray:
        """ancestor <- frames_below_ancestor[0], composing each child's edge up the chain."""
        result = np.eye(4)
        for child in reversed(frames_below_ancestor):
            result = result @ self._edge_at(child, stamp_ns)
        return result

    def _edge_at(self, child: str, stamp_ns: int) -> np.ndarray:
        if child in self._static:
            return self._static[child][1]
        edge = self._dynamic[child]
        stamps = edge.stamps
        if stamp_ns == 0:  # tf convention: time zero means "latest available"
            return edge.transforms[-1]
        if stamp_ns < stamps[0] or stamp_ns > stamps[-1]:
            side = "before the oldest" if stamp_ns < stamps[0] else "after the newest"
            nearest = stamps[0] if stamp_ns < stamps[0] else stamps[-1]
            raise ExtrapolationError(
                f"lookup of '{edge.parent}' -> '{child}' at {stamp_ns / NS_PER_S:.6f} s would extrapolate:"
                f" {abs(stamp_ns - nearest) / 1e6:.1f} ms {side} transform ({nearest / NS_PER_S:.6f} s)"
            )
        index = bisect.bisect_left(stamps, stamp_ns)
        if stamps[index] == stamp_ns:
            return edge.transforms[index]
        before, after = stamps[index - 1], stamps[index]
        alpha = (stamp_ns - before) / (after - before)
        return interpolate_transform(edge.transforms[index - 1], edge.transforms[index], alpha)

    def lookup_across_time(self, target_frame: str, target_stamp_ns: int, source_frame: str,
                           source_stamp_ns: int, fixed_frame: str) -> np.ndarray:
        """target(at target_stamp) <- source(at source_stamp), through a frame fixed in the world.

        This is how a camera that fired earlier than the trigger is placed in the ego frame of the trigger:
        base_link(t_trigger) <- map <- camera(t_camera).
        """
        fixed_from_source = self.lookup(fixed_frame, source_frame, source_stamp_ns)
        target_from_fixed = self.lookup(target_frame, fixed_frame, target_stamp_ns)
        return target_from_fixed @ fixed_from_source
