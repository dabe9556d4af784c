"""Percentile normalisation, CT window and padding (the original's ``predict_synthseg.preprocess``: ``rescale_volume``, padding)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from morphometry.errors import InputError
from morphometry.io import Scan, ScanInfo
from morphometry.orientation import ras_alignment
from morphometry.segment.preprocess import PreprocessConfig, padded_size, percentile, preprocess

# Voxel axes (0, 1, 2) -> (-S, +R, -A): permuted and flipped, 1 mm, not resampled.
AFFINE = np.array([[0.0, 1.0, 0.0, -50.0], [0.0, 0.0, -1.0, 60.0], [-1.0, 0.0, 0.0, 40.0], [0, 0, 0, 1]])


def make_scan(data: np.ndarray, affine: np.ndarray = AFFINE) -> Scan:
    zooms = tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0))
    alignment = ras_alignment(affine)
    info = ScanInfo(shape=data.shape, zooms=zooms, ras_spacing=tuple(zooms[p] for p in alignment.perm),
                    alignment=alignment)
    return Scan(path=Path("head.nii.gz"), data=data.astype(np.float32), affine=affine, header=None, info=info)


def head_like(shape, rng: np.random.Generator) -> np.ndarray:
    """Mostly zero background with a bright noisy ellipsoid (zeros dominate the low percentile)."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    inside = (grid**2).sum(axis=0) < 0.5
    return np.where(inside, rng.gamma(4.0, 25.0, size=shape), 0.0).astype(np.float32)


def test_percentiles_over_all_voxels_including_zeros():
    rng = np.random.default_rng(0)
    data = head_like((40, 36, 30), rng)
    pre = preprocess(make_scan(data), PreprocessConfig())
    lo, hi = np.percentile(data.astype(np.float64), [0.5, 99.5])
    assert pre.intensity_range == pytest.approx((lo, hi), rel=1e-6, abs=1e-6)
    assert lo == 0.0  # zeros included
    assert pre.intensity_range[0] != pytest.approx(np.percentile(data[data > 0], 0.5))


def test_normalised_values_and_zero_padding():
    rng = np.random.default_rng(1)
    data = head_like((40, 36, 30), rng)
    pre = preprocess(make_scan(data), PreprocessConfig())
    lo, hi = np.percentile(data.astype(np.float64), [0.5, 99.5])
    aligned = np.flip(np.transpose(data, (1, 2, 0)), axis=(1, 2)).astype(np.float64)  # by hand for AFFINE
    assert pre.alignment.perm == (1, 2, 0) and pre.alignment.flips == (False, True, True)
    expected = (np.clip(aligned, lo, hi) - lo) / (hi - lo)
    assert pre.image.dtype == np.float32
    np.testing.assert_allclose(pre.image[pre.inner], expected, atol=1e-6)
    padding = np.ones(pre.image.shape, dtype=bool)
    padding[pre.inner] = False
    assert np.all(pre.image[padding] == 0)
    assert pre.image.min() == 0.0 and pre.image.max() == pytest.approx(1.0)


def test_pad_sizes_and_offsets():
    # native (131, 129, 33) -> aligned (129, 33, 131); odd differences put the extra voxel at the end
    data = head_like((131, 129, 33), np.random.default_rng(2))
    pre = preprocess(make_scan(data), PreprocessConfig())
    aligned_shape = (129, 33, 131)
    assert pre.aligned_shape == aligned_shape
    assert pre.image.shape == (160, 128, 160)
    assert pre.inner == (slice(15, 144), slice(47, 80), slice(14, 145))
    for s, n, p in zip(pre.inner, aligned_shape, pre.image.shape):
        assert s.stop - s.start == n
        assert s.start == (p - n) // 2 and p - s.stop == -(-(p - n) // 2)


@pytest.mark.parametrize("n,expected", [(1, 128), (128, 128), (129, 160), (160, 160), (161, 192), (300, 320)])
def test_padded_size(n, expected):
    assert padded_size(n, PreprocessConfig()) == expected


def test_padded_size_other_multiples():
    config = PreprocessConfig(size_multiple=16, min_size=100)
    assert padded_size(20, config) == 112  # ceil16(100) = 112
    assert padded_size(113, config) == 128


