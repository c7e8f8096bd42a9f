"""The synthetic camera model: random rigs, lenses rendered raw and rectified, camera looks (effects on RGB only)."""

from __future__ import annotations

import hashlib
import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from distillnerf_core.data.nuscenes_tables import NUSCENES_CAMERAS
from distillnerf_core.data.synthetic.camera_effects import Look, apply_look, camera_rng, scene_look
from distillnerf_core.data.synthetic.export import BASE_TIMESTAMP_US, VERSION, _SceneCameras, write_dataroot
from distillnerf_core.data.synthetic.lens import Lens, camera_rays, index_K, rectified_coverage, rectify_image
from distillnerf_core.data.synthetic.rigs import RANDOM_LAYOUTS, _pinhole, load_rig
from distillnerf_core.data.synthetic.world import CAMERA_FAR, VoxelSpec, cast_rays, generate_town, render_camera
from distillnerf_core.rectify import Rectifier, rectify_maps

W, H = 64, 48


def test_random_rigs_are_deterministic_per_scene_and_within_their_ranges():
    counts, lensed, cameras = set(), 0, 0
    for seed in range(6):
        rig = load_rig("random", W, H, seed=seed, scene_index=0)
        counts.add(len(rig.cameras))
        again = load_rig("random", W, H, seed=seed, scene_index=0)
        other = load_rig("random", W, H, seed=seed, scene_index=1)
        assert [c.channel for c in other.cameras] == [c.channel for c in rig.cameras], \
            "scenes of one seed must share the channels (the loader reads one camera list)"
        for a, b, c in zip(rig.cameras, again.cameras, other.cameras, strict=True):
            assert np.array_equal(a.K, b.K) and np.array_equal(a.cam2ego, b.cam2ego) and a.lens == b.lens, \
                f"seed {seed} {a.channel}: the same scene drew a different camera"
            assert not np.array_equal(a.cam2ego, c.cam2ego), f"seed {seed} {a.channel}: scene 1 kept scene 0's mount"
            R = a.cam2ego[:3, :3]
            assert np.allclose(R @ R.T, np.eye(3), atol=1e-9) and a.cam2ego[2, 1] < -0.95, f"{a.channel}: not upright"
            assert 1.3 < a.cam2ego[2, 3] < 2.05, f"{a.channel}: mount height {a.cam2ego[2, 3]:.2f} m"
            pitch = math.degrees(math.asin(-a.cam2ego[2, 2]))
            hfov = math.degrees(2 * math.atan(W / 2 / a.K[0, 0]))
            assert -2.01 <= pitch <= 7.01 and 27 < hfov < 111, f"{a.channel}: pitch {pitch:.1f}, hfov {hfov:.1f}"
            cameras += 1
            if a.lens is not None:
                lensed += 1
                assert a.lens.d[0] < 0 and a.lens.d[1] >= 0, f"{a.channel}: expected a barrel lens, got {a.lens}"
                assert rectified_coverage(a.K, (W, H), a.lens) == 1.0, f"{a.channel}: black border when rectified"
    assert counts <= {5, 6, 7, 8} and len(counts) > 1, f"camera counts {counts} drawn for seeds 0..5"
    assert 0.25 < lensed / cameras < 0.75, f"{lensed} of {cameras} cameras have a lens (LENS_PROBABILITY 0.5)"
    for n in RANDOM_LAYOUTS:
        channels = {c.channel for c in load_rig(f"random{n}", W, H, seed=1).cameras}
        assert len(channels) == n, f"random{n}: {len(channels)} distinct channels"
        assert (channels >= set(NUSCENES_CAMERAS)) == (n == 6), \
            f"random{n}: only the 6-camera rig may hold the nuScenes six (the loader would drop the others)"
    pinhole = load_rig("random6", W, H, seed=1, lenses=False)
    with_lenses = load_rig("random6", W, H, seed=1)
    assert all(c.lens is None for c in pinhole.cameras) and all(
        np.array_equal(a.cam2ego, b.cam2ego) and np.array_equal(a.K, b.K)
        for a, b in zip(pinhole.cameras, with_lenses.cameras, strict=True)), "lenses=False changed the rig"
    with pytest.raises(ValueError, match="5-8 cameras"):
        load_rig("random9", W, H)


