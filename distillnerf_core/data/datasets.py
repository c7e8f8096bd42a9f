"""One torch Dataset over any nuScenes-format dataroot (real nuScenes, the synthetic world, the real keyframe).

Tables are read through nuscenes-devkit. Per sample (keyframe) it yields, for N cameras:

    images          float32 (N, 3, H, W) in [0, 1], resized to the model input size (H, W)
    intrinsics      float32 (N, 3, 3) for the resized images (pixel u covers [u, u+1): exact scale)
    cam2ego         float32 (N, 4, 4) optical camera -> REFERENCE ego frame, motion-compensated:
                    ref_ego <- global <- ego(t_cam) <- cam. The reference ego frame is the ego pose at
                    the sample's LIDAR_TOP (keyframe) timestamp.
    cam2ego_static  float32 (N, 4, 4) the calibrated camera extrinsic (camera -> ego at t_cam)
    ego2global      float64 (N, 4, 4) ego pose at each camera's timestamp
    ref_ego2global  float64 (4, 4);  lidar2ego float32 (4, 4) (LiDAR -> reference ego)
    time_offsets    float32 (N,) camera timestamp minus LiDAR timestamp, seconds
    lidar_depth     float32 (N, h, w) camera z-depth of the keyframe sweep at the render size (h, w):
                    points moved lidar -> ego(t_lidar) -> global -> ego(t_cam) -> camera, kept when
                    z in [min_depth, max_depth) and inside the full-resolution image, min-pooled into the
                    render grid; 0 = no return
    has_next        bool; next_images / next_intrinsics / next_cam2ego: the next keyframe's cameras,
                    their poses expressed in THIS sample's reference ego frame (zeros / identity and
                    has_next False when the sample is the last of its scene)
    dense_depth     float32 (N, h, w), semantics int64 (N, h, w), voxel_semantics int64 (X, Y, Z):
                    only where the dataroot has ground truth (gt/meta.json, written by distillnerf-synth);
                    nearest-sampled at the render pixel centres
    masks           float32 (N, H, W) at the image size, 1 = valid pixel, 0 = the ego car's own body
                    (masks/<CHANNEL>.png of the dataroot, ego_masks.py; all 1 without them). Per camera, the
                    same for every frame, so they also apply to next_images; losses and metrics skip 0s
    teacher_features float32 (N, D, h, w): a teacher's cached dense features (teachers/cache.py), resized to
                    the render size; only with `features` (DataConfig.features)
    nerf_depth      float32 (N, h, w): a per-scene field's rendered z-depth (0 = sky), nearest-resized to the
                    render size; virtual_images float32 (N, V, 3, H, W) and virtual_depth (N, V, h, w): the
                    field's renders of V virtual cameras per camera, virtual_cam2ego (N, V, 4, 4) their poses
                    (same intrinsics); only with `nerf_targets` (DataConfig.nerf_targets, data/nerf_targets.py)
    neighbour_*     only with `neighbour_targets` (DataConfig.neighbour_targets: prev, next or both): a
                    neighbouring keyframe of the same scene as an extra target, rendered from THIS frame's
                    encoding (the reference's option). has_neighbour bool; neighbour_images (N, 3, H, W),
                    neighbour_intrinsics (N, 3, 3), neighbour_cam2ego (N, 4, 4): its cameras, their poses
                    (motion-compensated as above) expressed in THIS sample's reference ego frame through the ego
                    poses; neighbour_lidar_depth (N, h, w): ITS keyframe sweep in its cameras (as lidar_depth);
                    neighbour_sky_mask (N, h, w): its segmenter sky (with `sky_mask`); neighbour_offset float32:
                    its LiDAR timestamp minus this one's, s. With "both" one of the sample's existing neighbours
                    is drawn (torch's RNG) per load. Without one (a scene's first / last keyframe) has_neighbour
                    is False, images and depths are zeros and the cameras are this sample's (finite poses for a
                    batched render whose loss skips them). The ego-body `masks` are per camera, so they apply
                    to the neighbour's cameras too
    sky_mask        bool (N, h, w): where the segmenter calls the render pixel sky (argmax of a segmenter feature
                    cache's class log-probabilities, resized to the render size; data/sky.py); only with
                    `sky_mask` (DataConfig.sky_mask: "auto" = the dataroot's segmenter cache when it has one).
                    The losses give these pixels the sky depth target (losses.py)
    camera_names    list[str];  sample_token str

Missing files raise FileNotFoundError naming the path; nothing is silently substituted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from distillnerf_core.checked_files import DataFileError, load_npz, path_component, read_json, require
from distillnerf_core.data.nuscenes_tables import NUSCENES_CAMERAS
from distillnerf_core.geometry import invert_transform, make_transform

LIDAR_CHANNEL = "LIDAR_TOP"
GT_CAMERA = {"depth": ("f", 2), "semantics": ("iu", 2)}  # gt/<CAM>/<token>.npz, read checked (checked_files)
GT_LIDAR = {"voxel_semantics": ("iu", 3)}  # gt/LIDAR_TOP/<token>.npz
# DataConfig.neighbour_targets -> the sample links whose keyframes may be targets
NEIGHBOUR_LINKS = {"none": (), "prev": ("prev",), "next": ("next",), "both": ("prev", "next")}


@dataclass
class DataConfig:
    """Which samples and cameras a dataset yields and how they are loaded."""

    batch_size: int = 1
    """Samples per step and process."""
    num_workers: int = 2
    """DataLoader worker processes (0 = load in the training process)."""
    cameras: list[str] | None = None
    """Camera channels in model order; None = the 6 nuScenes cameras."""
    depth_range: list[float] = field(default_factory=lambda: [1.0, 80.0])
    """LiDAR returns with camera z-depth outside [min, max) m are not targets."""
    split: str = "all"
    """nuScenes split name (train, val, mini_train, ...) or "all"."""
    load_next: bool = False
    """Also load the next keyframe (needed only when loss.nvs_l1 > 0)."""
    features: str | None = None
    """Teacher feature cache to load (a name under DATAROOT/features/ or a directory); None = none."""
    nerf_targets: str | None = None
    """Per-scene field targets to load (distillnerf-fit-scene: a name under DATAROOT/nerf/ or a directory)."""
    sky_mask: str | None = "auto"
    """Sky mask for the sky depth target: "auto" (the dataroot's segmenter feature cache when it has one, else
    none), "none", or a segmenter cache (a name under DATAROOT/features/ or a directory)."""
    neighbour_targets: str = "none"
    """Neighbouring keyframes as extra targets (the reference's option): "prev", "next" or "both" (one of the
    sample's neighbours drawn per load) renders that keyframe's cameras from this frame's encoding with the
    neighbour_* losses (RGB, LiDAR, sky; losses.py); "none" = the current frame's targets only."""
    jpeg_draft: bool = False
    """Decode each JPEG at the smallest DCT reduction (1/2, 1/4, 1/8) that stays at least the model's input size
    (PIL draft, as the node decodes), then resize: several times less decoding for 1600x900 cameras and a
    228x128 model (benchmarks/loader_throughput.py); the pixels differ slightly from a full decode + resize."""


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"missing data file: {path}")
    return path


