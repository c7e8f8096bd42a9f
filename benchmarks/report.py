"""Every generated block of the documentation, from the results it reports.

A page (README.md or docs/**/*.md) holds generated blocks:

    <!-- generated: BLOCK_ID; python benchmarks/report.py; do not edit by hand -->
    ...markdown written by the generator registered for BLOCK_ID...
    <!-- end generated: BLOCK_ID -->

    python benchmarks/report.py            rewrite every block from its generator (pages written atomically)
    python benchmarks/report.py --check    exit 1 naming each page + block that differs from its generator,
                                           each block id without a generator, each generator used on no page
    python benchmarks/report.py --list     the registered block ids, their kind and the files they read

Generators read benchmarks/results/*.json (and the bundled model's models/default/eval.json); every number in
a block is formatted from those files, never typed here. Every results table ends with a provenance line
(`*Source: ...*`) taken from its JSON's top-level "provenance" object (command, code commit, model, data,
machine, date; "not recorded" where the run did not record it); a results JSON without one is an error.
`--root` is the repository whose pages are read, `--results` the results folder (default ROOT/benchmarks/
results), so a test can check pages against a changed copy of the results.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = "benchmarks/results/"
START = "<!-- generated: {id}; python benchmarks/report.py; do not edit by hand -->"
END = "<!-- end generated: {id} -->"
START_RE = re.compile(r"^<!-- generated: (?P<id>[^;]+?); python benchmarks/report\.py; do not edit by hand -->$")
END_RE = re.compile(r"^<!-- end generated: (?P<id>.+?) -->$")
ANY_MARKER_RE = re.compile(r"<!--\s*(end )?generated:")
PROVENANCE_KEYS = ("command", "commit", "model", "data", "machine", "date")


class ReportError(Exception):
    """A generator cannot produce its block (a results file missing, no provenance, a key missing)."""


# ---------------------------------------------------------------------------------------------------------
# Context: where pages and results live, which page is being written, which files a generator read
# ---------------------------------------------------------------------------------------------------------

@dataclass
class Context:
    root: Path
    results: Path
    page: Path | None = None  # the page being written (links are relative to it)
    read: list[str] = field(default_factory=list)
    allowed: Sequence[str] = ()

    def path(self, rel: str) -> Path:
        if rel.startswith(RESULTS):
            return self.results / rel[len(RESULTS):]
        return self.root / rel

    def load(self, rel: str) -> Any:
        if self.allowed and rel not in self.allowed:
            raise ReportError(f"reads {rel}, which its registration does not list")
        path = self.path(rel)
        if not path.is_file():
            raise ReportError(f"{rel} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ReportError(f"{rel} is not valid JSON: {exc}") from exc
        if rel not in self.read:
            self.read.append(rel)
        return data

    def link(self, rel: str, text: str | None = None) -> str:
        """A markdown link from the page being written to `rel` (a path from the repository root)."""
        base = self.page.parent if self.page is not None else self.root
        target = os.path.relpath(self.root / rel, base).replace(os.sep, "/")
        return f"[{text or rel}]({target})"

    def provenance(self, rel: str) -> dict[str, Any]:
        prov = self.load(rel).get("provenance")
        if not isinstance(prov, dict):
            raise ReportError(f"{rel} has no top-level provenance object")
        return prov

    def source(self, rel: str, note: str = "") -> str:
        """The provenance line of one results file (its top-level provenance object)."""
        return self.source_of(rel, self.provenance(rel), note)

    def source_of(self, rel: str, prov: dict[str, Any], note: str = "") -> str:
        """The provenance line of `rel` from the provenance object `prov`."""
        missing = [k for k in PROVENANCE_KEYS if k not in prov]
        if missing:
            raise ReportError(f"{rel}: provenance lacks {', '.join(missing)}")
        commit = str(prov["commit"])
        if prov.get("uncommitted_changes"):
            commit += " + uncommitted changes"
        if prov.get("commit_note"):
            commit += f" ({prov['commit_note']})"
        if prov.get("results_commit"):
            commit += f" (results committed in {prov['results_commit']})"
        parts = [f"command `{prov['command']}`", f"code {commit}", f"model: {prov['model']}",
                 f"data: {prov['data']}", f"machine: {prov['machine']}", f"date: {prov['date']}"]
        if prov.get("source"):
            parts.append(f"from {prov['source']}")
        return (f"*Source: {self.link(rel, '`' + rel + '`')}{' (' + note + ')' if note else ''} — "
                + "; ".join(parts) + ".*")

    def sources(self, rels: Iterable[tuple[str, str] | str]) -> str:
        lines = []
        for item in rels:
            rel, note = (item, "") if isinstance(item, str) else item
            lines.append(self.source(rel, note))
        return "\n\n".join(lines)


@dataclass
class Generator:
    func: Callable[[Context], str]
    kind: str  # "results" (ends with provenance lines), "summary" (headline), "reference" (parameters)
    reads: tuple[str, ...]


GENERATORS: dict[str, Generator] = {}


def generator(block_id: str, reads: Sequence[str] = (), kind: str = "results"):
    def register(func: Callable[[Context], str]) -> Callable[[Context], str]:
        if block_id in GENERATORS:
            raise ValueError(f"block id {block_id} registered twice")
        GENERATORS[block_id] = Generator(func, kind, tuple(reads))
        return func
    return register


# ---------------------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------------------

def num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def ms(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{num(value, digits)} ms"


def pct(value: Any, digits: int = 0) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def slash(*values: str) -> str:
    return " / ".join(values)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def join(*parts: str) -> str:
    return "\n\n".join(p.strip("\n") for p in parts if p) + "\n"


def dig(data: Any, *keys: Any) -> Any:
    for k in keys:
        try:
            data = data[k]
        except (KeyError, IndexError, TypeError) as exc:
            raise ReportError(f"missing key {'/'.join(map(str, keys))}") from exc
    return data


def short_model(text: str) -> str:
    """A provenance model description up to its first parenthesis ("stage 1 (`models/stage1` ...)" -> "stage 1")."""
    return text.split(" (", 1)[0]


def rss_summary(samples: Sequence[Sequence[float]]) -> tuple[float, float, float]:
    """(start, peak, end) MB of [time, MB] samples."""
    values = [s[1] for s in samples]
    if not values:
        raise ReportError("no RSS samples")
    return values[0], max(values), values[-1]


def rss_text(samples: Sequence[Sequence[float]]) -> str:
    start, peak, end = rss_summary(samples)
    return f"{start:.0f} / {peak:.0f} / {end:.0f} MB"


# ---------------------------------------------------------------------------------------------------------
# Synthetic scenes
# ---------------------------------------------------------------------------------------------------------

SYN = RESULTS + "synthetic_ablations.json"


@generator("synthetic:ablations", reads=[SYN])
def synthetic_ablations(ctx: Context) -> str:
    res = dig(ctx.load(SYN), "results")
    names = list(res)
    rows = [
        ["recon PSNR / SSIM"] + [slash(num(res[n]["psnr"]), num(res[n]["ssim"], 3)) for n in names],
        ["novel-view PSNR / SSIM"] + [slash(num(res[n]["nvs_psnr"]), num(res[n]["nvs_ssim"], 3)) for n in names],
        ["LiDAR AbsRel / RMSE / delta1"] + [slash(num(res[n]["abs_rel"], 3), f"{num(res[n]['rmse'])} m",
                                                  num(res[n]["delta1"], 3)) for n in names],
        ["dense-GT AbsRel"] + [num(res[n]["dense_abs_rel"], 3) for n in names],
        ["training steps / minutes"] + [f"{res[n]['steps']} / {num(res[n]['minutes'], 1)}" for n in names],
        ["held-out keyframes"] + [res[n]["num_samples"] for n in names],
    ]
    return join(table(["held out", *names], rows), ctx.source(SYN))


REALISM = RESULTS + "realism.json"


@generator("synthetic:realism", reads=[REALISM])
def synthetic_realism(ctx: Context) -> str:
    d = ctx.load(REALISM)
    classes = dig(d, "classes")
    runs = dig(d, "runs")
    if not runs:
        raise ReportError(f"{REALISM} has no runs")
    rows = []
    for r in runs:
        commit = str(dig(r, "provenance", "commit")) + (" +" if r["provenance"].get("uncommitted_changes") else "")
        car = ", ".join(f"{k} {pct(v)}" for k, v in dig(r, "read_as", "car").items())
        rows.append([r["label"], commit, f"**{num(dig(r, 'miou'), 3)}**",
                     *[num(dig(r, "per_class", c), 2) for c in classes], car, dig(r, "images")])
    mapping = "; ".join(f"{c}: {' + '.join(v)}" for c, v in dig(d, "mapping").items() if list(v) != [c])
    text = (f"Segmenter classes counted as a shared class where the names differ: {mapping}. Each row names its "
            "code commit (\"+\": with uncommitted changes); its source line below gives the command and data.")
    sources = "\n\n".join(ctx.source_of(REALISM, dig(r, "provenance"), f"row {r['label']}") for r in runs)
    return join(table(["world", "code", "mIoU", *classes, "car pixels read as", "images"], rows), text, sources)


# ---------------------------------------------------------------------------------------------------------
# World transfer (issue 24): the model variants on the real frames and the synthetic held-out sets
# ---------------------------------------------------------------------------------------------------------

WORLD_TRANSFER = RESULTS + "world_transfer.json"
FROZEN_2D_COST = RESULTS + "frozen_2d_cost.json"
# (table row, set, metrics shown, aim text); the aims themselves are computed by benchmarks/world_transfer.py
WORLD_TRANSFER_ROWS = [
    ("nuScenes keyframe LiDAR AbsRel / delta1", "nuscenes", ("abs_rel", "delta1"), "<= 0.25 / >= 0.65"),
    ("DDAD 3 frames LiDAR AbsRel / delta1", "ddad", ("abs_rel", "delta1"), "<= 0.35 / >= 0.50"),
    ("recon PSNR nuScenes / DDAD", ("nuscenes", "ddad"), ("psnr",), "higher than the reference"),
    ("synthetic held-out plain (seed 999) PSNR / LiDAR AbsRel", "synthetic:plain", ("psnr", "abs_rel"),
     "no more than 10% worse than the reference"),
    ("synthetic held-out realistic (seed 999) PSNR / LiDAR AbsRel", "synthetic:realistic", ("psnr", "abs_rel"), "-"),
]


def _wt_cell(scores: dict, sets: str | tuple[str, ...], metrics: tuple[str, ...]) -> str:
    if isinstance(sets, tuple):  # one metric over several sets
        pairs = [(scores.get(name, {}).get(metrics[0]), metrics[0]) for name in sets]
    else:
        pairs = [(scores.get(sets, {}).get(m), m) for m in metrics]
    return slash(*[num(v, 2 if m == "psnr" else 3) for v, m in pairs])


@generator("training:world_transfer", reads=[WORLD_TRANSFER, REALISM])
def world_transfer(ctx: Context) -> str:
    d = ctx.load(WORLD_TRANSFER)
    order, models = dig(d, "order"), dig(d, "models")
    rows = [[label] + [_wt_cell(dig(models, m, "scores"), sets, metrics) for m in order] + [aim]
            for label, sets, metrics, aim in WORLD_TRANSFER_ROWS]
    met = []
    for m in order:
        known = [v for v in dig(models, m, "aims").values() if v is not None]
        ref = " (reference)" if m == d["reference"] else ""
        met.append((f"{sum(known)} of {len(known)}" if known else "-") + ref)
    rows.append(["aims met"] + met + [f"{len(dig(d, 'aims'))} aims (reference: {dig(d, 'reference')})"])
    quick = [m for m in order if models[m].get("max_synthetic_samples")]
    runs = dig(ctx.load(REALISM), "runs")
    shown = [runs[0], runs[-1]] if len(runs) > 1 else runs
    realism = ("Realism of the world (benchmarks/realism.py, the segmenter's mIoU on renders; aim >= 0.60, car >= 0.5;"
               " [synthetic.md](synthetic.md)): " + "; latest: ".join(
                   f"{r['label']} {num(r['miou'], 3)} (car {num(r['per_class'].get('car'), 2)})" for r in shown)
               + ".") if runs else ""
    text = ("Each column is one model, scored with `distillnerf-eval` on frames it never trained on. "
            + (f"Scored on the first {', '.join(str(models[m]['max_synthetic_samples']) for m in quick)} synthetic "
               f"samples only: {', '.join(quick)}. " if quick else "") + realism)
    sources = "\n\n".join(ctx.source_of(WORLD_TRANSFER, dig(models, m, "provenance"), f"column {m}") for m in order)
    if runs:
        sources += "\n\n" + ctx.source_of(REALISM, dig(shown[-1], "provenance"), f"realism row {shown[-1]['label']}")
    return join(table(["", *order, "aim"], rows), text, sources)


@generator("training:frozen_2d_cost", reads=[FROZEN_2D_COST])
def frozen_2d_cost(ctx: Context) -> str:
    d = ctx.load(FROZEN_2D_COST)
    rows = [[label, f"{num(a['cpu_s_median'])} s", f"{num(a['wall_s_median'])} s", ms(a["encoder_ms_median"], 0),
             num(a["trainable_params"]), num(a["frozen_params"]), a["steps"]] for label, a in dig(d, "arms").items()]
    added, branch = dig(d, "added_per_step"), dig(d, "frozen_branch_forward")
    text = (f"The frozen branch adds {num(added['cpu_s'])} s of CPU time per training step "
            f"({num(added['cpu_ratio'])}x; "
            f"wall {num(added['wall_s'])} s, {num(added['wall_ratio'])}x, on a machine at load "
            f"{num(d['load']['before'][0], 1)}-{num(d['load']['after'][0], 1)}); the segmenter's forward alone on the "
            f"{branch['cameras']} cameras at {branch['segmenter_input_hw'][1]}x{branch['segmenter_input_hw'][0]}: "
            f"{num(branch['cpu_s_median'])} s CPU, {num(branch['wall_s_median'])} s wall. {dig(d, 'threads')} "
            f"thread(s). {d.get('note', '')}")
    return join(table(["training step (small, 6 cameras)", "CPU / step", "wall / step", "encoder", "trainable",
                       "frozen", "steps"], rows), text, ctx.source(FROZEN_2D_COST))


# ---------------------------------------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------------------------------------

REAL = RESULTS + "real_data.json"
KEYFRAME_FIT = RESULTS + "real_keyframe_fit.json"


@generator("real_data:keyframe_fit", reads=[KEYFRAME_FIT])
def real_keyframe_fit(ctx: Context) -> str:
    d = ctx.load(KEYFRAME_FIT)
    row = [f"{d['steps']} / {num(d['minutes'], 1)}", slash(num(d["psnr"]), num(d["ssim"], 3)),
           slash(num(d["abs_rel"], 3), num(d["sq_rel"], 3)), slash(f"{num(d['rmse'])} m", num(d["rmse_log"], 3)),
           slash(num(d["delta1"], 3), num(d["delta2"], 3), num(d["delta3"], 3))]
    return join(table(["steps / minutes", "recon PSNR / SSIM", "LiDAR AbsRel / SqRel", "LiDAR RMSE / RMSE-log",
                       "delta1 / delta2 / delta3"], [row]), ctx.source(KEYFRAME_FIT))


def _real_row(label: str, m: dict) -> list[str]:
    return [label, slash(num(m["psnr"]), num(m["ssim"], 3)),
            slash(num(m["abs_rel"], 3), f"{num(m['rmse'])} m", num(m["delta1"], 3)),
            num(m["scale"]), pct(m["too_near"]), slash(num(m["abs_rel_near"], 3), num(m["abs_rel_far"], 3))]


@generator("real_data:bundled", reads=[REAL])
def real_bundled(ctx: Context) -> str:
    b = dig(ctx.load(REAL), "bundled")
    rows = [_real_row("nuScenes keyframe", b["nuscenes_keyframe"]["mean"])]
    rows += [_real_row(f"DDAD frame {f['frame']}", f) for f in b["ddad"]["frames"]]
    rows.append(_real_row(f"DDAD (mean of {len(b['ddad']['frames'])})", b["ddad"]["mean"]))
    header = ["frame", "PSNR / SSIM", "LiDAR AbsRel / RMSE / delta1", "scale", "too near",
              "AbsRel <= 20 m / > 20 m"]
    return join(table(header, rows), ctx.source(REAL))


@generator("real_data:novel_view", reads=[REAL])
def real_novel_view(ctx: Context) -> str:
    nv = dig(ctx.load(REAL), "novel_view", "bundled")

    def row(label: str, m: dict) -> list[str]:
        return [label, slash(num(m["psnr"]), num(m["ssim"], 3)),
                slash(num(m["abs_rel"], 3), f"{num(m['rmse'])} m", num(m["delta1"], 3)),
                slash(num(m["previous_frame_psnr"]), num(m["previous_frame_ssim"], 3))]
    rows = [row(f"{p['from_frame']} -> {p['to_frame']}", p) for p in nv["pairs"]] + [row("mean", nv["mean"])]
    header = ["pair", "PSNR / SSIM", "LiDAR AbsRel / RMSE / delta1", "previous frame PSNR / SSIM"]
    return join(table(header, rows), ctx.source(REAL))


@generator("real_data:per_scene_fit", reads=[REAL])
def real_per_scene_fit(ctx: Context) -> str:
    fit = dig(ctx.load(REAL), "per_scene_fit")
    pairs = {p["from_frame"]: p for p in fit["novel_view"]["pairs"]}
    rows = []
    for f in fit["frames"]:
        nv = pairs.get(f["frame"])
        nv_text = (f"{f['frame']} -> {nv['to_frame']}: {num(nv['psnr'])} / {num(nv['abs_rel'], 3)}"
                   if nv else "")
        rows.append([f"{f['frame']} ({f['role']})", slash(num(f["psnr"]), num(f["ssim"], 3)),
                     slash(num(f["abs_rel"], 3), f"{num(f['rmse'])} m", num(f["delta1"], 3)), num(f["scale"]),
                     nv_text])
    m = fit["train_mean"]
    rows.append(["training frames (mean)", slash(num(m["psnr"]), num(m["ssim"], 3)),
                 slash(num(m["abs_rel"], 3), f"{num(m['rmse'])} m", num(m["delta1"], 3)), num(m["scale"]), ""])
    budget = fit["budget"]
    text = (f"Budget: {num(fit['cpu_minutes'], 1)} CPU minutes of the process ({budget['threads']} threads), "
            f"{num(fit['wall_minutes'], 1)} minutes wall, {fit['steps']} steps; Adam lr {budget['lr']}, "
            f"{budget['warmup_steps']} warmup steps; from `{budget['init']}`; losses: {budget['losses']}; "
            f"trained on frames {', '.join(map(str, fit['train_frames']))}, held out "
            f"{', '.join(map(str, fit['held_out_frames']))}.")
    header = ["frame", "PSNR / SSIM", "LiDAR AbsRel / RMSE / delta1", "scale",
              "novel view to the next frame (PSNR / AbsRel)"]
    return join(table(header, rows), text, ctx.source(REAL))


@generator("real_data:diagnostics", reads=[REAL])
def real_diagnostics(ctx: Context) -> str:
    d = ctx.load(REAL)
    nus = d["bundled"]["nuscenes_keyframe"]
    ddad = d["bundled"]["ddad"]
    held = d["per_scene_fit"]["held_out"]
    order = d["camera_order"]

    def cams(frame: dict, names: list[str]) -> str:
        return ", ".join(f"{n} {v:.1f}" for n, v in zip(names, frame["psnr_cameras"], strict=True))

    def sky(m: dict) -> str:
        return f"{num(m['top_empty_pred'], 1)} m ({num(m['top_empty_pred_p10'], 1)}-{num(m['top_empty_pred_p90'], 1)})"

    rows = [
        ["median LiDAR / predicted depth (scale)", num(nus["mean"]["scale"]), num(ddad["mean"]["scale"]),
         num(held["scale"])],
        ["LiDAR pixels predicted > 1.25x too near", pct(nus["mean"]["too_near"]), pct(ddad["mean"]["too_near"]),
         pct(held["too_near"])],
        ["upper-half pixels with LiDAR > 15 m: LiDAR / predicted (median)",
         f"{num(nus['mean']['upper_far_lidar'], 1)} / {num(nus['mean']['upper_far_pred'], 1)} m",
         f"{num(ddad['mean']['upper_far_lidar'], 1)} / {num(ddad['mean']['upper_far_pred'], 1)} m",
         f"{num(held['upper_far_lidar'], 1)} / {num(held['upper_far_pred'], 1)} m"],
        ["top sixth of rows without LiDAR (mostly sky): predicted depth median (10-90%)", sky(nus["mean"]),
         sky(ddad["mean"]), sky(held)],
        ["per-camera PSNR (first frame)", cams(nus["frames"][0], order["nuscenes"]),
         cams(ddad["frames"][0], order["ddad"]), cams(held, order["ddad"])],
    ]
    masks = ", ".join(f"{cam} {pct(v, 1)}" for cam, v in sorted(d["ddad_masked_fraction"].items()))
    header = ["", "nuScenes keyframe, bundled model", "DDAD (mean of 3), bundled model",
              "DDAD frame 1 (held out) after the per-scene fit"]
    return join(table(header, rows), f"DDAD ego-body pixels left out of every score: {masks}.", ctx.source(REAL))


# ---------------------------------------------------------------------------------------------------------
# Per-scene field targets
# ---------------------------------------------------------------------------------------------------------

NERF_SYN = RESULTS + "nerf_distill_synthetic.json"
NERF_REAL = RESULTS + "nerf_distill_real.json"
NERF_MANIFEST = RESULTS + "nerf_fit_ddad_manifest.json"
NERF_VARIANTS = {"lidar": "LiDAR only", "field": "+ field dense depth",
                 "field+virt": "+ field dense depth + virtual cameras", "oracle": "+ exact dense depth (oracle)"}


@generator("scene_fields:synthetic_fields", reads=[NERF_SYN])
def scene_fields_synthetic_fields(ctx: Context) -> str:
    d = ctx.load(NERF_SYN)
    rows = [[scene, num(q["dense_abs_rel"], 3), num(q["held_out_lidar_abs_rel"], 3), num(q["train_frames_psnr"], 1),
             num(q["train_frames_lidar_abs_rel"], 3), "x".join(map(str, q["resolution_hw"]))]
            for scene, q in d["fields"].items()]
    header = ["field (scene)", "dense-GT AbsRel", "held-out LiDAR pixels AbsRel", "training PSNR",
              "training LiDAR AbsRel", "render h x w"]
    s = d["field_settings"]
    text = (f"Fields: {s['steps']} steps each, {s['rays']} rays per step, images {s['image_hw'][0]}x"
            f"{s['image_hw'][1]}; {num(d['field_cpu_minutes'], 1)} CPU minutes for all fields.")
    return join(table(header, rows), text, ctx.source(NERF_SYN))


@generator("scene_fields:synthetic", reads=[NERF_SYN])
def scene_fields_synthetic(ctx: Context) -> str:
    d = ctx.load(NERF_SYN)
    rows = []
    for key, v in d["variants"].items():
        label = NERF_VARIANTS.get(key, key)
        if key == "field+virt":
            label += f" (p {d['setup']['virtual_prob']})"
        rows.append([label, slash(num(v["psnr"]), num(v["ssim"], 3)), slash(num(v["nvs_psnr"]), num(v["nvs_ssim"], 3)),
                     slash(num(v["abs_rel"], 3), f"{num(v['rmse'])} m"), num(v["dense_abs_rel"], 3), v["steps"],
                     num(v["train_cpu_minutes"], 1)])
    n = d["variants"][next(iter(d["variants"]))]["num_samples"]
    header = [f"held out ({n} keyframes)", "recon PSNR / SSIM", "novel-view PSNR / SSIM", "LiDAR AbsRel / RMSE",
              "dense-GT AbsRel", "steps", "train CPU min"]
    setup = d["setup"]
    text = (f"Training: {setup['train']}, {setup['config']}, {setup['steps']} steps per variant; "
            f"held out {setup['heldout']}.")
    return join(table(header, rows), text, ctx.source(NERF_SYN))


@generator("scene_fields:ddad_field", reads=[NERF_REAL, NERF_MANIFEST])
def scene_fields_ddad_field(ctx: Context) -> str:
    used = ctx.load(NERF_REAL)
    refit = ctx.load(NERF_MANIFEST)
    scene = next(iter(refit["scenes"].values()))

    def row(label: str, q: dict, cpu_min: float, sky: str | None, sky_weight: float | None) -> list[str]:
        held = [f for f in q["frames"] if f["role"] != "train"]
        train = [f["frame"] for f in q["frames"] if f["role"] == "train"]
        return [label, f"{sky or 'none (before the sky loss existed)'}, weight {num(sky_weight, 2)}",
                f"{', '.join(map(str, train))}: {num(q['train_frames_psnr'])} / "
                f"{num(q['train_frames_lidar_abs_rel'], 3)}",
                ", ".join(f"{f['frame']}: {num(f['psnr'])} / {num(f['lidar_abs_rel'], 3)}" for f in held),
                num(q["held_out_lidar_abs_rel"], 3),
                slash(pct(q.get("train_frames_sky_rendered_as_sky")),
                      pct(q.get("held_out_frames_sky_rendered_as_sky"))),
                pct(q.get("held_out_frames_top_rows_rendered_as_sky")), num(cpu_min, 1)]
    rows = [row("the field the distillation arms below used (`nerf_distill_real.json`)", used["field"],
                used["field_cpu_minutes"], used.get("field_sky_mask"), used["field_settings"].get("sky_weight")),
            row("a refit with `distillnerf-fit-scene` (`nerf_fit_ddad_manifest.json`)", scene["quality"],
                scene["total_cpu_s"] / 60, scene.get("sky_mask"), refit["settings"].get("sky_weight"))]
    header = ["DDAD field", "sky mask", "fitted frames: PSNR / LiDAR AbsRel", "held-out frame: PSNR / LiDAR AbsRel",
              "held-out LiDAR pixels of the fitted frames, AbsRel", "segmenter sky rendered as sky: fitted / held-out",
              "held-out top rows without LiDAR rendered as sky", "CPU min"]
    q = used["field"]
    text = (f"Scored at {q['resolution_hw'][0]}x{q['resolution_hw'][1]} (LiDAR min-pooled, ego body left out); the "
            f"held-out LiDAR pixels are {q['held_out_lidar_pixels']:,} rays of the fitted frames kept out of the fit, "
            "scored at their own rays. \"Rendered as sky\": the field's accumulated opacity below "
            f"{used['field_settings']['field']['sky_opacity']} (its depth is then sky), before the targets' override "
            "(the segmenter's sky is written as sky whatever the field renders there); \"top rows\": the top sixth "
            "of the rows without a LiDAR return, where the arms' \"sky rows depth\" is measured.")
    return join(table(header, rows), text, ctx.sources([NERF_REAL, NERF_MANIFEST]))


@generator("scene_fields:ddad_distill", reads=[NERF_REAL])
def scene_fields_ddad_distill(ctx: Context) -> str:
    d = ctx.load(NERF_REAL)
    rows = []
    for name, arm in d["per_scene_fit"].items():
        h = arm["held_out_frame1"]
        rows.append([name, arm["steps"], slash(num(h["psnr"]), num(h["ssim"], 3)),
                     slash(num(h["abs_rel"], 3), f"{num(h['rmse'])} m", num(h["delta1"], 3)),
                     num(h["top_empty_pred"], 1),
                     slash(num(h.get("sky_pred"), 1), pct(h.get("sky_far_share"))),
                     slash(num(arm["train_frames_psnr"]), num(arm["train_frames_abs_rel"], 3)),
                     num(arm["cpu_minutes"], 1)])
    setup = d["setup"]
    header = ["per-scene fit, held-out frame 1", "steps", "PSNR / SSIM", "LiDAR AbsRel / RMSE / delta1",
              "sky rows depth (m)", "segmenter-sky pixels: depth (m) / share >= 80 m",
              "training frames PSNR / AbsRel", "CPU min"]
    arms = {a.get("arm") for a in d["per_scene_fit"].values()}
    sky_px = next((a["held_out_frame1"].get("sky_pixels") for a in d["per_scene_fit"].values()), None)
    text = (f"Each arm: from `{setup['init']}`, frames {', '.join(map(str, setup['train_frames']))}, "
            f"{setup['fit_cpu_minutes']} CPU minutes of the process; virtual camera probability "
            f"{setup['virtual_prob']}; \"sky rows\": median predicted depth in the top sixth of the rows without "
            f"LiDAR (mostly trees and buildings on DDAD, some sky); \"segmenter-sky pixels\": the {num(sky_px)} "
            "render pixels of frame 1 the segmenter calls sky (median depth, share rendered at >= 80 m)."
            + ("" if len(arms) < 2 or "invocations" not in d else
               f" The arms ran in {len(d['invocations'])} invocations (`invocations` in the JSON: their commands,"
               " arms and load; an arm run again by a later invocation keeps the later result)."))
    return join(table(header, rows), text, ctx.source(NERF_REAL))


# ---------------------------------------------------------------------------------------------------------
# Semantic queries
# ---------------------------------------------------------------------------------------------------------

SEM_CPU = RESULTS + "semantic_oracle_cpu_15min.json"
SEM_GPU3 = RESULTS + "semantic_oracle_gpu_3000.json"
SEM_GPU6 = RESULTS + "semantic_oracle_gpu_6000.json"
SEM_GPU6_CPU = RESULTS + "semantic_oracle_gpu_6000_cpu_eval.json"
SEM_COST = RESULTS + "semantic_query_cost_cpu.json"
NODE_PLAIN = RESULTS + "node_latency_1hz_bundled_2026-11-26.json"
NODE_QUERIES = RESULTS + "node_latency_1hz_4queries_2026-11-26.json"
SEM_RUNS = [(SEM_CPU, "2 shared CPU cores, evaluated on the CPU"), (SEM_GPU3, "H200, evaluated on the H200"),
            (SEM_GPU6, "H200, evaluated on the H200"), (SEM_GPU6_CPU, "H200 (the same run), evaluated on the CPU")]


@generator("semantics:oracle", reads=[r for r, _ in SEM_RUNS])
def semantics_oracle(ctx: Context) -> str:
    rows = []
    for rel, where in SEM_RUNS:
        d = ctx.load(rel)
        vis = d["semantic_occupancy"]["visible"]
        ts = d["train_summary"]
        base = vis["single_class_baseline"]
        rows.append([f"{where}: {ts['step']} steps in {num(ts['elapsed_s'], 0)} s", num(vis["miou"], 3),
                     f"{num(base['miou'], 3)} ({base['class']})", f"{vis['miou'] / base['miou']:.1f}x",
                     num(vis["geometric_iou"], 3),
                     num(vis.get("label_accuracy_on_occupied"), 3),
                     slash(num(d["feat_psnr"]), num(d["feat_cosine"], 3)), num(d["protocol"]["psnr"]),
                     d["semantic_occupancy"]["samples"]])
    header = ["held out, camera-visible voxels (training)", "mIoU", "best single class", "mIoU / best single class",
              "geometric IoU",
              "right label where both occupied", "feat_psnr / cosine", "recon PSNR", "keyframes"]
    return join(table(header, rows), ctx.sources([(r, w) for r, w in SEM_RUNS]))


@generator("semantics:per_class", reads=[SEM_CPU, SEM_GPU6])
def semantics_per_class(ctx: Context) -> str:
    runs = [(SEM_CPU, "CPU, 15 min"), (SEM_GPU6, "H200, 6000 steps")]
    data = [ctx.load(r)["semantic_occupancy"]["visible"]["per_class_iou"] for r, _ in runs]
    rows = [[cls] + [num(d[cls], 3) for d in data] for cls in data[0]]
    return join(table(["class (camera-visible voxels)"] + [label for _, label in runs], rows),
                ctx.sources([r for r, _ in runs]))


@generator("semantics:query_cost", reads=[SEM_COST, NODE_PLAIN, NODE_QUERIES])
def semantics_query_cost(ctx: Context) -> str:
    c = ctx.load(SEM_COST)
    lib = table(["in the library (`ScenePredictor`)", "median ms"], [
        [f"{len(c['queries'])} queries ({', '.join(c['queries'])}) over {c['voxels']:,} occupied voxels",
         num(c["query_only_ms_median"], 2)],
        ["`predict` without queries", num(c["predict_ms_median"], 1)],
        ["`predict` with the queries", num(c["predict_with_queries_ms_median"], 1)],
    ])
    rows = []
    for rel in (NODE_PLAIN, NODE_QUERIES):
        d = ctx.load(rel)
        queries = ", ".join(d["semantic_queries"]) or "none"
        rows.append([queries, f"{d['frames_processed']} / {d['frames_sent']}", ms(d["model_ms"]["median"]),
                     ms(d["latency_ms"]["median"])])
    node = table(["in the node: `semantic_queries`", "frames processed / sent", "model time median",
                  "pipeline latency median"], rows)
    return join(lib, ctx.source(SEM_COST), node, ctx.sources([NODE_PLAIN, NODE_QUERIES]))


TEACHER_LABELS = [(RESULTS + "teacher_labels_cost_nuscenes.json", "nuscenes", "nuScenes keyframe"),
                  (RESULTS + "teacher_labels_cost_ddad.json", "ddad", "DDAD frame 0")]


@generator("semantics:teacher_labels_cost", reads=[rel for rel, _, _ in TEACHER_LABELS])
def semantics_teacher_labels_cost(ctx: Context) -> str:
    runs = [(ctx.load(rel), name, label) for rel, name, label in TEACHER_LABELS]
    per_frame, rows, seen = [], [], []
    for d, name, label in runs:
        r = dig(d, name)
        per_frame.append([f"{label} ({r['cameras']} cameras)",
                          f"{r['image_hw_decoded_distilled'][1]}x{r['image_hw_decoded_distilled'][0]}: "
                          f"{ms(r['decode_ms']['distilled']['min'], 0)}",
                          f"{r['image_hw_decoded'][1]}x{r['image_hw_decoded'][0]}: "
                          f"{ms(r['decode_ms']['teacher']['min'], 0)}",
                          ms(r["predict_ms"]["distilled"]["min"], 0), ms(r["predict_ms"]["teacher"]["min"], 0),
                          ms(dig(r, "render_at_first_label_ms"), 0)])
        for width in sorted(r["label"], key=int):
            w = r["label"][width]
            rows.append([label, f"{width} px{' (default)' if int(width) == d['defaults']['width'] else ''}",
                         ms(w["first_query_ms"]["min"], 0), ms(dig(w, "first_query_cpu_ms", "min"), 0),
                         ms(w["segmenter_ms"], 0),
                         ms(w["visibility_and_sampling_ms"], 0), ms(w["later_query_ms"]["min"], 1),
                         pct(w["top_class_agreement_with_widest"], 1)])
        tolerance = r["voxels_seen_by_depth_tolerance_voxels"]
        seen.append([label, f"{r['voxels']:,}", f"{r['voxels_in_some_view_projection_only']:,}"]
                    + [f"{tolerance[k]:,}" for k in sorted(tolerance, key=float)])
    every = table(["every frame, no labels asked", "decode, distilled", "decode, teacher (widest width)",
                   "predict, distilled", "predict, teacher", "a queried frame: its depth render"], per_frame)
    widest = max(max(d["widths"]) for d, _, _ in runs)
    query = table(["frame", "segmenter width", "first query on a frame", "its CPU time (all threads)",
                   "of it: segmenter (6 cameras)",
                   "of it: visibility + sampling", "later queries on that frame", f"top class = at {widest} px"],
                  rows)
    d0 = runs[0][0]
    tolerances = sorted(dig(d0, runs[0][1], "voxels_seen_by_depth_tolerance_voxels"), key=float)
    visibility = table(["frame", "occupied voxels", "in some camera's view (projection only)"]
                       + [f"seen, tolerance {float(t):g} voxel{'' if float(t) == 1 else 's'}"
                          + (" (default)" if float(t) == d0["defaults"]["depth_tolerance_voxels"] else "")
                          for t in tolerances], seen)
    loads = [(d["provenance"].get("load_average_at_start", [0])[0], d["provenance"].get("load_average_at_end", [0])[0])
             for d, _, _ in runs]
    prov = d0["provenance"]
    text = (f"Bundled model ({d0['model_image_hw'][1]}x{d0['model_image_hw'][0]} input) on the CPU,"
            f" {prov.get('threads', '?')} torch threads; each number the fastest of {prov.get('repeats', '?')} runs"
            " (later queries: the labels of the frame are kept, only the texts are summed); CPU time is the"
            " process's, over all its threads (on a quiet machine about threads x wall time). The machine was shared"
            " by six engineers' tests and trainings: 1-minute load average "
            + ", ".join(f"{a:.1f} -> {b:.1f}" for a, b in loads)
            + " (start -> end of each run) on 2 cores, so the times are upper bounds of what a quiet machine takes.")
    return join(every, query, visibility, text, ctx.sources([rel for rel, _, _ in TEACHER_LABELS]))


QUERY_CALIBRATION = RESULTS + "query_calibration.json"


@generator("semantics:calibration", reads=[QUERY_CALIBRATION])
def semantics_calibration(ctx: Context) -> str:
    d = ctx.load(QUERY_CALIBRATION)
    cal, rep = d["calibration"], d["report"]
    rows = []
    # A cosine teacher fits T and the background option's cosine; a segmenter-distilled model (class logits) T only
    background = cal.get("background_cosine") is not None
    settings = (("before", "uncalibrated", cal["temperature_before"], cal.get("background_cosine_before")),
                ("temperature_only", "temperature only", rep["fit"]["temperature_only"]["temperature"],
                 cal.get("background_cosine_before")),
                ("after", "**stored**: temperature + background" if background else "**stored**: temperature",
                 cal["temperature"], cal.get("background_cosine")))
    if not background:  # the temperature-only fit is the stored one: one row fewer per split
        settings = (settings[0], settings[2])
    for split, where in (("fit", cal["fitted_on"]), ("eval", cal["evaluated_on"])):
        for key, label, temperature, cosine in settings:
            r = rep[split][key]
            cells = [f"{split} ({where['frames']} frames, {where['voxels']:,} voxels)", label, f"{temperature:.3g}",
                     *([num(cosine, 3)] if background else []), num(r["ece"], 3), num(r["nll"], 3),
                     num(r["accuracy"], 3), num(r["confidence"], 3)]
            rows.append(cells)
    fit = table(["held-out synthetic split (what was fitted on it)", "calibration", "temperature",
                 *(["background cosine"] if background else []), f"ECE ({cal['bins']} bins)", "NLL", "accuracy",
                 "mean confidence"], rows)
    check = cal["domain_check"]
    def answered(f: dict) -> str:
        u, c = f["uncalibrated"], f["calibrated"]
        return (f"{pct(u['labelled_share'])} / {pct(c['labelled_share'])}", f"{pct(u['confident_share'])} / "
                f"{pct(c['confident_share'])}", f"{num(u['max_score'], 2)} / {num(c['max_score'], 2)}")

    frames = [[f["source"], f["sample"][:12], num(f["statistic"], 4), "in" if f["in_domain"] else "**out**",
               num(f["recon_psnr_median"], 2), *answered(f)]
              for kind in ("synthetic", "real") for f in d["frames"][kind]]
    s = d["summary"]
    text = (f"Domain check stored with the calibration: `{check['statistic']}` >= {check['threshold']:.4f} (the fit"
            f" frames' minimum {check['in_domain']['min']:.4f} minus {check['margin_stds']:g} standard deviations"
            f" of {check['in_domain']['std']:.4f}). Synthetic frames (fit and held out)"
            f" {s['synthetic_statistic'][0]:.4f} .."
            f" {s['synthetic_statistic'][1]:.4f}, real frames {s['real_statistic'][0]:.4f} .."
            f" {s['real_statistic'][1]:.4f}: {'separated' if s['separated'] else 'NOT separated'}. The recon PSNR of"
            f" the same frames (synthetic {s['synthetic_recon_psnr'][0]:.2f} .. {s['synthetic_recon_psnr'][1]:.2f} dB,"
            f" real {s['real_recon_psnr'][0]:.2f} .. {s['real_recon_psnr'][1]:.2f} dB)"
            f" {'separates them too' if s['recon_psnr_separates'] else 'does not separate them'}.")
    queried = (f"Last three columns: all {len(cal['queries'])} classes queried with the background option, "
               "uncalibrated / calibrated (share of the occupied voxels labelled, share labelled with a score >= 0.9, "
               "highest score).")
    if "targets" in cal:  # what the scores were fitted against, as distillnerf-calibrate stored it
        queried += f" Targets: {cal['targets']}."
    return join(fit, table(["frame (as the node sees it)", "sample", check["statistic"], "domain",
                            "recon PSNR median dB", "labelled", "score >= 0.9", "max score"], frames), queried, text,
                ctx.source(QUERY_CALIBRATION))


REAL_SEMANTICS = RESULTS + "real_semantics.json"
REAL_SEM_ORDER = ("segmenter (reference)", "row prior", "bundled", "teacher source", "per-scene fit (log_probs)",
                  "per-scene fit (log_probs+features)")


def _real_sem_rows(d: dict) -> list[tuple[str, dict]]:
    """(label, variant) in display order; the teacher source on each fit's geometry after its fit."""
    out = []
    for name in REAL_SEM_ORDER:
        v = d["variants"].get(name)
        if v is None:
            continue
        out.append((name, v))
        if "teacher_source_on_this_geometry" in v:
            out.append((f"teacher source on the {name[len('per-scene fit '):]} fit's geometry",
                        v["teacher_source_on_this_geometry"]))
    return out


