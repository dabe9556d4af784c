"""The generative model of S1/S2 training pairs (paper Sec. 2.2; ``SynthSeg/labels_to_image_model.py``).

label map -> spatial deformation (affine + SVF diffeomorphism) -> crop -> flip -> GMM intensities
per generation class -> log-domain bias field -> clip, [0, 1] normalisation, gamma -> blur (slice
thickness) and subsampling (slice spacing) along random axes -> noise -> linear resampling back to
1 mm. Targets are the 5 tissue groups (S1) or the 33 SynthSeg 2.0 labels (S2, ``synthseg``); for S2
the tissue maps (binary, one channel per group) are deformed a second time and dilated/eroded to
mimic D's errors. Every sampled quantity is returned in a :class:`GeneratorRecord`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from morphometry.errors import InputError
from morphometry.segment.synthesis.generation_labels import GENERATION_LABELS, GenerationLabels
from morphometry.segment.synthesis.intensity import (
    BiasParams,
    GmmParams,
    apply_gamma,
    bias_field,
    normalise_minmax,
    render_gmm,
    sample_bias,
    sample_gmm,
)
from morphometry.segment.synthesis.labelmaps import check_generation_labels
from morphometry.segment.synthesis.priors import GeneratorPriors, TissueMapPriors
from morphometry.segment.synthesis.resolution import (
    AcquisitionParams,
    add_noise,
    blur,
    sample_acquisition,
    subsample,
    upsample,
)
from morphometry.segment.synthesis.spatial import DeformationParams, sample_deformation, source_coordinates, warp_labels

TARGETS = ("s1", "s2", "synthseg")
N_GROUPS = 5


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate: ``target`` s1 (tissue groups 0..4), s2 (33 labels + tissue maps) or
    synthseg (33 labels); ``output_shape`` a crop in voxels, or None for the whole (trimmed) map."""

    target: str = "s1"
    output_shape: tuple[int, int, int] | None = (160, 160, 160)
    priors: GeneratorPriors = field(default_factory=GeneratorPriors)

    def __post_init__(self):
        if self.target not in TARGETS:
            raise InputError(f"unknown generator target {self.target!r} (expected one of {', '.join(TARGETS)})")


@dataclass(frozen=True, eq=False)
class TissueMapRecord:
    """Corruption of S2's tissue maps: the second deformation (None when skipped) and, per group
    channel, "dilate", "erode" or "keep"."""

    deformation: DeformationParams | None
    operations: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class GeneratorRecord:
    """Every parameter sampled for one training example."""

    map_index: int
    crop_offset: tuple[int, int, int]
    flipped: bool
    deformation: DeformationParams
    gmm: GmmParams
    bias: BiasParams
    gamma: float
    acquisition: AcquisitionParams
    noise_std: float  # [0, 255] scale
    tissue_maps: TissueMapRecord | None


@dataclass(frozen=True, eq=False)
class TrainingSample:
    """image (float32, 1 mm, [0, 1] before noise), target (int16: groups or FreeSurfer labels),
    tissue_maps ((5, ...) float32 binary, S2 only) and the record."""

    image: np.ndarray
    target: np.ndarray
    tissue_maps: np.ndarray | None
    record: GeneratorRecord


def dilate_cross(mask: np.ndarray) -> np.ndarray:
    """Binary dilation by the 6-neighbour cross (radius 1); outside the array counts as unset, so
    ``~dilate_cross(~mask)`` is the erosion with the outside counted as set."""
    out = mask.copy()
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        out[tuple(lo)] |= mask[tuple(hi)]
        out[tuple(hi)] |= mask[tuple(lo)]
    return out


