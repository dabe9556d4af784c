"""The fast postprocessing fed slab by slab (FastStream) against the dense postprocessing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from morphometry.errors import ModelError
from morphometry.labels import SYNTHSEG_2
from morphometry.segment.postprocess import PostprocessConfig, postprocess
from morphometry.segment.streamed_postprocess import FastStream
from morphometry.volumes import channel_sums

C = SYNTHSEG_2.n_channels
PADDED = (20, 18, 16)
INNER = (slice(3, 17), slice(2, 15), slice(1, 16))


def posteriors(seed: int, sharpness: float = 6.0) -> np.ndarray:
    """Softmax of smooth random logits: blobs of labels, two foreground islands, exact threshold
    values and all-zero voxels; background (1) in the padding."""
    rng = np.random.default_rng(seed)
    logits = ndimage.gaussian_filter(rng.normal(size=(C, *PADDED)), sigma=(0, 1.5, 1.5, 1.5)) * sharpness * 8
    p = np.exp(logits - logits.max(axis=0))
    p = (p / p.sum(axis=0)).astype(np.float32)
    p[0, :, :, :8] += 3.0  # background dominates one half, so the foreground splits into components
    p /= p.sum(axis=0)
    p[0, 9:11] = 1.0  # a wall of background between islands
    p[1:, 9:11] = 0.0
    p[5, 4, 4, 10] = np.float32(0.2)  # exactly the fast threshold: not kept
    p[:, 5, 5, 12] = 0.0  # a voxel with no posterior at all: becomes background
    outside = np.ones(PADDED, bool)
    outside[INNER] = False
    p[:, outside] = 0.0
    p[0, outside] = 1.0
    return p


def stream(p: np.ndarray, rows: int, config: PostprocessConfig):
    sink = FastStream(SYNTHSEG_2, PADDED, INNER, config)
    for a in range(0, PADDED[0], rows):
        b = min(a + rows, PADDED[0])
        sink(a, b, np.ascontiguousarray(p[:, a:b]))
    return sink.result()


@pytest.mark.parametrize("seed,rows", [(0, 2), (1, 4), (2, 6), (3, 20)])
def test_stream_equals_dense_fast_postprocessing(seed, rows):
    p = posteriors(seed)
    config = PostprocessConfig(topology=False)
    dense = postprocess(p, SYNTHSEG_2, INNER, config)
    streamed = stream(p, rows, config)
    assert (dense.labels != 0).sum() > 50  # a real segmentation, not an empty one
    np.testing.assert_array_equal(streamed.labels, dense.labels)
    np.testing.assert_array_equal(streamed.background, dense.posteriors[0])
    for c in range(1, C):
        full = np.zeros(dense.posteriors.shape[1:], np.float32).ravel()
        if c in streamed.channels:
            index, values = streamed.channels[c]
            full[index] = values
        np.testing.assert_array_equal(full.reshape(dense.posteriors.shape[1:]), dense.posteriors[c])
    for reverse in itertools.product((False, True), repeat=3):
        for dtype in (np.float32, np.float64):
            np.testing.assert_array_equal(streamed.channel_sums(reverse, dtype),
                                          channel_sums(dense.posteriors, reverse, dtype))


def test_stream_keeps_only_the_largest_foreground_component():
    p = posteriors(4)
    streamed = stream(p, 4, PostprocessConfig(topology=False))
    fg = streamed.labels != 0
    labelled, n = ndimage.label(fg)
    assert n == 1  # the island behind the wall is gone
    before = np.sum(p[1:][(slice(None),) + INNER], axis=0) > 0.25
    assert before[:6].any() and before[11:].any()


def test_stream_without_foreground_is_background():
    p = np.zeros((C, *PADDED), np.float32)
    p[0] = 1.0
    streamed = stream(p, 6, PostprocessConfig(topology=False))
    assert not streamed.channels and (streamed.labels == 0).all() and (streamed.background == 1).all()


def test_stream_refuses_topology_and_missing_rows():
    with pytest.raises(ValueError, match="topology"):
        FastStream(SYNTHSEG_2, PADDED, INNER, PostprocessConfig(topology=True))
    sink = FastStream(SYNTHSEG_2, PADDED, INNER, PostprocessConfig(topology=False))
    with pytest.raises(ModelError, match="expected"):
        sink(0, 8, np.zeros((C, 8, 5, 5), np.float32))
    sink(0, 8, np.zeros((C, 8, *PADDED[1:]), np.float32))
    with pytest.raises(Exception, match="covered 5 of 14 rows"):
        sink.result()
