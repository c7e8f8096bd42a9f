#!/usr/bin/env python3
"""Every `distillnerf-bench` run of the GPU check in ONE process (no per-run CUDA start-up), within a budget.

    python benchmarks/gpu_bench_all.py --out DIR [--device cuda] [--configs tiny small paper]
        [--precisions fp32 bf16 fp16] [--budget-s 150] [--quick] [--scene realistic [--fit-steps N]]

For each config x mode (infer, train) x precision: DIR/bench_<config>_<mode>_<precision>.json, plus
paper train bf16 at batch 4 (scaling). A run that fails is recorded with its error and the rest go on; runs
that would start after the budget are recorded as skipped. DIR/bench_all.json lists every run's outcome.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from distillnerf_core.cli.bench import _table, run_benchmark  # noqa: E402
from distillnerf_core.provenance import command_line, provenance  # noqa: E402

# (iters, warmup) per config on CUDA: enough for a stable median, small enough for the 5-minute check.
ITERS = {"tiny": (20, 3), "small": (20, 3), "paper": (10, 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="+", default=["tiny", "small", "paper"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "fp16"])
    parser.add_argument("--modes", nargs="+", default=["infer", "train"])
    parser.add_argument("--budget-s", type=float, default=150.0)
    parser.add_argument("--quick", action="store_true", help="2 iterations, 1 warm-up (a dry run of the script)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the static stages; files are named bench_<...>_compiled.json")
    parser.add_argument("--no-batch4", action="store_true", help="skip the paper train bf16 batch-4 run")
    parser.add_argument("--scene", default="random", choices=["random", "realistic"],
                        help="distillnerf-bench --scene: realistic = the bundled keyframe with trained weights "
                             "(files bench_<...>_realistic.json)")
    parser.add_argument("--fit-steps", type=int, default=100,
                        help="realistic scene, a config without bundled weights: Adam steps on the keyframe first")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    plan = [(c, m, p, 1) for c in args.configs for m in args.modes for p in args.precisions]
    if "paper" in args.configs and "train" in args.modes and "bf16" in args.precisions and not args.no_batch4:
        plan.append(("paper", "train", "bf16", 4))
    start = time.perf_counter()
    outcomes = []
    for config, mode, precision, batch in plan:
        tag = (f"{config}_{mode}_{precision}" + (f"_b{batch}" if batch > 1 else "") + ("_compiled" * args.compile)
               + ("_realistic" if args.scene == "realistic" else ""))
        elapsed = time.perf_counter() - start
        if elapsed > args.budget_s:
            outcomes.append({"run": tag, "status": "skipped", "reason": f"budget of {args.budget_s:.0f} s spent"})
            print(f"--- {tag}: skipped (budget spent)", flush=True)
            continue
        iters, warmup = (2, 1) if args.quick else ITERS.get(config, (10, 3))
        try:
            result = run_benchmark(config, args.device, iters=iters, warmup=warmup, mode=mode, precision=precision,
                                   batch=batch, compile=args.compile, scene=args.scene, fit_steps=args.fit_steps)
        except Exception as err:  # noqa: BLE001 - one failing run (e.g. out of memory) must not lose the others
            outcomes.append({"run": tag, "status": "error", "error": f"{type(err).__name__}: {err}",
                             "traceback": traceback.format_exc()[-2000:]})
            print(f"--- {tag}: ERROR {type(err).__name__}: {err}", flush=True)
            if args.device == "cuda":
                torch.cuda.empty_cache()
            continue
        realistic = args.scene == "realistic"
        result["provenance"] = provenance(
            command_line("python benchmarks/gpu_bench_all.py", argv),
            model=f"{result['weights']} (`{config}` config)" if realistic else f"random weights (`{config}` config)",
            data=f"the bundled real keyframe (data/nuscenes_sample): batch {batch} x 6 cameras" if realistic else
            f"random images: batch {batch} x 6 cameras (a synthetic ring rig)")
        (args.out / f"bench_{tag}.json").write_text(json.dumps(result, indent=2) + "\n")
        outcomes.append({"run": tag, "status": "ok", "latency_ms_median": result["latency_ms_median"],
                         "peak_mem_mb": result["peak_mem_mb"], "wall_s": time.perf_counter() - start - elapsed})
        print(f"--- {tag} ({time.perf_counter() - start:.0f} s)\n{_table(result)}", flush=True)
        if args.device == "cuda":
            torch.cuda.empty_cache()
    listing = args.out / f"bench_all{'_compiled' * args.compile}{'_realistic' * (args.scene == 'realistic')}.json"
    listing.write_text(json.dumps({"device": args.device, "runs": outcomes}, indent=2) + "\n")
    return 0 if all(o["status"] != "error" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
