"""perception_node: synchronised cameras in; occupancy, BEV grid, per-camera depth (and rendered RGB) out.

A lifecycle node (configure loads the model, activate subscribes and starts the worker, deactivate stops
and frees GPU memory, cleanup/shutdown release everything); with `autostart` (default) it configures and
activates itself. Camera callbacks only hand the newest complete RigFrame to one worker thread through a
single slot: when inference is slower than the cameras, frames are dropped (and counted), never queued.
Outputs are computed only while they have subscribers. No model maths here: see distillnerf_core.inference.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from nav_msgs.msg import OccupancyGrid
from rcl_interfaces.msg import FloatingPointRange, ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, State, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Float64, Header

from distillnerf_core.inference import DeviceUnavailableError, FramePrediction, ScenePredictor
from distillnerf_core.model.occupancy import OccupancyConfig
from distillnerf_ros.conversions.camera_info import CameraIntrinsics, intrinsics_to_camera_info
from distillnerf_ros.conversions.images import depth_to_image, rgb_to_image
from distillnerf_ros.conversions.pointcloud import make_points, occupancy_grid_from_probabilities, points_to_pointcloud2
from distillnerf_ros.input.rig_input import STEADY_CLOCK, RigFrame, declare_rig_parameters, rig_input_from_parameters
from distillnerf_ros.nodes.diagnostics import publish_status
from distillnerf_ros.srv import QueryScene

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLED_MODEL = Path("models") / "default" / "model.safetensors"
DEVICES_HELP = "auto (cuda when available), cpu, cuda or cuda:N"
PRECISIONS = ("fp32", "bf16", "fp16")
MAX_QUERIES = 64
MAX_QUERY_CHARS = 512


def bundled_model_path() -> Path | None:
    """The shipped default model: the installed share directory first, then this source tree."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("distillnerf_ros")) / BUNDLED_MODEL)
    except (ImportError, LookupError, OSError, ValueError):
        pass  # no ament index (pip-only setup, AMENT_PREFIX_PATH unset) or the package is not installed there
    candidates.append(REPO_ROOT / BUNDLED_MODEL)
    return next((path for path in candidates if path.is_file()), None)


def validate_queries(queries: list[str]) -> str | None:
    """Why a list of text queries is unacceptable, or None."""
    if not queries:
        return "no queries given"
    if len(queries) > MAX_QUERIES:
        return f"{len(queries)} queries exceed the limit of {MAX_QUERIES}"
    for index, query in enumerate(queries):
        if not query.strip():
            return f"query {index} is empty"
        if len(query) > MAX_QUERY_CHARS:
            return f"query {index} has {len(query)} characters, more than the limit of {MAX_QUERY_CHARS}"
    return None


def camera_topic_name(camera: str) -> str:
    """~/<camera>/... names are lower case (REP-144): CAM_FRONT -> cam_front."""
    return camera.lower()


