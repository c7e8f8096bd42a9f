"""distillnerf-play: replay a rosbag2 through rclpy, for machines without `ros2 bag play`.

Publishes each message's recorded CDR bytes (no decode / re-encode) with the bag's timing scaled by
--rate, /clock when asked (so nodes can run with use_sim_time), /tf_static latched, and each topic with
the QoS it was recorded with (reliable keep-last otherwise). Prints the sustained message rate.
"""

from __future__ import annotations

import argparse
import importlib
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.interfaces import QosDurability, QosReliability
from rosbags.rosbag2 import Reader, ReaderError
from rosgraph_msgs.msg import Clock

from distillnerf_ros.conversions.nuscenes_messages import stamp_from_us
from distillnerf_ros.nodes.signals import init_without_signal_handlers
from distillnerf_ros.tools.bag_check import MalformedBagError, check_storage_file


class BagError(RuntimeError):
    """A bag that cannot be played; the message names the bag and the problem."""


@dataclass
class PlaybackStats:
    messages: int = 0
    seconds: float = 0.0
    loops: int = 0

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


def message_class(msgtype: str):
    """The rclpy message class of a type name such as sensor_msgs/msg/Image."""
    package, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.{kind}"), name)
    except (ImportError, AttributeError) as error:
        raise BagError(f"message type {msgtype} is not available in this ROS environment: {error}") from error


def recorded_qos(connection) -> QoSProfile:
    """QoS the topic was recorded with: transient-local stays latched, best-effort stays best-effort."""
    profiles = connection.ext.offered_qos_profiles or []
    latched = any(p.durability == QosDurability.TRANSIENT_LOCAL for p in profiles) or connection.topic == "/tf_static"
    best_effort = bool(profiles) and all(p.reliability == QosReliability.BEST_EFFORT for p in profiles)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100 if latched else 10,
                      reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


