"""Resampling to the working resolution (the original's ``edit_volumes.resample_volume``, as ``predict_synthseg.preprocess`` calls it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.interpolate import RegularGridInterpolator

from morphometry.errors import InputError
from morphometry.io import Scan, ScanInfo
from morphometry.orientation import ras_alignment
from morphometry.segment.preprocess import (
    PreprocessConfig,
    gaussian_blur_axis,
    needs_resampling,
    preprocess,
    resample,
    resampled_affine,
    sample_positions,
)


def make_scan(data: np.ndarray, affine: np.ndarray, zooms=None) -> Scan:
    """A Scan as load_scan builds it; header voxel sizes default to the affine column norms."""
    if zooms is None:
        zooms = tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0))
    alignment = ras_alignment(affine)
    info = ScanInfo(shape=data.shape, zooms=zooms, ras_spacing=tuple(zooms[p] for p in alignment.perm),
                    alignment=alignment)
    return Scan(path=Path("synthetic.nii.gz"), data=data.astype(np.float32), affine=affine, header=None, info=info)


def oblique_affine(zooms, degrees: float = 12.0) -> np.ndarray:
    """Voxel axes (0, 1, 2) along (-A, S, -R) after a small tilt: an oblique, permuted, flipped grid."""
    base = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]) * np.asarray(zooms)
    t = np.deg2rad(degrees)
    tilt = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    affine = np.eye(4)
    affine[:3, :3] = tilt @ base
    affine[:3, 3] = (40.0, 25.0, -18.0)
    return affine


def voxel_grid(shape) -> np.ndarray:
    return np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), axis=-1)


def world_function(world: np.ndarray) -> np.ndarray:
    """A linear function of world position (mm): what a correct resampling reproduces exactly."""
    return 30.0 + 0.5 * world[..., 0] - 0.25 * world[..., 1] + 0.125 * world[..., 2]


def original_positions(n: int, f: float) -> np.ndarray:
    """The original's sample positions, written out: a float ``arange`` from s0 = -(f-1)/(2f) in steps
    of 1/f up to s0 + (1/f) ceil(n f), in this float order (s0 + ceil(n f)/f gives another length in
    about one case in ten, e.g. n = 19, f = 2.5)."""
    start = -(f - 1) / (2 * f)
    step = 1.0 / f
    return np.arange(start, start + step * np.ceil(n * f), step)


def reference_resample(data: np.ndarray, factors) -> np.ndarray:
    """The original's resampling recipe (README, Preprocessing) with scipy, in float64 (independent of morphometry.segment.preprocess)."""
    sigmas = [0.25 / f if f <= 1 else 0.0 for f in factors]
    blurred = ndimage.gaussian_filter(data.astype(np.float64), sigmas, mode="reflect", truncate=4.0)
    axes = []
    for n, f in zip(data.shape, factors):
        axes.append(np.clip(original_positions(n, f), 0, n - 1))
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    interpolator = RegularGridInterpolator([np.arange(n) for n in data.shape], blurred, method="linear")
    return interpolator(points)


@pytest.mark.parametrize("shape", [(7, 9, 11), (2, 3, 5)])
@pytest.mark.parametrize("sigma", [0.1, 0.25, 0.3125, 0.5, 1.7, 3.0])
def test_gaussian_blur_matches_scipy_reflect(shape, sigma):
    data = np.random.default_rng(7).random(shape).astype(np.float32)
    for axis in range(3):
        ref = ndimage.gaussian_filter1d(data.astype(np.float64), sigma, axis=axis, mode="reflect", truncate=4.0)
        np.testing.assert_allclose(gaussian_blur_axis(data, sigma, axis), ref, atol=1e-6)


