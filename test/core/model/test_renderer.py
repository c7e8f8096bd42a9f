"""Volume rendering of hand-built voxel fields: wall depth, z-depth output, lookups, empty space."""

import importlib.util

import pytest
import torch
from conftest import REPO

from distillnerf_core.model.cameras import ring_rig
from distillnerf_core.model.contraction import contract, uncontract, voxel_centers
from distillnerf_core.model.distillnerf import ModelConfig
from distillnerf_core.model.lift import depth_bin_edges
from distillnerf_core.model.renderer import RendererConfig, VolumeRenderer, VoxelField
from distillnerf_core.model.voxels import pool

RADIUS = (50.0, 50.0, 6.4)
FINE_RES, COARSE_RES = 512, 128


def _empty(res):
    return pool(torch.zeros(0, dtype=torch.long), torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 3), res, 1)


def _wall_field(first_index=338, thickness=4, channels=2):
    """Fine voxels with x index in [first_index, first_index + thickness), |y| < 10 m, |z| < 5 m, logit 30."""
    s_y, s_z = contract(torch.tensor([0.0, 10.0, 5.0]), RADIUS)[1:]
    ys = torch.arange(int((1 - s_y) * FINE_RES / 2), int((1 + s_y) * FINE_RES / 2))
    zs = torch.arange(int((1 - s_z) * FINE_RES / 2), int((1 + s_z) * FINE_RES / 2))
    xs = torch.arange(first_index, first_index + thickness)
    idx = torch.stack(torch.meshgrid(xs, ys, zs, indexing="ij"), -1).reshape(-1, 3)
    values = torch.cat([torch.ones(idx.shape[0], channels - 1), torch.full((idx.shape[0], 1), 30.0)], -1)
    fine = pool(torch.zeros(idx.shape[0], dtype=torch.long), idx, values, FINE_RES, 1)
    surface = float(uncontract(voxel_centers(torch.tensor([first_index, 0, 0]), FINE_RES) - 1 / FINE_RES, RADIUS)[0])
    coarse = _empty(COARSE_RES)
    coarse = coarse.with_features(torch.zeros(0, channels))
    return VoxelField(coarse, fine, RADIUS), surface


def _renderer(lookup):
    edges = depth_bin_edges(ModelConfig.load("paper").lift)
    cfg = RendererConfig(render_scale=1.0, lookup=lookup, fine_samples=30, fine_sample_spacing=0.1, jitter=False)
    return VolumeRenderer(cfg, edges).eval()


def _tiny_model(train=False, lookup="nearest", fine_level=True):
    """The tiny model with random weights, a ring of 6 cameras and random images."""
    from distillnerf_core.model.distillnerf import DistillNeRFModel

    torch.manual_seed(0)
    cfg = ModelConfig.load("tiny")
    cfg.renderer.lookup = lookup
    cfg.voxels.fine_level = fine_level
    model = DistillNeRFModel(cfg).train(train)
    return model, ring_rig(6, tuple(cfg.image_hw)), torch.rand(1, 6, 3, *cfg.image_hw)


@pytest.mark.parametrize("lookup", ["nearest", "trilinear"])
def test_wall_depth_within_one_percent(lookup):
    field, surface = _wall_field()
    assert abs(surface - 20.02) < 0.01, f"test setup: wall surface at {surface}"
    rig = ring_rig(1, (8, 16), hfov_deg=40.0, height=0.0, radius=0.0)  # at origin, looking along +x
    out = _renderer(lookup)(field, rig)
    rel = ((out.depth - surface).abs() / surface).max().item()
    assert rel < 0.01, f"{lookup}: rendered z-depth off the wall at {surface:.2f} m by {100 * rel:.2f}%"
    assert out.opacity.min() > 0.99, f"{lookup}: the wall must be opaque, min opacity {out.opacity.min():.3f}"
    # The wall is perpendicular to the optical axis: z-depth is constant while ray distances are not.
    z_factor = rig.rays().z_per_distance[0, 0, 0, 0]
    assert z_factor < 0.95, "test setup: corner rays must be noticeably off-axis"
    assert (out.depth[0, 0, 0, 0] - surface).abs() < 0.01 * surface, "corner depth must be z-depth, not distance"
    assert out.features.shape == (1, 1, 2, 8, 16), f"fine + coarse feature channels, got {tuple(out.features.shape)}"
    assert torch.allclose(out.features[0, 0, 0], out.opacity[0, 0], atol=1e-4), "wall feature 1 composited"


