"""Light and surfaces of the synthetic town: materials, procedural textures (albedo) and the shading of hits.

Geometry, semantics and depth live in world.py and stay exact; this module only decides what colour a
surface point has and how it is lit, so nothing here can change depth, classes or occupancy. It must not
import world.py (world.py imports it): `shade` takes any object with the `Hits` / `Town` attributes it reads.

Every primitive carries a base albedo (3) and a material id (`MATERIALS`); the material picks the texture.
Ground points get their material from world.py (asphalt, grass, lane paint), which owns where the markings are.
"""

from __future__ import annotations

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
    "glass",
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
)
MATERIAL_ID = {name: i for i, name in enumerate(MATERIALS)}
(NONE, ASPHALT, GRASS, LANE_YELLOW, LANE_WHITE, PAVING, KERB, FACADE_PLASTER, FACADE_BRICK, FACADE_CONCRETE,
 GLASS, CAR_PAINT, CAR_CABIN, TYRE, BARK, LEAVES, HEDGE, METAL, SKIN, CLOTH, SIGN) = range(len(MATERIALS))

# Materials whose texture is the base albedo with a faint mottle (the plain look).
_PLAIN = (KERB, FACADE_BRICK, FACADE_CONCRETE, GLASS, CAR_PAINT, TYRE, BARK, HEDGE, METAL, CLOTH, SIGN)
# Materials with the dappled "leaf" texture on curved surfaces.
_LEAFY = (LEAVES, SKIN)
_FACADES = (FACADE_PLASTER,)


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


# ---------------------------------------------------------------------------------------------- albedo
def _isin(material: torch.Tensor, ids: tuple[int, ...]) -> torch.Tensor:
    return torch.isin(material, torch.tensor(ids, dtype=material.dtype))