def _ratio(value: Any) -> str:
    if value is None:
        return "-"
    return "inf (row prior never that precise)" if value == float("inf") else f"{value:.2f}x"


@generator("semantics:real_ddad", reads=[REAL_SEMANTICS])
def semantics_real_ddad(ctx: Context) -> str:
    d = ctx.load(REAL_SEMANTICS)
    s = d["setup"]
    rows = []
    for name, v in _real_sem_rows(d):
        px, vox = v["pixels"], v.get("voxels")
        car = px["car"]
        rows.append([name, slash(num(car["precision"], 3), num(car["recall"], 3)),
                     num(car["row_prior_recall_at_this_precision"], 3), _ratio(car["recall_vs_row_prior"]),
                     slash(num(px["car_body_mask_only"]["precision"], 3), num(px["car_body_mask_only"]["recall"], 3)),
                     slash(num(px["vs_segmenter"]["miou"], 3), num(px["vs_segmenter"]["accuracy"], 3)),
                     slash(num(px["ece_classes_vs_segmenter"], 3), num(px["ece_car_vs_boxes"], 3)),
                     "-" if vox is None else slash(pct(vox["in_boxes_0"], 1), pct(vox["in_boxes_0.5"], 1)),
                     "-" if vox is None else slash(pct(vox["occupied_in_boxes_0"], 1),
                                                   pct(vox["occupied_in_boxes_0.5"], 1)),
                     "-" if vox is None else f"{vox['boxes_hit_0.5']} of {vox['boxes_in_range']}",
                     "-" if vox is None else f"{vox['class_voxels']:,} / {vox['occupied_voxels']:,}"])
    header = ["DDAD frame 1 (held out)", "car px precision / recall", "row prior's recall at that precision",
              "recall / row prior's", "precision / recall, body mask only", "mIoU / accuracy vs segmenter",
              "ECE classes / car vs boxes", "car voxels in boxes (exact / +0.5 m)",
              "all occupied voxels in boxes (exact / +0.5 m)", "boxes <= 40 m with a car voxel (+0.5 m)",
              "car / occupied voxels"]
    text = (f"{s['positive_pixels']:,} positive (vehicle-box) pixels of {s['valid_pixels']:,} scored at "
            f"{s['eval_hw'][0]} x {s['eval_hw'][1]} per camera ({len(s['cameras'])} cameras); "
            f"{s['vehicle_boxes_2d']} vehicle 2D boxes, {s['vehicle_boxes_3d']} vehicle 3D boxes; ego body left out: "
            f"{s['body_mask_pixels']:,} pixels of the dataroot's mask + {s['ego_vehicle_blob_pixels']:,} pixels of "
            f"vehicle-labelled blobs adjoining it.")
    return join(table(header, rows), text, ctx.source(REAL_SEMANTICS))