def test_empty_field_renders_nothing():
    coarse = _empty(COARSE_RES).with_features(torch.zeros(0, 3))
    fine = _empty(FINE_RES).with_features(torch.zeros(0, 3))
    out = _renderer("trilinear")(VoxelField(coarse, fine, RADIUS), ring_rig(2, (4, 6)))
    assert out.opacity.abs().max() == 0, "empty space must have zero opacity"
    assert out.features.abs().max() == 0


def test_fine_level_overrides_coarse():
    field, surface = _wall_field(channels=2)
    # a coarse wall nearer (about 10 m) is ignored only where the fine level is occupied; here it is not
    s_x = contract(torch.tensor([10.0, 0.0, 0.0]), RADIUS)[0]
    ci = int((s_x + 1) * COARSE_RES / 2)
    idx = torch.stack(
        torch.meshgrid(torch.tensor([ci]), torch.arange(40, 88), torch.arange(0, 128), indexing="ij"), -1
    ).reshape(-1, 3)
    coarse = pool(
        torch.zeros(len(idx), dtype=torch.long), idx, torch.tensor([[0.0, 30.0]]).expand(len(idx), 2), COARSE_RES, 1
    )
    both = VoxelField(coarse, field.fine, RADIUS)
    out = _renderer("nearest")(both, ring_rig(1, (4, 4), hfov_deg=20.0, height=0.0, radius=0.0))
    assert (out.depth < 12).all(), f"the nearer coarse wall must be seen where fine is empty: {out.depth}"


def test_trilinear_renders_smooth_field_better():
    path = REPO / "benchmarks" / "lookup_accuracy.py"
    spec = importlib.util.spec_from_file_location("lookup_accuracy", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    near, tri = mod.feature_rmse("nearest", 4000), mod.feature_rmse("trilinear", 4000)
    assert tri < 0.5 * near, f"trilinear feature RMSE {tri:.4f} should beat nearest {near:.4f}"
    near_d, tri_d = mod.wall_depth_error("nearest"), mod.wall_depth_error("trilinear")
    assert tri_d < near_d, f"trilinear depth error {tri_d:.4f} m should beat nearest {near_d:.4f} m"


@pytest.mark.parametrize("lookup", ["nearest", "trilinear"])
def test_field_lookups_equal_the_padded_table_formulation(lookup):
    """Density and features (and their gradients) are bit-identical to gathering from zero-padded tables."""
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 16, (300, 3), generator=g)
    fine = pool(torch.zeros(300, dtype=torch.long), idx * 2, torch.randn(300, 4, generator=g), 32, 1)
    coarse = pool(torch.zeros(300, dtype=torch.long), idx // 2, torch.randn(300, 4, generator=g), 8, 1)
    fine_feats = fine.features.clone().requires_grad_(True)
    coarse_feats = coarse.features.clone().requires_grad_(True)
    field = VoxelField(coarse.with_features(coarse_feats), fine.with_features(fine_feats), RADIUS)
    points = (torch.rand(2000, 3, generator=g) - 0.5) * torch.tensor([120.0, 120.0, 16.0])
    hits = field.locate(points, torch.zeros(2000, dtype=torch.long), lookup)
    assert (hits.fine_rows == fine.num_voxels).any() and (hits.fine_rows < fine.num_voxels).any(), "setup"

    density, feats = field.density(hits), field.features(hits)
    up_d, up_f = torch.randn_like(density), torch.randn_like(feats)
    new = torch.autograd.grad([density, feats], [fine_feats, coarse_feats], [up_d, up_f])

    def old_level(table, rows, w):
        padded = torch.cat([table, table.new_zeros(1, table.shape[-1])])
        mass = w.sum(-1)
        logit = (w * padded[rows, -1]).sum(-1) / mass.clamp_min(1e-8)
        dens = mass * torch.exp(30.0 * torch.tanh(logit / 30.0) - 1.0)
        feat = (w[..., None] * padded[rows, :-1]).sum(-2) / w.sum(-1, keepdim=True).clamp_min(1e-8)
        return dens, mass, feat

    fd, fm, ff = old_level(fine_feats, hits.fine_rows, hits.fine_w)
    cd, _, cf = old_level(coarse_feats, hits.coarse_rows, hits.coarse_w)
    old_density, old_feats = fd + (1.0 - fm) * cd, torch.cat([ff, cf], -1)
    old = torch.autograd.grad([old_density, old_feats], [fine_feats, coarse_feats], [up_d, up_f])
    assert torch.equal(density, old_density) and torch.equal(feats, old_feats)
    for a, b in zip(new, old, strict=True):  # repeated rows: the scatter-add sums in another order
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6), f"gradient off by {(a - b).abs().max()}"


