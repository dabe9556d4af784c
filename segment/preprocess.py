"""Preprocessing of a scan for the segmentation networks (the original's
``SynthSeg/predict_synthseg.py``, function ``preprocess``, with ``ext/lab2im/edit_volumes.py``:
``resample_volume``, ``align_volume_to_ref``, ``rescale_volume``).

Order, as in the original: resample to the working resolution (in the native voxel order, only
when a header voxel size is off by more than the tolerance) -> align to RAS by permutation/flips
-> (crop) -> (CT clip) -> clip to the 0.5th/99.5th percentiles of all voxels and rescale to [0, 1]
-> zero pad every axis to max(ceil32(size), ceil32(128 or the crop size)), floor(d/2) voxels
before and ceil(d/2) after -> (head window, ours, not the original's: :func:`head_window`).

Crop (the original's --crop, 2.5): each size rounded up to a multiple of 32; a centred box of the
aligned volume, start = max(floor((n - c) / 2), 0), stop = min(start + c, n); only the box is
normalised (its percentiles) and analysed, the rest of the scan becomes background.

Resampling (2.3) happens when a header voxel size (float32 as stored) is above resolution + tol or
below resolution - tol, compared in float64 as the original does (0.95 mm, stored 0.94999999, is
resampled; 1.05 mm, stored 1.04999995, is not). Per native axis, factor f = |affine column| /
resolution (f < 1: finer than the working resolution), the norm taken of the affine as read (the
float32 sform in float64); Gaussian anti-aliasing with sigma = 0.25/f voxels on every axis with
f <= 1 (also an axis already at the working resolution), none on upsampled axes; new samples at old
voxel coordinates ``np.arange(s0, s0 + step * ceil(n f), step)`` with s0 = -(f-1)/(2f) and
step = 1/f, exactly the original's float expression (its length is not always ceil(n f): 6 mm
stored as 5.99999996 gives 181 slices from 30, 0.8 mm stored as 0.800000012 gives 129 from 160,
2.5 mm gives 49 from 19; ``s0 + ceil(n f)/f`` as the stop would differ in about 10 % of cases),
clamped to [0, n-1];
trilinear interpolation, done as three exact 1-D linear interpolations; new affine columns A/f and
translation t - A' (f-1)/2 (voxel corners of both grids coincide at the start of each axis).

Without resampling, the voxel volume is the float32 product of the float32 header sizes, as the
original's soft volumes use it (0.88473594 mm^3 for 0.96 mm voxels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from morphometry.errors import InputError
from morphometry.io import Scan
from morphometry.orientation import RasAlignment, ras_alignment

_TRUNCATE = 4.0  # Gaussian kernel radius = int(truncate * sigma + 0.5) voxels, as scipy
_SAMPLE = 65536  # subsample size used to bracket percentiles
_NORMALISE_VOXELS = 1 << 20  # voxels normalised at a time in float64
_GOLDEN = 0.6180339887498949
_HEAD_SLICE_FRACTION = 0.002  # share of a slice's voxels that must be head for the slice to count


@dataclass(frozen=True)
class PreprocessConfig:
    """Settings of :func:`preprocess` (defaults: SynthSeg 2.0 / SynthSeg+)."""

    resolution_mm: float = 1.0  # working resolution of the networks, mm (isotropic)
    resample_tolerance_mm: float = 0.05  # resample if any header voxel size differs by more, mm
    size_multiple: int = 32  # 2**levels of the U-Nets
    min_size: int = 128  # minimum padded size per axis, voxels
    percentiles: tuple[float, float] = (0.5, 99.5)  # robust min/max over all voxels, percent
    ct_window: tuple[float, float] | None = None  # (0, 80) Hounsfield units for CT
    max_grid_voxels: int = 400**3  # refuse larger working grids (33 float32 posteriors: 8.4 GB)
    crop: tuple[int, int, int] | None = None  # analyse a centred box of this many voxels along R, A, S
    head_window: bool = False  # networks see the head's box plus a margin, not the whole padded image
    head_threshold: float = 0.1  # normalised intensity above which a voxel counts as head
    head_margin_mm: float = 24.0  # added to the head's box on every side, mm

    def __post_init__(self) -> None:
        if not self.resolution_mm > 0:
            raise ValueError(f"resolution_mm must be > 0, got {self.resolution_mm}")
        if self.crop is not None and (len(self.crop) != 3 or min(self.crop) < 1):
            raise ValueError(f"crop must be 3 sizes >= 1 (voxels along R, A, S), got {self.crop}")
        if self.size_multiple < 1 or self.min_size < 1:
            raise ValueError("size_multiple and min_size must be >= 1")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        if not 0 <= self.head_threshold < 1 or self.head_margin_mm < 0:
            raise ValueError("head_threshold must be in [0, 1) and head_margin_mm >= 0")
        if self.ct_window is not None and not self.ct_window[0] < self.ct_window[1]:
            raise ValueError(f"ct_window must be (low, high) with low < high, got {self.ct_window}")


@dataclass
class Preprocessed:
    """A scan ready for the networks, and what is needed to map results back.

    ``image`` is RAS-aligned, normalised to [0, 1] and zero padded; ``image[inner]`` is the aligned
    volume, or its part ``crop`` (a box of the aligned grid) when cropped. The networks see
    ``image[window]`` (:attr:`network_image`; all of it when ``window`` is None). ``grid_image`` is the
    unnormalised image in native voxel order on the output grid (``grid_affine``, ``grid_shape``):
    the resampled image when ``resampled`` (the ``--resampled`` output), else the input voxels.
    """

    image: np.ndarray
    inner: tuple[slice, slice, slice]
    alignment: RasAlignment
    grid_affine: np.ndarray
    grid_shape: tuple[int, int, int]
    voxel_volume_mm3: float  # mm^3, a float32 value (the original's volumes are float32 products)
    resampled: bool
    grid_image: np.ndarray
    intensity_range: tuple[float, float]  # robust min and max mapped to 0 and 1 (after CT clip)
    crop: tuple[slice, slice, slice] | None = None  # the analysed box of the aligned grid, if cropped
    window: tuple[slice, slice, slice] | None = None  # the box of ``image`` the networks see, if not all

    @property
    def network_image(self) -> np.ndarray:
        """What the networks segment: ``image[window]`` (a contiguous copy), or ``image``."""
        return self.image if self.window is None else np.ascontiguousarray(self.image[self.window])

    @property
    def network_inner(self) -> tuple[slice, slice, slice]:
        """The box of :attr:`network_image` that holds (part of) the analysed volume."""
        if self.window is None:
            return self.inner
        return tuple(slice(max(w.start, i.start) - w.start, min(w.stop, i.stop) - w.start)  # type: ignore[return-value]
                     for w, i in zip(self.window, self.inner))

    @property
    def analysed_box(self) -> tuple[slice, slice, slice] | None:
        """The box of the aligned grid that ``network_image[network_inner]`` covers; None: all of it.
        Outside it everything is background."""
        if self.window is None:
            return self.crop
        offsets = [0, 0, 0] if self.crop is None else [c.start for c in self.crop]
        return tuple(slice(max(w.start, i.start) - i.start + o, min(w.stop, i.stop) - i.start + o)  # type: ignore[return-value]
                     for w, i, o in zip(self.window, self.inner, offsets))

    def resampled_image(self) -> np.ndarray:
        """``grid_image``: what ``--resampled`` writes (with ``grid_affine``) when ``resampled``, in
        physical units; the original writes it with the input's header and on-disk type
        (``morphometry.io.save_image(..., header=scan.header)``)."""
        return self.grid_image

    @property
    def aligned_shape(self) -> tuple[int, int, int]:
        return tuple(self.grid_shape[p] for p in self.alignment.perm)  # type: ignore[return-value]

    @property
    def aligned_affine(self) -> np.ndarray:
        """Affine of ``image[inner]`` (RAS-aligned voxel indices -> world mm)."""
        return self.alignment.aligned_affine(self.grid_affine, self.grid_shape)


def preprocess(scan: Scan, config: PreprocessConfig = PreprocessConfig()) -> Preprocessed:
    """Resample, align, normalise and pad ``scan`` for the networks (module docstring)."""
    data, affine, resampled = scan.data, scan.affine, needs_resampling(scan.info.zooms, config)
    factors = resampling_factors(affine, config.resolution_mm)
    shape = tuple(len(sample_positions(n, f)) for n, f in zip(data.shape, factors)) if resampled else data.shape
    if math.prod(shape) > config.max_grid_voxels:
        raise InputError(f"{scan.path}: the working grid at {config.resolution_mm:g} mm would have {tuple(shape)} "
                         f"voxels (> limit {config.max_grid_voxels:,}); check the header voxel sizes")
    if resampled:
        data = resample(data, factors)
        affine = resampled_affine(affine, factors)
        voxel_volume = np.float32(np.prod(np.full(3, config.resolution_mm)))
    else:
        voxel_volume = np.prod(np.asarray(scan.info.zooms, dtype=np.float32), dtype=np.float32)
    # The alignment is that of the output grid (the original aligns after resampling); it equals
    # scan.info.alignment except, possibly, for oblique scans with anisotropic voxels.
    alignment = ras_alignment(affine)
    aligned = alignment.apply(data)
    box = crop_box(aligned.shape, config)
    if box is not None:
        aligned = aligned[box]
    if config.ct_window is not None:
        aligned = np.clip(aligned, *config.ct_window, dtype=np.float32)
    lo, hi = robust_range(aligned, config.percentiles)
    if not hi > lo:
        raise InputError(f"{scan.path}: intensities between the {config.percentiles[0]:g}th and "
                         f"{config.percentiles[1]:g}th percentiles are constant ({lo:g}); nothing to segment")
    padded, inner = _padded_shape(aligned.shape, config)
    image = np.zeros(padded, dtype=np.float32)
    normalise_into(aligned, lo, hi, image[inner])
    window = head_window(image, inner, config) if config.head_window else None
    return Preprocessed(
        image=image, inner=inner, alignment=alignment, grid_affine=affine,
        grid_shape=tuple(int(s) for s in data.shape),  # type: ignore[arg-type]
        voxel_volume_mm3=float(voxel_volume), resampled=resampled, grid_image=data, intensity_range=(lo, hi),
        crop=box, window=window,
    )


def head_window(image: np.ndarray, inner: tuple[slice, ...], config: PreprocessConfig) -> tuple[slice, ...] | None:
    """The box of the padded ``image`` the networks need to see: the head plus a margin.

    Head = voxels whose normalised intensity exceeds ``head_threshold``; per axis, the first and
    last slice of ``image[inner]`` holding at least 0.2 % of such voxels (isolated noise in the
    air is ignored), widened by ``head_margin_mm`` on both sides, both ends rounded outwards to
    multiples of ``size_multiple`` (the image's size is one, so the window stays inside it, and
    the networks' pooling blocks stay those of the whole image). None when that is the whole
    image (a head that fills the field of view), or when no slice qualifies.

    Outside the window the networks would see air; their outputs there are removed by the
    postprocessing anyway (only the largest foreground component is kept), but every layer's
    zero padding at the window's faces differs from the features of air the whole-image run has
    there, and a U-Net's receptive field carries that difference into the brain: opt-in, with
    the agreement measured in docs/benchmarks.md.
    """
    mask = image[inner] > config.head_threshold
    margin = math.ceil(config.head_margin_mm / config.resolution_mm)
    window = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        counts = np.count_nonzero(mask, axis=others)
        slices = np.flatnonzero(counts >= max(1, _HEAD_SLICE_FRACTION * math.prod(mask.shape[a] for a in others)))
        if slices.size == 0:
            return None
        lo = inner[axis].start + int(slices[0]) - margin
        hi = inner[axis].start + int(slices[-1]) + 1 + margin
        m = config.size_multiple
        start = max(lo, 0) // m * m
        stop = min(_ceil_multiple(hi, m), image.shape[axis])
        window.append(slice(start, stop))
    if all(w.stop - w.start == n for w, n in zip(window, image.shape)):
        return None
    return tuple(window)


def crop_box(shape: tuple[int, ...], config: PreprocessConfig) -> tuple[slice, slice, slice] | None:
    """The centred box of ``config.crop`` (each size rounded up to size_multiple) in an aligned grid of
    ``shape``: start = max(floor((n - c) / 2), 0), stop = min(start + c, n); None without a crop."""
    if config.crop is None:
        return None
    sizes = [_ceil_multiple(c, config.size_multiple) for c in config.crop]
    starts = [max((n - c) // 2, 0) for n, c in zip(shape, sizes)]
    return tuple(slice(a, min(a + c, n)) for a, c, n in zip(starts, sizes, shape))  # type: ignore[return-value]


def needs_resampling(zooms: tuple[float, ...], config: PreprocessConfig) -> bool:
    """True if any header voxel size (mm, the stored float32 value) is above resolution + tolerance or
    below resolution - tolerance, compared in float64 (the original's test)."""
    high = config.resolution_mm + config.resample_tolerance_mm
    low = config.resolution_mm - config.resample_tolerance_mm
    return any(z > high or z < low for z in zooms[:3])


def resampling_factors(affine: np.ndarray, resolution_mm: float) -> tuple[float, float, float]:
    """f per native axis = voxel size from the affine column norm (mm) / working resolution (mm)."""
    a = np.asarray(affine, dtype=np.float64)
    norms = np.sqrt(np.sum(a * a, axis=0))[:3]  # the original's expression, to the last bit
    return tuple(float(n / resolution_mm) for n in norms)  # type: ignore[return-value]


def sample_positions(n: int, f: float) -> np.ndarray:
    """New sample positions along an axis of n voxels, in old voxel coordinates (clamped to [0, n-1]):
    ``np.arange(s0, s0 + step * ceil(n f), step)`` with s0 = -(f-1)/(2f), step = 1/f, whose float
    length decides the count."""
    start = -(f - 1.0) / (2.0 * f)
    step = 1.0 / f
    positions = np.arange(start, start + step * math.ceil(n * f), step, dtype=np.float64)
    return np.clip(positions, 0.0, n - 1.0)


def resampled_affine(affine: np.ndarray, factors: tuple[float, float, float]) -> np.ndarray:
    """Affine of the resampled grid: columns divided by f, translation t - A' (f - 1) / 2."""
    f = np.asarray(factors, dtype=np.float64)
    out = np.array(affine, dtype=np.float64, copy=True)
    out[:3, :3] = out[:3, :3] / f
    out[:3, 3] = out[:3, 3] - out[:3, :3] @ (0.5 * (f - 1.0))
    return out


def resample(data: np.ndarray, factors: tuple[float, float, float]) -> np.ndarray:
    """Anti-alias and trilinearly resample ``data`` (native order) by ``factors`` (float32).

    Axis by axis, most shrinking first: blur (sigma 0.25/f if f <= 1) then 1-D linear
    interpolation. Both are separable, so the result equals blurring all axes and then
    interpolating trilinearly; working on the shrinking axes first keeps the arrays small.
    """
    out = np.asarray(data, dtype=np.float32)
    for axis in sorted(range(3), key=lambda a: factors[a]):
        f = factors[axis]
        if f <= 1.0:
            out = gaussian_blur_axis(out, 0.25 / f, axis)
        out = interpolate_axis(out, sample_positions(out.shape[axis], f), axis)
    return np.ascontiguousarray(out)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian weights of radius int(4 sigma + 0.5) (scipy's gaussian_filter1d)."""
    radius = int(_TRUNCATE * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def gaussian_blur_axis(data: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    """Gaussian blur along one axis, ``reflect`` boundary (d c b a | a b c d), float32."""
    weights = gaussian_kernel(sigma).astype(np.float32)
    radius = len(weights) // 2
    moved = np.moveaxis(data, axis, 0)
    out = np.multiply(moved, weights[radius])
    for k in range(1, radius + 1):
        _add_shifted(out, moved, -k, weights[radius - k])
        _add_shifted(out, moved, k, weights[radius + k])
    return np.moveaxis(out, 0, axis)


def _add_shifted(out: np.ndarray, src: np.ndarray, shift: int, weight: np.float32) -> None:
    """out[i] += weight * src[reflect(i + shift)] along axis 0."""
    n = src.shape[0]
    target = np.arange(n) + shift
    bulk = slice(max(0, -shift), min(n, n - shift))  # i with 0 <= i + shift < n
    if bulk.start < bulk.stop:
        out[bulk] += weight * src[bulk.start + shift:bulk.stop + shift]
    edges = np.flatnonzero((target < 0) | (target >= n))
    if edges.size:
        reflected = target[edges] % (2 * n)  # repeated reflection for kernels longer than the axis
        reflected = np.where(reflected >= n, 2 * n - 1 - reflected, reflected)
        out[edges] += weight * src[reflected]


def interpolate_axis(data: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``data`` at fractional (in-range) ``positions`` along ``axis``."""
    n = data.shape[axis]
    lower = np.minimum(np.floor(positions).astype(np.intp), max(n - 2, 0))
    upper = np.minimum(lower + 1, n - 1)
    weight = (positions - lower).astype(np.float32)
    shape = [1] * data.ndim
    shape[axis] = len(positions)
    weight = weight.reshape(shape)
    out = np.take(data, lower, axis=axis)
    step = np.take(data, upper, axis=axis)
    step -= out
    step *= weight
    out += step
    return out


def robust_range(data: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """The two percentiles over all voxels, zeros included (numpy ``percentile``, linear method)."""
    values = np.ascontiguousarray(data).ravel()
    return tuple(percentile(values, q) for q in percentiles)  # type: ignore[return-value]


def percentile(values: np.ndarray, q: float) -> float:
    """Exact linear-interpolation percentile of a 1-D array, faster than a full partition.

    The two order statistics needed are first bracketed with a subsample, then selected
    among the values inside the bracket only; if a bracket misses its rank (never for an honest
    subsample, but possible for adversarial data) the whole array is partitioned.
    """
    n = values.size
    h = (n - 1) * q / 100.0
    k = int(math.floor(h))
    t = h - k
    a, b = _order_statistics(values, k, min(k + 1, n - 1))
    # numpy's lerp: a + (b - a) t for t < 0.5, b - (b - a)(1 - t) otherwise.
    return float(a + (b - a) * t) if t < 0.5 else float(b - (b - a) * (1.0 - t))


def _order_statistics(values: np.ndarray, k1: int, k2: int) -> tuple[float, float]:
    """The k1-th and k2-th smallest values (0-based, k1 <= k2)."""
    n = values.size
    # A Weyl sequence (golden-ratio steps modulo n) spreads the sample over the whole volume;
    # a plain stride would alias with the image rows.
    step = int(n * _GOLDEN) | 1
    sample = np.sort(values[np.arange(min(n, _SAMPLE), dtype=np.int64) * step % n])
    m = sample.size
    margin = 8 * int(math.sqrt(m)) + 16
    r1, r2 = k1 * m // n, k2 * m // n
    low = sample[max(0, r1 - margin)]
    high = sample[min(m - 1, r2 + margin)]
    below = int(np.count_nonzero(values < low))
    if below <= k1:
        base = below + int(np.count_nonzero(values == low))  # rank of the first value above `low`
        if k2 < base:
            return float(low), float(low)
        above = values[(values > low) & (values <= high)]
        if k2 < base + above.size:
            wanted = [k - base for k in (k1, k2) if k >= base]
            picked = np.partition(above, wanted)
            first = float(low) if k1 < base else float(picked[k1 - base])
            return first, float(picked[k2 - base])
    picked = np.partition(values, [k1, k2])
    return float(picked[k1]), float(picked[k2])


def normalise_into(aligned: np.ndarray, lo: float, hi: float, out: np.ndarray) -> None:
    """out = (clip(aligned, lo, hi) - lo) / (hi - lo), computed in float64 as the original (whose
    network then reads it as float32) and written into the float32 ``out``, a few slices at a time."""
    step = max(1, _NORMALISE_VOXELS // max(1, aligned[0].size))
    for start in range(0, aligned.shape[0], step):
        part = np.clip(aligned[start:start + step].astype(np.float64), lo, hi)
        part -= lo
        part /= hi - lo
        out[start:start + step] = part


def _ceil_multiple(n: int, m: int) -> int:
    return -(-n // m) * m


def padded_size(n: int, config: PreprocessConfig, minimum: int | None = None) -> int:
    """max(ceil_m(n), ceil_m(minimum)) with m = size_multiple; minimum: min_size by default."""
    m = config.size_multiple
    return max(_ceil_multiple(n, m), _ceil_multiple(config.min_size if minimum is None else minimum, m))


def _padded_shape(shape: tuple[int, ...], config: PreprocessConfig) -> tuple[tuple[int, ...], tuple[slice, ...]]:
    minimums = config.crop or (config.min_size,) * 3  # the original pads a crop to the crop size
    padded = tuple(padded_size(n, config, c) for n, c in zip(shape, minimums))
    inner = tuple(slice((p - n) // 2, (p - n) // 2 + n) for p, n in zip(padded, shape))
    return padded, inner  # type: ignore[return-value]
