"""Calibrated query scores: a temperature fitted on held-out data, the expected calibration error (ECE) before
and after, and a measured check of whether a frame lies in the domain the calibration was fitted on.

Temperature scaling (Guo et al. 2017): the query probabilities are softmax(logits / T) where the logits are
what the querier scores (the feature-text cosines plus the background option for a cosine teacher; the PCA
reconstruction read as class logits for a segmenter-distilled model). T is fitted by minimising the negative
log-likelihood of held-out targets; argmax is unchanged by T, so labels stay the same and only the scores move.
The NLL is convex in 1 / T (log-sum-exp of a linear function minus a linear term), hence unimodal in log T,
and a golden-section search over log T finds its minimum without a learning rate.

With a background option (a cosine teacher) its cosine b is fitted together with T: softmax([cos, b] / T) is
linear in (1 / T, b / T), so the NLL is jointly convex there and L-BFGS from the temperature-only optimum
finds the global minimum. Temperature alone cannot fix the bundled model's scores: half of its occupied,
camera-visible voxels are free in the ground truth (geometry errors), yet their best cosine looks like a class;
a fitted b says "none of these" where the cosine is not high enough (measured in
benchmarks/query_calibration.py: eval ECE 0.53 -> 0.17 with T alone, lower with T and b). b changes which voxels
are labelled background (and so the labels); T alone never changes an argmax.

ECE (Naeini et al. 2015): confidences (the top probability) in 15 equal-width bins; ECE = sum over bins of
(share of samples in the bin) * |accuracy in the bin - mean confidence in the bin|.

Domain check: a calibration holds only where it was fitted. The check stores a per-frame statistic measured on
the in-domain frames and a threshold below it; at run time a frame whose statistic falls below the threshold is
reported out of domain (its scores are not calibrated there). The statistic of a cosine teacher is the median,
over a frame's occupied voxels, of the best cosine between the voxel's reconstructed teacher feature and the
vocabulary the calibration was fitted with ("do these features look like any class the model learnt?");
measured in benchmarks/query_calibration.py on held-out synthetic frames and on real nuScenes / DDAD frames.

A segmenter-distilled model (teacher kind "segmenter", closed vocabulary) is calibrated on its 20 class logits:
targets are the synthetic world's voxel classes as Cityscapes classes (SEGMENTER_CLASS_OF_SYNTHETIC: road and
lane markings -> road, pedestrian -> person, ...); free voxels the model calls occupied (and classes without a
Cityscapes counterpart) -> the segmenter's "background" class by default, which no class text names and so
lands in the reply's background option: a confident class on empty space is a wrong answer and the fitted T must
pay for it (free="exclude" leaves them out instead: scores calibrated where the geometry is right). Only T is
fitted (no background bias: the background is a class of the softmax, not a fixed cosine). Its domain statistic
is the median over a frame's occupied voxels of the top class probability at the fitted T
(median_max_class_probability): class logits have no text to compare with, and features the model never learnt
read as less peaked class distributions.

The calibration lives in the checkpoint's sidecar as `feature_head.teacher.calibration` (schema in
teachers/identity.py), beside the PCA it belongs to; `store_calibration` rewrites the sidecar (weights untouched).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ECE_BINS = 15
TEMPERATURE_RANGE = (1e-4, 1e2)
DOMAIN_MARGIN_STDS = 3.0  # threshold = lowest in-domain fit frame minus this many in-domain standard deviations


def _check_pairs(probabilities_or_logits: torch.Tensor, targets: torch.Tensor) -> None:
    if probabilities_or_logits.ndim != 2:
        raise ValueError(f"expected (N, C) scores, got shape {tuple(probabilities_or_logits.shape)}")
    if targets.ndim != 1 or targets.shape[0] != probabilities_or_logits.shape[0]:
        raise ValueError(f"targets {tuple(targets.shape)} do not match scores {tuple(probabilities_or_logits.shape)}")
    if targets.numel() == 0:
        raise ValueError("no samples to calibrate on (0 targets)")
    if int(targets.min()) < 0 or int(targets.max()) >= probabilities_or_logits.shape[1]:
        raise ValueError(f"targets must lie in [0, {probabilities_or_logits.shape[1]}), got "
                         f"[{int(targets.min())}, {int(targets.max())}]")


def reliability(probabilities: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> dict[str, Any]:
    """ECE of probabilities (N, C) against class targets (N,), with the per-bin table and the overall accuracy and
    mean confidence: {"ece", "accuracy", "confidence", "samples", "bins": [{lower, upper, count, confidence,
    accuracy}]} (empty bins have count 0 and no confidence / accuracy)."""
    _check_pairs(probabilities, targets)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    confidence, predicted = probabilities.float().max(dim=1)
    correct = (predicted == targets).float()
    index = (confidence * bins).long().clamp(0, bins - 1)  # equal-width bins over [0, 1]; 1.0 in the last
    n = float(targets.numel())
    table, ece = [], 0.0
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        row: dict[str, Any] = {"lower": b / bins, "upper": (b + 1) / bins, "count": count}
        if count:
            conf, acc = float(confidence[inside].mean()), float(correct[inside].mean())
            row.update(confidence=conf, accuracy=acc)
            ece += count / n * abs(acc - conf)
        table.append(row)
    return {"ece": ece, "accuracy": float(correct.mean()), "confidence": float(confidence.mean()),
            "samples": int(n), "bins": table}


def expected_calibration_error(probabilities: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> float:
    """ECE with `bins` equal-width confidence bins (see the module docstring)."""
    return reliability(probabilities, targets, bins)["ece"]


def negative_log_likelihood(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> float:
    """Mean NLL of targets under softmax(logits / temperature)."""
    return float(torch.nn.functional.cross_entropy(logits.double() / temperature, targets))


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, bounds: tuple[float, float] = TEMPERATURE_RANGE,
                    tolerance: float = 1e-4) -> float:
    """The T in `bounds` minimising the NLL of softmax(logits / T) on targets: golden-section search over log T
    (the NLL is unimodal there, see the module docstring) to a relative precision of `tolerance`."""
    _check_pairs(logits, targets)
    low, high = bounds
    if not 0 < low < high or not math.isfinite(high):
        raise ValueError(f"temperature bounds must be 0 < low < high < inf, got {bounds}")
    logits = logits.double()
    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    def nll(log_t: float) -> float:
        return negative_log_likelihood(logits, targets, math.exp(log_t))

    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(c), nll(d)
    while b - a > tolerance:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(d)
    return math.exp((a + b) / 2.0)


def with_background(logits: torch.Tensor, background: float | None) -> torch.Tensor:
    """Logits with their last column (the background option) set to `background`; as given for None."""
    if background is None:
        return logits
    out = logits.clone()
    out[:, -1] = background
    return out


def fit_temperature_and_background(logits: torch.Tensor, targets: torch.Tensor, iterations: int = 200
                                   ) -> tuple[float, float]:
    """(T, b) minimising the NLL of softmax([cosines, b] / T) on targets, where the last column of `logits` is
    the background option (its values are replaced by b). Convex in (1 / T, b / T); 1 / T is optimised as
    exp(u) so that T stays positive (a model whose cosines point away from the targets, e.g. an untrained one,
    would want a negative one: its T ends at the top of TEMPERATURE_RANGE, flat scores), by L-BFGS from the
    temperature-only optimum."""
    _check_pairs(logits, targets)
    if logits.shape[1] < 2:
        raise ValueError("a background fit needs at least one query column and the background column")
    start = fit_temperature(logits, targets)
    cos = logits[:, :-1].double()
    log_beta = torch.tensor(-math.log(start), dtype=torch.float64, requires_grad=True)
    gamma = torch.tensor(float(logits[0, -1]) / start, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_beta, gamma], max_iter=iterations, tolerance_grad=1e-10, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        z = torch.cat([cos * log_beta.exp(), gamma.expand(cos.shape[0], 1)], dim=1)
        loss = torch.nn.functional.cross_entropy(z, targets)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    b, g = float(log_beta.detach().exp()), float(gamma.detach())
    if not (b > 0 and math.isfinite(b) and math.isfinite(g)):
        raise ValueError(f"the background fit did not converge (1/T = {b}, b/T = {g})")
    temperature = min(max(1.0 / b, TEMPERATURE_RANGE[0]), TEMPERATURE_RANGE[1])
    return temperature, g * temperature


def calibration_report(logits: torch.Tensor, targets: torch.Tensor, temperature: float, bins: int = ECE_BINS,
                       background: float | None = None) -> dict[str, Any]:
    """ECE, NLL, accuracy and mean confidence of softmax(logits / temperature) against targets (with the last
    column set to `background` when given)."""
    logits = with_background(logits, background)
    probabilities = torch.softmax(logits.double() / temperature, dim=1)
    report = reliability(probabilities, targets, bins)
    report["nll"] = negative_log_likelihood(logits, targets, temperature)
    report["temperature"] = temperature
    if background is not None:
        report["background_cosine"] = background
    return report


# -- domain check -------------------------------------------------------------------------------------------
@dataclass
class DomainVerdict:
    """A frame's domain statistic against the stored check: `in_domain` False = the scores are not calibrated."""

    statistic: str
    value: float
    threshold: float
    domain: str
    in_domain: bool

    def message(self) -> str:
        """A sentence for replies and /diagnostics."""
        if self.in_domain:
            return (f"in the calibration domain ({self.domain}): {self.statistic} {self.value:.3f} >= "
                    f"{self.threshold:.3f}")
        return (f"OUT OF DOMAIN: {self.statistic} {self.value:.3f} < {self.threshold:.3f} (the calibration was fitted"
                f" on {self.domain}): the scores are not calibrated probabilities here, do not trust them")


