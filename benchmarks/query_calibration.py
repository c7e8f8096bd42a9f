#!/usr/bin/env python3
"""Calibrated text-query scores of the bundled model, and the measurement behind its out-of-domain check.

    python benchmarks/query_calibration.py [--work /tmp/distillnerf_calibration] [--store] [--threads 2]
        [--rig nuscenes] [--look plain] [--free background] [--json benchmarks/results/query_calibration.json]

1. held-out synthetic dataroots of seeds the bundled model was not trained on (it was trained on seed 101):
   fit = 4 x 4 keyframes of seed 777, eval = 2 x 4 keyframes of seed 999 (the bundled model's eval.json set),
   rendered with the world the model was trained in (`--rig`, `--look`: distillnerf-synth's options)
2. distillnerf-calibrate's fit (cli/calibrate.py): the softmax temperature of ~/query_scene's probabilities
   fitted on the fit set's camera-visible occupied voxels against the semantic voxels, ECE (15 bins) before and
   after on both sets; the domain check's threshold from the fit frames. Whatever the bundled model's teacher
   (read from its sidecar): a cosine teacher (oracle, CLIP) over the 8 voxel classes + background (T and the
   background cosine), a segmenter-distilled one over its 20 Cityscapes class logits (T only; free voxels ->
   its background class unless `--free exclude`)
3. the domain statistic (a cosine teacher: median best-class cosine of the occupied voxels; a segmenter one:
   median top class probability at the fitted T) and the self-grading recon PSNR of
   every frame as the node sees it (ScenePredictor, JPEGs decoded as the node decodes them, default occupancy
   grid): the held-out synthetic frames against the real frames (the nuScenes keyframe in data/nuscenes_sample,
   the 3 DDAD frames of data/ddad_scene02 through distillnerf-dgp2nusc); the fit frames are measured this way too
4. `--store` writes the calibration (with this run's provenance) into models/default/model.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from grading_cost import decode_as_the_node_does  # noqa: E402

from distillnerf_core.cli.calibrate import calibrate, format_report  # noqa: E402
from distillnerf_core.data.nuscenes_tables import load_sensor_records  # noqa: E402
from distillnerf_core.data.synthetic.export import VERSION, write_dataroot  # noqa: E402
from distillnerf_core.geometry import invert_transform  # noqa: E402
from distillnerf_core.inference import ScenePredictor  # noqa: E402
from distillnerf_core.inference_grading import median, predictor_recon_psnr  # noqa: E402
from distillnerf_core.provenance import command_line, model_identity, provenance  # noqa: E402
from distillnerf_core.teachers.query import QueryConfig, SemanticQuerier  # noqa: E402
from distillnerf_core.training.calibration import (  # noqa: E402
    FREE_TARGETS,
    store_calibration,
    verdict_from_check,
)

BUNDLED = REPO / "models" / "default" / "model.safetensors"
NUSCENES = REPO / "data" / "nuscenes_sample"
DDAD = REPO / "data" / "ddad_scene02"


def ensure_dataroot(path: Path, scenes: int, frames: int, seed: int, rig: str = "nuscenes", look: str = "plain"
                    ) -> Path:
    if not (path / VERSION / "sample.json").is_file():
        print(f"generating {scenes} x {frames} synthetic keyframes (seed {seed}, rig {rig}, look {look}) into {path}",
              flush=True)
        write_dataroot(path, scenes=scenes, frames=frames, seed=seed, cameras=rig, width=456, height=256,
                       progress=False, threads=1, look=look)
    return path


def ensure_ddad(path: Path) -> Path:
    if not path.is_dir():
        from distillnerf_core.cli.dgp2nusc import main as dgp2nusc

        if dgp2nusc(["--scene", str(DDAD), "--out", str(path)]) != 0:
            raise RuntimeError(f"distillnerf-dgp2nusc failed on {DDAD}")
    return path


def node_frames(dataroot: Path, min_hw: tuple[int, int]):
    """(sample token, images decoded as the node decodes them, K, output <- camera) per keyframe."""
    records = [r for r in load_sensor_records(dataroot) if r.is_key_frame]
    for sample in dict.fromkeys(r.sample_token for r in records):
        mine = [r for r in records if r.sample_token == sample]
        cameras = [r for r in mine if r.modality == "camera"]
        reference = next(r for r in mine if r.modality == "lidar")
        ref_from_global = invert_transform(reference.global_from_ego)
        decoded = [decode_as_the_node_does(c.path, c.intrinsics, min_hw) for c in cameras]
        yield (sample, [rgb for rgb, _ in decoded], [K for _, K in decoded],
               [ref_from_global @ c.global_from_ego @ c.ego_from_sensor for c in cameras])


def answers(querier: SemanticQuerier, features: torch.Tensor, queries: list[str]) -> dict:
    """What ~/query_scene would answer for the queries: share of voxels labelled (not background), share scored
    >= 0.9, the highest score."""
    result = querier.query(features, queries)
    labelled = result.label >= 0
    return {"labelled_share": float(labelled.float().mean()) if len(labelled) else 0.0,
            "confident_share": float((labelled & (result.score >= 0.9)).float().mean()) if len(labelled) else 0.0,
            "max_score": float(result.max_scores.max()) if len(labelled) else 0.0}


def measure(predictor: ScenePredictor, querier: SemanticQuerier, calibration: dict, source: str, dataroot: Path
            ) -> list[dict]:
    """Per frame: the domain statistic of the occupied voxels, its verdict, the recon PSNR median, the voxels, and
    the answers to all the queries uncalibrated (`querier`) and with the calibration."""
    queries = calibration["queries"]
    calibrated = SemanticQuerier(querier.pca, {**querier.identity, "calibration": calibration},
                                 config=QueryConfig(background=True))
    rows = []
    for sample, images, K, E in node_frames(dataroot, predictor.input_hw):
        prediction = predictor.predict(images, K, E, depth=False, rgb=True, occupancy=True)
        features = prediction.voxel_features.float().cpu()
        statistic = querier.domain_statistic(features, calibration)  # as the node's domain check reads it
        verdict = verdict_from_check(calibration, statistic)
        rows.append({"source": source, "sample": sample, "cameras": len(images), "statistic": statistic,
                     "in_domain": verdict.in_domain, "occupied_voxels": int(features.shape[0]),
                     "recon_psnr_median": median(predictor_recon_psnr(predictor, images, prediction.rgb)),
                     "uncalibrated": answers(querier, features, queries),
                     "calibrated": answers(calibrated, features, queries)})
        print(f"  {source:<28} {sample[:12]}  {calibration['domain_check']['statistic']} {statistic:.4f} "
              f"({'in' if verdict.in_domain else 'OUT OF'} domain)  recon PSNR {rows[-1]['recon_psnr_median']:.2f} dB",
              flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/distillnerf_calibration"))
    parser.add_argument("--checkpoint", type=Path, default=BUNDLED)
    parser.add_argument("--fit-seed", type=int, default=777)
    parser.add_argument("--fit-scenes", type=int, default=4)
    parser.add_argument("--fit-frames", type=int, default=4)
    parser.add_argument("--eval-seed", type=int, default=999)
    parser.add_argument("--eval-scenes", type=int, default=2)
    parser.add_argument("--eval-frames", type=int, default=4)
    parser.add_argument("--rig", default="nuscenes", help="distillnerf-synth --rig of the synthetic sets")
    parser.add_argument("--look", default="plain", help="distillnerf-synth --look of the synthetic sets")
    parser.add_argument("--free", choices=FREE_TARGETS, default="background",
                        help="segmenter-distilled models: target of free / unqueried voxels (distillnerf-calibrate)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--store", action="store_true", help="write the calibration into the checkpoint's sidecar")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "query_calibration.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    prov = provenance(command_line("python benchmarks/query_calibration.py", argv),
                      model=model_identity(args.checkpoint),
                      data=f"synthetic (456x256, rig {args.rig}, look {args.look}): fit {args.fit_scenes} x "
                           f"{args.fit_frames} keyframes "
                           f"(seed {args.fit_seed}), eval {args.eval_scenes} x {args.eval_frames} (seed "
                           f"{args.eval_seed}); real: data/nuscenes_sample (1 keyframe), data/ddad_scene02 (3 frames,"
                           " distillnerf-dgp2nusc)", threads=args.threads,
                      load="a shared 2-core machine (other sessions running): timings are not recorded")
    world = "" if (args.rig, args.look) == ("nuscenes", "plain") else f"_{args.rig}_{args.look}"
    fit = ensure_dataroot(args.work / f"fit_{args.fit_seed}{world}", args.fit_scenes, args.fit_frames, args.fit_seed,
                          args.rig, args.look)
    held = ensure_dataroot(args.work / f"eval_{args.eval_seed}{world}", args.eval_scenes, args.eval_frames,
                           args.eval_seed, args.rig, args.look)
    result = calibrate(args.checkpoint, str(fit), str(held), VERSION, free=args.free)
    calibration = result["calibration"]
    calibration["provenance"] = {k: prov[k] for k in ("command", "commit", "date")}
    print(format_report(result), flush=True)
    predictor = ScenePredictor(args.checkpoint, "cpu", query=QueryConfig(background=True))
    identity = dict(predictor.model.config.feature_head.teacher)
    identity.pop("calibration", None)
    querier = SemanticQuerier(predictor.model.feature_pca, identity, config=QueryConfig(background=True))
    frames = {"synthetic": measure(predictor, querier, calibration, f"synthetic held-out (seed {args.eval_seed})",
                                   held)
              + measure(predictor, querier, calibration, f"synthetic fit (seed {args.fit_seed})", fit),
              "real": measure(predictor, querier, calibration, "nuScenes keyframe (real)", NUSCENES)
              + measure(predictor, querier, calibration, "DDAD (real)", ensure_ddad(args.work / "ddad"))}
    stats = {k: [f["statistic"] for f in v] for k, v in frames.items()}
    psnr = {k: [f["recon_psnr_median"] for f in v] for k, v in frames.items()}
    summary = {"threshold": calibration["domain_check"]["threshold"],
               "synthetic_statistic": [min(stats["synthetic"]), max(stats["synthetic"])],
               "real_statistic": [min(stats["real"]), max(stats["real"])],
               "separated": max(stats["real"]) < calibration["domain_check"]["threshold"] <= min(stats["synthetic"]),
               "synthetic_recon_psnr": [min(psnr["synthetic"]), max(psnr["synthetic"])],
               "real_recon_psnr": [min(psnr["real"]), max(psnr["real"])],
               "recon_psnr_separates": max(psnr["real"]) < min(psnr["synthetic"])}
    print(json.dumps(summary, indent=2))
    out = {"provenance": prov, "calibration": calibration, "report": result["report"],
           "domain_statistic": result["domain_statistic"], "frames": frames, "summary": summary}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2, allow_nan=False) + "\n")
    print(f"wrote {args.json}")
    if args.store:
        print(f"stored the calibration in {store_calibration(args.checkpoint, calibration)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