def test_the_lens_render_is_exact_and_its_rectification_lands_on_the_pinhole_geometry():
    torch.set_num_threads(1)
    town = generate_town(3, 0, 2.0)
    size = (96, 64)
    K = _pinhole(*size, 90.0)
    lens = Lens("plumb_bob", (-0.12, 0.01, 0.0, 0.0, 0.0))
    rays = camera_rays(K, size, lens)
    cam2town = town.ego_pose(0.3) @ load_rig("nuscenes", *size).cameras[0].cam2ego
    raw_rgb, raw_depth, raw_sem = render_camera(town, 0.3, cam2town, K, size, camera_rays=rays)
    # culled through RayGrid = casting every ray against every primitive
    dirs = torch.as_tensor(rays.reshape(-1, 3)) @ torch.as_tensor(cam2town[:3, :3], dtype=torch.float32).T
    hits = cast_rays(town, 0.3, cam2town[:3, 3], dirs.reshape(size[1], size[0], 3), CAMERA_FAR)
    assert np.array_equal(np.where(hits.kind.numpy() > 0, hits.cls.numpy(), 0).reshape(raw_sem.shape), raw_sem), \
        "the lens render's culling lost hits"
    assert np.array_equal(np.where(hits.kind.numpy() > 0, hits.t.numpy(), 0).reshape(raw_depth.shape), raw_depth)
    rgb, depth, sem = render_camera(town, 0.3, cam2town, K, size)
    _, gt_depth, gt_sem = render_camera(town, 0.3, cam2town, K, size, shaded=False)
    assert np.array_equal(gt_depth, depth) and np.array_equal(gt_sem, sem), "shaded=False changed the geometry"
    # Where the lens moves content by more than 1.5 px (half the image here), the nearest-neighbour
    # rectification of the raw labels agrees with the pinhole labels (edges aside) and the raw labels do not;
    # the rectified RGB likewise (bilinear, the written image).
    map_x, map_y = rectify_maps(index_K(K), lens.model, lens.d, *size)
    u, v = np.meshgrid(np.arange(size[0]), np.arange(size[1]))
    moved = np.hypot(map_x - u, map_y - v) > 1.5
    assert moved.mean() > 0.3, f"the test lens moves only {moved.mean():.0%} of the pixels by > 1.5 px"
    near = raw_sem[np.rint(map_y).astype(int), np.rint(map_x).astype(int)]
    rectified_miss, raw_miss = (near != sem)[moved].mean(), (raw_sem != sem)[moved].mean()
    assert rectified_miss < 0.05 and rectified_miss < 0.5 * raw_miss, (rectified_miss, raw_miss)
    near_depth = raw_depth[np.rint(map_y).astype(int), np.rint(map_x).astype(int)]
    same = (near == sem) & (sem > 0) & moved
    assert np.median(np.abs(near_depth[same] - depth[same]) / depth[same]) < 0.01, "rectified depth off the pinhole"
    image = rectify_image(Rectifier(min_valid_fraction=1.0), "cam", raw_rgb, K, lens)
    err_rect = np.abs(image.astype(float) - rgb)[moved].mean()
    err_raw = np.abs(raw_rgb.astype(float) - rgb)[moved].mean()
    assert err_rect < 0.6 * err_raw, f"rectified RGB error {err_rect:.1f} vs unrectified {err_raw:.1f}"


