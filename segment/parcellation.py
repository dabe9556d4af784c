"""Postprocessing of the cortical parcellation (synthseg-facts.md 2.9, 2.11)."""

from __future__ import annotations

import numpy as np

from morphometry.labels import PARCELLATION_LABELS

CORTEX_LABELS = (3, 42)
PARCEL_VALUES = np.array([0] + [p.value for p in PARCELLATION_LABELS], dtype=np.int32)


def parcellate(parc_posteriors: np.ndarray, inner: tuple[slice, ...], labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parcel labels written into the cortex of the postprocessed ``labels`` (RAS-aligned, unpadded),
    and the 68 parcel posterior sums (voxels).

    Channel 0 of the (padded) parcellation posteriors is replaced by 1 outside the cortex mask and
    0 inside it, the posteriors are renormalised, and cortex voxels take the argmax parcel.
    """
    post = parc_posteriors[(slice(None), *inner)].astype(np.float32, copy=True)
    cortex = np.isin(labels, CORTEX_LABELS)
    post[0] = ~cortex
    total = post.sum(axis=0)
    empty = total <= 0
    post[0][empty] = 1.0
    total[empty] = 1.0
    post /= total
    out = labels.copy()
    out[cortex] = PARCEL_VALUES[np.argmax(post[:, cortex], axis=0)]
    return out, post[1:].reshape(post.shape[0] - 1, -1).sum(axis=1, dtype=np.float64)
