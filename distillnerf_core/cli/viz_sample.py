"""`distillnerf-viz-sample --dataroot D --version V --out PNG`: a contact sheet of one sample, to check data by eye."""

from __future__ import annotations

import argparse

from distillnerf_core.cli import configure_logging
from distillnerf_core.viz.sample_sheet import render_contact_sheet


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataroot", required=True)
    p.add_argument("--version", required=True, help="table folder, e.g. v1.0-synthetic, v1.0-test, v1.0-mini")
    p.add_argument("--sample", default=None, help="sample token (default: the first sample)")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--width", type=int, default=480, help="panel width in pixels")
    p.add_argument("--cameras", default=None, help="comma list of channels (default: the sample's cameras)")
    a = p.parse_args(argv)
    cams = a.cameras.split(",") if a.cameras else None
    out = render_contact_sheet(a.dataroot, a.version, a.sample, a.out, a.width, cams)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
