"""Occupancy queries on an ego-frame grid."""

import torch

from distillnerf_core.model.cameras import ring_rig
from distillnerf_core.model.contraction import contract
from distillnerf_core.model.distillnerf import DistillNeRFModel
from distillnerf_core.model.occupancy import grid_centers, query_occupancy
from distillnerf_core.model.renderer import VoxelField
from distillnerf_core.model.voxels import pool

RADIUS = (50.0, 50.0, 6.4)


def test_grid_default_shape():
    assert grid_centers((-40, 40), (-40, 40), (-5, 3), 0.5).shape == (160, 160, 16, 3)


def test_occupied_cells_match_a_hand_built_box():
    torch.manual_seed(0)
    model = DistillNeRFModel("tiny").eval()
    rig = ring_rig(2, (32, 64))
    scene = model.encode(torch.rand(1, 2, 3, 32, 64), rig.intrinsics, rig.cam2ego)
    # replace the field by one occupied fine voxel block around (10, 0, 0) m
    res = model.config.voxels.fine_resolution
    box = torch.stack(
        torch.meshgrid(torch.linspace(9, 11, 9), torch.linspace(-1, 1, 9), torch.linspace(-1, 1, 9), indexing="ij"), -1
    ).reshape(-1, 3)
    idx = ((contract(box, RADIUS) + 1) * res / 2).floor().long().unique(dim=0)
    fdim = model.config.lift.feature_dim
    values = torch.cat([torch.ones(len(idx), fdim), torch.full((len(idx), 1), 5.0)], -1)
    fine = pool(torch.zeros(len(idx), dtype=torch.long), idx, values, res, 1)
    coarse = scene.field.coarse.with_features(scene.field.coarse.features.detach() * 0 - 30.0)
    scene.field = VoxelField(coarse, fine, RADIUS)
    occ = query_occupancy(model, scene)
    assert occ.density_grid.shape == (160, 160, 16)
    assert len(occ.centers) > 0, "the hand-built block must be occupied"
    assert (occ.centers[:, 0] > 8).all() and (occ.centers[:, 0] < 12).all(), "occupied cells outside the block"
    assert occ.centers[:, 1].abs().max() < 2 and occ.centers[:, 2].abs().max() < 2
    assert occ.features.shape == (len(occ.centers), model.config.feature_head.dim)
    assert (occ.density > occ.threshold).all()
    assert torch.equal(
        occ.centers,
        grid_centers((-40, 40), (-40, 40), (-5, 3), 0.5).reshape(-1, 3)[
            occ.occupied_index[:, 0] * 160 * 16 + occ.occupied_index[:, 1] * 16 + occ.occupied_index[:, 2]
        ],
    )