def test_looks_are_what_they_say_on_a_flat_image():
    grey = np.full((H, W, 3), 128, np.uint8)
    K = _pinhole(W, H, 60.0)
    assert apply_look(grey, Look("plain"), K, 0.3, 0.5, camera_rng(0, 0, 0, 0)) is grey, "plain must be the identity"
    bright = apply_look(grey, Look("realistic", exposure_ev=1.5), K, 0.0, 0.0, camera_rng(0, 0, 0, 0))
    assert (bright > 190).all() and (bright < 255).all(), "+1.5 EV takes mid grey (linear 0.22) to 0.61, unclipped"
    clipped = apply_look(np.full((H, W, 3), 200, np.uint8), Look("realistic", exposure_ev=1.0), K, 0.0, 0.0,
                         camera_rng(0, 0, 0, 0))
    assert (clipped == 255).all(), "over-exposure must clip at white"
    vig = apply_look(grey, Look("realistic"), K, 0.0, 0.4, camera_rng(0, 0, 0, 0)).astype(int)
    assert vig[H // 2, W // 2, 0] - vig[0, 0, 0] > 20, "vignetting did not darken the corner"
    warm = apply_look(grey, Look("realistic", white_balance=(1.1, 1.0, 0.9)), K, 0.0, 0.0, camera_rng(0, 0, 0, 0))
    assert warm[..., 0].mean() > warm[..., 1].mean() > warm[..., 2].mean(), "white balance cast missing"
    look = Look("realistic", shot_noise=2e-3, read_noise=5e-3)
    a, b = (apply_look(grey, look, K, 0.0, 0.0, camera_rng(1, 2, 3, 4)) for _ in range(2))
    c = apply_look(grey, look, K, 0.0, 0.0, camera_rng(1, 2, 3, 5))
    assert np.array_equal(a, b) and not np.array_equal(a, c) and 2 < a.astype(float).std() < 20, \
        f"noise must be seeded per image with a plausible spread (std {a.astype(float).std():.1f})"
    assert scene_look("realistic", 7, 1) == scene_look("realistic", 7, 1) != scene_look("realistic", 7, 2)
    with pytest.raises(ValueError, match="unknown look"):
        scene_look("film", 0, 0)


def _files(root, pattern):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.glob(pattern)) if p.is_file()}


def test_a_realistic_random_dataroot_is_deterministic_and_its_look_changes_only_rgb(tmp_path):
    kw = dict(scenes=1, frames=1, seed=20, cameras="random5", width=W, height=H, voxel_spec=VoxelSpec(voxel_size=1.6),
              progress=False, threads=1)
    write_dataroot(tmp_path / "a", look="realistic", **kw)
    write_dataroot(tmp_path / "plain", look="plain", **kw)
    a, plain = (_files(tmp_path / n, "**/*") for n in ("a", "plain"))
    gt = [k for k in a if k.startswith(("gt/CAM", "gt/LIDAR", "samples/LIDAR", "v1.0-synthetic/"))]
    assert len(gt) > 12 and all(a[k] == plain[k] for k in gt), "the look changed something other than the images"
    jpegs = [k for k in a if k.endswith(".jpg")]
    assert len(jpegs) == 5 and all(a[k] != plain[k] for k in jpegs), "the realistic look left an image unchanged"
    meta = json.loads((tmp_path / "a" / "gt" / "meta.json").read_text())
    scene = meta["camera_model"]["synth-s20-scene000"]
    assert scene["rig"] == "random5" and scene["look"]["look"] == "realistic" and len(scene["cameras"]) == 5
    assert all(c["rectified"] == (c["lens"] is not None) for c in scene["cameras"].values())
    assert any(c["rectified"] and c["lens"]["d"][0] < 0 for c in scene["cameras"].values()), "no lens in the rig"
    # determinism: the image of (seed, scene, frame, camera) made again is the file written, byte for byte
    sd = next(r for r in json.loads((tmp_path / "a" / VERSION / "sample_data.json").read_text())
              if r["filename"].startswith("samples/CAM_FRONT/"))
    t_cam = (sd["timestamp"] - BASE_TIMESTAMP_US - 20 * 10**10) / 1e6
    town, rig = generate_town(20, 0, 1.5), load_rig("random5", W, H, seed=20, scene_index=0)
    cams = _SceneCameras(rig, "realistic", 20, 0, Rectifier(min_valid_fraction=1.0))
    rgb = cams.image(town, t_cam, town.ego_pose(t_cam) @ rig.cameras[0].cam2ego, 0, 0)[0]
    encoded = io.BytesIO()
    Image.fromarray(rgb).save(encoded, format="JPEG", quality=cams.look.jpeg_quality)
    assert encoded.getvalue() == (tmp_path / "a" / sd["filename"]).read_bytes(), "the image is not its seed's"
