"""`distillnerf-eval`: the reference evaluation protocol on any nuScenes-format dataroot.

    distillnerf-eval --checkpoint CKPT --dataroot D --version V --json OUT [--split val] [--images DIR]

- recon PSNR / SSIM: the input cameras rendered from their own frame, at the model's image size, [0, 1];
- novel view (nvs_*): the NEXT keyframe's cameras rendered from the CURRENT frame's representation
  (samples without a next keyframe are skipped);
- depth vs LiDAR (min-pooled to the render resolution): AbsRel, SqRel, RMSE, RMSE-log, delta1-3 with GT in
  (1e-3, 80] m and predictions clipped to [1e-3, 80] (camera z-depth on both sides);
- depth vs dense GT where the dataroot has it (dense_abs_rel; the table also shows the within-50 m variant).

Each metric is computed per sample (all cameras together) and averaged over samples. The JSON holds exactly
psnr, ssim, nvs_psnr, nvs_ssim, abs_rel, sq_rel, rmse, rmse_log, delta1, delta2, delta3, num_samples and,
when dense GT exists, dense_abs_rel (a metric with no valid sample is null); with --features (a distilled model
and the teacher's feature cache) also feat_psnr (PSNR of the rendered features against the teacher's, both
PCA-projected and min-max normalised by the model's stored PCA) and feat_cosine (mean per-pixel cosine of the
PCA reconstruction with the teacher's own features). `--details-json` writes every
number (dense metrics in full, within-50 m, timing). `--keyframes second` keeps only each scene's 2nd
keyframe (the paper's val protocol). CKPT: a .safetensors file, a run dir (RUN/model.safetensors, else its
newest complete checkpoint) or a checkpoint dir.

Sharded (dataset scale): under torchrun (`torchrun --nproc-per-node K -m distillnerf_core.cli.eval ...`) each
rank scores its share of the samples (sorted sample tokens modulo WORLD_SIZE; --device cuda = cuda:LOCAL_RANK)
into OUT.rank<k>.jsonl beside --json (a rerun skips the samples already there), then rank 0 writes --json /
--details-json from them: the numbers a single process gives. Independent jobs (RANK / WORLD_SIZE, no
MASTER_ADDR) each write their part; the same command with --merge then writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from distillnerf_core.checked_files import DataFileError, read_json
from distillnerf_core.cli import configure_logging
from distillnerf_core.data.datasets import DataConfig, dataroot_cameras, make_dataset
from distillnerf_core.sharding import rank_threads, remove_parts, shard_from_env
from distillnerf_core.training.checkpoints import CheckpointError, load_checkpoint, resolve_checkpoint
from distillnerf_core.training.eval import evaluate, evaluate_shard, format_table, merge_parts, select_second_keyframes

logger = logging.getLogger(__name__)


def recorded_cameras(ckpt: Path) -> list[str] | None:
    """The camera order the checkpoint's run trained with (data.cameras of RUN/train_config.json beside
    RUN/model.safetensors, or of a checkpoint directory's train_state.json); None when not recorded."""
    for record, key in ((ckpt.parent / "train_config.json", None), (ckpt.parent / "train_state.json", "train_config")):
        if record.is_file():
            try:
                config = read_json(record, "training record")
            except DataFileError as error:
                logger.warning("%s; the camera order comes from the dataroot", error)
                return None
            config = config.get(key) if key else config
            cameras = config.get("data", {}).get("cameras") if isinstance(config, dict) else None
            if isinstance(cameras, list) and cameras and all(isinstance(c, str) for c in cameras):
                return cameras
    return None


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = argparse.ArgumentParser(prog="distillnerf-eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--dataroot", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--json", required=True, type=Path, help="write the metrics JSON here")
    parser.add_argument("--split", default="all", help="nuScenes split (val, mini_val, ...) or all")
    parser.add_argument("--keyframes", choices=["all", "second"], default="all",
                        help="'second': only each scene's 2nd keyframe (the paper's val protocol)")
    parser.add_argument("--max-samples", type=int)
    parser.add_argument("--images", type=Path, help="save side-by-side PNGs of the first samples here")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--details-json", type=Path)
    parser.add_argument("--features", help="teacher feature cache of this dataroot (name under DATAROOT/features/ or "
                        "a directory): adds feat_psnr and feat_cosine for a distilled model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--cameras", help="comma list of camera channels in model order (default: the order the "
                        "checkpoint's run recorded, else the dataroot's rig: the 6 nuScenes cameras, or DDAD's from "
                        "distillnerf-dgp2nusc as CAMERA_01,CAMERA_06,CAMERA_05,CAMERA_09,CAMERA_07,CAMERA_08)")
    parser.add_argument("--merge", action="store_true", help="only write --json from the ranks' parts "
                        "(JSON.rank<k>.jsonl) of a sharded run without a process group")
    args = parser.parse_args(argv)
    folder, stem = args.json.parent, args.json.name  # the ranks' parts: beside --json
    try:
        shard = shard_from_env()
        if args.merge:
            return _write(args, merge_parts(folder, stem), folder, stem, "merged parts")
    except (ValueError, FileNotFoundError) as error:
        print(f"distillnerf-eval: error: {error}", file=sys.stderr)
        return 2
    rank_threads(shard, args.threads)  # ranks of one machine share its cores
    device = shard.device(args.device)
    try:
        ckpt = resolve_checkpoint(args.checkpoint)
        model = load_checkpoint(ckpt, device)
        render_hw = model.renderer.render_hw(tuple(model.config.image_hw))
        cameras = dataroot_cameras(args.dataroot, args.version, args.cameras.split(",") if args.cameras else None,
                                   model_order=recorded_cameras(ckpt), table_order_ok=False)
        print(f"cameras (model order): {','.join(cameras)}")
        dataset = make_dataset(args.dataroot, args.version, model.config.image_hw,
                               DataConfig(features=args.features, cameras=cameras), render_hw, load_next=True,
                               split=args.split)
        indices = select_second_keyframes(dataset) if args.keyframes == "second" else list(range(len(dataset)))
        if args.max_samples:
            indices = indices[: args.max_samples]
        if shard.sharded:
            header = {"checkpoint": str(ckpt.resolve()), "checkpoint_bytes": ckpt.stat().st_size,
                      "dataroot": str(Path(args.dataroot).resolve()), "version": args.version, "split": args.split,
                      "keyframes": args.keyframes, "features": args.features, "cameras": cameras}
            args.json.parent.mkdir(parents=True, exist_ok=True)
            result = evaluate_shard(model, dataset, indices, folder, stem, header, shard, args.images,
                                    args.num_images, device, not args.no_progress)
            if result is None:
                print(f"rank {shard.rank} of {shard.world_size}: scored its samples into {folder}/{stem}.rank"
                      f"{shard.rank}.jsonl" + ("" if shard.rank else " (no process group: run with --merge)"))
                return 0
        else:
            result = evaluate(model, dataset, indices, args.images, args.num_images, device, not args.no_progress)
    except (DataFileError, CheckpointError, FileNotFoundError, ValueError) as error:  # names the file and key
        print(f"distillnerf-eval: error: {error}", file=sys.stderr)
        return 2
    print(f"checkpoint {ckpt}  dataroot {args.dataroot} ({args.version}, split {args.split}, "
          f"keyframes {args.keyframes})")
    return _write(args, result, folder, stem, "")


def _write(args: argparse.Namespace, result: dict, folder: Path, stem: str, what: str) -> int:
    """Print the table, write --json (and --details-json); the ranks' parts are removed once that is written."""
    if what:
        print(what)
    print(format_table(result["metrics"], result["details"]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result["metrics"], indent=2) + "\n")
    if args.details_json:
        args.details_json.parent.mkdir(parents=True, exist_ok=True)
        args.details_json.write_text(json.dumps(result["details"], indent=2) + "\n")
    remove_parts(folder, stem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
