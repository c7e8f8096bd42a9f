"""perception_node: synchronised cameras in; occupancy, BEV grid, per-camera depth (and rendered RGB) out.

A lifecycle node; with `autostart` (default) it configures and activates itself. Camera callbacks only hand
the newest complete RigFrame to a FrameWorker (one slot, one thread): when inference is slower than the
cameras, frames are dropped (and counted), never queued. Outputs are computed only while they have
subscribers. Parameters: parameter_schema.py; publishers: perception_outputs.py. No model maths
here: see distillnerf_core.inference.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import InvalidHandle
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.task import Future
from std_msgs.msg import Header

from distillnerf_core.inference import DeviceUnavailableError, ScenePredictor
from distillnerf_core.teachers.query import distinct_texts
from distillnerf_ros.input.frame_worker import FrameWorker, FrameWorkerCounters
from distillnerf_ros.input.rig_input import STEADY_CLOCK, RigFrame, decode_pool
from distillnerf_ros.nodes.diagnostics import RecentIncreases, publish_status
from distillnerf_ros.nodes.guarded import GuardedNode
from distillnerf_ros.nodes.memory import release_free_heap
from distillnerf_ros.nodes.parameter_schema import ParameterValueError, declare_parameters
from distillnerf_ros.nodes.perception_diagnostics import diagnostic_level, diagnostic_values, frame_losses, rig_counts
from distillnerf_ros.nodes.perception_grading import SelfGrading
from distillnerf_ros.nodes.perception_outputs import PerceptionOutputs, camera_topic_name
from distillnerf_ros.nodes.perception_parameters import (
    BUNDLED_MODEL,
    PRECISIONS,
    bundled_model_path,
    model_path_from_parameters,
    occupancy_config_from_parameters,
    semantic_source_from_parameters,
    validate_queries,
)
from distillnerf_ros.nodes.perception_semantics import RELEASING, QueryAnswer, SceneQueries
from distillnerf_ros.nodes.rig_parameters import rig_input_from_parameters
from distillnerf_ros.nodes.services import answer_waiting_requests
from distillnerf_ros.nodes.signals import init_without_signal_handlers, node_or_none, run_node
from distillnerf_ros.srv import QueryScene

# Service queue: keep-last N lost every call beyond N in flight (the default 10 lost the 11th of 50, 256 the
# 257th of 1000): keep-all, so every request is taken and answered (beyond QUERY_BURST at once: "busy").
QUERY_QOS = QoSProfile(history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE)
QUERY_BURST = 100  # calls per second answered in full; more are refused with "busy"

__all__ = ["BUNDLED_MODEL", "PerceptionNode", "bundled_model_path", "camera_topic_name", "main", "validate_queries"]


def reported_transition(name: str):
    """Wrap a transition callback: any exception becomes a logged FAILURE whose reason shows in /diagnostics
    as ERROR (`<name> failed`), instead of rclpy's silent ERROR return."""

    def wrap(callback):
        @functools.wraps(callback)
        def run(self: PerceptionNode, state: State) -> TransitionCallbackReturn:
            try:
                return callback(self, state)
            except Exception as error:  # noqa: BLE001 - every failure must be logged and reported
                self.transition_failed(name, f"{type(error).__name__}: {error}")
                return TransitionCallbackReturn.FAILURE
        return run
    return wrap


class NodeCounters(Mapping):
    """A live, read-only view of the frame counters: the node's own and its FrameWorker's."""

    WORKER_KEYS = ("dropped_busy", "errors")

    def __init__(self, own: dict[str, int], worker: FrameWorkerCounters) -> None:
        self._own, self._worker = own, worker

    def __getitem__(self, key: str) -> int:
        return getattr(self._worker, key) if key in self.WORKER_KEYS else self._own[key]

    def __iter__(self):
        return iter(("processed", *self.WORKER_KEYS, *(k for k in self._own if k != "processed")))

    def __len__(self) -> int:
        return len(self._own) + len(self.WORKER_KEYS)

    def __repr__(self) -> str:
        return repr(dict(self))


