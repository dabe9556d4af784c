"""On-the-fly training examples from the synthesis engine, at a coarse working resolution.

Label maps are read at 1 mm (RAS-aligned, trimmed) and coarsened to the working grid by taking
every ``factor``-th voxel (``factor`` = resolution in mm, an integer); training keeps the brain's
bounding box plus a margin (20 mm by default), so that small random crops show mostly brain
(uniform crops of a whole head are mostly background). The generative and
degradation models then run directly on the coarse grid, with every prior given in mm or in
voxels rescaled to coarse voxels (:func:`scaled_generator_priors`), which costs ``factor**3``
less than synthesising at 1 mm and resampling. Examples are a pure function of (seed, step, item):
item ``i`` of step ``s`` is drawn with ``numpy.random.default_rng([seed, s, i])``, so worker
processes, restarts and ``--resume`` all see the same data order.

Per role (inputs (C, X, Y, Z) float32, targets channel indices):
- ``s1``: image -> 5 tissue groups; ``synthseg``: image -> 33 labels; ``s2``: [image, 5 corrupted
  tissue maps] -> 33 labels (all from :class:`SyntheticGenerator`).
- ``d``: a clean synthetic image (generator at full resolution) is degraded with the wide priors
  of the degradation model; the trained S1 (its inference stage: argmax, one-hot) segments it;
  input = that one-hot, target = tissue groups of the jointly deformed truth.
- ``d_all``: the same with the trained SynthSeg network's inference stage (flip averaging,
  smoothing) and 33 labels.
- With ``d_inputs="generator"``, D and D_all instead see the previous network's outputs on the
  generator's own images (the distribution it was trained on): for a weak S1 / SynthSeg, whose
  outputs on widely degraded images carry no information, D then learns to correct its typical
  errors.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from morphometry.errors import DataError, InputError
from morphometry.labels import SYNTHSEG_2
from morphometry.segment.synthesis.degradation import degrade
from morphometry.segment.synthesis.generator import GeneratorConfig, SyntheticGenerator
from morphometry.segment.synthesis.priors import (
    DegradationPriors,
    GeneratorPriors,
    ResolutionPriors,
    SpatialPriors,
    Uniform,
    UniformVariance,
)

ROLES = ("s1", "d", "s2", "synthseg", "d_all")
D_INPUTS = ("degraded", "generator")
N_TISSUE = 5
N_LABELS = len(SYNTHSEG_2.labels)
MAP_SUFFIXES = (".nii", ".nii.gz", ".mgz")

# FreeSurfer value -> channel index of the 33 labels, and -> tissue group
CHANNEL_LUT = np.zeros(int(SYNTHSEG_2.values.max()) + 1, dtype=np.int64)
CHANNEL_LUT[SYNTHSEG_2.values] = np.arange(N_LABELS)
GROUP_LUT = np.zeros_like(CHANNEL_LUT)
GROUP_LUT[SYNTHSEG_2.values] = SYNTHSEG_2.tissue_groups


def role_channels(role: str) -> tuple[int, int]:
    """(input channels, output channels) of a role's network."""
    return {"s1": (1, N_TISSUE), "d": (N_TISSUE, N_TISSUE), "s2": (1 + N_TISSUE, N_LABELS),
            "synthseg": (1, N_LABELS), "d_all": (N_LABELS, N_LABELS)}[role]


def _scale(dist, r: float):
    """A distribution of lengths (mm or 1 mm voxels) expressed in voxels of ``r`` mm."""
    if isinstance(dist, Uniform):
        return Uniform(dist.low / r, dist.high / r)
    if isinstance(dist, UniformVariance):
        return UniformVariance(dist.max_variance / r**2)
    raise TypeError(f"cannot rescale a {type(dist).__name__} length prior")


def _scaled_spatial(p: SpatialPriors, r: float) -> SpatialPriors:
    return replace(p, translation_mm=_scale(p.translation_mm, r), nonlin_std=_scale(p.nonlin_std, r),
                   nonlin_scale=p.nonlin_scale * r)


def _scaled_resolution(p: ResolutionPriors, r: float) -> ResolutionPriors:
    """Spacings and the 1 mm blur in coarse voxels; spacings below one voxel mean no subsampling."""
    return replace(p, iso_spacing=_scale(p.iso_spacing, r), aniso_spacing=_scale(p.aniso_spacing, r),
                   sigma_at_1mm=p.sigma_at_1mm / r, kernel_radius=max(2, int(np.ceil(p.kernel_radius / r))))


