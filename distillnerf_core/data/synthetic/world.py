"""A procedural driving town with exact ground truth, rendered by analytic vectorised ray casting.

The town lives in a "town frame": the road runs along +x, z is up, the ground is the plane z = 0.
Everything is made of three primitives whose ray intersections are closed-form: the ground plane,
axis-aligned boxes (buildings, sidewalks, car bodies and cabins, pedestrians, tree trunks, poles) and
spheres (tree crowns, pedestrian heads). Cars and pedestrians move at constant velocity, so every
sensor sees the world at its own timestamp.

Layout across the road (town y, metres): driving lanes |y| < 7 (centres +-1.75, +-5.25; traffic
drives on the right, i.e. +x at y < 0), parking strips 7 < |y| < 9, raised sidewalks (0.15 m)
9 < |y| < 12.5 with trees and poles, then buildings set back from the sidewalk, grass in between.
Lane markings: double yellow centre line, dashed white lane dividers, solid white edge lines.

Rendering outputs per camera: RGB (simple Lambert + sky light + distance fog), camera z-depth
(0 where the ray hits nothing, i.e. sky) and a semantic class per pixel (`SEMANTIC_CLASSES`).
The LiDAR is a 32-beam spinning sensor (HDL-32E elevations, instantaneous sweep at its timestamp).
The semantic voxel grid (`VoxelSpec`) labels each voxel of an ego-frame grid with the class of the
primitive that overlaps it (0 = free); lane markings count as road there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from distillnerf_core.data.synthetic import shading
from distillnerf_core.data.synthetic.lens import RayGrid
from distillnerf_core.data.synthetic.shading import shade
from distillnerf_core.geometry import invert_transform, make_transform

SEMANTIC_CLASSES = (
    "sky",  # images: no surface hit. Voxels: 0 = free space.
    "road",
    "lane_marking",
    "sidewalk",
    "terrain",
    "building",
    "car",
    "pedestrian",
    "vegetation",
    "pole",
)
CLASS_ID = {name: i for i, name in enumerate(SEMANTIC_CLASSES)}
# RGB colours for pictures of the semantic labels (index = class id).
SEMANTIC_PALETTE = np.array(
    [
        [135, 190, 235],
        [90, 90, 90],
        [255, 255, 255],
        [244, 35, 232],
        [152, 251, 152],
        [220, 130, 60],
        [0, 0, 142],
        [220, 20, 60],
        [60, 150, 40],
        [255, 220, 0],
    ],
    dtype=np.uint8,
)

ROAD_HALF = 9.0  # lanes + parking strips
LANE_EDGE = 7.0  # solid white edge line, start of the parking strip
SIDEWALK_OUTER = 12.5
SIDEWALK_HEIGHT = 0.15
EGO_LANE_Y = -1.75
LIDAR_ELEVATIONS_DEG = np.linspace(-30.67, 10.67, 32)  # Velodyne HDL-32E, as on nuScenes
LIDAR_AZIMUTH_STEPS = 1084  # 32 x 1084 = 34,688 beams per sweep (the real keyframe has 34,688 points)
LIDAR_MAX_RANGE = 100.0
CAMERA_FAR = 400.0  # ground hits beyond this render as sky (fog has hidden them by then)


@dataclass
class VoxelSpec:
    """Ego-frame semantic voxel grid (Occ3D-nuScenes extent and resolution by default)."""

    pc_range: tuple[float, float, float, float, float, float] = (-40.0, -40.0, -1.0, 40.0, 40.0, 5.4)
    voxel_size: float = 0.4

    @property
    def shape(self) -> tuple[int, int, int]:
        lo, hi = np.array(self.pc_range[:3]), np.array(self.pc_range[3:])
        return tuple(int(round(v)) for v in (hi - lo) / self.voxel_size)

    def centers(self) -> np.ndarray:
        """(X, Y, Z, 3) voxel centres in the ego frame."""
        axes = [
            self.pc_range[i] + (np.arange(n) + 0.5) * self.voxel_size for i, n in enumerate(self.shape)
        ]
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


@dataclass
class SceneObject:
    """An annotated dynamic-capable object (car or pedestrian) for the sample_annotation table."""

    instance: int
    category: str  # nuScenes category name
    center0: np.ndarray  # box centre (town frame) at t = 0
    velocity: np.ndarray
    size_wlh: tuple[float, float, float]
    yaw: float  # town frame


@dataclass
class Town:
    """All primitives of one scene, positions at scene time t = 0 (seconds) plus constant velocities."""

    box_center: np.ndarray
    box_half: np.ndarray
    box_vel: np.ndarray
    box_albedo: np.ndarray
    box_cls: np.ndarray
    box_material: np.ndarray  # shading.MATERIALS ids
    sph_center: np.ndarray
    sph_radius: np.ndarray
    sph_vel: np.ndarray
    sph_albedo: np.ndarray
    sph_cls: np.ndarray
    sph_material: np.ndarray
    ego_x0: float
    ego_speed: float
    weave_amp: float
    weave_period: float
    town2global: np.ndarray
    sun: np.ndarray  # unit, towards the sun (= env.sun)
    objects: list[SceneObject] = field(default_factory=list)
    env: shading.Environment = field(default_factory=shading.Environment)  # light and surface look

    # ------------------------------------------------------------------ ego motion
    def ego_pose(self, t: float) -> np.ndarray:
        """4x4 ego-to-town pose at scene time t (s): constant speed along +x with a gentle weave."""
        w = 2 * math.pi / self.weave_period
        x = self.ego_x0 + self.ego_speed * t
        y = EGO_LANE_Y + self.weave_amp * math.sin(w * t)
        yaw = math.atan2(self.weave_amp * w * math.cos(w * t), self.ego_speed)
        c, s = math.cos(yaw), math.sin(yaw)
        return make_transform(np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]), [x, y, 0.0])

    def boxes_at(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) corners (B, 3) of all boxes at scene time t."""
        c = self.box_center + self.box_vel * t
        return c - self.box_half, c + self.box_half

    def spheres_at(self, t: float) -> np.ndarray:
        return self.sph_center + self.sph_vel * t


