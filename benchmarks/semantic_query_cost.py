#!/usr/bin/env python3
"""What text queries add to a frame: ScenePredictor.predict with and without `semantic_queries` (same frame).

    python benchmarks/semantic_query_cost.py --checkpoint CKPT --dataroot D --version V \\
        [--queries car building road vegetation] [--iters 10] [--threads 2] [--json OUT]

Runs predict(depth=False, occupancy=True) alternately without and with the queries (after warm-up; the text
embeddings are computed once per predictor and cached, as in a node), and `predictor.query` alone on the
prediction; prints medians in ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from distillnerf_core.data.datasets import DataConfig, make_dataset  # noqa: E402
from distillnerf_core.inference import ScenePredictor  # noqa: E402
from distillnerf_core.provenance import command_line, portable, provenance  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataroot", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--sample-index", type=int, default=0)
    p.add_argument("--queries", nargs="+", default=["car", "building", "road", "vegetation"])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    predictor = ScenePredictor(args.checkpoint, device="cpu")
    hw = predictor.input_hw
    ds = make_dataset(args.dataroot, args.version, hw, DataConfig(), (hw[0] // 4, hw[1] // 4), load_next=False)
    item = ds[args.sample_index]
    images = [(im.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8) for im in item["images"]]
    K, E = list(item["intrinsics"].numpy()), list(item["cam2ego"].numpy())
    plain, labelled, query_only = [], [], []
    for i in range(args.warmup + args.iters):
        t0 = time.perf_counter()
        predictor.predict(images, K, E, depth=False, occupancy=True)
        t1 = time.perf_counter()
        pred = predictor.predict(images, K, E, depth=False, occupancy=True, semantic_queries=args.queries)
        t2 = time.perf_counter()
        predictor.query(args.queries, pred)
        t3 = time.perf_counter()
        if i >= args.warmup:
            plain.append(1000 * (t1 - t0))
            labelled.append(1000 * (t2 - t1))
            query_only.append(1000 * (t3 - t2))
    result = {"machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads} threads",
              "checkpoint": portable(args.checkpoint), "queries": args.queries,
              "voxels": int(pred.voxel_centers.shape[0]), "iters": args.iters,
              "predict_ms_median": statistics.median(plain),
              "predict_with_queries_ms_median": statistics.median(labelled),
              "query_only_ms_median": statistics.median(query_only)}
    result["added_ms_median"] = result["predict_with_queries_ms_median"] - result["predict_ms_median"]
    result["provenance"] = provenance(command_line("python benchmarks/semantic_query_cost.py", argv),
                                      model=portable(args.checkpoint),
                                      data=f"{portable(args.dataroot)} ({args.version}), sample {args.sample_index}",
                                      threads=args.threads)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
