"""`distillnerf-fit-scene`: fit a per-scene field to every (or the named) scene of a dataroot and cache its renders.

    distillnerf-fit-scene --dataroot D --version V [--scene NAME ...] [--out DIR] [--cameras C1,C2,...]
                          [--steps N] [--render-hw H W] [--image-hw H W] [--holdout-every K] [--threads T]
                          [--sky auto|segmenter|none|CACHE] [--sky-weight W]

Writes DIR (default D/nerf/default) as data/nerf_targets.py describes: per keyframe and camera the field's
z-depth and the virtual cameras' RGB + depth, a manifest with the settings and each scene's quality (held-out
LiDAR pixels, held-out keyframes, how much of the segmenter's sky the field renders as sky). Sky rays (--sky:
"auto" = the dataroot's segmenter feature cache when it has one, else the shipped segmenter run on the images)
get an opacity -> 0 loss and are written as sky. Complete scenes are skipped on a rerun (resumable per scene); a
rerun with other settings into the same DIR is an error. Train on the targets with `data.nerf_targets: DIR` (or its
name).

Sharded (850 scenes): `torchrun --nproc-per-node K [--nnodes M ...] -m distillnerf_core.cli.fit_scene ...` fits
each rank's share of the scenes (sorted names modulo WORLD_SIZE) and rank 0 writes the manifest at the end;
independent jobs (RANK / WORLD_SIZE, no MASTER_ADDR) are merged by the same command with --merge.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from distillnerf_core.cli import configure_logging
from distillnerf_core.data.nerf_targets import NERF_DIR
from distillnerf_core.scene_fit.fit import FitConfig, fit_dataroot, merge_fit


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    p = argparse.ArgumentParser(prog="distillnerf-fit-scene", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataroot", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--scene", action="append", default=None, help="scene name (repeatable); default every scene")
    p.add_argument("--out", type=Path, default=None, help="target directory (default DATAROOT/nerf/default)")
    p.add_argument("--cameras", default=None, help="comma-separated camera channels (default the 6 nuScenes ones)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--rays", type=int, default=None)
    p.add_argument("--image-hw", type=int, nargs=2, default=None)
    p.add_argument("--render-hw", type=int, nargs=2, default=None)
    p.add_argument("--holdout-every", type=int, default=None, help="hold out keyframes i %% K == 1 (0 = none)")
    p.add_argument("--offsets", default=None, help='virtual camera shifts as JSON, e.g. "[[-1,0,0],[1,0,0]]"')
    p.add_argument("--sky", default=None, help='sky mask: "auto" (default: the dataroot\'s segmenter cache, else the '
                   'segmenter on the images), "segmenter", "none", or a segmenter cache name / directory')
    p.add_argument("--sky-weight", type=float, default=None, help="weight of the opacity -> 0 loss on sky rays")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--merge", action="store_true", help="only write DIR/manifest.json from the ranks' parts "
                   "(manifest.rank<k>.jsonl) of a sharded run without a process group")
    args = p.parse_args(argv)
    cfg = FitConfig()
    if args.sky is not None:
        cfg.sky_mask = args.sky
    if args.sky_weight is not None:
        cfg.sky_weight = args.sky_weight
    for key in ("steps", "rays", "image_hw", "render_hw", "holdout_every"):
        value = getattr(args, key)
        if value is not None:
            setattr(cfg, key, list(value) if isinstance(value, list) else value)
    if args.offsets:
        cfg.offsets = [[float(x) for x in o] for o in json.loads(args.offsets)]
    out = args.out or Path(args.dataroot) / NERF_DIR / "default"
    if args.merge:
        try:
            merged, missing = merge_fit(out)
        except (FileNotFoundError, ValueError) as error:
            print(f"distillnerf-fit-scene: error: {error}", file=sys.stderr)
            return 2
        print(f"merged {len(merged['scenes'])} scenes into {out / 'manifest.json'} (complete: {merged['complete']})")
        return 1 if missing else 0
    try:
        manifest = fit_dataroot(args.dataroot, args.version, out, cfg, scenes=args.scene,
                                cameras=args.cameras.split(",") if args.cameras else None, progress=not args.quiet,
                                threads=args.threads)
    except (FileNotFoundError, ValueError) as error:  # ValueError includes DataFileError (a malformed file)
        print(f"distillnerf-fit-scene: error: {error}", file=sys.stderr)
        return 2
    for name, rec in manifest["scenes"].items():
        q = rec["quality"]
        print(json.dumps({"scene": name, **{k: v for k, v in q.items() if k != "frames"}}))
    print(f"targets: {out}" + (f" (rank {manifest['rank']} of {manifest['world_size']})" if "rank" in manifest else ""))
    return 1 if manifest.get("merged") is False else 0


if __name__ == "__main__":
    sys.exit(main())
