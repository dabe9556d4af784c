"""Parcellation clean-up (the original's ``predict_synthseg.postprocess`` with ``--parc``)."""

from __future__ import annotations

import numpy as np
import pytest

from morphometry.errors import ModelError
from morphometry.segment.postprocess import PARCELLATION_VALUES, Segmentation, postprocess_parcellation

INNER = (slice(2, 14), slice(1, 11), slice(3, 12))


def test_parcels_replace_cortex_only_and_posteriors_are_renormalised():
    rng = np.random.default_rng(0)
    shape = (12, 10, 9)
    labels = rng.choice(np.array([0, 2, 3, 17, 42, 41], dtype=np.int32), size=shape)
    seg = Segmentation(posteriors=np.zeros((33,) + shape, dtype=np.float32), labels=labels)
    logits = rng.normal(size=(69, 16, 12, 14)) * 3
    parc = (np.exp(logits) / np.exp(logits).sum(axis=0)).astype(np.float32)
    out = postprocess_parcellation(parc, seg, INNER)
    raw = parc[(slice(None),) + INNER].astype(np.float64)
    cortex = np.isin(labels, (3, 42))
    # outside the cortex: the hard labels are unchanged, channel 0 = 1 / (1 + sum of parcels)
    assert np.array_equal(out.labels[~cortex], labels[~cortex])
    np.testing.assert_allclose(out.posteriors[0][~cortex], 1 / (1 + raw[1:].sum(axis=0))[~cortex], rtol=1e-5)
    # inside: channel 0 is 0, the parcel is the argmax of the network's parcel channels
    assert np.all(out.posteriors[0][cortex] == 0)
    expected = PARCELLATION_VALUES[1 + np.argmax(raw[1:], axis=0)]
    assert np.array_equal(out.labels[cortex], expected[cortex])
    assert set(np.unique(out.labels[cortex])) <= set(range(1001, 2036))
    np.testing.assert_allclose(out.posteriors.sum(axis=0), 1.0, rtol=1e-5)
    assert np.array_equal(seg.labels, labels)  # input untouched


def test_parcellation_values():
    assert len(PARCELLATION_VALUES) == 69
    assert PARCELLATION_VALUES[0] == 0 and PARCELLATION_VALUES[1] == 1001 and PARCELLATION_VALUES[35] == 2001
    assert 1004 not in PARCELLATION_VALUES and 2004 not in PARCELLATION_VALUES
    assert np.all(np.diff(PARCELLATION_VALUES) > 0)


def test_wrong_parcellation_shape_is_a_model_error():
    seg = Segmentation(posteriors=np.zeros((33, 12, 10, 9), dtype=np.float32), labels=np.zeros((12, 10, 9), np.int32))
    with pytest.raises(ModelError, match="parcellation output"):
        postprocess_parcellation(np.zeros((33, 16, 12, 14), dtype=np.float32), seg, INNER)
