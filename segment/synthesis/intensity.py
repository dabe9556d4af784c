"""Intensities of the generative model: Gaussian mixture conditioned on the labels, log-domain
bias field, clipping, min-max normalisation to [0, 1] and voxel-wise gamma
(``ext/lab2im/layers.py``: ``SampleConditionalGMM``, ``BiasFieldCorruption``). Intensities are on
the [0, 255] scale until normalised."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from morphometry.segment.synthesis.priors import BiasPriors, GmmPriors
from morphometry.segment.synthesis.spatial import resize_block


@dataclass(frozen=True, eq=False)
class GmmParams:
    """Mean and standard deviation of each generation class, [0, 255] scale."""

    means: np.ndarray  # (n_classes,)
    stds: np.ndarray  # (n_classes,)
    background: str  # "sampled" | "dark" | "zero": the class-0 override applied


def sample_gmm(rng: np.random.Generator, priors: GmmPriors, n_classes: int) -> GmmParams:
    """Per-class means and stds from the priors, then the background override on class 0."""
    means = np.asarray(priors.means.sample(rng, n_classes), dtype=np.float64)
    stds = np.asarray(priors.stds.sample(rng, n_classes), dtype=np.float64)
    u = rng.uniform()
    if u > 1 - priors.p_background_zero:
        means[0], stds[0], mode = 0.0, 0.0, "zero"
    elif u > 1 - priors.p_background_zero - priors.p_background_dark:
        means[0], stds[0], mode = float(priors.dark_means.sample(rng)), float(priors.dark_stds.sample(rng)), "dark"
    else:
        mode = "sampled"
    return GmmParams(np.maximum(means, 0), np.maximum(stds, 0), mode)


def render_gmm(labels: np.ndarray, params: GmmParams, class_lut: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Image (float32) with voxel ~ N(mean[c], std[c]^2), c = ``class_lut[label]``, independent
    per voxel (the per-class values are expanded to per-label tables, one lookup per voxel)."""
    classes = np.maximum(class_lut, 0)
    means = params.means.astype(np.float32)[classes]
    stds = params.stds.astype(np.float32)[classes]
    image = np.take(means, labels)
    if np.any(params.stds > 0):
        noise = rng.standard_normal(labels.shape, dtype=np.float32)
        noise *= np.take(stds, labels)
        image += noise
    return image


@dataclass(frozen=True, eq=False)
class BiasParams:
    """Log-domain bias coefficients on a small grid (None = no bias field)."""

    std: float
    coefficients: np.ndarray | None  # (b0, b1, b2)


def sample_bias(rng: np.random.Generator, priors: BiasPriors, shape: tuple[int, ...]) -> BiasParams:
    """With ``priors.probability``: std ~ prior, ceil(scale * n) coefficients ~ N(0, std^2)."""
    if rng.uniform() >= priors.probability:
        return BiasParams(0.0, None)
    std = float(priors.std.sample(rng))
    small = tuple(max(2, math.ceil(priors.scale * n)) for n in shape[:3])
    return BiasParams(std, (rng.standard_normal(small) * std).astype(np.float32))


def bias_field(params: BiasParams, shape: tuple[int, ...], start: tuple[int, ...] = (0, 0, 0),
               size: tuple[int, ...] | None = None) -> np.ndarray | None:
    """Multiplicative field exp(resize(coefficients)) on the block ``start : start + size``."""
    if params.coefficients is None:
        return None
    size = tuple(shape[:3]) if size is None else tuple(size)
    return np.exp(resize_block(params.coefficients, shape, start, size))


def normalise_minmax(image: np.ndarray, clip_max: float | None) -> np.ndarray:
    """Clip to [0, clip_max] (when given) and map min..max to [0, 1] in place (float32)."""
    if clip_max is not None:
        np.clip(image, 0.0, clip_max, out=image)
    lo, hi = float(image.min()), float(image.max())
    image -= np.float32(lo)
    image *= np.float32(1.0 / (hi - lo + 1e-7))
    return image


def normalise_percentiles(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Map the ``low``..``high`` percentiles (over all voxels) to [0, 1] and clip (float32)."""
    lo, hi = np.percentile(image, [low, high])
    if hi <= lo:
        lo, hi = float(image.min()), float(image.max())
    out = (image - np.float32(lo)) * np.float32(1.0 / (hi - lo + 1e-7))
    return np.clip(out, 0.0, 1.0, out=out)


def apply_gamma(image: np.ndarray, gamma: float) -> np.ndarray:
    """x <- x ** gamma in place, for x in [0, 1]."""
    if gamma != 1.0:
        np.power(image, np.float32(gamma), out=image)
    return image
