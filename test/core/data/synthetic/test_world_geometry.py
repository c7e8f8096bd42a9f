"""The world's richer geometry (cars with cabins and wheels, people with limbs, trees, poles, kerbs, ...):
determinism, exact depth and semantics against an independent ray march (plain inside tests, not the ray
code), the LiDAR's culling against testing every beam, the shadow any-hit test against brute force, voxels
against the LiDAR."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distillnerf_core.data.synthetic import world as W
from distillnerf_core.geometry import invert_transform, make_transform

SEED = 7


@pytest.fixture(scope="module")
def town():
    return W.generate_town(SEED, 0, duration=2.0)


def _inside(town: W.Town, t: float, p: np.ndarray) -> np.ndarray:
    """(P,) class of the primitive containing each point (-1: none), from plain inside tests (not the ray
    code); the ground (z <= 0) is class -2. Only primitives whose bounding box meets the points' are tested."""
    out = np.full(len(p), -1)
    p_lo, p_hi = p.min(0), p.max(0)

    def near(kind: int) -> list[int]:
        lo_k, hi_k = W.primitive_bounds(town, t)[kind]
        return np.nonzero(((lo_k <= p_hi) & (hi_k >= p_lo)).all(1))[0].tolist()

    lo, hi = town.boxes_at(t)
    for i in near(W.KIND_BOX):
        m = ((p >= lo[i]) & (p <= hi[i])).all(1)
        out[m] = town.box_cls[i]
    c = town.spheres_at(t)
    for i in near(W.KIND_ELLIPSOID):
        m = (((p - c[i]) / town.sph_radius[i]) ** 2).sum(1) <= 1.0
        out[m] = town.sph_cls[i]
    cc = town.cylinders_at(t)
    for i in near(W.KIND_CYLINDER):
        a = int(town.cyl_axis[i])
        q = p - cc[i]
        radial = np.sqrt((q ** 2).sum(1) - q[:, a] ** 2)
        m = (radial <= town.cyl_radius[i]) & (np.abs(q[:, a]) <= town.cyl_half[i])
        out[m] = town.cyl_cls[i]
    out[(out == -1) & (p[:, 2] <= 0)] = -2
    return out


def _look_at(eye, target) -> np.ndarray:
    """cam2town of an optical camera (x right, y down, z forward) at eye looking at target."""
    f = np.asarray(target, float) - eye
    f /= np.linalg.norm(f)
    r = np.cross(f, [0, 0, 1.0])
    r /= np.linalg.norm(r)
    return make_transform(np.stack([r, np.cross(f, r), f], 1), eye)


def test_generation_is_deterministic_and_has_the_new_objects(town):
    again = W.generate_town(SEED, 0, duration=2.0)
    for name in ("box_center", "box_half", "box_albedo", "box_material", "sph_center", "sph_radius",
                 "cyl_center", "cyl_radius", "cyl_half", "cyl_axis", "cyl_material"):
        assert np.array_equal(getattr(town, name), getattr(again, name)), f"{name} differs for the same seed"
    assert not np.array_equal(W.generate_town(SEED + 1, 0, 2.0).box_center[:50], town.box_center[:50])
    from distillnerf_core.data.synthetic import shading

    wheels = (town.cyl_material == shading.TYRE) & (town.cyl_axis == 1)
    assert wheels.sum() >= 2 * sum(o.category == "vehicle.car" for o in town.objects), "cars without wheels"
    cabins = town.sph_material == shading.CAR_CABIN
    assert cabins.any() and (town.box_material == shading.CAR_CABIN).any(), "no rounded or box cabins"
    assert (town.sph_cls == W.CLASS_ID["vegetation"]).sum() > 3 * (town.cyl_material == shading.BARK).sum() - 1
    assert (town.box_material == shading.HEDGE).any(), "no hedges"
    down = torch.tensor([[0.0, 0.0, -1.0]])
    for y, want in ((W.ROAD_HALF + 0.1, shading.KERB), (-W.ROAD_HALF - 0.1, shading.KERB)):
        hit = W.cast_rays(town, 0.0, np.array([3.0, y, 5.0]), down, 50.0)
        assert int(hit.material[0]) == want and int(hit.cls[0]) == W.CLASS_ID["sidewalk"], "no kerb at the road edge"
    assert (town.cyl_material == shading.SIGN).any() or (town.box_material == shading.SIGN).any()


