"""Light and surfaces of the synthetic town: materials, procedural textures (albedo) and the shading of hits.

Geometry, semantics and depth live in world.py and stay exact; this module only decides what colour a
surface point has and how it is lit, so nothing here can change depth, classes or occupancy. It must not
import world.py (world.py imports it): `shade` takes any object with the `Hits` / `Town` attributes it reads.

Every primitive carries a base albedo (3) and a material id (`MATERIALS`); the material picks the texture.
Ground points get their material from world.py (asphalt, grass, lane paint), which owns where the markings are.
Each scene draws an `Environment` (sun direction and colour, sky, clouds, haze, the asphalt's tone and wear) from
its own generator; the `draw_*` helpers give primitives realistic base colours (facades, car paint, clothes).

The light: sky light (more from above) + the sun (Lambert, times the `lit` mask: cast shadows come from
world.occluded) + a Fresnel reflection of the sky on glossy materials (glass, car paint) with a sun highlight,
then haze towards the horizon colour with distance. The sky: a horizon-to-zenith gradient, a glow and disc
around the sun, and clouds (value-noise fBm on a cloud layer, so they shrink in perspective to the horizon).
Everything is a pure function of the hit attributes and the scene's environment: deterministic from the seed.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # annotations only: importing world.py at run time would be a cycle
    from distillnerf_core.data.synthetic.world import Hits, Town

# Material ids (index into MATERIALS). 0 is "no surface" (sky). New ids are appended, never renumbered:
# a Town stores them as ints.
MATERIALS = (
    "none",
    "asphalt",
    "grass",
    "lane_yellow",
    "lane_white",
    "paving",
    "kerb",
    "facade_plaster",
    "facade_brick",
    "facade_concrete",
    "glass",  # a pane (car windows, shop windows): dark, reflective
    "car_paint",
    "car_cabin",  # roof in the body colour, glass on the sides
    "tyre",
    "bark",
    "leaves",
    "hedge",
    "metal",
    "skin",
    "cloth",
    "sign",
    "facade_glass",  # an office curtain wall: glass panes between mullions
)
MATERIAL_ID = {name: i for i, name in enumerate(MATERIALS)}
(NONE, ASPHALT, GRASS, LANE_YELLOW, LANE_WHITE, PAVING, KERB, FACADE_PLASTER, FACADE_BRICK, FACADE_CONCRETE,
 GLASS, CAR_PAINT, CAR_CABIN, TYRE, BARK, LEAVES, HEDGE, METAL, SKIN, CLOTH, SIGN, FACADE_GLASS) = range(len(MATERIALS))

EXPOSURE = 1.0  # the light's overall scale (1.15 scored lower on benchmarks/realism.py)
CLOUD_HEIGHT = 1500.0  # m, the cloud layer the sky's noise lives on


# ---------------------------------------------------------------------------------------------- environment
def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)))


@dataclass
class Environment:
    """Per-scene light and surface look, drawn by `draw_environment` (the defaults: a clear midday)."""

    sun: np.ndarray = field(default_factory=lambda: np.array([0.3, 0.2, 0.933]) / 1.0)  # unit, towards the sun
    sun_rgb: np.ndarray = field(default_factory=lambda: np.array([1.0, 0.97, 0.92]))  # direct light
    sky_rgb: np.ndarray = field(default_factory=lambda: np.array([0.85, 0.9, 1.0]))  # sky light on surfaces
    sky_horizon: np.ndarray = field(default_factory=lambda: np.array([0.80, 0.86, 0.94]))
    sky_zenith: np.ndarray = field(default_factory=lambda: np.array([0.33, 0.52, 0.84]))
    cloud_cover: float = 0.3  # 0 clear .. 1 overcast
    cloud_scale: float = 600.0  # m on the cloud layer
    cloud_rgb: np.ndarray = field(default_factory=lambda: np.array([0.95, 0.95, 0.96]))
    haze_dist: float = 350.0  # m, e-folding distance of the haze
    haze_rgb: np.ndarray = field(default_factory=lambda: np.array([0.80, 0.86, 0.94]))
    offset: np.ndarray = field(default_factory=lambda: np.zeros(2))  # m, shifts every ground texture
    asphalt_rgb: np.ndarray = field(default_factory=lambda: np.array([0.3, 0.3, 0.31]))
    wear: float = 0.5  # 0 fresh .. 1 worn: oil strip, faded paint, cracks
    patches: float = 0.15  # share of road cells with a repair patch
    paving_tint: np.ndarray = field(default_factory=lambda: np.ones(3))
    paver: float = 0.6  # m, paving slab size
    grass_dry: float = 0.3  # 0 green .. 1 dry


def draw_environment(rng: np.random.Generator) -> Environment:
    """A scene's environment from its own generator (world.py gives it a stream apart from the geometry's)."""
    overcast = rng.random() < 0.1
    elev = math.radians(rng.uniform(25.0, 70.0))
    az = rng.uniform(-math.pi, math.pi)
    sun = np.array([math.cos(elev) * math.cos(az), math.cos(elev) * math.sin(az), math.sin(elev)])
    # Low sun: warmer and weaker direct light (a longer path through the air).
    warm = math.exp(-(elev - math.radians(25)) / math.radians(15))
    sun_rgb = np.array([1.0, 0.95 - 0.12 * warm, 0.88 - 0.25 * warm]) * rng.uniform(0.9, 1.1)
    # Skies close to the old fixed gradient (a realism run scored varied, cloudier skies lower: sky read as wall).
    zenith = _hsv(rng.uniform(0.58, 0.61), rng.uniform(0.5, 0.65), rng.uniform(0.8, 0.88))
    horizon = _hsv(rng.uniform(0.58, 0.61), rng.uniform(0.12, 0.18), rng.uniform(0.9, 0.95))
    cover = float(rng.uniform(0.0, 0.35)) * float(rng.random() < 0.6)
    cloud = np.full(3, rng.uniform(0.95, 1.0))
    if overcast:
        grey = rng.uniform(0.82, 0.95)  # overcast skies are bright: the camera exposes for the street
        zenith = np.full(3, grey * 0.9) + np.array([0.0, 0.01, 0.03])
        horizon = np.full(3, grey) + np.array([0.0, 0.01, 0.02])
        cloud = np.full(3, grey * rng.uniform(0.95, 1.05))
        cover = float(rng.uniform(0.7, 0.9))
        sun_rgb = sun_rgb * rng.uniform(0.1, 0.3)
    sky_rgb = 0.5 * (zenith + horizon) / max(0.5 * (zenith + horizon).mean(), 1e-3) * (0.75 if overcast else 0.6)
    haze = horizon * rng.uniform(0.95, 1.02)
    return Environment(
        sun=sun, sun_rgb=sun_rgb, sky_rgb=sky_rgb, sky_horizon=horizon, sky_zenith=zenith, cloud_cover=cover,
        cloud_scale=float(rng.uniform(300.0, 900.0)), cloud_rgb=cloud,
        haze_dist=float(rng.uniform(250.0, 700.0) * (0.5 if overcast else 1.0)), haze_rgb=haze,
        offset=rng.uniform(-5000.0, 5000.0, 2), asphalt_rgb=_hsv(rng.uniform(0.55, 0.65), rng.uniform(0.0, 0.08),
                                                                 rng.uniform(0.3, 0.42)),
        wear=float(rng.uniform(0.1, 1.0)), patches=float(rng.uniform(0.0, 0.35)),
        paving_tint=_hsv(rng.uniform(0.0, 0.12), rng.uniform(0.05, 0.25), 1.0) * rng.uniform(0.95, 1.15),
        paver=float(rng.choice([0.3, 0.5, 0.6, 1.0, 1.5])),
        grass_dry=float(rng.uniform(0.0, 0.8)))


# Base colours for the generator (world.py): what streets are made of, not a uniform hue wheel.
def draw_facade(rng: np.random.Generator) -> tuple[int, list[float]]:
    """(material, base albedo) of a building's facade: plaster, brick, concrete or a glass curtain wall."""
    r = rng.random()
    if r < 0.45:  # plaster: whites, creams, ochres, some pastels
        if rng.random() < 0.75:
            col = _hsv(rng.uniform(0.04, 0.15), rng.uniform(0.04, 0.35), rng.uniform(0.6, 0.92))
        else:
            col = _hsv(rng.random(), rng.uniform(0.12, 0.3), rng.uniform(0.6, 0.85))
        return FACADE_PLASTER, col.tolist()
    if r < 0.7:  # brick: red-browns to yellow-browns
        return FACADE_BRICK, _hsv(rng.uniform(0.0, 0.08), rng.uniform(0.4, 0.7), rng.uniform(0.32, 0.6)).tolist()
    if r < 0.9:  # concrete / stone: greys, slightly warm or cold
        return FACADE_CONCRETE, _hsv(rng.uniform(0.05, 0.6), rng.uniform(0.0, 0.07), rng.uniform(0.42, 0.75)).tolist()
    return FACADE_GLASS, _hsv(rng.uniform(0.45, 0.62), rng.uniform(0.1, 0.35), rng.uniform(0.2, 0.4)).tolist()


