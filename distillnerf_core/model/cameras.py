"""Camera rigs and pixel rays.

Cameras use the OPTICAL convention (z forward, x right, y down); `cam2ego` maps camera to ego frame.
Pixel (u, v) covers [u, u+1) x [v, v+1); its ray passes through the centre (u + 0.5, v + 0.5), so
rescaling intrinsics for a resize is an exact per-row scale.

Depth conventions (the reference mixes them up): the model marches rays in DISTANCE along the unit
ray direction; LiDAR and evaluation use camera Z-DEPTH. `z_per_distance` (the cosine between the ray
and the optical axis) converts: z = distance * z_per_distance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class CameraRig:
    """N cameras per batch element: intrinsics (B, N, 3, 3), cam2ego (B, N, 4, 4), shared image size.

    `camera_ids` (N,) selects the per-camera decoder embedding; by default camera i has id i.
    """

    intrinsics: torch.Tensor
    cam2ego: torch.Tensor
    image_hw: tuple[int, int]
    camera_ids: torch.Tensor | None = None
    max_camera_id: int | None = None
    """The largest camera id as a host int where known without reading the device (the default ids, ids
    given on the CPU): the decoder's id check then costs no host sync."""

    def __post_init__(self) -> None:
        k, e = self.intrinsics, self.cam2ego
        if k.dim() != 4 or k.shape[-2:] != (3, 3):
            raise ValueError(f"intrinsics must be (B, N, 3, 3), got {tuple(k.shape)}")
        if e.dim() != 4 or e.shape[-2:] != (4, 4) or e.shape[:2] != k.shape[:2]:
            raise ValueError(f"cam2ego must be (B, N, 4, 4) matching intrinsics {tuple(k.shape)}, got {tuple(e.shape)}")
        self.image_hw = (int(self.image_hw[0]), int(self.image_hw[1]))
        if self.camera_ids is None:
            self.camera_ids = torch.arange(k.shape[1], device=k.device)
            self.max_camera_id = k.shape[1] - 1
        elif self.max_camera_id is None and self.camera_ids.device.type == "cpu" and self.camera_ids.numel():
            self.max_camera_id = int(self.camera_ids.max())

    @property
    def batch_size(self) -> int:
        return self.intrinsics.shape[0]

    @property
    def num_cameras(self) -> int:
        return self.intrinsics.shape[1]

    def to(self, device: torch.device | str) -> CameraRig:
        return CameraRig(self.intrinsics.to(device), self.cam2ego.to(device), self.image_hw, self.camera_ids.to(device),
                         self.max_camera_id)

    def resized(self, hw: tuple[int, int]) -> CameraRig:
        """The same cameras for images resized to `hw` (H, W)."""
        k = rescale_intrinsics(self.intrinsics, self.image_hw, hw)
        return CameraRig(k, self.cam2ego, hw, self.camera_ids, self.max_camera_id)

    def rays(self) -> Rays:
        """One ray per pixel at this rig's image size."""
        return pixel_rays(self.intrinsics, self.cam2ego, self.image_hw)


@dataclass
class Rays:
    """Ego-frame rays, each (B, N, H, W, ...): origins (.., 3), unit directions (.., 3), z_per_distance."""

    origins: torch.Tensor
    directions: torch.Tensor
    z_per_distance: torch.Tensor


def rescale_intrinsics(intrinsics: torch.Tensor, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> torch.Tensor:
    """Intrinsics for an image resized from `from_hw` to `to_hw` (aspect need not be kept)."""
    sy = to_hw[0] / from_hw[0]
    sx = to_hw[1] / from_hw[1]
    scale = intrinsics.new_tensor([[sx, sx, sx], [sy, sy, sy], [1.0, 1.0, 1.0]])
    return intrinsics * scale


def pixel_rays(intrinsics: torch.Tensor, cam2ego: torch.Tensor, image_hw: tuple[int, int]) -> Rays:
    """Rays through the pixel centres of every camera, in the ego frame."""
    h, w = image_hw
    dtype, device = intrinsics.dtype, intrinsics.device
    v, u = torch.meshgrid(
        torch.arange(h, dtype=dtype, device=device) + 0.5,
        torch.arange(w, dtype=dtype, device=device) + 0.5,
        indexing="ij",
    )
    pix = torch.stack([u, v, torch.ones_like(u)], dim=-1)  # (H, W, 3)
    k_inv = torch.linalg.inv(intrinsics)  # (B, N, 3, 3)
    cam_dirs = torch.einsum("bnij,hwj->bnhwi", k_inv, pix)
    cam_dirs = cam_dirs / cam_dirs.norm(dim=-1, keepdim=True)
    z_per_distance = cam_dirs[..., 2]
    rot = cam2ego[..., :3, :3]
    directions = torch.einsum("bnij,bnhwj->bnhwi", rot, cam_dirs)
    origins = cam2ego[..., None, None, :3, 3].expand_as(directions)
    return Rays(origins, directions, z_per_distance)


def ring_rig(
    num_cameras: int,
    image_hw: tuple[int, int],
    batch_size: int = 1,
    hfov_deg: float = 70.0,
    height: float = 1.6,
    radius: float = 1.0,
) -> CameraRig:
    """Cameras evenly spread around the ego vehicle looking outward (benchmarks, tests, demos)."""
    h, w = image_hw
    f = 0.5 * w / math.tan(math.radians(hfov_deg) / 2)
    k = torch.tensor([[f, 0.0, w / 2], [0.0, f, h / 2], [0.0, 0.0, 1.0]])
    poses = []
    for i in range(num_cameras):
        yaw = 2 * math.pi * i / num_cameras
        fwd = torch.tensor([math.cos(yaw), math.sin(yaw), 0.0])
        down = torch.tensor([0.0, 0.0, -1.0])
        right = torch.linalg.cross(fwd, torch.tensor([0.0, 0.0, 1.0]))  # optical x = forward x up
        pose = torch.eye(4)
        pose[:3, 0], pose[:3, 1], pose[:3, 2] = right, down, fwd
        pose[:3, 3] = torch.tensor([radius * math.cos(yaw), radius * math.sin(yaw), height])
        poses.append(pose)
    cam2ego = torch.stack(poses)[None].repeat(batch_size, 1, 1, 1)
    intr = k[None, None].repeat(batch_size, num_cameras, 1, 1)
    return CameraRig(intr, cam2ego, (h, w))