@generator("semantics:real_ddad_fits", reads=[REAL_SEMANTICS])
def semantics_real_ddad_fits(ctx: Context) -> str:
    d = ctx.load(REAL_SEMANTICS)
    rows = []
    for name in REAL_SEM_ORDER[4:]:
        v = d["variants"].get(name)
        if v is None:
            continue
        t, px = v["train"], v["pixels"]
        rows.append([f"`{v['distilled']}` ({v['cache']['dim']} channels -> PCA {v['feature_dim']}, "
                     f"{pct(v['pca_explained_variance'], 1)} of the variance)",
                     f"{t['steps']} steps in {num(t['wall_minutes'], 1)} min ({t['threads']} threads)",
                     slash(num(px["car"]["precision"], 3), num(px["car"]["recall"], 3)),
                     slash(num(px["vs_segmenter"]["miou"], 3), num(px["vs_segmenter"]["accuracy"], 3)),
                     slash(num(px["ece_classes_vs_segmenter"], 3), num(v["calibrated"]["ece_classes_vs_segmenter"], 3))
                     + f" (T {v['calibrated']['temperature']:.3g})", f"`{t['command']}`"])
    header = ["distilled from the segmenter", "per-scene fit (frames 0, 2)", "car px precision / recall (frame 1)",
              "mIoU / accuracy vs segmenter (frame 1)", "ECE at T = 1 / at the fitted T", "command"]
    return join(table(header, rows), ctx.source(REAL_SEMANTICS))


