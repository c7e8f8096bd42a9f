"""Camera rays, distance <-> z-depth factor, intrinsics rescale, contraction, voxel indexing."""

import math

import torch

from distillnerf_core.model.cameras import CameraRig, pixel_rays, rescale_intrinsics, ring_rig
from distillnerf_core.model.contraction import contract, linearize, uncontract, voxel_index


def test_contraction_round_trip_and_range():
    x = torch.cat([torch.linspace(-1000, 1000, 20001), torch.tensor([-50.0, 50.0, 6.4, -6.4, 0.0])])
    pts = torch.stack([x, x.flip(0), x / 10], dim=-1).double()
    s = contract(pts)
    assert (s.abs() < 1).all(), "contracted coordinates must lie in (-1, 1)"
    back = uncontract(s)
    err = ((back - pts).abs() / pts.abs().clamp_min(1)).max().item()
    assert err < 1e-9, f"uncontract(contract(x)) differs from x by relative {err}"


def test_contraction_values_and_continuity():
    r = torch.tensor([50.0, 50.0, 6.4], dtype=torch.float64)
    inside = contract(r[None] * 0.5)
    assert torch.allclose(inside, torch.full((1, 3), 0.4, dtype=torch.float64)), f"0.8 x / R inside, got {inside}"
    at = contract(r[None] * (1 - 1e-9))
    beyond = contract(r[None] * (1 + 1e-9))
    assert torch.allclose(at, beyond, atol=1e-7), "contraction must be continuous at |x| = R"
    far = contract(torch.tensor([[100.0, -200.0, 12.8]], dtype=torch.float64))
    want = torch.tensor([[0.9, -0.95, 0.9]], dtype=torch.float64)
    assert torch.allclose(far, want), f"sign(x)(1 - 0.2R/|x|) outside, got {far}"


def test_rays_reproject_and_z_factor():
    rig = ring_rig(3, (24, 40), batch_size=2)
    rays = rig.rays()
    assert rays.directions.shape == (2, 3, 24, 40, 3)
    assert torch.allclose(rays.directions.norm(dim=-1), torch.ones(2, 3, 24, 40), atol=1e-5)
    t = 7.5
    pts = rays.origins + t * rays.directions
    ego2cam = torch.linalg.inv(rig.cam2ego)
    cam = torch.einsum("bnij,bnhwj->bnhwi", ego2cam[..., :3, :3], pts) + ego2cam[..., None, None, :3, 3]
    z = cam[..., 2]
    assert torch.allclose(z, t * rays.z_per_distance, atol=1e-4), "z-depth must equal distance * z_per_distance"
    uvw = torch.einsum("bnij,bnhwj->bnhwi", rig.intrinsics, cam)
    uv = uvw[..., :2] / uvw[..., 2:]
    v, u = torch.meshgrid(torch.arange(24) + 0.5, torch.arange(40) + 0.5, indexing="ij")
    assert torch.allclose(uv[..., 0], u.expand_as(uv[..., 0]), atol=1e-3), "rays must pass through pixel centres"
    assert torch.allclose(uv[..., 1], v.expand_as(uv[..., 1]), atol=1e-3)
    centre = rays.z_per_distance[0, 0, 12, 20]
    corner = rays.z_per_distance[0, 0, 0, 0]
    assert centre > 0.999 and corner < 0.9, "off-axis pixels must have z_per_distance < 1"


def test_ring_rig_cameras_look_outward():
    rig = ring_rig(4, (8, 8))
    forward = rig.cam2ego[0, :, :3, 2]
    want = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [-1.0, 0, 0], [0, -1.0, 0]])
    assert torch.allclose(forward, want, atol=1e-6), f"camera optical axes {forward}"
    assert torch.allclose(torch.linalg.det(rig.cam2ego[0, :, :3, :3]), torch.ones(4)), "rotations must be proper"


def test_rescale_intrinsics_keeps_rays():
    k = torch.tensor([[[[100.0, 0, 64], [0, 90.0, 32], [0, 0, 1]]]])
    pose = torch.eye(4)[None, None]
    full = pixel_rays(k, pose, (64, 128))
    half = pixel_rays(rescale_intrinsics(k, (64, 128), (32, 64)), pose, (32, 64))
    # half-res pixel (i, j) centre = full-res continuous point (2i + 1, 2j + 1): the mean of 4 full pixels
    avg = full.directions[0, 0].unfold(0, 2, 2).unfold(1, 2, 2).mean((-1, -2))
    avg = avg / avg.norm(dim=-1, keepdim=True)
    assert torch.allclose(half.directions[0, 0], avg, atol=1e-4), "resized intrinsics must keep the same rays"
    rig = CameraRig(k, pose, (64, 128)).resized((32, 64))
    assert rig.image_hw == (32, 64)


def test_voxel_index_and_keys():
    s = torch.tensor([[-1.0, -0.999, 0.0], [0.999, 1.0, -0.5]])
    idx = voxel_index(s, 8)
    assert idx.tolist() == [[0, 0, 4], [7, 7, 2]], f"voxel_index got {idx.tolist()}"
    batch = torch.tensor([0, 1])
    keys = linearize(batch, idx, 8)
    assert keys[1] - keys[0] > 0 and keys[1] >= 8**3, "batch index must dominate the key ordering"
    all_idx = torch.stack(torch.meshgrid(*(torch.arange(4),) * 3, indexing="ij"), -1).reshape(-1, 3)
    k = linearize(torch.zeros(64, dtype=torch.long), all_idx, 4)
    assert k.unique().numel() == 64, "keys must be unique per voxel"
    assert math.isclose(float(k.max()), 63)