class PerceptionNode(LifecycleNode):
    def __init__(self, **node_options) -> None:
        super().__init__("distillnerf_perception", **node_options)
        declare_rig_parameters(self)
        self._declare_model_parameters()
        self.add_on_set_parameters_callback(self._validate_parameter_change)
        self.predictor: ScenePredictor | None = None
        self.rig = None
        self._lock = threading.Lock()
        self._slot: RigFrame | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self.counters = {"processed": 0, "dropped_busy": 0, "skipped_no_subscribers": 0, "skipped_no_cameras": 0,
                         "errors": 0}
        self.last = {"processing_ms": 0.0, "latency_ms": 0.0, "model_ms": 0.0, "missing": {}, "error": ""}
        self.status_message = "unconfigured"
        self._outputs_ready = False
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self.publish_diagnostics, clock=STEADY_CLOCK)
        if self.get_parameter("autostart").value:
            if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                self.trigger_activate()

    # -- parameters -----------------------------------------------------------------------------------
    def _declare_model_parameters(self) -> None:
        def describe(text: str, read_only: bool = True, **ranges) -> ParameterDescriptor:
            return ParameterDescriptor(description=text, read_only=read_only, **ranges)

        def positive(limit: float) -> list[FloatingPointRange]:
            return [FloatingPointRange(from_value=0.0, to_value=limit)]

        self.declare_parameter("model_path", "", describe("checkpoint (.safetensors + .json); empty: bundled model"))
        self.declare_parameter("device", "auto", describe(DEVICES_HELP))
        self.declare_parameter("device_fallback", True, describe("fall back to the CPU when CUDA is requested but"
                                                                 " absent (false: configure fails)"))
        self.declare_parameter("precision", "fp32", describe("fp32, bf16 or fp16 (fp16: CUDA only)"))
        self.declare_parameter("torch_threads", 0, describe("CPU threads for torch (0: torch's default)"))
        self.declare_parameter("autostart", True, describe("configure and activate on start"))
        self.declare_parameter("occupancy_x_range", [-40.0, 40.0], describe("m, ego x range of the occupancy grid"))
        self.declare_parameter("occupancy_y_range", [-40.0, 40.0], describe("m, ego y range"))
        self.declare_parameter("occupancy_z_range", [-5.0, 3.0], describe("m, ego z range"))
        self.declare_parameter("occupancy_voxel_size", 0.5, describe("m, cell size of occupancy and the BEV grid",
                                                                     floating_point_range=positive(10.0)))
        self.declare_parameter("occupancy_threshold", 0.1, describe("density above which a cell is occupied",
                                                                    floating_point_range=positive(1000.0)))
        self.declare_parameter("publish_rendered", False, describe("publish ~/<camera>/rendered RGB", False))
        self.declare_parameter("semantic_queries", [""], describe("text queries labelled every frame", False))
        self.declare_parameter("processing_time_warn_ms", 1500.0, describe(
            "diagnostics WARN above this processing time", False, floating_point_range=positive(1e6)))
        self.declare_parameter("processing_time_error_ms", 5000.0, describe(
            "diagnostics ERROR above this processing time", False, floating_point_range=positive(1e6)))

    def _validate_parameter_change(self, parameters) -> SetParametersResult:
        values = {p.name: p.value for p in parameters}
        if "semantic_queries" in values:
            queries = [q for q in values["semantic_queries"] if q]
            reason = validate_queries(queries) if queries else None
            if reason:
                return SetParametersResult(successful=False, reason=f"semantic_queries: {reason}")
        warn = values.get("processing_time_warn_ms", self.get_parameter("processing_time_warn_ms").value)
        error = values.get("processing_time_error_ms", self.get_parameter("processing_time_error_ms").value)
        if warn > error:
            return SetParametersResult(successful=False, reason=f"processing_time_warn_ms ({warn}) must not exceed"
                                                                f" processing_time_error_ms ({error})")
        return SetParametersResult(successful=True)

    def _occupancy_config(self) -> OccupancyConfig:
        ranges = {axis: tuple(float(v) for v in self.get_parameter(f"occupancy_{axis}_range").value)
                  for axis in ("x", "y", "z")}
        config = OccupancyConfig(ranges["x"], ranges["y"], ranges["z"],
                                 self.get_parameter("occupancy_voxel_size").value,
                                 self.get_parameter("occupancy_threshold").value)
        config.validate()
        return config

    # -- lifecycle ------------------------------------------------------------------------------------
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            self.predictor = self._load_predictor()
        except (OSError, ValueError, RuntimeError) as error:  # checkpoint, device and parameter errors
            self.last["error"] = f"configure failed: {error}"
            self.status_message = "configure failed"
            self.get_logger().error(self.last["error"])
            return TransitionCallbackReturn.FAILURE
        self._create_outputs()
        self.status_message = "configured"
        self.get_logger().info(f"loaded {self.model_path} on {self.predictor.device} ({self.predictor.precision})")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        self.predictor.to_device()
        self.rig = rig_input_from_parameters(self, self._on_frame)
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="distillnerf_inference", daemon=True)
        self._worker.start()
        self.status_message = "active"
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._stop_processing()
        self.predictor.to_host()
        self.status_message = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        self.status_message = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._stop_processing()
        self._release()
        self.status_message = "finalized"
        return TransitionCallbackReturn.SUCCESS

    def _load_predictor(self) -> ScenePredictor:
        path = self.get_parameter("model_path").value
        if path:
            self.model_path = Path(path).expanduser()
        else:
            bundled = bundled_model_path()
            if bundled is None:
                raise FileNotFoundError(f"model_path is empty and the bundled model ({BUNDLED_MODEL}) is not"
                                        " installed; set model_path to a .safetensors checkpoint")
            self.model_path = bundled
        device = self.get_parameter("device").value
        precision = self.get_parameter("precision").value
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got '{precision}'")
        threads = self.get_parameter("torch_threads").value
        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        try:
            return ScenePredictor(self.model_path, device, precision, self._occupancy_config())
        except DeviceUnavailableError as error:
            if not self.get_parameter("device_fallback").value:
                raise
            self.get_logger().warning(f"{error}; falling back to the CPU (device_fallback is true)")
            self.last["error"] = f"{error}; running on the CPU"
            return ScenePredictor(self.model_path, "cpu", "fp32" if precision == "fp16" else precision,
                                  self._occupancy_config())

    def _create_outputs(self) -> None:
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        self.occupancy_pub = self.create_publisher(PointCloud2, "~/occupancy", reliable)
        self.grid_pub = self.create_publisher(OccupancyGrid, "~/occupancy_grid", latched)
        self.latency_pub = self.create_publisher(Float64, "~/debug/pipeline_latency_ms", 10)
        self.processing_pub = self.create_publisher(Float64, "~/debug/processing_time_ms", 10)
        self.model_time_pub = self.create_publisher(Float64, "~/debug/model_time_ms", 10)
        # stamp -> the worker takes the frame: transport + sync + waiting for the previous inference
        self.input_delay_pub = self.create_publisher(Float64, "~/debug/input_delay_ms", 10)
        self.depth_pubs, self.depth_info_pubs, self.rendered_pubs = {}, {}, {}
        for camera in self.get_parameter("cameras").value:
            name = camera_topic_name(camera)
            self.depth_pubs[camera] = self.create_publisher(Image, f"~/{name}/depth", reliable)
            self.depth_info_pubs[camera] = self.create_publisher(CameraInfo, f"~/{name}/depth/camera_info", reliable)
            self.rendered_pubs[camera] = self.create_publisher(Image, f"~/{name}/rendered", reliable)
        self.query_service = self.create_service(QueryScene, "~/query_scene", self._query_scene)
        self._outputs_ready = True

    def _release(self) -> None:
        if self._outputs_ready:
            for publisher in (self.occupancy_pub, self.grid_pub, self.latency_pub, self.processing_pub,
                              self.model_time_pub, self.input_delay_pub, *self.depth_pubs.values(),
                              *self.depth_info_pubs.values(), *self.rendered_pubs.values()):
                self.destroy_publisher(publisher)
            self.destroy_service(self.query_service)
            self._outputs_ready = False
        if self.predictor is not None:
            self.predictor.release()
            self.predictor = None

    def _stop_processing(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout=30)
            self._worker = None
        if self.rig is not None:
            self.rig.destroy()
            self.rig = None
        with self._lock:
            self._slot = None

    # -- processing -----------------------------------------------------------------------------------
    def _on_frame(self, frame: RigFrame) -> None:
        with self._lock:
            if self._slot is not None:
                self.counters["dropped_busy"] += 1  # the worker did not take the previous frame in time
            self._slot = frame
        self._wake.set()

    def _work(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=0.1)
            self._wake.clear()
            with self._lock:
                frame, self._slot = self._slot, None
            if frame is not None:
                self._process(frame)

    def _wanted(self, frame: RigFrame) -> dict[str, bool]:
        rendered = self.get_parameter("publish_rendered").value
        return {
            "occupancy": self.occupancy_pub.get_subscription_count() + self.grid_pub.get_subscription_count() > 0,
            "depth": any(self.depth_pubs[c].get_subscription_count() for c in frame.cameras),
            "rgb": rendered and any(self.rendered_pubs[c].get_subscription_count() for c in frame.cameras),
        }

    def _process(self, frame: RigFrame) -> None:
        started = time.perf_counter()
        self.input_delay_pub.publish(Float64(data=(self.get_clock().now().nanoseconds - frame.stamp_ns) / 1e6))
        wanted = self._wanted(frame)
        if not any(wanted.values()):
            self.counters["skipped_no_subscribers"] += 1
            self.last["missing"] = dict(frame.missing)
            return
        if self.rig is not None:
            self.rig.stats.count_failures(frame.decode(min_hw=self.predictor.input_hw))
        self.last["missing"] = dict(frame.missing)
        if not frame.cameras:
            self.counters["skipped_no_cameras"] += 1
            return
        try:
            prediction = self.predictor.predict(frame.images, [k.K for k in frame.intrinsics],
                                                frame.output_from_camera, depth=wanted["depth"], rgb=wanted["rgb"],
                                                occupancy=wanted["occupancy"])
        except Exception as error:  # noqa: BLE001 - any model failure must be reported, never kill the node
            self.counters["errors"] += 1
            self.last["error"] = f"inference failed: {type(error).__name__}: {error}"
            self.get_logger().error(self.last["error"], throttle_duration_sec=5.0)
            return
        header = Header(stamp=rclpy.time.Time(nanoseconds=frame.stamp_ns).to_msg(), frame_id=frame.output_frame)
        self._publish(frame, prediction, header)
        self.counters["processed"] += 1
        self.last["processing_ms"] = 1000.0 * (time.perf_counter() - started)
        self.last["model_ms"] = prediction.model_ms
        self.last["latency_ms"] = (self.get_clock().now().nanoseconds - frame.stamp_ns) / 1e6
        self.processing_pub.publish(Float64(data=self.last["processing_ms"]))
        self.model_time_pub.publish(Float64(data=self.last["model_ms"]))
        self.latency_pub.publish(Float64(data=self.last["latency_ms"]))

    def _publish(self, frame: RigFrame, prediction: FramePrediction, header: Header) -> None:
        if prediction.voxel_centers is not None:
            points = make_points(prediction.voxel_centers, prediction.voxel_rgb, density=prediction.voxel_density)
            self.occupancy_pub.publish(points_to_pointcloud2(points, header))
            self.grid_pub.publish(occupancy_grid_from_probabilities(
                prediction.bev_probability, prediction.voxel_size, prediction.bev_origin, header))
        for index, camera in enumerate(frame.cameras):
            camera_header = Header(stamp=header.stamp, frame_id=frame.frame_ids[index])
            if prediction.depth is not None:
                depth = prediction.depth[index]
                self.depth_pubs[camera].publish(depth_to_image(depth, camera_header))
                self.depth_info_pubs[camera].publish(intrinsics_to_camera_info(CameraIntrinsics(
                    prediction.depth_intrinsics[index], depth.shape[1], depth.shape[0]), camera_header))
            if prediction.rgb is not None:
                self.rendered_pubs[camera].publish(rgb_to_image(prediction.rgb[index], camera_header))

    # -- text queries ---------------------------------------------------------------------------------
    def _query_scene(self, request: QueryScene.Request, response: QueryScene.Response) -> QueryScene.Response:
        queries = list(request.queries)
        reason = validate_queries(queries)
        if reason is None and not np.isfinite(request.threshold):
            reason = f"threshold must be finite, got {request.threshold}"
        if reason is None and (self.predictor is None or not self.predictor.has_feature_head):
            reason = "the loaded model has no foundation-feature head, so it cannot score text queries"
        if reason is None:
            reason = ("the loaded model's features are not distilled from CLIP yet (no text-aligned feature space"
                      " in the checkpoint), so text queries cannot be scored")
        response.success = False
        response.message = reason
        return response

    # -- diagnostics ----------------------------------------------------------------------------------
    def publish_diagnostics(self) -> None:
        processing = self.last["processing_ms"]
        level, message = DiagnosticStatus.OK, self.status_message
        if self.status_message == "configure failed":
            level = DiagnosticStatus.ERROR
        elif processing > self.get_parameter("processing_time_error_ms").value:
            level, message = DiagnosticStatus.ERROR, f"processing {processing:.0f} ms"
        elif (processing > self.get_parameter("processing_time_warn_ms").value or self.last["missing"]
              or self.counters["errors"]):
            level = DiagnosticStatus.WARN
            message = f"{self.status_message}; missing cameras: {sorted(self.last['missing'])}" \
                if self.last["missing"] else f"{self.status_message}; processing {processing:.0f} ms"
        values = {**self.counters, **{k: v for k, v in self.last.items() if k != "missing"}}
        values["device"] = str(self.predictor.device) if self.predictor else "none"
        values.update({f"missing/{camera}": why for camera, why in self.last["missing"].items()})
        if self.rig is not None:
            values["sets_dropped_tf"] = self.rig.stats.sets_dropped_tf
            values["tf_resets"] = self.rig.tf.resets
            sync_missing = self.rig.sync.stats.missing.items()
            values.update({f"sync_missing/{camera}/{kind}": n for (camera, kind), n in sync_missing})
        publish_status(self, self.diagnostics_pub, level, f"{self.get_name()}: perception", "distillnerf", message,
                       values)


def main(argv: list[str] | None = None) -> int:
    rclpy.init(args=argv)
    node = PerceptionNode()
    # One executor thread: inference has its own worker thread. rclpy's MultiThreadedExecutor, woken by
    # /clock at 100 Hz during bag replay, starved that worker of the GIL: 5.5 s per frame instead of 0.5 s
    # (wall time 6x the thread's CPU time, measured with the demo's synthetic bag).
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if rclpy.ok() and node.status_message != "finalized":  # after SIGINT/SIGTERM rclpy already shut it down
            node.trigger_shutdown()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