# ---------------------------------------------------------------------------------------------- town
def _hsv(h: float, s: float, v: float) -> list[float]:
    import colorsys

    return list(colorsys.hsv_to_rgb(h % 1.0, s, v))


def generate_town(seed: int, scene_index: int = 0, duration: float = 10.0) -> Town:
    """A town long enough for `duration` seconds of driving, deterministic from (seed, scene_index)."""
    rng = np.random.default_rng([int(seed), int(scene_index), 4242])
    speed = float(rng.uniform(7.0, 10.0))
    x_min, x_max = -150.0, speed * duration + 200.0
    boxes: list[tuple] = []  # (center, half, vel, albedo, cls, material)
    spheres: list[tuple] = []  # (center, radius, vel, albedo, cls, material)
    objects: list[SceneObject] = []
    zero = np.zeros(3)

    def box(lo, hi, albedo, cls, material, vel=zero):
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        boxes.append(((lo + hi) / 2, (hi - lo) / 2, np.asarray(vel, float), albedo, CLASS_ID[cls], material))

    # Sidewalks (raised slabs) on both sides.
    for side in (-1, 1):
        ys = sorted([side * ROAD_HALF, side * SIDEWALK_OUTER])
        box([x_min - 50, ys[0], 0], [x_max + 50, ys[1], SIDEWALK_HEIGHT], [0.62, 0.6, 0.57], "sidewalk",
            shading.PAVING)

    # Buildings: rows of blocks with random size, gaps, setback, facade material and colour.
    for side in (-1, 1):
        x = x_min + rng.uniform(0, 10)
        while x < x_max:
            width = rng.uniform(8, 24)
            depth = rng.uniform(8, 18)
            height = rng.uniform(5, 28)
            setback = rng.uniform(0.5, 4.0)
            material, albedo = shading.draw_facade(rng)
            y0 = SIDEWALK_OUTER + setback
            ys = sorted([side * y0, side * (y0 + depth)])
            box([x, ys[0], 0], [x + width, ys[1], height], albedo, "building", material)
            x += width + (rng.uniform(10, 16) if rng.random() < 0.15 else rng.uniform(0.0, 5.0))

    # Trees and poles on the sidewalks.
    for side in (-1, 1):
        x = x_min + rng.uniform(0, 8)
        while x < x_max:
            y = side * (SIDEWALK_OUTER - 1.2)
            trunk_h = rng.uniform(2.2, 3.2)
            box([x - 0.15, y - 0.15, 0], [x + 0.15, y + 0.15, trunk_h], [0.35, 0.25, 0.15], "vegetation",
                shading.BARK)
            r = rng.uniform(1.3, 2.1)
            green = shading.draw_foliage(rng)
            spheres.append((np.array([x, y, trunk_h + 0.7 * r]), r, zero, green, CLASS_ID["vegetation"],
                            shading.LEAVES))
            x += rng.uniform(9, 20)
        x = x_min + rng.uniform(0, 15)
        while x < x_max:
            y = side * (ROAD_HALF + 0.45)
            box([x - 0.09, y - 0.09, 0], [x + 0.09, y + 0.09, 6.5], [0.55, 0.55, 0.6], "pole", shading.METAL)
            x += rng.uniform(18, 35)

    def car(cx, cy, vx, heading_sign, parked):
        length, width = rng.uniform(3.9, 4.9), rng.uniform(1.75, 2.0)
        albedo = shading.draw_car_paint(rng)
        vel = np.array([vx, 0.0, 0.0])
        body_top = rng.uniform(0.95, 1.1)
        box([cx - length / 2, cy - width / 2, 0.15], [cx + length / 2, cy + width / 2, body_top], albedo, "car",
            shading.CAR_PAINT, vel)
        cab_len = 0.55 * length
        cab_c = cx - heading_sign * 0.08 * length
        box([cab_c - cab_len / 2, cy - width / 2 + 0.08, body_top], [cab_c + cab_len / 2, cy + width / 2 - 0.08,
            body_top + rng.uniform(0.42, 0.55)], albedo, "car", shading.CAR_CABIN, vel)
        objects.append(SceneObject(len(objects), "vehicle.car", np.array([cx, cy, (body_top + 0.55) / 2 + 0.05]),
                                   vel, (width, length, body_top + 0.5), 0.0 if heading_sign > 0 else math.pi))

    # Parked cars along both parking strips.
    for side in (-1, 1):
        x = x_min + rng.uniform(0, 10)
        while x < x_max:
            if rng.random() < 0.6:
                car(x, side * (LANE_EDGE + 1.0), 0.0, 1 if side < 0 else -1, True)
            x += rng.uniform(5.5, 12)
    # Moving traffic: per lane one speed (no overtaking inside a lane).
    lanes = [(-5.25, speed * rng.uniform(0.7, 1.3)), (1.75, -rng.uniform(6, 11)), (5.25, -rng.uniform(6, 11))]
    for lane_y, v in lanes:
        x = x_min + rng.uniform(0, 20)
        while x < x_max:
            car(x, lane_y, v, 1 if v > 0 else -1, False)
            x += rng.uniform(14, 40)
    # A lead car in the ego lane, same speed as the ego, 15-30 m ahead (present in most scenes).
    if rng.random() < 0.8:
        car(rng.uniform(15, 30), EGO_LANE_Y, speed, 1, False)

    # Pedestrians walking along the sidewalks.
    for side in (-1, 1):
        x = x_min + rng.uniform(0, 10)
        while x < x_max:
            y = side * rng.uniform(ROAD_HALF + 1.0, SIDEWALK_OUTER - 0.4)
            v = np.array([rng.choice([-1, 1]) * rng.uniform(0.8, 1.6) * (rng.random() < 0.8), 0, 0])
            height = rng.uniform(1.45, 1.65)
            shirt = shading.draw_clothes(rng)
            box([x - 0.22, y - 0.18, SIDEWALK_HEIGHT], [x + 0.22, y + 0.18, SIDEWALK_HEIGHT + height], shirt,
                "pedestrian", shading.CLOTH, v)
            spheres.append((np.array([x, y, SIDEWALK_HEIGHT + height + 0.12]), 0.13, v, shading.draw_skin(rng),
                            CLASS_ID["pedestrian"], shading.SKIN))
            objects.append(SceneObject(len(objects), "human.pedestrian.adult",
                                       np.array([x, y, SIDEWALK_HEIGHT + (height + 0.25) / 2]), v,
                                       (0.5, 0.5, height + 0.25), 0.0 if v[0] >= 0 else math.pi))
            x += rng.uniform(4, 25)

    yaw_g = rng.uniform(-math.pi, math.pi)
    c, s = math.cos(yaw_g), math.sin(yaw_g)
    town2global = make_transform(np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]),
                                 [rng.uniform(300, 1500), rng.uniform(300, 1500), 0.0])
    # The light has its own stream: changes to the geometry's draws do not move the sun, and back.
    env = shading.draw_environment(np.random.default_rng([int(seed), int(scene_index), 777]))
    bc, bh, bv, ba, bk, bm = (np.array(v) for v in zip(*boxes, strict=True))
    sc, sr, sv, sa, sk, sm = (np.array(v) for v in zip(*spheres, strict=True))
    return Town(bc, bh, bv, ba, bk.astype(np.int64), bm.astype(np.int64), sc, sr.astype(float), sv, sa,
                sk.astype(np.int64), sm.astype(np.int64), ego_x0=0.0, ego_speed=speed,
                weave_amp=float(rng.uniform(0.1, 0.35)), weave_period=float(rng.uniform(6, 12)),
                town2global=town2global, sun=env.sun, objects=objects, env=env)


