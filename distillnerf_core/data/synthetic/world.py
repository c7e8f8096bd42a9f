"""A procedural driving town with exact ground truth, rendered by analytic vectorised ray casting.

The town lives in a "town frame": the road runs along +x, z is up, the ground is the plane z = 0.
Everything is made of primitives whose ray intersections are closed-form: the ground plane, axis-aligned
boxes (facades and their set-back upper storeys, shop fronts, cornices, sidewalk slabs, kerbs, verges,
hedges, car bodies and box cabins, posts, lamp arms, signs, limbs), axis-aligned ellipsoids (tree canopies as
unions of 3-5, rounded car cabins, torsos, heads) and cylinders along a town axis (trunks, wheels: one per
axle, round sign plates). Cars (sedan, hatchback, SUV, van) and pedestrians move at constant velocity, so
every sensor sees the world at its own timestamp. Every primitive carries a base albedo and a
shading.MATERIALS id; shading.py decides its look, world.py its geometry, classes and occupancy (exact).

Layout across the road (town y, metres): driving lanes |y| < 7 (centres +-1.75, +-5.25; traffic
drives on the right, i.e. +x at y < 0), parking strips 7 < |y| < 9, kerb stones and raised sidewalks (0.15 m)
9 < |y| < 12.5 with grass verges in some streets, trees (some leaning over the road), lamp posts, signs and
traffic lights, then buildings on the sidewalk line or set back behind grass and hedges, trees in the gaps.
Lane markings: double yellow centre line, dashed white lane dividers, solid white edge lines.

Shadows: `occluded` (any-hit rays from many origins along one direction) gives render_camera the sun-lit
mask that shading.shade takes; it changes colours only, never depth, classes or voxels.

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
    sph_radius: np.ndarray  # (S, 3) semi-axes along town x, y, z: axis-aligned ellipsoids
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
    # Cylinders along a town axis (trunks, poles, limbs: axis 2; wheels: axis 1; round signs: axis 0).
    cyl_center: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    cyl_radius: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cyl_half: np.ndarray = field(default_factory=lambda: np.zeros(0))  # half length along the axis
    cyl_axis: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    cyl_vel: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    cyl_albedo: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    cyl_cls: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    cyl_material: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

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

    def cylinders_at(self, t: float) -> np.ndarray:
        return self.cyl_center + self.cyl_vel * t


# ---------------------------------------------------------------------------------------------- town
def _hsv(h: float, s: float, v: float) -> list[float]:
    import colorsys

    return list(colorsys.hsv_to_rgb(h % 1.0, s, v))


_ZERO = np.zeros(3)
UPRIGHT_BOX_RADIUS = 0.1


class _Builder:
    """Collects the primitives of a town (each with velocity, base albedo, class and material)."""

    def __init__(self) -> None:
        self.boxes: list[tuple] = []  # (center, half, vel, albedo, cls, material)
        self.ells: list[tuple] = []  # (center, radii (3,), vel, albedo, cls, material)
        self.cyls: list[tuple] = []  # (center, radius, half length, axis, vel, albedo, cls, material)
        self.objects: list[SceneObject] = []

    def box(self, lo, hi, albedo, cls: str, material: int, vel=_ZERO) -> None:
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        self.boxes.append(((lo + hi) / 2, (hi - lo) / 2, np.asarray(vel, float), list(albedo), CLASS_ID[cls],
                           material))

    def ellipsoid(self, center, radii, albedo, cls: str, material: int, vel=_ZERO) -> None:
        radii = np.broadcast_to(np.asarray(radii, float), (3,)).copy()
        self.ells.append((np.asarray(center, float), radii, np.asarray(vel, float), list(albedo), CLASS_ID[cls],
                          material))

    def cylinder(self, center, radius: float, half: float, axis: int, albedo, cls: str, material: int,
                 vel=_ZERO) -> None:
        self.cyls.append((np.asarray(center, float), float(radius), float(half), int(axis), np.asarray(vel, float),
                          list(albedo), CLASS_ID[cls], material))

    def upright(self, x: float, y: float, z0: float, z1: float, radius: float, albedo, cls: str, material: int,
                vel=_ZERO) -> None:
        """A vertical cylinder from z0 to z1 (trunks); thinner than UPRIGHT_BOX_RADIUS a square post (poles,
        limbs: a few pixels wide in a camera, where a box looks the same and costs half a cylinder)."""
        if radius < UPRIGHT_BOX_RADIUS:
            r = radius * 0.886  # the square of the circle's area
            self.box([x - r, y - r, z0], [x + r, y + r, z1], albedo, cls, material, vel)
        else:
            self.cylinder([x, y, (z0 + z1) / 2], radius, (z1 - z0) / 2, 2, albedo, cls, material, vel)

    def arrays(self) -> dict[str, np.ndarray]:
        bc, bh, bv, ba, bk, bm = (np.array(v) for v in zip(*self.boxes, strict=True))
        ec, er, ev, ea, ek, em = (np.array(v) for v in zip(*self.ells, strict=True))
        cc, cr, ch, cx, cv, ca, ck, cm = (np.array(v) for v in zip(*self.cyls, strict=True))
        i64 = np.int64
        return dict(box_center=bc, box_half=bh, box_vel=bv, box_albedo=ba, box_cls=bk.astype(i64),
                    box_material=bm.astype(i64), sph_center=ec, sph_radius=er.reshape(-1, 3), sph_vel=ev,
                    sph_albedo=ea, sph_cls=ek.astype(i64), sph_material=em.astype(i64), cyl_center=cc,
                    cyl_radius=cr.astype(float), cyl_half=ch.astype(float), cyl_axis=cx.astype(i64), cyl_vel=cv,
                    cyl_albedo=ca, cyl_cls=ck.astype(i64), cyl_material=cm.astype(i64))

KERB_WIDTH = 0.22


def _street(b: _Builder, rng: np.random.Generator, x0: float, x1: float) -> None:
    """Sidewalks (raised paving), kerb stones along the road edge, grass verges with gaps on the sidewalk."""
    for side in (-1, 1):
        ys = sorted([side * ROAD_HALF, side * SIDEWALK_OUTER])
        # In 25 m pieces: a camera tests a box on every pixel of its screen rectangle, and one 500 m slab
        # spans the whole image of every camera.
        # The kerb stones are the slab's outer KERB_WIDTH (material only, see _shade_attributes: a box of their
        # own cost more than it showed).
        for xa in np.arange(x0 - 50, x1 + 50, 25.0):
            b.box([xa, ys[0], 0], [xa + 25.0, ys[1], SIDEWALK_HEIGHT], [0.62, 0.6, 0.57], "sidewalk", shading.PAVING)
        if rng.random() < 0.6:  # a street with grass verges (tree strips) between kerb and footway
            x = x0 + rng.uniform(0, 10)
            y_in, y_out = ROAD_HALF + rng.uniform(0.5, 0.9), ROAD_HALF + rng.uniform(1.8, 2.6)
            vy = sorted([side * y_in, side * y_out])
            while x < x1:
                length = rng.uniform(5, 18)
                b.box([x, vy[0], 0], [x + length, vy[1], SIDEWALK_HEIGHT + 0.02], shading.draw_foliage(rng),
                      "terrain", shading.GRASS)
                x += length + rng.uniform(1.5, 6)


def _buildings(b: _Builder, rng: np.random.Generator, x0: float, x1: float) -> list[tuple[float, float, int]]:
    """Rows of buildings: setbacks, upper storeys set back, shop fronts, cornices, hedges. Returns the gaps
    (x start, x end, side) between buildings."""
    gaps = []
    for side in (-1, 1):
        x = x0 + rng.uniform(0, 10)
        while x < x1:
            width, depth, height = rng.uniform(8, 24), rng.uniform(8, 18), rng.uniform(6, 26)
            setback = 0.0 if rng.random() < 0.45 else rng.uniform(0.8, 5.0)
            material, albedo = shading.draw_facade(rng)
            y0 = SIDEWALK_OUTER + setback

            def slab(ya: float, yb: float, za: float, zb: float, xa: float = x, xb: float = x + width,
                     col=albedo, mat: int = material, sd: int = side) -> None:
                ys = sorted([sd * ya, sd * yb])
                b.box([xa, ys[0], za], [xb, ys[1], zb], col, "building", mat)

            if height > 11 and rng.random() < 0.4:  # upper storeys set back from the street
                base_h = rng.uniform(0.45, 0.7) * height
                slab(y0, y0 + depth, 0, base_h)
                inset = rng.uniform(0.0, 0.2) * width
                slab(y0 + rng.uniform(1.5, 4.0), y0 + depth, base_h, height, x + inset, x + width - inset)
            else:
                slab(y0, y0 + depth, 0, height)
            if rng.random() < 0.35:  # a shop front: a darker, slightly proud ground floor
                m2, c2 = shading.draw_facade(rng)
                slab(y0 - 0.25, y0 + 1.0, 0, rng.uniform(3.0, 4.2), col=c2, mat=m2)
            if rng.random() < 0.4:  # cornice
                slab(y0 - 0.3, y0 + 0.5, height - 0.35, height, x - 0.2, x + width + 0.2)
            if setback > 1.6 and rng.random() < 0.55:  # a hedge in front of the building
                hy = SIDEWALK_OUTER + rng.uniform(0.2, 0.5)
                ys = sorted([side * hy, side * (hy + rng.uniform(0.6, 1.1))])
                b.box([x + 0.3, ys[0], 0], [x + width - 0.3, ys[1], rng.uniform(0.8, 1.5)],
                      shading.draw_foliage(rng), "vegetation", shading.HEDGE)
            gap = rng.uniform(8, 16) if rng.random() < 0.18 else rng.uniform(0.0, 4.0)
            if gap > 5:
                gaps.append((x + width, x + width + gap, side))
            x += width + gap
    return gaps


def _tree(b: _Builder, rng: np.random.Generator, x: float, y: float, z0: float, lean: float, scale: float) -> None:
    """A trunk (cylinder) and an irregular canopy (3-6 ellipsoids), the canopy shifted by `lean` in y."""
    trunk_h = rng.uniform(2.4, 4.0) * scale
    radius = rng.uniform(1.5, 2.8) * scale
    b.upright(x, y, z0, z0 + trunk_h + 0.6 * radius, rng.uniform(0.1, 0.2) * scale, _hsv(0.07, 0.4,
              rng.uniform(0.2, 0.35)), "vegetation", shading.BARK)
    green = np.array(shading.draw_foliage(rng))
    for _ in range(int(rng.integers(3, 6))):
        c = [x + rng.uniform(-0.6, 0.6) * radius, y + lean + rng.uniform(-0.6, 0.6) * radius,
             z0 + trunk_h + radius * rng.uniform(0.5, 1.3)]
        r = radius * rng.uniform(0.5, 0.85) * np.array([1.0, 1.0, rng.uniform(0.65, 1.0)])
        b.ellipsoid(c, r, (green * rng.uniform(0.8, 1.15)).clip(0, 1), "vegetation", shading.LEAVES)


def _furniture(b: _Builder, rng: np.random.Generator, x0: float, x1: float,
               gaps: list[tuple[float, float, int]]) -> None:
    """Street trees (some leaning over the road), trees in building gaps, lamp posts, signs, traffic lights."""
    grey = [0.42, 0.43, 0.45]
    for side in (-1, 1):
        x = x0 + rng.uniform(0, 8)
        while x < x1:
            y = side * (SIDEWALK_OUTER - rng.uniform(0.9, 1.6))
            lean = -side * rng.uniform(0.5, 2.5) if rng.random() < 0.4 else 0.0
            _tree(b, rng, x, y, SIDEWALK_HEIGHT, lean, rng.uniform(0.85, 1.2))
            x += rng.uniform(8, 20)
        x = x0 + rng.uniform(0, 15)
        while x < x1:  # lamp posts: a pole, an arm over the road, a lamp head
            y = side * (ROAD_HALF + 0.45)
            h = rng.uniform(6.5, 8.5)
            col = grey if rng.random() < 0.6 else [0.12, 0.13, 0.14]
            b.upright(x, y, SIDEWALK_HEIGHT, h, rng.uniform(0.07, 0.11), col, "pole", shading.METAL)
            arm = rng.uniform(1.2, 2.2)
            ys = sorted([y, y - side * arm])
            b.box([x - 0.05, ys[0], h - 0.12], [x + 0.05, ys[1], h], col, "pole", shading.METAL)
            ly = y - side * arm
            b.box([x - 0.3, ly - 0.16, h - 0.22], [x + 0.3, ly + 0.16, h - 0.04], col, "pole", shading.METAL)
            x += rng.uniform(22, 38)
        x = x0 + rng.uniform(0, 30)
        while x < x1:  # traffic signs: a thin post and a round or square plate facing the traffic
            y = side * (ROAD_HALF + rng.uniform(0.35, 0.8))
            top = rng.uniform(2.3, 3.2)
            b.upright(x, y, SIDEWALK_HEIGHT, top, 0.035, grey, "pole", shading.METAL)
            colour = [[0.75, 0.08, 0.08], [0.1, 0.25, 0.65], [0.9, 0.9, 0.88], [0.9, 0.7, 0.1]][rng.integers(4)]
            size = rng.uniform(0.28, 0.4)
            if rng.random() < 0.6:
                b.cylinder([x - side * 0.05, y, top - size], size, 0.02, 0, colour, "pole", shading.SIGN)
            else:
                b.box([x - side * 0.05 - 0.02, y - size, top - 2 * size], [x - side * 0.05 + 0.02, y + size, top],
                      colour, "pole", shading.SIGN)
            x += rng.uniform(30, 70)
        x = x0 + rng.uniform(0, 60)
        while x < x1:  # traffic lights: a post, a dark housing, lamps on both faces
            y = side * (ROAD_HALF + 0.6)
            top = rng.uniform(3.2, 4.0)
            dark = [0.06, 0.06, 0.07]
            b.upright(x, y, SIDEWALK_HEIGHT, top, 0.08, grey, "pole", shading.METAL)
            b.box([x - 0.17, y - 0.17, top - 0.05], [x + 0.17, y + 0.17, top + 0.9], dark, "pole", shading.METAL)
            lamp = [[0.9, 0.1, 0.05], [0.95, 0.65, 0.05], [0.1, 0.85, 0.3]][rng.integers(3)]
            lz = top + 0.1 + 0.28 * rng.integers(3)
            b.box([x - 0.2, y - 0.08, lz], [x + 0.2, y + 0.08, lz + 0.18], lamp, "pole", shading.SIGN)
            x += rng.uniform(60, 140)
    for xa, xe, side in gaps:  # trees behind the street line, in the gaps between buildings
        if rng.random() < 0.7:
            _tree(b, rng, rng.uniform(xa + 2, xe - 2), side * (SIDEWALK_OUTER + rng.uniform(3, 9)), 0.0, 0.0,
                  rng.uniform(1.1, 1.6))


CAR_SHAPES = {  # length, width, ground clearance, body top, cabin height, cabin length / length, box cabin
    "sedan": ((4.3, 4.9), (1.75, 1.9), (0.16, 0.24), (0.78, 0.92), (0.5, 0.6), (0.5, 0.58), False),
    "hatchback": ((3.7, 4.3), (1.65, 1.8), (0.16, 0.24), (0.8, 0.92), (0.55, 0.65), (0.55, 0.65), False),
    "suv": ((4.4, 4.95), (1.8, 1.98), (0.24, 0.32), (0.95, 1.08), (0.6, 0.72), (0.55, 0.65), True),
    "van": ((4.8, 5.4), (1.9, 2.05), (0.2, 0.28), (0.95, 1.05), (0.9, 1.1), (0.7, 0.78), True),
}
CAR_SHAPE_P = (0.42, 0.28, 0.22, 0.08)


def _car(b: _Builder, rng: np.random.Generator, cx: float, cy: float, vx: float, heading: int) -> None:
    """A car along x: body, cabin (a rounded greenhouse or a box for SUVs / vans), 4 wheels with hubs, lights."""
    shape = list(CAR_SHAPES)[rng.choice(len(CAR_SHAPES), p=CAR_SHAPE_P)]
    (l0, l1), (w0, w1), (c0, c1), (t0, t1), (h0, h1), (f0, f1), box_cabin = CAR_SHAPES[shape]
    length, width, clear, top = rng.uniform(l0, l1), rng.uniform(w0, w1), rng.uniform(c0, c1), rng.uniform(t0, t1)
    cab_h, cab_len = rng.uniform(h0, h1), rng.uniform(f0, f1) * length
    paint = shading.draw_car_paint(rng)
    vel = np.array([vx, 0.0, 0.0])
    b.box([cx - length / 2, cy - width / 2, clear], [cx + length / 2, cy + width / 2, top], paint, "car",
          shading.CAR_PAINT, vel)
    cab_c = cx - heading * rng.uniform(0.04, 0.12) * length  # the cabin sits towards the rear
    if box_cabin:
        b.box([cab_c - cab_len / 2, cy - width / 2 + 0.07, top], [cab_c + cab_len / 2, cy + width / 2 - 0.07,
              top + cab_h], paint, "car", shading.CAR_CABIN, vel)
    else:
        b.ellipsoid([cab_c, cy, top - 0.06], [cab_len / 2, width / 2 - 0.05, cab_h + 0.06], paint, "car",
                    shading.CAR_CABIN, vel)
    wheel_r = rng.uniform(0.3, 0.36)
    axle = length / 2 - rng.uniform(0.7, 0.9)
    for sx in (-1, 1):  # one cylinder per axle: its ends are the two wheels (the middle is inside the body)
        b.cylinder([cx + sx * axle, cy, wheel_r], wheel_r, width / 2 + 0.02, 1, [0.05, 0.05, 0.055], "car",
                   shading.TYRE, vel)
    # Rear lights: a red strip across most of the width (a headlight strip too cost more than it showed).
    xe = cx - heading * length / 2
    b.box([xe - 0.03, cy - width / 2 + 0.12, top - 0.2], [xe + 0.03, cy + width / 2 - 0.12, top - 0.07],
          [0.55, 0.04, 0.04], "car", shading.SIGN, vel)
    b.objects.append(SceneObject(len(b.objects), "vehicle.car", np.array([cx, cy, (top + cab_h) / 2]), vel,
                                 (width, length, top + cab_h), 0.0 if heading > 0 else math.pi))


def _traffic(b: _Builder, rng: np.random.Generator, x0: float, x1: float, speed: float) -> None:
    """Parked cars on both parking strips, moving traffic per lane (one speed, no overtaking), a lead car."""
    for side in (-1, 1):
        x = x0 + rng.uniform(0, 10)
        while x < x1:
            if rng.random() < 0.65:
                _car(b, rng, x, side * (LANE_EDGE + rng.uniform(0.9, 1.1)), 0.0, 1 if side < 0 else -1)
            x += rng.uniform(5.5, 11)
    lanes = [(-5.25, speed * rng.uniform(0.7, 1.3)), (1.75, -rng.uniform(6, 11)), (5.25, -rng.uniform(6, 11))]
    for lane_y, v in lanes:
        x = x0 + rng.uniform(0, 20)
        while x < x1:
            _car(b, rng, x, lane_y, v, 1 if v > 0 else -1)
            x += rng.uniform(12, 36)
    if rng.random() < 0.8:  # a lead car in the ego lane, at the ego's speed, 15-30 m ahead
        _car(b, rng, rng.uniform(15, 30), EGO_LANE_Y, speed, 1)


def _person(b: _Builder, rng: np.random.Generator, x: float, y: float, vel: np.ndarray) -> None:
    """Legs and arms (cylinders), torso and head (ellipsoids); shoulders across the walking direction."""
    height = rng.uniform(1.55, 1.9)
    s = height / 1.75
    z0 = SIDEWALK_HEIGHT
    shirt, trousers, skin = shading.draw_clothes(rng), shading.draw_clothes(rng), shading.draw_skin(rng)
    across = rng.random() < 0.7 or np.abs(vel).sum() > 0  # shoulders along y (facing +-x)
    stride = rng.uniform(0.08, 0.22) * s if np.abs(vel).sum() > 0 else rng.uniform(0.0, 0.05)

    def at(fwd: float, lateral: float) -> tuple[float, float]:
        return (x + fwd, y + lateral) if across else (x + lateral, y + fwd)

    leg_top = z0 + 0.47 * height
    for k in (-1, 1):
        lx, ly = at(k * stride / 2, k * 0.095 * s)
        b.upright(lx, ly, z0, leg_top + 0.04, 0.075 * s, trousers, "pedestrian", shading.CLOTH, vel)
    tx, ty = at(0.0, 0.0)
    # Arms hanging at the sides and the shoulders: one slab across, the torso bulges out of it front and back.
    (ax0, ay0), (ax1, ay1) = at(-0.05 * s, -0.28 * s), at(0.05 * s, 0.28 * s)
    b.box([min(ax0, ax1), min(ay0, ay1), z0 + 0.43 * height], [max(ax0, ax1), max(ay0, ay1), z0 + 0.81 * height],
          shirt, "pedestrian", shading.CLOTH, vel)
    radii = [0.12 * s, 0.2 * s] if across else [0.2 * s, 0.12 * s]
    b.ellipsoid([tx, ty, z0 + 0.665 * height], radii + [0.2 * height], shirt, "pedestrian", shading.CLOTH, vel)
    b.ellipsoid([tx, ty, z0 + height - 0.115 * s], [0.095 * s, 0.095 * s, 0.12 * s], skin, "pedestrian",
                shading.SKIN, vel)
    b.objects.append(SceneObject(len(b.objects), "human.pedestrian.adult",
                                 np.array([x, y, z0 + height / 2]), vel, (0.6, 0.5, height),
                                 0.0 if vel[0] >= 0 else math.pi))


def _pedestrians(b: _Builder, rng: np.random.Generator, x0: float, x1: float) -> None:
    for side in (-1, 1):
        x = x0 + rng.uniform(0, 10)
        while x < x1:
            y = side * rng.uniform(ROAD_HALF + 1.0, SIDEWALK_OUTER - 0.4)
            moving = rng.random() < 0.8
            v = np.array([rng.choice([-1, 1]) * rng.uniform(0.8, 1.6) * moving, 0.0, 0.0])
            _person(b, rng, x, y, v)
            if rng.random() < 0.25:  # walking in company
                _person(b, rng, x + rng.uniform(-0.3, 0.3), y - side * rng.uniform(0.6, 0.9), v)
            x += rng.uniform(4, 26)


def generate_town(seed: int, scene_index: int = 0, duration: float = 10.0) -> Town:
    """A town long enough for `duration` seconds of driving, deterministic from (seed, scene_index)."""
    rng = np.random.default_rng([int(seed), int(scene_index), 4242])
    speed = float(rng.uniform(7.0, 10.0))
    x_min, x_max = -150.0, speed * duration + 200.0
    b = _Builder()
    _street(b, rng, x_min, x_max)
    gaps = _buildings(b, rng, x_min, x_max)
    _furniture(b, rng, x_min, x_max, gaps)
    _traffic(b, rng, x_min, x_max, speed)
    _pedestrians(b, rng, x_min, x_max)
    yaw_g = rng.uniform(-math.pi, math.pi)
    c, s = math.cos(yaw_g), math.sin(yaw_g)
    town2global = make_transform(np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]),
                                 [rng.uniform(300, 1500), rng.uniform(300, 1500), 0.0])
    # The light has its own stream: changes to the geometry's draws do not move the sun, and back.
    env = shading.draw_environment(np.random.default_rng([int(seed), int(scene_index), 777]))
    return Town(**b.arrays(), ego_x0=0.0, ego_speed=speed, weave_amp=float(rng.uniform(0.1, 0.35)),
                weave_period=float(rng.uniform(6, 12)), town2global=town2global, sun=env.sun, objects=b.objects,
                env=env)


# ---------------------------------------------------------------------------------------------- casting
@dataclass
class Hits:
    t: torch.Tensor  # (R,) ray parameter (inf = no hit)
    kind: torch.Tensor  # (R,) 0 none, 1 ground, 2 box, 3 ellipsoid, 4 cylinder (KIND_*)
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


KIND_GROUND, KIND_BOX, KIND_ELLIPSOID, KIND_CYLINDER = 1, 2, 3, 4
PRIMITIVE_KINDS = (KIND_BOX, KIND_ELLIPSOID, KIND_CYLINDER)
_EPS = 1e-4  # hits closer than this along the ray are the ray's own surface


def _ray_box(o: torch.Tensor, inv: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Slab test: ray parameter of the entry point (inf = miss); o (3,) or (..., 3), inv = 1 / dirs (..., 3)."""
    t1, t2 = (lo - o) * inv, (hi - o) * inv
    tmin = torch.minimum(t1, t2).amax(dim=-1)
    tmax = torch.maximum(t1, t2).amin(dim=-1)
    return torch.where((tmax >= tmin) & (tmin > _EPS), tmin, math.inf)


