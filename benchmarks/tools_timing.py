#!/usr/bin/env python3
"""How long the data tools take, run as a user runs them (a fresh process each, imports included).

    .venv/bin/python benchmarks/tools_timing.py [--work DIR] [--json benchmarks/results/tools_timing.json]

distillnerf-synth (keyframes/min, as it prints), distillnerf-nusc-sample and distillnerf-dgp2nusc on the
real data in data/, distillnerf-cache-features (oracle teacher) and distillnerf-nusc2bag on the synthetic
dataroot, and distillnerf-play at --rate 0 with no subscriber (messages/s, as it prints). The DDS traffic
of the player stays on loopback (the repository's Fast DDS profile).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distillnerf_core.provenance import provenance  # noqa: E402

SYNTH = {"scenes": 1, "frames": 4, "seed": 101, "width": 456, "height": 256}


def run_tool(module: str, *args: str) -> tuple[float, str]:
    """Wall seconds of `python -m module args` and its output; a failing tool ends the benchmark."""
    env = dict(os.environ, PYTHONPATH=str(REPO), FASTDDS_DEFAULT_PROFILES_FILE=str(REPO / "config" /
               "fastdds_loopback.xml"), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout + done.stderr


def number_before(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"output has no {pattern!r}:\n{text}")
    return float(match.group(1))


def measure(work: Path) -> dict[str, dict]:
    synth_root, bag = work / "synthetic", work / "synthetic_bag"
    tools: dict[str, dict] = {}
    seconds, out = run_tool("distillnerf_core.cli.synth", "--out", str(synth_root), "--quiet",
                            *[f"--{k}={v}" for k, v in SYNTH.items()])
    tools["distillnerf-synth"] = {
        "command": "distillnerf-synth --out D " + " ".join(f"--{k} {v}" for k, v in SYNTH.items()),
        "seconds": seconds, "keyframes_per_min": number_before(r"speed: ([\d.]+) frames/min", out),
        "data": f"{SYNTH['scenes'] * SYNTH['frames']} synthetic keyframes, 6 cameras {SYNTH['width']}x"
                f"{SYNTH['height']}, 1 thread"}
    seconds, _ = run_tool("distillnerf_core.cli.nusc_sample", "--out", str(work / "nuscenes_sample"))
    tools["distillnerf-nusc-sample"] = {"command": "distillnerf-nusc-sample --out D", "seconds": seconds,
                                        "data": "data/nuscenes_sample (1 keyframe, 6 cameras + LiDAR)"}
    seconds, _ = run_tool("distillnerf_core.cli.dgp2nusc", "--scene", "data/ddad_scene02", "--out", str(work / "ddad"))
    tools["distillnerf-dgp2nusc"] = {"command": "distillnerf-dgp2nusc --scene data/ddad_scene02 --out D",
                                     "seconds": seconds,
                                     "data": "data/ddad_scene02 (3 frames, 6 cameras + LiDAR, ego masks derived)"}
    seconds, _ = run_tool("distillnerf_core.cli.cache_features", "--dataroot", str(synth_root), "--version",
                          "v1.0-synthetic", "--teacher", "oracle", "--no-progress")
    images = SYNTH["scenes"] * SYNTH["frames"] * 6
    tools["distillnerf-cache-features"] = {
        "command": "distillnerf-cache-features --dataroot D --version v1.0-synthetic --teacher oracle",
        "seconds": seconds, "data": f"{images} synthetic camera images ({SYNTH['width']}x{SYNTH['height']})"}
    seconds, _ = run_tool("distillnerf_ros.tools.nusc2bag", "--dataroot", str(synth_root), "--version",
                          "v1.0-synthetic", "--out", str(bag))
    tools["distillnerf-nusc2bag"] = {"command": "distillnerf-nusc2bag --dataroot D --version v1.0-synthetic --out B",
                                     "seconds": seconds, "data": "the synthetic dataroot above (MCAP)"}
    seconds, out = run_tool("distillnerf_ros.tools.play", str(bag), "--rate", "0", "--wait-subscribers", "0")
    tools["distillnerf-play"] = {
        "command": "distillnerf-play B --rate 0 --wait-subscribers 0", "seconds": seconds,
        "messages": int(number_before(r"played (\d+) messages", out)),
        "messages_per_s": number_before(r"([\d.]+) messages/s", out),
        "data": "the bag above, no subscriber, loopback Fast DDS profile"}
    return tools


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "tools_timing.json")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="distillnerf_tools_"))
    if work.exists() and any(work.iterdir()):
        parser.error(f"--work {work} is not empty (the tools refuse to overwrite)")
    try:
        tools = measure(work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    result = {"tools": tools,
              "provenance": provenance("python benchmarks/tools_timing.py " + " ".join(argv or sys.argv[1:]),
                                       model="none", data="data/nuscenes_sample, data/ddad_scene02, synthetic")}
    for name, entry in tools.items():
        rate = entry.get("keyframes_per_min") or entry.get("messages_per_s")
        print(f"{name:28s} {entry['seconds']:7.2f} s" + (f"  ({rate:g})" if rate else ""))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