# ---------------------------------------------------------------------------------------------- casting
@dataclass
class Hits:
    t: torch.Tensor  # (R,) ray parameter (inf = no hit)
    kind: torch.Tensor  # (R,) 0 none, 1 ground, 2 box, 3 sphere
    index: torch.Tensor  # (R,) primitive index within its kind
    point: torch.Tensor  # (R, 3) hit point (town)
    normal: torch.Tensor  # (R, 3)
    cls: torch.Tensor  # (R,) semantic class
    albedo: torch.Tensor  # (R, 3) the primitive's base albedo; shading.shade textures it by material
    material: torch.Tensor  # (R,) shading.MATERIALS id (0 = none)


def _box_corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(B, 8, 3) corners of axis-aligned boxes."""
    return np.stack([np.where(np.array([(i >> k) & 1 for k in range(3)], bool), hi, lo) for i in range(8)], 1)


def screen_rects(corners: np.ndarray, world2cam: np.ndarray, K: np.ndarray, size: tuple[int, int],
                 far: float) -> np.ndarray:
    """(B, 4) pixel rectangles [row0, row1, col0, col1) that contain the projection of each convex set given
    by its corners (B, C, 3); empty (all zeros) when the set is outside the frustum or beyond `far`, the
    whole image when it crosses the camera plane."""
    cam = corners @ world2cam[:3, :3].T + world2cam[:3, 3]
    x, y, z = cam[..., 0], cam[..., 1], cam[..., 2]
    w, h = size
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    outside = np.zeros(len(cam), bool)
    for plane in (z, fx * x + cx * z, (w - cx) * z - fx * x, fy * y + cy * z, (h - cy) * z - fy * y, far - z):
        outside |= (plane < 0).all(axis=1)
    rects = np.zeros((len(cam), 4), np.int64)
    front = (z > 1e-3).all(axis=1) & ~outside
    zs = np.where(z > 1e-3, z, 1.0)
    u, v = fx * x / zs + cx, fy * y / zs + cy
    rects[front] = np.stack([np.floor(v.min(1)) - 1, np.ceil(v.max(1)) + 1, np.floor(u.min(1)) - 1,
                             np.ceil(u.max(1)) + 1], 1)[front].astype(np.int64)
    rects[~front & ~outside] = [0, h, 0, w]
    rects[:, :2] = rects[:, :2].clip(0, h)
    rects[:, 2:] = rects[:, 2:].clip(0, w)
    return rects


def cast_rays(town: Town, t: float, origin: np.ndarray, dirs: torch.Tensor, far: float,
              box_rects: np.ndarray | None = None, sphere_rects: np.ndarray | None = None) -> Hits:
    """Closest hit of rays origin + s * dirs at scene time t; dirs (H, W, 3) or (R, 3), need not be unit.

    `box_rects` / `sphere_rects` (from `screen_rects`) restrict each primitive to the ray sub-grid
    [row0:row1, col0:col1] that can see it (cameras); without them every ray is tested. Returns flat (R,)
    hits with s, the ray parameter (the camera z-depth when dirs have z = 1 in the camera frame).
    """
    grid = dirs if dirs.dim() == 3 else dirs[None]
    hh, ww = grid.shape[:2]
    o = torch.as_tensor(origin, dtype=torch.float32)
    best = torch.full((hh, ww), math.inf)
    kind = torch.zeros(hh, ww, dtype=torch.long)
    index = torch.zeros(hh, ww, dtype=torch.long)
    # Ground plane z = 0, up to `far` metres along the ray.
    dz = grid[..., 2]
    s_ground = torch.where(dz < -1e-9, -o[2] / dz.clamp(max=-1e-9), torch.full_like(dz, math.inf))
    ok = s_ground * grid.norm(dim=-1) < far
    best = torch.where(ok, s_ground, best)
    kind[ok] = 1
    full = np.array([0, hh, 0, ww])
    # Boxes (slab test), culled by distance and by the caller's rectangles.
    lo, hi = town.boxes_at(t)
    keep = np.linalg.norm((lo + hi) / 2 - origin, axis=1) - np.linalg.norm(hi - lo, axis=1) / 2 < far
    if box_rects is not None:
        keep &= (box_rects[:, 1] > box_rects[:, 0]) & (box_rects[:, 3] > box_rects[:, 2])
    inv = 1.0 / torch.where(grid.abs() < 1e-12, torch.full_like(grid, 1e-12), grid)
    lo_t, hi_t = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
    for b in np.nonzero(keep)[0].tolist():
        r0, r1, c0, c1 = (box_rects[b] if box_rects is not None else full).tolist()
        iv = inv[r0:r1, c0:c1]
        t1 = (lo_t[b] - o) * iv
        t2 = (hi_t[b] - o) * iv
        tmin = torch.minimum(t1, t2).amax(dim=-1)
        tmax = torch.maximum(t1, t2).amin(dim=-1)
        sub = best[r0:r1, c0:c1]
        hit = (tmax >= tmin) & (tmin > 1e-4) & (tmin < sub)
        sub[hit] = tmin[hit]
        kind[r0:r1, c0:c1][hit] = 2
        index[r0:r1, c0:c1][hit] = b
    # Spheres.
    sc = town.spheres_at(t)
    skeep = np.linalg.norm(sc - origin, axis=1) - town.sph_radius < far
    if sphere_rects is not None:
        skeep &= (sphere_rects[:, 1] > sphere_rects[:, 0]) & (sphere_rects[:, 3] > sphere_rects[:, 2])
    for k in np.nonzero(skeep)[0].tolist():
        r0, r1, c0, c1 = (sphere_rects[k] if sphere_rects is not None else full).tolist()
        d = grid[r0:r1, c0:c1]
        oc = o - torch.as_tensor(sc[k], dtype=torch.float32)
        b_ = d @ oc
        c_ = (oc * oc).sum() - float(town.sph_radius[k]) ** 2
        a = (d * d).sum(-1)
        disc = b_ * b_ - a * c_
        s = (-b_ - disc.clamp(min=0).sqrt()) / a
        sub = best[r0:r1, c0:c1]
        hit = (disc >= 0) & (s > 1e-4) & (s < sub)
        sub[hit] = s[hit]
        kind[r0:r1, c0:c1][hit] = 3
        index[r0:r1, c0:c1][hit] = k
    flat = grid.reshape(-1, 3)
    return _shade_attributes(town, t, o, flat, best.reshape(-1), kind.reshape(-1), index.reshape(-1))


def _shade_attributes(town: Town, t: float, o: torch.Tensor, dirs: torch.Tensor, best: torch.Tensor,
                      kind: torch.Tensor, index: torch.Tensor) -> Hits:
    """Hit points, normals, classes, base albedos and materials (shading.shade adds the textures)."""
    n = dirs.shape[0]
    point = o + dirs * torch.where(torch.isfinite(best), best, torch.zeros_like(best))[:, None]
    normal = torch.zeros(n, 3)
    cls = torch.zeros(n, dtype=torch.long)
    base = torch.zeros(n, 3)
    material = torch.zeros(n, dtype=torch.long)
    px, py = point[:, 0], point[:, 1]

    g = kind == 1
    if g.any():
        gx, gy = px[g], py[g]
        ay = gy.abs()
        on_road = ay < ROAD_HALF
        yellow = (ay > 0.06) & (ay < 0.2)
        dashed = ((ay - 3.5).abs() < 0.075) & (torch.remainder(gx, 9.0) < 3.0)
        edge = (ay - LANE_EDGE).abs() < 0.1
        white = dashed | edge
        k = torch.where(on_road, CLASS_ID["road"], CLASS_ID["terrain"])
        k = torch.where(yellow | white, CLASS_ID["lane_marking"], k)
        m = torch.where(on_road, shading.ASPHALT, shading.GRASS)
        m = torch.where(yellow, shading.LANE_YELLOW, m)
        m = torch.where(white, shading.LANE_WHITE, m)
        cls[g] = k
        material[g] = m
        normal[g] = torch.tensor([0.0, 0.0, 1.0])

    b = kind == 2
    if b.any():
        idx = index[b]
        lo, hi = town.boxes_at(t)
        c = torch.as_tensor((lo + hi) / 2, dtype=torch.float32)[idx]
        h = torch.as_tensor(town.box_half, dtype=torch.float32)[idx]
        local = (point[b] - c) / h
        axis = local.abs().argmax(dim=1)
        nrm = torch.zeros_like(local)
        nrm.scatter_(1, axis[:, None], torch.sign(local.gather(1, axis[:, None])))
        normal[b] = nrm
        cls[b] = torch.as_tensor(town.box_cls)[idx]
        base[b] = torch.as_tensor(town.box_albedo, dtype=torch.float32)[idx]
        material[b] = torch.as_tensor(town.box_material)[idx]

    s = kind == 3
    if s.any():
        idx = index[s]
        sc = torch.as_tensor(town.spheres_at(t), dtype=torch.float32)[idx]
        normal[s] = (point[s] - sc) / torch.as_tensor(town.sph_radius, dtype=torch.float32)[idx][:, None]
        cls[s] = torch.as_tensor(town.sph_cls)[idx]
        base[s] = torch.as_tensor(town.sph_albedo, dtype=torch.float32)[idx]
        material[s] = torch.as_tensor(town.sph_material)[idx]
    return Hits(best, kind, index, point, normal, cls, base, material)


# ---------------------------------------------------------------------------------------------- sensors
def render_camera(town: Town, t: float, cam2town: np.ndarray, K: np.ndarray, size: tuple[int, int],
                  camera_rays: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB uint8 (H, W, 3), z-depth float32 (H, W) (0 = sky) and semantics uint8 (H, W) of one camera.

    Rays go through pixel centres (u + 0.5, v + 0.5): pixel u covers [u, u + 1) in the continuous
    image coordinates that K maps to (the convention the data loader uses when resizing).
    `camera_rays` (H, W, 3), camera-frame directions with z = 1 (a distorted lens: lens.camera_rays), are
    cast instead of K's pinhole rays (depth stays the z-depth); primitives are then culled in lens.RayGrid's
    virtual pinhole camera that covers them (`rects` below: every primitive's screen rectangle goes through it).
    """
    w, h = size
    world2cam = invert_transform(cam2town)
    if camera_rays is None:
        vs, us = torch.meshgrid(torch.arange(h, dtype=torch.float32) + 0.5,
                                torch.arange(w, dtype=torch.float32) + 0.5, indexing="ij")
        Kinv = torch.as_tensor(np.linalg.inv(K), dtype=torch.float32)
        pix = torch.stack([us.reshape(-1), vs.reshape(-1), torch.ones(h * w)], dim=1)
        d_cam = pix @ Kinv.T  # z = 1: the ray parameter IS the camera z-depth

        def rects(corners: np.ndarray) -> np.ndarray:
            return screen_rects(corners, world2cam, K, size, CAMERA_FAR)
    else:
        if tuple(camera_rays.shape) != (h, w, 3):
            raise ValueError(f"camera_rays has shape {tuple(camera_rays.shape)}, expected {(h, w, 3)} for size {size}")
        grid = RayGrid(camera_rays, K)
        d_cam = torch.as_tensor(np.ascontiguousarray(camera_rays, dtype=np.float32)).reshape(-1, 3)

        def rects(corners: np.ndarray) -> np.ndarray:
            return grid.rects(screen_rects(corners, world2cam, grid.K, grid.size, CAMERA_FAR))
    R = torch.as_tensor(cam2town[:3, :3], dtype=torch.float32)
    dirs = d_cam @ R.T
    lo, hi = town.boxes_at(t)
    sc, sr = town.spheres_at(t), town.sph_radius[:, None]
    box_rects = rects(_box_corners(lo, hi))
    sph_rects = rects(_box_corners(sc - sr, sc + sr))
    hits = cast_rays(town, t, cam2town[:3, 3], dirs.reshape(h, w, 3), CAMERA_FAR, box_rects, sph_rects)
    rgb = shade(town, hits, dirs)
    depth = torch.where(hits.kind > 0, hits.t, torch.zeros_like(hits.t))
    sem = torch.where(hits.kind > 0, hits.cls, torch.zeros_like(hits.cls))
    rgb8 = (rgb * 255 + 0.5).to(torch.uint8).reshape(h, w, 3).numpy()
    return rgb8, depth.reshape(h, w).numpy().astype(np.float32), sem.reshape(h, w).numpy().astype(np.uint8)


