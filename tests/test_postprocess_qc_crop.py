"""QC input crop (synthseg-facts.md 2.12, pitfall 14)."""

from __future__ import annotations

import numpy as np

from segment.postprocess import QC_CROP_SIZE, QC_EXCLUDED_CHANNELS, qc_crop


def test_defaults_are_the_original_constants():
    assert QC_CROP_SIZE == 224
    assert QC_EXCLUDED_CHANNELS == (0, 24)


def test_box_is_centred_with_the_odd_voxel_before():
    indices = np.zeros((40, 40, 40), dtype=np.int8)
    indices[10:15, 20:26, 5:40] = 3  # box sizes 5, 6, 35
    out = qc_crop(indices, size=16)
    assert out.shape == (16, 16, 16)
    # axis 0: extra 11 -> 6 before, 5 after: the box starts at 6; axis 1: extra 10 -> 5 and 5
    assert np.array_equal(np.flatnonzero(out.any(axis=(1, 2))), np.arange(6, 11))
    assert np.array_equal(np.flatnonzero(out.any(axis=(0, 2))), np.arange(5, 11))
    # axis 2: box 35 > 16: extra -19 -> lo += 9, hi -= 10: window [14, 30) of the map
    assert np.array_equal(out[6:11, 5:11, :], indices[10:15, 20:26, 14:30])


def test_window_outside_the_map_is_zero_padded():
    indices = np.zeros((12, 12, 12), dtype=np.int8)
    indices[0:2, 0:2, 0:2] = 5
    out = qc_crop(indices, size=10)
    # box [0, 2) -> [-4, 6): four zero slices before, then the map
    assert np.all(out[:4] == 0) and np.all(out[:, :4] == 0) and np.all(out[:, :, :4] == 0)
    assert np.array_equal(out[4:, 4:, 4:], indices[:6, :6, :6])


def test_excluded_indices_do_not_count_but_csf_index_16_does():
    indices = np.zeros((30, 30, 30), dtype=np.int8)
    indices[5:7, 5:7, 5:7] = 24  # channel index 24 (label 47): excluded, the original's quirk
    indices[20:22, 20:22, 20:22] = 16  # channel index 16 (CSF): counted
    out = qc_crop(indices, size=6)
    assert np.count_nonzero(out == 16) == 8
    assert np.count_nonzero(out == 24) == 0


def test_empty_map_takes_the_first_window():
    indices = np.zeros((8, 9, 10), dtype=np.int8)
    indices[0, 0, 0] = 24
    out = qc_crop(indices, size=4)
    assert out[0, 0, 0] == 24 and out.sum() == 24  # window [0, 4) on every axis
