#!/usr/bin/env python3
"""Does a model trained in the synthetic world transfer to real frames? Issue 24's table, per model variant.

    python benchmarks/world_transfer.py --model "today (bundled)=models/default" \\
        --model "new world=RUN/world" --model "+ frozen 2D branch=RUN/frozen" \\
        --model "+ segmenter distillation=RUN/default" [--work DIR] [--threads 1] [--max-synthetic N] \\
        [--json benchmarks/results/world_transfer.json] [--note "..."]

Every model (LABEL=DIR: a run or model directory, or a .safetensors file) is scored with `distillnerf-eval`
(recon PSNR / SSIM of the input cameras, LiDAR-depth AbsRel / delta1, per sample, averaged) on:
  - nuscenes:  the real nuScenes keyframe (`distillnerf-nusc-sample`, data/nuscenes_sample), its 6 cameras;
  - ddad:      the three real DDAD frames (`distillnerf-dgp2nusc` of data/ddad_scene02; ego-body masks left
               out), cameras CAMERA_01,CAMERA_06,CAMERA_05,CAMERA_09,CAMERA_07,CAMERA_08 (the nuScenes order);
  - synthetic held-out sets, seed 999, 2 towns x 4 keyframes, 456x256 (`distillnerf-synth`): `plain` (the
    nuScenes rig, the renderer's own look: the bundled model's held-out protocol) and `realistic`
    (`--rig random6 --look realistic`: the nuScenes cameras in their order, mounts, fields of view and lenses
    randomised); `--synthetic LABEL="SYNTH ARGS"` replaces that list.
None of these frames is trained on. Each model's row in the results JSON is keyed by its label: a later run with
the same label replaces it (so variants can be scored as they finish); --order sets the table's column order.
The aims are issue 24's: nuScenes AbsRel <= 0.25 and delta1 >= 0.65, DDAD AbsRel <= 0.35 and delta1 >= 0.50,
recon PSNR higher than the reference model's (`--reference`, default the first label: today's bundled model),
synthetic held-out PSNR and AbsRel no more than 10% worse than the reference's.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distillnerf_core.data.datasets import dataroot_cameras  # noqa: E402
from distillnerf_core.provenance import command_line, model_identity, portable, provenance  # noqa: E402

DDAD_CAMERAS = "CAMERA_01,CAMERA_06,CAMERA_05,CAMERA_09,CAMERA_07,CAMERA_08"
DEFAULT_SYNTHETIC = {"plain": "", "realistic": "--rig random6 --look realistic"}
METRICS = ("psnr", "ssim", "abs_rel", "delta1", "rmse", "dense_abs_rel", "num_samples")
AIMS = {  # (set, metric): (kind, value); kind "max"/"min": absolute bound, "gt_ref": above the reference,
    ("nuscenes", "abs_rel"): ("max", 0.25),  # "ref_10pct": no more than 10% worse than the reference
    ("nuscenes", "delta1"): ("min", 0.65),
    ("ddad", "abs_rel"): ("max", 0.35),
    ("ddad", "delta1"): ("min", 0.50),
    ("nuscenes", "psnr"): ("gt_ref", None),
    ("ddad", "psnr"): ("gt_ref", None),
    ("synthetic:plain", "psnr"): ("ref_10pct", None),
    ("synthetic:plain", "abs_rel"): ("ref_10pct", None),
}


def _run(module: str, args: list[str], log: list[str]) -> None:
    """Run `distillnerf-<module>` (as `python -m distillnerf_core.cli.<module>`), recording it with portable
    paths in `log`; its error output on failure."""
    log.append(command_line(f"distillnerf-{module.replace('_', '-')}", args))
    done = subprocess.run([sys.executable, "-m", f"distillnerf_core.cli.{module}", *args], cwd=REPO,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"world_transfer: distillnerf-{module} {' '.join(args)} failed ({done.returncode}):\n"
                         f"{done.stderr[-3000:]}")


def prepare_sets(work: Path, synthetic: dict[str, str], ddad_scene: Path, log: list[str]) -> dict[str, dict]:
    """The evaluation dataroots (written once into `work`, reused when complete): name -> {dataroot, version,
    cameras}."""
    sets: dict[str, dict] = {}
    nusc = work / "nuscenes"
    if not nusc.is_dir():
        _run("nusc_sample", ["--out", str(nusc), "--link"], log)
    version = next(p.name for p in nusc.iterdir() if p.is_dir() and p.name.startswith("v1.0"))
    sets["nuscenes"] = {"dataroot": nusc, "version": version, "cameras": None}
    ddad = work / "ddad"
    if not (ddad / "v1.0-dgp").is_dir():
        _run("dgp2nusc", ["--scene", str(ddad_scene), "--out", str(ddad), "--overwrite"], log)
    sets["ddad"] = {"dataroot": ddad, "version": "v1.0-dgp", "cameras": DDAD_CAMERAS}
    for label, args in synthetic.items():
        root = work / f"synthetic_{label}"
        if not (root / "v1.0-synthetic" / "sample.json").is_file():
            _run("synth", ["--out", str(root), "--seed", "999", "--scenes", "2", "--frames", "4", "--width", "456",
                           "--height", "256", *shlex.split(args), "--quiet"], log)
        # every model scores the same cameras in the same order: a random rig's cameras are no known rig, and a
        # model trained on another one records its own order (the nuScenes order where the rig is nuScenes')
        cameras = ",".join(dataroot_cameras(root, "v1.0-synthetic"))
        sets[f"synthetic:{label}"] = {"dataroot": root, "version": "v1.0-synthetic", "cameras": cameras,
                                      "synth_args": args}
    return sets


def checkpoint_of(path: Path) -> Path:
    """A model .safetensors from a file, a run / model directory (its model.safetensors)."""
    if path.is_file():
        return path
    if (path / "model.safetensors").is_file():
        return path / "model.safetensors"
    raise SystemExit(f"world_transfer: no model at {path} (a .safetensors file or a directory with model.safetensors)")


def evaluate(ckpt: Path, data: dict, threads: int, max_samples: int | None, tmp: Path, log: list[str]) -> dict:
    """distillnerf-eval of one model on one set: the metrics of METRICS and the seconds it took."""
    out = tmp / f"eval_{time.monotonic_ns()}.json"
    cmd = ["--checkpoint", str(ckpt), "--dataroot", str(data["dataroot"]), "--version",
           data["version"], "--json", str(out), "--threads", str(threads), "--no-progress"]
    if data["cameras"]:
        cmd += ["--cameras", data["cameras"]]
    if max_samples:
        cmd += ["--max-samples", str(max_samples)]
    start = time.perf_counter()
    _run("eval", cmd, log)
    metrics = json.loads(out.read_text())
    return {**{k: metrics.get(k) for k in METRICS if k in metrics}, "eval_s": round(time.perf_counter() - start, 1)}


def aims(scores: dict[str, dict], reference: dict[str, dict] | None) -> dict[str, bool | None]:
    """Per aim key "set/metric": met (True / False), None where a score or the reference is missing (and, for the
    reference model itself, None for the aims relative to it)."""
    met: dict[str, bool | None] = {}
    for (name, metric), (kind, bound) in AIMS.items():
        value = scores.get(name, {}).get(metric)
        ref = None if reference is None else reference.get(name, {}).get(metric)
        if value is None or (kind in ("gt_ref", "ref_10pct") and ref is None):
            met[f"{name}/{metric}"] = None
        elif kind == "max":
            met[f"{name}/{metric}"] = value <= bound
        elif kind == "min":
            met[f"{name}/{metric}"] = value >= bound
        elif kind == "gt_ref":
            met[f"{name}/{metric}"] = value > ref
        else:  # no more than 10% worse: PSNR >= 0.9 ref, AbsRel <= 1.1 ref
            met[f"{name}/{metric}"] = value >= 0.9 * ref if metric == "psnr" else value <= 1.1 * ref
    return met


def _model_arg(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"--model must be LABEL=DIR, got {text!r}")
    return label.strip(), Path(path.strip())


def _synthetic_arg(text: str) -> tuple[str, str]:
    label, sep, args = text.partition("=")
    if not sep or not label.strip() or "/" in label or " " in label.strip():
        raise argparse.ArgumentTypeError(f"--synthetic must be LABEL=\"SYNTH ARGS\" (a one-word label), got {text!r}")
    return label.strip(), args


def write_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def finish(models: dict, previous: dict, args: argparse.Namespace) -> tuple[list[str], str]:
    """(table order, reference label), every model's aims recomputed against the reference."""
    order = [s.strip() for s in args.order.split(",")] if args.order else list(previous.get("order", []))
    order = [label for label in order if label in models] + [label for label in models if label not in order]
    reference = args.reference or previous.get("reference") or order[0]
    if reference not in models:
        raise SystemExit(f"world_transfer: --reference {reference!r} is not a scored label ({order})")
    for label in models:
        models[label]["aims"] = aims(models[label]["scores"],
                                     None if label == reference else models[reference]["scores"])
    return order, reference