def corrupt_tissue_maps(groups: np.ndarray, priors: TissueMapPriors, rng: np.random.Generator) -> tuple[np.ndarray, TissueMapRecord]:
    """One binary channel per tissue group, after a mild second deformation and a random radius-1
    dilation/erosion of each channel (maps may overlap or leave holes, as in the original)."""
    deformation = None
    if rng.uniform() < priors.p_deform:
        deformation = sample_deformation(rng, priors.spatial, groups.shape)
        groups = warp_labels(groups, source_coordinates(deformation, groups.shape))
    maps = np.empty((N_GROUPS, *groups.shape), dtype=np.float32)
    ops = []
    for g in range(N_GROUPS):
        mask = groups == g
        u = rng.uniform()
        if u < priors.p_dilate:
            mask, op = dilate_cross(mask), "dilate"
        elif u < priors.p_dilate + priors.p_erode:
            mask, op = ~dilate_cross(~mask), "erode"
        else:
            op = "keep"
        maps[g] = mask
        ops.append(op)
    return maps, TissueMapRecord(deformation, tuple(ops))


class SyntheticGenerator:
    """Draws training examples from a list of RAS-aligned generation-label maps (int arrays)."""

    def __init__(self, label_maps: list[np.ndarray], config: GeneratorConfig = GeneratorConfig(),
                 table: GenerationLabels = GENERATION_LABELS):
        if not label_maps:
            raise InputError("the generator needs at least one label map")
        self.maps = [np.asarray(m, dtype=np.int16) for m in label_maps]
        for i, m in enumerate(self.maps):
            if m.ndim != 3:
                raise InputError(f"label map {i}: 3-D array required (shape {m.shape})")
            check_generation_labels(m, f"label map {i}", table)
        self.config = config
        self.table = table

    def _crop(self, shape: tuple[int, ...], rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...]]:
        if self.config.output_shape is None:
            return tuple(shape), (0, 0, 0)
        out = tuple(min(o, n) for o, n in zip(self.config.output_shape, shape))
        offset = tuple(int(np.floor(rng.uniform(0, n - o))) if n > o else 0 for o, n in zip(out, shape))
        return out, offset

    def sample(self, rng: np.random.Generator) -> TrainingSample:
        """One training example; every random draw comes from ``rng``."""
        p = self.config.priors
        index = int(rng.integers(len(self.maps)))
        source = self.maps[index]
        deformation = sample_deformation(rng, p.spatial, source.shape)
        out_shape, offset = self._crop(source.shape, rng)
        labels = warp_labels(source, source_coordinates(deformation, source.shape, out_shape, offset))
        flipped = bool(rng.uniform() < p.p_flip)
        if flipped:
            labels = np.ascontiguousarray(self.table.flip_lut[labels][::-1]).astype(np.int16)

        gmm = sample_gmm(rng, p.gmm, self.table.n_classes)
        image = render_gmm(labels, gmm, self.table.class_lut, rng)
        bias = sample_bias(rng, p.bias, out_shape)
        field_ = bias_field(bias, out_shape)
        if field_ is not None:
            image *= field_
        normalise_minmax(image, p.clip_max)
        gamma = float(p.gamma.sample(rng))
        apply_gamma(image, gamma)

        acquisition = sample_acquisition(rng, p.resolution)
        noise_std = float(p.noise_std.sample(rng))
        image = degrade_resolution(image, acquisition, noise_std / 255.0, rng, p.resolution.kernel_radius)

        tissue_maps, tissue_record = None, None
        if self.config.target == "s1":
            target = self.table.group_lut[labels].astype(np.int16)
        else:
            target = self.table.target_lut[labels].astype(np.int16)
            if self.config.target == "s2":
                groups = self.table.group_lut[labels].astype(np.int16)
                tissue_maps, tissue_record = corrupt_tissue_maps(groups, p.tissue_maps, rng)
        record = GeneratorRecord(index, offset, flipped, deformation, gmm, bias, gamma, acquisition, noise_std,
                                 tissue_record)
        return TrainingSample(image, target, tissue_maps, record)


def degrade_resolution(image: np.ndarray, acquisition: AcquisitionParams, noise_std: float,
                       rng: np.random.Generator, radius: int = 7) -> np.ndarray:
    """Blur, subsample, add noise (``noise_std`` in image units) at low resolution, resample back."""
    blurred = blur(image, acquisition.sigma, radius)
    low = add_noise(subsample(blurred, acquisition.spacing), noise_std, rng)
    return upsample(low, acquisition.spacing, image.shape).astype(np.float32, copy=False)