@generator("semantics:real_ddad_aims", reads=[REAL_SEMANTICS])
def semantics_real_ddad_aims(ctx: Context) -> str:
    d = ctx.load(REAL_SEMANTICS)
    rows = []
    for aim, a in d["aims"].items():
        value = _ratio(a["ratio"]) if "ratio" in a else slash(num(a["ece"], 3), num(a["ece_car_vs_boxes"], 3))
        rows.append([aim, value, "met" if a["met"] else "**not met**"])
    return join(table(["aim (DDAD frame 1, held out)", "measured", ""], rows), ctx.source(REAL_SEMANTICS))


# ---------------------------------------------------------------------------------------------------------
# CPU
# ---------------------------------------------------------------------------------------------------------

BENCH_CPU = [RESULTS + f"bench_cpu_{c}.json" for c in ("tiny", "small", "paper")]
CPU_AB = [RESULTS + f"cpu_ab_small_{n}.json" for n in ("issue26_random", "issue26_realistic", "2threads_session3",
                                                         "1thread_session3", "2threads_quiet", "1thread", "2threads")]
BENCH_LOADS = [RESULTS + f"bench_cpu_small_{scene}_{mode}.json" for scene in ("random", "realistic")
               for mode in ("infer", "train")]
LOOKUP = RESULTS + "lookup_accuracy.json"
STAGES = ("encoder", "lift", "voxelize", "sparse_conv", "render", "decode")


def _params(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.0f} k"


@generator("cpu:inference", reads=BENCH_CPU)
def cpu_inference(ctx: Context) -> str:
    rows = []
    for rel in BENCH_CPU:
        d = ctx.load(rel)
        lat = d["latency_ms_median"]
        lat_text = f"{lat / 1000:.2f} s" if lat >= 1000 else ms(lat)
        rows.append([f"`{d['config']}`", _params(d["params"]), lat_text, f"{d['iters']} (+{d['warmup']} warm-up)",
                     f"{d['peak_mem_mb']:,.0f} MB", f"{d['points_lifted'] / 1e3:,.0f} k",
                     slash(str(d["voxels_occupied"]["coarse"]), str(d["voxels_occupied"]["fine"])),
                     d["torch_threads"]])
    header = ["config", "parameters", "median latency", "iterations", "peak memory (process RSS)", "lifted points",
              "occupied voxels coarse / fine", "threads"]
    stage_rows = []
    for rel in BENCH_CPU:
        d = ctx.load(rel)
        floors = d.get("floors", {})
        stage_rows.append([f"`{d['config']}`"] + [
            f"{d['stage_ms'][s]:.1f} / {floors[s]['floor_ms']:.1f}" if s in floors else f"{d['stage_ms'][s]:.1f}"
            for s in STAGES])
    stages = table(["per stage, ms measured / floor", *STAGES], stage_rows)
    return join(table(header, rows), stages, ctx.sources(BENCH_CPU))


@generator("cpu:ab", reads=CPU_AB)
def cpu_ab(ctx: Context) -> str:
    rows = []
    for rel in CPU_AB:
        d = ctx.load(rel)
        trees = list(d["trees"].values())
        if len(trees) != 2:
            raise ReportError(f"{rel}: expected two trees")
        before, after = trees
        cpu = (f"{before['infer_cpu_ms_median']:.0f} -> {after['infer_cpu_ms_median']:.0f} / "
               f"{before['train_step_cpu_ms_median']:.0f} -> {after['train_step_cpu_ms_median']:.0f}"
               if "infer_cpu_ms_median" in before else "-")
        rows.append([f"`{Path(rel).name}`", ctx.provenance(rel)["commit"], d["threads"],
                     f"{before['infer_ms_median']:.1f} -> {after['infer_ms_median']:.1f}",
                     f"{before['train_step_ms_median']:.1f} -> {after['train_step_ms_median']:.1f}", cpu,
                     f"{before['n_infer']} / {before['n_train']}"])
    header = ["run", "trees (before -> after)", "threads", "forward median ms", "training step median ms",
              "process CPU ms per forward / step", "forwards / steps per tree"]
    return join(table(header, rows), ctx.sources(CPU_AB))