@pytest.mark.parametrize("target", ["car", "pedestrian", "vegetation", "pole"])
def test_depth_and_semantics_match_an_independent_ray_march(town, target):
    """Camera hits of each new object class: just past the hit the point is inside a primitive of the labelled
    class, just before it and at every 1 cm step before it the point is outside everything."""
    t = 0.0
    cls_id = W.CLASS_ID[target]
    kinds = {W.KIND_BOX: town.box_cls, W.KIND_ELLIPSOID: town.sph_cls, W.KIND_CYLINDER: town.cyl_cls}
    kind = next(k for k in (W.KIND_CYLINDER, W.KIND_ELLIPSOID, W.KIND_BOX) if (kinds[k] == cls_id).any())
    lo, hi = W.primitive_bounds(town, t)[kind]
    w, h = 48, 36
    K = np.array([[40.0, 0, w / 2], [0, 40.0, h / 2], [0, 0, 1]])
    ego_x = town.ego_pose(t)[0, 3]
    candidates = np.nonzero(kinds[kind] == cls_id)[0]
    candidates = candidates[np.argsort(np.abs((lo[candidates, 0] + hi[candidates, 0]) / 2 - ego_x))]
    for i in candidates[:20]:  # the first object of the class with a free view of it from the road side
        centre = (lo[i] + hi[i]) / 2
        eye = centre + np.array([-4.0, -3.0 if centre[1] > 0 else 3.0, 0.6])
        eye[2] = max(eye[2], 0.5)
        cam2town = _look_at(eye, centre)
        _, depth, sem = W.render_camera(town, t, cam2town, K, (w, h))
        if _inside(town, t, eye[None])[0] == -1 and (sem == cls_id).sum() >= 10:
            break
    else:
        pytest.fail(f"no {target} seen from 5 m by a camera outside every primitive")
    v, u = np.mgrid[0:h, 0:w] + 0.5
    rays = np.stack([u, v, np.ones_like(u)], -1).reshape(-1, 3) @ np.linalg.inv(K).T @ cam2town[:3, :3].T
    z, s = depth.reshape(-1), sem.reshape(-1)
    near = (z > 0) & (z < 25)
    hit = eye + rays[near] * z[near, None]
    unit = rays[near] / np.linalg.norm(rays[near], axis=1, keepdims=True)
    after = _inside(town, t, hit + 2e-3 * unit)
    before = _inside(town, t, hit - 2e-3 * unit)
    labels = np.where(after == -2, -2, after)
    want = s[near].astype(int)
    ground = np.isin(want, [W.CLASS_ID[c] for c in ("road", "lane_marking", "terrain")]) & (after == -2)
    assert ((labels == want) | ground).mean() > 0.995, f"{target}: labels do not match the primitive hit"
    assert (before == -1).mean() > 0.995, "points just before the hit are inside something"
    steps = np.linspace(0.05, 1.0, 60)[:, None, None] * (z[near, None] * rays[near])[None] + eye
    marched = _inside(town, t, (steps[:-1] - 2e-3 * unit[None]).reshape(-1, 3)).reshape(59, -1)
    assert ((marched == -1).all(0)).mean() > 0.995, "the ray crosses a primitive before its hit"


