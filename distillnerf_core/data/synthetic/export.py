"""`distillnerf-synth`: write synthetic driving scenes as a nuScenes-format dataroot with exact ground truth.

Layout of DIR (loads unchanged with `NuScenes("v1.0-synthetic", DIR)`):

    v1.0-synthetic/*.json              all 13 devkit tables (log, map, sensor, calibrated_sensor, ego_pose,
                                       sample, sample_data, scene, instance, sample_annotation (cars and
                                       pedestrians within 60 m), category, attribute, visibility)
    maps/synthetic_placeholder.png     small all-background map mask (the devkit requires one)
    samples/CAM_*/<log>__CAM_*__<us>.jpg        RGB keyframes
    samples/LIDAR_TOP/<log>__LIDAR_TOP__<us>.pcd.bin   float32 x 5 (x, y, z, intensity, ring), LiDAR frame
    gt/meta.json                       classes, palette, conventions, voxel grid spec
    gt/CAM_*/<sample_data token>.npz   depth: float32 (H, W) camera z-depth in m (0 = sky, no surface);
                                       semantics: uint8 (H, W) class ids (gt/meta.json "classes")
    gt/LIDAR_TOP/<sample_data token>.npz  voxel_semantics: uint8 (X, Y, Z) in the ego frame at the LiDAR
                                       timestamp (0 = free); point_semantics: uint8 (P,) per LiDAR point

Only keyframes are written (2 Hz); every camera fires at its own time (nuScenes offsets, tens of ms
before the LiDAR) and gets its own ego pose, as in nuScenes.

The camera model (rigs.py, lens.py, camera_effects.py): a random rig (`cameras="random*"`) is drawn per scene
and written as that scene's calibrated_sensor rows. A camera with a lens is taken as a real one: its raw image is
rendered through the lens (render_camera's camera_rays), the look is applied on the raw sensor image
(exposure, white balance, vignetting, noise), and the raw image is rectified to the pinhole camera with the same
K (distillnerf_core.rectify, as the ROS camera input rectifies a CameraInfo with D): the JPEG written is that
pinhole image, and its depth and semantics are rendered through K's pinhole rays (exact). gt/meta.json
"camera_model" records per scene the rig, the look and each camera's lens, exposure offset and vignetting.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from distillnerf_core.data.synthetic.camera_effects import (
    apply_look,
    camera_offsets,
    camera_rng,
    scene_look,
)
from distillnerf_core.data.synthetic.lens import camera_rays, rectified_coverage, rectify_image
from distillnerf_core.data.synthetic.rigs import Rig, load_rig
from distillnerf_core.data.synthetic.world import (
    SEMANTIC_CLASSES,
    SEMANTIC_PALETTE,
    VoxelSpec,
    generate_town,
    render_camera,
    semantic_voxels,
    simulate_lidar,
)
from distillnerf_core.geometry import matrix_to_quaternion
from distillnerf_core.rectify import Rectifier

logger = logging.getLogger(__name__)

VERSION = "v1.0-synthetic"
KEYFRAME_PERIOD_US = 500_000  # 2 Hz
BASE_TIMESTAMP_US = 1_600_000_000_000_000
MAP_FILENAME = "maps/synthetic_placeholder.png"
CATEGORIES = {"vehicle.car": "Vehicle designed primarily for personal use.",
              "human.pedestrian.adult": "Adult subcategory."}
ATTRIBUTES = {"vehicle.moving": "Vehicle is moving.", "vehicle.parked": "Vehicle is stationary.",
              "pedestrian.moving": "The human is moving.", "pedestrian.standing": "The human is standing."}
ANNOTATION_RANGE = 60.0


def token(*parts) -> str:
    """Deterministic 32-hex token (nuScenes style) from its parts."""
    return hashlib.md5("/".join(str(p) for p in parts).encode()).hexdigest()


def _pose_record(tok: str, timestamp: int, transform: np.ndarray) -> dict:
    return {"token": tok, "timestamp": int(timestamp), "rotation": matrix_to_quaternion(transform[:3, :3]).tolist(),
            "translation": transform[:3, 3].tolist()}


def _yaw_quaternion(yaw: float) -> list[float]:
    return [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]


def write_dataroot(out: str | Path, scenes: int = 1, frames: int = 10, seed: int = 0, cameras: str = "nuscenes",
                   width: int = 400, height: int = 224, voxel_spec: VoxelSpec | None = None,
                   jpeg_quality: int = 92, progress: bool = True, threads: int | None = None, look: str = "plain",
                   lenses: bool = True) -> dict:
    """Render `scenes` x `frames` keyframes into a nuScenes dataroot at `out`. Returns timing stats.

    `threads` sets torch's intra-op threads for the call (restored afterwards); None keeps the current.
    `look` is the camera look (camera_effects.LOOKS; `plain` writes the renderer's image at `jpeg_quality`,
    `realistic` a per-scene look with its own JPEG quality); `lenses` False leaves a random rig's cameras pinhole.
    """
    scene_look(look, seed, 0)  # an unknown look is an error before anything is written
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _write_dataroot(Path(out), scenes, frames, seed, cameras, width, height, voxel_spec, jpeg_quality,
                               progress, look, lenses)
    finally:
        torch.set_num_threads(previous)


class _SceneCameras:
    """One scene's camera model: its rig, look, per-camera exposure / vignetting, lens rays and rectifier."""

    def __init__(self, rig: Rig, look_name: str, seed: int, scene_index: int, rectifier: Rectifier) -> None:
        self.rig, self.seed, self.scene_index, self.rectifier = rig, seed, scene_index, rectifier
        self.look = scene_look(look_name, seed, scene_index)
        self.ev, self.vignetting = camera_offsets(self.look, seed, scene_index, len(rig.cameras))
        self.rays = {}
        for cam in rig.cameras:
            if cam.lens is None:
                continue
            coverage = rectified_coverage(cam.K, (cam.width, cam.height), cam.lens)
            if coverage < 1.0:  # random lenses are barrel lenses: never a black border
                raise ValueError(f"{cam.channel} lens {cam.lens.record()} leaves {100 * (1 - coverage):.2f} % of the"
                                 f" rectified image without a source pixel")
            self.rays[cam.channel] = camera_rays(cam.K, (cam.width, cam.height), cam.lens)

    def image(self, town, t_cam: float, cam2town: np.ndarray, index: int, frame: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(the pinhole image the camera writes, exact z-depth, semantics) of camera `index` at t_cam."""
        cam = self.rig.cameras[index]
        size = (cam.width, cam.height)
        if cam.lens is None:
            rgb, depth, sem = render_camera(town, t_cam, cam2town, cam.K, size)
        else:  # the raw image through the lens (its geometry is not the pinhole one), the pinhole ground truth
            rgb = render_camera(town, t_cam, cam2town, cam.K, size, camera_rays=self.rays[cam.channel])[0]
            _, depth, sem = render_camera(town, t_cam, cam2town, cam.K, size, shaded=False)
        rgb = apply_look(rgb, self.look, cam.K, float(self.ev[index]), float(self.vignetting[index]),
                         camera_rng(self.seed, self.scene_index, frame, index))
        if cam.lens is not None:
            rgb = rectify_image(self.rectifier, cam.channel, rgb, cam.K, cam.lens)
        return rgb, depth, sem

    def record(self) -> dict:
        return {"rig": self.rig.name, "look": self.look.record(), "cameras": {
            cam.channel: {"lens": cam.lens.record() if cam.lens is not None else None,
                          "rectified": cam.lens is not None, "exposure_offset_ev": round(float(self.ev[i]), 4),
                          "vignetting": round(float(self.vignetting[i]), 4)}
            for i, cam in enumerate(self.rig.cameras)}}


def _write_dataroot(out: Path, scenes: int, frames: int, seed: int, cameras: str, width: int, height: int,
                    voxel_spec: VoxelSpec | None, jpeg_quality: int, progress: bool, look: str, lenses: bool) -> dict:
    voxel_spec = voxel_spec or VoxelSpec()
    random_rig = cameras.startswith("random")
    rig = load_rig(cameras, width, height, seed=seed, scene_index=0, lenses=lenses)
    rectifier = Rectifier(min_valid_fraction=1.0)
    camera_model: dict[str, dict] = {}
    table_dir = out / VERSION
    table_dir.mkdir(parents=True, exist_ok=True)
    channels = [c.channel for c in rig.cameras] + ["LIDAR_TOP"]
    for ch in channels:
        (out / "samples" / ch).mkdir(parents=True, exist_ok=True)
        (out / "gt" / ch).mkdir(parents=True, exist_ok=True)
    (out / "maps").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(out / MAP_FILENAME)

    T = {name: [] for name in ("log", "scene", "sample", "sample_data", "ego_pose", "calibrated_sensor", "instance",
                               "sample_annotation")}
    sensors = [{"token": token("sensor", ch), "channel": ch, "modality": "lidar" if ch == "LIDAR_TOP" else "camera"}
               for ch in channels]
    T["category"] = [{"token": token("category", n), "name": n, "description": d} for n, d in CATEGORIES.items()]
    T["attribute"] = [{"token": token("attribute", n), "name": n, "description": d} for n, d in ATTRIBUTES.items()]
    T["visibility"] = [{"token": str(i + 1), "level": lv, "description": f"visibility of whole object is {lv}"}
                       for i, lv in enumerate(("v0-40", "v40-60", "v60-80", "v80-100"))]

    rng = np.random.default_rng([int(seed), 777])
    n_images, render_s = 0, 0.0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for si in range(scenes):
        log_name = f"synth-s{seed}-scene{si:03d}"
        duration = frames * KEYFRAME_PERIOD_US / 1e6 + 1.0
        town = generate_town(seed, si, duration)
        if random_rig and si > 0:
            rig = load_rig(cameras, width, height, seed=seed, scene_index=si, lenses=lenses)
        scene_cams = _SceneCameras(rig, look, seed, si, rectifier)
        camera_model[log_name] = scene_cams.record()
        quality = jpeg_quality if scene_cams.look.identity else scene_cams.look.jpeg_quality
        t0_us = BASE_TIMESTAMP_US + (seed % 1000) * 10**10 + si * 10**9
        log_tok, scene_tok = token(seed, si, "log"), token(seed, si, "scene")
        T["log"].append({"token": log_tok, "logfile": log_name, "vehicle": "synth", "date_captured": "2024-01-01",
                         "location": "synthetic-town"})
        calib_tok = {}
        for cam in rig.cameras:
            calib_tok[cam.channel] = token(seed, si, "calib", cam.channel)
            T["calibrated_sensor"].append({
                "token": calib_tok[cam.channel], "sensor_token": token("sensor", cam.channel),
                "translation": cam.cam2ego[:3, 3].tolist(),
                "rotation": matrix_to_quaternion(cam.cam2ego[:3, :3]).tolist(), "camera_intrinsic": cam.K.tolist()})
        calib_tok["LIDAR_TOP"] = token(seed, si, "calib", "LIDAR_TOP")
        T["calibrated_sensor"].append({
            "token": calib_tok["LIDAR_TOP"], "sensor_token": token("sensor", "LIDAR_TOP"),
            "translation": rig.lidar2ego[:3, 3].tolist(),
            "rotation": matrix_to_quaternion(rig.lidar2ego[:3, :3]).tolist(), "camera_intrinsic": []})
        sample_toks = [token(seed, si, "sample", k) for k in range(frames)]
        sd_prev = dict.fromkeys(channels, "")
        ann_prev: dict[int, int] = {}  # instance -> row of its latest annotation
        ann_lists: dict[int, list[str]] = {}
        for k in range(frames):
            t_start = time.perf_counter()
            lidar_us = t0_us + k * KEYFRAME_PERIOD_US
            T["sample"].append({"token": sample_toks[k], "timestamp": lidar_us, "scene_token": scene_tok,
                                "prev": sample_toks[k - 1] if k > 0 else "",
                                "next": sample_toks[k + 1] if k + 1 < frames else ""})
            records = []
            # LiDAR sweep + voxel ground truth at the LiDAR (keyframe) timestamp.
            t_lidar = (lidar_us - t0_us) / 1e6
            ego_lidar = town.ego_pose(t_lidar)
            points, point_cls = simulate_lidar(town, t_lidar, ego_lidar @ rig.lidar2ego)
            lidar2town = ego_lidar @ rig.lidar2ego
            points_town = points[:, :3] @ lidar2town[:3, :3].T + lidar2town[:3, 3]
            sd_tok = token(seed, si, "sd", "LIDAR_TOP", k)
            fname = f"samples/LIDAR_TOP/{log_name}__LIDAR_TOP__{lidar_us}.pcd.bin"
            points.tofile(out / fname)
            voxels = semantic_voxels(town, t_lidar, ego_lidar, voxel_spec)
            np.savez_compressed(out / "gt" / "LIDAR_TOP" / f"{sd_tok}.npz", voxel_semantics=voxels,
                                point_semantics=point_cls)
            records.append(("LIDAR_TOP", sd_tok, lidar_us, ego_lidar, fname, "pcd", 0, 0))
            for ci, cam in enumerate(rig.cameras):
                jitter = int(rng.integers(-1500, 1501))
                cam_us = lidar_us + cam.time_offset_us + jitter
                t_cam = (cam_us - t0_us) / 1e6
                ego_cam = town.ego_pose(t_cam)
                rgb, depth, sem = scene_cams.image(town, t_cam, ego_cam @ cam.cam2ego, ci, k)
                sd_tok = token(seed, si, "sd", cam.channel, k)
                fname = f"samples/{cam.channel}/{log_name}__{cam.channel}__{cam_us}.jpg"
                Image.fromarray(rgb).save(out / fname, quality=quality)
                np.savez_compressed(out / "gt" / cam.channel / f"{sd_tok}.npz", depth=depth, semantics=sem)
                records.append((cam.channel, sd_tok, cam_us, ego_cam, fname, "jpg", cam.width, cam.height))
                n_images += 1
            for ch, sd_tok, stamp, ego_town, fname, fmt, w, h in records:
                T["ego_pose"].append(_pose_record(sd_tok, stamp, town.town2global @ ego_town))
                T["sample_data"].append({
                    "token": sd_tok, "sample_token": sample_toks[k], "ego_pose_token": sd_tok,
                    "calibrated_sensor_token": calib_tok[ch], "timestamp": int(stamp), "fileformat": fmt,
                    "is_key_frame": True, "height": h, "width": w, "filename": fname, "prev": sd_prev[ch],
                    "next": token(seed, si, "sd", ch, k + 1) if k + 1 < frames else ""})
                sd_prev[ch] = sd_tok
            # Annotations (box centres at the LiDAR timestamp) of cars / pedestrians near the ego.
            for obj in town.objects:
                centre = obj.center0 + obj.velocity * t_lidar
                if np.linalg.norm(centre[:2] - ego_lidar[:2, 3]) > ANNOTATION_RANGE:
                    continue
                ann_tok = token(seed, si, "ann", obj.instance, k)
                moving = np.linalg.norm(obj.velocity) > 0.1
                attr = ("vehicle." if obj.category.startswith("vehicle") else "pedestrian.") + (
                    "moving" if moving else ("parked" if obj.category.startswith("vehicle") else "standing"))
                g = town.town2global
                T["sample_annotation"].append({
                    "token": ann_tok, "sample_token": sample_toks[k], "instance_token": token(seed, si, "inst",
                                                                                              obj.instance),
                    "visibility_token": "4", "attribute_tokens": [token("attribute", attr)],
                    "translation": (g[:3, :3] @ centre + g[:3, 3]).tolist(), "size": list(obj.size_wlh),
                    "rotation": _yaw_quaternion(obj.yaw + math.atan2(g[1, 0], g[0, 0])),
                    "prev": ann_lists[obj.instance][-1] if obj.instance in ann_lists else "", "next": "",
                    "num_lidar_pts": _points_in_box(points_town, centre, obj), "num_radar_pts": 0})
                if obj.instance in ann_prev:
                    T["sample_annotation"][ann_prev[obj.instance]]["next"] = ann_tok
                ann_prev[obj.instance] = len(T["sample_annotation"]) - 1
                ann_lists.setdefault(obj.instance, []).append(ann_tok)
            render_s += time.perf_counter() - t_start
            if progress:
                logger.info("  scene %d keyframe %d/%d: %.2f s", si, k + 1, frames, time.perf_counter() - t_start)
        for obj in town.objects:
            if obj.instance in ann_lists:
                toks = ann_lists[obj.instance]
                T["instance"].append({"token": token(seed, si, "inst", obj.instance),
                                      "category_token": token("category", obj.category), "nbr_annotations": len(toks),
                                      "first_annotation_token": toks[0], "last_annotation_token": toks[-1]})
        T["scene"].append({"token": scene_tok, "log_token": log_tok, "nbr_samples": frames,
                           "first_sample_token": sample_toks[0], "last_sample_token": sample_toks[-1],
                           "name": f"scene-synth-{seed}-{si:03d}",
                           "description": f"synthetic town, seed {seed}, scene {si}, rig {rig.name}"})
    T["sensor"] = sensors
    T["map"] = [{"token": token(seed, "map"), "log_tokens": [r["token"] for r in T["log"]],
                 "category": "semantic_prior", "filename": MAP_FILENAME}]
    for name, rows in T.items():
        (table_dir / f"{name}.json").write_text(json.dumps(rows, indent=1))
    meta = {
        "classes": list(SEMANTIC_CLASSES), "palette": SEMANTIC_PALETTE.tolist(),
        "depth": "camera z-depth in metres along the optical axis, float32, 0 = no surface (sky)",
        "pixel_convention": "pixel (u, v) covers [u, u+1) x [v, v+1); rays through pixel centres",
        "voxels": {"frame": "ego at the LIDAR_TOP timestamp (x forward, y left, z up)",
                   "pc_range": list(voxel_spec.pc_range), "voxel_size": voxel_spec.voxel_size,
                   "shape": list(voxel_spec.shape), "free": 0, "index": "[ix, iy, iz]"},
        "seed": seed, "scenes": scenes, "frames": frames, "rig": rig.name, "width": width, "height": height,
        "look": look, "camera_model": camera_model,
    }
    (out / "gt" / "meta.json").write_text(json.dumps(meta, indent=1))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"keyframes": scenes * frames, "images": n_images, "cameras": len(rig.cameras), "render_s": render_s,
            "wall_s": wall, "cpu_s": cpu, "keyframes_per_min": 60 * scenes * frames / max(wall, 1e-9),
            "keyframes_per_cpu_min": 60 * scenes * frames / max(cpu, 1e-9),
            "images_per_min": 60 * n_images / max(wall, 1e-9)}


def _points_in_box(points_town: np.ndarray, centre: np.ndarray, obj) -> int:
    """LiDAR points inside an annotation box (town frame; objects are aligned with the road, yaw 0 or pi)."""
    w, length, h = obj.size_wlh
    half = np.array([length / 2, w / 2, h / 2]) + 0.02
    return int((np.abs(points_town - centre) <= half).all(axis=1).sum())
