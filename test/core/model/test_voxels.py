"""Sparse voxel pooling: exact means, batch separation, fine/coarse hierarchy."""

import torch

from distillnerf_core.model.contraction import contract, voxel_index
from distillnerf_core.model.voxels import downsample, gather_rows, voxelize

RADIUS = (50.0, 50.0, 6.4)


def _brute_mean(points, values, res):
    sums, counts = {}, {}
    for b in range(points.shape[0]):
        idx = voxel_index(contract(points[b], RADIUS), res)
        for i in range(points.shape[1]):
            key = (b, *idx[i].tolist())
            sums[key] = sums.get(key, 0) + values[b, i]
            counts[key] = counts.get(key, 0) + 1
    return {k: sums[k] / counts[k] for k in sums}, counts


def test_pooled_features_equal_brute_force_mean():
    torch.manual_seed(0)
    points = torch.randn(2, 400, 3) * torch.tensor([3.0, 3.0, 1.0])
    values = torch.randn(2, 400, 5, dtype=torch.float64)
    coarse, fine = voxelize(points, values, 16, 64, RADIUS)
    for level in (coarse, fine):
        want, counts = _brute_mean(points, values, level.resolution)
        assert level.num_voxels == len(want), f"res {level.resolution}: {level.num_voxels} voxels, brute {len(want)}"
        for row in range(level.num_voxels):
            key = (int(level.batch[row]), *level.coords[row].tolist())
            assert key in want, f"voxel {key} not produced by brute force"
            assert torch.allclose(level.features[row], want[key]), f"mean of voxel {key} differs"
            assert int(level.counts[row]) == counts[key], f"count of voxel {key} differs"
        assert (level.keys[1:] > level.keys[:-1]).all(), "keys must be sorted and unique"


def test_batches_are_separate():
    points = torch.zeros(2, 1, 3)
    values = torch.tensor([[[1.0]], [[3.0]]])
    coarse, fine = voxelize(points, values, 8, 16, RADIUS)
    assert fine.num_voxels == 2 and fine.batch.tolist() == [0, 1], "same point in two batch elements = 2 voxels"
    assert fine.features.squeeze(-1).tolist() == [1.0, 3.0]


def test_fine_voxels_have_coarse_parents_and_downsample_is_mean():
    torch.manual_seed(1)
    points = torch.randn(1, 2000, 3) * 20
    values = torch.randn(1, 2000, 3, dtype=torch.float64)
    coarse, fine = voxelize(points, values, 8, 32, RADIUS)
    parents = torch.cat([fine.batch[:, None], fine.coords // 4], -1)
    coarse_set = {tuple(r) for r in torch.cat([coarse.batch[:, None], coarse.coords], -1).tolist()}
    assert all(tuple(p) in coarse_set for p in parents.tolist()), "every fine voxel needs its coarse parent"
    down = downsample(fine, 8)
    assert torch.equal(down.keys, coarse.keys), "downsampled fine level must occupy the coarse voxels"
    for row in range(down.num_voxels):
        mask = (parents == torch.cat([down.batch[row : row + 1], down.coords[row]])).all(-1)
        assert torch.allclose(down.features[row], fine.features[mask].mean(0)), "downsample must average children"
    idx = down.find(coarse.keys)
    assert (idx == torch.arange(coarse.num_voxels)).all()
    assert (down.find(torch.tensor([-5, 10**12])) == -1).all(), "absent keys must map to -1"


def test_gather_rows_equals_padded_indexing_and_never_reads_misses():
    """The old formulation: cat a zero pad row and advanced-index it (its backward was 98% of a GPU step)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    g = torch.Generator().manual_seed(0)
    table = torch.randn(7, 3, generator=g, requires_grad=True)
    rows = torch.randint(0, 8, (50, 8), generator=g)  # 7 = a miss
    rows[0] = 7
    hits = int((rows < 7).sum())
    upstream = torch.randn(50, 8, 3, generator=g)

    old = torch.cat([table, table.new_zeros(1, 3)])[rows]
    (old_grad,) = torch.autograd.grad(old, table, upstream)

    class Log(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.sizes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten.index_select, torch.ops.aten.index_add) and args[0].shape[0] == 7:
                self.sizes.append((func.overloadpacket.__name__, args[2].numel()))
            return func(*args, **(kwargs or {}))

    with Log() as log:
        new = gather_rows(table, rows)
        (new_grad,) = torch.autograd.grad(new, table, upstream)
    assert torch.equal(new, old) and torch.equal(new_grad, old_grad)
    assert new.shape == (50, 8, 3)
    assert sorted(log.sizes) == [("index_add", hits), ("index_select", hits)], (
        f"only the {hits} hits may be gathered and scattered back, got {log.sizes}")
    assert torch.equal(gather_rows(table[:, 0], rows), old[..., 0]), "1-D tables (density logits) too"


def test_gather_rows_without_backward_reads_misses_as_zeros():
    """The no-grad path (one gather from a zero-padded table) gives the same values, empty tables included."""
    g = torch.Generator().manual_seed(3)
    table = torch.randn(7, 3, generator=g)
    rows = torch.randint(0, 8, (50, 8), generator=g)  # 7 = a miss
    expected = torch.cat([table, table.new_zeros(1, 3)])[rows]
    with torch.no_grad():
        assert torch.equal(gather_rows(table, rows), expected)
        assert torch.equal(gather_rows(table.requires_grad_(True), rows), expected)
        empty = gather_rows(torch.zeros(0, 3), torch.zeros(4, 2, dtype=torch.long))
    assert empty.shape == (4, 2, 3) and not empty.any()
