"""What perception_node reports on /diagnostics: the level and message (the worst thing happening now, or
in the last seconds for drops) and the values (counters, losses by reason, TF cache state, per-camera
reasons). Read-only views of the node's state; the node publishes them once a second."""

from __future__ import annotations

from diagnostic_msgs.msg import DiagnosticStatus

from distillnerf_ros.nodes.diagnostics import RecentIncreases
from distillnerf_ros.nodes.perception_semantics import label_source, teacher_description


def rig_counts(rig) -> dict[str, int]:
    """The counters of a rig input that only grow: what its synchroniser and TF cache did with what arrived."""
    stats, sync, tf = rig.stats, rig.sync.stats, rig.tf
    counts = {
        "sets_emitted": sync.sets_emitted, "sets_flushed_idle": sync.sets_flushed_idle,
        "sets_dropped_min_cameras": sync.sets_dropped, "sets_dropped_tf": stats.sets_dropped_tf,
        "sets_replaced_waiting": stats.sets_replaced_waiting, "sets_dropped_no_cameras": stats.sets_dropped_no_cameras,
        "sets_discarded_on_reset": sync.sets_discarded_on_reset + stats.sets_discarded_on_reset,
        "sets_discarded_on_stop": stats.sets_discarded_on_stop, "frames_submitted": stats.frames,
        "frames_uncompensated": stats.frames_uncompensated,
        "images_discarded_on_reset": sync.discarded_on_reset + stats.images_discarded_after_reset,
        "images_rejected": sum(stats.rejected_images.values()), "tf_rejected": tf.rejected,
        "tf_evicted": tf.evicted, "tf_expired": tf.expired,
    }
    counts.update({f"tf_resets/{kind}": n for kind, n in tf.resets_by_kind.items()})
    counts.update({f"images_received/{camera}": n for camera, n in stats.images_received.items()})
    return counts


# Where a camera set or frame can be lost before an output, by reason (every key is a counter of frame_losses).
INPUT_LOSS_KEYS = ("sets_dropped_min_cameras", "sets_discarded_on_reset", "sets_dropped_tf", "sets_replaced_waiting",
                   "sets_dropped_no_cameras", "sets_discarded_on_stop")
EVENT_KEYS = ("images_discarded_on_reset", "images_rejected", "tf_rejected")


def frame_losses(node) -> dict[str, int]:
    """Camera sets and frames lost before an output, by reason, and rejected messages: cumulative over the
    node's life (the counts of a rig input destroyed by a deactivation are kept)."""
    worker = node.worker.counters
    counts = node.rig_counts()
    lost = {"dropped_busy": worker.dropped_busy, "errors": worker.errors,
            "frames_discarded_on_stop": worker.discarded_on_stop + worker.dropped_stopped,
            "skipped_no_cameras": node.counters["skipped_no_cameras"]}
    lost.update({key: counts.get(key, 0) for key in INPUT_LOSS_KEYS + EVENT_KEYS})
    return lost