class PerceptionNode(GuardedNode, LifecycleNode):
    """DistillNeRF on a camera rig, as a lifecycle node named `distillnerf_perception`.

    Subscribes (while active): per camera `image_topic_format` (CompressedImage or Image) and
    `camera_info_topic_format` (CameraInfo), `/tf`, `/tf_static`.
    Publishes (lifecycle publishers, while active): `~/occupancy` (PointCloud2), `~/occupancy_grid`
    (OccupancyGrid, latched), `~/<cam>/depth` (Image 32FC1) + `~/<cam>/depth/camera_info`,
    `~/<cam>/depth/opacity` (Image 32FC1, the ray's opacity in [0, 1]; depth is NaN below
    depth_min_opacity), `~/<cam>/rendered` (Image rgb8, with publish_rendered), `~/debug/{pipeline_latency_ms,
    processing_time_ms,model_time_ms,input_delay_ms}` (Float64); self-grading (perception_grading.py) on every
    grading_every_n_frames-th frame: `~/debug/recon_psnr`, `~/<cam>/debug/recon_psnr` and, with `lidar_topic`
    (PointCloud2, subscribed while configured), `~/debug/depth_abs_rel`, `~/debug/depth_delta1` (Float64).
    Publishes in every state: `/diagnostics` (DiagnosticArray, 1 Hz on the steady clock).
    Serves (configured or active): `~/query_scene` (distillnerf_ros/srv/QueryScene).
    Parameters: SCHEMA["perception_node"] in parameter_schema.py (camera input, model, outputs); a value it
    refuses (params file or override) raises ParameterValueError here, a refused change is not applied.
    """

    def __init__(self, **node_options) -> None:
        super().__init__("distillnerf_perception", **node_options)
        try:
            declare_parameters(self, "perception_node")
        except ParameterValueError:
            super().destroy_node()  # the caller never gets this half-built node (no worker or rig yet) to destroy
            raise
        self.predictor: ScenePredictor | None = None
        self.model_path = None
        self.rig = None
        self.outputs: PerceptionOutputs | None = None
        self.grading: SelfGrading | None = None  # configured: recon PSNR / LiDAR depth of every N-th frame
        self.query_service = None
        self._query_times: list[float] = []
        self.queries = SceneQueries()
        # ~/query_scene is an `async def` callback in a group of its own: while a call waits for the labelling
        # thread, the default group's timers, subscriptions, parameter and lifecycle services run on. Mutually
        # exclusive, so later calls wait for the one in flight (the labelling thread takes one at a time anyway):
        # with a reentrant group rclpy's executor waited ~6 ms per taken request, 1000 queued calls took > 50 s
        # instead of 2 s (test_perception_queries.py).
        self._query_group = MutuallyExclusiveCallbackGroup()
        self._query_wake = self.create_guard_condition(lambda: None, callback_group=self._query_group)
        self._queries_in_flight = 0  # calls waiting for the labelling thread
        self._retired_query_services: list = []  # released while calls were in flight: destroyed once answered
        self.worker: FrameWorker[RigFrame] = FrameWorker(self._process_and_trim, self._on_worker_error,
                                                         "distillnerf_inference")
        self._decode_pool: ThreadPoolExecutor | None = None  # while active: decodes a frame's cameras at once
        self._counts = {"processed": 0, "skipped_no_subscribers": 0, "skipped_no_cameras": 0, "clock_behind_stamp": 0}
        self.counters = NodeCounters(self._counts, self.worker.counters)  # live view, for tests and diagnostics
        self._retired_rig_counts: Counter = Counter()  # counters of the rig inputs of earlier activations
        self.last = {"processing_ms": 0.0, "latency_ms": 0.0, "model_ms": 0.0, "missing": {}, "distortion": {},
                     "error": "", "semantic_queries": "none set"}
        self.status_message = "unconfigured"
        self.degraded: dict[str, str] = {}  # what runs in a degraded way, and why (WARN in /diagnostics)
        self._warm_up_thread: threading.Thread | None = None  # compile: the warm-up frame, off the executor
        self._recent_losses = RecentIncreases(hold_s=10.0)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self.publish_diagnostics, clock=STEADY_CLOCK)
        self.guard_existing_callbacks()  # the lifecycle services rclpy built without create_service
        if self.get_parameter("autostart").value:
            if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                self.trigger_activate()

    # -- lifecycle ------------------------------------------------------------------------------------
    def transition_failed(self, name: str, reason: str) -> None:
        """Log a failed transition and show it as ERROR with its reason until the next transition succeeds."""
        self.last["error"] = f"{name} failed: {reason}"
        self.status_message = f"{name} failed"
        self.get_logger().error(self.last["error"])

    @reported_transition("configure")
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        """Load the model (model_path, device, precision, occupancy grid), create the output publishers and
        the query service. A bad checkpoint, device or parameter fails the transition with its reason."""
        self.last["error"] = ""
        self.degraded.clear()
        try:
            self.predictor = self._load_predictor()
        except Exception as error:  # noqa: BLE001 - checkpoint, sidecar, device and parameter errors alike
            self.predictor = None
            self.transition_failed("configure", f"{type(error).__name__}: {error}"
                                   if not isinstance(error, OSError | ValueError | RuntimeError) else str(error))
            return TransitionCallbackReturn.FAILURE
        cameras = list(self.get_parameter("cameras").value)
        if self.get_parameter("compile").value:
            self._warm_up_in_background(len(cameras))
        self.outputs = PerceptionOutputs.create(self, cameras)
        self.grading = SelfGrading(self, cameras, camera_topic_name)
        self.query_service = self.create_service(QueryScene, "~/query_scene", self._query_scene, qos_profile=QUERY_QOS,
                                                 callback_group=self._query_group)
        self.status_message = "configured"
        self.get_logger().info(f"loaded {self.model_path} on {self.predictor.device} ({self.predictor.precision})")
        text_problem = self.predictor.text_query_problem()  # depth and occupancy need no text encoder: a warning
        if text_problem:
            self.get_logger().warning(f"text queries unavailable: {text_problem}")
        if self.predictor.live_teacher:
            self.get_logger().info(f"semantic_source teacher: labels from the {self.predictor.segmenter_description()}")
        return super().on_configure(state)

    @reported_transition("activate")
    def on_activate(self, state: State) -> TransitionCallbackReturn:
        """Move the model to its device, enable the publishers, subscribe the rig and start the worker."""
        with self.queries.lock:  # not under a call being labelled
            self.predictor.to_device()
        result = super().on_activate(state)  # enables the lifecycle publishers
        self._decode_pool = decode_pool(len(self.get_parameter("cameras").value))
        self.worker.start()
        self.rig = rig_input_from_parameters(self, self.worker.submit)
        self.status_message = "active"
        return result

    @reported_transition("deactivate")
    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        """Unsubscribe, stop the worker after its current frame, disable the publishers, free GPU memory."""
        self._stop_processing()
        self._wait_for_warm_up(timeout_s=60.0)  # a warm-up frame still running needs the model on its device
        with self.queries.lock:  # a call being labelled finishes on the device first
            self.predictor.to_host()
        self.status_message = "inactive"
        return super().on_deactivate(state)

    @reported_transition("cleanup")
    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        """Destroy the publishers and the service and drop the model."""
        self._release()
        self.status_message = "unconfigured"
        return super().on_cleanup(state)

    @reported_transition("shutdown")
    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        """From any state: stop processing and release everything."""
        self._stop_processing()
        self._release()
        self.status_message = "finalized"
        return super().on_shutdown(state)

    def on_error(self, state: State) -> TransitionCallbackReturn:
        """After a transition raised past its own handling: stop and release everything (-> unconfigured)."""
        self.get_logger().error(f"error processing from '{state.label}': releasing the model")
        try:
            self._stop_processing()
            self._release()
        except Exception as error:  # noqa: BLE001 - on_error must always return
            self.get_logger().error(f"error processing failed too: {type(error).__name__}: {error}")
        self.status_message = "error processing failed" if self.predictor else "unconfigured after an error"
        return super().on_error(state)

    def _load_predictor(self) -> ScenePredictor:
        self.model_path = model_path_from_parameters(self)
        device = self.get_parameter("device").value
        precision = self.get_parameter("precision").value
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got '{precision}'")
        threads = self.get_parameter("torch_threads").value
        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        occupancy = occupancy_config_from_parameters(self)
        compile_stages = self.get_parameter("compile").value
        source, teacher = semantic_source_from_parameters(self)  # teacher: the segmenter loads here (fails here)
        labels = {"semantic_source": source, "teacher_semantics": teacher}
        try:
            return ScenePredictor(self.model_path, device, precision, occupancy, compile=compile_stages, **labels)
        except DeviceUnavailableError as error:
            if not self.get_parameter("device_fallback").value:
                raise
            self.get_logger().warning(f"{error}; falling back to the CPU (device_fallback is true)")
            self.last["error"] = f"{error}; running on the CPU"
            self.degraded["device"] = f"{error}; running on the CPU (device_fallback is true)"
            return ScenePredictor(self.model_path, "cpu", "fp32" if precision == "fp16" else precision, occupancy,
                                  compile=compile_stages, **labels)

    def _warm_up_in_background(self, num_cameras: int) -> None:
        """Compile on a thread of its own, so that /diagnostics ("compiling") and the services go on meanwhile;
        the worker's first frame waits for it."""
        self.degraded["compile"] = f"compiling on a warm-up frame of {num_cameras} cameras (frames wait for it)"

        def run() -> None:
            try:
                self._compile_on_warm_up_frame(num_cameras)
            except Exception as error:  # noqa: BLE001 - the thread's boundary: logged and reported, stages run eagerly
                self.last["error"] = f"compile warm-up failed: {type(error).__name__}: {error}"
                self.get_logger().error(self.last["error"])
            finally:
                self.degraded.pop("compile", None)

        self._warm_up_thread = threading.Thread(target=run, name="distillnerf_compile", daemon=True)
        self._warm_up_thread.start()

    def _wait_for_warm_up(self, timeout_s: float | None = None) -> None:
        thread = self._warm_up_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def _compile_on_warm_up_frame(self, num_cameras: int) -> None:
        """Compile now (configure) rather than at the first frame; failures fall back to eager stages."""
        self.get_logger().info(f"compile: compiling on a warm-up frame of {num_cameras} cameras")
        seconds = self.predictor.warm_up(num_cameras, rgb=self.get_parameter("publish_rendered").value)
        failed = self.predictor.model.compile_errors
        self.get_logger().info(f"compile: warm-up frame took {seconds:.1f} s"
                               + (f"; running eagerly: {', '.join(failed)}" if failed else ""))

    def _release(self) -> None:
        self._wait_for_warm_up(timeout_s=60.0)  # a warm-up frame still running needs the model
        if self.outputs is not None:
            self.outputs.destroy()
            self.outputs = None
        if self.grading is not None:
            self.grading.destroy()
            self.grading = None
        self.queries.close()  # the labelling in progress finishes (it uses the model); calls waiting: RELEASING
        if self.query_service is not None:  # calls still queued are refused with the reason, never left waiting
            refused = answer_waiting_requests(self.query_service, self._refuse_query_while_releasing)
            if refused:
                self.get_logger().info(f"~/query_scene: {refused} waiting calls refused before the service goes")
            if self._queries_in_flight:  # their answers go out when the executor resumes them, after this
                self._retired_query_services.append(self.query_service)  # transition: the service stays till then
            else:
                self.destroy_service(self.query_service)
            self.query_service = None
        self.queries.forget()  # the kept frame belongs to the model being released
        if self.predictor is not None:
            self.predictor.release()
            self.predictor = None

    def stop_threads(self) -> None:
        """Stop the worker and the rig without a transition (the context is already gone)."""
        self._stop_processing()

    def destroy_node(self) -> None:
        """Stop the worker thread and the rig first: a worker left running keeps the node, and with it the
        context's DDS participant, alive after destroy_node (each such node leaked ~6 sockets)."""
        self._stop_processing()
        self.queries.close()  # the labelling thread, after the labelling in progress (it uses the model)
        super().destroy_node()

    def _stop_processing(self) -> None:
        if self.rig is not None:
            self.rig.destroy()  # counts the camera sets it held (sets_discarded_on_stop)
            for key, value in rig_counts(self.rig).items():
                self._retired_rig_counts[key] += value
            self.rig = None
        self.worker.stop(timeout_s=30)
        if self._decode_pool is not None:  # after the worker: a frame being decoded still needs it
            self._decode_pool.shutdown()
            self._decode_pool = None

    # -- processing (on the worker thread) ------------------------------------------------------------
    def _on_worker_error(self, error: BaseException) -> None:
        self.last["error"] = f"inference failed: {type(error).__name__}: {error}"
        self.get_logger().error(self.last["error"], throttle_duration_sec=5.0)

    def _process_and_trim(self, frame: RigFrame) -> None:
        try:
            self._process(frame)
        finally:  # what this frame's tensors and images freed goes back to the OS (see nodes/memory.py)
            release_free_heap()

    def _process(self, frame: RigFrame) -> None:
        self._wait_for_warm_up()  # compile: the first frame waits for the warm-up frame (later ones are dropped)
        started = time.perf_counter()
        outputs = self.outputs
        self._publish_since_stamp("input_delay_ms", frame.stamp_ns)
        wanted = outputs.wanted(frame.cameras, self.get_parameter("publish_rendered").value)
        graded = self.grading.due()  # every N-th frame also renders RGB (and depth) to grade itself
        if not any(wanted.values()) and not graded:
            self._counts["skipped_no_subscribers"] += 1
            self.last["missing"] = dict(frame.missing)
            return
        if self.rig is not None:
            # teacher labels: decoded at least the segmenter's width (it labels from these images)
            self.rig.stats.count_failures(frame.decode(self.predictor.decode_hw, self._decode_pool))
        self.last["missing"] = dict(frame.missing)
        self.last["distortion"] = dict(frame.distortion)
        if not frame.cameras:
            self._counts["skipped_no_cameras"] += 1
            return
        queries = self._frame_queries() if wanted["occupancy"] else []
        with self.queries.lock if queries else contextlib.nullcontext():
            prediction = self.predictor.predict(
                frame.images, [k.K for k in frame.intrinsics], frame.output_from_camera,
                depth=wanted["depth"] or (graded and self.grading.needs_depth()), rgb=wanted["rgb"] or graded,
                occupancy=wanted["occupancy"], semantic_queries=queries or None)
        grading_rgb, grading_depth = prediction.rgb, prediction.depth
        prediction.rgb = prediction.rgb if wanted["rgb"] else None  # rendered for grading only: not published
        prediction.depth = prediction.depth if wanted["depth"] else None
        header = Header(stamp=rclpy.time.Time(nanoseconds=frame.stamp_ns).to_msg(), frame_id=frame.output_frame)
        self.queries.remember(prediction, header)
        outputs.publish_prediction(frame, prediction, header, self.get_parameter("depth_min_opacity").value)
        self._counts["processed"] += 1
        self.last["processing_ms"] = 1000.0 * (time.perf_counter() - started)
        self.last["model_ms"] = prediction.model_ms
        outputs.publish_timing("processing_time_ms", self.last["processing_ms"])
        outputs.publish_timing("model_time_ms", self.last["model_ms"])
        latency = self._publish_since_stamp("pipeline_latency_ms", frame.stamp_ns)
        if latency is not None:
            self.last["latency_ms"] = latency
        if graded:  # after the outputs: grading adds nothing to their latency
            self.grading.grade(frame, self.predictor, grading_rgb, grading_depth)

    def _publish_since_stamp(self, series: str, stamp_ns: int) -> float | None:
        """Publish now - stamp (ms) on ~/debug/<series>. Not when the clock is behind the stamp: sim time lags
        the images, or went back (a looping bag) while the frame was processed; a negative time is no latency,
        so it is counted (`clock_behind_stamp`) instead."""
        elapsed_ms = (self.get_clock().now().nanoseconds - stamp_ns) / 1e6
        if elapsed_ms < 0:
            self._counts["clock_behind_stamp"] += 1
            return None
        self.outputs.publish_timing(series, elapsed_ms)
        return elapsed_ms

    # -- text queries ---------------------------------------------------------------------------------
    def _frame_queries(self) -> list[str]:
        """The `semantic_queries` to label this frame with: [] when none are set or the model cannot answer
        them (the reason shows in /diagnostics as `semantic_queries`)."""
        given = [q for q in self.get_parameter("semantic_queries").value if q]
        queries = distinct_texts(given)  # normalised, de-duplicated: equal texts would split the softmax
        if not queries:
            self.last["semantic_queries"] = "none set"
            return []
        try:
            with self.queries.lock:
                self.predictor.check_queries(queries)
        except ValueError as error:
            self.last["semantic_queries"] = f"not applied: {error}"
            return []
        self.last["semantic_queries"] = f"labelling every frame with {queries}" + (
            f" ({len(given)} given, normalised and de-duplicated: labels index into this list)"
            if queries != given else "")
        return queries

    @staticmethod
    def _refuse_query_while_releasing(_request: QueryScene.Request, response: QueryScene.Response
                                      ) -> QueryScene.Response:
        response.success, response.message = False, RELEASING
        return response

    async def _query_scene(self, request: QueryScene.Request, response: QueryScene.Response) -> QueryScene.Response:
        """Answer every call: beyond QUERY_BURST calls in one second each is refused at once with the reason
        (never left unanswered). A call that labels is answered from the labelling thread (SceneQueries.submit,
        one call after the other) while the executor thread goes on; refusals are answered at once."""
        now = time.monotonic()
        self._query_times = [t for t in self._query_times if now - t < 1.0] + [now]
        if len(self._query_times) > QUERY_BURST:
            response.success = False
            response.message = (f"busy: {len(self._query_times)} calls in the last second exceed the limit of"
                                f" {QUERY_BURST}; retry later")
            return response
        queries = list(request.queries)
        reason = validate_queries(queries)
        if reason is None and not np.isfinite(request.threshold):
            reason = f"threshold must be finite, got {request.threshold}"
        if reason is not None:
            response.success, response.message = False, reason
            return response
        distinct = distinct_texts(queries)  # equal texts would split the softmax between them
        answer = self.queries.refusal(self.predictor, distinct)
        if answer is None:
            answer = await self._answer_off_executor(distinct, float(request.threshold))
        response.success, response.message = answer.success, answer.message
        if distinct != queries:
            listed = repr(distinct) if len(repr(distinct)) <= 1000 else f"{repr(distinct)[:1000]}...]"
            response.message += (f"; {len(queries)} queries normalised (strip, casefold, collapse whitespace) and"
                                 f" de-duplicated to {len(distinct)}: labels and max_scores index into {listed}")
        if answer.success:
            response.cloud, response.max_scores = answer.cloud, answer.max_scores
        return response

    async def _answer_off_executor(self, queries: list[str], threshold: float) -> QueryAnswer:
        """SceneQueries.answer on the labelling thread; this coroutine waits (the executor runs other callbacks)
        and resumes on the executor thread once the guard condition says the answer is there."""
        predictor = self.predictor
        job = self.queries.submit(lambda: self.queries.answer(predictor, queries, threshold))
        ready: Future = Future()

        def wake(_job) -> None:  # on the labelling thread (or here, if the job is already done)
            ready.set_result(None)
            with contextlib.suppress(InvalidHandle):  # the node is being destroyed: nobody waits any more
                self._query_wake.trigger()

        self._queries_in_flight += 1
        try:
            job.add_done_callback(wake)
            await ready
        finally:
            self._queries_in_flight -= 1
            if not self._queries_in_flight and self._retired_query_services and self.executor is not None:
                self.executor.create_task(self.guard("destroy_retired_query_services",  # runs after this
                                                     self._destroy_retired_query_services))  # answer is sent
        return QueryAnswer(False, RELEASING) if job.cancelled() else job.result()

    def _destroy_retired_query_services(self) -> None:
        if not self._queries_in_flight:  # a call taken by a retired service meanwhile keeps it one more round
            while self._retired_query_services:
                self.destroy_service(self._retired_query_services.pop())

    # -- diagnostics ----------------------------------------------------------------------------------
    def losses(self) -> dict[str, int]:
        """Camera sets, frames and messages lost before an output, by reason (cumulative over the node's life)."""
        return frame_losses(self)

    def rig_counts(self) -> dict[str, int]:
        """The input path's counters (perception_diagnostics.rig_counts), summed over every activation."""
        counts = dict(self._retired_rig_counts)
        rig = self.rig
        if rig is not None:
            for key, value in rig_counts(rig).items():
                counts[key] = counts.get(key, 0) + value
        return counts

    def publish_diagnostics(self) -> None:
        """One DiagnosticStatus: the lifecycle state, processing time against thresholds, counters, what was
        dropped or rejected recently (WARN for 10 s after it), missing cameras and why."""
        level, message = diagnostic_level(self, self._recent_losses)
        publish_status(self, self.diagnostics_pub, level, f"{self.get_name()}: perception", "distillnerf", message,
                       diagnostic_values(self))

    def on_callback_error(self, name: str, reason: str) -> None:
        """The diagnostics timer itself failed: publish a reduced status (state, callback errors) instead."""
        if name == "publish_diagnostics":
            publish_status(self, self.diagnostics_pub, DiagnosticStatus.WARN, f"{self.get_name()}: perception",
                           "distillnerf", f"{self.status_message}; diagnostics incomplete: {reason}",
                           {"status": self.status_message, **self.callback_errors.values()})


def main(argv: list[str] | None = None) -> int:
    """Run the node until SIGINT / SIGTERM, then shut it down in order (worker joined) and exit 0 (2: a
    parameter outside the schema, named in the log)."""
    stop = init_without_signal_handlers(argv)
    node = node_or_none(PerceptionNode, "perception_node")
    if node is None:
        return 2

    def release() -> None:
        if node.status_message != "finalized":
            if rclpy.ok():
                node.trigger_shutdown()  # stops the rig and joins the worker, while logging still works
            else:
                node.stop_threads()

    return run_node(node, stop, release)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
