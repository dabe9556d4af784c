"""Prior distributions of the generative model (S1/S2 training images) and of the degradation model
(D's training pairs), as frozen dataclasses.

Defaults of :class:`GeneratorPriors` are the values of the original training code (tutorial 7 /
function defaults of ``SynthSeg/brain_generator.py``), including its quirks: scaling U(0.8, 1.2), no
translation, velocity std up to 4 voxels, bias std up to 0.7, log-normal gamma, no added noise. Defaults of :class:`DegradationPriors` are the paper's
wider degradation column of Table S1 read literally (variances sampled uniformly where the table
prints a variance), plus the code's contrast inversion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Uniform:
    """U(low, high); ``low == high`` is a constant."""

    low: float
    high: float

    def sample(self, rng: np.random.Generator, size=None):
        return rng.uniform(self.low, self.high, size)

    def contains(self, x) -> bool:
        x = np.asarray(x)
        return bool(np.all((x >= self.low) & (x <= self.high)))


@dataclass(frozen=True)
class UniformVariance:
    """A standard deviation whose variance is U(0, max_variance)."""

    max_variance: float

    def sample(self, rng: np.random.Generator, size=None):
        return np.sqrt(rng.uniform(0.0, self.max_variance, size))

    def contains(self, x) -> bool:
        x = np.asarray(x)
        return bool(np.all((x >= 0) & (x**2 <= self.max_variance * (1 + 1e-12))))


@dataclass(frozen=True)
class LogNormal:
    """exp(N(0, log_std^2)): the original gamma prior (unbounded, median 1)."""

    log_std: float

    def sample(self, rng: np.random.Generator, size=None):
        return np.exp(rng.normal(0.0, self.log_std, size))

    def contains(self, x) -> bool:
        return bool(np.all(np.asarray(x) > 0))


Distribution = Uniform | UniformVariance | LogNormal


@dataclass(frozen=True)
class SpatialPriors:
    """Affine (per axis) and stationary-velocity-field deformation priors.

    rotation in degrees, translation in mm (1 mm voxels), shearing dimensionless (6 values),
    velocity std in voxels; ``nonlin_scale`` = control points per voxel (0.04 -> 11 per axis for
    256 voxels).
    """

    rotation_deg: Distribution = Uniform(-15.0, 15.0)
    scaling: Distribution = Uniform(0.8, 1.2)
    shearing: Distribution = Uniform(-0.012, 0.012)
    translation_mm: Distribution = Uniform(0.0, 0.0)
    nonlin_std: Distribution = Uniform(0.0, 4.0)
    nonlin_scale: float = 0.04
    integration_steps: int = 7


@dataclass(frozen=True)
class GmmPriors:
    """Per-class Gaussian intensities on the [0, 255] scale, and the background override."""

    means: Distribution = Uniform(0.0, 255.0)
    stds: Distribution = Uniform(0.0, 50.0)
    p_background_zero: float = 0.05  # mean = std = 0
    p_background_dark: float = 0.25  # mean ~ U(0, 15), std ~ U(0, 5)
    dark_means: Distribution = Uniform(0.0, 15.0)
    dark_stds: Distribution = Uniform(0.0, 5.0)


@dataclass(frozen=True)
class BiasPriors:
    """Log-domain bias field: coefficients ~ N(0, std^2) on ceil(scale * n) control points."""

    std: Distribution = Uniform(0.0, 0.7)
    scale: float = 0.025
    probability: float = 0.95


@dataclass(frozen=True)
class ResolutionPriors:
    """Acquisition sampler (slice spacing and thickness in mm) of the original (``SampleResolution``).

    With ``p_iso`` every axis gets its own spacing ~ ``iso_spacing`` (the original's non-isotropic
    "isotropic" branch); otherwise one random axis gets ``aniso_spacing``, the others 1 mm. With
    ``p_full_resolution`` everything is reset to 1 mm. Thickness ~ U(1, spacing) per axis; blur
    sigma = ``sigma_per_thickness`` * thickness (``sigma_at_1mm`` where thickness is 1) times
    U(1/blur_range, blur_range).
    """

    p_iso: float = 0.1
    iso_spacing: Uniform = Uniform(1.0, 4.0)
    aniso_spacing: Uniform = Uniform(1.0, 8.0)
    p_full_resolution: float = 0.05
    sigma_per_thickness: float = 0.75
    sigma_at_1mm: float = 0.5
    blur_range: float = 1.03
    kernel_radius: int = 7  # voxels: the original's fixed kernel length 15


@dataclass(frozen=True)
class TissueMapPriors:
    """S2's imperfect tissue maps (the original's ``SynthSeg/training_group.py``): a second mild
    deformation applied with ``p_deform``, then each group channel dilated/eroded by a radius-1
    cross with ``p_dilate`` / ``p_erode``."""

    spatial: SpatialPriors = SpatialPriors(
        rotation_deg=Uniform(-3.0, 3.0), scaling=Uniform(0.95, 1.05), shearing=Uniform(-0.007, 0.007),
        translation_mm=Uniform(-2.0, 2.0), nonlin_std=Uniform(0.0, 1.5))
    p_deform: float = 0.9
    p_dilate: float = 0.4495
    p_erode: float = 0.4495


@dataclass(frozen=True)
class GeneratorPriors:
    """Priors of the generative model (paper Sec. 2.2); defaults = original training code."""

    spatial: SpatialPriors = SpatialPriors()
    gmm: GmmPriors = GmmPriors()
    bias: BiasPriors = BiasPriors()
    gamma: Distribution = LogNormal(0.5)
    resolution: ResolutionPriors = ResolutionPriors()
    noise_std: Distribution = Uniform(0.0, 0.0)  # on the [0, 255] scale, added at low resolution
    clip_max: float = 300.0
    p_flip: float = 0.5
    tissue_maps: TissueMapPriors = TissueMapPriors()

    @classmethod
    def paper(cls) -> "GeneratorPriors":
        """The generative column of the paper's Table S1, read literally (variances uniform)."""
        return cls(
            spatial=SpatialPriors(scaling=Uniform(0.85, 1.15), translation_mm=Uniform(-20.0, 20.0),
                                  nonlin_std=UniformVariance(1.5)),
            gmm=GmmPriors(stds=UniformVariance(6.0)),
            bias=BiasPriors(std=UniformVariance(0.25)),
            gamma=Uniform(0.9, 1.1),
            resolution=ResolutionPriors(aniso_spacing=Uniform(1.0, 9.0)),
            noise_std=Uniform(0.0, 10.0),
        )


@dataclass(frozen=True)
class DegradationPriors:
    """Priors of the degradation model (paper Sec. 2.3, Table S1 degradation column)."""

    spatial: SpatialPriors = SpatialPriors(
        rotation_deg=Uniform(-25.0, 25.0), scaling=Uniform(0.5, 1.5), shearing=Uniform(-0.02, 0.02),
        translation_mm=Uniform(-50.0, 50.0), nonlin_std=UniformVariance(4.0))
    bias: BiasPriors = BiasPriors(std=UniformVariance(3.0))
    gamma: Distribution = Uniform(0.3, 3.0)
    resolution: ResolutionPriors = ResolutionPriors(aniso_spacing=Uniform(1.0, 12.0))
    noise_std: Distribution = Uniform(0.0, 50.0)  # on the [0, 255] scale, added at low resolution
    p_noise: float = 0.95
    p_invert: float = 0.5  # contrast inversion x -> 1 - x (original D-pair code)
    p_flip: float = 0.5