def _ray_ellipsoid(o: torch.Tensor, d: torch.Tensor, c: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """Entry point of an axis-aligned ellipsoid (the unit sphere after scaling by 1 / radii)."""
    oc, dd = (o - c) / radii, d / radii
    a = (dd * dd).sum(-1)
    b = (dd * oc).sum(-1)
    cc = (oc * oc).sum(-1) - 1.0
    disc = b * b - a * cc
    s = (-b - disc.clamp(min=0).sqrt()) / a
    return torch.where((disc >= 0) & (s > _EPS), s, math.inf)


def _ray_cylinder(o: torch.Tensor, d: torch.Tensor, c: torch.Tensor, radius: float, half: float,
                  axis: int) -> torch.Tensor:
    """Entry point of a closed cylinder along a town axis: the side (a circle in the other two axes) within
    the axial slab, or a cap disc."""
    i, j = [k for k in range(3) if k != axis]
    oc = o - c
    oi, oj, oa = oc[..., i], oc[..., j], oc[..., axis]
    di, dj, da = d[..., i], d[..., j], d[..., axis]
    a = di * di + dj * dj
    b = di * oi + dj * oj
    cc = oi * oi + oj * oj - radius * radius
    disc = b * b - a * cc
    s_side = (-b - disc.clamp(min=0).sqrt()) / a.clamp(min=1e-12)
    side_ok = (disc >= 0) & (a > 1e-12) & (s_side > _EPS) & ((oa + s_side * da).abs() <= half)
    best = torch.where(side_ok, s_side, math.inf)
    safe_da = torch.where(da.abs() < 1e-12, torch.full_like(da, 1e-12), da)
    for cap in (-half, half):
        s = (cap - oa) / safe_da
        pi, pj = oi + s * di, oj + s * dj
        ok = (da.abs() >= 1e-12) & (s > _EPS) & (pi * pi + pj * pj <= radius * radius)
        best = torch.where(ok & (s < best), s, best)
    return best


def _cylinder_extent(radius: np.ndarray, half: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """(C, 3) half extents of the cylinders' bounding boxes."""
    ext = np.repeat(np.asarray(radius, float)[:, None], 3, axis=1)
    if len(ext):
        ext[np.arange(len(ext)), axis] = half
    return ext


def primitive_bounds(town: Town, t: float) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Axis-aligned bounding boxes (lo, hi) (N, 3) of every primitive at time t, per kind."""
    lo, hi = town.boxes_at(t)
    sc = town.spheres_at(t)
    cc = town.cylinders_at(t)
    ce = _cylinder_extent(town.cyl_radius, town.cyl_half, town.cyl_axis)
    return {KIND_BOX: (lo, hi), KIND_ELLIPSOID: (sc - town.sph_radius, sc + town.sph_radius),
            KIND_CYLINDER: (cc - ce, cc + ce)}


class _Intersector:
    """Per-primitive exact ray intersection at one time (positions moved to t once)."""

    def __init__(self, town: Town, t: float) -> None:
        f = torch.float32
        lo, hi = town.boxes_at(t)
        self.lo, self.hi = torch.as_tensor(lo, dtype=f), torch.as_tensor(hi, dtype=f)
        self.ec = torch.as_tensor(town.spheres_at(t), dtype=f)
        self.er = torch.as_tensor(town.sph_radius, dtype=f)
        self.cc = torch.as_tensor(town.cylinders_at(t), dtype=f)
        self.town = town

    def __call__(self, kind: int, i: int, o: torch.Tensor, d: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
        if kind == KIND_BOX:
            return _ray_box(o, inv, self.lo[i], self.hi[i])
        if kind == KIND_ELLIPSOID:
            return _ray_ellipsoid(o, d, self.ec[i], self.er[i])
        tw = self.town
        return _ray_cylinder(o, d, self.cc[i], float(tw.cyl_radius[i]), float(tw.cyl_half[i]), int(tw.cyl_axis[i]))


def _safe_inverse(d: torch.Tensor) -> torch.Tensor:
    return 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)


def cast_rays(town: Town, t: float, origin: np.ndarray, dirs: torch.Tensor, far: float,
              rects: dict[int, np.ndarray] | None = None) -> Hits:
    """Closest hit of rays origin + s * dirs at scene time t; dirs (H, W, 3) or (R, 3), need not be unit.

    `rects` (per primitive kind, from `screen_rects` / `lidar_rects` of `primitive_bounds`) restrict each
    primitive to the ray sub-grid [row0:row1, col0:col1] that can see it; without them every ray is tested.
    Returns flat (R,) hits with s, the ray parameter (the camera z-depth when dirs have z = 1 in the camera
    frame).
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
    kind[ok] = KIND_GROUND
    full = np.array([0, hh, 0, ww])
    inv = _safe_inverse(grid)
    hit_of = _Intersector(town, t)
    # Nearest primitives first; one whose nearest possible hit is behind every ray's hit so far is skipped
    # (a hit at distance D has ray parameter >= D / max |dirs|): the same closest hits, fewer tests.
    order = []
    for k, (lo, hi) in primitive_bounds(town, t).items():
        gap = np.linalg.norm(np.maximum(np.maximum(lo - origin, origin - hi), 0.0), axis=1)  # origin to the box
        keep = gap < far
        if rects is not None:
            r = rects[k]
            keep &= (r[:, 1] > r[:, 0]) & (r[:, 3] > r[:, 2])
        order += [(g, k, i) for g, i in zip(gap[keep].tolist(), np.nonzero(keep)[0].tolist(), strict=True)]
    order.sort()
    dmax = float(grid.norm(dim=-1).max()) if grid.numel() else 1.0
    for gap_i, k, i in order:
        r0, r1, c0, c1 = (rects[k][i] if rects is not None else full).tolist()
        if gap_i > 0 and float(best[r0:r1, c0:c1].max()) < gap_i / dmax:
            continue
        s = hit_of(k, i, o, grid[r0:r1, c0:c1], inv[r0:r1, c0:c1])
        sub = best[r0:r1, c0:c1]
        hit = s < sub
        if not bool(hit.any()):  # hidden or missed
            continue
        sub.copy_(torch.where(hit, s, sub))  # in place on views (cheaper than boolean index_put)
        kind[r0:r1, c0:c1].masked_fill_(hit, k)
        index[r0:r1, c0:c1].masked_fill_(hit, i)
    flat = grid.reshape(-1, 3)
    return _shade_attributes(town, t, o, flat, best.reshape(-1), kind.reshape(-1), index.reshape(-1))


SHADOW_CELL = 1.5  # metres: the bins of the sun-plane grid that `occluded` sorts ray origins into
SHADOW_MAX_CELLS = 2_000_000
SHADOW_RANGE = 80.0  # m from the camera
SHADOW_MIN_VOLUME = 0.03  # m^3: sign plates, lamp arms, lights, limbs and heads cast no shadow in renders


def occluded(town: Town, t: float, points: torch.Tensor, direction: np.ndarray,
             max_dist: float = 300.0, min_volume: float = 0.0) -> torch.Tensor:
    """(R,) bool: whether the ray points[i] + s * direction, 0 < s < max_dist, hits any primitive (any-hit).

    For shadows: points are surface points (offset off their surface by the caller), direction the unit
    vector towards the sun. The ground cannot occlude (it is below every point); primitives whose bounding
    box is smaller than `min_volume` (m^3) are left out (0: none). Exact per primitive; only
    the rays that can reach a primitive are tested: origins are binned on a grid in the plane perpendicular
    to the direction and each primitive tests the bins its bounding box projects onto.
    """
    n = points.shape[0]
    out = torch.zeros(n, dtype=torch.bool)
    if n == 0:
        return out
    d = np.asarray(direction, float)
    d = d / np.linalg.norm(d)
    helper = np.array([0.0, 0.0, 1.0]) if abs(d[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    e1 = np.cross(d, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(d, e1)
    basis = torch.as_tensor(np.stack([e1, e2, d], 1), dtype=torch.float32)  # (3, 3): town -> (u, v, w)
    pts = points.to(torch.float32)
    uvw = pts @ basis
    lo_uv = uvw[:, :2].min(0).values
    span = uvw[:, :2].max(0).values - lo_uv
    cell = max(SHADOW_CELL, math.sqrt(float(span[0] + 1) * float(span[1] + 1) / SHADOW_MAX_CELLS))
    nu, nv = int(span[0] // cell) + 1, int(span[1] // cell) + 1
    iuv = ((uvw[:, :2] - lo_uv) / cell).long()
    cid = iuv[:, 1] * nu + iuv[:, 0]
    order = torch.argsort(cid)
    starts = torch.searchsorted(cid[order], torch.arange(nu * nv + 1)).tolist()
    counts = torch.bincount(cid, minlength=nu * nv).reshape(nv, nu).numpy()
    sat = np.zeros((nv + 1, nu + 1), np.int64)  # summed-area table: origins per cell rectangle in O(1)
    sat[1:, 1:] = counts.cumsum(0).cumsum(1)
    w_min = float(uvw[:, 2].min())
    dt = torch.as_tensor(d, dtype=torch.float32)
    inv = _safe_inverse(dt)
    hit_of = _Intersector(town, t)
    b_np = basis.numpy().astype(float)
    lo_np = lo_uv.numpy().astype(float)
    for k, (lo, hi) in primitive_bounds(town, t).items():
        proj = _box_corners(lo, hi) @ b_np  # (N, 8, 3)
        pmin, pmax = proj.min(1), proj.max(1)
        c0 = np.floor((pmin[:, :2] - lo_np) / cell).astype(int)
        c1 = np.floor((pmax[:, :2] - lo_np) / cell).astype(int)
        # Small primitives (sign plates, lights, limbs, heads) cast no shadow: a shading choice, cheaper.
        keep = (c1[:, 0] >= 0) & (c1[:, 1] >= 0) & (c0[:, 0] < nu) & (c0[:, 1] < nv) & (pmax[:, 2] > w_min) \
            & (np.prod(hi - lo, axis=1) >= min_volume)
        c0, c1 = np.clip(c0, 0, [nu - 1, nv - 1]), np.clip(c1, 0, [nu - 1, nv - 1])
        n_in = sat[c1[:, 1] + 1, c1[:, 0] + 1] - sat[c0[:, 1], c1[:, 0] + 1] - sat[c1[:, 1] + 1, c0[:, 0]] \
            + sat[c0[:, 1], c0[:, 0]]
        keep &= n_in > 0
        for i in np.nonzero(keep)[0].tolist():
            rows = [order[starts[r * nu + c0[i, 0]]:starts[r * nu + c1[i, 0] + 1]]
                    for r in range(c0[i, 1], c1[i, 1] + 1)]
            idx = torch.cat(rows) if len(rows) > 1 else rows[0]
            q = uvw[idx]
            sel = ((q[:, 0] >= pmin[i, 0]) & (q[:, 0] <= pmax[i, 0]) & (q[:, 1] >= pmin[i, 1])
                   & (q[:, 1] <= pmax[i, 1]) & (q[:, 2] < pmax[i, 2]) & (q[:, 2] > pmin[i, 2] - max_dist)
                   & ~out[idx])
            idx = idx[sel]
            if idx.numel() == 0:
                continue
            s = hit_of(k, i, pts[idx], dt, inv)
            out[idx[s < max_dist]] = True
    return out


def sun_lit(town: Town, t: float, hits: Hits, offset: float = 0.02, grid_hw: tuple[int, int] | None = None,
            stride: int = 3, origin: np.ndarray | None = None) -> torch.Tensor:
    """(R,) bool: surface hits that face the sun and see it (no primitive in between); sky rays False.

    With `grid_hw` (the rays form an (H, W) image) the shadow rays are cast for one pixel per `stride` x
    `stride` block and for every pixel whose primitive differs from its block's (so silhouettes stay exact);
    the other pixels take their block's answer (shading only: geometry never depends on it). With `origin`
    (the camera centre) points farther than SHADOW_RANGE are lit without a shadow ray.
    """
    sun = torch.as_tensor(town.sun, dtype=torch.float32)
    facing = (hits.kind > 0) & ((hits.normal @ sun) > 0)
    lit = facing.clone()
    if origin is not None:  # beyond SHADOW_RANGE the haze hides shadows: those points count as lit
        facing &= (hits.point - torch.as_tensor(origin, dtype=torch.float32)).norm(dim=1) < SHADOW_RANGE
    exact = facing
    rep = None
    if grid_hw is not None and stride > 1:
        h, w = grid_hw
        rows = torch.arange(h) // stride * stride
        cols = torch.arange(w) // stride * stride
        rep = (rows[:, None] * w + cols[None, :]).reshape(-1)
        same = (hits.kind == hits.kind[rep]) & (hits.index == hits.index[rep]) & facing[rep]
        exact = facing & ((rep == torch.arange(h * w)) | ~same)
    idx = torch.nonzero(exact).squeeze(1)
    if idx.numel():
        origins = hits.point[idx] + offset * hits.normal[idx]
        lit[idx] = ~occluded(town, t, origins, town.sun, min_volume=SHADOW_MIN_VOLUME)
    if rep is not None:
        copy = facing & ~exact
        lit[copy] = lit[rep[copy]]
    return lit


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

    g = kind == KIND_GROUND
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

    b = kind == KIND_BOX
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
        mat = torch.as_tensor(town.box_material)[idx]
        kerb = (mat == shading.PAVING) & ((point[b, 1].abs() - ROAD_HALF) < KERB_WIDTH)
        material[b] = torch.where(kerb, shading.KERB, mat)

    s = kind == KIND_ELLIPSOID
    if s.any():
        idx = index[s]
        sc = torch.as_tensor(town.spheres_at(t), dtype=torch.float32)[idx]
        radii = torch.as_tensor(town.sph_radius, dtype=torch.float32)[idx]
        grad = (point[s] - sc) / (radii * radii)  # the gradient of the implicit function: the normal
        normal[s] = grad / grad.norm(dim=1, keepdim=True).clamp(min=1e-9)
        cls[s] = torch.as_tensor(town.sph_cls)[idx]
        base[s] = torch.as_tensor(town.sph_albedo, dtype=torch.float32)[idx]
        material[s] = torch.as_tensor(town.sph_material)[idx]

    cy = kind == KIND_CYLINDER
    if cy.any():
        idx = index[cy]
        local = point[cy] - torch.as_tensor(town.cylinders_at(t), dtype=torch.float32)[idx]
        axis = torch.as_tensor(town.cyl_axis)[idx]
        radius = torch.as_tensor(town.cyl_radius, dtype=torch.float32)[idx]
        half = torch.as_tensor(town.cyl_half, dtype=torch.float32)[idx]
        along = local.gather(1, axis[:, None]).squeeze(1)
        radial = local.clone()
        radial.scatter_(1, axis[:, None], torch.zeros(len(idx), 1))
        rlen = radial.norm(dim=1)
        on_cap = (along.abs() / half) > (rlen / radius)  # which surface the hit point is nearest to
        cap_n = torch.zeros_like(local)
        cap_n.scatter_(1, axis[:, None], torch.sign(along)[:, None])
        normal[cy] = torch.where(on_cap[:, None], cap_n, radial / rlen.clamp(min=1e-9)[:, None])
        cls[cy] = torch.as_tensor(town.cyl_cls)[idx]
        base[cy] = torch.as_tensor(town.cyl_albedo, dtype=torch.float32)[idx]
        material[cy] = torch.as_tensor(town.cyl_material)[idx]
    return Hits(best, kind, index, point, normal, cls, base, material)


# ---------------------------------------------------------------------------------------------- sensors
def render_camera(town: Town, t: float, cam2town: np.ndarray, K: np.ndarray, size: tuple[int, int],
                  camera_rays: np.ndarray | None = None, shaded: bool = True
                  ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """RGB uint8 (H, W, 3), z-depth float32 (H, W) (0 = sky) and semantics uint8 (H, W) of one camera.

    Rays go through pixel centres (u + 0.5, v + 0.5): pixel u covers [u, u + 1) in the continuous
    image coordinates that K maps to (the convention the data loader uses when resizing).
    `camera_rays` (H, W, 3), camera-frame directions with z = 1 (a distorted lens: lens.camera_rays), are
    cast instead of K's pinhole rays (depth stays the z-depth); primitives are then culled in lens.RayGrid's
    virtual pinhole camera that covers them (`rects` below: every primitive's screen rectangle goes through it).
    `shaded` False: the geometry only (RGB is None; shading and its shadow rays are most of a render's cost):
    the exact ground truth of a distorted camera's rectified image, whose RGB is rendered through its lens.
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
    prim_rects = {k: rects(_box_corners(lo, hi)) for k, (lo, hi) in primitive_bounds(town, t).items()}
    hits = cast_rays(town, t, cam2town[:3, 3], dirs.reshape(h, w, 3), CAMERA_FAR, prim_rects)
    depth = torch.where(hits.kind > 0, hits.t, torch.zeros_like(hits.t))
    sem = torch.where(hits.kind > 0, hits.cls, torch.zeros_like(hits.cls))
    rgb8 = None
    if shaded:
        rgb = shade(town, hits, dirs, sun_lit(town, t, hits, grid_hw=(h, w), origin=cam2town[:3, 3]))
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


def lidar_rects(corners: np.ndarray, town2lidar: np.ndarray, far: float) -> np.ndarray:
    """(N, 4) [ring0, ring1, az0, az1) index rectangles of the LiDAR beam grid (32 rings x 1084 azimuths) that
    can reach each convex set given by its corners (N, C, 3, town frame): azimuths from the corners (the
    extremes of a convex set not around the sensor's axis), elevations from the height range over the
    nearest possible and the farthest horizontal distance (conservative); the whole grid when the set is
    around the sensor's vertical axis or straddles the azimuth seam, empty beyond `far`."""
    e = corners @ town2lidar[:3, :3].T + town2lidar[:3, 3]
    n_el, n_az = len(LIDAR_ELEVATIONS_DEG), LIDAR_AZIMUTH_STEPS
    rects = np.tile(np.array([0, n_el, 0, n_az], np.int64), (len(e), 1))
    if not len(e):
        return rects
    xy = e[..., :2]
    centre = xy.mean(1)
    rad_xy = np.linalg.norm(xy - centre[:, None], axis=2).max(1)
    dist_c = np.linalg.norm(centre, axis=1)
    r_min = dist_c - rad_xy
    r_max = np.linalg.norm(xy, axis=2).max(1)
    z_lo, z_hi = e[..., 2].min(1), e[..., 2].max(1)
    around = r_min < 0.2
    r_min = np.maximum(r_min, 0.2)
    el_hi = np.arctan2(z_hi, np.where(z_hi > 0, r_min, r_max))
    el_lo = np.arctan2(z_lo, np.where(z_lo > 0, r_max, r_min))
    el0 = math.radians(LIDAR_ELEVATIONS_DEG[0])
    step_el = math.radians(LIDAR_ELEVATIONS_DEG[1] - LIDAR_ELEVATIONS_DEG[0])
    rows0 = np.floor((el_lo - el0) / step_el).astype(np.int64) - 1
    rows1 = np.ceil((el_hi - el0) / step_el).astype(np.int64) + 2
    az_c = np.arctan2(centre[:, 1], centre[:, 0])
    delta = np.angle(np.exp(1j * (np.arctan2(xy[..., 1], xy[..., 0]) - az_c[:, None])))
    step_az = 2 * math.pi / n_az
    cols0 = np.floor((az_c + delta.min(1) + math.pi) / step_az).astype(np.int64) - 1
    cols1 = np.ceil((az_c + delta.max(1) + math.pi) / step_az).astype(np.int64) + 2
    seam = (cols0 < 0) | (cols1 > n_az)
    sub = ~around
    rects[sub, 0] = np.clip(rows0[sub], 0, n_el)
    rects[sub, 1] = np.clip(rows1[sub], 0, n_el)
    cols = sub & ~seam
    rects[cols, 2], rects[cols, 3] = cols0[cols], cols1[cols]
    rects[r_min > far] = 0
    return rects


def simulate_lidar(town: Town, t: float, lidar2town: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P, 5) float32 points [x, y, z, intensity 0-255, ring] in the LiDAR frame, and (P,) uint8 classes.

    An instantaneous sweep at time t (a real sensor rotates over 50 ms); beams that hit nothing within
    LIDAR_MAX_RANGE or hit closer than 0.5 m give no point. Primitives are culled to the beams that can reach
    them (`lidar_rects`; the same hits as testing every beam).
    """
    d_lidar, ring = lidar_beam_directions()
    dirs = torch.as_tensor(d_lidar @ lidar2town[:3, :3].T, dtype=torch.float32)
    town2lidar = invert_transform(lidar2town)
    rects = {k: lidar_rects(_box_corners(lo, hi), town2lidar, LIDAR_MAX_RANGE)
             for k, (lo, hi) in primitive_bounds(town, t).items()}
    grid = dirs.reshape(len(LIDAR_ELEVATIONS_DEG), LIDAR_AZIMUTH_STEPS, 3)
    hits = cast_rays(town, t, lidar2town[:3, 3], grid, LIDAR_MAX_RANGE, rects)
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

    A voxel takes the class of a primitive it overlaps (tested on its centre against the primitive grown by
    half a voxel: a box by half a voxel per axis; an ellipsoid and a cylinder's radius are tested at the voxel's
    point nearest their centre / axis, exact for spheres), otherwise of the ground if its z-interval contains
    the ground plane.
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

    # The primitives that can reach the grid at all (a vectorised test first: most of the town is far away).
    corner_ego = _box_corners(np.array([spec.pc_range[:3]]), np.array([spec.pc_range[3:]]))[0]
    grid_town = corner_ego @ ego2town[:3, :3].T + ego2town[:3, 3]
    g_lo, g_hi = grid_town.min(0) - half, grid_town.max(0) + half
    near = {k: ((lo_k <= g_hi) & (hi_k >= g_lo)).all(axis=1) for k, (lo_k, hi_k) in primitive_bounds(town, t).items()}

    lo, hi = town.boxes_at(t)
    corners = _box_corners(lo - half, hi + half)
    for b in np.nonzero(near[KIND_BOX])[0].tolist():
        sl = block(corners[b])
        if sl is None:
            continue
        sub = pts[sl]
        inside = ((sub >= torch.as_tensor(lo[b] - half, dtype=torch.float32))
                  & (sub <= torch.as_tensor(hi[b] + half, dtype=torch.float32))).all(dim=-1)
        labels[sl][inside] = int(town.box_cls[b])
    sc = town.spheres_at(t)
    for k in np.nonzero(near[KIND_ELLIPSOID])[0].tolist():
        r = town.sph_radius[k] + half  # the ellipsoid grown by half a voxel along each axis
        sl = block(_box_corners(sc[k:k + 1] - r, sc[k:k + 1] + r)[0])
        if sl is None:
            continue
        # The voxel's point nearest the centre (exact overlap for a sphere, close for an ellipsoid).
        q = (torch.as_tensor(sc[k], dtype=torch.float32) - pts[sl]).clamp(-half, half)
        q = (pts[sl] + q - torch.as_tensor(sc[k], dtype=torch.float32)) / torch.as_tensor(town.sph_radius[k],
                                                                                           dtype=torch.float32)
        labels[sl][(q * q).sum(-1) <= 1.0] = int(town.sph_cls[k])
    cc = town.cylinders_at(t)
    ext = _cylinder_extent(town.cyl_radius, town.cyl_half, town.cyl_axis)
    for k in np.nonzero(near[KIND_CYLINDER])[0].tolist():
        sl = block(_box_corners(cc[k:k + 1] - ext[k] - half, cc[k:k + 1] + ext[k] + half)[0])
        if sl is None:
            continue
        local = pts[sl] - torch.as_tensor(cc[k], dtype=torch.float32)
        ax = int(town.cyl_axis[k])
        i, j = [a for a in range(3) if a != ax]
        near_i = local[..., i] - local[..., i].clamp(-half, half)
        near_j = local[..., j] - local[..., j].clamp(-half, half)
        radial = (near_i ** 2 + near_j ** 2).sqrt()  # from the axis to the voxel's nearest point
        inside = (radial <= float(town.cyl_radius[k])) & (local[..., ax].abs() <= float(town.cyl_half[k]) + half)
        labels[sl][inside] = int(town.cyl_cls[k])
    return labels.numpy()
