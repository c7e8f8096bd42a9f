"""`distillnerf-synth --out D --scenes N --frames F --seed S`: synthetic scenes as a nuScenes-format dataroot.

The layout written is described in data/synthetic/export.py. `--rig random` (or random5..random8) draws a rig
per scene (heights, pitch, fields of view, 5-8 cameras, barrel lenses whose raw images are rectified;
data/synthetic/rigs.py), `--look realistic` a camera look per scene (exposure, white balance, over-exposure,
vignetting, sensor noise, JPEG quality; data/synthetic/camera_effects.py); both deterministic from the seed.
"""

from __future__ import annotations

import argparse

import torch

from distillnerf_core.cli import configure_logging
from distillnerf_core.data.synthetic.camera_effects import LOOKS
from distillnerf_core.data.synthetic.export import VERSION, write_dataroot
from distillnerf_core.data.synthetic.rigs import RIG_NAMES


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output dataroot directory")
    p.add_argument("--scenes", type=int, default=1)
    p.add_argument("--frames", type=int, default=10, help="keyframes per scene (2 Hz)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cameras", "--rig", dest="cameras", default="nuscenes",
                   help=f"rig: one of {RIG_NAMES} or a comma list of nuScenes channels (default nuscenes); random:"
                        " a rig per scene with a camera count in 5..8 fixed by the seed, randomN: N cameras")
    p.add_argument("--look", choices=LOOKS, default="plain",
                   help="camera look: plain (the renderer's image, JPEG quality 92) or realistic (per-scene exposure,"
                        " white balance, over-exposure, vignetting, sensor noise, JPEG quality 70-95)")
    p.add_argument("--no-lenses", action="store_true",
                   help="random rigs without lens distortion (pinhole cameras: one render per image instead of two)")
    p.add_argument("--width", type=int, default=400)
    p.add_argument("--height", type=int, default=224)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: the many small per-primitive ops run fastest, and "
                        "robustly on a busy machine, single-threaded; 0 = torch default)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    stats = write_dataroot(a.out, a.scenes, a.frames, a.seed, a.cameras, a.width, a.height, progress=not a.quiet,
                           threads=a.threads or None, look=a.look, lenses=not a.no_lenses)
    print(f"wrote {stats['keyframes']} keyframes ({stats['images']} images, {stats['cameras']} cameras, "
          f"{a.width}x{a.height}) to {a.out}/{VERSION} in {stats['wall_s']:.1f} s")
    print(f"speed: {stats['keyframes_per_min']:.1f} frames/min with {stats['cameras']} cameras "
          f"({stats['images_per_min']:.0f} camera images/min, {a.threads or torch.get_num_threads()} threads); "
          f"{stats['keyframes_per_cpu_min']:.1f} frames per CPU minute (process CPU time: the speed on a busy machine)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
