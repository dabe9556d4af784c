"""Soft volumes with the original's float32 arithmetic, against NumPy doing what the original does."""

from __future__ import annotations

import numpy as np
import pytest

from morphometry.labels import PARCELLATION_LABELS, SYNTHSEG_2, TOTAL_INTRACRANIAL
from morphometry.orientation import RasAlignment
from morphometry.volumes import channel_sums, parcel_volumes, soft_volumes, volumes_from_sums


def posteriors(shape, channels=33, seed=0) -> np.ndarray:
    """Channels-last float32 posteriors with many small values (whose float32 sum loses them)."""
    rng = np.random.default_rng(seed)
    p = rng.random((*shape, channels), dtype=np.float32) ** 6
    return (p / p.sum(-1, keepdims=True)).astype(np.float32)


ALIGNMENTS = [RasAlignment((0, 1, 2), (False, False, False)), RasAlignment((0, 2, 1), (True, False, True)),
              RasAlignment((2, 0, 1), (False, True, True)), RasAlignment((1, 2, 0), (True, True, False))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("alignment", ALIGNMENTS, ids=lambda a: f"perm{a.perm}-flips{a.flips}")
def test_channel_sums_are_numpy_sums_of_the_original_view(alignment, dtype):
    """The original sums its channels-last posteriors, a crop of the padded RAS array viewed in the
    scan's voxel order, with ``np.sum(axis=(0, 1, 2))``: voxel after voxel, in memory order, each
    axis in the view's direction; float32, or float64 where it pasted a crop into a float64 array.
    Bit for bit."""
    padded = posteriors((23, 31, 19)).astype(dtype)
    inner = padded[2:21, 3:29, 1:18]  # a view, as the original's crop
    native = alignment.invert(inner)  # a view, as the original's alignment back to the input
    expected = np.sum(native, axis=(0, 1, 2))
    assert expected.dtype == dtype
    ours = channel_sums(np.moveaxis(inner.astype(np.float32), -1, 0), alignment.flips, dtype)
    assert ours.dtype == dtype
    np.testing.assert_array_equal(ours, expected)


def test_float32_accumulation_loses_small_posteriors():
    p = posteriors((64, 64, 64), channels=3, seed=1)
    exact = p.sum(axis=(0, 1, 2), dtype=np.float64)
    ours = channel_sums(np.moveaxis(p, -1, 0)).astype(np.float64)
    assert np.all(ours != exact)
    assert np.abs(ours / exact - 1).max() < 1e-3


def test_volumes_are_float32_products_rounded_in_float32():
    sums = np.array([5.0, 1234567.9, 0.12345, 2.5, *range(29)], dtype=np.float32)
    vv = float(np.float32(0.96) * np.float32(0.96) * np.float32(0.96))
    vols = volumes_from_sums(sums, SYNTHSEG_2, vv)
    structures = sums[1:]
    expected = np.around(structures * np.float32(vv), 3)
    for lab, value in zip(SYNTHSEG_2.labels[1:], expected):
        assert np.float32(vols[lab.name]) == value
        assert str(np.float32(vols[lab.name])) == str(value)  # the CSV text survives the table's float
    assert np.float32(vols[TOTAL_INTRACRANIAL]) == np.around(np.sum(structures) * np.float32(vv), 3)
    assert list(vols)[0] == TOTAL_INTRACRANIAL and "background" not in vols


def test_soft_volumes_sum_then_scale():
    p = np.moveaxis(posteriors((9, 8, 7)), -1, 0)
    assert soft_volumes(p, SYNTHSEG_2, 2.0, (True, False, True)) == volumes_from_sums(
        channel_sums(p, (True, False, True)), SYNTHSEG_2, 2.0)


@pytest.mark.parametrize(("reference", "values"), [("white_matter", (2, 41)), ("cortex", (3, 42))])
def test_parcels_sum_to_the_reference_structures(reference, values):
    rng = np.random.default_rng(2)
    parcels = rng.random(68).astype(np.float32) * 100
    seg = rng.random(33).astype(np.float32) * 1000
    vols = parcel_volumes(parcels, seg, SYNTHSEG_2, 1.5, reference)
    assert list(vols) == [p.name for p in PARCELLATION_LABELS]
    target = np.float32(seg[SYNTHSEG_2.channel_of(values[0])] + seg[SYNTHSEG_2.channel_of(values[1])])
    expected = np.around(parcels / np.sum(parcels) * target * np.float32(1.5), 3)
    np.testing.assert_array_equal(np.float32(list(vols.values())), expected)
    assert sum(vols.values()) == pytest.approx(float(target) * 1.5, rel=1e-5)


def test_float64_sums_stay_float64_and_parcels_are_rescaled_in_float32():
    """A cropped scan (float64 structure sums in the original): total, products and rounding in
    float64; the parcel ratios stay float32 (a float32 array times a float64 scalar, NumPy 1.x)."""
    rng = np.random.default_rng(3)
    seg = rng.random(33) * 1000
    vols = volumes_from_sums(seg, SYNTHSEG_2, 0.9)
    assert vols[TOTAL_INTRACRANIAL] == round(float(np.around(np.sum(seg[1:]) * 0.9, 3)), 3)
    parcels = rng.random(68).astype(np.float32) * 100
    target = seg[SYNTHSEG_2.channel_of(2)] + seg[SYNTHSEG_2.channel_of(41)]
    expected = np.around((parcels / np.sum(parcels) * np.float32(target)).astype(np.float64) * 0.9, 3)
    np.testing.assert_array_equal(list(parcel_volumes(parcels, seg, SYNTHSEG_2, 0.9).values()), expected)


def test_parcels_are_zero_when_the_reference_is_empty():
    seg = np.zeros(33, dtype=np.float32)
    assert set(parcel_volumes(np.ones(68, np.float32), seg, SYNTHSEG_2, 1.0).values()) == {0.0}
    with pytest.raises(ValueError, match="reference"):
        parcel_volumes(np.ones(68, np.float32), seg, SYNTHSEG_2, 1.0, "grey_matter")