def scaled_generator_priors(priors: GeneratorPriors, r: float) -> GeneratorPriors:
    """Generator priors for maps of ``r`` mm voxels: lengths divided by r, control points per voxel
    multiplied by r, and the GMM standard deviations divided by r^1.5 (a coarse voxel averages
    r^3 independent 1 mm draws); the other intensity priors unchanged."""
    if r == 1:
        return priors
    return replace(priors, spatial=_scaled_spatial(priors.spatial, r), resolution=_scaled_resolution(priors.resolution, r),
                   gmm=replace(priors.gmm, stds=_scale(priors.gmm.stds, r**1.5)),
                   tissue_maps=replace(priors.tissue_maps, spatial=_scaled_spatial(priors.tissue_maps.spatial, r)))


def scaled_degradation_priors(priors: DegradationPriors, r: float) -> DegradationPriors:
    """Degradation priors for images of ``r`` mm voxels."""
    if r == 1:
        return priors
    return replace(priors, spatial=_scaled_spatial(priors.spatial, r), resolution=_scaled_resolution(priors.resolution, r))


def coarsening_factor(resolution_mm: float) -> int:
    """The integer voxel stride of a working resolution (1, 2, 3 ... mm)."""
    factor = int(round(resolution_mm))
    if factor < 1 or abs(factor - resolution_mm) > 1e-6:
        raise InputError(f"{resolution_mm:g}: training needs a whole number of mm (1, 2, 3 ...)",
                         setting="resolution_mm")
    return factor


def coarsen(labels: np.ndarray, factor: int) -> np.ndarray:
    """Every ``factor``-th voxel, starting at the centre of the first block."""
    s = factor // 2
    return np.ascontiguousarray(labels[s::factor, s::factor, s::factor])


