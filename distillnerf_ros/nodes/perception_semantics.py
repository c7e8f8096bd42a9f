"""Text queries for perception_node: the labelled occupancy cloud of `~/query_scene` and of `semantic_queries`.

All the maths (teacher text embeddings, PCA projection, cosine, softmax with a background option) is in
distillnerf_core (ScenePredictor.query); here only the messages and the node's answers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header

from distillnerf_core.inference import FramePrediction, ScenePredictor
from distillnerf_core.training.calibration import DomainVerdict
from distillnerf_ros.conversions.pointcloud import make_points, points_to_pointcloud2


def teacher_description(predictor: ScenePredictor | None) -> str:
    """Which teacher the running model was distilled from, for messages and /diagnostics."""
    teacher = predictor.teacher if predictor is not None else None
    if not teacher:
        return "none (features not distilled: text queries unavailable)"
    kind, model = teacher.get("kind"), teacher.get("model")
    described = kind if not model or model == kind else f"{kind} {model}"
    if teacher.get("weights_sha256"):
        described += f" (weights sha256 {teacher['weights_sha256'][:12]})"
    if kind == "segmenter":  # it answers only its class names and aliases: say so in every reply
        described += "; closed vocabulary: the 20 Cityscapes classes and their aliases"
    return described


def label_source(predictor: ScenePredictor | None) -> str:
    """Where the voxel labels come from (semantic_source), for replies and /diagnostics."""
    if predictor is None:
        return "none (not configured)"
    if predictor.live_teacher:
        return (f"teacher: labels from the {predictor.segmenter_description()} run on the newest frame's images,"
                " each voxel labelled where it is visible; closed vocabulary: the 20 Cityscapes classes and their"
                " aliases")
    return f"distilled (teacher: {teacher_description(predictor)})"


def labelled_cloud(prediction: FramePrediction, label: np.ndarray, score: np.ndarray, keep: np.ndarray,
                   header: Header) -> PointCloud2:
    """Occupied voxels where `keep`: x, y, z, rgb, density, label (index into the queries, -1 = background)
    and score (probability of that label)."""
    points = make_points(prediction.voxel_centers[keep], prediction.voxel_rgb[keep],
                         density=prediction.voxel_density[keep].astype(np.float32),
                         label=label[keep].astype(np.int32), score=score[keep].astype(np.float32))
    return points_to_pointcloud2(points, header)


def domain_note(domain: DomainVerdict | None) -> str:
    """The reply's first words when the frame is out of the calibration's domain (its scores mean nothing)."""
    return f"{domain.message()}; " if domain is not None and not domain.in_domain else ""


@dataclass
class QueryAnswer:
    success: bool
    message: str
    cloud: PointCloud2 | None = None
    max_scores: list[float] | None = None


RELEASING = ("refused: the node is releasing its model (cleanup or shutdown) and ~/query_scene goes away until it"
             " is configured again")


class SceneQueries:
    """The newest frame's occupancy kept for `~/query_scene`, the lock that serialises the predictor's text
    querier (its embedding cache) and the live segmenter between the worker thread and the service, and the
    labelling thread that answers the calls: the live segmenter (and its depth render) or a text encoder takes
    seconds on a CPU, which must not hold the node's one executor thread (timers, cameras, TF, other calls)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._latest: tuple[FramePrediction, Header] | None = None
        self.domain: DomainVerdict | None = None  # the latest answered query's features against the domain check
        self._labeller: ThreadPoolExecutor | None = None  # one thread: calls labelled one after the other

    def submit(self, job: Callable[[], QueryAnswer]) -> Future:
        """Run `job` on the labelling thread (started at the first call after construction or close)."""
        if self._labeller is None:
            self._labeller = ThreadPoolExecutor(max_workers=1, thread_name_prefix="distillnerf_query")
        return self._labeller.submit(job)

    def close(self) -> None:
        """Before the model goes: wait for the labelling in progress (it uses the model) and cancel the calls
        still waiting for the thread (their callers are answered RELEASING)."""
        labeller, self._labeller = self._labeller, None
        if labeller is not None:
            labeller.shutdown(wait=True, cancel_futures=True)

    def remember(self, prediction: FramePrediction, header: Header) -> None:
        if prediction.voxel_features is not None or prediction.teacher_frame is not None:
            self._latest = (prediction, header)  # teacher: with its images, which a query labels from
        if prediction.query_domain is not None:  # semantic_queries labelled this frame
            self.domain = prediction.query_domain

    def forget(self) -> None:
        self._latest = None
        self.domain = None

    def domain_warning(self) -> str | None:
        """The /diagnostics WARN while the latest answered query was out of the calibration's domain."""
        domain = self.domain
        return f"query scores {domain.message()}" if domain is not None and not domain.in_domain else None

    def domain_value(self, predictor: ScenePredictor | None) -> str:
        """/diagnostics `query_domain`: the latest verdict, or why there is none."""
        if predictor is not None and predictor.live_teacher:  # the labels are not the model's features: a
            return "labels from the live segmenter: the model's domain check does not apply"  # verdict is stale
        if self.domain is not None:
            return self.domain.message()
        teacher = (predictor.teacher or {}) if predictor is not None else {}
        if not (teacher.get("calibration") or {}).get("domain_check"):
            return "no domain check stored with the model (scores uncalibrated)" if teacher else "no text queries"
        return "no query answered yet"

    def refusal(self, predictor: ScenePredictor | None, queries: list[str]) -> QueryAnswer | None:
        """The answer of a call refused without labelling (no model, texts outside the live segmenter's closed
        vocabulary, no frame yet), cheap enough for the executor thread; None: it goes to the labelling thread.
        A distilled model's texts are checked there (the check may build its text encoder)."""
        if predictor is None:
            return QueryAnswer(False, "the node is not configured (no model loaded)")
        return self._refusal(predictor, queries, locked=False) if predictor.live_teacher else None

    def _refusal(self, predictor: ScenePredictor, queries: list[str], locked: bool = True) -> QueryAnswer | None:
        teacher = self._source_note(predictor)
        try:
            if locked:  # the text querier's cache is shared with the worker thread; the segmenter's names are not
                with self.lock:
                    predictor.check_queries(queries)
            else:
                predictor.check_queries(queries)
        except ValueError as error:  # undistilled model, or texts an oracle-distilled model does not know
            return QueryAnswer(False, f"{error}{teacher}")
        if self._latest is None:
            return QueryAnswer(False, f"no frame with occupancy processed yet{teacher}")
        return None

    @staticmethod
    def _source_note(predictor: ScenePredictor) -> str:
        if predictor.live_teacher:  # the labels are the live segmenter's, whatever the model was distilled from
            return f" ({label_source(predictor)})"
        return f" (teacher: {teacher_description(predictor)})" if predictor.teacher else ""

    def answer(self, predictor: ScenePredictor | None, queries: list[str], threshold: float) -> QueryAnswer:
        """Label the newest frame's occupied voxels; keep those whose best query scores >= threshold (on the
        labelling thread: `submit`)."""
        if predictor is None:
            return QueryAnswer(False, "the node is not configured (no model loaded)")
        refused = self._refusal(predictor, queries)
        if refused is not None:
            return refused
        teacher = self._source_note(predictor)
        prediction, header = self._latest
        with self.lock:
            result = predictor.query(queries, prediction)
        label, score = result.label.numpy(), result.score.numpy()
        keep = (label >= 0) & (score >= threshold)
        cloud = labelled_cloud(prediction, label, score, keep, header)
        if result.domain is not None:
            self.domain = result.domain
        return QueryAnswer(True, f"{domain_note(result.domain)}{int(keep.sum())} of {len(label)} occupied voxels "
                                 f"labelled at threshold {threshold:g}{teacher}", cloud,
                           [float(s) for s in result.max_scores])