def median_best_class_cosine(cosines: torch.Tensor) -> float:
    """Median over elements of the best cosine (V, C) -> float; NaN for no element."""
    if cosines.ndim != 2 or cosines.shape[1] == 0:
        raise ValueError(f"expected (V, C) cosines with C >= 1, got {tuple(cosines.shape)}")
    if cosines.shape[0] == 0:
        return float("nan")
    return float(cosines.float().max(dim=1).values.median())


def median_max_class_probability(logits: torch.Tensor, temperature: float) -> float:
    """Median over elements of the top class probability of softmax(logits (V, C) / temperature); NaN for no
    element. The domain statistic of a segmenter-distilled model: its class probabilities are what it answers,
    and features it never learnt read as flat (or at least less peaked) class distributions."""
    if logits.ndim != 2 or logits.shape[1] == 0:
        raise ValueError(f"expected (V, C) class logits with C >= 1, got {tuple(logits.shape)}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    if logits.shape[0] == 0:
        return float("nan")
    return float(torch.softmax(logits.double() / temperature, dim=1).max(dim=1).values.median())


def domain_threshold(values: Sequence[float], margin_stds: float = DOMAIN_MARGIN_STDS) -> dict[str, Any]:
    """The stored check from per-frame statistics of in-domain frames: threshold = their minimum minus
    `margin_stds` standard deviations (a frame as typical as the least typical fit frame passes with room)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if len(finite) < 2:
        raise ValueError(f"a domain check needs at least 2 in-domain frames with a value, got {len(finite)}")
    t = torch.tensor(finite, dtype=torch.float64)
    std = float(t.std())
    return {"threshold": float(t.min()) - margin_stds * std, "margin_stds": margin_stds,
            "in_domain": {"frames": len(finite), "min": float(t.min()), "median": float(t.median()),
                          "max": float(t.max()), "std": std}}


def verdict_from_check(calibration: dict[str, Any] | None, value: float) -> DomainVerdict | None:
    """The verdict of a frame's statistic against `calibration["domain_check"]`; None without a check or value."""
    check = (calibration or {}).get("domain_check")
    if not check or not math.isfinite(value):
        return None
    return DomainVerdict(check["statistic"], value, float(check["threshold"]), str(calibration.get("domain", "?")),
                         value >= float(check["threshold"]))


# -- held-out synthetic targets -----------------------------------------------------------------------------
# The synthetic world's voxel classes (gt/meta.json) as the segmenter's Cityscapes classes: what a
# segmenter-distilled model's class logits are scored against (lane markings are road, as in benchmarks/realism.py;
# sky has no voxel: voxel 0 is free).
SEGMENTER_CLASS_OF_SYNTHETIC: dict[str, str] = {
    "road": "road", "lane_marking": "road", "sidewalk": "sidewalk", "terrain": "terrain", "building": "building",
    "car": "car", "pedestrian": "person", "vegetation": "vegetation", "pole": "pole",
}
FREE_TARGETS = ("background", "exclude")


def _voxel_grid(dataset: Any, threshold: float) -> tuple[Any, torch.Tensor]:
    """The ground truth's occupancy grid (OccupancyConfig) and its voxel centres (N, 3)."""
    from distillnerf_core.model.occupancy import OccupancyConfig, grid_centers

    if dataset.gt_meta is None:
        raise ValueError(f"{dataset.dataroot} has no semantic voxel ground truth (gt/meta.json)")
    spec = dataset.gt_meta["voxels"]
    lo, hi = spec["pc_range"][:3], spec["pc_range"][3:]
    occ_cfg = OccupancyConfig((lo[0], hi[0]), (lo[1], hi[1]), (lo[2], hi[2]), float(spec["voxel_size"]), threshold)
    return occ_cfg, grid_centers(occ_cfg.x_range, occ_cfg.y_range, occ_cfg.z_range, occ_cfg.voxel_size).reshape(-1, 3)


def _visible_occupied_voxels(model: Any, dataset: Any, indices: Sequence[int], threshold: float, statistic_grid: Any,
                             progress: bool):
    """Per sample: (features (n, k) of the model's occupied, camera-visible voxels on the ground-truth grid, their
    ground-truth class ids (n,), features (m, k) of the occupied voxels on `statistic_grid` (the node's grid, for
    the domain statistic)). The semantic evaluation's protocol (training/semantic_eval.py)."""
    from distillnerf_core.data.datasets import collate_samples
    from distillnerf_core.model.occupancy import query_occupancy
    from distillnerf_core.training.semantic_eval import visible_voxels

    occ_cfg, centers = _voxel_grid(dataset, threshold)
    for count, idx in enumerate(indices, start=1):
        batch = collate_samples([dataset[idx]])
        scene = model.encode(batch["images"], batch["intrinsics"], batch["cam2ego"])
        occ = query_occupancy(model, scene, 0, occ_cfg)
        served = query_occupancy(model, scene, 0, statistic_grid).features.cpu()
        gt = batch["voxel_semantics"][0]
        if tuple(occ.density_grid.shape) != tuple(gt.shape):
            raise ValueError(f"occupancy grid {tuple(occ.density_grid.shape)} != ground truth {tuple(gt.shape)}")
        features, labels = occ.features.cpu()[:0], gt.new_zeros(0).long()
        if occ.features.shape[0]:
            ix = occ.occupied_index.cpu()
            visible = visible_voxels(centers, batch["intrinsics"][0], batch["cam2ego"][0],
                                     tuple(batch["images"].shape[-2:]), batch["dense_depth"][0],
                                     occ_cfg.voxel_size).view(gt.shape)
            seen = visible[ix[:, 0], ix[:, 1], ix[:, 2]]
            features, labels = occ.features.cpu()[seen], gt[ix[:, 0], ix[:, 1], ix[:, 2]].long()[seen]
        if progress:
            print(f"  calibration targets: {count} / {len(indices)} samples", file=sys.stderr, flush=True)
        yield features, labels, served


def segmenter_targets(names: Sequence[str], free_id: int, classes: Sequence[str] | None = None,
                      free: str = "background") -> torch.Tensor:
    """(len(names),) segmenter class id of each ground-truth voxel class id: the Cityscapes class of the synthetic
    classes in `classes` (default all of SEGMENTER_CLASS_OF_SYNTHETIC; lane markings go with road); free
    (`free_id`) and every other class -> the background class (free="background") or -1 (free="exclude": left
    out)."""
    from distillnerf_core.teachers.segmenter import BACKGROUND_CLASS, CLASS_NAMES

    if free not in FREE_TARGETS:
        raise ValueError(f"free must be one of {FREE_TARGETS}, got {free!r}")
    chosen = set(SEGMENTER_CLASS_OF_SYNTHETIC if classes is None else classes)
    unknown = sorted(chosen - set(SEGMENTER_CLASS_OF_SYNTHETIC))
    if unknown:
        raise ValueError(f"classes {unknown} have no Cityscapes class of the segmenter (known: "
                         f"{', '.join(SEGMENTER_CLASS_OF_SYNTHETIC)})")
    if "road" in chosen:
        chosen.add("lane_marking")
    lookup = torch.full((len(names),), BACKGROUND_CLASS if free == "background" else -1, dtype=torch.long)
    for j, name in enumerate(names):
        if name in chosen and j != free_id:
            lookup[j] = CLASS_NAMES.index(SEGMENTER_CLASS_OF_SYNTHETIC[name])
    return lookup


@torch.no_grad()
def synthetic_voxel_class_logits(model: Any, dataset: Any, querier: Any, indices: Sequence[int] | None = None,
                                 free: str = "background", classes: Sequence[str] | None = None,
                                 threshold: float = 0.1, progress: bool = False,
                                 statistic_grid: Any = None) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """A segmenter-distilled model's (class logits (N, 20), targets (N,), per-frame class logits of the occupied
    voxels on `statistic_grid`) on a dataroot with semantic voxel ground truth: the occupied, camera-visible
    voxels of the ground-truth grid (as synthetic_voxel_logits), target = the Cityscapes class of the voxel's
    synthetic class (SEGMENTER_CLASS_OF_SYNTHETIC). Free voxels (geometry errors: the model says occupied, the
    world is empty) and classes without a Cityscapes counterpart: with free="background" the segmenter's
    background class (what the reply's background option sums; a confident class on empty space is a wrong
    answer and the fitted temperature must say so), with free="exclude" left out (the scores are then calibrated
    only where the geometry is right). `classes` (default: every mapped one) selects the synthetic classes
    scored as themselves (lane markings go with road); the others are treated as unmapped. The per-frame
    logits are returned, not a statistic: the domain statistic
    (median_max_class_probability) is taken at the fitted temperature."""
    from distillnerf_core.model.occupancy import OccupancyConfig

    if dataset.gt_meta is None:
        raise ValueError(f"{dataset.dataroot} has no semantic voxel ground truth (gt/meta.json)")
    lookup = segmenter_targets(list(dataset.gt_meta["classes"]), int(dataset.gt_meta["voxels"].get("free", 0)),
                               classes, free)
    model.eval()
    indices = list(range(len(dataset))) if indices is None else list(indices)
    all_logits, all_targets, served_logits = [], [], []
    for features, labels, served in _visible_occupied_voxels(model, dataset, indices, threshold,
                                                             statistic_grid or OccupancyConfig(), progress):
        if served.shape[0]:
            served_logits.append(querier.class_logits(served).float())
        targets = lookup[labels]
        keep = targets >= 0
        all_logits.append(querier.class_logits(features[keep]).float())
        all_targets.append(targets[keep])
    if not all_targets or sum(t.numel() for t in all_targets) == 0:
        raise ValueError(f"the model has no occupied, camera-visible voxel with a target on any of the {len(indices)}"
                         f" samples of {dataset.dataroot}: nothing to calibrate on")
    return torch.cat(all_logits), torch.cat(all_targets), served_logits


@torch.no_grad()
def synthetic_voxel_logits(model: Any, dataset: Any, querier: Any, classes: Sequence[str],
                           indices: Sequence[int] | None = None, threshold: float = 0.1, progress: bool = False,
                           statistic_grid: Any = None) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """(logits (N, Q + 1), targets (N,), per-frame statistic) on a dataroot with semantic voxel ground truth:
    the model's occupied voxels on the ground-truth grid (the semantic evaluation's protocol, camera-visible
    voxels only) scored against the class texts with the background option last (what `~/query_scene` answers:
    querier.logits); target = the class's index, or Q (background) where the ground truth is free or a class
    not queried. The statistic is the domain check's (median best-class cosine) of each frame, on the occupied
    voxels of `statistic_grid` (default: OccupancyConfig(), the grid ScenePredictor and the node query)."""
    from distillnerf_core.model.occupancy import OccupancyConfig

    if dataset.gt_meta is None:
        raise ValueError(f"{dataset.dataroot} has no semantic voxel ground truth (gt/meta.json)")
    names = list(dataset.gt_meta["classes"])
    unknown = [c for c in classes if c not in names]
    if unknown:
        raise ValueError(f"classes {unknown} are not ground-truth voxel classes of {dataset.dataroot} ({names})")
    lookup = torch.full((len(names),), len(classes), dtype=torch.long)  # free (0) and unqueried -> background
    for j, c in enumerate(classes):
        lookup[names.index(c)] = j
    model.eval()
    texts = querier.check(list(classes))
    all_logits, all_targets, statistics = [], [], []
    indices = list(range(len(dataset))) if indices is None else list(indices)
    for features, labels, served in _visible_occupied_voxels(model, dataset, indices, threshold,
                                                             statistic_grid or OccupancyConfig(), progress):
        if served.shape[0]:
            statistics.append(median_best_class_cosine(querier.logits(served, texts)[:, :len(texts)]))
        if features.shape[0]:
            all_logits.append(querier.logits(features, texts))
            all_targets.append(lookup[labels])
    if not all_logits:
        raise ValueError(f"the model has no occupied voxel on any of the {len(indices)} samples of "
                         f"{dataset.dataroot}: nothing to calibrate on")
    return torch.cat(all_logits).float(), torch.cat(all_targets), statistics


def fit_calibration(fit_logits: torch.Tensor, fit_targets: torch.Tensor, eval_logits: torch.Tensor,
                    eval_targets: torch.Tensor, temperature_before: float, bins: int = ECE_BINS,
                    background: bool = False) -> tuple[float, float | None, dict[str, Any]]:
    """(fitted T, fitted background cosine or None, report): fitted on the fit split (with `background` the last
    column is the background option and its cosine is fitted too); ECE / NLL / accuracy on both splits before
    (at `temperature_before` and the logits as given) and after, plus the temperature-only fit for comparison.
    Works for any (N, C) logits, e.g. a segmenter-distilled model's class logits (background False) against
    the segmenter's labels on held-out real frames."""
    temperature_only = fit_temperature(fit_logits, fit_targets)
    temperature, cosine = (fit_temperature_and_background(fit_logits, fit_targets) if background
                           else (temperature_only, None))
    report: dict[str, Any] = {"bins": bins, "temperature_before": temperature_before, "temperature": temperature,
                              "background_cosine": cosine}
    for split, (logits, targets) in {"fit": (fit_logits, fit_targets), "eval": (eval_logits, eval_targets)}.items():
        report[split] = {"before": calibration_report(logits, targets, temperature_before, bins),
                         "after": calibration_report(logits, targets, temperature, bins, cosine),
                         "temperature_only": calibration_report(logits, targets, temperature_only, bins)}
    return temperature, cosine, report


def store_calibration(checkpoint: str | Path, calibration: dict[str, Any]) -> Path:
    """Write `calibration` into the checkpoint's sidecar (`feature_head.teacher.calibration`), validated as a
    load would validate it; the weights file and its checksum are untouched. Returns the sidecar's path."""
    from distillnerf_core.model.distillnerf import ModelConfig
    from distillnerf_core.training.checkpoints import CheckpointError, read_metadata, sidecar_path, write_metadata

    meta = read_metadata(checkpoint)
    teacher = meta["config"].get("feature_head", {}).get("teacher") or {}
    if not teacher:
        raise CheckpointError(f"{sidecar_path(checkpoint)}: the model names no teacher, so it has no query scores "
                              "to calibrate")
    teacher["calibration"] = calibration
    try:
        ModelConfig.from_dict(meta["config"])
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{sidecar_path(checkpoint)}: refusing to store an invalid calibration ({err})") from err
    return write_metadata(checkpoint, meta)
