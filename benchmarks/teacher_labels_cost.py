"""What `semantic_source: teacher` costs per 6-camera frame: the live segmenter labelling the occupied voxels
where they are visible (distillnerf_core/teacher_semantics.py), on real frames, on this machine.

Per frame set (the nuScenes keyframe in data/nuscenes_sample, DDAD frame 0 in data/ddad_scene02), with the
bundled model, each step the fastest of --repeats runs (medians recorded too):

- decode: the six JPEGs decoded as the node does (PIL draft to the smallest DCT reduction at least the size
  asked for) at the model's input size (distilled) and at the teacher's (at least --widths' largest wide);
- predict: ScenePredictor.predict(depth=False, occupancy=True) distilled, and in teacher mode (which keeps the
  images and the scene): what every frame pays while nobody asks for labels;
- label: the depth render (visibility) a frame pays at its first labelling when it rendered no depth itself;
  the first query on a frame per segmenter width (segmenter forward passes on the cameras that see a voxel +
  projection / visibility / sampling; the render excluded), and a second query on the same frame (labels kept);
- what the labels are: voxels seen by some camera with the visibility test, and by projection alone; the
  share of the seen voxels whose top class agrees with the largest width's.

    python benchmarks/teacher_labels_cost.py [--threads 2] [--repeats 2] [--widths 256 512 768 1024]
        [--out benchmarks/results/teacher_labels_cost.json] [--note "..."]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distillnerf_core.data.dgp import DDAD_CAMERAS, write_dataroot  # noqa: E402
from distillnerf_core.data.nuscenes_tables import NUSCENES_CAMERAS, load_sensor_records  # noqa: E402
from distillnerf_core.geometry import invert_transform  # noqa: E402
from distillnerf_core.inference import ScenePredictor  # noqa: E402
from distillnerf_core.provenance import command_line, model_identity, provenance  # noqa: E402
from distillnerf_core.teacher_semantics import (  # noqa: E402
    TeacherSemanticsConfig,
    camera_pixels,
    cell_probes,
    visible_in_cameras,
)
from distillnerf_core.teachers.segmenter import CLASS_NAMES, load_segmenter  # noqa: E402

BUNDLED = REPO / "models" / "default" / "model.safetensors"
QUERIES = ["road", "vehicle", "building", "vegetation", "person"]


def decode(path: Path, K: np.ndarray, min_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The JPEG decoded as the node decodes it (PIL draft, at least min_hw) and K scaled to it."""
    with Image.open(path) as image:
        native = image.size
        image.draft("RGB", (min_hw[1], min_hw[0]))
        rgb = np.asarray(image.convert("RGB"))
    return rgb, np.diag([rgb.shape[1] / native[0], rgb.shape[0] / native[1], 1.0]) @ K


def first_keyframe(dataroot: Path, cameras: tuple[str, ...]) -> dict:
    """The first keyframe's camera records (path, K) and base_link(LiDAR stamp) <- camera."""
    records = [r for r in load_sensor_records(dataroot) if r.is_key_frame]
    sample = records[0].sample_token
    by_channel = {r.channel: r for r in records if r.sample_token == sample}
    ref_from_global = invert_transform(by_channel["LIDAR_TOP"].global_from_ego)
    cams = [by_channel[c] for c in cameras]
    return {"paths": [c.path for c in cams], "K": [c.intrinsics for c in cams],
            "output_from_camera": [ref_from_global @ c.global_from_ego @ c.ego_from_sensor for c in cams]}


def timed(fn, repeats: int, cpu: list[float] | None = None) -> tuple[list[float], object]:
    """Wall ms of each run (and, into `cpu`, the process's CPU ms: all its threads, less sensitive than wall time
    to the other processes of a shared machine)."""
    times, result = [], None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        times.append(1000.0 * (time.perf_counter() - start))
        if cpu is not None:
            cpu.append(1000.0 * (time.process_time() - start_cpu))
    return times, result


def fastest(times: list[float]) -> dict:
    return {"min": round(min(times), 1), "median": round(statistics.median(times), 1)}


