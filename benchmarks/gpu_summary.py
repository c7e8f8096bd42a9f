#!/usr/bin/env python3
"""Summarise a gpu_check.sh output folder: DIR/summary.md (tables) and DIR/summary.json.

    python benchmarks/gpu_summary.py DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def main(argv: list[str] | None = None) -> int:
    out = Path((argv or sys.argv[1:])[0])
    env = _load(out / "env.json")
    lines = [f"# GPU check: {env.get('gpu', 'no GPU')}, torch {env.get('torch', '?')}, {env.get('date', '?')}", ""]
    if env.get("missing"):
        lines += [f"Missing optional modules (their checks skipped): {', '.join(env['missing'])}", ""]
    lines += ["## distillnerf-bench (random weights, 6 cameras at 228x128 unless the config says otherwise; "
              "`realistic`: the bundled real keyframe with trained weights)", "",
              "| config | mode | precision | batch | median ms | p90 ms | images/s | peak MB | floor ms | x floor |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    compiled_note = ("`compiled`: `--compile` (torch.compile of encoder, lift, decoder); first call s = its "
                     "compilation; failed = stages that fell back to eager")
    rows = []
    for path in sorted(out.glob("bench_*_*_*.json")):
        r = _load(path)
        if "latency_ms_median" not in r:
            continue
        total = r.get("total", {})
        ratio = total.get("measured_over_floor")
        floor = f"{total['floor_ms']:.3f} | {ratio:.0f}" if ratio else "- | -"
        mode = r["mode"]
        if r.get("scene") == "realistic":  # the load: a trained model's occupancy on the real keyframe
            voxels = r.get("voxels_occupied", {})
            mode += f" realistic ({voxels.get('fine', '?')} fine voxels; {r.get('weights', '?')})"
        if r.get("compiled"):
            failed = f", failed: {', '.join(r['compile_errors'])}" if r.get("compile_errors") else ""
            mode += f" compiled (first call {r['first_call_ms'] / 1000:.0f} s{failed})"
        lines.append(f"| {r['config']} | {mode} | {r['precision']} | {r['batch']} | "
                     f"{r['latency_ms_median']:.1f} | {r['latency_ms_p90']:.1f} | {r['images_per_s']:.0f} | "
                     f"{r['peak_mem_mb']:.0f} | {floor} |")
        rows.append(r)
    if any(r.get("compiled") for r in rows):
        lines += ["", compiled_note]
    for outcome in [o for p in sorted(out.glob("bench_all*.json")) for o in _load(p).get("runs", [])]:
        if outcome["status"] != "ok":
            lines.append(f"| {outcome['run']} | {outcome['status']}: {outcome.get('error', outcome.get('reason'))} |")
    lines += ["", "## Per-stage (ms measured / floor ms)", "",
              "| run | " + " | ".join(["encoder", "lift", "voxelize", "sparse_conv", "render", "decode"]) + " |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        floors = r.get("floors", {})
        cells = [f"{r['stage_ms'][s]:.1f} / {floors.get(s, {}).get('floor_ms', 0):.3f}" for s in r["stage_ms"]]
        run = f"{r['config']} {r['mode']} {r['precision']} b{r['batch']}" + (" compiled" if r.get("compiled") else "")
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    for kf in (_load(p) for p in sorted(out.glob("keyframe_predictor*.json"))):
        compiled = " (compiled: torch.compile of encoder, lift, decoder)" if kf.get("compiled") else ""
        lines += ["", f"## ScenePredictor on the real keyframe ({kf.get('cameras')} x {kf.get('image_hw')}, "
                      f"bundled model, {kf.get('device')}){compiled}", "",
                  "| precision | outputs | predict median ms | model ms |", "|---|---|---|---|"]
        for precision, runs in kf.get("runs", {}).items():
            if "skipped" in runs:
                lines.append(f"| {precision} | skipped: {runs['skipped']} | | |")
                continue
            for name, run in runs.items():
                first = f" (first call {run['first_call_ms'] / 1000:.1f} s)" if kf.get("compiled") else ""
                lines.append(f"| {precision} | {name}{first} | {run['call_ms_median']:.1f} | "
                             f"{run['model_ms_median']:.1f} |")
    if (out / "loader_throughput.json").is_file():  # issue 26: can the loader feed the step?
        ld = _load(out / "loader_throughput.json")
        title = (f"## Training data loader ({ld['dataroot']['keyframes']} keyframes of 6 x 1600x900 JPEG + LiDAR -> "
                 f"{ld['image_hw']}, against the {ld['step_ms']:g} ms step = {ld['step_rate_per_s']:.1f}/s)")
        lines += ["", title, "", "| decode | workers | samples/s | x step rate |", "|---|---|---|---|"]
        for r in ld["loader"]:
            lines.append(f"| {r['decode']} | {r['workers']} | {r['samples_per_s']:.1f} | {r['step_ratio']:.2f} |")
        for mode, cost in ld["in_process"].items():
            lines.append(f"\n{mode}: {cost['cpu_ms_median']:.0f} CPU ms per sample, {cost['cores_for_aim']:.2f} cores "
                         f"for {ld['aim_ratio']:g}x the step rate")
    if (out / "render_sync.json").is_file():  # issue 26 item 2: a no-grad render without host syncs
        rs = _load(out / "render_sync.json")
        lines += ["", f"## Host syncs of the no-grad render ({rs.get('device')})", "", "| config | method | syncs |",
                  "|---|---|---|"]
        for r in rs.get("runs", []):
            lines.append(f"| {r['config']} | {r['method']} | {'; '.join(r['syncs'])[:300] or 'none'} |")
    for path in sorted(out.glob("profile_*.json")):
        prof = _load(path)
        lines += ["", f"## Top kernels: {prof['config']} {prof['mode']} {prof['precision']} "
                      f"({prof['total_ms_per_step']:.1f} ms per step in {prof['sorted_by']})", "",
                  "| ms per step | calls | name |", "|---|---|---|"]
        key = prof["sorted_by"]
        for row in prof["top"][:15]:
            lines.append(f"| {row[key]:.2f} | {row['calls_per_step']:.0f} | `{row['name'][:90]}` |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