# nuScenes-like LiDAR reflectivity per class (intensity = 255 * reflectivity * |cos incidence|-ish).
REFLECTIVITY = np.array([0.0, 0.12, 0.8, 0.2, 0.15, 0.25, 0.5, 0.2, 0.2, 0.4], dtype=np.float32)


def lidar_beam_directions() -> tuple[np.ndarray, np.ndarray]:
    """Unit directions (32 * 1084, 3) in the sensor frame and their ring index (0 = lowest beam)."""
    elev = np.deg2rad(LIDAR_ELEVATIONS_DEG)
    az = np.linspace(-math.pi, math.pi, LIDAR_AZIMUTH_STEPS, endpoint=False)
    e, a = np.meshgrid(elev, az, indexing="ij")
    d = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], -1).reshape(-1, 3)
    ring = np.repeat(np.arange(len(elev)), len(az))
    return d, ring


def simulate_lidar(town: Town, t: float, lidar2town: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P, 5) float32 points [x, y, z, intensity 0-255, ring] in the LiDAR frame, and (P,) uint8 classes.

    An instantaneous sweep at time t (a real sensor rotates over 50 ms); beams that hit nothing within
    LIDAR_MAX_RANGE or hit closer than 0.5 m give no point.
    """
    d_lidar, ring = lidar_beam_directions()
    dirs = torch.as_tensor(d_lidar @ lidar2town[:3, :3].T, dtype=torch.float32)
    hits = cast_rays(town, t, lidar2town[:3, 3], dirs, LIDAR_MAX_RANGE)
    rng_m = hits.t.numpy()
    ok = (hits.kind.numpy() > 0) & (rng_m < LIDAR_MAX_RANGE) & (rng_m > 0.5)
    pts = d_lidar[ok] * rng_m[ok, None]
    cos_inc = np.abs((hits.normal.numpy()[ok] * dirs.numpy()[ok]).sum(1))
    cls = hits.cls.numpy()[ok]
    intensity = np.clip(255 * REFLECTIVITY[cls] * (0.3 + 0.7 * cos_inc), 0, 255)
    out = np.concatenate([pts, intensity[:, None], ring[ok, None]], 1).astype(np.float32)
    return out, cls.astype(np.uint8)


def semantic_voxels(town: Town, t: float, ego2town: np.ndarray, spec: VoxelSpec | None = None) -> np.ndarray:
    """uint8 (X, Y, Z) labels of the ego-frame grid at time t (0 = free).

    A voxel takes the class of a box or sphere it overlaps (tested on its centre against the primitive
    grown by half a voxel), otherwise of the ground if its z-interval contains the ground plane.
    Later primitives overwrite earlier ones where they share a voxel.
    """
    spec = spec or VoxelSpec()
    centers = spec.centers()
    shape = centers.shape[:3]
    pts = torch.as_tensor(centers @ ego2town[:3, :3].T + ego2town[:3, 3], dtype=torch.float32)  # (X, Y, Z, 3)
    half, size = spec.voxel_size / 2, spec.voxel_size
    labels = torch.zeros(shape, dtype=torch.uint8)
    # Ground (z = 0 plane) by region; lane markings are labelled road at this resolution.
    zc = pts[..., 2]
    ground = (zc - half <= 0) & (zc + half > 0)
    on_road = pts[..., 1].abs() < ROAD_HALF
    labels[ground & on_road] = CLASS_ID["road"]
    labels[ground & ~on_road] = CLASS_ID["terrain"]
    town2ego = invert_transform(ego2town)
    origin = np.array(spec.pc_range[:3])

    def block(corners_town: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index ranges of the voxels whose centres may fall in the set spanned by these corners."""
        e = corners_town @ town2ego[:3, :3].T + town2ego[:3, 3]
        lo_i = np.floor((e.min(0) - origin) / size - 0.5).astype(int)
        hi_i = np.ceil((e.max(0) - origin) / size + 0.5).astype(int) + 1
        lo_i, hi_i = np.maximum(lo_i, 0), np.minimum(hi_i, shape)
        if (hi_i <= lo_i).any():
            return None
        return tuple(slice(a, b) for a, b in zip(lo_i, hi_i, strict=True))

    lo, hi = town.boxes_at(t)
    corners = _box_corners(lo - half, hi + half)
    for b in range(len(lo)):
        sl = block(corners[b])
        if sl is None:
            continue
        sub = pts[sl]
        inside = ((sub >= torch.as_tensor(lo[b] - half, dtype=torch.float32))
                  & (sub <= torch.as_tensor(hi[b] + half, dtype=torch.float32))).all(dim=-1)
        labels[sl][inside] = int(town.box_cls[b])
    sc = town.spheres_at(t)
    for k in range(len(sc)):
        r = float(town.sph_radius[k]) + half
        sl = block(_box_corners(sc[k:k + 1] - r, sc[k:k + 1] + r)[0])
        if sl is None:
            continue
        d = (pts[sl] - torch.as_tensor(sc[k], dtype=torch.float32)).norm(dim=-1)
        labels[sl][d <= r] = int(town.sph_cls[k])
    return labels.numpy()