def decoded(frame: dict, min_hw: tuple[int, int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    pairs = [decode(p, K, min_hw) for p, K in zip(frame["paths"], frame["K"], strict=True)]
    return [rgb for rgb, _ in pairs], [K for _, K in pairs]


def measure(distilled: ScenePredictor, big: ScenePredictor, widths: list[int], frame: dict, repeats: int) -> dict:
    """`big`: the teacher-source predictor at the largest width (its decode size); the others swap its width."""
    widest = max(widths)
    decode_model, (images_small, K_small) = timed(lambda: decoded(frame, distilled.decode_hw), repeats)
    decode_teacher, (images, K) = timed(lambda: decoded(frame, big.decode_hw), repeats)
    E = frame["output_from_camera"]
    plain, teacher_plain, prediction, cpu_plain, cpu_teacher = [], [], None, [], []
    for _ in range(repeats):  # alternating, so that a load change on the shared machine hits both alike
        plain += timed(lambda: distilled.predict(images_small, K_small, E, depth=False, occupancy=True), 1,
                       cpu_plain)[0]
        times, prediction = timed(lambda: big.predict(images, K, E, depth=False, occupancy=True), 1, cpu_teacher)
        teacher_plain += times
    frame_t = prediction.teacher_frame
    out = {"cameras": len(images), "image_hw_decoded": list(images[0].shape[:2]),
           "image_hw_decoded_distilled": list(images_small[0].shape[:2]), "voxels": len(prediction.voxel_centers),
           "decode_ms": {"distilled": fastest(decode_model), "teacher": fastest(decode_teacher)},
           "predict_ms": {"distilled": fastest(plain), "teacher": fastest(teacher_plain)},
           "predict_cpu_ms": {"distilled": fastest(cpu_plain), "teacher": fastest(cpu_teacher)}, "label": {}}
    tops = {}
    config = big.teacher_semantics
    frame_t.ensure_depth()  # the depth render a frame that rendered none pays at its first labelling
    out["render_at_first_label_ms"] = round(frame_t.render_ms, 1)
    for width in sorted(widths):
        big.teacher_semantics = replace(config, width=width)
        firsts, seconds, parts, cpu_firsts = [], [], [], []
        for _ in range(repeats):
            frame_t.classes = None  # a new frame: the first query runs the segmenter
            firsts += timed(lambda: big.query(QUERIES, prediction), 1, cpu_firsts)[0]
            parts.append((frame_t.classes.segmenter_ms, frame_t.classes.labelling_ms))
            seconds += timed(lambda: big.query(QUERIES, prediction), 1)[0]
        classes = frame_t.classes
        tops[width] = classes.probabilities.argmax(dim=1)
        seen = classes.seen
        out["label"][str(width)] = {
            "first_query_ms": fastest(firsts), "first_query_cpu_ms": fastest(cpu_firsts),
            "segmenter_ms": round(min(s for s, _ in parts), 1),
            "visibility_and_sampling_ms": round(min(v for _, v in parts), 1), "later_query_ms": fastest(seconds),
            "voxels_seen": int(seen.sum()),
            "top_classes": {CLASS_NAMES[c]: int(n) for c, n in enumerate(tops[width][seen].bincount(
                minlength=len(CLASS_NAMES))) if n}}
        seen_widest = seen
    big.teacher_semantics = config
    for width in sorted(widths):
        agree = (tops[width][seen_widest] == tops[widest][seen_widest]).float().mean()
        out["label"][str(width)]["top_class_agreement_with_widest"] = round(float(agree), 4)
    probes = cell_probes(frame_t.voxel_centers, frame_t.voxel_size)
    _, _, _, inside = camera_pixels(probes.reshape(-1, 3), frame_t.depth_intrinsics, frame_t.ego_from_camera,
                                    tuple(frame_t.depth.shape[-2:]))
    out["voxels_in_some_view_projection_only"] = int(inside.view(len(images), -1, probes.shape[1]).any(-1)
                                                      .any(0).sum())
    tolerance = {}
    for voxels in (0.0, 0.5, 1.0, 2.0):  # the default is config.depth_tolerance_voxels
        seen = visible_in_cameras(frame_t.voxel_centers, frame_t.voxel_size, frame_t.depth, frame_t.opacity,
                                  frame_t.depth_intrinsics, frame_t.ego_from_camera,
                                  replace(config, depth_tolerance_voxels=voxels))
        tolerance[str(voxels)] = int(seen.any(0).sum())
    out["voxels_seen_by_depth_tolerance_voxels"] = tolerance
    return out


def write(path: Path, prov: dict, widths: list[int], distilled: ScenePredictor, results: dict) -> None:
    prov["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    out = {"provenance": prov, "queries": QUERIES, "widths": widths, "model_image_hw": list(distilled.input_hw),
           "defaults": {"width": TeacherSemanticsConfig().width,
                        "depth_tolerance_voxels": TeacherSemanticsConfig().depth_tolerance_voxels}, **results}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, allow_nan=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 512, 768, 1024])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", nargs="+", default=["nuscenes", "ddad"], choices=["nuscenes", "ddad"])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "teacher_labels_cost.json")
    parser.add_argument("--note", default="", help="what else ran on the machine (it is shared)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    segmenter = load_segmenter(device=args.device)
    prov = provenance(command_line("python benchmarks/teacher_labels_cost.py", argv), model=model_identity(BUNDLED),
                      data="data/nuscenes_sample (its keyframe, 1600x900 JPEGs); data/ddad_scene02 (frame 0, "
                           "1936x1216 JPEGs, through distillnerf_core.data.dgp.write_dataroot)",
                      threads=args.threads, repeats=args.repeats, segmenter_weights_sha256=segmenter.sha256,
                      load_average_at_start=[round(v, 2) for v in load_start], note=args.note)
    distilled = ScenePredictor(BUNDLED, args.device)
    teacher = ScenePredictor(BUNDLED, args.device, semantic_source="teacher",
                             teacher_semantics=TeacherSemanticsConfig(width=max(args.widths)))
    distilled.warm_up(6)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        sources = {"nuscenes": (REPO / "data" / "nuscenes_sample", NUSCENES_CAMERAS),
                   "ddad": (Path(tmp) / "ddad", DDAD_CAMERAS)}
        if "ddad" in args.frames:
            write_dataroot(REPO / "data" / "ddad_scene02", sources["ddad"][0])
        for name in args.frames:
            results[name] = measure(distilled, teacher, args.widths, first_keyframe(*sources[name]), args.repeats)
            print(name, json.dumps(results[name]["label"], indent=1), flush=True)
            write(args.out, prov, args.widths, distilled, results)  # after each frame: a cut-short run keeps it
    print(json.dumps({name: {"decode_ms": r["decode_ms"], "predict_ms": r["predict_ms"],
                             "first_query_ms": {w: r["label"][w]["first_query_ms"] for w in r["label"]}}
                      for name, r in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
