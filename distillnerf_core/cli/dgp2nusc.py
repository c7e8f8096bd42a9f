"""`distillnerf-dgp2nusc --scene DIR --out D`: a DGP scene (DDAD, ...) as a nuScenes-format dataroot.

Conventions (camera names, poses, timestamps, LiDAR layout, ego-body masks): distillnerf_core/data/dgp.py
and distillnerf_core/data/ego_masks.py. The result loads with NuScenes('v1.0-dgp', D) and NuScenesDataset
(cameras = the CAMERA_nn channels; `distillnerf_core.data.dgp.DDAD_CAMERAS` in the nuScenes rig's order).
"""

from __future__ import annotations

import argparse
import sys

from distillnerf_core.cli import configure_logging
from distillnerf_core.data.dgp import VERSION, DGPFormatError, read_scene, write_dataroot


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    p = argparse.ArgumentParser(prog="distillnerf-dgp2nusc", description=__doc__.split("\n")[0])
    p.add_argument("--scene", required=True,
                   help="DGP scene folder (holds scene*.json, calibration/, rgb/, point_cloud/)")
    p.add_argument("--out", required=True, help="output dataroot (must not exist unless --overwrite)")
    p.add_argument("--version", default=VERSION, help=f"table folder name (default {VERSION})")
    p.add_argument("--timestamp-unit", choices=("100ns", "us"), default="100ns",
                   help="unit of the numbers behind DGP's timestamps (DDAD: 100ns)")
    p.add_argument("--no-masks", action="store_true", help="do not derive ego-body masks")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    a = p.parse_args(argv)
    try:
        scene = read_scene(a.scene, a.timestamp_unit)
        out = write_dataroot(scene, a.out, a.version, masks=not a.no_masks, overwrite=a.overwrite)
    except (DGPFormatError, OSError) as error:  # OSError: FileNotFoundError, FileExistsError, unreadable files
        print(f"distillnerf-dgp2nusc: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {out}/{a.version}: {len(scene.frames)} samples, cameras {', '.join(scene.cameras)}; "
          f"load with NuScenes('{a.version}', '{out}')")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
