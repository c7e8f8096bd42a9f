"""The synthetic world's realism score: how a real-trained segmenter segments its renders.

The shipped ESPNetv2 Cityscapes segmenter (teachers/segmenter.py, trained on real streets only) labels the JPEG
camera images `distillnerf-synth` writes (the training data exactly as the model sees it: same renderer, rig,
camera effects, JPEG), at the width the segmenter teacher runs at (`distillnerf-cache-features` default 1024);
its labels are scored against the world's exact per-pixel semantics (gt/CAM_*/*.npz) with the per-class IoU and
their mean over the 9 classes both vocabularies share. A render that a real-trained network segments as it
segments real streets (about 0.66 mIoU on Cityscapes) is closer to real.

Class mapping (world -> Cityscapes train ids): road + lane_marking -> road, sidewalk, terrain, building, car,
pedestrian -> person, vegetation, pole, sky (pixels without a surface). The world's "pole" class holds poles,
signs and traffic lights, so the segmenter's pole, traffic light and traffic sign all count as pole. Every other
Cityscapes output (truck, bus, train, wall, fence, rider, ...) is a wrong label for every world class. IoU of
class c = |pred c AND gt c| / |pred c OR gt c| summed over all images of the run (pixels of the segmenter's
label map resized bilinearly on the logits to the image size, as the teacher does).

    python benchmarks/realism.py [--label after-cars] [--scenes 4] [--frames 1] [--seed 201] [--width 456]
        [--height 256] [--cameras nuscenes] [--synth-args "--rig random"] [--segmenter-width 1024]
        [--dataroot DIR --version v1.0-synthetic] [--threads 1] [--out benchmarks/results/realism.json]

Each run is one row of the results JSON keyed by --label (a later run with the same label replaces it), with its
own provenance; the top-level provenance is the latest run's. `--dataroot` scores an existing synthetic dataroot
instead of writing one (then --scenes/--seed/... are not used). `--synth-args` passes further options to
`distillnerf-synth` (e.g. the rig / look options of the camera model).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distillnerf_core.provenance import command_line, model_identity, provenance  # noqa: E402
from distillnerf_core.teachers import segmenter as seg  # noqa: E402

# World class name -> the Cityscapes classes (segmenter outputs) that count as that class.
SHARED = {
    "road": ("road",),
    "sidewalk": ("sidewalk",),
    "building": ("building",),
    "pole": ("pole", "traffic light", "traffic sign"),
    "vegetation": ("vegetation",),
    "terrain": ("terrain",),
    "sky": ("sky",),
    "person": ("person",),
    "car": ("car",),
}
# World classes (gt/meta.json "classes") -> the shared class they score as.
WORLD_TO_SHARED = {"road": "road", "lane_marking": "road", "sidewalk": "sidewalk", "building": "building",
                   "pole": "pole", "vegetation": "vegetation", "terrain": "terrain", "sky": "sky",
                   "pedestrian": "person", "car": "car"}
RESULTS = REPO / "benchmarks" / "results" / "realism.json"
OTHER = len(SHARED)  # index of "anything else" in the mapped label maps


def lookup_tables(world_classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(world id -> shared index, segmenter id -> shared index); OTHER where a class is not shared."""
    names = list(SHARED)
    world = np.full(len(world_classes), OTHER, np.int64)
    for i, name in enumerate(world_classes):
        if name not in WORLD_TO_SHARED:
            raise ValueError(f"world class {name!r} has no realism mapping: add it to WORLD_TO_SHARED")
        world[i] = names.index(WORLD_TO_SHARED[name])
    city = np.full(seg.NUM_CLASSES, OTHER, np.int64)
    for k, name in enumerate(names):
        for c in SHARED[name]:
            city[seg.CLASS_NAMES.index(c)] = k
    return world, city


def camera_frames(dataroot: Path, version: str) -> list[tuple[Path, Path]]:
    """(JPEG, ground-truth npz) of every camera keyframe in a synthetic dataroot, in table order."""
    table = dataroot / version / "sample_data.json"
    if not table.is_file():
        raise FileNotFoundError(f"{table} does not exist: not a synthetic dataroot (distillnerf-synth writes one)")
    rows = json.loads(table.read_text())
    out = []
    for r in rows:
        if r["fileformat"] != "jpg":
            continue
        channel = r["filename"].split("/")[1]
        gt = dataroot / "gt" / channel / f"{r['token']}.npz"
        if not gt.is_file():
            raise FileNotFoundError(f"{gt}: the camera image {r['filename']} has no ground truth")
        out.append((dataroot / r["filename"], gt))
    if not out:
        raise ValueError(f"{table} lists no camera images")
    return out


