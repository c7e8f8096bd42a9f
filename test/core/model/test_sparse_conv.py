"""Sparse 3D convolution equals a dense Conv3d on the occupied voxels."""

import torch
from torch import nn

from distillnerf_core.model.sparse_conv import SparseCNN, SparseConv3d, SparseConvConfig, neighbour_table
from distillnerf_core.model.voxels import pool


def _random_level(res=6, batch=2, channels=4, fill=0.35, seed=0):
    g = torch.Generator().manual_seed(seed)
    occ = torch.rand(batch, res, res, res, generator=g) < fill
    b, i, j, k = occ.nonzero().unbind(-1)
    feats = torch.randn(b.numel(), channels, generator=g, dtype=torch.float64)
    level = pool(b, torch.stack([i, j, k], -1), feats, res, batch)
    return level, occ


def test_sparse_conv_matches_dense_conv3d():
    level, occ = _random_level()
    res, batch, cin, cout = 6, 2, 4, 5
    dense = nn.Conv3d(cin, cout, 3, padding=1).double()
    sparse = SparseConv3d(cin, cout).double()
    sparse.load_dense(dense)
    grid = torch.zeros(batch, cin, res, res, res, dtype=torch.float64)
    b, (i, j, k) = level.batch, level.coords.unbind(-1)
    grid[b, :, i, j, k] = level.features
    want = dense(grid)[b, :, i, j, k]
    got = sparse(level.features, neighbour_table(level))
    err = (got - want).abs().max().item()
    assert err < 1e-10, f"sparse conv differs from dense Conv3d on occupied voxels by {err}"


def test_neighbour_table_borders_and_batches():
    level, occ = _random_level(res=4, fill=1.0)
    table = neighbour_table(level)
    assert table.shape == (level.num_voxels, 27)
    corner = ((level.coords == 0).all(-1) & (level.batch == 0)).nonzero().item()
    assert (table[corner] < level.num_voxels).sum() == 8, "a full-grid corner voxel has 8 neighbours (incl. itself)"
    same_batch = level.batch[table.clamp(max=level.num_voxels - 1)] == level.batch[:, None]
    assert same_batch[table < level.num_voxels].all(), "neighbours must never cross batch elements"


def test_sparse_cnn_shapes_and_ablation():
    level, _ = _random_level(channels=3)
    level = level.with_features(level.features.float())
    cfg = SparseConvConfig(width=8, num_layers=2, out_features=6)
    out = SparseCNN(cfg, 3)(level, level)
    assert out.features.shape == (level.num_voxels, 7), "coarse output = out_features + 1 density logit"
    cfg.coarse_only = True
    cnn = SparseCNN(cfg, 3)
    assert cnn.stem.in_features == 3, "coarse-only ablation must not take the folded fine level"
    assert cnn(level, level).features.shape == (level.num_voxels, 7)


def test_one_gemm_conv_equals_the_per_offset_loop_forward_and_backward():
    """The old formulation: 27 advanced-index gathers from a zero-padded table, one matmul per offset."""
    level, _ = _random_level(res=5, fill=0.4, channels=4)
    conv = SparseConv3d(4, 6).double()
    table = neighbour_table(level)
    feats = level.features.clone().requires_grad_(True)

    padded = torch.cat([feats, feats.new_zeros(1, 4)])
    old = sum(padded[table[:, o]] @ conv.weight[o] for o in range(27)) + conv.bias
    upstream = torch.randn_like(old)
    old_grads = torch.autograd.grad(old, [feats, conv.weight, conv.bias], upstream)

    new = conv(feats, table)
    new_grads = torch.autograd.grad(new, [feats, conv.weight, conv.bias], upstream)
    assert (new - old).abs().max() < 1e-12
    for name, a, b in zip(("features", "weight", "bias"), old_grads, new_grads, strict=True):
        assert (a - b).abs().max() < 1e-12, f"{name} gradient differs from the per-offset formulation"
