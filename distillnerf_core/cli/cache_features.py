"""`distillnerf-cache-features`: a teacher's dense features for every keyframe camera image, computed once.

    distillnerf-cache-features --dataroot D --version V --teacher clip --model ViT-L-14-336-quickgelu \\
        --weights /models/clip_vit_l14_336.safetensors [--input-hw 336 588] [--name clip_l14]
    distillnerf-cache-features --dataroot D --version V --teacher dinov2 --model vit_base_patch14_dinov2 \\
        --weights /models/dinov2_vitb14.safetensors
    distillnerf-cache-features --dataroot SYNTH --version v1.0-synthetic --teacher oracle
    distillnerf-cache-features --dataroot D --version V --teacher segmenter [--segmenter-outputs log_probs+features]

The segmenter (ESPNetv2, Cityscapes) uses the weights shipped with the package unless --weights names another
file; its cache holds the 20 class log-probabilities (then, optionally, its penultimate features) at 1/8 of its
input (1024 wide by default).

Writes DATAROOT/features/<name> (default name: the teacher kind; --out for another directory): manifest.json
(teacher identity with the weights file's sha256, settings) and <CHANNEL>/<sample_data token>.safetensors
(float16 (D, h, w)); see distillnerf_core/teachers/cache.py. Weights come only from the local file given
(nothing is downloaded). Interrupted runs resume: rerun the same command. Train on it with
`data.features: <name>` in the train YAML (or `--features <name>` of distillnerf-train).

At dataset scale, shard it over ranks and machines: `torchrun --nproc-per-node K [--nnodes M ...]
-m distillnerf_core.cli.cache_features ...` (each rank takes its share of the images, --device cuda means
cuda:LOCAL_RANK; rank 0 merges the ranks' parts into manifest.json at the end), or independent jobs with RANK /
WORLD_SIZE set and no MASTER_ADDR, then the same command with --merge once they are all done.
"""

from __future__ import annotations

import argparse
import json
import sys

from distillnerf_core.cli import configure_logging
from distillnerf_core.sharding import rank_threads, shard_from_env
from distillnerf_core.teachers.base import SEGMENTER_OUTPUTS, TEACHER_KINDS, TeacherConfig
from distillnerf_core.teachers.cache import FEATURES_DIR, cache_features, merge_cache


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = argparse.ArgumentParser(prog="distillnerf-cache-features", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataroot", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--teacher", required=True, choices=TEACHER_KINDS)
    parser.add_argument("--model", default="", help="open_clip / timm model name (clip, dinov2)")
    parser.add_argument("--weights", help="LOCAL .safetensors weights file (clip, dinov2; segmenter: default the "
                                          "shipped data/weights/espnetv2_s2_cityscapes/ file)")
    parser.add_argument("--model-config", help="open_clip JSON config of a custom architecture (file stem = name)")
    parser.add_argument("--model-kwargs", default="{}", help="JSON dict of extra timm constructor kwargs")
    parser.add_argument("--input-hw", type=int, nargs=2, metavar=("H", "W"), default=[224, 392],
                        help="teacher input size (rounded to whole patches)")
    parser.add_argument("--name", help="cache name under DATAROOT/features/ (default: the teacher kind)")
    parser.add_argument("--out", help="cache directory (instead of DATAROOT/features/<name>)")
    parser.add_argument("--cameras", help="comma-separated camera channels (default: every camera in the sensor table)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--oracle-dim", type=int, default=128)
    parser.add_argument("--oracle-noise", type=float, default=0.2)
    parser.add_argument("--oracle-seed", type=int, default=0)
    parser.add_argument("--oracle-stride", type=int, default=8)
    parser.add_argument("--segmenter-outputs", choices=SEGMENTER_OUTPUTS, default="log_probs",
                        help="segmenter: class log-probabilities, or those plus the 32-channel penultimate features")
    parser.add_argument("--segmenter-width", type=int, default=1024, help="segmenter input width (multiple of 16)")
    parser.add_argument("--segmenter-stride", type=int, default=8, help="segmenter: cached grid = input / this")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--merge", action="store_true", help="only merge the ranks' parts (manifest.rank<k>.jsonl) of"
                        " a sharded run without a process group into manifest.json")
    args = parser.parse_args(argv)
    if args.merge:
        return _merge(args)
    try:
        rank_threads(shard_from_env(), args.threads)  # ranks of one machine share its cores
    except ValueError as err:  # RANK / WORLD_SIZE malformed
        print(f"distillnerf-cache-features: error: {err}", file=sys.stderr)
        return 2
    cfg = TeacherConfig(kind=args.teacher, model=args.model, weights=args.weights, model_config=args.model_config,
                        model_kwargs=json.loads(args.model_kwargs), input_hw=list(args.input_hw),
                        batch_size=args.batch_size, oracle_dim=args.oracle_dim, oracle_noise=args.oracle_noise,
                        oracle_seed=args.oracle_seed, oracle_stride=args.oracle_stride,
                        segmenter_outputs=args.segmenter_outputs, segmenter_width=args.segmenter_width,
                        segmenter_stride=args.segmenter_stride)
    try:
        summary = cache_features(args.dataroot, args.version, cfg, name=args.name, out=args.out,
                                 cameras=args.cameras.split(",") if args.cameras else None, device=args.device,
                                 progress=not args.no_progress)
    except (FileNotFoundError, ValueError) as err:  # ValueError includes DataFileError (a malformed file)
        print(f"distillnerf-cache-features: error: {err}", file=sys.stderr)
        return 2
    rank = f"rank {summary['rank']} of {summary['world_size']}: " if summary["world_size"] > 1 else ""
    print(f"{rank}cached {summary['computed']} of {summary['images']} images ({summary['dim']}-d {args.teacher} "
          f"features) in {summary['seconds']:.1f} s -> {summary['cache']}")
    if summary.get("merged") is False:
        print("distillnerf-cache-features: the merged manifest is incomplete (a rank failed?); rerun to resume",
              file=sys.stderr)
        return 1
    return 0


def _merge(args: argparse.Namespace) -> int:
    from pathlib import Path

    cache = Path(args.out) if args.out else Path(args.dataroot) / FEATURES_DIR / (args.name or args.teacher)
    try:
        manifest = merge_cache(cache)
    except (FileNotFoundError, ValueError) as err:
        print(f"distillnerf-cache-features: error: {err}", file=sys.stderr)
        return 2
    print(f"merged {len(manifest['files'])} entries into {cache / 'manifest.json'} (complete: {manifest['complete']})")
    return 0 if manifest["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