@generator("cpu:loads", reads=BENCH_LOADS)
def cpu_loads(ctx: Context) -> str:
    """distillnerf-bench on the random load (ring rig, random pixels and weights) and the realistic one (the
    bundled keyframe with the bundled model's trained weights)."""
    rows = []
    for rel in BENCH_LOADS:
        d = ctx.load(rel)
        voxels = d["voxels_occupied"]
        rows.append([d["scene"], d["weights"], d["mode"], f"{d['latency_ms_median']:.0f}",
                     f"{d['process_cpu_ms_median']:.0f}", f"{d['stage_ms']['render']:.0f}",
                     f"{d['stage_ms']['sparse_conv']:.0f}", slash(f"{voxels['coarse']:,}", f"{voxels['fine']:,}"),
                     d["torch_threads"]])
    header = ["load", "weights", "mode", "median ms", "process CPU ms", "render ms", "sparse CNN ms",
              "occupied voxels coarse / fine", "threads"]
    notes = {ctx.load(rel).get("note") for rel in BENCH_LOADS} - {None}
    return join(table(header, rows), *sorted(notes), ctx.sources(BENCH_LOADS))


@generator("cpu:lookup_accuracy", reads=[LOOKUP])
def cpu_lookup_accuracy(ctx: Context) -> str:
    d = ctx.load(LOOKUP)
    rows = [[m, f"{d[m]['feature_rmse']:.4f}", f"{d[m]['tilted_wall_depth_mae_m']:.6f} m"]
            for m in ("nearest", "trilinear")]
    v = d["fine_voxel_m"]
    return join(table(["voxel lookup", "smooth feature field RMSE", "tilted wall depth mean error"], rows),
                f"Fine voxel size {v['x']:.3f} m (x, y) by {v['z']:.4f} m (z).", ctx.source(LOOKUP))


LOADER_CPU = RESULTS + "loader_throughput_cpu.json"


def loader_throughput_block(ctx: Context, rel: str) -> str:
    """The table of one benchmarks/loader_throughput.py run: per decode mode, the decode and per-sample CPU cost,
    the cores one rank needs for the aim, and the measured samples/s per worker count against the step."""
    d = ctx.load(rel)
    workers = sorted({r["workers"] for r in d["loader"]})
    rows = []
    for mode, cost in d["in_process"].items():
        dec = d["decode_one_jpeg"]
        runs = {r["workers"]: r for r in d["loader"] if r["decode"] == mode}
        rows.append([mode, f"{dec[f'synthetic_{mode}_ms']:.1f} / {num(dec.get(f'real_{mode}_ms'), 1)}",
                     f"{cost['cpu_ms_median']:.0f}", f"{cost['cores_for_aim']:.2f}"]
                    + [f"{runs[k]['samples_per_s']:.1f} ({runs[k]['step_ratio']:.2f}x)" if k in runs else "-"
                       for k in workers])
    header = ["decode", f"one JPEG -> {d['image_hw'][1]}x{d['image_hw'][0]}, CPU ms (synthetic / real nuScenes)",
              "CPU ms per sample", f"cores for {d['aim_ratio']:g}x the step rate",
              *[f"samples/s, {k} worker{'s' if k != 1 else ''} (x step rate)" for k in workers]]
    built = d["dataroot"]
    note = d["provenance"].get("note", "")
    text = (f"Step {d['step_ms']:g} ms = {d['step_rate_per_s']:.1f} samples/s per rank (batch 1); the aim is "
            f"{d['aim_ratio']:g}x that. Dataroot: {built['keyframes']} keyframes x 6 cameras at "
            f"{built['image_wh'][0]}x{built['image_wh'][1]} (JPEG median {built['jpeg_kb_median']:.0f} kB; the real "
            f"nuScenes sample's {num(d['decode_one_jpeg'].get('real_jpeg_kb_median'), 0)} kB), LiDAR "
            f"{built['lidar_points_median']:,.0f} points per sweep; {d['cpu_count']} CPU cores"
            + (f"; {note}" if note else "") + ".")
    return join(table(header, rows), text, ctx.source(rel))


@generator("cpu:loader_throughput", reads=[LOADER_CPU])
def cpu_loader_throughput(ctx: Context) -> str:
    return loader_throughput_block(ctx, LOADER_CPU)


# ---------------------------------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------------------------------

GPU = RESULTS + "gpu_h200_2026-11-26_1050_4bf9c65/results.json"
GPU_1033 = RESULTS + "gpu_h200_2026-11-26_1033_89f3bbc/results.json"
GPU_ISSUE = RESULTS + "gpu_issue13_baseline.json"
PRECISION_COLUMNS = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True), ("fp16", False)]


@generator("gpu:h200", reads=[GPU, GPU_1033, GPU_ISSUE])
def gpu_h200(ctx: Context) -> str:
    run = ctx.load(GPU)
    earlier = ctx.load(GPU_1033)
    issue = ctx.load(GPU_ISSUE)["measured"]
    bench = run["bench"]
    from_earlier = False

    def get(config: str, mode: str, precision: str, compiled: bool, batch: str = "") -> dict | None:
        nonlocal from_earlier
        key = f"{config}_{mode}_{precision}{batch}{'_compiled' if compiled else ''}"
        if key in bench:
            return bench[key]
        if key in earlier["bench"] and mode == "train" and config == "paper" and compiled:
            from_earlier = True
            return {**earlier["bench"][key], "_earlier": True}
        return None

    def step(config: str, precision: str, compiled: bool) -> str:
        b = get(config, "train", precision, compiled)
        if b is None:
            return ""
        text = f"{b['latency_ms_median']:.1f} ms, {b['peak_mem_mb']:,.0f} MB"
        return f"({text})" if b.get("_earlier") else text

    def fwd(config: str, precision: str, compiled: bool) -> str:
        b = get(config, "infer", precision, compiled)
        return "" if b is None else ms(b["latency_ms_median"])

    def small(precision: str, compiled: bool) -> str:
        f, s = get("small", "infer", precision, compiled), get("small", "train", precision, compiled)
        return "" if f is None or s is None else f"{f['latency_ms_median']:.1f} / {s['latency_ms_median']:.1f} ms"

    def keyframe(precision: str, compiled: bool) -> str:
        kf = run.get("keyframe_predictor_compiled" if compiled else "keyframe_predictor", {}).get("runs", {})
        r = kf.get(precision)
        if not r:
            return ""
        return f"{r['depth_only']['call_ms_median']:.1f} / {r['full']['call_ms_median']:.1f} ms"

    b4 = get("paper", "train", "bf16", False, "_b4")
    b1 = get("paper", "train", "bf16", False)
    b4_text = (f"{b4['latency_ms_median']:.0f} ms: {b4['images_per_s']:.0f} images/s "
               f"({b1['images_per_s']:.0f} at batch 1)") if b4 and b1 else ""
    rows = [
        ["`paper` training step (default loss, Adam), peak memory",
         f"{issue['paper_train_step_ms']:,.0f} ms, {issue['paper_train_peak_gb']:.1f} GB"]
        + [step("paper", p, c) for p, c in PRECISION_COLUMNS],
        ["`paper` training step, batch 4", "", "", "", b4_text, "", ""],
        ["`paper` forward (no grad)", ms(issue["paper_forward_ms"])]
        + [fwd("paper", p, c) for p, c in PRECISION_COLUMNS],
        ["`small` forward / training step",
         f"{issue['small_forward_ms']:.1f} / {issue['small_train_step_ms']:.0f} ms"]
        + [small(p, c) for p, c in PRECISION_COLUMNS],
        ["ScenePredictor, real keyframe (bundled model), depth only / full",
         f"{issue['keyframe_depth_only_ms']:.1f} / {issue['keyframe_full_ms']:.1f} ms"]
        + [keyframe(p, c) for p, c in PRECISION_COLUMNS],
    ]
    header = ["", "issue 13 (before)"] + [f"{p}{' (TF32)' if p == 'fp32' and not c else ''}{' compiled' if c else ''}"
                                          for p, c in PRECISION_COLUMNS]
    parts = [table(header, rows)]
    if from_earlier:
        parts.append("(In parentheses: from the earlier run `gpu_h200_2026-11-26_1033_89f3bbc`, whose code lacked the "
                     "last two renderer changes; the later run reached its time limit before that row.)")
    firsts = [f"{k.replace('_compiled', '')} {v['first_call_ms'] / 1000:.0f} s" for k, v in bench.items()
              if k.endswith("_compiled") and v.get("first_call_ms")]
    if firsts:
        parts.append("\"compiled\": `--compile` (torch.compile of the static-shape stages); the first call compiles: "
                     + ", ".join(firsts) + ".")
    env = run["env"]
    parts.append(f"Device {env['gpu']} ({env['gpu_mem_gb']:.0f} GB), torch {env['torch']}, CUDA {env['cuda']}; "
                 "random weights except the ScenePredictor rows.")
    parts.append(ctx.sources([GPU, (GPU_1033, "the parenthesised row"), (GPU_ISSUE, "the issue column")]))
    return join(*parts)


@generator("gpu:stages", reads=[GPU])
def gpu_stages(ctx: Context) -> str:
    bench = ctx.load(GPU)["bench"]
    rows = []
    for key in ("paper_infer_fp32", "paper_infer_fp32_compiled", "paper_infer_bf16", "paper_infer_bf16_compiled",
                "paper_train_fp32", "paper_train_fp32_compiled"):
        if key not in bench:
            continue
        b = bench[key]
        floors = b.get("floors") or {}
        rows.append([key.replace("_", " ")] + [
            f"{b['stage_ms'][s]:.1f} / {floors[s]['floor_ms']:.3f}" if s in floors else f"{b['stage_ms'][s]:.1f}"
            for s in STAGES] + [f"{b['points_lifted']:,}", f"{b['voxels_occupied']['fine']:,}"])
    header = ["`paper`, ms measured / floor", *STAGES, "points lifted", "fine voxels"]
    return join(table(header, rows), ctx.source(GPU))


# ---------------------------------------------------------------------------------------------------------
# The perception node
# ---------------------------------------------------------------------------------------------------------

NODE_1HZ = RESULTS + "node_latency_1hz.json"
NODE_12HZ = RESULTS + "node_latency_12hz.json"
NODE_AB = RESULTS + "node_latency_1hz_ab_2026-11-26.json"
NODE_OVERHEAD = RESULTS + "node_overhead.json"
NODE_METRICS = [("latency_ms", "pipeline latency (image stamp -> output published)"), ("model_ms", "model time"),
                ("ros_overhead_ms", "ROS overhead (latency - model)"),
                ("input_delay_ms", "of which input delay (stamp -> worker starts)"),
                ("in_node_overhead_ms", "of which in-node work outside the model (decode, messages, publish)")]


def _med_p90(p: dict) -> str:
    return f"{p['median']:.1f} ({p['p90']:.1f})"