def rescore(args: argparse.Namespace) -> int:
    """--rescore: the stored scores' aims, order and reference recomputed; the rest of --json kept."""
    if not args.json.is_file():
        raise SystemExit(f"world_transfer: --rescore needs an existing {args.json}")
    data = json.loads(args.json.read_text())
    data["order"], data["reference"] = finish(data["models"], data, args)
    write_atomic(args.json, data)
    print(f"rescored {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=_model_arg, action="append", default=[], help="LABEL=DIR (repeatable)")
    p.add_argument("--synthetic", type=_synthetic_arg, action="append",
                   help="LABEL=\"distillnerf-synth options\" of a held-out set (repeatable; default plain and "
                        "realistic)")
    p.add_argument("--ddad-scene", type=Path, default=REPO / "data" / "ddad_scene02")
    p.add_argument("--work", type=Path, help="where the evaluation dataroots are written (default: a temp dir)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-synthetic", type=int, help="score only the first N samples of each synthetic set (a quick "
                   "check; the table says so)")
    p.add_argument("--reference", help="label whose scores the relative aims compare against (default: the first "
                   "label of the table)")
    p.add_argument("--order", help="comma list of labels: the table's column order (default: as first added)")
    p.add_argument("--json", type=Path, default=REPO / "benchmarks/results/world_transfer.json")
    p.add_argument("--note", default="", help="e.g. the machine's load (kept beside each row's provenance)")
    p.add_argument("--rescore", action="store_true", help="only recompute the aims (and --order / --reference) of "
                   "the models already in --json; no evaluation")
    args = p.parse_args(argv)
    if not args.model and not args.rescore:
        p.error("give at least one --model LABEL=DIR (or --rescore)")
    if args.rescore:
        return rescore(args)
    synthetic = dict(args.synthetic) if args.synthetic else dict(DEFAULT_SYNTHETIC)
    previous = json.loads(args.json.read_text()) if args.json.is_file() else {}
    models = dict(previous.get("models", {}))
    with tempfile.TemporaryDirectory(prefix="world_transfer_") as tmp_dir:
        tmp = Path(tmp_dir)
        work = args.work or tmp / "data"
        work.mkdir(parents=True, exist_ok=True)
        log: list[str] = []
        sets = prepare_sets(work, synthetic, args.ddad_scene, log)
        for label, path in args.model:
            ckpt = checkpoint_of(path)
            row_log: list[str] = []
            scores = {}
            for name, data in sets.items():
                limit = args.max_synthetic if name.startswith("synthetic:") else None
                scores[name] = evaluate(ckpt, data, args.threads, limit, tmp, row_log)
                got = scores[name]
                print(f"{label} / {name}: PSNR {got.get('psnr'):.2f}, AbsRel {got.get('abs_rel'):.3f}, delta1 "
                      f"{got.get('delta1'):.3f} ({got['num_samples']} samples, {got['eval_s']:.0f} s)", flush=True)
            models[label] = {
                "scores": scores,
                "max_synthetic_samples": args.max_synthetic,
                "provenance": provenance(command_line("python benchmarks/world_transfer.py", argv),
                                         model=model_identity(ckpt), data=", ".join(sets), threads=args.threads,
                                         note=args.note, evaluations=row_log),
            }
    order, reference = finish(models, previous, args)
    held_out = ", ".join(f"{k}: {v or 'no options'}" for k, v in synthetic.items())
    result = {
        "order": order,
        "reference": reference,
        "sets": {name: {"dataroot": portable(d["dataroot"]) if args.work else d["dataroot"].name,
                        "version": d["version"], "cameras": d["cameras"], **({"synth_args": d["synth_args"]}
                        if "synth_args" in d else {})} for name, d in sets.items()},
        "aims": {f"{n}/{m}": {"kind": k, "bound": b} for (n, m), (k, b) in AIMS.items()},
        "models": models,
        "note": args.note,
        "provenance": provenance(command_line("python benchmarks/world_transfer.py", argv),
                                 model=", ".join(f"{label}: {portable(path)}" for label, path in args.model),
                                 data="data/nuscenes_sample (1 keyframe), data/ddad_scene02 (3 frames), synthetic "
                                      f"held-out seed 999 ({held_out})",
                                 setup=log, threads=args.threads, load=os.getloadavg()),
    }
    write_atomic(args.json, result)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