def test_nested_nearest_lookup_equals_searching_both_levels():
    """voxelize's levels are nested, so the fine level is searched under coarse hits only: same rows."""
    from distillnerf_core.model.renderer import _locate
    from distillnerf_core.model.voxels import voxelize

    g = torch.Generator().manual_seed(1)
    points = (torch.rand(2, 3000, 3, generator=g) - 0.5) * torch.tensor([160.0, 160.0, 20.0])
    coarse, fine = voxelize(points, torch.randn(2, 3000, 3, generator=g), 16, 64, RADIUS)
    field = VoxelField(coarse, fine, RADIUS)
    assert field._is_nested(), "voxelize output must be recognised as nested"
    # queries: the pooled points themselves, points near voxel faces, and random points
    s_faces = torch.round(contract(points[0], RADIUS) * 32) / 32 + 1e-7 * torch.randn(3000, 3, generator=g)
    queries = torch.cat([points[0], uncontract(s_faces.clamp(-0.999, 0.999), RADIUS), points[1] * 1.3])
    batch = torch.cat([torch.zeros(6000, dtype=torch.long), torch.ones(3000, dtype=torch.long)])
    hits = field.locate(queries, batch, "nearest")
    s = contract(queries, RADIUS)
    for name, level in (("fine", fine), ("coarse", coarse)):
        rows, w = _locate(level, s, batch, "nearest")
        assert torch.equal(getattr(hits, f"{name}_rows"), rows) and torch.equal(getattr(hits, f"{name}_w"), w)
    assert (hits.fine_rows < fine.num_voxels).sum() > 1000, "test setup: many fine hits"
    wall, _ = _wall_field()
    assert not wall._is_nested(), "a fine level without coarse parents must use the full search"


@pytest.mark.parametrize("lookup", ["nearest", "trilinear"])
def test_sync_free_gathers_equal_the_compacting_ones(monkeypatch, lookup):
    """A GPU forward without grad reads misses from a clamped row and zeroes them (no nonzero, no host sync);
    forced here on the CPU, the whole model's outputs must be bit-identical to the compacting path."""
    from distillnerf_core.model import renderer as renderer_module
    from distillnerf_core.model import voxels as voxels_module

    model, rig, images = _tiny_model(lookup=lookup)
    with torch.no_grad():
        compacted = model(images, rig.intrinsics, rig.cam2ego)
        for module in (voxels_module, renderer_module):
            monkeypatch.setattr(module, "compaction_pays", lambda table: False)
        sync_free = model(images, rig.intrinsics, rig.cam2ego)
    for name in ("rgb", "depth", "opacity", "features", "field_features", "weights"):
        assert torch.equal(getattr(compacted, name), getattr(sync_free, name)), f"{name} differs"