def _range(values: Sequence[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f}"


@generator("node:latency", reads=[NODE_1HZ, NODE_12HZ, NODE_AB])
def node_latency(ctx: Context) -> str:
    quiet, fast, ab = ctx.load(NODE_1HZ), ctx.load(NODE_12HZ), ctx.load(NODE_AB)
    busy = {t: [r for r in ab["runs"] if r["tree"] == t] for t in ("before", "after")}
    pairs: dict[str, dict[str, dict]] = {}
    for r in ab["quieter_pairs"]["runs"]:
        pairs.setdefault(r["pair"], {})[r["tree"]] = r
    columns = [f"1 Hz, quiet, {ctx.provenance(NODE_1HZ)['date'][:10]}",
               f"1 Hz, busy, {len(busy['before'])} pairs (range of medians): before -> after"]
    columns += [f"1 Hz, pair {p} (load at start {v['before']['load_avg_1min_at_start']:.1f} / "
                f"{v['after']['load_avg_1min_at_start']:.1f}): before -> after" for p, v in pairs.items()]
    columns.append(f"{fast['hz']:.0f} Hz, quiet, {ctx.provenance(NODE_12HZ)['date'][:10]}")
    rows = []
    for key, label in NODE_METRICS:
        row = [f"{label}, ms: median (p90)", _med_p90(quiet[key])]
        row.append(f"{_range([r[key]['median'] for r in busy['before']])} -> "
                   f"{_range([r[key]['median'] for r in busy['after']])}")
        row += [f"{_med_p90(v['before'][key])} -> {_med_p90(v['after'][key])}" for v in pairs.values()]
        row.append(_med_p90(fast[key]))
        rows.append(row)

    def frames(d: dict) -> str:
        return f"{d['frames_processed']} / {d['frames_sent']}"
    rows.append(["frames processed / sent", frames(quiet),
                 ", ".join(frames(r) for r in busy["before"] + busy["after"]),
                 *[f"{frames(v['before'])} -> {frames(v['after'])}" for v in pairs.values()],
                 f"{frames(fast)} (drop rate {pct(fast['drop_rate'])}: never queued)"])

    def rss_range(runs: list[dict]) -> str:
        s = [rss_summary(r["rss_mb"]) for r in runs]
        return " / ".join(f"{min(x[i] for x in s):.0f}-{max(x[i] for x in s):.0f}" for i in range(3)) + " MB"
    rows.append(["node RSS start / peak / end (samples every second)", rss_text(quiet["rss_mb"]),
                 f"{rss_range(busy['before'])} -> {rss_range(busy['after'])}",
                 *[f"{rss_text(v['before']['rss_mb'])} -> {rss_text(v['after']['rss_mb'])}" for v in pairs.values()],
                 rss_text(fast["rss_mb"])])
    models = [short_model(ctx.provenance(rel)["model"]) for rel in (NODE_1HZ, NODE_AB, NODE_12HZ)]
    rows.append(["model (in full on the source lines)", models[0], models[1], *[models[1]] * len(pairs), models[2]])
    rows.append(["code", ctx.provenance(NODE_1HZ)["commit"], ab["trees"]["before"].split()[0] + " -> "
                 + ab["trees"]["after"].split()[0], *[ab["trees"]["before"].split()[0] + " -> "
                                                      + ab["trees"]["after"].split()[0]] * len(pairs),
                 ctx.provenance(NODE_12HZ)["commit"]])
    text = (f"Trees: before = {ab['trees']['before']}; after = {ab['trees']['after']}. Protocol: {ab['protocol']}; "
            f"{ab['quieter_pairs']['protocol']}.")
    return join(table(["", *columns], rows), text, ctx.sources([NODE_1HZ, NODE_AB, NODE_12HZ]))


@generator("node:overhead", reads=[NODE_OVERHEAD])
def node_overhead(ctx: Context) -> str:
    d = ctx.load(NODE_OVERHEAD)
    rows = [[step, num(d["median_ms"][step], 2), num(d["min_ms"][step], 2)] for step in d["median_ms"]]
    rows += [[f"in-node work outside the model, {k} decoding", num(v, 2), ""]
             for k, v in d["in_node_outside_model_ms"].items()]
    text = (f"{d['cameras']} cameras decoded to {d['decoded_hw'][1]}x{d['decoded_hw'][0]} for the model's "
            f"{d['model_input_hw'][1]}x{d['model_input_hw'][0]} input; {d['voxels']:,} occupied voxels; {d['iters']} "
            f"rounds; {d['cpu_count']} CPUs, 1-minute load {d['load_avg_1min']['start']:.1f} at the start, "
            f"{d['load_avg_1min']['end']:.1f} at the end.")
    return join(table(["the node's steps without DDS", "median ms", "min ms"], rows), text, ctx.source(NODE_OVERHEAD))


GRADING_COST = RESULTS + "grading_cost.json"


@generator("node:grading_cost", reads=[GRADING_COST])
def node_grading_cost(ctx: Context) -> str:
    d = ctx.load(GRADING_COST)
    rows = []
    for label, key in (("real nuScenes keyframe", "real_keyframe"), ("held-out synthetic keyframe", "synthetic")):
        for index, m in enumerate(d[key]):
            rows.append([f"{label} {index + 1}", ms(m["predict_ms"], 0), ms(m["rgb_render_ms"], 0), ms(m["psnr_ms"], 1),
                         f"{ms(m['lidar_depth_ms'], 1)} ({m['lidar_points']:,} points)", ms(m["added_ms"], 0),
                         num(m["recon_psnr_median"], 1), f"{min(m['recon_psnr'].values()):.1f} .. "
                         f"{max(m['recon_psnr'].values()):.1f}", num(m["depth_abs_rel"], 3)])
    s, prov = d["summary"], d["provenance"]
    c = s["calmest"]
    fractions = s["added_fraction_of_predict"]
    text = (f"Model input {d['image_hw'][1]}x{d['image_hw'][0]}, JPEGs decoded as the node decodes them; each number"
            f" the fastest of {prov.get('repeats', '?')} runs (ungraded and graded alternating) on"
            f" {prov.get('threads', '?')} torch threads of a shared machine. On the frame measured with the least"
            f" load a graded frame adds {c['added_ms']:.0f} ms to {c['predict_ms']:.0f} ms of model time (RGB render"
            f" {c['rgb_render_ms']:.0f} ms, PSNR {c['psnr_ms']:.1f} ms, LiDAR depth {c['lidar_depth_ms']:.0f} ms);"
            f" over the frames {min(fractions):.0%} to {max(fractions):.0%} of the model time. At the default"
            " `grading_every_n_frames: 10` that is a tenth of it per frame on average.")
    return join(table(["frame", "model ms (depth + occupancy)", "+ RGB render ms", "+ PSNR ms", "+ LiDAR depth ms",
                       "added ms", "recon PSNR median dB", "per camera dB", "LiDAR AbsRel"], rows), text,
                ctx.source(GRADING_COST))


# ---------------------------------------------------------------------------------------------------------
# Soak
# ---------------------------------------------------------------------------------------------------------

SOAK = RESULTS + "soak_30min.json"
SOAK_BEFORE_TRIM = RESULTS + "soak_30min_031c9a7.json"
SOAK_10 = RESULTS + "soak_10min.json"
LOSS_LABELS = [
    ("dropped_busy", "dropped: worker busy (`dropped_busy`; by design, never queued)"),
    ("sets_discarded_on_reset", "discarded at a looped bag's clock jump (`sets_discarded_on_reset`)"),
    ("frames_discarded_on_stop", "discarded at a deactivation, waiting for the worker (`frames_discarded_on_stop`)"),
    ("sets_discarded_on_stop", "discarded at a deactivation, pending in the synchroniser (`sets_discarded_on_stop`)"),
    ("never_reached_node", "never reached the node (sent while inactive or before its subscriptions matched)"),
]


@generator("soak:frames", reads=[SOAK])
def soak_frames(ctx: Context) -> str:
    d = ctx.load(SOAK)
    fr = d["frames"]
    lost = dict(fr["lost"])
    rows = [["sent by the player (counted on the camera topics)", f"{fr['sent']:,}"],
            ["processed", f"{fr['processed']:,}"]]
    for key, label in LOSS_LABELS:
        rows.append([label, f"{lost.pop(key):,}"])
    rest = sorted(lost)
    rows.append([", ".join(f"`{k}`" for k in rest), " / ".join(f"{lost[k]:,}" for k in rest)])
    rows.append(["unaccounted (sent - processed - lost)", f"{fr['unaccounted']:,}"])
    return join(table(["frames (camera sets)", "count"], rows), ctx.source(SOAK))


def _five_minute_means(series: Sequence[Sequence[float]], minutes: float) -> list[float]:
    means = []
    for w in range(int(minutes // 5)):
        values = [mb for t, mb in series if w * 300 <= t < (w + 1) * 300]
        if values:
            means.append(statistics.mean(values))
    return means


@generator("soak:runs", reads=[SOAK, SOAK_BEFORE_TRIM, SOAK_10])
def soak_runs(ctx: Context) -> str:
    runs = [(SOAK, ctx.load(SOAK)), (SOAK_BEFORE_TRIM, ctx.load(SOAK_BEFORE_TRIM)), (SOAK_10, ctx.load(SOAK_10))]

    def frames(d: dict) -> str:
        if "frames" in d:
            return f"{d['frames']['sent']:,} / {d['frames']['processed']:,} / {d['frames']['unaccounted']:,}"
        return f"- / {d['processed']:,} / -"

    def lat(d: dict, key: str) -> str:
        p = d[key]
        return f"{p['median']:.0f} / {p['p90']:.0f} / {p['p99']:.0f} / {p['max']:.0f} (n {p['n']:,})"

    def tf_resets(d: dict) -> str:
        r = d.get("tf_resets")
        return ", ".join(f"{k} {v:,}" for k, v in r.items()) if isinstance(r, dict) else str(r)

    def heaps(d: dict) -> str:
        m = d.get("memory_series")
        return f"{m[0]['malloc_heaps']} -> {m[-1]['malloc_heaps']}" if m else "not recorded"

    def events(d: dict) -> str:
        e = d.get("events")
        return ", ".join(f"{k} {v:,}" for k, v in e.items()) if e else "not recorded"
    rows = [
        ["minutes", *[num(d["minutes"], 0) for _, d in runs]],
        ["crashed / errors", *[f"{str(d['crashed']).lower()} / "
                               f"{d['frames']['lost']['errors'] if 'frames' in d else d['errors']}" for _, d in runs]],
        ["TF publisher messages / lifecycle cycles (failed)",
         *[f"{d['tf_sent']:,} / {d['lifecycle_cycles']} ({d['lifecycle_cycles_failed']})" if "tf_sent" in d else "none"
           for _, d in runs]],
        ["frames sent / processed / unaccounted", *[frames(d) for _, d in runs]],
        ["TF cache resets", *[tf_resets(d) for _, d in runs]],
        ["events", *[events(d) for _, d in runs]],
        ["pipeline latency ms, median / p90 / p99 / max", *[lat(d, "pipeline_latency_ms") for _, d in runs]],
        ["model time ms, median / p90 / p99 / max", *[lat(d, "model_ms") for _, d in runs]],
        ["node RSS start / after 1 min / peak / end", *[
            f"{d['rss_mb_start']:.0f} / {d['rss_mb_after_1min']:.0f} / {rss_summary(d['rss_series'])[1]:.0f} / "
            f"{d['rss_mb_end']:.0f} MB" for _, d in runs]],
        ["RSS 5-minute means (MB)", *[", ".join(f"{m:.0f}" for m in _five_minute_means(d["rss_series"], d["minutes"]))
                                      for _, d in runs]],
        ["glibc malloc heaps start -> end", *[heaps(d) for _, d in runs]],
        ["code / model (in full on the source lines)",
         *[f"{ctx.provenance(rel)['commit']} / {short_model(ctx.provenance(rel)['model'])}" for rel, _ in runs]],
    ]
    header = ["", *[f"`{Path(rel).name}`" for rel, _ in runs]]
    return join(table(header, rows), ctx.sources([rel for rel, _ in runs]))


# ---------------------------------------------------------------------------------------------------------
# The bundled model (docs/training.md)
# ---------------------------------------------------------------------------------------------------------

BUNDLED_EVALS = ["models/default/eval.json", "models/stage1/eval.json"]
BUNDLED_PROV = RESULTS + "bundled_model_eval.json"


def _eval_row(label: str, m: dict) -> list[str]:
    return [label, slash(num(m["psnr"]), num(m["ssim"], 3)), slash(num(m["nvs_psnr"]), num(m["nvs_ssim"], 3)),
            slash(num(m["abs_rel"], 3), f"{num(m['rmse'])} m", num(m["delta1"], 3)), num(m["dense_abs_rel"], 3),
            m["num_samples"]]


@generator("bundled_model", reads=[*BUNDLED_EVALS, BUNDLED_PROV])
def bundled_model(ctx: Context) -> str:
    stored = dig(ctx.load(BUNDLED_PROV), "evals")
    rows, lines = [], []
    for rel in BUNDLED_EVALS:
        entry = dig(stored, rel)
        rows.append(_eval_row(entry["label"], ctx.load(rel)))
        lines.append(ctx.source_of(rel, entry["provenance"], f"provenance in `{BUNDLED_PROV}`"))
    header = ["model (held-out synthetic keyframes)", "recon PSNR / SSIM", "novel-view PSNR / SSIM",
              "LiDAR AbsRel / RMSE / delta1", "dense-GT AbsRel (<= 80 m)", "keyframes"]
    return join(table(header, rows), "\n\n".join(lines))


# ---------------------------------------------------------------------------------------------------------
# Tools and the demo (docs/tools.md, README.md)
# ---------------------------------------------------------------------------------------------------------

TOOLS = RESULTS + "tools_timing.json"
DEMO = RESULTS + "demo_cpu.json"
UNITS = {"seconds": "s", "messages_per_s": "messages/s", "keyframes_per_min": "keyframes/min", "images": "images"}


def _measured(entry: dict) -> str:
    out = []
    for key, value in entry.items():
        if key in ("command", "data") or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        unit = UNITS.get(key, key.replace("_per_", "/").replace("_", " "))
        if isinstance(value, int):
            out.append(f"{value:,} {unit}")
        else:
            out.append(f"{value:,.{1 if abs(value) < 1000 else 0}f} {unit}")
    return ", ".join(out) or "-"


@generator("tools_timing", reads=[TOOLS])
def tools_timing(ctx: Context) -> str:
    d = ctx.load(TOOLS)
    rows = [[f"`{name}`", f"`{e['command']}`" if e.get("command") else "", _measured(e), e.get("data", "")]
            for name, e in dig(d, "tools").items()]
    return join(table(["tool", "command", "measured", "data"], rows), ctx.source(TOOLS))


BAG2NUSC = RESULTS + "bag2nusc_roundtrip.json"


@generator("bag2nusc_roundtrip", reads=[BAG2NUSC])
def bag2nusc_roundtrip(ctx: Context) -> str:
    d = ctx.load(BAG2NUSC)
    rows = []
    for name, r in dig(d, "sources").items():
        pose = f"{r['ego_pose_max_diff']:.1e}"
        if r["shared_stamp_ego_pose_spread"] > 0:  # DDAD: a TF tree holds one of the cameras' poses per stamp
            pose += (f" (the bag's TF pose: {r['ego_pose_max_diff_to_bag_tf']:.1e}; the source's cameras of one stamp"
                     f" disagree by {r['shared_stamp_ego_pose_spread'] * 1000:.1f} mm)")
        rows.append([name, f"{r['records_back']} / {r['records']}", f"{r['extrinsic_max_diff']:.1e}",
                     f"{r['intrinsics_max_diff']:.1e}", pose, f"{r['images_same_bytes']} / {r['images']}",
                     f"{r['sweeps_same_points']} / {r['sweeps']} ({r['lidar_points']:,} points)",
                     f"{r['nusc2bag_s']:.1f} / {r['bag2nusc_s']:.1f} s"])
    header = ["source", "records back", "extrinsic max diff", "K max diff", "ego pose max diff (m, rotation)",
              "JPEG bytes unchanged", "LiDAR sweeps unchanged", "nusc2bag / bag2nusc"]
    return join(table(header, rows), ctx.source(BAG2NUSC))


@generator("demo_run", reads=[DEMO])
def demo_run(ctx: Context) -> str:
    d = ctx.load(DEMO)
    processed = d.get("processed", d.get("frames"))
    if not isinstance(processed, dict):
        raise ReportError(f"{DEMO} has no processed frames per source")
    expected = d.get("expected", {})
    rows = [[f"frames processed: {source}", f"{n:,}" + (f" of {expected[source]:,}" if source in expected else "")]
            for source, n in processed.items()]
    model = d.get("model_ms", {})
    per_frame = model.get("per_frame") or []
    if model.get("median") is not None:
        rows.append(["model time per 6-camera frame: median / max",
                     f"{model['median']:,.0f} / {model['max']:,.0f} ms over {len(per_frame)} frames"])
    for source, answer in (d.get("query_scene") or {}).items():
        if answer:
            scores = ", ".join(f"{q} {v:.2f}" for q, v in zip(answer["queries"], answer["max_scores"], strict=False))
            rows.append([f"`~/query_scene` {', '.join(answer['queries'])} ({source})",
                         f"{'success' if answer['success'] else 'failed'}: {answer['message']}"
                         + (f"; max scores {scores}" if scores else "")])
    if "pictures" in d:
        rows.append(["pictures drawn", f"{d['pictures']:,}"])
    rows.append(["total wall time", f"{d['total_s']:,.0f} s"])
    return join(table(["`make demo`", "value"], rows), ctx.source(DEMO))


# ---------------------------------------------------------------------------------------------------------
# Node parameters (docs/node.md): from the parameter schema
# ---------------------------------------------------------------------------------------------------------

def _parameters(node: str) -> Callable[[Context], str]:
    def generate(ctx: Context) -> str:
        sys.path.insert(0, str(ctx.root))
        try:
            from distillnerf_ros.nodes import parameter_schema  # lazy: pure Python, no rclpy
        except ImportError as exc:
            raise ReportError(f"distillnerf_ros.nodes.parameter_schema is not importable: {exc}") from exc
        finally:
            sys.path.remove(str(ctx.root))
        return parameter_schema.markdown_table(node).rstrip("\n") + "\n"
    generate.__name__ = f"parameters_{node}"
    return generate


for _node in ("perception_node", "rig_monitor", "dataroot_publisher"):
    generator(f"parameters:{_node}", kind="reference")(_parameters(_node))


# ---------------------------------------------------------------------------------------------------------
# The segmenter teacher (docs/training.md)
# ---------------------------------------------------------------------------------------------------------

SEGMENTER_CHECK = RESULTS + "segmenter_check.json"


@generator("teachers:segmenter_check", reads=[SEGMENTER_CHECK])
def segmenter_check(ctx: Context) -> str:
    d = ctx.load(SEGMENTER_CHECK)
    rows = [[cam, "equal" if c["labels_sha256_matches"] else "DIFFERS",
             "equal" if c["class_fraction_top5_matches"] else "DIFFERS",
             slash(num(c["sky_fraction_top_third"], 3), num(c["sky_fraction_bottom_third"], 3))]
            for cam, c in d["cameras"].items()]
    front, s = d["cameras"]["CAM_FRONT"], d["summary"]
    text = (f"{s['cameras_sha256_equal']} of {s['cameras']} label maps bit-identical to the reference; CAM_FRONT "
            f"agrees with the shipped reference PNG on {pct(front['agreement_with_reference_png'], 4)} of its "
            f"pixels; step-1 (Pillow) sha256 {'equal' if s['step1_sha256_matches'] else 'DIFFERS'}; weights sha256 "
            f"{'equal' if s['weights_sha256_matches'] else 'DIFFERS'}.")
    timing = table(["one forward (CPU)", "threads", "fastest", "median"],
                   [[f"{t['hw'][1]}x{t['hw'][0]}", t["threads"], f"{num(t['fastest_s'], 2)} s",
                     f"{num(t['median_s'], 2)} s"] for t in d["forward"]])
    return join(table(["nuScenes camera (1024x512)", "label map sha256 vs reference", "top-5 class fractions",
                       "sky share, top / bottom third of rows"], rows), text, timing, ctx.source(SEGMENTER_CHECK))


@generator("teachers:segmenter_vocabulary", kind="reference")
def segmenter_vocabulary(ctx: Context) -> str:
    sys.path.insert(0, str(ctx.root))
    try:
        from distillnerf_core.teachers import segmenter  # the vocabulary as the code has it
    except ImportError as exc:
        raise ReportError(f"distillnerf_core.teachers.segmenter is not importable: {exc}") from exc
    finally:
        sys.path.remove(str(ctx.root))
    classes = ", ".join(f"{i} {name}" for i, name in enumerate(segmenter.CLASS_NAMES))
    rows = [[f"`{alias}`", " + ".join(names)] for alias, names in segmenter.ALIASES.items()]
    return join(f"Classes (output channel = id): {classes}.", table(["alias", "classes (probabilities summed)"], rows))


# ---------------------------------------------------------------------------------------------------------
# Neighbour-frame targets (docs/results/neighbour_targets.md): novel views vs copying the previous frame
# ---------------------------------------------------------------------------------------------------------

NEIGHBOURS = RESULTS + "neighbour_targets.json"
NEIGHBOUR_ARMS = [("bundled", "bundled model, no fine-tune"), ("current", "fine-tuned, current-frame targets"),
                  ("neighbour", "fine-tuned, + neighbour targets")]
# (results section, row label, the pairs averaged: None = every pair the section scored)
NEIGHBOUR_SETS = [("synthetic", "synthetic held-out towns (seed 999), t -> t + 0.5 s", None),
                  ("ddad_01", "DDAD, fit on frames 0 + 1, 1 -> 2 (unseen)", None),
                  ("ddad_02", "DDAD, fit on frames 0 + 2, 0 -> 1 (unseen)", [(0, 1)]),
                  ("ddad_02", "DDAD, fit on frames 0 + 2, mean of 0 -> 1 and 1 -> 2 (real_data.py's pairs)", None)]
NEIGHBOUR_KEYS = ("psnr", "ssim", "abs_rel", "previous_frame_psnr", "previous_frame_ssim")


def _nb_mean(arm: dict, pairs: list[tuple[int, int]] | None) -> dict[str, float]:
    rows = [r for r in dig(arm, "pairs") if pairs is None or (r["from"], r["to"]) in pairs]
    if not rows:
        raise ReportError(f"{NEIGHBOURS}: no scored pair among {pairs}")
    return {k: sum(r[k] for r in rows) / len(rows) for k in NEIGHBOUR_KEYS}


def _nb_aim(key: str, label: str, m: dict[str, float], fit_nvs: float) -> str:
    if key == "synthetic":
        met = m["psnr"] > m["previous_frame_psnr"]
        return (f"{label}: {num(m['psnr'])} dB with neighbour targets vs the copy-previous-frame baseline's "
                f"{num(m['previous_frame_psnr'])}: **{'met' if met else 'not met'}**")
    met = m["psnr"] > fit_nvs
    return (f"{label}: {num(m['psnr'])} dB with neighbour targets (copy baseline {num(m['previous_frame_psnr'])}) vs "
            f"the per-scene fit's {num(fit_nvs)}: closer to the baseline **{'met' if met else 'not met'}**")


@generator("training:neighbour_targets", reads=[NEIGHBOURS, REAL])
def neighbour_targets(ctx: Context) -> str:
    d = ctx.load(NEIGHBOURS)
    fit_nvs = dig(ctx.load(REAL), "per_scene_fit", "novel_view", "mean", "psnr")
    rows, aims, sourced = [], [], []
    for key, label, pairs in NEIGHBOUR_SETS:
        arms = d.get(key, {}).get("arms", {})
        for arm, arm_label in NEIGHBOUR_ARMS:
            if arm not in arms:
                continue
            m, ft = _nb_mean(arms[arm], pairs), dig(arms, arm, "fine_tune")
            cost = f"{ft['steps']} / {num(ft['cpu_minutes'], 1)}" if ft.get("steps") else "-"
            rows.append([label, arm_label, slash(num(m["psnr"]), num(m["ssim"], 3)), num(m["abs_rel"], 3),
                         slash(num(m["previous_frame_psnr"]), num(m["previous_frame_ssim"], 3)), cost])
            if (key, arm) not in sourced:
                sourced.append((key, arm))
        if "neighbour" in arms:
            aims.append(_nb_aim(key, label, _nb_mean(arms["neighbour"], pairs), fit_nvs))
    if not rows:
        raise ReportError(f"{NEIGHBOURS}: no arm scored")
    header = ["novel view", "model", "PSNR / SSIM", "LiDAR AbsRel", "copy previous frame PSNR / SSIM",
              "fine-tune steps / CPU min"]
    text = ("Aims (issue 25): " + "; ".join(aims or ["no neighbour arm yet"]) + ". The per-scene fit is "
            f"{ctx.link(REAL)}'s (DDAD frames 0 + 2, 10 CPU minutes, the stage-1 model, no neighbour targets; its "
            "novel view averages 0 -> 1 and 1 -> 2). Fine-tune cost: steps / process CPU minutes; the fine-tuned "
            "arms of a set ran the same steps, a neighbour step renders one more set of cameras.")
    groups: list[tuple[dict, list[str]]] = []  # arms one invocation wrote share its source line
    for key, arm in sourced:
        prov = dig(d, key, "arms", arm, "provenance")
        if groups and groups[-1][0] == prov:
            groups[-1][1].append(arm)
        else:
            groups.append((prov, [f"{key}: {arm}"]))
    sources = "\n\n".join(ctx.source_of(NEIGHBOURS, prov, ", ".join(names)) for prov, names in groups)
    return join(table(header, rows), text, sources, ctx.source(REAL, "the per-scene fit's novel view"))


# ---------------------------------------------------------------------------------------------------------
# The own-car fine-tune (docs/results/own_car.md): an unseen drive recorded as a bag, fit 75%, score the rest
# ---------------------------------------------------------------------------------------------------------

OWN_CAR = RESULTS + "own_car_finetune.json"
OWN_CAR_ROWS = [("bundled", "bundled model"), ("fit", "fine-tuned on the drive's first 75%"),
                ("fit_neighbour", "the same, + neighbour targets (both)"),
                ("control", "the same budget on another town (control)")]


@generator("training:own_car", reads=[OWN_CAR])
def own_car(ctx: Context) -> str:
    d = ctx.load(OWN_CAR)
    rows_in, drive, other = dig(d, "rows"), dig(d, "drive"), dig(d, "control_drive")
    rows, sourced = [], []
    for key, label in OWN_CAR_ROWS:
        if key not in rows_in:
            continue
        r = rows_in[key]
        later, held = dig(r, "scores", "later"), dig(r, "scores", "heldout_999")
        ft = r["fine_tune"]
        cost = f"{ft['steps']} / {num(ft['cpu_minutes'], 1)}" if ft.get("steps") else "-"
        rows.append([label, slash(num(later["psnr"]), num(later["ssim"], 3)), slash(num(later["abs_rel"], 3),
                     num(later["delta1"], 3)), slash(num(held["psnr"]), num(held["abs_rel"], 3)), cost])
        sourced.append((key, r["provenance"]))
    if not rows:
        raise ReportError(f"{OWN_CAR}: no row scored")
    a = dig(d, "aims")
    flag = lambda v: "not measured" if v is None else ("**met**" if v else "**not met**")  # noqa: E731
    gain = f" ({num(a['psnr_gain_db'])} dB)" if "psnr_gain_db" in a else ""
    ratio = f" (ratio {num(a['abs_rel_ratio'], 3)})" if "abs_rel_ratio" in a else ""
    text = (f"The drive: seed {drive['seed']}, {drive['frames']} keyframes at 2 Hz, a random rig of "
            f"{len(drive['cameras'])} cameras ({', '.join(drive['cameras'])}), {drive['size'][0]}x{drive['size'][1]}"
            f", fitted on {drive['keyframes']['fit']} keyframes (before {num(drive['split_s'])} s) and scored on the "
            f"later {drive['keyframes']['later']}; the control's drive: seed {other['seed']}, "
            f"{len(other['cameras'])} cameras, its first {other['keyframes']['fit']} keyframes. Aims (issue 25) on "
            f"the later 25%: >= 3 dB recon PSNR over the bundled model {flag(a['psnr_gain_ge_3db'])}{gain}; LiDAR "
            f"AbsRel halved {flag(a['abs_rel_halved'])}{ratio}; beats the control (PSNR and AbsRel) "
            f"{flag(a['beats_control'])} (the aims score the fit without neighbour targets). Fine-tune cost: steps / "
            "process CPU minutes (the same steps; the control's 8-camera rig costs more per step).")
    header = ["model", "later 25%: recon PSNR / SSIM", "later 25%: LiDAR AbsRel / delta1",
              "held-out seed 999: PSNR / LiDAR AbsRel (forgetting)", "fine-tune steps / CPU min"]
    sources = "\n\n".join(ctx.source_of(OWN_CAR, prov, f"row {key}") for key, prov in sourced)
    return join(table(header, rows), text, sources)


# ---------------------------------------------------------------------------------------------------------
# Headline numbers (README.md): each links to its page
# ---------------------------------------------------------------------------------------------------------

def bundled_transfer(ctx: Context) -> dict[str, Any]:
    """world_transfer.json's scores of the column installed as models/default (its sha256 must be the sidecar's)."""
    d = ctx.load(WORLD_TRANSFER)
    shipped = json.loads((ctx.root / "models" / "default" / "model.json").read_text())["weights_sha256"]
    if dig(d, "bundled", "weights_sha256") != shipped:
        raise ReportError(f"{WORLD_TRANSFER}: its bundled column's sha256 is not models/default's (rerun "
                          "benchmarks/world_transfer.py for the installed model and set 'bundled')")
    return dig(d, "models", dig(d, "bundled", "label"), "scores")


@generator("headline", kind="summary", reads=[BUNDLED_EVALS[0], WORLD_TRANSFER, RESULTS + "bench_cpu_small.json", GPU,
                                                NODE_AB, SOAK, SEM_GPU6, QUERY_CALIBRATION, REAL_SEMANTICS])
def headline(ctx: Context) -> str:
    bundled = ctx.load(BUNDLED_EVALS[0])
    real = bundled_transfer(ctx)
    today = dig(ctx.load(WORLD_TRANSFER), "models", "today (bundled)", "scores")
    met_word = "met" if real["nuscenes"]["abs_rel"] <= 0.25 and real["ddad"]["abs_rel"] <= 0.35 else "not met"
    cpu = ctx.load(RESULTS + "bench_cpu_small.json")
    gpu = ctx.load(GPU)["bench"]
    ab = ctx.load(NODE_AB)
    soak = ctx.load(SOAK)
    sem = ctx.load(SEM_GPU6)["semantic_occupancy"]["visible"]
    calibration = ctx.load(QUERY_CALIBRATION)["calibration"]
    real_aims = ctx.load(REAL_SEMANTICS)["aims"]
    teacher_aim = real_aims["teacher source: car recall >= 2x the row prior's at equal precision"]
    fit_aim = real_aims["per-scene fit (log_probs): car recall >= 2x the row prior's at equal precision"]
    calm = [r for r in ab["quieter_pairs"]["runs"] if r["tree"] == "after"]
    best = min(calm, key=lambda r: r["ros_overhead_ms"]["median"])
    busy = [r["ros_overhead_ms"]["median"] for r in ab["runs"] if r["tree"] == "after"]
    step = gpu.get("paper_train_fp32_compiled") or gpu["paper_train_fp32"]
    start, peak, end = rss_summary(soak["rss_series"])
    lost = sum(soak["frames"]["lost"].values())
    items = [
        ("bundled model, held-out synthetic keyframes (seed 999, the new world)",
         f"recon PSNR {bundled['psnr']:.2f}, LiDAR AbsRel {bundled['abs_rel']:.3f}", "docs/training.md"),
        ("bundled model on real frames it never trained on: nuScenes keyframe / 3 DDAD frames (aims 0.25 / 0.35)",
         f"LiDAR AbsRel {real['nuscenes']['abs_rel']:.3f} / {real['ddad']['abs_rel']:.3f} ({met_word}; the box-world "
         f"model: {today['nuscenes']['abs_rel']:.3f} / {today['ddad']['abs_rel']:.3f}), recon PSNR "
         f"{real['nuscenes']['psnr']:.1f} / {real['ddad']['psnr']:.1f} (was {today['nuscenes']['psnr']:.1f} / "
         f"{today['ddad']['psnr']:.1f})", "docs/results/world_transfer.md"),
        (f"`small` forward on the CPU ({cpu['torch_threads']} threads; {cpu['cameras']} cameras, "
         f"{cpu['image_hw'][1]}x{cpu['image_hw'][0]})", ms(cpu["latency_ms_median"]), "docs/results/cpu.md"),
        (f"`paper` training step on one {ctx.load(GPU)['env']['gpu']}"
         f"{' (torch.compile)' if 'compiled' in step and step['compiled'] else ''}",
         ms(step["latency_ms_median"]), "docs/results/gpu.md"),
        (f"perception_node ROS overhead per 6-camera frame ({best['cpu_count']} CPU cores)",
         f"{best['ros_overhead_ms']['median']:.1f} ms at load {best['load_avg_1min_at_start']:.0f}, "
         f"{_range(busy)} ms on a busy machine", "docs/results/node.md"),
        (f"{soak['minutes']:.0f}-minute soak (looped bag, {soak['tf_hz']:.0f} Hz TF publisher, "
         f"{soak['lifecycle_cycles']} lifecycle cycles)",
         f"{soak['frames']['sent']:,} frames sent, {soak['frames']['processed']:,} processed, {lost:,} lost by "
         f"counted reason, {soak['frames']['unaccounted']} unaccounted; RSS {start:.0f} / {peak:.0f} / {end:.0f} MB "
         "(start / peak / end)", "docs/results/soak.md"),
        ("zero-shot semantic occupancy, oracle teacher, held-out box-world synthetic (the previous bundled model)",
         f"mIoU {sem['miou']:.3f} (best single class {sem['single_class_baseline']['miou']:.3f})",
         "docs/results/semantics.md"),
        ("bundled model's query scores, held-out synthetic (expected calibration error, 15 bins)",
         f"ECE {calibration['ece_before']:.3f} uncalibrated -> {calibration['ece_after']:.3f} calibrated",
         "docs/results/semantics.md"),
        ("real DDAD frame (held out): car pixel recall against the row prior's at equal precision (aim 2x)",
         f"live segmenter labels (`semantic_source: teacher`) {teacher_aim['ratio']:.2f}x "
         f"({'met' if teacher_aim['met'] else 'not met'}), per-scene segmenter distillation "
         f"{fit_aim['ratio']:.2f}x ({'met' if fit_aim['met'] else 'not met'})", "docs/results/semantics.md"),
    ]
    return join(table(["what", "result", "page"], [[w, r, ctx.link(p, Path(p).stem)] for w, r, p in items]))


# ---------------------------------------------------------------------------------------------------------
# Pages: finding, checking and rewriting blocks
# ---------------------------------------------------------------------------------------------------------

@dataclass
class Block:
    block_id: str
    start: int  # line index of the start marker
    end: int  # line index of the end marker
    body: str


def pages(root: Path) -> list[Path]:
    found = [root / "README.md"] if (root / "README.md").is_file() else []
    docs = root / "docs"
    if docs.is_dir():
        found += sorted(docs.rglob("*.md"))
    return found


def parse(text: str) -> tuple[list[Block], list[str]]:
    """Blocks of a page and the format errors (unclosed or stray markers)."""
    lines = text.split("\n")
    blocks, errors = [], []
    i = 0
    while i < len(lines):
        line = lines[i]
        start = START_RE.match(line)
        if start:
            block_id = start["id"]
            for j in range(i + 1, len(lines)):
                end = END_RE.match(lines[j])
                if end or START_RE.match(lines[j]):
                    if end and end["id"] == block_id:
                        body = "\n".join(lines[i + 1:j])
                        blocks.append(Block(block_id, i, j, body + "\n" if j > i + 1 else ""))
                        i = j
                    else:
                        errors.append(f"line {i + 1}: block {block_id} is not closed by {END.format(id=block_id)}")
                    break
            else:
                errors.append(f"line {i + 1}: block {block_id} is not closed by {END.format(id=block_id)}")
        elif ANY_MARKER_RE.search(line):
            errors.append(f"line {i + 1}: a generated-block marker not in the format {START.format(id='ID')!r}: "
                          f"{line.strip()!r}")
        i += 1
    return blocks, errors


def render(block_id: str, ctx: Context) -> str:
    gen = GENERATORS[block_id]
    ctx.read, ctx.allowed = [], gen.reads
    try:
        body = gen.func(ctx)
    except ReportError:
        raise
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ReportError(f"{type(exc).__name__}: {exc}") from exc
    if gen.kind == "results" and not body.rstrip().split("\n")[-1].startswith("*Source"):
        raise ReportError("a results block must end with its provenance line")
    return body if body.endswith("\n") else body + "\n"


def regenerate(text: str, page: Path, ctx: Context) -> tuple[str, list[str], list[str]]:
    """(new text, problems, block ids found) for one page."""
    blocks, problems = parse(text)
    lines = text.split("\n")
    ctx.page = page
    for block in reversed(blocks):
        if block.block_id not in GENERATORS:
            problems.append(f"block {block.block_id}: no generator has that id")
            continue
        try:
            body = render(block.block_id, ctx)
        except ReportError as exc:
            problems.append(f"block {block.block_id}: generator failed: {exc}")
            continue
        if body != block.body:
            lines[block.start + 1:block.end] = body.rstrip("\n").split("\n")
    return "\n".join(lines), problems, [b.block_id for b in blocks]


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def run(root: Path, results: Path, check: bool) -> list[str]:
    """Check (or rewrite) every page; returns the problems, each naming its page."""
    ctx = Context(root=root, results=results)
    problems: list[str] = []
    used: set[str] = set()
    for page in pages(root):
        rel = page.relative_to(root).as_posix()
        text = page.read_text()
        new, page_problems, ids = regenerate(text, page, ctx)
        used.update(ids)
        problems += [f"{rel}: {p}" for p in page_problems]
        if new != text:
            if check:
                blocks, _ = parse(text)
                fresh, _ = parse(new)
                for old, updated in zip(blocks, fresh, strict=False):
                    if old.body != updated.body:
                        problems.append(f"{rel}: block {old.block_id} differs from its generator "
                                        "(run python benchmarks/report.py)")
            else:
                write_atomic(page, new)
                print(f"wrote {rel}")
    for block_id in sorted(set(GENERATORS) - used):
        problems.append(f"(no page): generator {block_id} is used on no page")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 on any difference")
    parser.add_argument("--root", type=Path, default=REPO, help="repository whose pages are read")
    parser.add_argument("--results", type=Path, default=None, help="results folder (default ROOT/benchmarks/results)")
    parser.add_argument("--list", action="store_true", help="print the registered block ids and exit")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    results = (args.results or root / "benchmarks" / "results").resolve()
    if args.list:
        for block_id, gen in GENERATORS.items():
            print(f"{block_id}\t{gen.kind}\t{', '.join(gen.reads)}")
        return 0
    problems = run(root, results, args.check)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