def test_lidar_culling_gives_the_same_hits_as_testing_every_beam(town):
    t = 0.0
    ego = town.ego_pose(t)
    lidar2town = ego @ make_transform(np.eye(3), [0.9, 0.0, 1.84])
    near = W.Town(**{**town.__dict__})
    keep = {}
    for k, (lo, hi) in W.primitive_bounds(town, t).items():
        keep[k] = np.linalg.norm((lo + hi)[:, :2] / 2 - lidar2town[:2, 3], axis=1) < 25
    for pre, k in (("box", W.KIND_BOX), ("sph", W.KIND_ELLIPSOID), ("cyl", W.KIND_CYLINDER)):
        for name in [f for f in town.__dict__ if f.startswith(pre + "_")]:
            setattr(near, name, getattr(town, name)[keep[k]])
    d, _ = W.lidar_beam_directions()
    dirs = torch.as_tensor(d @ lidar2town[:3, :3].T, dtype=torch.float32)
    full = W.cast_rays(near, t, lidar2town[:3, 3], dirs, W.LIDAR_MAX_RANGE)
    rects = {k: W.lidar_rects(W._box_corners(lo, hi), invert_transform(lidar2town), W.LIDAR_MAX_RANGE)
             for k, (lo, hi) in W.primitive_bounds(near, t).items()}
    culled = W.cast_rays(near, t, lidar2town[:3, 3], dirs.reshape(32, -1, 3), W.LIDAR_MAX_RANGE, rects)
    assert torch.equal(full.kind, culled.kind) and torch.equal(full.index, culled.index)
    assert torch.equal(full.t, culled.t)
    assert (rects[W.KIND_BOX][:, 3] - rects[W.KIND_BOX][:, 2] < W.LIDAR_AZIMUTH_STEPS).mean() > 0.5, "no culling"


def test_occluded_agrees_with_brute_force(town):
    t = 0.0
    rng = np.random.default_rng(0)
    ego = town.ego_pose(t)[:3, 3]
    pts = ego + np.stack([rng.uniform(-30, 30, 3000), rng.uniform(-14, 14, 3000), rng.uniform(0.05, 3, 3000)], 1)
    pts = pts[_inside(town, t, pts) == -1]
    sun = np.array([0.4, -0.5, 0.6])
    sun /= np.linalg.norm(sun)
    p = torch.as_tensor(pts, dtype=torch.float32)
    got = W.occluded(town, t, p, sun, max_dist=80.0)
    hit_of = W._Intersector(town, t)
    d = torch.as_tensor(sun, dtype=torch.float32)
    want = torch.zeros(len(p), dtype=torch.bool)
    for k, (lo, _) in W.primitive_bounds(town, t).items():
        for i in range(len(lo)):
            want |= hit_of(k, i, p, d, 1.0 / d) < 80.0
    assert torch.equal(got, want), f"{(got != want).sum()} of {len(p)} shadow rays differ from brute force"
    assert 0.05 < want.float().mean() < 0.95, "the test points are all lit or all shadowed"


def test_voxels_agree_with_the_lidar(town):
    t = 0.0
    ego = town.ego_pose(t)
    lidar2ego = make_transform(np.eye(3), [0.9, 0.0, 1.84])
    pts, cls = W.simulate_lidar(town, t, ego @ lidar2ego)
    spec = W.VoxelSpec()
    vox = W.semantic_voxels(town, t, ego, spec)
    e = pts[:, :3] @ lidar2ego[:3, :3].T + lidar2ego[:3, 3]
    ijk = np.floor((e - np.array(spec.pc_range[:3])) / spec.voxel_size).astype(int)
    ok = (ijk >= 0).all(1) & (ijk < np.array(spec.shape)).all(1)
    for name in ("car", "pedestrian", "vegetation", "pole", "building"):
        m = ok & (cls == W.CLASS_ID[name])
        assert m.sum() > 20, f"too few LiDAR points on {name}"
        lab = vox[tuple(ijk[m].T)]
        share = (lab == W.CLASS_ID[name]).mean()
        assert share > 0.8, f"{name} LiDAR points in {name} voxels: {share:.2f}"  # 0.4 m voxels, thin parts
        # A voxel is labelled when its centre is in the primitive grown by half a voxel along each axis: for a
        # curved surface a voxel cut only by its corner stays free, a few percent of the points.
        assert (lab > 0).mean() > 0.95, f"{name} LiDAR points in free voxels: {1 - (lab > 0).mean():.3f}"
    assert math.isfinite(float(pts[:, :3].sum()))