def draw_car_paint(rng: np.random.Generator) -> list[float]:
    """A car colour with the street's frequencies: mostly white, black, grey and silver, some blue and red."""
    r = rng.random()
    if r < 0.25:
        return _hsv(rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.04), rng.uniform(0.82, 0.95)).tolist()  # white
    if r < 0.45:
        return _hsv(rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.1), rng.uniform(0.04, 0.12)).tolist()  # black
    if r < 0.7:
        return _hsv(rng.uniform(0.5, 0.65), rng.uniform(0.0, 0.08), rng.uniform(0.35, 0.7)).tolist()  # grey, silver
    if r < 0.82:
        return _hsv(rng.uniform(0.58, 0.66), rng.uniform(0.5, 0.85), rng.uniform(0.25, 0.6)).tolist()  # blue
    if r < 0.92:
        return _hsv(rng.uniform(-0.02, 0.02), rng.uniform(0.6, 0.9), rng.uniform(0.4, 0.75)).tolist()  # red
    return _hsv(rng.random(), rng.uniform(0.3, 0.8), rng.uniform(0.3, 0.7)).tolist()  # anything else


def draw_clothes(rng: np.random.Generator) -> list[float]:
    """Clothes: mostly dark and muted (jackets, jeans), sometimes a bright colour."""
    if rng.random() < 0.8:
        return _hsv(rng.random(), rng.uniform(0.0, 0.45), rng.uniform(0.08, 0.45)).tolist()
    return _hsv(rng.random(), rng.uniform(0.4, 0.9), rng.uniform(0.4, 0.85)).tolist()


