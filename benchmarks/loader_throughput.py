"""Can the training data loader feed a step? Samples per second of the trainer's DataLoader with K workers on a
nuScenes-sized synthetic dataroot (6 cameras x 1600x900 JPEG + a LiDAR sweep per keyframe), against a step time.

The dataroot: distillnerf-synth's world rendered at 400x225, each camera JPEG then upsampled 4x to 1600x900 with
a little per-pixel noise (so the files reach the entropy of real nuScenes JPEGs: the benchmark records both
sizes and both decode times, the real ones from the bundled data/nuscenes_sample), the tables' intrinsics and
image sizes scaled to match, and the synthetic ground truth (gt/) removed: nuScenes has none. The loader is the
one Trainer._build_loader makes (DistributedSampler of one rank, shuffled; collate_samples; workers at one torch
thread; persistent; prefetch 2) on the dataset make_dataset gives at the model's input size.

Per decode mode (`full`: the JPEG decoded at 1600x900, then resized; `draft`: DataConfig.jpeg_draft, the smallest
DCT reduction at least the input size, then resized) and per K in --workers: after the workers' first K batches
(start-up), the time for --samples further samples -> samples/s, against 1000 / --step-ms steps/s (batch 1 per
rank). Also, in this process: the CPU ms one sample costs (K = 0) and the decode of one JPEG alone, from which
the cores one rank needs to load 1.5x its step rate follow (a machine-independent figure: the measured samples/s
on a shared 2-core machine understate an idle GPU host).

    python benchmarks/loader_throughput.py [--workers 1,2,16] [--step-ms 55] [--samples 48] [--decode full,draft]
        [--frames 12] [--work DIR] [--json benchmarks/results/loader_throughput_cpu.json] [--note TEXT]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distillnerf_core.data.datasets import DataConfig, collate_samples, make_dataset  # noqa: E402
from distillnerf_core.data.synthetic.export import VERSION, write_dataroot  # noqa: E402
from distillnerf_core.model.distillnerf import ModelConfig  # noqa: E402
from distillnerf_core.provenance import command_line, provenance  # noqa: E402

NATIVE_WH = (1600, 900)
SYNTH_WH = (400, 225)  # 4x: the upsampled intrinsics stay exact
SAMPLE = REPO / "data" / "nuscenes_sample"
AIM = 1.5  # the aim: the loader at >= 1.5x the step rate


def _upsample_jpeg(path: Path, noise: float, rng: np.random.Generator, quality: int) -> None:
    with Image.open(path) as im:
        big = np.asarray(im.convert("RGB").resize(NATIVE_WH, Image.BICUBIC), dtype=np.float32)
    if noise > 0:
        big = big + rng.normal(0.0, noise, big.shape).astype(np.float32)
    Image.fromarray(np.clip(big, 0, 255).round().astype(np.uint8)).save(path, quality=quality)


def build_dataroot(root: Path, scenes: int, frames: int, noise: float, quality: int, seed: int = 0) -> dict:
    """The nuScenes-sized synthetic dataroot described in the module docstring; returns what was built."""
    t0 = time.perf_counter()
    write_dataroot(root, scenes=scenes, frames=frames, seed=seed, width=SYNTH_WH[0], height=SYNTH_WH[1],
                   jpeg_quality=quality, progress=False, threads=1)
    shutil.rmtree(root / "gt", ignore_errors=True)  # nuScenes has no dense ground truth
    tables = root / VERSION
    sample_data = json.loads((tables / "sample_data.json").read_text())
    sensors = json.loads((tables / "calibrated_sensor.json").read_text())
    scale = NATIVE_WH[0] / SYNTH_WH[0]
    camera_cs = set()
    rng = np.random.default_rng(seed)
    for sd in sample_data:
        if sd["fileformat"] != "jpg":
            continue
        _upsample_jpeg(root / sd["filename"], noise, rng, quality)
        sd["width"], sd["height"] = NATIVE_WH
        camera_cs.add(sd["calibrated_sensor_token"])
    for cs in sensors:
        if cs["token"] in camera_cs:
            K = np.array(cs["camera_intrinsic"], dtype=float)
            K[:2] *= scale  # (u, v) scale 4x; the principal point too (pixel centres: 400 -> 1600 exactly)
            cs["camera_intrinsic"] = K.tolist()
    (tables / "sample_data.json").write_text(json.dumps(sample_data))
    (tables / "calibrated_sensor.json").write_text(json.dumps(sensors))
    jpgs = [root / sd["filename"] for sd in sample_data if sd["fileformat"] == "jpg"]
    lidar = [root / sd["filename"] for sd in sample_data if sd["filename"].endswith(".pcd.bin")]
    return {"scenes": scenes, "keyframes": scenes * frames, "images": len(jpgs), "image_wh": list(NATIVE_WH),
            "rendered_wh": list(SYNTH_WH), "noise_sigma": noise, "jpeg_quality": quality,
            "jpeg_kb_median": statistics.median(p.stat().st_size for p in jpgs) / 1e3,
            "lidar_points_median": statistics.median(p.stat().st_size // 20 for p in lidar) if lidar else 0,
            "build_s": time.perf_counter() - t0}


def decode_ms(paths: list[Path], hw: tuple[int, int], draft: bool, repeats: int = 3) -> float:
    """Median CPU ms (this process; single-threaded, so an idle core's wall time, and robust on a shared machine) to
    decode one JPEG (from memory) to RGB and resize it to hw, as the dataset does."""
    blobs = [p.read_bytes() for p in paths]
    times = []
    for _ in range(repeats):
        for blob in blobs:
            start = time.process_time()
            with Image.open(io.BytesIO(blob)) as im:
                if draft:
                    im.draft("RGB", (hw[1], hw[0]))
                img = im.convert("RGB")
                img.resize((hw[1], hw[0]), Image.BILINEAR) if img.size != (hw[1], hw[0]) else img
            times.append((time.process_time() - start) * 1e3)
    return statistics.median(times)


class Repeated(torch.utils.data.Dataset):
    """The dataset `times` over as one epoch: a small benchmark dataroot never drains the workers' prefetch at an
    epoch boundary (a real epoch has thousands of samples)."""

    def __init__(self, dataset: torch.utils.data.Dataset, times: int) -> None:
        self.dataset, self.times = dataset, times

    def __len__(self) -> int:
        return len(self.dataset) * self.times

    def __getitem__(self, index: int) -> dict:
        return self.dataset[index % len(self.dataset)]


def make_loader(dataset: torch.utils.data.Dataset, workers: int, seed: int = 0) -> torch.utils.data.DataLoader:
    """The loader Trainer._build_loader makes for one rank (batch 1; pinned when CUDA is there)."""
    from torch.utils.data import DataLoader, DistributedSampler

    from distillnerf_core.training.trainer import _worker_init

    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed, drop_last=False)
    return DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=workers, collate_fn=collate_samples,
                      pin_memory=torch.cuda.is_available(), drop_last=False, persistent_workers=workers > 0,
                      worker_init_fn=_worker_init if workers > 0 else None, prefetch_factor=2 if workers > 0 else None)


def measure_loader(dataset: torch.utils.data.Dataset, workers: int, samples: int) -> dict:
    """samples/s over `samples` batches after the workers' first `workers` (start-up) batches, in one epoch."""
    warm = max(1, workers)
    loader = make_loader(Repeated(dataset, -(-(samples + warm) // len(dataset))), workers)
    it = iter(loader)
    t_start = time.perf_counter()
    for _ in range(warm):
        next(it)
    t_warm = time.perf_counter()
    for _ in range(samples):
        next(it)
    elapsed = time.perf_counter() - t_warm
    del it, loader
    return {"workers": workers, "samples": samples, "warmup_samples": warm, "startup_s": t_warm - t_start,
            "seconds": elapsed, "samples_per_s": samples / elapsed}


def in_process_cost(datasets: dict[str, torch.utils.data.Dataset], samples: int) -> dict[str, dict]:
    """Per decode mode, wall and CPU ms per sample loaded in this process at one torch thread (what one worker
    spends); the modes alternate sample by sample, so a shared machine's load changes hit them alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    wall: dict[str, list[float]] = {m: [] for m in datasets}
    cpu: dict[str, list[float]] = {m: [] for m in datasets}
    try:
        for dataset in datasets.values():
            dataset[0]
        for i in range(samples):
            for mode, dataset in datasets.items():
                w0, c0 = time.perf_counter(), time.process_time()
                collate_samples([dataset[i % len(dataset)]])
                wall[mode].append((time.perf_counter() - w0) * 1e3)
                cpu[mode].append((time.process_time() - c0) * 1e3)
    finally:
        torch.set_num_threads(threads)
    return {m: {"wall_ms_median": statistics.median(wall[m]), "cpu_ms_median": statistics.median(cpu[m]),
                "cpu_ms_min": min(cpu[m]), "samples": samples} for m in datasets}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", default=f"1,2,{os.cpu_count() or 1}", help="comma list of worker counts")
    p.add_argument("--step-ms", type=float, default=55.0, help="the training step to feed (55: paper, H200)")
    p.add_argument("--samples", type=int, default=48, help="samples timed per (decode, workers)")
    p.add_argument("--cost-samples", type=int, default=16, help="samples of the in-process cost per decode mode")
    p.add_argument("--decode", default="full,draft", help="comma list of full, draft")
    p.add_argument("--model", default="paper", help="model config whose input size the loader produces")
    p.add_argument("--scenes", type=int, default=2)
    p.add_argument("--frames", type=int, default=12, help="keyframes per scene")
    p.add_argument("--noise", type=float, default=4.0, help="per-pixel noise sigma added to the upsampled JPEGs")
    p.add_argument("--quality", type=int, default=92, help="JPEG quality of the upsampled images")
    p.add_argument("--work", type=Path, help="dataroot folder (kept; reused when it holds one); default a temp dir")
    p.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "loader_throughput_cpu.json")
    p.add_argument("--note", default="", help="provenance note (e.g. that the machine was shared)")
    args = p.parse_args(argv)
    workers = list(dict.fromkeys(int(w) for w in args.workers.split(",") if w.strip()))
    modes = [m.strip() for m in args.decode.split(",") if m.strip()]
    if not workers or min(workers) < 0 or any(m not in ("full", "draft") for m in modes) or not modes:
        p.error(f"--workers {args.workers!r} (integers >= 0) / --decode {args.decode!r} (full, draft)")
    mcfg = ModelConfig.load(args.model)
    hw = tuple(mcfg.image_hw)
    scale = mcfg.renderer.render_scale
    render_hw = (max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale)))  # as Renderer.render_hw
    tmp = None
    root = args.work
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="loader_bench_")
        root = Path(tmp.name) / "root"
    built: dict = {}
    if (root / VERSION / "sample_data.json").is_file() and (root / "built.json").is_file():
        built = json.loads((root / "built.json").read_text())
        print(f"reusing {root}: {built}")
    else:
        built = build_dataroot(root, args.scenes, args.frames, args.noise, args.quality)
        (root / "built.json").write_text(json.dumps(built))
        print(f"built {root}: {built}")
    jpgs = sorted(root.glob("samples/CAM_*/*.jpg"))[:12]
    real = sorted(SAMPLE.glob("samples/CAM_*/*.jpg"))
    decode = {"synthetic_full_ms": decode_ms(jpgs, hw, False), "synthetic_draft_ms": decode_ms(jpgs, hw, True)}
    if real:
        decode.update(real_full_ms=decode_ms(real, hw, False), real_draft_ms=decode_ms(real, hw, True),
                      real_jpeg_kb_median=statistics.median(p.stat().st_size for p in real) / 1e3)
    print(f"one JPEG -> {hw[1]}x{hw[0]}, CPU ms: {json.dumps({k: round(v, 2) for k, v in decode.items()})}")
    step_rate = 1000.0 / args.step_ms
    runs = []
    datasets = {mode: make_dataset(str(root), VERSION, hw, DataConfig(jpeg_draft=mode == "draft", sky_mask="none"),
                                   render_hw, load_next=False) for mode in modes}
    costs = in_process_cost(datasets, args.cost_samples)
    for mode, dataset in datasets.items():
        cost = costs[mode]
        cores = AIM * step_rate * cost["cpu_ms_median"] / 1e3
        print(f"[{mode}] one sample in this process: {cost['wall_ms_median']:.1f} ms wall, "
              f"{cost['cpu_ms_median']:.1f} ms CPU -> {cores:.2f} cores to load {AIM}x {step_rate:.1f} steps/s")
        for k in workers:
            r = measure_loader(dataset, k, args.samples)
            r.update(decode=mode, step_ratio=r["samples_per_s"] / step_rate)
            runs.append(r)
            print(f"[{mode}] {k} workers: {r['samples_per_s']:.1f} samples/s = {r['step_ratio']:.2f}x the "
                  f"{args.step_ms:g} ms step ({step_rate:.1f}/s); start-up {r['startup_s']:.1f} s")
        runs.append({"decode": mode, "in_process": cost, "cores_for_aim": cores})
    load = os.getloadavg()
    note = args.note or ("shared machine" if load[0] > 0.5 * (os.cpu_count() or 1) else "")
    result = {
        "model": args.model, "image_hw": list(hw), "render_hw": list(render_hw), "step_ms": args.step_ms,
        "step_rate_per_s": step_rate, "aim_ratio": AIM, "dataroot": built, "decode_one_jpeg": decode,
        "loader": [r for r in runs if "workers" in r], "in_process": {r["decode"]: {**r["in_process"],
                                                                                   "cores_for_aim": r["cores_for_aim"]}
                                                                      for r in runs if "in_process" in r},
        "cpu_count": os.cpu_count(), "load_average_end": list(load),
        "provenance": provenance(command_line("python benchmarks/loader_throughput.py", argv),
                                 data=f"synthetic nuScenes-sized dataroot ({built.get('keyframes')} keyframes, 6 x "
                                      "1600x900 JPEG + LiDAR), built by this script",
                                 note=note),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