def diagnostic_level(node, recent_losses: RecentIncreases) -> tuple[bytes, str]:
    """ERROR: a failed transition, a dead worker, processing above processing_time_error_ms. WARN: anything
    dropped or rejected in the last hold time, missing cameras, distorted cameras not rectified, no ego-motion
    compensation although the fixed frame exists, processing above processing_time_warn_ms. Else OK."""
    state, last, rig = node.status_message, node.last, node.rig
    processing = last["processing_ms"]
    if state.endswith("failed"):
        return DiagnosticStatus.ERROR, last["error"] or state
    if state == "active" and not node.worker.running:
        return DiagnosticStatus.ERROR, "active but the inference worker is not running"
    if state == "finalized":
        return DiagnosticStatus.WARN, "finalized: the node was shut down and processes nothing"
    active = state == "active"  # the processing time of an inactive node is history, not a state
    if active and processing > node.get_parameter("processing_time_error_ms").value:
        return DiagnosticStatus.ERROR, f"processing {processing:.0f} ms"
    failed_callbacks = node.callback_errors.recent(recent_losses.hold_s)
    if failed_callbacks:
        listed = "; ".join(f"{name}: {reason}" for name, reason in failed_callbacks.items())
        return DiagnosticStatus.WARN, f"{state}; callbacks failed in the last {recent_losses.hold_s:.0f} s: {listed}"
    degraded = list(dict(node.degraded).values())
    if last["semantic_queries"].startswith("not applied"):
        degraded.append(f"semantic_queries {last['semantic_queries']}")
    text_problem = node.predictor.text_query_problem() if node.predictor is not None else None
    if text_problem:
        degraded.append(f"text queries unavailable: {text_problem}")
    if degraded:
        return DiagnosticStatus.WARN, f"{state}; " + "; ".join(degraded)
    recent = recent_losses.update(frame_losses(node))
    if recent:
        listed = ", ".join(f"{name} {count}" for name, count in sorted(recent.items()))
        return DiagnosticStatus.WARN, (f"{state}; frames or messages dropped or rejected in the last"
                                       f" {recent_losses.hold_s:.0f} s: {listed}")
    if last["missing"]:
        return DiagnosticStatus.WARN, f"{state}; missing cameras: {sorted(last['missing'])}"
    unrectified = sorted(c for c, what in last["distortion"].items() if what.startswith("distorted"))
    if unrectified:
        return DiagnosticStatus.WARN, (f"{state}; distorted cameras used without rectification (rectify is false):"
                                       f" {unrectified}")
    if rig is not None and "fixed_frame" in rig.stats.last_errors and rig.stats.frames_uncompensated:
        return DiagnosticStatus.WARN, f"{state}; {rig.stats.last_errors['fixed_frame']}"
    low_psnr = node.grading.warning() if getattr(node, "grading", None) is not None else None
    out_of_domain = node.queries.domain_warning() if getattr(node, "queries", None) is not None else None
    if low_psnr or out_of_domain:  # both say the input is outside the model's domain: both are named
        return DiagnosticStatus.WARN, "; ".join([state, *(w for w in (low_psnr, out_of_domain) if w)])
    if active and processing > node.get_parameter("processing_time_warn_ms").value:
        return DiagnosticStatus.WARN, f"{state}; processing {processing:.0f} ms"
    return DiagnosticStatus.OK, state


def diagnostic_values(node) -> dict:
    """Counters, the latest timings and error, the device, per-camera reasons and the input path's state."""
    last = node.last
    values = {**node.counters, **{k: v for k, v in last.items() if k not in ("missing", "distortion")}}
    values.update({f"distortion/{camera}": what for camera, what in last["distortion"].items()})
    values["device"] = str(node.predictor.device) if node.predictor else "none"
    values["teacher"] = teacher_description(node.predictor)
    values["semantic_source"] = label_source(node.predictor)
    if getattr(node, "queries", None) is not None:  # the latest answered query against the calibration's domain
        values["query_domain"] = node.queries.domain_value(node.predictor)
    if node.predictor is not None:  # the bounded text-embedding cache of ~/query_scene and semantic_queries
        values["query_cache_entries"], values["query_cache_bytes"] = node.predictor.query_cache_size()
    if node.predictor is not None and node.get_parameter("compile").value:
        failed = node.predictor.model.compile_errors
        values["compile_errors"] = "; ".join(f"{stage}: {why}" for stage, why in failed.items()) or "none"
    values.update({f"missing/{camera}": why for camera, why in last["missing"].items()})
    values.update(frame_losses(node))
    if getattr(node, "grading", None) is not None:
        values.update(node.grading.values())  # self-grading: windowed recon PSNR, LiDAR depth, its counters
    values.update(node.callback_errors.values())
    counts = node.rig_counts()  # cumulative over activations
    values.update({key: counts.get(key, 0) for key in ("sets_emitted", "sets_flushed_idle", "frames_submitted",
                                                       "frames_uncompensated", "tf_evicted", "tf_expired")})
    values["tf_resets"] = sum(n for key, n in counts.items() if key.startswith("tf_resets/"))
    values.update({key: counts[key] for key in sorted(counts) if key.startswith(("tf_resets/", "images_received/"))})
    rig = node.rig
    if rig is not None:
        stats, tf = rig.stats, rig.tf
        values["tf_dynamic_frames"] = tf.dynamic_frame_count
        values["tf_loops_refused"] = tf.loops_refused  # TF edges that would have closed a loop (also in tf_rejected)
        left_out = sorted(rig.sync.stats.missing.items())
        values.update({f"sync_missing/{camera}/{kind}": n for (camera, kind), n in left_out})
        values.update({f"rejected/{camera}": f"{n} ({stats.rejected_reasons[camera]})"
                       for camera, n in sorted(stats.rejected_images.items())})
        values.update({f"last_error/{key}": reason for key, reason in sorted(stats.last_errors.items())})
    return values