def draw_skin(rng: np.random.Generator) -> list[float]:
    return _hsv(rng.uniform(0.04, 0.08), rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.9)).tolist()


def draw_foliage(rng: np.random.Generator) -> list[float]:
    """Leaves: yellow-greens to blue-greens, dark (canopies are dim inside)."""
    return _hsv(rng.uniform(0.22, 0.33), rng.uniform(0.5, 0.8), rng.uniform(0.25, 0.5)).tolist()


# ---------------------------------------------------------------------------------------------- noise
# Noise comes from a few fixed, periodic 256 x 256 texel tables looked up with grid_sample (one C++ call per
# lookup) instead of hashing every lattice corner: the noise is most of the shading's cost. Each table has 4
# channels: smooth value noise with lattice spacings of 1, 4, 16 and 64 texels, so one lookup at `scale`
# metres per texel gives four octaves (scale, 4 scale, 16 scale, 64 scale). One extra row and column repeat
# the first (periodic bilinear lookups).
_TABLE_COUNT, _PERIOD, _OCTAVES = 8, 256, (1, 4, 16, 64)
_tables: torch.Tensor | None = None


def _bake(rng: np.random.Generator, spacing: int) -> np.ndarray:
    """(256, 256) periodic value noise with a lattice every `spacing` texels (smoothstep interpolation)."""
    n = _PERIOD // spacing
    lat = rng.random((n, n), dtype=np.float32)
    if spacing == 1:
        return lat
    f = (np.arange(_PERIOD, dtype=np.float32) % spacing) / spacing
    f = f * f * (3 - 2 * f)
    i0 = np.arange(_PERIOD) // spacing
    i1 = (i0 + 1) % n
    rows0, rows1 = lat[i0], lat[i1]  # (256, n): the lattice rows at each texel row
    top = rows0[:, i0] * (1 - f) + rows0[:, i1] * f
    bottom = rows1[:, i0] * (1 - f) + rows1[:, i1] * f
    return top * (1 - f[:, None]) + bottom * f[:, None]


def _lattice() -> torch.Tensor:
    """(8, 4, 257, 257) float32 tables in [0, 1), the same on every machine (numpy's PCG64, fixed seed)."""
    global _tables
    if _tables is None:
        rng = np.random.default_rng(20261203)
        r = np.stack([np.stack([_bake(rng, s) for s in _OCTAVES]) for _ in range(_TABLE_COUNT)])
        r = np.concatenate([r, r[:, :, :1]], 2)
        r = np.concatenate([r, r[:, :, :, :1]], 3)
        _tables = torch.from_numpy(np.ascontiguousarray(r))
    return _tables


def _hash2(ix: torch.Tensor, iy: torch.Tensor, salt: int) -> torch.Tensor:
    """A value in [0, 1) per integer lattice point (ix, iy) (any int tensors); period 256 in each."""
    tab = _lattice()[salt % _TABLE_COUNT, 0].reshape(-1)
    return tab[((iy + 7 * salt) & (_PERIOD - 1)) * (_PERIOD + 1) + ((ix + 13 * salt) & (_PERIOD - 1))]