def test_ct_window_clips_before_the_percentiles():
    rng = np.random.default_rng(3)
    data = rng.uniform(-1000, 2000, size=(30, 30, 30)).astype(np.float32)
    pre = preprocess(make_scan(data), PreprocessConfig(ct_window=(0.0, 80.0)))
    clipped = np.clip(data.astype(np.float64), 0, 80)
    assert pre.intensity_range == pytest.approx(tuple(np.percentile(clipped, [0.5, 99.5])), abs=1e-5)
    assert pre.intensity_range == (0.0, 80.0)
    assert np.array_equal(pre.grid_image, data)  # the --resampled / grid image stays unclipped


def test_constant_image_after_percentiles_is_refused():
    data = np.zeros((30, 30, 30), dtype=np.float32)
    data[0, 0, :5] = 7.0  # 5 voxels of 27000: both percentiles are 0
    with pytest.raises(InputError, match=r"head\.nii\.gz: intensities between the 0\.5th and 99\.5th"):
        preprocess(make_scan(data), PreprocessConfig())


@pytest.mark.parametrize("case", ["uniform", "zeros", "ties", "tiny", "single", "sorted", "adversarial"])
@pytest.mark.parametrize("q", [0.0, 0.5, 37.3, 50.0, 99.5, 100.0])
def test_percentile_matches_numpy(case, q):
    rng = np.random.default_rng(4)
    values = {
        "uniform": lambda: rng.random(300_001),
        "zeros": lambda: np.where(rng.random(400_000) < 0.6, 0.0, rng.random(400_000)),
        "ties": lambda: np.repeat(np.arange(5.0), 50_000),
        "tiny": lambda: rng.random(7),
        "single": lambda: np.array([3.5]),
        "sorted": lambda: np.sort(rng.normal(size=262_144)),
        # every 4th value (what the bracketing subsample sees) is huge: the fallback path
        "adversarial": lambda: np.where(np.arange(262_144) % 4 == 0, 1000.0, rng.random(262_144)),
    }[case]().astype(np.float32)
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-6, abs=1e-7)


def test_config_is_validated():
    with pytest.raises(ValueError):
        PreprocessConfig(resolution_mm=0)
    with pytest.raises(ValueError):
        PreprocessConfig(percentiles=(99.5, 0.5))
    with pytest.raises(ValueError):
        PreprocessConfig(ct_window=(80.0, 0.0))


def test_crop_is_a_centred_box_rounded_up_to_32_normalised_and_padded_on_its_own():
    """The original's --crop (facts 2.5): sizes rounded up to 32, start = max(floor((n - c)/2), 0),
    stop = min(start + c, n); percentiles of the box only; padded to max(ceil32(box), crop)."""
    data = head_like((131, 129, 33), np.random.default_rng(4))  # aligned (129, 33, 131)
    pre = preprocess(make_scan(data), PreprocessConfig(crop=(64, 20, 100)))
    assert pre.crop == (slice(32, 96), slice(0, 32), slice(1, 129))  # (64, 32, 128) centred, axis 1 kept
    aligned = np.flip(np.transpose(data, (1, 2, 0)), axis=(1, 2)).astype(np.float64)[pre.crop]
    lo, hi = np.percentile(aligned, [0.5, 99.5])
    assert pre.intensity_range == pytest.approx((lo, hi), rel=1e-6, abs=1e-6)
    assert pre.image.shape == (64, 32, 128)  # the crop size is the minimum padding, not 128
    assert pre.inner == (slice(0, 64), slice(0, 32), slice(0, 128))
    np.testing.assert_allclose(pre.image[pre.inner], (np.clip(aligned, lo, hi) - lo) / (hi - lo), atol=1e-6)
    assert pre.aligned_shape == (129, 33, 131) and pre.grid_shape == data.shape  # outputs: the whole scan
    larger = preprocess(make_scan(data), PreprocessConfig(crop=(200, 200, 200)))
    assert larger.crop == (slice(0, 129), slice(0, 33), slice(0, 131)) and larger.image.shape == (224,) * 3
    with pytest.raises(ValueError, match="crop"):
        PreprocessConfig(crop=(64, 64))
