"""Model-card numbers: Dice per structure of every method on held-out synthetic scans.

Each held-out label map (coarsened to the bundle's working grid as in training) is rendered as a
scan: Gaussian intensities per generation class with T1-like or T2-like means (the cohort
simulator's contrast templates, ``morphometry.segment.synthesis.protocols``) or random means (the generative
model's prior), a bias field, slices of ``spacing`` mm with full-width-at-half-maximum thickness
equal to the spacing along a random axis, Gaussian noise at the slice resolution, linear
resampling back to the working grid and 0.5-99.5 percentile normalisation. "Low SNR" scans pull
the class means towards their average (contrast x ``low_snr_contrast``) and add strong noise.
Scans cover the brain's bounding box plus a margin (16 mm by default), which keeps skull, skin and
background in view at a fraction of the cost of the whole head. Every method the bundle supports
runs through the runtime's stage graphs;
Dice is computed on the working grid between the network output (argmax, no postprocessing)
and the truth, for the 32 structures (background excluded); S1 alone is scored on the 4 tissue
groups.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from morphometry.labels import SYNTHSEG_2
from morphometry.segment.bundle import Bundle
from morphometry.segment.synthesis.generation_labels import GENERATION_LABELS
from morphometry.segment.synthesis.intensity import (
    GmmParams,
    bias_field,
    render_gmm,
    sample_bias,
    sample_gmm,
)
from morphometry.segment.synthesis.priors import BiasPriors, GmmPriors, Uniform
from morphometry.segment.synthesis.protocols import FWHM_PER_SIGMA, ProtocolPriors, sample_protocol
from morphometry.segment.synthesis.resolution import add_noise, blur, subsample, upsample
from morphometry.segment.training.data import CHANNEL_LUT, load_maps, split_label_maps

SIZE_MULTIPLE = 32


@dataclass(frozen=True)
class Condition:
    """One kind of synthetic scan: contrast t1 | t2 | random, slice spacing (mm), noise std
    ([0, 255] scale), contrast factor (1 = the template's contrast)."""

    contrast: str
    spacing_mm: float
    noise_std: float
    contrast_factor: float = 1.0

    @property
    def name(self) -> str:
        low = "-lowsnr" if self.contrast_factor < 1 else ""
        return f"{self.contrast}-{self.spacing_mm:g}mm{low}"


@dataclass(frozen=True)
class EvaluationConfig:
    """Which scans: the last ``held_out`` maps, every contrast at every spacing, plus low-SNR scans."""

    held_out: int = 3
    seed: int = 0
    margin_mm: float = 16.0  # scans cover the brain's bounding box plus this margin (not the whole head)
    contrasts: tuple[str, ...] = ("t1", "t2", "random")
    spacings_mm: tuple[float, ...] = (1.0, 3.0, 6.0, 9.0)
    noise_std: float = 3.0
    low_snr_spacings_mm: tuple[float, ...] = (3.0,)
    low_snr_noise_std: float = 20.0
    low_snr_contrast: float = 0.4

    def conditions(self) -> list[Condition]:
        out = [Condition(c, s, self.noise_std) for c in self.contrasts for s in self.spacings_mm]
        out += [Condition(c, s, self.low_snr_noise_std, self.low_snr_contrast)
                for c in self.contrasts for s in self.low_snr_spacings_mm]
        return out


def _gmm(condition: Condition, shape: tuple[int, ...], voxel_mm: float, rng: np.random.Generator) -> GmmParams:
    n = GENERATION_LABELS.n_classes
    if condition.contrast == "random":
        gmm = sample_gmm(rng, GmmPriors(stds=Uniform(2.0, 6.0)), n)
    else:
        gmm = sample_protocol(rng, ProtocolPriors(contrasts=(condition.contrast,)), shape, voxel_mm).gmm
    if condition.contrast_factor == 1:
        return gmm
    centre = gmm.means[1:].mean()
    means = centre + condition.contrast_factor * (gmm.means - centre)
    means[0] = gmm.means[0]
    return GmmParams(np.maximum(means, 0), gmm.stds, gmm.background)


def render_scan(labels: np.ndarray, voxel_mm: float, condition: Condition, rng: np.random.Generator) -> np.ndarray:
    """A synthetic scan of a generation-label map on its own grid, normalised to [0, 1]."""
    image = render_gmm(labels, _gmm(condition, labels.shape, voxel_mm, rng), GENERATION_LABELS.class_lut, rng)
    field_ = bias_field(sample_bias(rng, BiasPriors(std=Uniform(0.05, 0.3), probability=1.0), labels.shape),
                        labels.shape)
    if field_ is not None:
        image *= field_
    axis = int(rng.integers(3))
    spacing = np.full(3, voxel_mm)
    spacing[axis] = max(condition.spacing_mm, voxel_mm)
    thickness = np.full(3, voxel_mm)
    thickness[axis] = condition.spacing_mm
    step = spacing / voxel_mm
    low = add_noise(subsample(blur(image, thickness / FWHM_PER_SIGMA / voxel_mm), step), condition.noise_std, rng)
    scan = upsample(low, step, labels.shape)
    lo, hi = np.percentile(scan, (0.5, 99.5))
    return np.clip((scan - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def _pad(image: np.ndarray, min_size: int) -> tuple[np.ndarray, tuple[slice, ...]]:
    size = [max(-(-n // SIZE_MULTIPLE) * SIZE_MULTIPLE, min_size) for n in image.shape]
    out = np.zeros(size, np.float32)
    box = tuple(slice(0, n) for n in image.shape)
    out[box] = image
    return out, box


def dice_per_channel(pred: np.ndarray, truth: np.ndarray, n: int) -> np.ndarray:
    """Dice of channels 0..n-1 (NaN where a label is in neither volume)."""
    inter = np.bincount(truth[pred == truth].ravel(), minlength=n)[:n].astype(float)
    total = (np.bincount(pred.ravel(), minlength=n)[:n] + np.bincount(truth.ravel(), minlength=n)[:n]).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2 * inter / total, np.nan)


def evaluate_bundle(bundle: Bundle, label_maps: str | Path, config: EvaluationConfig = EvaluationConfig()) -> dict:
    """Dice of every supported method (and S1's tissue groups) per condition, averaged over maps."""
    import onnx
    import onnxruntime as ort

    from morphometry.segment import stages
    from morphometry.segment.methods import resolve_methods, supported_methods
    from morphometry.segment.runtime import Engine, RuntimeConfig

    _, paths = split_label_maps(label_maps, config.held_out)
    maps = load_maps(paths, bundle.resolution_mm, config.margin_mm)
    methods = resolve_methods(supported_methods(set(bundle.networks)))
    engine = Engine(bundle, methods, RuntimeConfig(device="cpu"))
    s1 = None
    if "s1" in bundle.networks:
        s1 = ort.InferenceSession(stages.tissue_stage(onnx.load(str(bundle.path("s1")))).SerializeToString(),
                                  providers=["CPUExecutionProvider"])
    n = len(SYNTHSEG_2.labels)
    scores: dict[str, dict[str, list]] = {m.name: {} for m in methods}
    tissue: dict[str, list] = {}
    start = time.perf_counter()
    for k, condition in enumerate(config.conditions()):
        for i, labels in enumerate(maps):
            rng = np.random.default_rng([config.seed, k, i])
            image, box = _pad(render_scan(labels, bundle.resolution_mm, condition, rng), bundle.min_size)
            truth = CHANNEL_LUT[GENERATION_LABELS.target_lut[labels]]
            for method, _, post in engine.segment(image):
                pred = post.argmax(0)[box]
                scores[method.name].setdefault(condition.name, []).append(dice_per_channel(pred, truth, n)[1:])
            if s1 is not None:
                (onehot,) = s1.run(None, {"image": image[None, None]})
                pred = onehot[0].argmax(0)[box]
                groups = SYNTHSEG_2.tissue_groups[truth]
                tissue.setdefault(condition.name, []).append(dice_per_channel(pred, groups, 5)[1:])
    n_scans = len(maps) * len(config.conditions())
    return {
        "config": asdict(config),
        "bundle": bundle.model_id,
        "resolution_mm": bundle.resolution_mm,
        "held_out_maps": [p.name for p in paths],
        "structures": list(SYNTHSEG_2.names[1:]),
        "tissue_groups": ["white_matter_deep_grey", "cortex", "ventricles", "cerebellum"],
        "conditions": [c.name for c in config.conditions()],
        "dice": {m: {c: _round(_nanmean(rows)) for c, rows in per.items()} for m, per in scores.items()},
        "mean_dice": {m: {c: round(float(_nanmean(_nanmean(rows))), 4) for c, rows in per.items()}
                      for m, per in scores.items()},
        "s1_tissue_dice": {c: _round(_nanmean(rows)) for c, rows in tissue.items()},
        "s1_mean_tissue_dice": {c: round(float(_nanmean(_nanmean(rows))), 4) for c, rows in tissue.items()},
        "stage_seconds_per_scan": {s: round(t / n_scans, 3) for s, t in engine.timings.items()},
        "scans": n_scans,
        "wall_s": round(time.perf_counter() - start, 1),
    }


def _nanmean(rows, axis: int = 0):
    """Mean over the scans ignoring NaN (a structure absent from a scan's truth and output); NaN
    where it is absent from all."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.asarray(rows, dtype=float), axis=axis)


def _round(values: np.ndarray) -> list:
    return [None if np.isnan(v) else round(float(v), 4) for v in values]


def summary_table(result: dict) -> str:
    """Markdown table: mean Dice per condition (rows) and method (columns), S1 tissue Dice last."""
    methods = list(result["mean_dice"])
    head = "| scans | " + " | ".join(methods) + " | S1 tissue |"
    lines = [head, "|" + " --- |" * (len(methods) + 2)]
    for c in result["conditions"]:
        cells = [f"{result['mean_dice'][m].get(c, float('nan')):.3f}" for m in methods]
        cells.append(f"{result['s1_mean_tissue_dice'].get(c, float('nan')):.3f}" if result["s1_mean_tissue_dice"] else "")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def structure_table(result: dict) -> str:
    """Markdown table: Dice per structure (rows) and method (columns), averaged over all conditions."""
    methods = list(result["dice"])
    lines = ["| structure | " + " | ".join(methods) + " |", "|" + " --- |" * (len(methods) + 1)]
    per_method = {m: _nanmean([[np.nan if v is None else v for v in row] for row in result["dice"][m].values()])
                  for m in methods}
    for i, name in enumerate(result["structures"]):
        lines.append(f"| {name} | " + " | ".join(f"{per_method[m][i]:.3f}" for m in methods) + " |")
    return "\n".join(lines)
