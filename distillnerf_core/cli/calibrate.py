"""`distillnerf-calibrate`: fit the text-query softmax temperature of a distilled model on held-out frames with
ground-truth semantics, report the expected calibration error (ECE) before and after, and store the
calibration (temperature, domain, ECE, a domain check) in the checkpoint's sidecar.

    distillnerf-calibrate --checkpoint CKPT --fit-dataroot D1 --eval-dataroot D2 --version V
        [--classes road,car,...] [--domain TEXT] [--json OUT] [--write] [--max-samples N] [--threads T]

Targets: the semantic voxels of a synthetic dataroot (distillnerf-synth writes them under gt/): the model's
occupied, camera-visible voxels on the ground-truth grid, queried with the class texts plus the background
option (what ~/query_scene answers), target = the voxel's class or background (free / not queried). The
temperature and the background option's cosine are fitted on D1 and the ECE reported on both D1 and D2 (D2
the honest number: not fitted on); use dataroots of seeds the model was not trained on. The domain check's
threshold comes from D1's frames (the median best-class cosine of the occupied voxels on the node's default
grid, minus 3 standard deviations).
`--write` rewrites CKPT's sidecar (`feature_head.teacher.calibration`); the weights are not touched.
A segmenter-distilled model (teacher kind segmenter, closed vocabulary) is calibrated on its 20 class logits
instead: target = the voxel's synthetic class as a Cityscapes class (road + lane_marking -> road, sidewalk,
terrain, building, car, pedestrian -> person, vegetation, pole; training.calibration.SEGMENTER_CLASS_OF_SYNTHETIC);
free voxels the model calls occupied and classes not in --classes -> the segmenter's "background" class
(`--free background`, the default: what the reply's background option sums) or left out (`--free exclude`).
Only the temperature of softmax(logits / T) is fitted; the domain check is the median top class probability
of a frame's occupied voxels (at the fitted T) on the node's grid, threshold from D1's frames as above.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from distillnerf_core.checked_files import DataFileError
from distillnerf_core.cli import configure_logging
from distillnerf_core.data.datasets import DataConfig, make_dataset
from distillnerf_core.portable_paths import portable_path
from distillnerf_core.teachers.query import (
    QueryConfig,
    SemanticQuerier,
    SemanticsUnavailableError,
)
from distillnerf_core.training.calibration import (
    ECE_BINS,
    FREE_TARGETS,
    SEGMENTER_CLASS_OF_SYNTHETIC,
    TEMPERATURE_RANGE,
    domain_threshold,
    fit_calibration,
    median_max_class_probability,
    store_calibration,
    synthetic_voxel_class_logits,
    synthetic_voxel_logits,
)
from distillnerf_core.training.checkpoints import CheckpointError, load_checkpoint, resolve_checkpoint
from distillnerf_core.training.semantic_eval import SYNTHETIC_VOXEL_CLASSES

DEFAULT_DOMAIN = "synthetic scenes (distillnerf-synth), held-out seeds"


WORLD_KEYS = ("seed", "scenes", "frames", "rig", "look", "width", "height")


def synthetic_world(dataroot: str | Path) -> dict[str, Any]:
    """How distillnerf-synth made the dataroot (its gt/meta.json: seed, scenes, frames, rig, look, size), stored
    with the calibration so that a check can render a frame of the same domain; {} when it does not say."""
    meta_file = Path(dataroot) / "gt" / "meta.json"
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError):
        return {}
    return {k: meta[k] for k in WORLD_KEYS if k in meta}


def calibrate(checkpoint: str | Path, fit_dataroot: str, eval_dataroot: str, version: str,
              classes: tuple[str, ...] = SYNTHETIC_VOXEL_CLASSES, domain: str = DEFAULT_DOMAIN,
              max_samples: int | None = None, progress: bool = False, free: str = "background") -> dict[str, Any]:
    """{"calibration": what the sidecar stores, "report": ECE / NLL / accuracy before and after on both splits,
    "domain_statistic": per-frame values of both splits}. `free` (segmenter-distilled models only): the target
    of free / unmapped voxels, see calibrate_segmenter."""
    ckpt = resolve_checkpoint(checkpoint)
    model = load_checkpoint(ckpt, "cpu")
    if model.feature_pca is None:
        raise SemanticsUnavailableError(f"{ckpt}: the model was not distilled from a teacher: no query scores")
    identity = dict(model.config.feature_head.teacher)
    identity.pop("calibration", None)  # fitted from the raw logits, whatever was stored before
    querier = SemanticQuerier(model.feature_pca, identity, config=QueryConfig(background=True))
    if identity.get("kind") == "segmenter":  # class logits, not cosines: its own targets and domain statistic
        return calibrate_segmenter(ckpt, model, querier, fit_dataroot, eval_dataroot, version, classes, domain,
                                   max_samples, progress, free)
    uncalibrated = querier.temperature
    splits = _splits(model, {"fit": fit_dataroot, "eval": eval_dataroot}, version, max_samples,
                     lambda dataset, indices: synthetic_voxel_logits(model, dataset, querier, classes, indices,
                                                                     progress=progress))
    worlds = {name: synthetic_world(root) for name, root in (("fit", fit_dataroot), ("eval", eval_dataroot))}
    temperature, background, report = fit_calibration(splits["fit"][0], splits["fit"][1], splits["eval"][0],
                                                      splits["eval"][1], uncalibrated, background=True)
    check = domain_threshold(splits["fit"][2])
    calibration = {
        "temperature": temperature, "temperature_before": uncalibrated, "domain": domain,
        "queries": list(classes), "background_cosine": background,
        "background_cosine_before": querier.background_cosine(), "bins": ECE_BINS,
        "ece_before": report["eval"]["before"]["ece"], "ece_after": report["eval"]["after"]["ece"],
        "targets": "semantic voxels (camera-visible, predicted occupied; free or unqueried = background)",
        "fitted_on": {"dataroot": portable_path(fit_dataroot), "voxels": report["fit"]["after"]["samples"],
                      "frames": len(splits["fit"][2]), "world": worlds["fit"]},
        "evaluated_on": {"dataroot": portable_path(eval_dataroot), "voxels": report["eval"]["after"]["samples"],
                         "frames": len(splits["eval"][2]), "world": worlds["eval"]},
        "domain_check": {"statistic": "median_best_class_cosine", **check},
    }
    return {"checkpoint": str(ckpt), "calibration": calibration, "report": report,
            "domain_statistic": {"fit": splits["fit"][2], "eval": splits["eval"][2]}}


def _splits(model: Any, roots: dict[str, str], version: str, max_samples: int | None,
            collect: Callable[[Any, list[int] | None], Any]) -> dict[str, Any]:
    """collect(dataset, indices) on each named dataroot (its first `max_samples` samples, else all)."""
    render_hw = model.renderer.render_hw(tuple(model.config.image_hw))
    splits = {}
    for name, root in roots.items():
        dataset = make_dataset(root, version, model.config.image_hw, DataConfig(), render_hw, load_next=False)
        splits[name] = collect(dataset, list(range(len(dataset)))[:max_samples] if max_samples else None)
    return splits


def calibrate_segmenter(ckpt: Path, model: Any, querier: Any, fit_dataroot: str, eval_dataroot: str, version: str,
                        classes: tuple[str, ...], domain: str, max_samples: int | None, progress: bool,
                        free: str) -> dict[str, Any]:
    """A segmenter-distilled model's calibration: T of softmax(class logits / T) fitted on the fit split's
    voxels against their Cityscapes classes (synthetic classes not in `classes`, and free voxels, -> the
    background class, or left out with free="exclude"); the domain check's threshold from the fit frames' median
    top class probability at the fitted T."""
    uncalibrated = querier.temperature
    splits = _splits(model, {"fit": fit_dataroot, "eval": eval_dataroot}, version, max_samples,
                     lambda dataset, indices: synthetic_voxel_class_logits(model, dataset, querier, indices, free,
                                                                           classes, progress=progress))
    temperature, _, report = fit_calibration(splits["fit"][0], splits["fit"][1], splits["eval"][0],
                                             splits["eval"][1], uncalibrated, background=False)
    statistics = {name: [median_max_class_probability(x, temperature) for x in split[2]]
                  for name, split in splits.items()}
    check = domain_threshold(statistics["fit"])
    targets = sorted({SEGMENTER_CLASS_OF_SYNTHETIC[c] for c in classes})
    calibration = {
        "temperature": temperature, "temperature_before": uncalibrated, "domain": domain,
        "queries": targets, "bins": ECE_BINS,
        "ece_before": report["eval"]["before"]["ece"], "ece_after": report["eval"]["after"]["ece"],
        "targets": ("semantic voxels (camera-visible, predicted occupied) as the segmenter's Cityscapes classes "
                    f"({', '.join(f'{k} -> {v}' for k, v in SEGMENTER_CLASS_OF_SYNTHETIC.items() if k in classes)}); "
                    + ("free or unmapped = background" if free == "background" else "free or unmapped left out")),
        "free_voxels": free,
        "fitted_on": {"dataroot": portable_path(fit_dataroot), "voxels": report["fit"]["after"]["samples"],
                      "frames": len(statistics["fit"]), "world": synthetic_world(fit_dataroot)},
        "evaluated_on": {"dataroot": portable_path(eval_dataroot), "voxels": report["eval"]["after"]["samples"],
                         "frames": len(statistics["eval"]), "world": synthetic_world(eval_dataroot)},
        "domain_check": {"statistic": "median_max_class_probability", **check},
    }
    return {"checkpoint": str(ckpt), "calibration": calibration, "report": report, "domain_statistic": statistics}


def format_report(result: dict[str, Any]) -> str:
    """ECE / NLL / accuracy / confidence before and after, both splits, and the domain check."""
    cal, rep = result["calibration"], result["report"]
    background = (f", background cosine {cal['background_cosine_before']:g} -> {cal['background_cosine']:.4f}"
                  if cal.get("background_cosine") is not None else "")
    lines = [f"temperature {cal['temperature_before']:g} -> {cal['temperature']:.4g}{background} (fitted on "
             f"{cal['fitted_on']['voxels']:,} voxels of {cal['fitted_on']['frames']} frames"
             f"{'; targets: ' + cal['targets'] if 'free_voxels' in cal else ''})",
             f"{'split':<8}{'':<8}{'ECE':>8}{'NLL':>8}{'accuracy':>10}{'confidence':>12}{'voxels':>10}"]
    for split in ("fit", "eval"):
        for when in ("before", "temperature_only", "after"):
            r = rep[split][when]
            label = "T only" if when == "temperature_only" else when
            lines.append(f"{split:<8}{label:<8}{r['ece']:>8.4f}{r['nll']:>8.3f}{r['accuracy']:>10.3f}"
                         f"{r['confidence']:>12.3f}{r['samples']:>10,}")
    if cal["temperature"] >= 0.99 * TEMPERATURE_RANGE[1]:  # the NLL wanted flatter still: argmax nearly never right
        lines.append(f"WARNING: the temperature ended at the top of its range ({TEMPERATURE_RANGE[1]:g}): the model's "
                     f"top class is right on {rep['fit']['after']['accuracy']:.1%} of the fit voxels, so its "
                     "calibrated scores are flat (1 / classes) and the domain check cannot tell frames apart")
    check = cal["domain_check"]
    lines.append(f"domain check: {check['statistic']} >= {check['threshold']:.4f} (fit frames "
                 f"{check['in_domain']['min']:.4f} .. {check['in_domain']['max']:.4f}; eval frames "
                 f"{min(result['domain_statistic']['eval']):.4f} .. {max(result['domain_statistic']['eval']):.4f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = argparse.ArgumentParser(prog="distillnerf-calibrate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--fit-dataroot", required=True, help="held-out dataroot the temperature is fitted on")
    parser.add_argument("--eval-dataroot", required=True, help="another held-out dataroot the ECE is reported on")
    parser.add_argument("--version", default="v1.0-synthetic")
    parser.add_argument("--classes", default=",".join(SYNTHETIC_VOXEL_CLASSES),
                        help="comma list of the ground-truth voxel classes queried (default: %(default)s)")
    parser.add_argument("--domain", default=DEFAULT_DOMAIN, help="what the calibration holds for (stored)")
    parser.add_argument("--free", choices=FREE_TARGETS, default="background",
                        help="segmenter-distilled models: target of free / unqueried voxels the model calls occupied "
                             "(background: the segmenter's background class; exclude: left out)")
    parser.add_argument("--json", type=Path, help="write the calibration and the full report here")
    parser.add_argument("--write", action="store_true", help="store the calibration in the checkpoint's sidecar")
    parser.add_argument("--max-samples", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    try:
        result = calibrate(args.checkpoint, args.fit_dataroot, args.eval_dataroot, args.version, classes, args.domain,
                           args.max_samples, args.progress, args.free)
        print(format_report(result))
        if args.write:
            print(f"wrote the calibration into {store_calibration(result['checkpoint'], result['calibration'])}")
    except (DataFileError, CheckpointError, FileNotFoundError, ValueError) as error:
        print(f"distillnerf-calibrate: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