@pytest.mark.parametrize("factors", [(0.8, 1.3, 6.0), (0.5, 0.5, 0.5), (1.0, 1.0, 3.0), (2.5, 0.7, 1.0)])
def test_resample_matches_the_reference_recipe(factors):
    data = np.random.default_rng(3).normal(size=(19, 14, 9)).astype(np.float32)
    ours = resample(data, factors)
    ref = reference_resample(data, factors)
    assert ours.shape == ref.shape
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_linear_world_function_is_reproduced_on_the_new_grid():
    zooms = (0.8, 1.3, 6.0)
    shape = (40, 30, 12)
    affine = oblique_affine(zooms)
    native = voxel_grid(shape) @ affine[:3, :3].T + affine[:3, 3]
    scan = make_scan(world_function(native), affine)
    pre = preprocess(scan, PreprocessConfig())
    assert pre.resampled
    factors = np.linalg.norm(affine[:3, :3], axis=0)
    assert pre.grid_shape == tuple(len(original_positions(n, f)) for n, f in zip(shape, factors))
    new_world = voxel_grid(pre.grid_shape) @ pre.grid_affine[:3, :3].T + pre.grid_affine[:3, 3]
    expected = world_function(new_world)
    # interior: sample positions inside the old grid, away from the blur's reflected border
    interior = []
    for n_old, n_new, f in zip(shape, pre.grid_shape, factors):
        position = -(f - 1) / (2 * f) + np.arange(n_new) / f
        radius = int(4 * 0.25 / f + 0.5) if f <= 1 else 0
        interior.append((position >= radius) & (position <= n_old - 1 - radius))
    inside = np.ix_(*interior)
    assert min(len(i) for i in inside) > 0
    np.testing.assert_allclose(pre.grid_image[inside], expected[inside], atol=1e-4)
    assert pre.resampled_image() is pre.grid_image
    assert pre.voxel_volume_mm3 == 1.0


def test_new_affine_is_corner_aligned_with_working_voxel_size():
    zooms = (0.8, 1.3, 6.0)
    affine = oblique_affine(zooms, degrees=25.0)
    factors = tuple(np.asarray(zooms) / 1.0)
    new = resampled_affine(affine, factors)
    np.testing.assert_allclose(np.linalg.norm(new[:3, :3], axis=0), 1.0)
    corner = np.array([-0.5, -0.5, -0.5, 1.0])
    np.testing.assert_allclose(new @ corner, affine @ corner, atol=1e-9)
    # new voxel k sits at old voxel coordinate -(f-1)/(2f) + k/f
    k = np.array([3.0, 7.0, 2.0])
    old = -(np.asarray(factors) - 1) / (2 * np.asarray(factors)) + k / np.asarray(factors)
    np.testing.assert_allclose(new[:3, :3] @ k + new[:3, 3], affine[:3, :3] @ old + affine[:3, 3], atol=1e-9)


def test_sample_counts():
    assert preprocess(make_scan(np.random.default_rng(0).random((288, 12, 12)), np.diag([0.8, 1, 1, 1])),
                      PreprocessConfig()).grid_shape == (231, 12, 12)
    assert preprocess(make_scan(np.random.default_rng(0).random((16, 16, 25)), np.diag([1, 1, 6.0, 1])),
                      PreprocessConfig()).grid_shape == (16, 16, 150)


@pytest.mark.parametrize(("n", "size", "count"), [
    (30, 5.999999955450378, 181),  # e2e fixture flair_oblique: ceil(n f) = 180, the float arange gives 181
    (160, float(np.float32(0.8)), 129),  # 0.8 mm stored as float32 (0.800000012): 128.0000019 -> 129
    (24, 5.00000015, 121),  # issue 16: an oblique 5 mm axis whose column norm float32 rounding pushed up
    (19, 2.5, 49),  # 47.5 -> ceil 48, and the arange adds one more
    (16, 1.2000000476837158, 20),  # e2e fixture pd_coronal_flipped: 19.2 -> 20, no surprise
])
def test_sample_count_is_the_length_of_the_original_float_arange(n, size, count):
    positions = sample_positions(n, size)
    assert len(positions) == count == len(original_positions(n, size))
    np.testing.assert_allclose(positions, np.clip(original_positions(n, size), 0, n - 1), rtol=0, atol=1e-12)


def test_resampling_threshold_on_float32_header_sizes():
    """Resampled when a stored size is > 1.05 or < 0.95 in float64: 0.95 mm (stored 0.94999999) is
    resampled, 1.05 mm (stored 1.04999995) is not (fixture README, difference 3)."""
    config = PreprocessConfig()
    stored = lambda z: float(np.float32(z))  # noqa: E731
    assert needs_resampling((1.0, 1.0, stored(0.95)), config)
    assert not needs_resampling((1.0, 1.0, stored(1.05)), config)
    assert not needs_resampling((stored(0.96),) * 3, config)
    assert needs_resampling((1.0, 1.0, 1.0500001), config)