def score(dataroot: Path, version: str, segmenter_width: int) -> dict:
    """Per-class IoU, mIoU and confusions of the segmenter on every camera image of `dataroot`."""
    meta = json.loads((dataroot / "gt" / "meta.json").read_text())
    world_lut, city_lut = lookup_tables(meta["classes"])
    segmenter = seg.load_segmenter()
    n = len(SHARED) + 1
    confusion = np.zeros((n, n), np.int64)  # [gt shared, pred shared]
    city_counts = np.zeros((len(SHARED), seg.NUM_CLASSES), np.int64)  # what each gt class is read as
    frames = camera_frames(dataroot, version)
    t0 = time.perf_counter()
    for jpeg, gt in frames:
        rgb = np.asarray(Image.open(jpeg).convert("RGB"))
        sem = np.load(gt)["semantics"]
        if sem.shape != rgb.shape[:2]:
            raise ValueError(f"{gt}: semantics {sem.shape} do not match the image {rgb.shape[:2]} of {jpeg}")
        hw = seg.segmenter_input_hw(rgb.shape[:2], segmenter_width)
        labels = segmenter.labels([rgb], hw=hw, out_hw=rgb.shape[:2])[0].numpy()
        g, p = world_lut[sem.astype(np.int64)], city_lut[labels]
        confusion += np.bincount((g * n + p).ravel(), minlength=n * n).reshape(n, n)
        shared = g < OTHER
        city_counts += np.bincount((g[shared] * seg.NUM_CLASSES + labels[shared]).ravel(),
                                   minlength=len(SHARED) * seg.NUM_CLASSES).reshape(len(SHARED), seg.NUM_CLASSES)
    seconds = time.perf_counter() - t0
    per_class, read_as = {}, {}
    for k, name in enumerate(SHARED):
        inter = confusion[k, k]
        union = confusion[k, :].sum() + confusion[:, k].sum() - inter
        per_class[name] = float(inter / union) if union else None
        total = city_counts[k].sum()
        top = np.argsort(-city_counts[k], kind="stable")[:3]
        read_as[name] = {seg.CLASS_NAMES[c]: round(float(city_counts[k, c] / total), 3) for c in top
                         if total and city_counts[k, c]}
    scored = [v for v in per_class.values() if v is not None]
    pixels = confusion[:OTHER].sum(axis=1)
    return {"miou": float(np.mean(scored)), "per_class": per_class, "read_as": read_as,
            "gt_pixel_share": {name: round(float(pixels[k] / pixels.sum()), 4) for k, name in enumerate(SHARED)},
            "images": len(frames), "image_hw": list(rgb.shape[:2]), "segmenter_hw": list(hw),
            "segmenter_seconds": round(seconds, 1)}


def write_world(out: Path, args: argparse.Namespace) -> dict:
    """Run distillnerf-synth into `out` (its own command-line parser: the options are those users type)."""
    from distillnerf_core.cli import synth

    argv = ["--out", str(out), "--scenes", str(args.scenes), "--frames", str(args.frames), "--seed", str(args.seed),
            "--cameras", args.cameras, "--width", str(args.width), "--height", str(args.height), "--threads",
            str(args.threads), "--quiet", *shlex.split(args.synth_args)]
    t0 = time.perf_counter()
    if synth.main(argv) != 0:
        raise RuntimeError(f"distillnerf-synth {' '.join(argv)} failed")
    return {"synth_argv": ["--scenes", str(args.scenes), "--frames", str(args.frames), "--seed", str(args.seed),
                           "--cameras", args.cameras, "--width", str(args.width), "--height", str(args.height),
                           *shlex.split(args.synth_args)], "synth_seconds": round(time.perf_counter() - t0, 1)}


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--label", default="current", help="row name in the results (a rerun replaces its row)")
    p.add_argument("--scenes", type=int, default=4)
    p.add_argument("--frames", type=int, default=1)
    p.add_argument("--seed", type=int, default=201)
    p.add_argument("--cameras", default="nuscenes")
    p.add_argument("--width", type=int, default=456)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--synth-args", default="", help="further distillnerf-synth options, one string")
    p.add_argument("--segmenter-width", type=int, default=1024)
    p.add_argument("--dataroot", type=Path, help="score this synthetic dataroot instead of writing one")
    p.add_argument("--version", default="v1.0-synthetic")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 by default: a shared machine)")
    p.add_argument("--note", default="", help="recorded beside the provenance (e.g. the machine's load)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="realism_") as tmp:
        if args.dataroot is not None:
            world, data = {"dataroot": Path(args.dataroot).name}, f"the synthetic dataroot {Path(args.dataroot).name}"
            result = score(args.dataroot, args.version, args.segmenter_width)
        else:
            world = write_world(Path(tmp), args)
            data = (f"distillnerf-synth {' '.join(world['synth_argv'])} (written to a temporary directory, every "
                    "camera image of every keyframe scored)")
            result = score(Path(tmp), args.version, args.segmenter_width)
    run = {"label": args.label, **world, **result,
           "provenance": provenance(command_line("python benchmarks/realism.py", argv),
                                    model=model_identity(seg.default_weights_path()), data=data,
                                    note=args.note or "shared 2-core machine (8 engineers); timings are not clean")}
    old = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": []}
    runs = [r for r in old.get("runs", []) if r["label"] != args.label] + [run]
    write_json(args.out, {"classes": list(SHARED), "mapping": {k: list(v) for k, v in SHARED.items()},
                          "runs": runs, "provenance": run["provenance"]})
    cells = ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} -" for k, v in result["per_class"].items())
    print(f"realism {args.label}: mIoU {result['miou']:.3f} over {result['images']} images ({cells})")
    print(f"car read as {result['read_as']['car']}; person read as {result['read_as']['person']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
