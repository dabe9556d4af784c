"""Metrics against analytic values and an independent implementation (MedPy)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from morphometry.analysis import metrics

medpy_binary = pytest.importorskip("medpy.metric.binary", reason="MedPy is the independent reference")


def sphere_mask(shape, spacing, centre_mm, radius_mm) -> np.ndarray:
    """Voxels whose centre lies inside the sphere (voxel i at i * spacing mm)."""
    axes = [np.arange(n) * s for n, s in zip(shape, spacing)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    c = centre_mm
    return (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= radius_mm**2


def fibonacci_sphere(n: int) -> np.ndarray:
    """n nearly uniform unit vectors (equal-area spiral)."""
    i = np.arange(n) + 0.5
    polar = np.arccos(1 - 2 * i / n)
    azimuth = np.pi * (1 + 5**0.5) * i
    return np.c_[np.sin(polar) * np.cos(azimuth), np.sin(polar) * np.sin(azimuth), np.cos(polar)]


def directed_mean_spheres(c_a, r_a, c_b, r_b, n=50_000) -> float:
    """Mean over sphere A's surface of the distance to sphere B's surface (numerical quadrature)."""
    points = np.asarray(c_a) + r_a * fibonacci_sphere(n)
    return float(np.mean(np.abs(np.linalg.norm(points - c_b, axis=1) - r_b)))


def lens_volume(r1, r2, d) -> float:
    """Volume of the intersection of two spheres (radii r1, r2, centre distance d)."""
    if d >= r1 + r2:
        return 0.0
    if d <= abs(r1 - r2):
        return 4 / 3 * np.pi * min(r1, r2) ** 3
    return np.pi * (r1 + r2 - d) ** 2 * (d**2 + 2 * d * r2 - 3 * r2**2 + 2 * d * r1 + 6 * r1 * r2
                                         - 3 * r1**2) / (12 * d)


SPHERE_CASES = [
    # spacing mm, radius A, radius B (mm), offset of B (mm)
    ((1.0, 1.0, 1.0), 15.0, 15.0, (4.0, 0.0, 0.0)),
    ((1.0, 1.0, 1.0), 12.0, 16.0, (2.0, 1.0, 0.0)),
    ((1.0, 1.0, 5.0), 20.0, 20.0, (0.0, 0.0, 5.0)),
    ((1.0, 1.0, 5.0), 18.0, 24.0, (0.0, 0.0, 0.0)),
    ((1.0, 1.0, 5.0), 18.0, 22.0, (0.0, 3.0, 4.0)),
    ((0.7, 1.1, 2.5), 20.0, 22.0, (3.0, 2.0, -2.0)),
]


@pytest.mark.parametrize("spacing,r_a,r_b,offset", SPHERE_CASES)
def test_spheres_match_analytic_dice_and_msd(spacing, r_a, r_b, offset):
    """Discretisation: boundary voxel centres lie up to about one voxel inside the true surface,
    so the directed means may differ from the continuous ones by a fraction of the largest voxel
    size (0.3 of it here); ignoring the spacing would miss the 5 mm cases by more than that."""
    tol = 0.3 * max(spacing)
    shape = tuple(int(np.ceil(80 / s)) for s in spacing)
    c_a = np.array([40.3, 39.6, 40.2])
    c_b = c_a + offset
    a = sphere_mask(shape, spacing, c_a, r_a)
    b = sphere_mask(shape, spacing, c_b, r_b)
    d = np.linalg.norm(offset)
    expected_dice = 2 * lens_volume(r_a, r_b, d) / (4 / 3 * np.pi * (r_a**3 + r_b**3))
    assert metrics.dice(a, b) == pytest.approx(expected_dice, abs=0.01)
    dist = metrics.surface_distances(a, b, spacing)
    ab = directed_mean_spheres(c_a, r_a, c_b, r_b)
    ba = directed_mean_spheres(c_b, r_b, c_a, r_a)
    assert dist.mean_a_to_b() == pytest.approx(ab, abs=tol)
    assert dist.mean_b_to_a() == pytest.approx(ba, abs=tol)
    assert dist.msd("mean_of_means") == pytest.approx((ab + ba) / 2, abs=tol)


def random_shape(rng: np.random.Generator, shape, threshold: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    return field > threshold * field.std()


@pytest.mark.parametrize("seed,spacing", [(0, None), (1, None), (2, None), (3, (1.0, 1.0, 3.0)),
                                          (4, (0.5, 0.5, 0.5))])
def test_agrees_with_medpy_on_random_anisotropic_shapes(seed, spacing):
    """Random spacings (one finest axis), two equal finest axes, and isotropic voxels."""
    rng = np.random.default_rng(seed)
    shape = (40, 36, 18)
    spacing = spacing or tuple(rng.uniform(0.6, 4.0, size=3))
    a = random_shape(rng, shape, 0.3)
    b = random_shape(rng, shape, 0.5)
    assert a.any() and b.any() and a[0].any()  # touches the array face: kept as boundary
    dist = metrics.surface_distances(a, b, spacing)
    assert dist.msd("pooled") == pytest.approx(medpy_binary.assd(a, b, voxelspacing=spacing), abs=1e-6)
    assert dist.mean_a_to_b() == pytest.approx(medpy_binary.asd(a, b, voxelspacing=spacing), abs=1e-6)
    assert dist.mean_b_to_a() == pytest.approx(medpy_binary.asd(b, a, voxelspacing=spacing), abs=1e-6)
    assert dist.hausdorff(95) == pytest.approx(medpy_binary.hd95(a, b, voxelspacing=spacing), abs=1e-6)
    assert metrics.dice(a, b) == pytest.approx(medpy_binary.dc(a, b), abs=1e-12)


def test_label_metrics_match_per_label_masks():
    rng = np.random.default_rng(7)
    spacing = (1.2, 0.8, 3.0)
    ref = np.zeros((30, 32, 14), dtype=np.int32)
    pred = np.zeros_like(ref)
    for value, threshold in ((2, 0.4), (17, 0.9), (41, 1.2)):
        ref[random_shape(rng, ref.shape, threshold)] = value
        pred[random_shape(rng, ref.shape, threshold)] = value
    rows = {m.label: m for m in metrics.label_metrics(pred, ref, spacing, [2, 17, 41], "pooled")}
    for value, m in rows.items():
        a, b = pred == value, ref == value
        assert m.status == metrics.OK
        assert m.dice == pytest.approx(medpy_binary.dc(a, b), abs=1e-12)
        assert m.msd_mm == pytest.approx(medpy_binary.assd(a, b, voxelspacing=spacing), abs=1e-6)
        assert m.hd95_mm == pytest.approx(medpy_binary.hd95(a, b, voxelspacing=spacing), abs=1e-6)
        assert m.mean_pred_to_ref_mm == pytest.approx(medpy_binary.asd(a, b, voxelspacing=spacing), abs=1e-6)
        assert (m.pred_voxels, m.ref_voxels) == (int(a.sum()), int(b.sum()))


def test_empty_structures_are_flagged_or_skipped():
    ref = np.zeros((10, 10, 10), dtype=np.int32)
    pred = np.zeros_like(ref)
    ref[2:5, 2:5, 2:5] = 3
    pred[5:8, 5:8, 5:8] = 4
    rows = {m.label: m for m in metrics.label_metrics(pred, ref, (1, 1, 1), [3, 4, 17])}
    assert set(rows) == {3, 4}  # 17 is empty in both: skipped
    assert rows[3].status == metrics.MISSING_IN_PREDICTION and rows[3].dice == 0.0
    assert rows[4].status == metrics.MISSING_IN_REFERENCE and rows[4].dice == 0.0
    assert np.isnan(rows[3].msd_mm) and np.isnan(rows[4].hd95_mm)
    with pytest.raises(ValueError):
        metrics.surface_distances(ref == 3, ref == 4, (1, 1, 1))


def test_boundary_of_a_cube_and_identical_masks():
    cube = np.zeros((7, 7, 7), dtype=bool)
    cube[2:5, 2:5, 2:5] = True
    edge = metrics.boundary(cube)
    assert edge.sum() == 26 and not edge[3, 3, 3]
    full = np.ones((4, 4, 4), dtype=bool)
    assert metrics.boundary(full).sum() == 64 - 8  # outside the array is background
    dist = metrics.surface_distances(cube, cube, (1.0, 2.0, 3.0))
    assert dist.msd() == 0.0 and dist.hausdorff() == 0.0


def test_parallel_plates_give_exact_distances():
    """Two one-voxel plates two slices apart along a 4 mm axis: every distance is exactly 8 mm."""
    a = np.zeros((10, 10, 10), dtype=bool)
    a[2:8, 1:9, 3] = True
    b = np.roll(a, 2, axis=2)
    dist = metrics.surface_distances(a, b, (0.7, 1.3, 4.0))
    assert np.allclose(dist.a_to_b, 8.0) and np.allclose(dist.b_to_a, 8.0)
    assert len(dist.a_to_b) == 48  # every voxel of a plate is a boundary voxel
    assert dist.msd() == pytest.approx(8.0) and dist.hausdorff() == pytest.approx(8.0)


def test_unknown_msd_mode_and_shape_mismatch():
    a = np.ones((3, 3, 3), dtype=np.int32)
    with pytest.raises(ValueError, match="MSD mode"):
        metrics.label_metrics(a, a, (1, 1, 1), [1], "median")
    with pytest.raises(ValueError, match="shape"):
        metrics.label_metrics(a, np.ones((3, 3, 4), dtype=np.int32), (1, 1, 1), [1])