def brain_box(labels: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Bounding box of the brain parenchyma (tissue groups 1-4) plus ``margin`` voxels."""
    from morphometry.segment.synthesis.generation_labels import GENERATION_LABELS

    brain = GENERATION_LABELS.group_lut[labels] > 0
    box = []
    for axis in range(3):
        present = np.flatnonzero(np.any(brain, axis=tuple(a for a in range(3) if a != axis)))
        if present.size == 0:
            return tuple(slice(0, n) for n in labels.shape)
        box.append(slice(max(int(present[0]) - margin, 0), min(int(present[-1]) + margin + 1, labels.shape[axis])))
    return tuple(box)


def list_label_maps(directory: str | Path) -> list[Path]:
    """Label-map files of a folder, sorted by name; InputError if none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: label-map folder not found")
    paths = sorted(p for p in directory.iterdir() if p.name.endswith(MAP_SUFFIXES))
    if not paths:
        raise InputError(f"{directory}: no label maps (*.nii, *.nii.gz, *.mgz)")
    return paths


def split_label_maps(directory: str | Path, held_out: int) -> tuple[list[Path], list[Path]]:
    """(training, validation) maps: the last ``held_out`` by name are held out."""
    paths = list_label_maps(directory)
    if held_out < 0 or len(paths) <= held_out:
        raise InputError(f"{directory}: {len(paths)} label map(s), need more than the {held_out} held out")
    return paths[: len(paths) - held_out], paths[len(paths) - held_out:]


def load_maps(paths: list[Path], resolution_mm: float, brain_margin_mm: float | None = None) -> list[np.ndarray]:
    """Read, check and coarsen training label maps (DataError names a bad file); with
    ``brain_margin_mm``, keep only the brain's bounding box plus that margin."""
    from morphometry.segment.synthesis.labelmaps import load_label_map

    factor = coarsening_factor(resolution_mm)
    maps = [coarsen(load_label_map(p), factor) for p in paths]
    if brain_margin_mm is not None:
        margin = round(brain_margin_mm / resolution_mm)
        maps = [np.ascontiguousarray(m[brain_box(m, margin)]) for m in maps]
    for p, m in zip(paths, maps):
        if min(m.shape) < 8:
            raise DataError(f"{p}: head too small for training ({m.shape} voxels at {resolution_mm:g} mm)")
    return maps


@dataclass(frozen=True)
class DataConfig:
    """What examples to draw: role, crop (voxels of the working grid per axis), resolution (mm)."""

    role: str
    crop: int = 48
    resolution_mm: float = 2.0
    d_inputs: str = "degraded"  # images D / D_all see through the previous network: degraded | generator

    def __post_init__(self):
        if self.role not in ROLES:
            raise InputError(f"unknown role {self.role!r} (choose from {', '.join(ROLES)})", setting="role")
        if self.d_inputs not in D_INPUTS:
            raise InputError(f"{self.d_inputs!r}: choose {' or '.join(D_INPUTS)}", setting="d_inputs")


class ExampleSource:
    """Draws (inputs, targets) for one role from a list of coarse label maps.

    ``previous`` is the serialised ONNX inference stage of the network D or D_all cleans up
    (``morphometry.segment.stages.tissue_stage`` of S1, ``synthseg_stage`` of SynthSeg); it is opened lazily,
    once per process, so a source can be sent to worker processes.
    """

    def __init__(self, maps: list[np.ndarray], config: DataConfig, previous: bytes | None = None):
        if config.role in ("d", "d_all") and previous is None:
            raise InputError(f"role {config.role} needs the trained network whose outputs it corrects")
        self.config = config
        self.previous = previous
        self._session = None
        r = config.resolution_mm
        crop = (config.crop,) * 3
        self.degradation = None
        if config.role in ("d", "d_all") and config.d_inputs == "generator":
            gen = GeneratorConfig("synthseg", crop, scaled_generator_priors(GeneratorPriors(), r))
        elif config.role in ("d", "d_all"):
            base = GeneratorPriors()
            clean = replace(base, resolution=replace(base.resolution, p_full_resolution=1.0))
            gen = GeneratorConfig("synthseg", crop, scaled_generator_priors(clean, r))
            self.degradation = scaled_degradation_priors(DegradationPriors(), r)
        else:
            gen = GeneratorConfig(config.role, crop, scaled_generator_priors(GeneratorPriors(), r))
        self.generator = SyntheticGenerator(maps, gen)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_session"] = None
        return state

    def _run_previous(self, image: np.ndarray) -> np.ndarray:
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            self._session = ort.InferenceSession(self.previous, options, providers=["CPUExecutionProvider"])
        (out,) = self._session.run(None, {"image": image[None, None].astype(np.float32)})
        return out[0]

    def example(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One example: inputs (C, X, Y, Z) float32, targets (X, Y, Z) int64 channel indices."""
        role = self.config.role
        sample = self.generator.sample(rng)
        if role == "s1":
            return sample.image[None], sample.target.astype(np.int64)
        if role == "synthseg":
            return sample.image[None], CHANNEL_LUT[sample.target]
        if role == "s2":
            return np.concatenate([sample.image[None], sample.tissue_maps]), CHANNEL_LUT[sample.target]
        if self.degradation is None:
            image, labels = sample.image, sample.target
        else:
            pair = degrade(sample.image, sample.target, rng, self.degradation)
            image, labels = np.clip(pair.image, 0, None) / max(float(pair.image.max()), 1e-6), pair.labels
        out = self._run_previous(image)
        if role == "d":
            return out.astype(np.float32), GROUP_LUT[labels]
        onehot = (np.arange(N_LABELS)[:, None, None, None] == out.argmax(0)[None]).astype(np.float32)
        return onehot, CHANNEL_LUT[labels]


def example_rng(seed: int, step: int, item: int) -> np.random.Generator:
    return np.random.default_rng([seed, step, item])


def make_batch(source: ExampleSource, seed: int, step: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``step``: (N, C, X, Y, Z) inputs and (N, X, Y, Z) targets."""
    items = [source.example(example_rng(seed, step, i)) for i in range(batch_size)]
    return np.stack([x for x, _ in items]), np.stack([y for _, y in items])


_WORKER_SOURCE: ExampleSource | None = None


def _init_worker(source: ExampleSource) -> None:
    global _WORKER_SOURCE
    _WORKER_SOURCE = source


def _worker_batch(args: tuple[int, int, int]):
    seed, step, batch_size = args
    return step, make_batch(_WORKER_SOURCE, seed, step, batch_size)


def batches(source: ExampleSource, seed: int, first_step: int, last_step: int, batch_size: int,
            workers: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield (step, inputs, targets) for steps first..last in order; ``workers`` processes
    (0 = in this process) prepare up to two batches each ahead."""
    steps = range(first_step, last_step + 1)
    if workers == 0:
        for s in steps:
            yield (s, *make_batch(source, seed, s, batch_size))
        return
    ctx = mp.get_context("fork")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(source,)) as pool:
        pending: deque = deque()
        todo = iter(steps)
        while True:
            while len(pending) < 2 * workers:
                s = next(todo, None)
                if s is None:
                    break
                pending.append(pool.apply_async(_worker_batch, ((seed, s, batch_size),)))
            if not pending:
                return
            s, (x, y) = pending.popleft().get()
            yield s, x, y