class BagPlayer(Node):
    def __init__(self, bag: Path, topics: list[str] | None, clock: bool, stop=lambda: False,
                 **node_options) -> None:
        super().__init__("distillnerf_bag_player", **node_options)
        self._stop = stop  # true once SIGINT / SIGTERM arrived: playback ends after the current message
        self.bag = Path(bag)
        if not (self.bag / "metadata.yaml").is_file():
            raise BagError(f"{self.bag} is not a rosbag2 directory (no metadata.yaml)")
        try:
            for storage in sorted(self.bag.glob("*.mcap")) + sorted(self.bag.glob("*.db3")):
                check_storage_file(storage)
        except (MalformedBagError, OSError) as error:
            raise BagError(f"bag {self.bag} is malformed: {error}") from error
        self._reader = Reader(self.bag)
        try:
            self._reader.open()
        except Exception as error:  # rosbags raises many types on malformed input; all are bag errors
            raise BagError(f"cannot read bag {self.bag}: {type(error).__name__}: {error}") from error
        available = {c.topic for c in self._reader.connections}
        if topics:
            unknown = sorted(set(topics) - available)
            if unknown:
                raise BagError(f"topics {unknown} are not in {self.bag}; it has {sorted(available)}")
        self.connections = [c for c in self._reader.connections if not topics or c.topic in topics]
        self._topic_publishers = {c.id: self.create_publisher(message_class(c.msgtype), c.topic, recorded_qos(c))
                            for c in self.connections}
        self._clock_publisher = self.create_publisher(Clock, "/clock", 10) if clock else None

    def close(self) -> None:
        try:
            self._reader.close()
        except Exception:  # noqa: BLE001 - closing a corrupted bag must not hide the error that ended playback
            pass
        self.destroy_node()

    def publish_clock(self, stamp_ns: int) -> None:
        if self._clock_publisher is not None:
            self._clock_publisher.publish(Clock(clock=stamp_from_us(stamp_ns // 1000)))

    def play_once(self, rate: float, start_offset_s: float, clock_hz: float, stats: PlaybackStats) -> None:
        """One pass over the bag; rate <= 0 publishes as fast as possible."""
        start_ns = self._reader.start_time + int(start_offset_s * 1e9)
        wall_start = time.monotonic()
        next_clock = wall_start
        try:
            messages = self._reader.messages(connections=self.connections, start=start_ns)
            for connection, stamp_ns, data in messages:
                if self._stop():
                    break
                if rate > 0:
                    due = wall_start + (stamp_ns - start_ns) / 1e9 / rate
                    while (now := time.monotonic()) < due and not self._stop():
                        if self._clock_publisher is not None and now >= next_clock:
                            self.publish_clock(start_ns + int((now - wall_start) * rate * 1e9))
                            next_clock = now + 1.0 / clock_hz
                        time.sleep(min(due - now, 1.0 / clock_hz))
                self.publish_clock(stamp_ns)
                self._topic_publishers[connection.id].publish(bytes(data))
                stats.messages += 1
        except (ReaderError, ValueError, KeyError, IndexError, OverflowError, struct.error, EOFError, OSError) as error:
            raise BagError(f"bag {self.bag} is corrupted: {type(error).__name__}: {error}") from error
        stats.seconds += time.monotonic() - wall_start
        stats.loops += 1

    def wait_for_subscribers(self, timeout_s: float, settle_s: float = 0.5) -> None:
        """Wait for a first subscriber, then until discovery settles (no new match for settle_s), so the
        first messages are not published before every listening topic has matched."""
        deadline = time.monotonic() + timeout_s
        publishers = list(self._topic_publishers.values())
        matched, last_change = 0, time.monotonic()
        while time.monotonic() < deadline and not self._stop():
            now_matched = sum(p.get_subscription_count() for p in publishers)
            if now_matched != matched:
                matched, last_change = now_matched, time.monotonic()
            elif matched and time.monotonic() - last_change >= settle_s:
                return
            time.sleep(0.02)

    def drain(self, seconds: float) -> None:
        """Stay alive briefly after the last message so reliable subscribers can receive resends."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._stop():
            time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distillnerf-play", description=__doc__.splitlines()[0])
    parser.add_argument("bag", type=Path)
    parser.add_argument("--rate", type=float, default=1.0, help="speed factor; 0 = as fast as possible")
    parser.add_argument("--loop", action="store_true", help="play again from the start until interrupted")
    parser.add_argument("--clock", action="store_true", help="publish /clock (for use_sim_time nodes)")
    parser.add_argument("--clock-hz", type=float, default=100.0, help="/clock rate between messages")
    parser.add_argument("--start-offset", type=float, default=0.0, help="seconds into the bag to start at")
    parser.add_argument("--topics", nargs="+", default=None, help="only these topics")
    parser.add_argument("--wait-subscribers", type=float, default=2.0,
                        help="seconds to wait for a first subscriber before playing")
    parser.add_argument("--delay", type=float, default=0.0,
                        help="extra seconds to wait after discovery before playing (as ros2 bag play --delay)")
    parser.add_argument("--max-loops", type=int, default=0, help="with --loop: stop after this many (0: never)")
    args = parser.parse_args(argv)
    stop = init_without_signal_handlers()  # SIGINT / SIGTERM end playback cleanly, exit 0
    stats = PlaybackStats()
    try:
        player = BagPlayer(args.bag, args.topics, args.clock, stop=lambda: bool(stop))
    except BagError as error:
        print(f"distillnerf-play: error: {error}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    try:
        player.wait_for_subscribers(args.wait_subscribers)
        time.sleep(args.delay)
        while True:
            player.play_once(args.rate, args.start_offset, args.clock_hz, stats)
            if stop or not args.loop or (args.max_loops and stats.loops >= args.max_loops):
                break
        player.drain(0.5)
    except BagError as error:
        print(f"distillnerf-play: error: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        player.close()
        rclpy.try_shutdown()
    print(f"played {stats.messages} messages in {stats.seconds:.2f} s ({stats.loops} pass(es)):"
          f" {stats.rate:.0f} messages/s sustained")
    return 0


if __name__ == "__main__":
    sys.exit(main())
