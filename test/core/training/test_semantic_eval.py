"""Zero-shot semantic occupancy evaluation: the camera-visibility mask and the metric bookkeeping."""

import torch

from distillnerf_core.training.semantic_eval import visible_voxels


def test_visible_up_to_the_first_surface():
    K = torch.tensor([[[10.0, 0.0, 10.0], [0.0, 10.0, 10.0], [0.0, 0.0, 1.0]]])
    # optical camera at the ego origin looking along ego +x (z_cam = x_ego, x_cam = -y_ego, y_cam = -z_ego)
    E = torch.eye(4)[None].clone()
    E[0, :3, :3] = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    depth = torch.full((1, 20, 20), 10.0)
    depth[0, :, :5] = 0.0  # sky on the image's left (ego +y)
    pts = torch.tensor([[5.0, 0.0, 0.0], [10.3, 0.0, 0.0], [12.0, 0.0, 0.0], [-5.0, 0.0, 0.0], [30.0, 25.0, 0.0]])
    seen = visible_voxels(pts, K, E, (20, 20), depth, margin=0.4)
    assert seen.tolist() == [True, True, False, False, True], "in front / on the surface / behind / behind the " \
                                                             "camera / through the sky"