def _table_path(dataroot: Path, sd: dict) -> Path:
    """DATAROOT/<sample_data filename>: a filename from the table that is absolute or climbs out with `..` is
    refused (symlinks inside the dataroot are allowed: linked dataroots are made that way)."""
    name = sd.get("filename")
    parts = PurePosixPath(name).parts if isinstance(name, str) and name else ()
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name:
        raise DataFileError(f"{dataroot}: sample_data {sd.get('token')} has filename {str(name)[:80]!r}, not a"
                            " path inside the dataroot")
    return dataroot / name


def load_lidar_points(path: str | Path) -> np.ndarray:
    """(P, 5) float32 [x, y, z, intensity, ring] from a nuScenes .pcd.bin."""
    raw = np.fromfile(_require(Path(path)), dtype=np.float32)
    if raw.size % 5:
        raise ValueError(f"{path}: {raw.size} floats is not a multiple of 5 (x, y, z, intensity, ring)")
    return raw.reshape(-1, 5)


def project_points(points_cam: np.ndarray, K: np.ndarray, width: int, height: int, min_depth: float = 1.0,
                   max_depth: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Continuous pixel coordinates (u, v) and z of camera-frame points inside [0, W) x [0, H)."""
    z = points_cam[:, 2]
    keep = z > min_depth
    if max_depth is not None:
        keep &= z < max_depth
    p = points_cam[keep]
    uvw = p @ K.T
    u, v = uvw[:, 0] / uvw[:, 2], uvw[:, 1] / uvw[:, 2]
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    return u[inside], v[inside], p[inside, 2]


def min_pool_depth(u: np.ndarray, v: np.ndarray, z: np.ndarray, full_wh: tuple[int, int],
                   grid_hw: tuple[int, int]) -> torch.Tensor:
    """(h, w) float32 grid: the nearest z per cell of a full-resolution image split into h x w cells; 0 = none."""
    h, w = grid_hw
    col = np.clip(np.floor(u * w / full_wh[0]).astype(np.int64), 0, w - 1)
    row = np.clip(np.floor(v * h / full_wh[1]).astype(np.int64), 0, h - 1)
    grid = torch.full((h * w,), float("inf"))
    grid.scatter_reduce_(0, torch.from_numpy(row * w + col), torch.from_numpy(z.astype(np.float32)), "amin")
    return torch.where(torch.isinf(grid), torch.zeros_like(grid), grid).reshape(h, w)


def nearest_resize(array: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a (H, W) array to (h, w) (no mixing of depths or labels across edges).

    Target pixel i takes source pixel floor((i + 0.5) * H / h): for an even downsampling factor that source
    pixel's centre lies a quarter of a target pixel right/below the target centre; use render_size equal to
    the native size where sub-pixel exactness matters.
    """
    H, W = array.shape[:2]
    rows = np.minimum(((np.arange(hw[0]) + 0.5) * H / hw[0]).astype(np.int64), H - 1)
    cols = np.minimum(((np.arange(hw[1]) + 0.5) * W / hw[1]).astype(np.int64), W - 1)
    return array[rows[:, None], cols[None, :]]


class NuScenesDataset(Dataset):
    """Keyframes of a nuScenes-format dataroot; see the module docstring for the per-sample dict."""

    def __init__(self, dataroot: str | Path, version: str, image_size: tuple[int, int] = (224, 400),
                 render_size: tuple[int, int] | None = None, cameras: Sequence[str] = NUSCENES_CAMERAS,
                 scenes: Sequence[str] | None = None, depth_range: tuple[float, float] = (1.0, 80.0),
                 load_next: bool = True, nusc: Any = None, features: str | Path | None = None,
                 nerf_targets: str | Path | None = None, sky_mask: str | Path | None = None,
                 jpeg_draft: bool = False, neighbour_targets: str = "none"):
        from nuscenes.nuscenes import NuScenes

        if neighbour_targets not in NEIGHBOUR_LINKS:
            raise ValueError(f"neighbour_targets must be one of {', '.join(NEIGHBOUR_LINKS)}, got "
                             f"{neighbour_targets!r}")
        self.neighbour_links = NEIGHBOUR_LINKS[neighbour_targets]

        self.dataroot = Path(dataroot)
        table_dir = self.dataroot / version
        if not table_dir.is_dir():
            raise FileNotFoundError(f"nuScenes version folder not found: {table_dir}")
        self.version = version
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.render_size = tuple(render_size) if render_size else (self.image_size[0] // 2, self.image_size[1] // 2)
        self.cameras = list(cameras)
        self.depth_range = depth_range
        self.load_next = load_next
        self.jpeg_draft = jpeg_draft
        self.nusc = nusc or NuScenes(version=version, dataroot=str(self.dataroot), verbose=False)
        gt_meta = self.dataroot / "gt" / "meta.json"
        self.gt_meta = read_json(gt_meta, "synthetic ground-truth meta file") if gt_meta.is_file() else None
        self.feature_cache: Path | None = None
        self.feature_manifest: dict[str, Any] | None = None
        if features is not None:
            from distillnerf_core.teachers.cache import read_manifest, resolve_cache

            self.feature_cache = resolve_cache(self.dataroot, features)
            self.feature_manifest = read_manifest(self.feature_cache)
        self.nerf_targets: Path | None = None
        if nerf_targets is not None:
            from distillnerf_core.data.nerf_targets import read_manifest as read_nerf_manifest
            from distillnerf_core.data.nerf_targets import resolve_targets

            self.nerf_targets = resolve_targets(self.dataroot, nerf_targets)
            # a missing or malformed manifest is an error here, not at the first item
            self.nerf_views = len(read_nerf_manifest(self.nerf_targets)["settings"]["offsets"])
        from distillnerf_core.data.sky import resolve_sky_cache

        # a segmenter cache whose argmax == sky marks the pixels given the sky depth target (data/sky.py)
        self.sky_cache: Path | None = resolve_sky_cache(self.dataroot, sky_mask)
        self.sky_manifest: dict[str, Any] | None = None
        if self.sky_cache is not None:
            from distillnerf_core.teachers.cache import read_manifest

            self.sky_manifest = read_manifest(self.sky_cache)
        self._masks: torch.Tensor | None = None  # (N, H, W), loaded once (static per camera)
        wanted = set(scenes) if scenes is not None else None
        self.sample_tokens: list[str] = []
        for scene in self.nusc.scene:
            if wanted is not None and scene["name"] not in wanted:
                continue
            tok = scene["first_sample_token"]
            while tok:
                self.sample_tokens.append(tok)
                tok = self.nusc.get("sample", tok)["next"]
        if wanted is not None and not self.sample_tokens:
            raise ValueError(f"no samples for scenes {sorted(wanted)} in {table_dir}")

    def __len__(self) -> int:
        return len(self.sample_tokens)

    # ------------------------------------------------------------------------------------------ tables
    def _sample_data(self, sample: dict, channel: str) -> dict:
        if channel not in sample["data"]:
            raise KeyError(f"sample {sample['token']} has no {channel} (has {sorted(sample['data'])})")
        return self.nusc.get("sample_data", sample["data"][channel])

    def _poses(self, sd: dict) -> tuple[np.ndarray, np.ndarray]:
        """(sensor -> ego, ego -> global) of one sample_data record, float64."""
        cs = self.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        ep = self.nusc.get("ego_pose", sd["ego_pose_token"])
        return make_transform(cs["rotation"], cs["translation"]), make_transform(ep["rotation"], ep["translation"])

    def _intrinsic(self, sd: dict) -> np.ndarray:
        K = np.array(self.nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])["camera_intrinsic"], float)
        if K.shape != (3, 3):
            raise ValueError(f"sample_data {sd['token']} ({sd['filename']}) has no 3x3 camera_intrinsic")
        return K

    def reference(self, sample: dict) -> tuple[dict, np.ndarray, np.ndarray]:
        """LiDAR sample_data, lidar -> ego and ego -> global at the keyframe (reference) timestamp."""
        sd = self._sample_data(sample, LIDAR_CHANNEL)
        lidar2ego, ego2global = self._poses(sd)
        return sd, lidar2ego, ego2global

    def _cameras(self, sample: dict, ref_ego2global: np.ndarray, with_images: bool = True) -> dict:
        global2ref = invert_transform(ref_ego2global)
        H, W = self.image_size
        out: dict[str, list] = {k: [] for k in ("images", "intrinsics", "cam2ego", "cam2ego_static", "ego2global",
                                                 "native_K", "native_wh", "sd", "timestamps")}
        for ch in self.cameras:
            sd = self._sample_data(sample, ch)
            cam2ego, ego2global = self._poses(sd)
            K = self._intrinsic(sd)
            path = _require(_table_path(self.dataroot, sd))
            if with_images:
                with Image.open(path) as im:
                    native = im.size  # the size K describes, also when draft decodes fewer pixels
                    if self.jpeg_draft and im.format == "JPEG":
                        im.draft("RGB", (W, H))
                    img = im if im.mode == "RGB" else im.convert("RGB")  # convert would copy 1600x900 pixels
                    img = img.resize((W, H), Image.BILINEAR) if img.size != (W, H) else img.copy()
                out["images"].append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1))
            else:
                native = (sd["width"], sd["height"])
            scale = np.diag([W / native[0], H / native[1], 1.0])
            out["intrinsics"].append(scale @ K)
            out["cam2ego"].append(global2ref @ ego2global @ cam2ego)
            out["cam2ego_static"].append(cam2ego)
            out["ego2global"].append(ego2global)
            out["native_K"].append(K)
            out["native_wh"].append(native)
            out["sd"].append(sd)
            out["timestamps"].append(sd["timestamp"])
        return out

    # ------------------------------------------------------------------------------------------ LiDAR
    def lidar_projections(self, index: int, min_depth: float = 1.0, max_depth: float | None = None
                          ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per camera (u, v, z) of the keyframe sweep at the camera's NATIVE resolution (motion-compensated)."""
        sample = self.nusc.get("sample", self.sample_tokens[index])
        lidar_sd, lidar2ego, ref_ego2global = self.reference(sample)
        cams = self._cameras(sample, ref_ego2global, with_images=False)
        points = load_lidar_points(_table_path(self.dataroot, lidar_sd))[:, :3].astype(np.float64)
        return self._project(points, lidar2ego, cams, min_depth, max_depth)

    def _project(self, points: np.ndarray, lidar2ego: np.ndarray, cams: dict, min_depth: float,
                 max_depth: float | None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        result = []
        for cam2ref, K, (w, h) in zip(cams["cam2ego"], cams["native_K"], cams["native_wh"], strict=True):
            lidar2cam = invert_transform(cam2ref) @ lidar2ego
            pc = points @ lidar2cam[:3, :3].T + lidar2cam[:3, 3]
            result.append(project_points(pc, K, w, h, min_depth, max_depth))
        return result

    # ------------------------------------------------------------------------------------------ item
    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.nusc.get("sample", self.sample_tokens[index])
        lidar_sd, lidar2ego, ref_ego2global = self.reference(sample)
        cams = self._cameras(sample, ref_ego2global)
        points = load_lidar_points(_table_path(self.dataroot, lidar_sd))[:, :3].astype(np.float64)
        projections = self._project(points, lidar2ego, cams, *self.depth_range)
        lidar_depth = torch.stack([min_pool_depth(u, v, z, wh, self.render_size)
                                   for (u, v, z), wh in zip(projections, cams["native_wh"], strict=True)])
        f32 = lambda xs: torch.as_tensor(np.stack(xs), dtype=torch.float32)  # noqa: E731
        item: dict[str, Any] = {
            "images": torch.stack(cams["images"]),
            "intrinsics": f32(cams["intrinsics"]),
            "cam2ego": f32(cams["cam2ego"]),
            "cam2ego_static": f32(cams["cam2ego_static"]),
            "ego2global": torch.as_tensor(np.stack(cams["ego2global"]), dtype=torch.float64),
            "ref_ego2global": torch.as_tensor(ref_ego2global, dtype=torch.float64),
            "lidar2ego": torch.as_tensor(lidar2ego, dtype=torch.float32),
            "time_offsets": torch.tensor([(t - lidar_sd["timestamp"]) / 1e6 for t in cams["timestamps"]],
                                         dtype=torch.float32),
            "lidar_depth": lidar_depth,
            "masks": self.valid_masks(),
            "camera_names": list(self.cameras),
            "sample_token": sample["token"],
        }
        N, (H, W) = len(self.cameras), self.image_size
        item["has_next"] = bool(self.load_next and sample["next"])
        if self.load_next:
            if item["has_next"]:
                nxt = self._cameras(self.nusc.get("sample", sample["next"]), ref_ego2global)
                item["next_images"] = torch.stack(nxt["images"])
                item["next_intrinsics"] = f32(nxt["intrinsics"])
                item["next_cam2ego"] = f32(nxt["cam2ego"])
            else:
                item["next_images"] = torch.zeros(N, 3, H, W)
                item["next_intrinsics"] = torch.zeros(N, 3, 3)
                item["next_cam2ego"] = torch.eye(4).expand(N, 4, 4).clone()
        if self.gt_meta is not None:
            depth, sem = [], []
            for ch, sd in zip(self.cameras, cams["sd"], strict=True):
                token = path_component(sd["token"], "sample_data token")
                gt = load_npz(self.dataroot / "gt" / ch / f"{token}.npz", GT_CAMERA, "ground-truth file")
                depth.append(nearest_resize(gt["depth"], self.render_size))
                sem.append(nearest_resize(gt["semantics"], self.render_size))
            item["dense_depth"] = torch.as_tensor(np.stack(depth), dtype=torch.float32)
            item["semantics"] = torch.as_tensor(np.stack(sem).astype(np.int64))
            token = path_component(lidar_sd["token"], "sample_data token")
            gt = load_npz(self.dataroot / "gt" / LIDAR_CHANNEL / f"{token}.npz", GT_LIDAR,
                          "ground-truth file")
            item["voxel_semantics"] = torch.as_tensor(gt["voxel_semantics"].astype(np.int64))
        if self.feature_cache is not None:
            from distillnerf_core.teachers.cache import load_entry, resize_features

            # teacher_features: float32 (N, D, h, w) at the render size; a missing entry raises (no dummy).
            item["teacher_features"] = torch.stack([
                resize_features(load_entry(self.feature_cache, ch, sd["token"], self.feature_manifest),
                                self.render_size)
                for ch, sd in zip(self.cameras, cams["sd"], strict=True)])
        if self.nerf_targets is not None:
            item.update(self._nerf_items(cams, item["cam2ego"]))
        if self.sky_cache is not None:
            item["sky_mask"] = self._sky_items(cams, item.get("teacher_features"))
        if self.neighbour_links:
            item.update(self._neighbour_items(sample, lidar_sd, ref_ego2global, item))
        return item

    def _neighbour_items(self, sample: dict, lidar_sd: dict, ref_ego2global: np.ndarray,
                         item: dict[str, Any]) -> dict[str, Any]:
        """One neighbouring keyframe as a target (see the module docstring): its images, its cameras in THIS
        sample's reference ego frame, its own sweep's depth in its cameras and its sky."""
        tokens = [sample[link] for link in self.neighbour_links if sample[link]]
        N, (H, W) = len(self.cameras), self.image_size
        if not tokens:
            empty: dict[str, Any] = {
                "has_neighbour": False, "neighbour_images": torch.zeros(N, 3, H, W),
                "neighbour_intrinsics": item["intrinsics"].clone(), "neighbour_cam2ego": item["cam2ego"].clone(),
                "neighbour_lidar_depth": torch.zeros(N, *self.render_size),
                "neighbour_offset": torch.tensor(0.0)}
            if self.sky_cache is not None:
                empty["neighbour_sky_mask"] = torch.zeros(N, *self.render_size, dtype=torch.bool)
            return empty
        token = tokens[int(torch.randint(len(tokens), ()))] if len(tokens) > 1 else tokens[0]
        nb = self.nusc.get("sample", token)
        nb_lidar_sd, nb_lidar2ego, nb_ego2global = self.reference(nb)
        # its cameras in ITS reference frame (for its own sweep), then moved into ours: ref <- global <- ref_nb
        cams = self._cameras(nb, nb_ego2global)
        points = load_lidar_points(_table_path(self.dataroot, nb_lidar_sd))[:, :3].astype(np.float64)
        projections = self._project(points, nb_lidar2ego, cams, *self.depth_range)
        to_ref = invert_transform(ref_ego2global) @ nb_ego2global
        f32 = lambda xs: torch.as_tensor(np.stack(xs), dtype=torch.float32)  # noqa: E731
        out: dict[str, Any] = {
            "has_neighbour": True, "neighbour_images": torch.stack(cams["images"]),
            "neighbour_intrinsics": f32(cams["intrinsics"]),
            "neighbour_cam2ego": f32([to_ref @ c for c in cams["cam2ego"]]),
            "neighbour_lidar_depth": torch.stack([min_pool_depth(u, v, z, wh, self.render_size) for (u, v, z), wh
                                                  in zip(projections, cams["native_wh"], strict=True)]),
            "neighbour_offset": torch.tensor((nb_lidar_sd["timestamp"] - lidar_sd["timestamp"]) / 1e6,
                                             dtype=torch.float32)}
        if self.sky_cache is not None:
            out["neighbour_sky_mask"] = self._sky_items(cams, None)
        return out

    def _sky_items(self, cams: dict, teacher_features: torch.Tensor | None) -> torch.Tensor:
        """(N, h, w) bool sky of this sample's cameras from the segmenter cache (the loaded teacher features when
        they are that cache: read once); a missing entry raises."""
        from distillnerf_core.data.sky import sky_from_features
        from distillnerf_core.teachers.cache import load_entry

        if teacher_features is not None and self.feature_cache is not None and \
                self.feature_cache.resolve() == self.sky_cache.resolve():
            return sky_from_features(teacher_features, self.render_size)
        return torch.stack([sky_from_features(load_entry(self.sky_cache, ch, sd["token"], self.sky_manifest),
                                              self.render_size)
                            for ch, sd in zip(self.cameras, cams["sd"], strict=True)])

    def _nerf_items(self, cams: dict, cam2ego: torch.Tensor) -> dict[str, torch.Tensor]:
        """The per-scene field's targets of this sample (see the module docstring); a missing entry raises."""
        import torch.nn.functional as F

        from distillnerf_core.data.nerf_targets import load_entry, virtual_cam2ego

        entries = [load_entry(self.nerf_targets, ch, sd["token"], self.nerf_views)
                   for ch, sd in zip(self.cameras, cams["sd"], strict=True)]
        depth = torch.as_tensor(np.stack([nearest_resize(e["depth"], self.render_size) for e in entries]))
        vdepth = torch.as_tensor(np.stack([np.stack([nearest_resize(d, self.render_size) for d in e["virtual_depth"]])
                                           for e in entries]))
        vrgb = torch.stack([torch.from_numpy(e["virtual_rgb"]).permute(0, 3, 1, 2).float() / 255.0 for e in entries])
        N, V = vrgb.shape[:2]
        vrgb = F.interpolate(vrgb.flatten(0, 1), size=self.image_size, mode="bilinear", align_corners=False)
        offsets = torch.as_tensor(entries[0]["offsets"], dtype=torch.float32)
        return {"nerf_depth": depth.float(), "virtual_depth": vdepth.float(),
                "virtual_images": vrgb.clamp(0, 1).view(N, V, 3, *self.image_size),
                "virtual_cam2ego": virtual_cam2ego(cam2ego, offsets)}

    def valid_masks(self) -> torch.Tensor:
        """(N, H, W) float32 at the image size: 1 = valid, 0 = ego body (ego_masks.py); all 1 without mask files."""
        if self._masks is None:
            from distillnerf_core.data.ego_masks import load_valid_mask

            H, W = self.image_size
            self._masks = torch.stack([
                torch.from_numpy(m) if (m := load_valid_mask(self.dataroot, ch, (W, H))) is not None
                else torch.ones(H, W) for ch in self.cameras])
        return self._masks.clone()


def collate_samples(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors along a new batch dim; bools become a bool tensor; strings / lists become lists."""
    out: dict[str, Any] = {}
    for key in batch[0]:
        if any(key not in b for b in batch):
            raise KeyError(f"collate: key {key!r} missing from some samples")
        values = [b[key] for b in batch]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], bool):
            out[key] = torch.tensor(values, dtype=torch.bool)
        else:
            out[key] = values
    return out


def dataroot_cameras(dataroot: str | Path, version: str, requested: Sequence[str] | None = None,
                     model_order: Sequence[str] | None = None, table_order_ok: bool = True) -> list[str]:
    """The camera channels (in model order) to read from a dataroot, checked against its sensor table.

    `requested` (--cameras / data.cameras) must all be cameras of the table. Without it: the model's recorded
    order (`model_order`, a run's data.cameras) when the table has those cameras; else a rig whose order is
    known, the nuScenes one (front, front-right, front-left, back, back-left, back-right) or DDAD's in that
    order (data.dgp.DDAD_CAMERAS, a subset kept in that order); else the table's order when `table_order_ok`
    (training a new model fixes its order), otherwise a DataFileError saying what to pass."""
    from distillnerf_core.data.dgp import DDAD_CAMERAS

    if not (Path(dataroot) / version).is_dir():
        raise FileNotFoundError(f"nuScenes version folder not found: {Path(dataroot) / version}")
    path = Path(dataroot) / version / "sensor.json"
    table = read_json(path, "nuScenes sensor table", list)
    available = []
    for i, row in enumerate(table):
        if require(row, "modality", str, path, f"[{i}]") == "camera":
            available.append(path_component(require(row, "channel", str, path, f"[{i}]"), f"{path}: [{i}].channel"))
    hint = f"pass --cameras (data.cameras) with channels of {available} in the model's camera order"
    if requested:
        missing = [c for c in requested if c not in available]
        if missing:
            raise DataFileError(f"{path}: no camera channel {missing} (the dataroot's cameras: {available}); {hint}")
        return list(requested)
    if not available:
        raise DataFileError(f"{path}: the sensor table has no camera")
    if model_order and set(model_order) <= set(available):
        return list(model_order)
    for rig in (NUSCENES_CAMERAS, DDAD_CAMERAS):
        if set(rig) <= set(available):
            return list(rig)
    if set(available) <= set(DDAD_CAMERAS):
        return [c for c in DDAD_CAMERAS if c in available]
    if table_order_ok:
        return available
    raise DataFileError(f"{path}: the cameras {available} are no rig whose order is known (nuScenes, DDAD) and the"
                        f" model records none; {hint}")


def make_dataset(dataroot: str, version: str, image_hw: Sequence[int], data: DataConfig, render_hw: tuple[int, int],
                 load_next: bool | None = None, split: str | None = None) -> NuScenesDataset:
    """The dataset `data` describes, at the model's input size `image_hw` and render size `render_hw`."""
    split = split or data.split
    scenes = None
    if split != "all":
        from nuscenes.utils.splits import create_splits_scenes

        splits = create_splits_scenes()
        if split not in splits:
            raise ValueError(f"unknown split {split!r}; one of all, {', '.join(sorted(splits))}")
        scenes = splits[split]
    return NuScenesDataset(
        dataroot, version, image_size=tuple(image_hw), render_size=render_hw,
        cameras=dataroot_cameras(dataroot, version, data.cameras), scenes=scenes, depth_range=tuple(data.depth_range),
        load_next=data.load_next if load_next is None else load_next, features=data.features,
        nerf_targets=data.nerf_targets, sky_mask=data.sky_mask, jpeg_draft=data.jpeg_draft,
        neighbour_targets=data.neighbour_targets,
    )
