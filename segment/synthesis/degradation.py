"""The degradation model of D's training pairs (paper Sec. 2.3, Fig. 3): the corruptions of the
generative model except the GMM, with the wider priors of Table S1, applied to a given image (real
or synthetic) and its label map.

image, labels -> joint deformation (image trilinear, labels nearest) -> flip -> bias field ->
[0, 1] normalisation (0.5 and 99.5 percentiles, clipped: with the wide bias prior a plain min-max
would squash most of the image into a few grey levels) -> gamma -> contrast inversion -> blur and
subsampling -> noise at low resolution -> linear resampling back to the input grid. The degraded image is meant to be fed to a
trained S1 whose output, paired with the deformed labels, trains D.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from morphometry.errors import InputError
from morphometry.segment.synthesis.generator import degrade_resolution
from morphometry.segment.synthesis.intensity import (
    BiasParams,
    apply_gamma,
    bias_field,
    normalise_percentiles,
    sample_bias,
)
from morphometry.segment.synthesis.priors import DegradationPriors
from morphometry.segment.synthesis.resolution import AcquisitionParams, sample_acquisition
from morphometry.segment.synthesis.spatial import (
    DeformationParams,
    sample_deformation,
    source_coordinates,
    warp_image,
    warp_labels,
)


@dataclass(frozen=True, eq=False)
class DegradationRecord:
    """Every parameter sampled for one degraded pair."""

    deformation: DeformationParams
    flipped: bool
    bias: BiasParams
    gamma: float
    inverted: bool
    acquisition: AcquisitionParams
    noise_std: float  # [0, 255] scale, 0 when no noise was added


@dataclass(frozen=True, eq=False)
class DegradedPair:
    """Degraded image (float32, input grid), deformed labels (same dtype as given) and record."""

    image: np.ndarray
    labels: np.ndarray
    record: DegradationRecord


def degrade(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
            priors: DegradationPriors = DegradationPriors()) -> DegradedPair:
    """Corrupt a RAS-aligned 1 mm image and its label map (tissue groups: flips swap nothing)."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape != np.shape(labels):
        raise InputError(f"degradation needs a 3-D image and a label map of the same shape "
                         f"(got {image.shape} and {np.shape(labels)})")
    if not np.all(np.isfinite(image)):
        raise InputError("degradation needs a finite image (NaN or Inf voxels found)")
    shape = image.shape
    deformation = sample_deformation(rng, priors.spatial, shape)
    coords = source_coordinates(deformation, shape)
    warped = warp_image(image, coords)
    warped_labels = warp_labels(np.asarray(labels), coords)
    del coords
    flipped = bool(rng.uniform() < priors.p_flip)
    if flipped:
        warped, warped_labels = np.ascontiguousarray(warped[::-1]), np.ascontiguousarray(warped_labels[::-1])

    bias = sample_bias(rng, priors.bias, shape)
    field_ = bias_field(bias, shape)
    if field_ is not None:
        warped *= field_
    warped = normalise_percentiles(warped)
    gamma = float(priors.gamma.sample(rng))
    apply_gamma(warped, gamma)
    inverted = bool(rng.uniform() < priors.p_invert)
    if inverted:
        warped = np.float32(1.0) - warped

    acquisition = sample_acquisition(rng, priors.resolution)
    noise_std = float(priors.noise_std.sample(rng)) if rng.uniform() < priors.p_noise else 0.0
    degraded = degrade_resolution(warped, acquisition, noise_std / 255.0, rng, priors.resolution.kernel_radius)
    record = DegradationRecord(deformation, flipped, bias, gamma, inverted, acquisition, noise_std)
    return DegradedPair(degraded, warped_labels, record)
