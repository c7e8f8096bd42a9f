"""FrameWorker (no ROS): newest frame wins, drops counted, errors never end the thread, clean start/stop."""

from __future__ import annotations

import threading
import time

from distillnerf_ros.input.frame_worker import FrameWorker


def wait_until(condition, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


def test_each_frame_is_processed_when_the_worker_keeps_up():
    done = []
    worker = FrameWorker(done.append)
    worker.start()
    for frame in range(5):
        assert worker.submit(frame)
        assert wait_until(lambda f=frame: f in done)
    assert worker.stop()
    assert done == [0, 1, 2, 3, 4]
    assert (worker.counters.processed, worker.counters.dropped_busy, worker.counters.errors) == (5, 0, 0)


def test_frames_arriving_while_busy_are_dropped_and_the_newest_wins():
    release, started, done = threading.Event(), threading.Event(), []

    def work(frame):
        started.set()
        release.wait(5)
        done.append(frame)

    worker = FrameWorker(work)
    worker.start()
    worker.submit("first")
    assert started.wait(5) and worker.busy
    for frame in ("second", "third", "newest"):  # the worker is busy: only the newest survives
        worker.submit(frame)
    release.set()
    assert wait_until(lambda: len(done) == 2)
    assert worker.stop()
    assert done == ["first", "newest"]
    assert worker.counters.dropped_busy == 2 and worker.counters.submitted == 4 and worker.counters.processed == 2


def test_an_exception_is_counted_and_reported_and_the_worker_goes_on():
    reported, done = [], []

    def work(frame):
        if frame < 0:
            raise ValueError("Nanoseconds value must not be negative")
        done.append(frame)

    worker = FrameWorker(work, on_error=reported.append)
    worker.start()
    worker.submit(-1)
    assert wait_until(lambda: worker.counters.errors == 1)
    worker.submit(7)
    assert wait_until(lambda: done == [7]), "the worker thread must survive an exception in work()"
    assert worker.running
    assert worker.stop()
    assert isinstance(reported[0], ValueError) and "must not be negative" in worker.last_error


def test_a_failing_error_callback_does_not_end_the_worker_either():
    done = []

    def work(frame):
        if frame == "bad":
            raise RuntimeError("boom")
        done.append(frame)

    def broken_reporter(error):
        raise RuntimeError("the reporter failed too")

    worker = FrameWorker(work, on_error=broken_reporter)
    worker.start()
    worker.submit("bad")
    assert wait_until(lambda: worker.counters.errors == 1)
    worker.submit("good")
    assert wait_until(lambda: done == ["good"])
    assert worker.stop()


def test_stop_joins_the_thread_forgets_the_waiting_frame_and_start_works_again():
    release, done = threading.Event(), []
    worker = FrameWorker(lambda frame: (release.wait(5), done.append(frame)))
    assert not worker.submit("before start"), "a stopped worker accepts nothing"
    assert worker.counters.dropped_stopped == 1
    worker.start()
    worker.submit("a")
    assert wait_until(lambda: worker.busy)
    worker.submit("waiting")
    release.set()
    assert worker.stop(timeout_s=5)
    assert not worker.running
    assert "waiting" not in done or done == ["a", "waiting"]
    assert not worker.submit("after stop")
    release.clear()
    release.set()
    worker.start()
    worker.submit("b")
    assert wait_until(lambda: "b" in done)
    assert worker.stop()


def test_stop_times_out_on_work_that_never_returns():
    never = threading.Event()
    worker = FrameWorker(lambda frame: never.wait(2))
    worker.start()
    worker.submit(1)
    assert wait_until(lambda: worker.busy)
    assert not worker.stop(timeout_s=0.1), "stop reports that the thread is still inside work()"
    never.set()


def test_every_submitted_frame_ends_in_one_counter_even_when_stopped_while_waiting():
    release, done = threading.Event(), []
    worker = FrameWorker(lambda frame: (release.wait(5), done.append(frame)))
    worker.start()
    worker.submit("a")
    assert wait_until(lambda: worker.busy)
    worker.submit("replaced")
    worker.submit("waiting")  # replaces "replaced" (dropped_busy); still waiting when stop() comes
    release.set()
    stopper = threading.Thread(target=worker.stop)
    stopper.start()  # stop() lands while "a" may still finish: "waiting" is discarded, never processed
    stopper.join(5)
    counters = worker.counters
    assert counters.dropped_busy == 1
    assert counters.processed + counters.discarded_on_stop + counters.dropped_busy == counters.submitted == 3, counters
    assert counters.discarded_on_stop == ("waiting" not in done), (counters, done)
