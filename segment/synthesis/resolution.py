"""Partial-volume / low-resolution simulation (``ext/lab2im/layers.py``: ``MimicAcquisition``; paper Eq. 2):
blur with a Gaussian per axis (slice thickness), sample the slices (slice spacing), add noise at
low resolution, and resample back to the 1 mm grid with linear interpolation.

Low-resolution samples lie at exact multiples of the spacing along each axis (0, r, 2r, ... mm,
linear interpolation between 1 mm voxels), so a scan written from them carries the requested
spacing exactly in its header; the original takes the nearest voxel of floor(n / r) points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from morphometry.segment.synthesis.priors import ResolutionPriors


@dataclass(frozen=True, eq=False)
class AcquisitionParams:
    """Slice spacing and thickness (mm) and blur sigma (mm = 1 mm voxels) per array axis."""

    spacing: np.ndarray  # (3,)
    thickness: np.ndarray  # (3,)
    sigma: np.ndarray  # (3,)

    @classmethod
    def full_resolution(cls) -> "AcquisitionParams":
        return cls(np.ones(3), np.ones(3), np.zeros(3))

    @property
    def slice_axis(self) -> int:
        return int(np.argmax(self.spacing))


def blur_sigma(thickness: np.ndarray, priors: ResolutionPriors, rng: np.random.Generator) -> np.ndarray:
    """sigma = sigma_per_thickness * t (sigma_at_1mm where t == 1) times U(1/range, range)."""
    sigma = np.where(thickness == 1.0, priors.sigma_at_1mm, priors.sigma_per_thickness * thickness)
    return sigma * rng.uniform(1 / priors.blur_range, priors.blur_range, 3)


def sample_acquisition(rng: np.random.Generator, priors: ResolutionPriors) -> AcquisitionParams:
    """Spacing (one random axis, or each axis with p_iso), thickness ~ U(1, spacing), sigma."""
    if rng.uniform() < priors.p_iso:
        spacing = priors.iso_spacing.sample(rng, 3)
    else:
        spacing = np.ones(3)
        spacing[rng.integers(3)] = priors.aniso_spacing.sample(rng)
    if rng.uniform() < priors.p_full_resolution:
        spacing = np.ones(3)
    thickness = np.where(spacing > 1, rng.uniform(1.0, np.maximum(spacing, 1.0)), 1.0)
    return AcquisitionParams(np.asarray(spacing, float), thickness, blur_sigma(thickness, priors, rng))


def blur(image: np.ndarray, sigma: np.ndarray, radius: int = 7) -> np.ndarray:
    """Separable Gaussian (float32), zero padding, kernel radius min(``radius``, ceil(4 sigma))
    voxels (beyond 4 sigma the weights are below 3.4e-4 of the centre's)."""
    out = image
    for axis, s in enumerate(sigma):
        if s > 0:
            r = min(radius, int(np.ceil(4 * s)))
            out = ndi.gaussian_filter1d(out, float(s), axis=axis, mode="constant", cval=0.0,
                                        truncate=(r + 0.25) / float(s))
    return out


def _sample_axis(image: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``image`` at fractional ``positions`` along ``axis`` (clamped)."""
    n = image.shape[axis]
    positions = np.clip(positions, 0, n - 1)
    lo = np.minimum(np.floor(positions).astype(np.intp), max(n - 2, 0))
    hi = np.minimum(lo + 1, n - 1)
    shape = [1] * image.ndim
    shape[axis] = len(positions)
    w = (positions - lo).astype(np.float32).reshape(shape)
    low = np.take(image, lo, axis=axis)
    return low + (np.take(image, hi, axis=axis) - low) * w


def lr_shape(shape: tuple[int, ...], spacing: np.ndarray) -> tuple[int, int, int]:
    """Number of slices 0, r, 2r, ... that fit in each axis of ``shape`` 1 mm voxels."""
    return tuple(int(np.floor((n - 1) / r + 1e-6)) + 1 for n, r in zip(shape[:3], spacing))  # type: ignore[return-value]


def subsample(image: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Slices at 0, r, 2r, ... mm along every axis whose spacing r exceeds 1 mm."""
    out = image
    for axis, r in enumerate(spacing):
        if r > 1:
            out = _sample_axis(out, np.arange(lr_shape(image.shape, spacing)[axis]) * r, axis)
    return out


def upsample(lr: np.ndarray, spacing: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Back to the 1 mm grid ``shape``: voxel i reads low-resolution position i / r (linear)."""
    out = lr
    for axis, r in enumerate(spacing):
        if r > 1:
            out = _sample_axis(out, np.arange(shape[axis]) / r, axis)
    return out


def add_noise(image: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise of standard deviation ``std`` (same units as the image)."""
    if std > 0:
        image = image + rng.standard_normal(image.shape, dtype=np.float32) * np.float32(std)
    return image
