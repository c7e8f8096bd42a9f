"""The no-grad render path has no host synchronisation (issue 26 item 2).

A host sync is an op whose result size or value the host must read before it can go on (`nonzero`,
`unique`, boolean-mask indexing, `.item()` / `bool()` / `int()` of a tensor, `.tolist()`, `.numpy()`). On a
GPU the forward without grad takes the sync-free policy (`compaction_pays` is False: no compaction of hits
or weighted samples); `sync_free_policy` forces it on the CPU, where `HostSyncRecorder` records every op the
render dispatches: the CPU proxy for `torch.cuda.set_sync_debug_mode("error")`, which runs where CUDA exists.
"""

from __future__ import annotations

import pytest
import torch

from distillnerf_core.benchmarking import HostSyncRecorder, sync_free_policy
from distillnerf_core.model.cameras import ring_rig
from distillnerf_core.model.distillnerf import DistillNeRFModel, ModelConfig


def _scene(device: str = "cpu"):
    torch.manual_seed(0)
    cfg = ModelConfig.load("tiny")
    model = DistillNeRFModel(cfg).eval().to(device)
    rig = ring_rig(3, tuple(cfg.image_hw)).to(device)
    with torch.no_grad():
        scene = model.encode(torch.rand(1, 3, 3, *cfg.image_hw, device=device), rig.intrinsics, rig.cam2ego)
    return model, scene, rig


def _render_syncs(model, scene, rig) -> list[str]:
    with torch.no_grad(), HostSyncRecorder() as recorder:
        model.render(scene, rig)  # RGB, field features and the per-sample feature head
        model.render(scene, rig, rgb=False, features=False)  # the depth-only path
    return recorder.syncs


def test_no_grad_render_has_no_host_sync_under_the_gpu_policy():
    model, scene, rig = _scene()
    compacting = _render_syncs(model, scene, rig)
    assert any("nonzero" in s for s in compacting), "the recorder must see the CPU policy's compaction"
    with torch.no_grad(), HostSyncRecorder() as recorder:
        torch.ones(2).tolist()
        bool(torch.ones(1) > 0)
    assert recorder.syncs == ["Tensor.tolist", "aten._local_scalar_dense.default"]
    with sync_free_policy():
        syncs = _render_syncs(model, scene, rig)
    assert not syncs, f"host syncs in the no-grad render: {syncs}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the CPU proxy above runs everywhere)")
def test_no_grad_render_has_no_host_sync_on_cuda():
    model, scene, rig = _scene("cuda")
    with torch.no_grad():
        model.render(scene, rig)  # first call: the lazy tables (the coarse row grid), cuDNN plans
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            model.render(scene, rig)
            model.render(scene, rig, rgb=False, features=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")
