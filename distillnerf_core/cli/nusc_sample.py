"""`distillnerf-nusc-sample --out D`: the bundled real keyframe (data/nuscenes_sample) as a devkit-loadable dataroot."""

from __future__ import annotations

import argparse

from distillnerf_core.cli import configure_logging
from distillnerf_core.data.nuscenes_sample import build_dataroot, find_version


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--src", help="partial dataroot (default: the bundled data/nuscenes_sample)")
    p.add_argument("--out", required=True, help="output dataroot")
    p.add_argument("--link", action="store_true", help="symlink the sample files instead of copying")
    a = p.parse_args(argv)
    out = build_dataroot(a.src, a.out, a.link)
    version = find_version(out)
    from nuscenes.nuscenes import NuScenes

    nusc = NuScenes(version, str(out), verbose=False)
    print(f"wrote {out}/{version}: {len(nusc.sample)} sample(s), {len(nusc.sample_data)} sample_data; "
          f"load with NuScenes('{version}', '{out}')")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
