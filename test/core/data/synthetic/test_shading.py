"""The synthetic world's light and surfaces (shading.py): shadows leave the geometry alone, determinism, noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distillnerf_core.data.synthetic import shading, world
from distillnerf_core.data.synthetic.rigs import load_nuscenes_rig

W, H = 64, 48
SEED = 7


@pytest.fixture(scope="module")
def town():
    return world.generate_town(SEED)


def _views(town):
    """(cam2town, K) of the front and the two side cameras at t = 1 s (small images: the test stays cheap)."""
    rig = load_nuscenes_rig(W, H)
    ego = town.ego_pose(1.0)
    return [(ego @ cam.cam2ego, cam.K) for cam in rig.cameras[:3]]


def test_shadows_do_not_change_geometry(town, monkeypatch):
    shadowed = [world.render_camera(town, 1.0, pose, K, (W, H)) for pose, K in _views(town)]

    def no_shadows(town, t, hits, **kwargs):
        """Every hit facing the sun is lit: what world.sun_lit returns when nothing occludes."""
        return (hits.kind > 0) & ((hits.normal @ torch.as_tensor(town.sun, dtype=torch.float32)) > 0)

    monkeypatch.setattr(world, "sun_lit", no_shadows)
    lit = [world.render_camera(town, 1.0, pose, K, (W, H)) for pose, K in _views(town)]
    darker = 0
    for (rgb_s, depth_s, sem_s), (rgb_l, depth_l, sem_l) in zip(shadowed, lit, strict=True):
        assert np.array_equal(depth_s, depth_l), "the shadows changed the depth"
        assert np.array_equal(sem_s, sem_l), "the shadows changed the semantics"
        brighter = rgb_s.astype(int).sum(-1) > rgb_l.astype(int).sum(-1) + 3
        assert not brighter.any(), f"{int(brighter.sum())} pixels are brighter in shadow than lit"
        darker += int((rgb_s.astype(int).sum(-1) < rgb_l.astype(int).sum(-1) - 10).sum())
    # The check above means something only if there are shadows to see: the town casts some into these views.
    assert darker > 20, f"only {darker} pixels darkened by shadows in 3 views of town {SEED}"


def test_shade_reads_its_inputs_only(town):
    """shade() must not modify the hits (the geometry's ground truth comes from the same tensors)."""
    pose, K = _views(town)[0]
    # Every other pixel of the small image: cast_rays without screen rectangles tests every primitive.
    rays = torch.as_tensor(np.stack(np.meshgrid(np.arange(0, W, 2) + 0.5, np.arange(0, H, 2) + 0.5), -1)
                           .reshape(-1, 2), dtype=torch.float32)
    d_cam = torch.cat([rays, torch.ones(len(rays), 1)], 1) @ torch.as_tensor(np.linalg.inv(K), dtype=torch.float32).T
    dirs = d_cam @ torch.as_tensor(pose[:3, :3], dtype=torch.float32).T
    hits = world.cast_rays(town, 1.0, pose[:3, 3], dirs.reshape(H // 2, W // 2, 3), world.CAMERA_FAR)
    before = {k: v.clone() for k, v in vars(hits).items()}
    lit = torch.rand(len(dirs), generator=torch.Generator().manual_seed(0)) > 0.5
    rgb = shading.shade(town, hits, dirs, lit)
    assert rgb.shape == (len(dirs), 3) and float(rgb.min()) >= 0 and float(rgb.max()) <= 1
    for k, v in vars(hits).items():
        assert torch.equal(v, before[k]), f"shade() modified hits.{k}"
    # In shadow: no brighter than lit, anywhere.
    assert (shading.shade(town, hits, dirs, lit) <= shading.shade(town, hits, dirs, None) + 1e-6).all()


def test_light_is_deterministic_per_scene():
    a, b = world.generate_town(SEED, 1), world.generate_town(SEED, 1)
    for name, value in vars(a.env).items():
        assert np.array_equal(np.asarray(value), np.asarray(getattr(b.env, name))), f"env.{name} differs"
    assert np.array_equal(a.sun, a.env.sun)
    other = world.generate_town(SEED, 2)
    assert not np.allclose(a.env.sun, other.env.sun), "two scenes of one seed got the same sun"
    pose, K = _views(a)[1]
    assert np.array_equal(world.render_camera(a, 1.0, pose, K, (W, H))[0],
                          world.render_camera(b, 1.0, pose, K, (W, H))[0]), "same seed, different pixels"


def test_environment_draws_stay_in_range():
    elevations = []
    for k in range(200):
        env = shading.draw_environment(np.random.default_rng([k, 0, 777]))
        assert abs(np.linalg.norm(env.sun) - 1) < 1e-9
        elevations.append(np.degrees(np.arcsin(env.sun[2])))
        for rgb in (env.sun_rgb, env.sky_rgb, env.sky_horizon, env.sky_zenith, env.haze_rgb, env.asphalt_rgb):
            assert np.all(rgb >= 0) and np.all(rgb <= 1.2)
        assert 0 <= env.cloud_cover <= 1 and env.haze_dist > 100
    assert 25 <= min(elevations) and max(elevations) <= 70 and max(elevations) - min(elevations) > 35


def test_noise4_finest_octave_is_smoothstep_value_noise():
    """The table lookup with a smoothstep-warped coordinate equals interpolating the 4 lattice corners."""
    g = torch.Generator().manual_seed(1)
    u, v = torch.rand(500, generator=g) * 300 - 150, torch.rand(500, generator=g) * 300 - 150
    salt, scale = 5, 0.7
    got = shading.value_noise(u, v, scale, salt)
    shift = (salt // shading._TABLE_COUNT) * 37.17 + 0.5
    uu, vv = u / scale + shift, v / scale + 0.61 * shift
    iu, iv = torch.floor(uu), torch.floor(vv)
    fu, fv = uu - iu, vv - iv
    fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
    lat = shading._lattice()[salt % shading._TABLE_COUNT, 0, :256, :256]

    def corner(du: int, dv: int) -> torch.Tensor:
        return lat[(iv.long() + dv) % 256, (iu.long() + du) % 256]

    want = (corner(0, 0) * (1 - fu) + corner(1, 0) * fu) * (1 - fv) + (corner(0, 1) * (1 - fu) + corner(1, 1) * fu) * fv
    assert torch.allclose(got, want, atol=2e-3), float((got - want).abs().max())
    assert 0 <= float(got.min()) and float(got.max()) <= 1


def test_every_material_has_a_texture():
    missing = [shading.MATERIALS[m] for m in range(1, len(shading.MATERIALS)) if int(shading._GROUP[m]) < 0]
    assert not missing, f"materials without a texture group: {missing}"
