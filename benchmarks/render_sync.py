#!/usr/bin/env python3
"""Does the no-grad render synchronise with the host? (issue 26 item 2)

    python benchmarks/render_sync.py [--device cuda] [--configs tiny paper] --json OUT

Per config (random weights, a ring of 6 cameras): encode once, render once (lazy tables, cuDNN plans), then
the full render (RGB, features, feature head) and the depth-only render under
`torch.cuda.set_sync_debug_mode("error")` on CUDA: the first host sync raises and is recorded with its
message; on the CPU under `sync_free_policy` with `HostSyncRecorder` (the GPU's choices, the dispatched ops
that would sync listed). The encode is not checked: voxelising has data-dependent sizes (`unique`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from distillnerf_core.benchmarking import HostSyncRecorder, sync_free_policy  # noqa: E402
from distillnerf_core.model.cameras import ring_rig  # noqa: E402
from distillnerf_core.model.distillnerf import DistillNeRFModel, ModelConfig  # noqa: E402
from distillnerf_core.provenance import command_line, provenance  # noqa: E402


def check(config: str, device: torch.device) -> dict:
    """{"syncs": [...] or [], "error": message of the first CUDA sync or None} of one config's render."""
    torch.manual_seed(0)
    cfg = ModelConfig.load(config)
    model = DistillNeRFModel(cfg).eval().to(device)
    rig = ring_rig(6, tuple(cfg.image_hw)).to(device)
    with torch.no_grad():
        scene = model.encode(torch.rand(1, 6, 3, *cfg.image_hw, device=device), rig.intrinsics, rig.cam2ego)
        model.render(scene, rig)

        def renders() -> None:
            model.render(scene, rig)
            model.render(scene, rig, rgb=False, features=False)

        if device.type != "cuda":
            with sync_free_policy(), HostSyncRecorder() as recorder:
                renders()
            return {"config": config, "syncs": recorder.syncs, "error": None, "method": "CPU proxy"}
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            renders()
            error = None
        except RuntimeError as err:  # the first synchronising call
            error = str(err)[:500]
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return {"config": config, "syncs": [error] if error else [], "error": error,
                "method": "torch.cuda.set_sync_debug_mode('error')"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="+", default=["tiny", "paper"])
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    record = {"device": args.device, "torch_version": torch.__version__,
              "provenance": provenance(command_line("python benchmarks/render_sync.py", argv),
                                       model="random weights", data="random images, a ring of 6 cameras"),
              "runs": []}
    for config in args.configs:
        run = check(config, torch.device(args.device))
        record["runs"].append(run)
        print(f"{config} ({run['method']}): " + ("no host sync" if not run["syncs"] else f"SYNCS {run['syncs']}"))
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0 if all(not r["syncs"] for r in record["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
