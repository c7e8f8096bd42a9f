#!/usr/bin/env python3
"""Pack a gpu_check.sh output folder into three files (the device returns only a few files per call):

    python benchmarks/gpu_pack.py DIR

DIR/results.json merges every JSON (env, each bench run, bench_all, the keyframe predictor, each profile);
DIR/results.tar.gz holds every file as written (JSON, profiler tables, logs); summary.md stays. The packed
originals are removed from DIR.
"""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distillnerf_core.provenance import provenance

KEEP = {"summary.md", "results.json", "results.tar.gz"}


def main(argv: list[str] | None = None) -> int:
    out = Path((argv or sys.argv[1:])[0])
    files = sorted(p for p in out.iterdir() if p.is_file() and p.name not in KEEP)
    merged: dict = {"bench": {}, "profiles": {}}
    for path in files:
        if path.suffix != ".json":
            continue
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        if path.name.startswith("bench_") and path.name != "bench_all.json":
            merged["bench"][path.stem[len("bench_"):]] = data
        elif path.name.startswith("profile_"):
            merged["profiles"][path.stem[len("profile_"):]] = data
        else:
            merged[path.stem] = data
    merged["provenance"] = provenance(
        "bash benchmarks/gpu_check.sh OUTDIR",
        model="random weights for distillnerf-bench; the ScenePredictor rows: the bundled model (models/default)",
        data="random images, 6 cameras at each config's size; the ScenePredictor rows: the real keyframe "
             "(data/nuscenes_sample)")
    env = merged.get("env") or {}
    if env.get("gpu"):
        merged["provenance"]["machine"] = (f"{env['gpu']}, torch {env.get('torch')}, CUDA {env.get('cuda')}; "
                                           + merged["provenance"]["machine"])
    (out / "results.json").write_text(json.dumps(merged, indent=1) + "\n")
    with tarfile.open(out / "results.tar.gz", "w:gz") as tar:
        for path in files:
            tar.add(path, arcname=path.name)
    for path in files:
        path.unlink()
    print(f"packed {len(files)} files into {out}/results.tar.gz; merged JSON {out}/results.json; "
          f"left: {sorted(p.name for p in out.iterdir())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
