"""Our ESPNetv2 segmenter (teachers/segmenter.py, the shipped weights) against the reference facts computed with
the authors' code, on the six real nuScenes cameras, and what one forward costs on this machine's CPU.

Per camera (data/nuscenes_sample): the README's preprocessing (Pillow BILINEAR to 1024x512, ImageNet
normalisation), the argmax label map's sha256 against checks.json (`nuscenes_all_cameras`), the top-5 class
fractions and the sky fraction of the top / bottom third of rows; for CAM_FRONT also the per-pixel agreement with
the shipped reference PNG and the step-1 sha256. Timing: one forward (logits at the input size) at 1024x512 and
at 1024x576 (a 1600x900 nuScenes image at the default width, what the cache and the node run), fastest and median
of --repeats, at each --threads. Writes benchmarks/results/segmenter_check.json with its provenance.

    python benchmarks/segmenter_check.py [--threads 1 2] [--repeats 5] [--out benchmarks/results/segmenter_check.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distillnerf_core.provenance import command_line, model_identity, provenance  # noqa: E402
from distillnerf_core.teachers import segmenter as seg  # noqa: E402

WEIGHTS = REPO / "data" / "weights" / "espnetv2_s2_cityscapes"
SAMPLE = REPO / "data" / "nuscenes_sample" / "samples"
STEP1_SHA256 = "79bd48200541db7ee74b3fbb375481d9890481ba2c20895988fffe82dcd2153d"  # the weights README, step 1
CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")


def sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def camera_check(segmenter: seg.Segmenter, camera: str, expected: dict) -> dict:
    """Label map of one camera at 1024x512 against its reference facts."""
    jpeg = next((SAMPLE / camera).glob("*.jpg"))
    rgb = np.asarray(Image.open(jpeg).convert("RGB"))
    step1 = seg.resize_image(rgb, (512, 1024))
    labels = segmenter.labels([step1], hw=(512, 1024))[0].numpy().astype(np.uint8)
    counts = np.bincount(labels.ravel(), minlength=seg.NUM_CLASSES) / labels.size
    top5 = {seg.CLASS_NAMES[c]: round(float(counts[c]), 3) for c in np.argsort(-counts, kind="stable")[:5]}
    sky = labels == seg.SKY_CLASS
    digest = sha(labels)
    out = {"labels_sha256": digest, "labels_sha256_matches": digest == expected["argmax_uint8_1024x512_sha256"],
           "class_fraction_top5": top5, "class_fraction_top5_matches": top5 == expected["class_fraction_top5"],
           "sky_fraction_top_third": round(float(sky[:170].mean()), 3),
           "sky_fraction_bottom_third": round(float(sky[341:].mean()), 3)}
    if camera == "CAM_FRONT":
        reference = np.asarray(Image.open(WEIGHTS / "ref_labels_nuscenes_CAM_FRONT_1024x512.png"))
        out["agreement_with_reference_png"] = float((labels == reference).mean())
        out["step1_sha256_matches"] = sha(step1) == STEP1_SHA256
    return out


def forward_times(segmenter: seg.Segmenter, hw: tuple[int, int], threads: int, repeats: int) -> dict:
    """Seconds of one forward (preprocessed input, logits at the input size), after one warm-up."""
    torch.set_num_threads(threads)
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        segmenter.net(x)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            segmenter.net(x)
            times.append(time.perf_counter() - started)
    return {"hw": list(hw), "threads": threads, "fastest_s": min(times), "median_s": statistics.median(times),
            "repeats": repeats}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--note", default="", help="a note for the provenance (e.g. that the machine was shared)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "segmenter_check.json")
    args = parser.parse_args(argv)
    checks = json.loads((WEIGHTS / "checks.json").read_text())
    torch.set_num_threads(1)  # the reference facts were computed with 1 thread
    segmenter = seg.Segmenter()
    cameras = {cam: camera_check(segmenter, cam, checks["nuscenes_all_cameras"][cam]) for cam in CAMERAS}
    timing = [forward_times(segmenter, hw, t, args.repeats) for t in args.threads for hw in ((512, 1024), (576, 1024))]
    prov = provenance(command_line("python benchmarks/segmenter_check.py", argv),
                      model=model_identity(seg.default_weights_path()),
                      data="data/nuscenes_sample (the 6 cameras of one keyframe); reference facts: "
                           "data/weights/espnetv2_s2_cityscapes/checks.json (the authors' code, torch "
                           f"{checks['torch']}, {checks['threads']} thread)", note=args.note)
    summary = {"cameras_sha256_equal": sum(c["labels_sha256_matches"] for c in cameras.values()),
               "cameras": len(cameras),
               "cam_front_agreement": cameras["CAM_FRONT"]["agreement_with_reference_png"],
               "step1_sha256_matches": cameras["CAM_FRONT"]["step1_sha256_matches"],
               "weights_sha256_matches": seg.Segmenter().sha256 == checks["safetensors_sha256"]}
    out = {"provenance": prov, "cameras": cameras, "forward": timing, "summary": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, allow_nan=False) + "\n")
    print(json.dumps({"summary": summary, "forward": timing}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
