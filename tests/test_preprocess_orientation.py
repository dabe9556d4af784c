"""RAS alignment (morphometry.orientation) for all 48 signed axis permutations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from morphometry.orientation import RasAlignment, ras_alignment

SHAPE = (5, 6, 7)
ZOOMS = (0.9, 1.3, 4.0)


def _signed_permutations():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            yield perm, signs


def _affine(perm, signs, rotation_deg: float = 0.0, zooms=ZOOMS) -> np.ndarray:
    """Voxel axis i points along world axis perm[i] with sign signs[i] (optionally rotated)."""
    lin = np.zeros((3, 3))
    for i in range(3):
        lin[perm[i], i] = signs[i] * zooms[i]
    theta = np.deg2rad(rotation_deg)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ lin
    affine[:3, 3] = (12.5, -30.0, 7.25)
    return affine


def _world_grid(affine: np.ndarray, shape) -> np.ndarray:
    """(X, Y, Z, 3) world coordinates of every voxel centre."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    return idx @ affine[:3, :3].T + affine[:3, 3]


CASES = list(_signed_permutations())


def test_there_are_48_cases():
    assert len(CASES) == 48
    assert len({(p, s) for p, s in CASES}) == 48


@pytest.mark.parametrize("perm,signs", CASES)
def test_aligned_affine_is_diagonal_positive(perm, signs):
    affine = _affine(perm, signs)
    alignment = ras_alignment(affine)
    aligned = alignment.aligned_affine(affine, SHAPE)
    lin = aligned[:3, :3]
    assert np.allclose(lin - np.diag(np.diag(lin)), 0)
    assert np.all(np.diag(lin) > 0)
    # the aligned voxel sizes are the native ones, permuted
    expected = [ZOOMS[perm.index(j)] for j in range(3)]
    assert np.allclose(np.diag(lin), expected)


@pytest.mark.parametrize("perm,signs", CASES)
def test_round_trip_and_world_positions(perm, signs):
    affine = _affine(perm, signs)
    alignment = ras_alignment(affine)
    world = _world_grid(affine, SHAPE)  # native voxel -> its world position (channels last)
    aligned = alignment.apply(world)
    # every aligned voxel holds the world point that the aligned affine gives for its index
    aligned_affine = alignment.aligned_affine(affine, SHAPE)
    assert np.allclose(aligned, _world_grid(aligned_affine, aligned.shape[:3]))
    # round trip, 3-D and 4-D
    assert np.array_equal(alignment.invert(aligned), world)
    rng = np.random.default_rng(0)
    scalar = rng.random(SHAPE)
    assert np.array_equal(alignment.invert(alignment.apply(scalar)), scalar)
    assert alignment.apply(scalar).shape == tuple(SHAPE[p] for p in alignment.perm)


@pytest.mark.parametrize("perm,signs", CASES)
def test_oblique_isotropic_affine_gives_the_same_alignment(perm, signs):
    iso = (1.0, 1.0, 1.0)
    assert ras_alignment(_affine(perm, signs, 30.0, iso)) == ras_alignment(_affine(perm, signs, 0.0, iso))


def test_oblique_anisotropic_alignment_depends_on_voxel_size():
    # The rule reads inv(A), whose rows scale with 1/voxel size: a 20 degree tilt of a 0.9 mm axis
    # beats a 4 mm axis. This is why preprocessing aligns the *resampled* (isotropic) grid.
    perm, signs = (1, 2, 0), (1, 1, 1)  # the 0.9 mm and 4 mm voxel axes span the tilted x-y plane
    assert ras_alignment(_affine(perm, signs, 0.0)).perm == (2, 0, 1)
    assert ras_alignment(_affine(perm, signs, 20.0)).perm != (2, 0, 1)
    assert ras_alignment(_affine(perm, signs, 20.0, (1.0, 1.0, 1.0))).perm == (2, 0, 1)


def test_identity_is_a_no_op():
    alignment = ras_alignment(np.diag([1.0, 1.0, 1.0, 1.0]))
    assert alignment == RasAlignment((0, 1, 2), (False, False, False))
    data = np.arange(24.0).reshape(2, 3, 4)
    assert np.shares_memory(alignment.apply(data), data)


def test_degenerate_picks_still_give_a_permutation():
    # every world axis picks voxel axis 0 in inv(A): the rule must still return a permutation
    inverse = np.array([[1.0, 1.0, 1.0], [0.5, 0.1, 0.0], [0.0, 0.5, 0.1]])
    affine = np.eye(4)
    affine[:3, :3] = np.linalg.inv(inverse)
    alignment = ras_alignment(affine)
    assert sorted(alignment.perm) == [0, 1, 2]
    data = np.random.default_rng(1).random(SHAPE)
    assert np.array_equal(alignment.invert(alignment.apply(data)), data)