def noise4(u: torch.Tensor, v: torch.Tensor, scale: float, salt: int = 0) -> torch.Tensor:
    """(R, 4) smooth value noise in [0, 1] at lattice spacings scale x (1, 4, 16, 64) metres (periodic over
    256 scale). The smoothstep is applied to the fractional texel coordinate before the bilinear lookup:
    the finest octave is then exactly value noise with smoothstep weights."""
    shift = (salt // _TABLE_COUNT) * 37.17 + 0.5  # salts sharing a table read it far apart
    u = torch.remainder(u * (1.0 / scale) + shift, float(_PERIOD))
    v = torch.remainder(v * (1.0 / scale) + 0.61 * shift, float(_PERIOD))
    iu, iv = torch.floor(u), torch.floor(v)
    fu, fv = u - iu, v - iv
    u = iu + fu * fu * (3 - 2 * fu)
    v = iv + fv * fv * (3 - 2 * fv)
    grid = torch.stack([u, v], -1).mul_(2.0 / _PERIOD).sub_(1.0).reshape(1, 1, -1, 2)
    tab = _lattice()[salt % _TABLE_COUNT][None]
    out = torch.nn.functional.grid_sample(tab, grid, mode="bilinear", align_corners=True)
    return out.reshape(4, -1).T


def value_noise(u: torch.Tensor, v: torch.Tensor, scale: float, salt: int = 0) -> torch.Tensor:
    """(R,) smooth value noise in [0, 1] on a lattice of `scale` metres (the finest octave of `noise4`)."""
    return noise4(u, v, scale, salt)[:, 0]


def fbm(u: torch.Tensor, v: torch.Tensor, scale: float, salt: int = 0) -> torch.Tensor:
    """(R,) fractal noise in [0, 1] with features from `scale` down to scale / 16 (three octaves of noise4)."""
    n = noise4(u, v, scale / 64, salt)
    return n[:, 3] * 0.6 + n[:, 2] * 0.28 + n[:, 1] * 0.12


def cell_hash(u: torch.Tensor, v: torch.Tensor, su: float, sv: float, salt: int) -> torch.Tensor:
    """A value in [0, 1] per cell of a (su x sv) grid: per-tile, per-window, per-patch variation."""
    return _hash2(torch.floor(u / su).long(), torch.floor(v / sv).long(), salt)


def _smoothstep(e0: float, e1: float, x: torch.Tensor) -> torch.Tensor:
    t = ((x - e0) / (e1 - e0)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def _variants(base: torch.Tensor) -> torch.Tensor:
    """(R, 8) values in [0, 1) fixed per primitive colour: per-building window layouts etc. (primitives carry
    no id of their own; their base albedo is drawn per primitive, and parts of one object share it).
    One index per point, gathered from all eight tables at once."""
    q = (base * 4095).round().long()
    idx = (q[:, 1] & (_PERIOD - 1)) * (_PERIOD + 1) + ((q[:, 0] * 7 + q[:, 2]) & (_PERIOD - 1))
    return _lattice()[:, 0].reshape(_TABLE_COUNT, -1).T[idx]


def _t(x: np.ndarray | list[float]) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float32)


# ---------------------------------------------------------------------------------------------- surfaces
def _face_coords(p: torch.Tensor, normal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(u along the face, v up, dominant normal axis) of surface points (exact on axis-aligned faces)."""
    axis = normal.abs().argmax(dim=1)
    return torch.where(axis == 0, p[:, 1], p[:, 0]), p[:, 2], axis


@dataclass
class _Surf:
    """The points of one material group: base albedo, town-frame point, normal, distance to the camera."""

    material: torch.Tensor
    base: torch.Tensor
    p: torch.Tensor
    normal: torch.Tensor
    dist: torch.Tensor
    variants: torch.Tensor | None = None  # (R, 8) per-primitive values, where a texture needs them


def _ground(env: Environment, s: _Surf) -> tuple[torch.Tensor, torch.Tensor]:
    """Asphalt (grain, blotches, oil strip and wheel tracks, repair patches, cracks), worn lane paint, grass."""
    x, y = s.p[:, 0] + float(env.offset[0]), s.p[:, 1] + float(env.offset[1])
    ay = s.p[:, 1].abs()
    near = 1 - _smoothstep(12.0, 30.0, s.dist)  # fine detail fades out where a pixel spans many cells
    n = noise4(x, y, 0.15, 11)  # 0.15, 0.6, 2.4, 9.6 m
    fine, mid, blot, large = n[:, 0], n[:, 1], n[:, 2], n[:, 3]
    tone = 0.72 + 0.2 * mid + 0.14 * blot + 0.1 * large + 0.12 * (fine - 0.5) * near
    # Lanes are 3.5 m wide, centred at +-1.75 and +-5.25: a dark oil strip in the middle, polished wheel tracks.
    d = torch.remainder(ay, 3.5) - 1.75
    oil = torch.exp(-(d * (1 / 0.3)) ** 2) * (0.04 + 0.06 * blot) * env.wear
    track = torch.exp(-((d.abs() - 0.85) * (1 / 0.22)) ** 2) * (0.07 * env.wear)
    tone = tone * (1 - oil + track)
    # Repair patches: a rectangle in some 6 m x 3.5 m cells, fresher (darker) asphalt with sharp edges.
    cu, cv = torch.floor(x * (1 / 6.0)), torch.floor(ay * (1 / 3.5))
    ci, cj = cu.long(), cv.long()
    fx, fy = x * (1 / 6.0) - cu, ay * (1 / 3.5) - cv
    h = _hash2(ci, cj, 14)
    patch = (h < env.patches) & (fx > 0.1 + 0.3 * _hash2(ci, cj, 15)) & (fx < 0.55 + 0.4 * _hash2(ci, cj, 16)) \
        & (fy > 0.15) & (fy < 0.85) & (ay < 7.0)
    tone = torch.where(patch, tone * (0.88 + 0.3 * (h - env.patches / 2)), tone)
    # Cracks: thin dark lines along an iso-contour of a noise field, where the road is worn.
    c = noise4(x, y, 0.65, 18)  # 0.65, 2.6, 10.4 m
    crack = ((c[:, 1] - 0.5).abs() < 0.006) & (c[:, 2] < env.wear * 0.7) & (near > 0.3)
    tone = torch.where(crack, tone * 0.75, tone)
    asphalt = tone[:, None] * _t(env.asphalt_rgb)
    m = s.material
    col = asphalt
    paint = (m == LANE_YELLOW) | (m == LANE_WHITE)
    if paint.any():  # lane paint over asphalt, faded in worn places
        fade = (env.wear * 0.7 * _smoothstep(0.3, 0.8, c[:, 0]))[:, None]
        pc = torch.where((m == LANE_YELLOW)[:, None], _t([0.8, 0.64, 0.18]), _t([0.86, 0.86, 0.84]))
        col = torch.where(paint[:, None], pc * (0.9 + 0.1 * mid)[:, None] * (1 - fade) + asphalt * fade, col)
    grass = m == GRASS
    if grass.any():  # green to dry, clumps and grain
        dry = (env.grass_dry * (0.5 + blot))[:, None].clamp(0, 1)
        gc = (_t([0.2, 0.34, 0.1]) * (1 - dry) + _t([0.42, 0.38, 0.22]) * dry) \
            * (0.75 + 0.35 * mid + 0.25 * (fine - 0.5) * near)[:, None]
        col = torch.where(grass[:, None], gc, col)
    return col, torch.zeros(len(col))


def _windows(s: _Surf, u: torch.Tensor, v: torch.Tensor, side: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The building's window grid (layout from its variants): (glass, frame, door, per-window value)."""
    var = s.variants
    storey = 2.9 + 0.9 * var[:, 0]
    bay = 1.9 + 1.7 * var[:, 1]
    win_w = bay * (0.35 + 0.3 * var[:, 2])
    win_h = storey * (0.42 + 0.2 * var[:, 3])
    ground = storey * 1.2
    shop = var[:, 4] < 0.5
    uu = u + bay * var[:, 5]
    col_i = torch.floor(uu / bay)
    fu = (uu - col_i * bay - bay / 2).abs()  # distance from the bay's centre
    row = torch.floor((v - ground) / storey)
    fv = v - ground - row * storey - storey * 0.33  # window bottom at a third of the storey
    upper = side & (v > ground)
    win = upper & (fu < win_w / 2) & (fv > 0) & (fv < win_h)
    frame = upper & ~win & (fu < win_w / 2 + 0.1) & (fv > -0.12) & (fv < win_h + 0.1)
    lower = side & ~upper
    shop_win = lower & shop & (v > 0.7) & (v < ground - 0.7) & (fu < win_w / 2 + 0.15)
    ci = col_i.long()
    door = lower & ~shop & (fu < 0.55) & (v < 2.2) & (_hash2(ci, torch.zeros_like(ci), 37) < 0.35)
    cell = _hash2(ci, row.long(), 38)
    return win | shop_win, frame, door, cell


def _facade(env: Environment, s: _Surf) -> tuple[torch.Tensor, torch.Tensor]:
    """Plaster, brick, concrete and curtain-wall facades with windows, frames, shop fronts, doors and grime."""
    u, v, axis = _face_coords(s.p, s.normal)
    side = axis != 2
    m = s.material
    s.variants = _variants(s.base)
    n = noise4(u * 2.0, v * 0.5, 0.5, 41)  # streaky: 0.25 x 1 m, 1 x 4 m, 4 x 16 m, 16 x 64 m
    grime = 1 - 0.25 * (1 - _smoothstep(0.0, 0.6, v))  # dirt band at the foot of the wall
    grain = noise4(u, v, 0.33, 46)[:, 0]  # the mottle of render and weathering
    tone = (0.84 + 0.12 * grain + 0.06 * n[:, 1] + 0.08 * n[:, 2]) * grime
    col = s.base * tone[:, None]
    brick = m == FACADE_BRICK
    if brick.any():  # per-brick tone and mortar joints, faded out beyond a few metres (they would alias)
        near = 1 - _smoothstep(3.0, 8.0, s.dist[brick])
        ub, vb = u[brick], v[brick]
        course = torch.floor(vb * (1 / 0.075))
        bu = ub + 0.12 * torch.remainder(course, 2)
        bt = 1 + 0.3 * (_hash2(torch.floor(bu * (1 / 0.24)).long(), course.long(), 43) - 0.5) * near
        mortar = ((vb - course * 0.075 < 0.012) | (torch.remainder(bu, 0.24) < 0.012)).float() * near
        cb = col[brick]
        col[brick] = cb * (bt * (1 - mortar))[:, None] + _t([0.62, 0.6, 0.56]) * mortar[:, None]
    concrete = (m == FACADE_CONCRETE) & side
    if concrete.any():  # panel joints on a storey x bay grid
        joint = (torch.remainder(v[concrete], 3.0) < 0.04) | (torch.remainder(u[concrete], 2.4) < 0.04)
        col[concrete] = torch.where((joint & (s.dist[concrete] < 25.0))[:, None], col[concrete] * 0.7,
                                    col[concrete])
    win, frame, door, cell = _windows(s, u, v, side)
    # Glass: dark interiors, some with light blinds or lit warmly; reflective (the gloss).
    interior = _t([0.05, 0.06, 0.07]) + ((cell > 0.75).float() * cell)[:, None] * _t([0.35, 0.33, 0.3]) \
        + (cell < 0.08).float()[:, None] * _t([0.45, 0.35, 0.2])
    # Frames a little lighter or darker than the wall (white frames in rows read as a train's windows).
    frame_col = s.base * torch.where(s.variants[:, 6] < 0.5, 1.15, 0.75)[:, None]
    col = torch.where(frame[:, None], frame_col, col)
    col = torch.where(win[:, None], interior, col)
    col = torch.where(door[:, None], _t([0.2, 0.14, 0.1]) * (0.8 + 0.4 * s.variants[:, 7])[:, None], col)
    gloss = win.float() * 0.12
    cw = (m == FACADE_GLASS) & side
    if cw.any():  # curtain wall: panes between thin mullions, strongly reflective
        uc, vc = u[cw], v[cw]
        mull = (torch.remainder(uc, 1.5) < 0.08) | (torch.remainder(vc, 3.4) < 0.15)
        pane = s.base[cw] * (0.8 + 0.3 * cell_hash(uc, vc, 1.5, 3.4, 44))[:, None]
        col[cw] = torch.where(mull[:, None], _t([0.55, 0.56, 0.58]), pane)
        gloss[cw] = torch.where(mull, 0.0, 0.25)
    roof = axis == 2
    if roof.any():  # roofs (seen from high cameras, rarely): grey tar and gravel
        col[roof] = _t([0.3, 0.29, 0.28]) * (0.8 + 0.4 * n[roof, 1])[:, None]
    return col, gloss


def _paving(env: Environment, s: _Surf) -> tuple[torch.Tensor, torch.Tensor]:
    """Paving slabs (scene's size and tint), per-slab tone, dark joints, dirt."""
    x, y = s.p[:, 0], s.p[:, 1]
    near = 1 - _smoothstep(8.0, 22.0, s.dist)
    a = env.paver
    slab = 0.95 + 0.18 * (cell_hash(x, y, a, a, 51) - 0.5) * near
    joint = ((torch.remainder(x, a) < 0.025) | (torch.remainder(y, a) < 0.025)) & (near > 0.3)
    dirt = 0.8 + 0.3 * value_noise(x, y, 0.75, 52)
    # The kerb side (vertical faces) is a little darker than the top.
    shade_ = torch.where(joint, 0.7, 1.0) * torch.where(s.normal[:, 2].abs() < 0.5, 0.85, 1.0)
    return s.base * _t(env.paving_tint) * (slab * dirt * shade_)[:, None], torch.zeros(len(x))


def _leafy(env: Environment, s: _Surf) -> tuple[torch.Tensor, torch.Tensor]:
    """Canopies and hedges: clumps, dark gaps between them, hue variation; skin: a faint mottle."""
    # Three axis-plane noises summed: a solid texture on curved canopies (no stripes along one direction).
    x, y, z = s.p[:, 0], s.p[:, 1], s.p[:, 2]
    hedge = (s.material == HEDGE)[:, None]
    a = torch.where(hedge, noise4(x, y, 0.06, 61), noise4(x, y, 0.12, 61)) if hedge.any() else noise4(x, y, 0.12, 61)
    b = noise4(y, z, 0.12, 64)
    c = noise4(z, x, 0.12, 65)
    grain = (a[:, 0] + b[:, 0] + c[:, 0]) / 3  # 0.12 m
    clump = (a[:, 1] + b[:, 1] + c[:, 1]) / 3  # 0.5 m
    # Leaves: strong fine-scale contrast (single leaves and the gaps between them), darker clumps.
    leaf = 0.7 + 0.4 * noise4(x + 1.7 * z, y - z, 0.35, 7)[:, 0] + 0.9 * (grain - 0.5) + 0.4 * (clump - 0.5)
    hue = ((a[:, 2] + b[:, 2]) / 2)[:, None]  # 2 m
    tint = _t([1.05, 1.03, 0.85]) * hue + _t([0.95, 1.0, 1.08]) * (1 - hue)
    col = s.base * tint * leaf[:, None]
    skin = s.material == SKIN
    col = torch.where(skin[:, None], s.base * (0.9 + 0.15 * grain)[:, None], col)
    return col, torch.zeros(len(col))


# Specular reflectance at normal incidence (the Fresnel term rises to grazing angles).
_GLOSS = torch.zeros(len(MATERIALS))
for _m, _g in {CAR_PAINT: 0.06, GLASS: 0.15, METAL: 0.05, SIGN: 0.03, CAR_CABIN: 0.06}.items():
    _GLOSS[_m] = _g
# Mottle of plain materials: (mean, amplitude, octave of noise4 at 0.125 m: 0.125, 0.5, 2, 8 m).
_MOTTLE = torch.tensor([[0.92, 0.16, 1]] * len(MATERIALS))
for _m, _v in {BARK: (0.7, 0.5, 0), CLOTH: (0.85, 0.25, 0), CAR_PAINT: (0.97, 0.06, 2), KERB: (0.85, 0.2, 2),
               TYRE: (1.0, 0.0, 0), GLASS: (1.0, 0.0, 0)}.items():
    _MOTTLE[_m] = torch.tensor(_v)
_FIXED = {TYRE: (0.05, 0.05, 0.055), GLASS: (0.05, 0.06, 0.07)}  # colours that do not come from the base


def _plain(env: Environment, s: _Surf) -> tuple[torch.Tensor, torch.Tensor]:
    """Materials that are their base colour with a mottle: car paint, cloth, metal, bark, tyres, kerbs, signs."""
    u, v, axis = _face_coords(s.p, s.normal)
    m = s.material
    n = noise4(u, v, 0.125, 4)
    mot = _MOTTLE[m]
    mottle = mot[:, 0] + mot[:, 1] * n.gather(1, mot[:, 2:].long()).squeeze(1)
    col = s.base * mottle[:, None]
    for mid, rgb in _FIXED.items():
        col = torch.where((m == mid)[:, None], _t(rgb), col)
    gloss = _GLOSS[m]
    # A cabin: the roof in the body colour, the sides glass.
    cabin_side = (m == CAR_CABIN) & (axis != 2)
    col = torch.where(cabin_side[:, None], _t([0.05, 0.06, 0.07]), col)
    gloss = torch.where(cabin_side, 0.15, gloss)
    return col, gloss


_SURFACES = (_ground, _facade, _paving, _leafy, _plain)
# Material id -> index into _SURFACES (-1: keep the base albedo).
_GROUP = torch.full((len(MATERIALS),), -1, dtype=torch.long)
for _i, _ids in enumerate(((ASPHALT, GRASS, LANE_YELLOW, LANE_WHITE),
                           (FACADE_PLASTER, FACADE_BRICK, FACADE_CONCRETE, FACADE_GLASS),
                           (PAVING,), (LEAVES, HEDGE, SKIN),
                           (KERB, GLASS, CAR_PAINT, CAR_CABIN, TYRE, BARK, METAL, CLOTH, SIGN))):
    _GROUP[list(_ids)] = _i


def surface(env: Environment, material: torch.Tensor, base: torch.Tensor, point: torch.Tensor,
            normal: torch.Tensor, dist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(albedo (R, 3), gloss (R,)) of surface points: material (R,) ids, base albedo (R, 3), town-frame points
    and normals (R, 3), distance to the camera (R,) (fine patterns fade out with distance: no aliasing).
    Each material's texture is evaluated only on its own points; unknown ids keep their base albedo."""
    out = base.clone()
    gloss = torch.zeros(len(base))
    group = _GROUP[material.clamp(0, len(MATERIALS) - 1)]
    for i, fn in enumerate(_SURFACES):
        idx = torch.nonzero(group == i).squeeze(1)
        if not idx.numel():
            continue
        sel = [x.index_select(0, idx) for x in (material, base, point, normal, dist)]
        col, g = fn(env, _Surf(*sel))
        out.index_copy_(0, idx, col)
        gloss.index_copy_(0, idx, g.to(gloss.dtype))
    return out.clamp_(0, 1), gloss


# ---------------------------------------------------------------------------------------------- light
def sky_colour(env: Environment, unit: torch.Tensor, clouds: bool = True) -> torch.Tensor:
    """(R, 3) the sky seen along unit directions: gradient, sun glow and disc, clouds; haze colour below."""
    dz = unit[:, 2]
    elev = dz.clamp(min=0.0) ** 0.6
    horizon, zenith = _t(env.sky_horizon), _t(env.sky_zenith)
    sky = horizon + (zenith - horizon) * elev[:, None]
    sun = _t(env.sun)
    cosg = (unit @ sun).clamp(min=0.0)
    c8 = cosg.square().square().square()
    c128 = c8.square().square().square().square()
    clear = 1 - 0.8 * env.cloud_cover
    sun_rgb = _t(env.sun_rgb) / float(max(env.sun_rgb.max(), 1e-3))
    sky = sky + sun_rgb * ((0.06 * c8 + 0.35 * c128) * clear)[:, None]  # a faint glow (a wide one reads as a wall)
    if clouds and env.cloud_cover > 0:
        up = torch.nonzero(dz > 0.005).squeeze(1)
        if up.numel():
            d = unit[up]
            k = CLOUD_HEIGHT / d[:, 2]
            cx, cy = d[:, 0] * k + float(env.offset[0]), d[:, 1] * k + float(env.offset[1])
            n = noise4(cx, cy, env.cloud_scale / 64, 81)
            dens = n[:, 3] * 0.68 + n[:, 2] * 0.32
            edge = 1 - env.cloud_cover
            c = _smoothstep(edge - 0.1, edge + 0.15, dens)
            # Near the horizon the layer's cells shrink towards a pixel: fade to the mean cover (no sparkle).
            far = _smoothstep(0.03, 0.3, d[:, 2])
            c = c * far + env.cloud_cover * 0.7 * (1 - far)
            # Thicker parts darker underneath; the side towards the sun brighter.
            lit = (0.95 + 0.1 * (n[:, 3] - n[:, 2]) * far + 0.08 * c8[up].sqrt()) \
                * (1 - 0.08 * _smoothstep(0.65, 1.0, dens))
            cloud = _t(env.cloud_rgb) * lit[:, None]
            sky[up] = sky[up] + (cloud - sky[up]) * c[:, None]
    return torch.where((dz > 0)[:, None], sky, _t(env.haze_rgb))


def shade(town: Town, hits: Hits, dirs: torch.Tensor, lit: torch.Tensor | None = None) -> torch.Tensor:
    """(R, 3) colours in [0, 1] of rays `dirs` (R, 3) with their hits.

    Sky light + the sun (times `lit` (R,) bool, which hit points see the sun; None: all) on the textured
    albedo, a sky reflection on glossy surfaces, haze with distance; the sky where nothing is hit.
    Computed on whole arrays (sky rays have material 0: no texture, their colour replaced at the end).
    """
    env: Environment = getattr(town, "env", None) or Environment(sun=np.asarray(town.sun, float))
    norm = dirs.norm(dim=1)
    hit = hits.kind > 0
    dist = torch.where(hit, hits.t, 0.0) * norm
    n = hits.normal
    albedo, gloss = surface(env, torch.where(hit, hits.material, 0), hits.albedo, hits.point, n, dist)
    sun = _t(env.sun)
    lambert = (n @ sun).clamp_(min=0.0)
    if lit is not None:
        lambert = lambert * lit.to(lambert.dtype)
    # Sky light, most from above; vertical and downward faces also get light bounced off the street.
    nz = n[:, 2:3]
    light = ((0.75 + 0.25 * nz) * _t(env.sky_rgb) + 0.12 * (1 - nz) + lambert[:, None] * _t(env.sun_rgb)) * EXPOSURE
    col = albedo.mul_(light)
    g = torch.nonzero(gloss > 0).squeeze(1)
    if g.numel():
        ng, ug = n[g], dirs[g] / norm[g, None]
        cos_i = -(ug * ng).sum(1)
        refl = ug + 2 * cos_i[:, None] * ng
        # Schlick's Fresnel term, halved at grazing angles: street surfaces are dusty, not mirrors.
        fres = gloss[g] + (1 - gloss[g]) * (1 - cos_i.clamp(0, 1)) ** 5 * 0.5
        # Reflections below the horizon see the street: a dim grey instead of the sky.
        down = _smoothstep(-0.05, 0.05, refl[:, 2])[:, None]
        env_col = sky_colour(env, refl, clouds=False) * down + _t([0.18, 0.18, 0.19]) * (1 - down)
        spec = (refl @ sun).clamp(min=0.0) ** 300 * 4.0 * (lambert[g] > 0).float()
        col[g] = col[g] * (1 - fres[:, None]) + fres[:, None] * (env_col + spec[:, None] * _t(env.sun_rgb))
    haze = 1 - torch.exp(dist * (-1.0 / env.haze_dist))
    c4 = ((dirs @ sun) / norm).clamp_(min=0.0).square_().square_()
    scatter = _t(env.haze_rgb) * (1 + 0.15 * c4)[:, None]
    col += (scatter - col) * haze[:, None]
    sky = torch.nonzero(~hit).squeeze(1)
    if sky.numel():
        col.index_copy_(0, sky, sky_colour(env, dirs.index_select(0, sky) / norm.index_select(0, sky)[:, None]))
    return col.clamp_(0, 1)
