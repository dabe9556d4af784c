"""Crop/pad and paste-back exactness: network space -> native voxel order of the output grid."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from morphometry.io import Scan, ScanInfo
from morphometry.labels import SYNTHSEG_2
from morphometry.orientation import ras_alignment
from morphometry.segment.postprocess import PostprocessConfig, postprocess, to_native
from morphometry.segment.preprocess import PreprocessConfig, preprocess


def make_scan(data: np.ndarray, affine: np.ndarray) -> Scan:
    zooms = tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0))
    alignment = ras_alignment(affine)
    info = ScanInfo(shape=data.shape, zooms=zooms, ras_spacing=tuple(zooms[p] for p in alignment.perm),
                    alignment=alignment)
    return Scan(path=Path("scan.nii.gz"), data=data.astype(np.float32), affine=affine, header=None, info=info)


def signed_permutation_affine(perm, signs, zooms) -> np.ndarray:
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for i in range(3):
        affine[perm[i], i] = signs[i] * zooms[i]
    affine[:3, 3] = (-20.0, 15.0, 3.0)
    return affine


def world_grid(affine: np.ndarray, shape) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), axis=-1)
    return idx @ affine[:3, :3].T + affine[:3, 3]


ORIENTATIONS = [(p, s) for p in itertools.permutations(range(3)) for s in itertools.product((1, -1), repeat=3)]


@pytest.mark.parametrize("perm,signs", ORIENTATIONS[::3])
def test_network_space_pastes_back_exactly_to_the_native_grid(perm, signs):
    rng = np.random.default_rng(0)
    data = rng.gamma(3.0, 30.0, size=(23, 30, 17)).astype(np.float32)
    pre = preprocess(make_scan(data, signed_permutation_affine(perm, signs, (1.0, 1.0, 1.0))), PreprocessConfig())
    assert not pre.resampled
    lo, hi = pre.intensity_range
    expected = ((np.clip(data, lo, hi) - np.float32(lo)) / np.float32(hi - lo)).astype(np.float32)
    native = to_native(pre.image[pre.inner], pre)
    assert native.shape == data.shape
    np.testing.assert_allclose(native, expected, rtol=0, atol=1e-6)
    # world positions agree: aligned grid (aligned_affine) -> native grid (grid_affine)
    assert np.allclose(to_native(world_grid(pre.aligned_affine, pre.aligned_shape), pre),
                       world_grid(pre.grid_affine, pre.grid_shape))


def test_resampled_outputs_land_on_the_resampled_grid():
    affine = signed_permutation_affine((2, 0, 1), (-1, 1, -1), (0.7, 0.7, 5.0))
    data = np.random.default_rng(1).random((30, 28, 9)).astype(np.float32)
    pre = preprocess(make_scan(data, affine), PreprocessConfig())
    assert pre.resampled
    assert pre.grid_shape == (21, 20, 45)
    aligned = world_grid(pre.aligned_affine, pre.aligned_shape)
    np.testing.assert_allclose(to_native(aligned, pre), world_grid(pre.grid_affine, pre.grid_shape), atol=1e-9)
    np.testing.assert_allclose(to_native(pre.alignment.apply(pre.grid_image), pre), pre.grid_image)


def test_segmentation_posteriors_and_labels_go_back_channels_last():
    affine = signed_permutation_affine((1, 2, 0), (1, -1, -1), (1.0, 1.0, 1.0))
    data = np.random.default_rng(2).random((20, 26, 31)).astype(np.float32)
    pre = preprocess(make_scan(data, affine), PreprocessConfig())
    c = SYNTHSEG_2.n_channels
    post = np.zeros((c,) + pre.image.shape, dtype=np.float32)
    post[0] = 1.0
    marker = tuple(slice(s.start + 2, s.start + 6) for s in pre.inner)  # a structure near the corner
    post[0][marker] = 0.1
    post[SYNTHSEG_2.channel_of(17)][marker] = 0.9
    seg = postprocess(post, SYNTHSEG_2, pre.inner, PostprocessConfig(topology=True))
    assert seg.labels.shape == pre.aligned_shape
    labels = to_native(seg.labels, pre)
    channels_last = to_native(np.moveaxis(seg.posteriors, 0, -1), pre)
    assert labels.shape == data.shape and channels_last.shape == data.shape + (c,)
    # the aligned corner block at (2..5)^3 is, natively, where the aligned->native index map sends it
    aligned_index = world_grid(np.eye(4), pre.aligned_shape)
    native_index = to_native(aligned_index, pre)  # native voxel -> its aligned index
    in_block = np.all((native_index >= 2) & (native_index <= 5), axis=-1)
    assert np.array_equal(labels == 17, in_block)
    assert np.array_equal(channels_last[..., SYNTHSEG_2.channel_of(17)] > 0, in_block)


def test_shape_mismatch_is_refused():
    pre = preprocess(make_scan(np.random.default_rng(3).random((10, 11, 12)), np.eye(4)), PreprocessConfig())
    with pytest.raises(ValueError, match="does not match"):
        to_native(np.zeros((11, 10, 12)), pre)