@pytest.mark.parametrize("nested", [True, False])
def test_nearest_feature_rows_equal_the_per_sample_features(nested):
    """A nearest sample's [fine | coarse] features are one row of the per-voxel table, also where a fine
    voxel has no occupied coarse parent (the wall field) and for points that miss both levels."""
    from distillnerf_core.model.voxels import voxelize

    g = torch.Generator().manual_seed(2)
    if nested:
        points = (torch.rand(1, 3000, 3, generator=g) - 0.5) * torch.tensor([160.0, 160.0, 20.0])
        field = VoxelField(*voxelize(points, torch.randn(1, 3000, 5, generator=g), 16, 64, RADIUS), RADIUS)
        queries = torch.cat([points[0], points[0] * 1.3])
    else:
        field, surface = _wall_field()
        queries = (torch.rand(6000, 3, generator=g) - 0.5) * torch.tensor([2.0, 24.0, 12.0])
        queries[:, 0] += surface + 0.5  # around the wall: hits, and misses beside it
    hits = field.locate(queries, torch.zeros(len(queries), dtype=torch.long), "nearest")
    fine_hit = hits.fine_rows[:, 0] < field.fine.num_voxels
    assert fine_hit.sum() > 50 and (~fine_hit).sum() > 50, "test setup: fine hits and misses"
    assert field.has_nearest_rows()
    table = field.nearest_feature_rows(torch.arange(field.fine.num_voxels + field.coarse.num_voxels + 1))
    assert torch.equal(table.index_select(0, field.nearest_feature_ids(hits)), field.features(hits))
    some = torch.tensor([len(table) - 1, 0, field.fine.num_voxels, len(table) - 2, 0])  # any subset, any order
    assert torch.equal(field.nearest_feature_rows(some), table.index_select(0, some))


@pytest.mark.parametrize("fine_level", [True, False])
def test_feature_rows_path_equals_per_sample_features_and_head(monkeypatch, fine_level):
    """Rendering features and the feature head from the referenced per-voxel rows gives the per-sample path's
    images and parameter gradients (the head runs on at most V rows instead of every weighted sample)."""
    model, rig, images = _tiny_model(train=True, fine_level=fine_level)

    def run():
        torch.manual_seed(1)  # the same jitter in both runs
        model.zero_grad()
        out = model(images, rig.intrinsics, rig.cam2ego)
        (out.features.square().mean() + out.field_features.abs().mean() + out.rgb.mean()).backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    table_out, table_grads = run()
    monkeypatch.setattr(VoxelField, "has_nearest_rows", lambda self: False)
    sample_out, sample_grads = run()
    for name in ("features", "field_features", "rgb", "depth"):
        a, b = getattr(table_out, name), getattr(sample_out, name)
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), f"{name} differs by {(a - b).abs().max()}"
    assert table_grads.keys() == sample_grads.keys()
    for name, grad in table_grads.items():
        assert torch.allclose(grad, sample_grads[name], rtol=1e-4, atol=1e-6), f"gradient of {name} differs"


def test_chunked_inference_equals_one_chunk():
    """Without gradients rays go in chunks of `chunk_rays` (memory bound): the images are the same."""
    model, rig, images = _tiny_model()
    with torch.no_grad():
        whole = model(images, rig.intrinsics, rig.cam2ego)
        model.renderer.cfg.chunk_rays = 37  # not a divisor of the ray count
        chunked = model(images, rig.intrinsics, rig.cam2ego)
    for name in ("depth", "opacity", "features", "weights", "rgb"):
        a, b = getattr(whole, name), getattr(chunked, name)
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), f"{name} differs by {(a - b).abs().max()}"