def test_within_tolerance_is_not_resampled_and_keeps_the_native_voxel_volume():
    data = np.random.default_rng(1).random((20, 21, 22)).astype(np.float32)
    affine = np.diag([1.04, 0.96, 1.0, 1.0])
    pre = preprocess(make_scan(data, affine), PreprocessConfig())
    assert not pre.resampled
    assert pre.grid_shape == data.shape
    assert np.array_equal(pre.grid_image, data)
    assert np.array_equal(pre.grid_affine, affine)
    # the float32 product of the float32 sizes, as the original's volumes (0.99839997 here, not 0.9984)
    assert pre.voxel_volume_mm3 == float(np.float32(1.04) * np.float32(0.96) * np.float32(1.0))


def test_decision_uses_header_sizes_and_factor_uses_affine():
    data = np.random.default_rng(2).random((10, 10, 10)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    # header says 1 mm: no resampling even though the affine says 2 mm
    assert not preprocess(make_scan(data, affine, zooms=(1.0, 1.0, 1.0)), PreprocessConfig()).resampled
    # header says 1.2 mm on one axis: resample, by the affine's 2 mm on every axis
    pre = preprocess(make_scan(data, affine, zooms=(1.0, 1.0, 1.2)), PreprocessConfig())
    assert pre.resampled and pre.grid_shape == (20, 20, 20)


def test_exact_working_resolution_axis_is_blurred_when_another_axis_triggers():
    data = np.zeros((9, 9, 9), dtype=np.float32)
    data[4, 4, 4] = 1.0
    pre = preprocess(make_scan(data, np.diag([1.0, 1.0, 3.0, 1.0])), PreprocessConfig())
    out = pre.grid_image
    # axis 0 and 1 (f = 1): sigma 0.25, samples at integer positions -> centre weight squared;
    # axis 2 (f = 3): no blur, new index 13 sits exactly on old index 4 (-1/3 + 13/3 = 4)
    w = np.exp(-0.5 * (1 / 0.25) ** 2)
    centre = 1 / (1 + 2 * w)
    assert out[4, 4, 13] == pytest.approx(centre**2, rel=1e-6)
    assert out[5, 4, 13] == pytest.approx(w * centre**2, rel=1e-5)
    assert out[4, 4, 12] == pytest.approx(centre**2 * 2 / 3, rel=1e-6)  # linear, unblurred along z
    assert out[4, 4, 9] == 0.0


def test_generalised_working_resolution():
    data = np.random.default_rng(4).random((30, 31, 32)).astype(np.float32)
    pre = preprocess(make_scan(data, np.eye(4)), PreprocessConfig(resolution_mm=1.5))
    assert pre.resampled
    assert pre.grid_shape == (20, 21, 22)  # ceil(n * 2/3)
    np.testing.assert_allclose(np.linalg.norm(pre.grid_affine[:3, :3], axis=0), 1.5)
    assert pre.voxel_volume_mm3 == pytest.approx(3.375)
    np.testing.assert_allclose(pre.grid_image, reference_resample(data, (2 / 3,) * 3), atol=2e-5)


def test_alignment_is_that_of_the_resampled_grid():
    zooms = (0.9, 1.3, 4.0)  # voxel axis 0 (0.9 mm) along y, axis 2 (4 mm) along x, tilted 20 degrees
    lin = np.array([[0.0, 0.0, 4.0], [0.9, 0.0, 0.0], [0.0, 1.3, 0.0]])
    t = np.deg2rad(20.0)
    tilt = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = tilt @ lin
    scan = make_scan(np.random.default_rng(5).random((20, 16, 8)), affine, zooms=zooms)
    pre = preprocess(scan, PreprocessConfig())
    assert pre.alignment == ras_alignment(pre.grid_affine)
    assert pre.alignment.perm == (2, 0, 1)
    assert scan.info.alignment.perm != (2, 0, 1)  # the native rule is swayed by the voxel sizes


def test_absurd_working_grid_is_refused():
    data = np.ones((8, 8, 8), dtype=np.float32)
    data[0, 0, 0] = 0
    with pytest.raises(InputError, match=r"synthetic\.nii\.gz: the working grid at 1 mm would have \(400, 400, 400\)"):
        preprocess(make_scan(data, np.diag([50.0, 50.0, 50.0, 1.0])), PreprocessConfig(max_grid_voxels=10**6))
    big = np.random.default_rng(6).random((101, 100, 100)).astype(np.float32)  # not resampled, too big
    with pytest.raises(InputError, match=r"synthetic\.nii\.gz: the working grid"):
        preprocess(make_scan(big, np.eye(4)), PreprocessConfig(max_grid_voxels=10**6))
