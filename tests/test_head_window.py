"""The head window (opt-in): the networks run on the head's box plus a margin, results pasted back.

Geometry is checked against the definition (box of the thresholded head, margin, ends on
multiples of 32 of the padded image); the paste against an independent computation: the same
window outputs placed by hand into a whole padded grid of background, then postprocessed as a
whole-image run would be.
"""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest

from morphometry.io import check_image
from morphometry.labels import SYNTHSEG_2
from morphometry.segment.batch import prepare
from morphometry.segment.postprocess import PostprocessConfig, postprocess, to_native
from morphometry.segment.preprocess import PreprocessConfig
from morphometry.segment.segmenter import Segmenter
from morphometry.volumes import channel_sums, volumes_from_sums


def small_head(shape=(150, 170, 140), centre=(70, 90, 80), radii=(34, 42, 36), seed=0) -> nib.Nifti1Image:
    """An ellipsoidal 'head' (bright shell, darker inside) in a large field of air, 1 mm, LAS."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    r = np.sqrt(sum(((g - c) / a) ** 2 for g, c, a in zip(grid, centre, radii)))
    data = 120.0 * (r < 1) - 50 * (r < 0.8) + 30 * (r < 0.4) + rng.normal(0, 2, shape)
    return nib.Nifti1Image(np.maximum(data, 0).astype(np.float32), np.diag([-1.0, 1.0, 1.0, 1.0]))


def preprocessed(img, **settings):
    return prepare(check_image(img, "head"), PreprocessConfig(**settings))


@pytest.mark.parametrize("margin", [0.0, 8.0, 24.0])
def test_window_is_the_head_box_plus_margin_on_multiples_of_32(margin):
    pre = preprocessed(small_head(), head_window=True, head_margin_mm=margin)
    assert pre.window is not None
    head = pre.image > 0.1
    pad = math.ceil(margin)
    for axis, w in enumerate(pre.window):
        others = tuple(a for a in range(3) if a != axis)
        area = math.prod(head[pre.inner].shape[a] for a in others)
        rows = np.flatnonzero(np.count_nonzero(head, axis=others) >= 0.002 * area)  # slices that are head
        lo, hi = rows[0], rows[-1] + 1
        assert w.start % 32 == 0 and (w.stop % 32 == 0 or w.stop == pre.image.shape[axis])
        assert w.start <= max(lo - pad, 0) and w.stop >= min(hi + pad, pre.image.shape[axis])
        assert w.start > lo - pad - 32 and w.stop < hi + pad + 32  # no more than the rounding
    assert np.array_equal(pre.network_image, pre.image[pre.window])
    assert pre.network_image.flags.c_contiguous


def test_what_the_networks_see_is_the_analysed_box_of_the_scan():
    for settings in ({}, {"crop": (96, 96, 96)}):
        pre = preprocessed(small_head(), head_window=True, head_margin_mm=8.0, **settings)
        whole = pre.image[pre.inner]  # the (cropped) aligned, normalised scan
        offsets = [0, 0, 0] if pre.crop is None else [c.start for c in pre.crop]
        box = tuple(slice(b.start - o, b.stop - o) for b, o in zip(pre.analysed_box, offsets))
        assert np.array_equal(pre.network_image[pre.network_inner], whole[box])
        outside = np.ones(whole.shape, bool)
        outside[box] = False
        assert whole[outside].max(initial=0) <= 0.1  # only air is left out


def test_no_window_when_off_or_when_the_head_fills_the_image():
    assert preprocessed(small_head()).window is None  # off by default
    full = small_head(shape=(80, 96, 80), centre=(40, 48, 40), radii=(38, 46, 38))
    pre = preprocessed(full, head_window=True, min_size=32)
    assert pre.window is None and pre.analysed_box is None
    assert pre.network_image is pre.image


@pytest.mark.parametrize("method", ["synthseg+", "synthseg"])
def test_window_results_equal_a_hand_made_paste_into_the_whole_grid(tiny_bundle, method):
    img = small_head()
    seg = Segmenter(tiny_bundle, method, "cpu", 1, head_window=True, engine="onnxruntime")
    ours = seg.segment(img)
    pre = prepare(check_image(img, "head"), seg.preprocessing)
    assert pre.window is not None
    ((m, _, window_post),) = list(seg.engine.segment(pre.network_image))
    whole = np.zeros((window_post.shape[0], *pre.image.shape), np.float32)
    whole[0] = 1.0
    whole[(slice(None), *pre.window)] = window_post
    expected = postprocess(whole, SYNTHSEG_2, pre.inner, PostprocessConfig(topology=m.topology))
    assert np.array_equal(np.asarray(ours.labels.dataobj), to_native(expected.labels, pre))
    volumes = volumes_from_sums(channel_sums(expected.posteriors, pre.alignment.flips), SYNTHSEG_2,
                                pre.voxel_volume_mm3)
    for name, value in volumes.items():
        assert ours.volumes[name] == pytest.approx(value, rel=1e-5, abs=1e-3), name
