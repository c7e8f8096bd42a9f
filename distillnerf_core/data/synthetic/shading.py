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
    overcast = rng.random() < 0.2
    elev = math.radians(rng.uniform(12.0, 65.0))
    az = rng.uniform(-math.pi, math.pi)
    sun = np.array([math.cos(elev) * math.cos(az), math.cos(elev) * math.sin(az), math.sin(elev)])
    # Low sun: warmer and weaker direct light (a longer path through the air).
    warm = math.exp(-(elev - math.radians(12)) / math.radians(18))
    sun_rgb = np.array([1.0, 0.95 - 0.12 * warm, 0.88 - 0.25 * warm]) * rng.uniform(0.9, 1.1)
    zenith = _hsv(rng.uniform(0.57, 0.62), rng.uniform(0.45, 0.65), rng.uniform(0.75, 0.92))
    horizon = _hsv(rng.uniform(0.55, 0.62), rng.uniform(0.08, 0.2), rng.uniform(0.85, 0.95))
    cover = float(rng.uniform(0.0, 0.65))
    cloud = np.full(3, rng.uniform(0.9, 1.0))
    if overcast:
        grey = rng.uniform(0.62, 0.82)
        zenith = np.full(3, grey * 0.9) + np.array([0.0, 0.01, 0.03])
        horizon = np.full(3, grey) + np.array([0.0, 0.01, 0.02])
        cloud = np.full(3, grey * rng.uniform(0.95, 1.05))
        cover = float(rng.uniform(0.85, 1.0))
        sun_rgb = sun_rgb * rng.uniform(0.1, 0.3)
    sky_rgb = 0.5 * (zenith + horizon) / max(0.5 * (zenith + horizon).mean(), 1e-3) * (0.75 if overcast else 0.6)
    haze = horizon * rng.uniform(0.95, 1.02)
    return Environment(
        sun=sun, sun_rgb=sun_rgb, sky_rgb=sky_rgb, sky_horizon=horizon, sky_zenith=zenith, cloud_cover=cover,
        cloud_scale=float(rng.uniform(300.0, 900.0)), cloud_rgb=cloud,
        haze_dist=float(rng.uniform(250.0, 700.0) * (0.5 if overcast else 1.0)), haze_rgb=haze,
        offset=rng.uniform(-5000.0, 5000.0, 2), asphalt_rgb=_hsv(rng.uniform(0.55, 0.65), rng.uniform(0.0, 0.08),
                                                                 rng.uniform(0.22, 0.36)),
        wear=float(rng.uniform(0.1, 1.0)), patches=float(rng.uniform(0.0, 0.35)),
        paving_tint=_hsv(rng.uniform(0.0, 0.12), rng.uniform(0.0, 0.15), 1.0) * rng.uniform(0.85, 1.1),
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
    return _hsv(rng.uniform(0.18, 0.36), rng.uniform(0.4, 0.8), rng.uniform(0.22, 0.5)).tolist()


# ---------------------------------------------------------------------------------------------- noise
def _hash2(ix: torch.Tensor, iy: torch.Tensor, salt: int) -> torch.Tensor:
    h = (ix * 73856093) ^ (iy * 19349663) ^ (salt * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFF).float() / 65535.0


def value_noise(u: torch.Tensor, v: torch.Tensor, scale: float, salt: int = 0) -> torch.Tensor:
    """Smooth value noise in [0, 1] on a lattice of `scale` metres (bilinear, smoothstep)."""
    u, v = u / scale, v / scale
    iu, iv = torch.floor(u), torch.floor(v)
    fu, fv = u - iu, v - iv
    fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
    iu, iv = iu.long(), iv.long()
    a, b = _hash2(iu, iv, salt), _hash2(iu + 1, iv, salt)
    c, d = _hash2(iu, iv + 1, salt), _hash2(iu + 1, iv + 1, salt)
    return (a * (1 - fu) + b * fu) * (1 - fv) + (c * (1 - fu) + d * fu) * fv


def fbm(u: torch.Tensor, v: torch.Tensor, scale: float, octaves: int, salt: int) -> torch.Tensor:
    """Fractal value noise in [0, 1]: `octaves` layers, each half the scale and half the weight."""
    total, weight, norm = torch.zeros_like(u), 1.0, 0.0
    for k in range(octaves):
        total = total + weight * value_noise(u, v, scale / 2 ** k, salt + 17 * k)
        norm += weight
        weight *= 0.5
    return total / norm


def cell_hash(u: torch.Tensor, v: torch.Tensor, su: float, sv: float, salt: int) -> torch.Tensor:
    """A value in [0, 1] per cell of a (su x sv) grid: per-tile, per-window, per-patch variation."""
    return _hash2(torch.floor(u / su).long(), torch.floor(v / sv).long(), salt)


def _smoothstep(e0: float, e1: float, x: torch.Tensor) -> torch.Tensor:
    t = ((x - e0) / (e1 - e0)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def _variant(base: torch.Tensor, salt: int) -> torch.Tensor:
    """(R,) a value in [0, 1] fixed per primitive colour: per-building window layouts etc. (primitives carry
    no id of their own; their base albedo is drawn per primitive, and parts of one object share it)."""
    q = (base * 4095).round().long()
    return _hash2(q[:, 0] * 4096 + q[:, 2], q[:, 1], salt)


def _t(x: np.ndarray | list[float]) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float32)


# ---------------------------------------------------------------------------------------------- surfaces
def _isin(material: torch.Tensor, ids: tuple[int, ...]) -> torch.Tensor:
    return torch.isin(material, torch.tensor(ids, dtype=material.dtype))


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


def _ground(env: Environment, s: _Surf) -> tuple[torch.Tensor, torch.Tensor]:
    """Asphalt (grain, blotches, oil strip and wheel tracks, repair patches, cracks), worn lane paint, grass."""
    off = _t(env.offset)
    x, y = s.p[:, 0] + off[0], s.p[:, 1] + off[1]
    ay = s.p[:, 1].abs()
    near = 1 - _smoothstep(12.0, 30.0, s.dist)  # fine detail fades out where a pixel spans many cells
    fine = value_noise(x, y, 0.12, 11)
    mid = value_noise(x, y, 1.3, 12)
    large = value_noise(x, y, 14.0, 13)
    tone = 0.8 + 0.1 * mid + 0.18 * large + 0.12 * (fine - 0.5) * near
    # Lanes are 3.5 m wide, centred at +-1.75 and +-5.25: a dark oil strip in the middle, polished wheel tracks.
    d = torch.remainder(ay, 3.5) - 1.75
    oil = torch.exp(-(d / 0.3) ** 2) * (0.1 + 0.15 * mid) * env.wear
    track = torch.exp(-((d.abs() - 0.85) / 0.22) ** 2) * 0.07 * env.wear
    tone = tone * (1 - oil + track)
    # Repair patches: a rectangle in some 6 m x 3.5 m cells, fresher (darker) asphalt with sharp edges.
    cu, cv = torch.floor(x / 6.0), torch.floor(ay / 3.5)
    h = _hash2(cu.long(), cv.long(), 14)
    fx, fy = x / 6.0 - cu, ay / 3.5 - cv
    a0, a1 = 0.1 + 0.3 * _hash2(cu.long(), cv.long(), 15), 0.55 + 0.4 * _hash2(cu.long(), cv.long(), 16)
    patch = (h < env.patches) & (fx > a0) & (fx < a1) & (fy > 0.15) & (fy < 0.85) & (ay < 7.0)
    tone = torch.where(patch, tone * (0.72 + 0.1 * _hash2(cu.long(), cv.long(), 17)), tone)
    # Cracks: thin dark lines along an iso-contour of a noise field, where the road is worn.
    crack = ((value_noise(x, y, 2.5, 18) - 0.5).abs() < 0.006) & (value_noise(x, y, 9.0, 19) < env.wear * 0.7)
    tone = torch.where(crack & (near > 0.3), tone * 0.75, tone)
    asphalt = tone[:, None] * _t(env.asphalt_rgb)
    # Lane paint over asphalt, faded in worn places.
    fade = (env.wear * 0.7 * _smoothstep(0.3, 0.8, value_noise(x, y * 4.0, 0.8, 20)))[:, None]
    yellow = _t([0.8, 0.64, 0.18]) * (0.9 + 0.1 * mid)[:, None]
    white = _t([0.86, 0.86, 0.84]) * (0.9 + 0.1 * mid)[:, None]
    # Grass: green to dry, clumps and grain.
    g1 = value_noise(x, y, 2.5, 21)
    dry = (env.grass_dry * (0.5 + g1))[:, None].clamp(0, 1)
    grass = (_t([0.2, 0.34, 0.1]) * (1 - dry) + _t([0.42, 0.38, 0.22]) * dry) \
        * (0.75 + 0.35 * value_noise(x, y, 0.6, 22) + 0.15 * (fine - 0.5) * near)[:, None]
    m = s.material[:, None]
    col = torch.where(m == ASPHALT, asphalt, grass)
    col = torch.where(m == LANE_YELLOW, yellow * (1 - fade) + asphalt * fade, col)
    col = torch.where(m == LANE_WHITE, white * (1 - fade) + asphalt * fade, col)
    return col, torch.zeros(len(col))


def _windows(s: _Surf, u: torch.Tensor, v: torch.Tensor, side: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The building's window grid (layout from its variant): (window, frame, shop window, per-window value)."""
    storey = 2.9 + 0.9 * _variant(s.base, 31)
    bay = 1.9 + 1.7 * _variant(s.base, 32)
    win_w = bay * (0.35 + 0.3 * _variant(s.base, 33))
    win_h = storey * (0.42 + 0.2 * _variant(s.base, 34))
    ground = storey * 1.2
    shop = _variant(s.base, 35) < 0.5
    uu = u + bay * _variant(s.base, 36)
    fu = torch.remainder(uu, bay) - bay / 2  # centred in the bay
    fv = torch.remainder(v - ground, storey) - storey * 0.33  # window bottom at a third of the storey
    upper = side & (v > ground)
    win = upper & (fu.abs() < win_w / 2) & (fv > 0) & (fv < win_h)
    frame = upper & ~win & (fu.abs() < win_w / 2 + 0.1) & (fv > -0.12) & (fv < win_h + 0.1)
    shop_win = side & ~upper & shop & (v > 0.45) & (v < ground - 0.55) & (fu.abs() < bay / 2 - 0.15)
    door = side & ~upper & ~shop & (fu.abs() < 0.55) & (v < 2.2) & (_hash2(torch.floor(uu / bay).long(),
                                                                             torch.zeros_like(fu).long(), 37) < 0.35)
    cell = _hash2(torch.floor(uu / bay).long(), torch.floor((v - ground) / storey).long(), 38)
    return win | shop_win, frame, door, cell


def _facade(env: Environment, s: _Surf) -> tuple[torch.Tensor, torch.Tensor]:
    """Plaster, brick, concrete and curtain-wall facades with windows, frames, shop fronts, doors and grime."""
    u, v, axis = _face_coords(s.p, s.normal)
    side = axis != 2
    near = 1 - _smoothstep(10.0, 25.0, s.dist)
    m = s.material
    stain = value_noise(u * 3.0, v * 0.4, 1.0, 41)  # vertical streaks
    grime = 1 - 0.25 * (1 - _smoothstep(0.0, 0.6, v))  # dirt band at the foot of the wall
    wall = s.base * ((0.88 + 0.2 * value_noise(u, v, 1.5, 42)) * (0.92 + 0.12 * stain) * grime)[:, None]
    # Brick: per-brick tone, mortar joints (faded out with distance where they would alias).
    near = 1 - _smoothstep(3.0, 8.0, s.dist)  # brick courses (7.5 cm) alias beyond a few metres
    course = torch.floor(v / 0.075)
    bu = u + 0.12 * torch.remainder(course, 2)
    brick_tone = 0.85 + 0.3 * _hash2(torch.floor(bu / 0.24).long(), course.long(), 43)
    mortar = ((torch.remainder(v, 0.075) < 0.012) | (torch.remainder(bu, 0.24) < 0.012)).float() * near
    brick = wall * (1 + (brick_tone - 1) * near)[:, None] * (1 - mortar)[:, None] + _t([0.7, 0.68, 0.64]) \
        * (0.85 * mortar)[:, None] + wall * (0.04 * (1 - near))[:, None]
    # Concrete: panel joints on a storey x bay grid.
    near = 1 - _smoothstep(10.0, 25.0, s.dist)
    joint = ((torch.remainder(v, 3.0) < 0.04) | (torch.remainder(u, 2.4) < 0.04)) & (near > 0.2)
    concrete = torch.where(joint[:, None], wall * 0.7, wall)
    col = torch.where((m == FACADE_BRICK)[:, None], brick, wall)
    col = torch.where((m == FACADE_CONCRETE)[:, None], concrete, col)
    win, frame, door, cell = _windows(s, u, v, side)
    # Glass: dark interiors, some with light blinds or lit warmly; reflective (the gloss).
    interior = _t([0.05, 0.06, 0.07]) + (cell > 0.75).float()[:, None] * _t([0.35, 0.33, 0.3]) * cell[:, None] \
        + (cell < 0.08).float()[:, None] * _t([0.45, 0.35, 0.2])
    frame_col = torch.where((_variant(s.base, 39) < 0.6)[:, None], _t([0.85, 0.85, 0.82]), s.base * 0.6)
    col = torch.where(frame[:, None], frame_col, col)
    col = torch.where(win[:, None], interior, col)
    col = torch.where(door[:, None], _t([0.2, 0.14, 0.1]) * (0.8 + 0.4 * _variant(s.base, 40))[:, None], col)
    gloss = win.float() * 0.12
    # Curtain wall: panes between thin mullions, strongly reflective.
    cw = m == FACADE_GLASS
    mull = (torch.remainder(u, 1.5) < 0.08) | (torch.remainder(v, 3.4) < 0.15)
    pane = s.base * (0.8 + 0.3 * cell_hash(u, v, 1.5, 3.4, 44))[:, None]
    col = torch.where((cw & side)[:, None], torch.where(mull[:, None], _t([0.55, 0.56, 0.58]), pane), col)
    gloss = torch.where(cw & side & ~mull, torch.full_like(gloss, 0.25), gloss)
    # Roofs (seen from upper floors' cameras, rarely): grey tar and gravel.
    col = torch.where((axis == 2)[:, None], _t([0.3, 0.29, 0.28]) * (0.8 + 0.4 * value_noise(u, s.p[:, 1], 2.0, 45)
                                                                     )[:, None], col)
    return col, gloss


def _paving(env: Environment, s: _Surf) -> tuple[torch.Tensor, torch.Tensor]:
    """Paving slabs (scene's size and tint), per-slab tone, dark joints, dirt."""
    x, y = s.p[:, 0], s.p[:, 1]
    near = 1 - _smoothstep(8.0, 22.0, s.dist)
    a = env.paver
    slab = 0.9 + 0.18 * cell_hash(x, y, a, a, 51) * near + 0.05
    joint = ((torch.remainder(x, a) < 0.025) | (torch.remainder(y, a) < 0.025)) & (near > 0.3)
    dirt = 0.82 + 0.25 * value_noise(x, y, 2.0, 52)
    col = s.base * _t(env.paving_tint) * (slab * dirt)[:, None]
    col = torch.where(joint[:, None], col * 0.7, col)
    # The top face of the slab: the kerb side (vertical faces) is a little darker concrete.
    col = torch.where((s.normal[:, 2].abs() < 0.5)[:, None], col * 0.85, col)
    return col, torch.zeros(len(col))


def _leafy(env: Environment, s: _Surf) -> tuple[torch.Tensor, torch.Tensor]:
    """Canopies and hedges: clumps, dark gaps between them, hue variation."""
    # Three axis-plane noises summed: a solid texture on curved canopies (no stripes along one direction).
    scale = torch.where(s.material == HEDGE, torch.full_like(s.dist, 0.5), torch.ones_like(s.dist))
    x, y, z = s.p[:, 0] / scale, s.p[:, 1] / scale, s.p[:, 2] / scale
    clump = (value_noise(x, y, 0.45, 61) + value_noise(y, z, 0.45, 64) + value_noise(z, x, 0.45, 65)) / 3
    grain = (value_noise(x + z, y, 0.13, 66) + value_noise(y - z, x, 0.13, 67)) / 2
    gap = _smoothstep(0.32, 0.5, clump)
    leaf = (0.45 + 0.5 * clump + 0.35 * grain) * (0.35 + 0.65 * gap)
    a, b = x + z, y - z
    hue = value_noise(x + y, z, 2.0, 62)[:, None]
    tint = _t([1.1, 1.05, 0.7]) * hue + _t([0.9, 1.0, 1.15]) * (1 - hue)
    col = s.base * tint * leaf[:, None]
    skin = s.material == SKIN
    col = torch.where(skin[:, None], s.base * (0.9 + 0.15 * value_noise(a, b, 0.2, 63))[:, None], col)
    return col, torch.zeros(len(col))


_GLOSS = {CAR_PAINT: 0.06, GLASS: 0.15, METAL: 0.05, SIGN: 0.03}


def _plain(env: Environment, s: _Surf) -> tuple[torch.Tensor, torch.Tensor]:
    """Materials that are their base colour with a mottle: car paint, cloth, metal, bark, tyres, kerbs, signs."""
    u, v, axis = _face_coords(s.p, s.normal)
    m = s.material
    mottle = 0.92 + 0.16 * value_noise(u, v, 0.5, 4)
    bark = m == BARK
    mottle = torch.where(bark, 0.7 + 0.5 * value_noise(u * 8.0, v * 0.7, 1.0, 71), mottle)
    cloth = m == CLOTH
    mottle = torch.where(cloth, 0.85 + 0.25 * value_noise(u, v, 0.25, 72), mottle)
    paint = m == CAR_PAINT
    mottle = torch.where(paint, 0.97 + 0.06 * value_noise(u, v, 0.8, 73), mottle)
    col = s.base * mottle[:, None]
    col = torch.where((m == TYRE)[:, None], _t([0.05, 0.05, 0.055]), col)
    col = torch.where((m == GLASS)[:, None], _t([0.05, 0.06, 0.07]), col)
    col = torch.where((m == KERB)[:, None], s.base * (0.85 + 0.2 * value_noise(u, v, 0.9, 74))[:, None], col)
    gloss = torch.zeros(len(col))
    for mid, g in _GLOSS.items():
        gloss = torch.where(m == mid, torch.full_like(gloss, g), gloss)
    # A cabin: the roof in the body colour, the sides glass.
    cabin_side = (m == CAR_CABIN) & (axis != 2)
    col = torch.where(cabin_side[:, None], _t([0.05, 0.06, 0.07]), col)
    gloss = torch.where(m == CAR_CABIN, torch.where(cabin_side, 0.15, 0.06), gloss)
    return col, gloss


_GROUND = (ASPHALT, GRASS, LANE_YELLOW, LANE_WHITE)
_GROUPS = (
    (_GROUND, _ground),
    ((FACADE_PLASTER, FACADE_BRICK, FACADE_CONCRETE, FACADE_GLASS), _facade),
    ((PAVING,), _paving),
    ((LEAVES, HEDGE, SKIN), _leafy),
    ((KERB, GLASS, CAR_PAINT, CAR_CABIN, TYRE, BARK, METAL, CLOTH, SIGN), _plain),
)


def surface(env: Environment, material: torch.Tensor, base: torch.Tensor, point: torch.Tensor,
            normal: torch.Tensor, dist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(albedo (R, 3), gloss (R,)) of surface points: material (R,) ids, base albedo (R, 3), town-frame points
    and normals (R, 3), distance to the camera (R,) (fine patterns fade out with distance: no aliasing).
    Each material's texture is evaluated only on its own points; unknown ids keep their base albedo."""
    out = base.clone()
    gloss = torch.zeros(len(base))
    for ids, fn in _GROUPS:
        m = _isin(material, ids)
        if not m.any():
            continue
        col, g = fn(env, _Surf(material[m], base[m], point[m], normal[m], dist[m]))
        out[m] = col
        gloss[m] = g
    return out.clamp(0, 1), gloss


# ---------------------------------------------------------------------------------------------- light
def sky_colour(env: Environment, unit: torch.Tensor, clouds: bool = True) -> torch.Tensor:
    """(R, 3) the sky seen along unit directions: gradient, sun glow and disc, clouds; haze colour below."""
    dz = unit[:, 2]
    elev = dz.clamp(min=0.0) ** 0.5
    sky = _t(env.sky_horizon) * (1 - elev[:, None]) + _t(env.sky_zenith) * elev[:, None]
    sun = _t(env.sun)
    cosg = (unit @ sun).clamp(min=0.0)
    clear = 1 - 0.8 * env.cloud_cover
    sun_rgb = _t(env.sun_rgb) / float(max(env.sun_rgb.max(), 1e-3))
    sky = sky + sun_rgb * (0.18 * cosg ** 8 + 0.35 * cosg ** 128)[:, None] * clear
    if clouds and env.cloud_cover > 0:
        up = dz > 0.005
        if up.any():
            d = unit[up]
            k = CLOUD_HEIGHT / d[:, 2]
            cx, cy = d[:, 0] * k + env.offset[0], d[:, 1] * k + env.offset[1]
            dens = fbm(cx, cy, env.cloud_scale, 4, 81)
            edge = 1 - env.cloud_cover
            c = _smoothstep(edge - 0.12, edge + 0.12, dens)
            # Near the horizon the layer's cells shrink below a pixel: fade to the mean cover (no sparkle).
            far = _smoothstep(0.02, 0.12, d[:, 2])
            c = c * far + env.cloud_cover * 0.8 * (1 - far)
            lit = 0.8 + 0.2 * fbm(cx + 40 * sun[0], cy + 40 * sun[1], env.cloud_scale * 0.5, 2, 82) \
                + 0.15 * cosg[up] ** 4
            cloud = _t(env.cloud_rgb) * lit[:, None] * (1 - 0.25 * _smoothstep(0.6, 1.0, dens))[:, None]
            sky[up] = sky[up] * (1 - c[:, None]) + cloud * c[:, None]
    return torch.where((dz > 0)[:, None], sky, _t(env.haze_rgb).expand_as(sky))


def shade(town: Town, hits: Hits, dirs: torch.Tensor, lit: torch.Tensor | None = None) -> torch.Tensor:
    """(R, 3) colours in [0, 1] of rays `dirs` (R, 3) with their hits.

    Sky light + the sun (times `lit` (R,) bool, which hit points see the sun; None: all) on the textured
    albedo, a sky reflection on glossy surfaces, haze with distance; the sky where nothing is hit.
    """
    env: Environment = getattr(town, "env", None) or Environment(sun=np.asarray(town.sun, float))
    norm = dirs.norm(dim=1, keepdim=True)
    unit = dirs / norm
    hit = hits.kind > 0
    out = sky_colour(env, unit)
    if not hit.any():
        return out.clamp(0, 1)
    n = hits.normal[hit]
    u = unit[hit]
    dist = hits.t[hit] * norm[hit, 0]
    albedo, gloss = surface(env, hits.material[hit], hits.albedo[hit], hits.point[hit], n, dist)
    sun = _t(env.sun)
    lambert = (n @ sun).clamp(min=0.0)
    if lit is not None:
        lambert = lambert * lit[hit].to(lambert.dtype)
    # Sky light, most from above; vertical and downward faces also get light bounced off the street.
    ambient = (0.75 + 0.25 * n[:, 2])[:, None] * _t(env.sky_rgb) + (0.12 * (1 - n[:, 2]))[:, None]
    col = albedo * (ambient + lambert[:, None] * _t(env.sun_rgb))
    g = gloss > 0
    if g.any():
        ng, ug = n[g], u[g]
        cos_i = -(ug * ng).sum(1)
        refl = ug + 2 * cos_i[:, None] * ng
        # Schlick's Fresnel term, halved at grazing angles: street surfaces are dusty, not mirrors.
        fres = gloss[g] + (1 - gloss[g]) * (1 - cos_i.clamp(0, 1)) ** 5 * 0.5
        # Reflections below the horizon see the street: a dim grey instead of the sky.
        down = _smoothstep(-0.05, 0.05, refl[:, 2])[:, None]
        env_col = sky_colour(env, refl, clouds=False) * down + _t([0.18, 0.18, 0.19]) * (1 - down)
        spec = (refl @ sun).clamp(min=0.0) ** 300 * 4.0 * (lambert[g] > 0).float()
        col[g] = col[g] * (1 - fres[:, None]) + fres[:, None] * (env_col + spec[:, None] * _t(env.sun_rgb))
    haze = (1 - torch.exp(-dist / env.haze_dist))[:, None]
    scatter = _t(env.haze_rgb) * (1 + 0.15 * ((u @ sun).clamp(min=0.0) ** 4))[:, None]
    out[hit] = col * (1 - haze) + scatter * haze
    return out.clamp(0, 1)