def _ground(material: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Asphalt, grass and lane paint of the ground plane (their base albedo is not used)."""
    gx, gy = p[:, 0], p[:, 1]
    n1 = value_noise(gx, gy, 0.7, 1)
    n2 = value_noise(gx, gy, 6.0, 2)
    asphalt = (0.26 + 0.1 * n1 + 0.06 * n2)[:, None] * torch.tensor([1.0, 1.0, 1.04])
    grass = (0.6 + 0.4 * n1)[:, None] * torch.tensor([0.25, 0.42, 0.16]) * (0.8 + 0.4 * n2)[:, None]
    col = torch.where((material == ASPHALT)[:, None], asphalt, grass)
    col = torch.where((material == LANE_YELLOW)[:, None], torch.tensor([0.85, 0.7, 0.15]), col)
    return torch.where((material == LANE_WHITE)[:, None], torch.tensor([0.9, 0.9, 0.88]), col)


def _face_coords(p: torch.Tensor, normal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(u along the face, v up, dominant normal axis) of points on axis-aligned faces."""
    axis = normal.abs().argmax(dim=1)
    return torch.where(axis == 0, p[:, 1], p[:, 0]), p[:, 2], axis


def _facade(base: torch.Tensor, p: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """Plaster walls with a window grid (from 2.2 m up, 3.2 m storeys) and a door band at street level."""
    u, v, axis = _face_coords(p, normal)
    side = axis != 2
    wall_noise = 0.85 + 0.3 * value_noise(u * 3.0, v * 3.0, 1.0, 3)
    floor_v = torch.remainder(v, 3.2)
    win = side & (v > 2.2) & (floor_v > 0.9) & (floor_v < 2.4) & (torch.remainder(u, 2.6) > 0.8) \
        & (torch.remainder(u, 2.6) < 2.0)
    door_band = side & (v < 2.2) & (torch.remainder(u, 7.0) < 1.6)
    col = base * wall_noise[:, None]
    glass = torch.tensor([0.16, 0.22, 0.3]) * (0.8 + 0.5 * value_noise(u, v, 2.0, 5))[:, None]
    col = torch.where(win[:, None], glass, col)
    return torch.where(door_band[:, None], torch.tensor([0.22, 0.16, 0.12]), col)


def _plain(base: torch.Tensor, p: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    u, v, _ = _face_coords(p, normal)
    return base * (0.92 + 0.16 * value_noise(u, v, 0.5, 4)[:, None])


def _cabin(base: torch.Tensor, p: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    _, _, axis = _face_coords(p, normal)
    return torch.where((axis != 2)[:, None], torch.tensor([0.08, 0.1, 0.13]), base)


def _paving(base: torch.Tensor, p: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """1.5 m slabs with dark joints."""
    tile = (torch.remainder(p[:, 0], 1.5) < 0.05) | (torch.remainder(p[:, 1], 1.5) < 0.05)
    pav = base * (0.85 + 0.3 * value_noise(p[:, 0], p[:, 1], 0.75, 6))[:, None]
    return torch.where(tile[:, None], pav * 0.7, pav)


def _leafy(base: torch.Tensor, p: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    leaf = 0.75 + 0.5 * value_noise(p[:, 0] + p[:, 2] * 1.7, p[:, 1] - p[:, 2], 0.35, 7)
    return base * leaf[:, None]


_GROUND = (ASPHALT, GRASS, LANE_YELLOW, LANE_WHITE)
_TEXTURES = (
    (_PLAIN, _plain),
    (_FACADES, _facade),
    ((CAR_CABIN,), _cabin),
    ((PAVING,), _paving),
    (_LEAFY, _leafy),
)


def surface_albedo(material: torch.Tensor, base: torch.Tensor, point: torch.Tensor,
                   normal: torch.Tensor) -> torch.Tensor:
    """(R, 3) textured albedo of surface points: material (R,) ids, base albedo (R, 3), town-frame points and
    normals (R, 3). Each material's texture is evaluated only on its own points."""
    out = base.clone()
    groups = [(_GROUND, None), *_TEXTURES]
    for ids, fn in groups:
        m = _isin(material, ids)
        if not m.any():
            continue
        out[m] = _ground(material[m], point[m]) if fn is None else fn(base[m], point[m], normal[m])
    return out


# ---------------------------------------------------------------------------------------------- light
SKY_HORIZON = torch.tensor([0.80, 0.86, 0.94])
SKY_ZENITH = torch.tensor([0.33, 0.52, 0.84])


@dataclass
class Environment:
    """Per-scene light and surface look, drawn by `draw_environment` (the default is the old fixed look)."""

    sun: np.ndarray = field(default_factory=lambda: np.array([0.0, 0.0, 1.0]))  # unit, towards the sun


def draw_environment(rng: np.random.Generator) -> Environment:
    """A scene's environment from its own generator (world.py gives it a stream apart from the geometry's)."""
    sun = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), 0.85])
    return Environment(sun=sun / np.linalg.norm(sun))


def shade(town: Town, hits: Hits, dirs: torch.Tensor, lit: torch.Tensor | None = None) -> torch.Tensor:
    """(R, 3) colours in [0, 1]: Lambert with sun + sky light, distance fog, gradient sky.

    `lit` (R,) bool says which hit points see the sun (None: all); points in shadow get sky light only.
    """
    unit = dirs / dirs.norm(dim=1, keepdim=True)
    elev = unit[:, 2].clamp(min=0.0) ** 0.6
    sky = SKY_HORIZON * (1 - elev[:, None]) + SKY_ZENITH * elev[:, None]
    sun = torch.as_tensor(town.sun, dtype=torch.float32)
    lambert = (hits.normal @ sun).clamp(min=0.0)
    if lit is not None:
        lambert = lambert * lit.to(lambert.dtype)
    skylight = 0.5 + 0.15 * hits.normal[:, 2]
    albedo = surface_albedo(hits.material, hits.albedo, hits.point, hits.normal)
    col = albedo * (skylight + 0.75 * lambert)[:, None]
    dist = torch.where(hits.kind > 0, hits.t * dirs.norm(dim=1), torch.zeros_like(hits.t))
    fog = (1 - torch.exp(-dist / 350.0))[:, None]
    col = col * (1 - fog) + SKY_HORIZON * fog
    return torch.where((hits.kind > 0)[:, None], col, sky).clamp(0, 1)
