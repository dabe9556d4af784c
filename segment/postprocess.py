"""Postprocessing of network outputs (the original's ``SynthSeg/predict_synthseg.py``,
function ``postprocess``).

A. (fast mode: remove the padding first) keep the largest 6-connected component of
   "sum of the non-background channels > 0.25"; non-background channels are set to 0 outside it.
B. topology mode: per topology class k != 0 (ascending), the union of "channel > 0.25" over the
   class's channels -> largest 6-connected component -> the class's channels are multiplied by
   it; computed on the padded volume, then the padding is removed.
C. fast mode: non-background channels <= 0.2 are set to 0.
D. renormalise every voxel over channels; hard label = label of the argmax (ties: lowest channel).
   A voxel whose channels are all 0 becomes background (posterior 1 on channel 0) instead of the
   original's 0/0.
Largest component = most voxels, ties to the lowest component id (first in raster order). A class
with no voxel above its threshold has an empty largest component: its channels become 0 everywhere.
Thresholds are compared in float32, as the original's (a posterior of float32(0.2) is not > 0.2).

Components, masking, renormalisation and argmax work on bounding boxes (of the foreground
component, of each kept class or channel), so most of the cost follows the structures' extent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from morphometry.errors import ModelError
from morphometry.labels import PARCELLATION_LABELS, LabelSet
from morphometry.segment.preprocess import Preprocessed

Box = tuple[slice, slice, slice]

CORTEX_VALUES = (3, 42)  # left and right cerebral cortex: where parcels are written (2.9)
PARCELLATION_VALUES = np.array([0] + [p.value for p in PARCELLATION_LABELS], dtype=np.int32)
"""FreeSurfer values of the 69 parcellation channels (0, 1001..1035 without 1004, 2001..)."""


@dataclass(frozen=True)
class PostprocessConfig:
    """``topology``: SynthSeg 2.0 (non-fast) clean-up; False: fast mode (SynthSeg+ / robust)."""

    topology: bool
    foreground_threshold: float = 0.25  # sum of non-background posteriors
    topology_threshold: float = 0.25  # per-channel posterior, topology mode
    fast_threshold: float = 0.2  # non-background posteriors kept where > this, fast mode
    in_place: bool = False  # overwrite the network output and return a view of it (no 2nd copy)


@dataclass
class Segmentation:
    """Renormalised posteriors (C, x, y, z) float32 and hard labels (x, y, z) int32 FreeSurfer
    values, both RAS-aligned with the padding removed."""

    posteriors: np.ndarray
    labels: np.ndarray


def postprocess(posteriors: np.ndarray, label_set: LabelSet, inner: Box, config: PostprocessConfig) -> Segmentation:
    """Clean up network posteriors (C, X, Y, Z) in padded space; ``inner`` locates the volume.

    The input is left untouched unless ``config.in_place``: then its inner part is overwritten and
    the returned posteriors are a view of it (saves allocating a second array of that size).
    """
    if posteriors.ndim != 4 or posteriors.shape[0] != label_set.n_channels:
        raise ModelError(f"segmentation output has shape {posteriors.shape}; expected "
                         f"({label_set.n_channels}, X, Y, Z) for {label_set.n_channels} labels")
    inner = tuple(inner)  # type: ignore[assignment]
    out = posteriors[(slice(None),) + inner]
    if not config.in_place:
        out = out.copy()
    # Components are searched in the padded volume in topology mode, in the inner one in fast mode.
    work = posteriors if config.topology else out
    frame = inner if config.topology else tuple(slice(0, n) for n in out.shape[1:])
    kept: dict[int, Box] = {}
    foreground = np.sum(work[1:], axis=0, dtype=np.float32) > config.foreground_threshold
    found = largest_component(foreground)
    if found is None:
        out[1:] = 0
    else:
        step = _topology_step if config.topology else _fast_step
        step(work, out, kept, label_set, found, frame, config)
    labels = _renormalise_and_label(out, kept, label_set.values)
    return Segmentation(posteriors=out, labels=labels)


def _fast_step(work: np.ndarray, out: np.ndarray, kept: dict[int, Box], label_set: LabelSet,
               foreground: tuple[Box, np.ndarray], frame: Box, config: PostprocessConfig) -> None:
    """Steps A (outside the foreground component) and C on ``out`` (here ``work`` is ``out``)."""
    fg_box, fg_keep = foreground
    mask = np.empty(fg_keep.shape, dtype=bool)
    for c in range(1, label_set.n_channels):
        np.greater(work[(c,) + fg_box], config.fast_threshold, out=mask)
        mask &= fg_keep
        sub = bounding_box(mask)
        if sub is None:
            out[c] = 0
        else:
            _keep_only(out, c, mask[sub], _offset(sub, fg_box), frame, kept)


def _topology_step(work: np.ndarray, out: np.ndarray, kept: dict[int, Box], label_set: LabelSet,
                   foreground: tuple[Box, np.ndarray], frame: Box, config: PostprocessConfig) -> None:
    """Steps A (outside the foreground component) and B on ``out``; components in ``work``.

    Each class reads only its own channels before they are masked, so ``out`` may alias ``work``.
    """
    fg_box, fg_keep = foreground
    classes = label_set.topology_classes
    for c in np.flatnonzero(classes == 0)[1:]:  # non-background channels of class 0 (CSF)
        _keep_only(out, int(c), fg_keep, fg_box, frame, kept)
    union = np.empty(fg_keep.shape, dtype=bool)
    scratch = np.empty(fg_keep.shape, dtype=bool)
    for k in np.unique(classes[classes != 0]):
        channels = [int(c) for c in np.flatnonzero(classes == k)]
        np.greater(work[(channels[0],) + fg_box], config.topology_threshold, out=union)
        for c in channels[1:]:
            np.greater(work[(c,) + fg_box], config.topology_threshold, out=scratch)
            union |= scratch
        union &= fg_keep
        found = largest_component(union)
        for c in channels:
            if found is None:
                out[c] = 0
            else:
                _keep_only(out, c, found[1], _offset(found[0], fg_box), frame, kept)


def largest_component(mask: np.ndarray) -> tuple[Box, np.ndarray] | None:
    """Largest 6-connected component of a boolean mask as (bounding box, mask inside the box).

    Ties go to the lowest component id (first reached in raster order); None if the mask is empty.
    """
    box = bounding_box(mask)
    if box is None:
        return None
    labelled, n = ndimage.label(mask[box])
    counts = np.bincount(labelled.ravel(), minlength=n + 1)
    counts[0] = 0
    best = int(np.argmax(counts))
    sub = ndimage.find_objects(labelled, max_label=best)[best - 1]
    keep = labelled[sub] == best
    return _offset(sub, box), keep


def bounding_box(mask: np.ndarray) -> Box | None:
    """Smallest box holding every True voxel of a 3-D mask, or None if there is none."""
    plane = mask.any(axis=2)
    rows = np.flatnonzero(plane.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(plane.any(axis=0))
    depth = np.flatnonzero(mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].any(axis=(0, 1)))
    return (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1),
            slice(int(depth[0]), int(depth[-1]) + 1))


def _offset(box: Box, origin: Box) -> Box:
    return tuple(slice(b.start + o.start, b.stop + o.start) for b, o in zip(box, origin))  # type: ignore[return-value]


def _intersect(box: Box, frame: Box) -> Box:
    """``box`` clipped to ``frame``, in the frame's coordinates (possibly empty)."""
    out = []
    for b, f in zip(box, frame):
        start, stop = max(b.start, f.start), min(b.stop, f.stop)
        out.append(slice(start - f.start, max(stop, start) - f.start))
    return tuple(out)  # type: ignore[return-value]


def _keep_only(out: np.ndarray, channel: int, mask: np.ndarray, box: Box, frame: Box, kept: dict[int, Box]) -> None:
    """Zero ``out[channel]`` except where ``mask`` (covering ``box`` of the work volume, of which
    ``out`` covers ``frame``) is True; records the box that may stay non-zero."""
    target = out[channel]
    dst = _intersect(box, frame)
    if any(s.stop <= s.start for s in dst):
        target[...] = 0
        return
    for axis, s in enumerate(dst):  # the slabs around the box
        before = (slice(None),) * axis + (slice(0, s.start),)
        after = (slice(None),) * axis + (slice(s.stop, None),)
        target[before] = 0
        target[after] = 0
    inside = tuple(slice(d.start + f.start - b.start, d.stop + f.start - b.start) for d, f, b in zip(dst, frame, box))
    np.multiply(target[dst], mask[inside], out=target[dst])
    kept[channel] = dst


def _renormalise_and_label(out: np.ndarray, boxes: dict[int, Box], values: np.ndarray) -> np.ndarray:
    """Step D in place on ``out`` (C, x, y, z); channel c > 0 is zero outside ``boxes[c]``."""
    total = out[0].copy()
    for c, box in boxes.items():
        total[box] += out[(c,) + box]
    empty = total == 0
    out[0][empty] = 1.0
    total[empty] = 1.0
    out[0] /= total
    best = out[0].copy()
    index = np.zeros(total.shape, dtype=np.int32)
    higher = np.empty(total.shape, dtype=bool)
    for c in sorted(boxes):
        box = boxes[c]
        channel = out[(c,) + box]
        channel /= total[box]
        np.greater(channel, best[box], out=higher[box])
        np.copyto(best[box], channel, where=higher[box])
        np.copyto(index[box], np.int32(c), where=higher[box])
    return values[index].astype(np.int32, copy=False)


def postprocess_parcellation(parcellation: np.ndarray, segmentation: Segmentation, inner: Box) -> Segmentation:
    """Parcellation clean-up of 2.9 (after the segmentation's step D).

    ``parcellation``: network posteriors (69, X, Y, Z) in padded space. Outside the cortex of the
    postprocessed hard segmentation (labels 3, 42) channel 0 is set to 1, inside it to 0; every
    voxel is renormalised (an all-zero cortex voxel becomes background); cortex voxels of the hard
    segmentation take the parcel label of the argmax. Returns the parcellation posteriors
    (69, x, y, z) and the merged hard labels; ``segmentation`` is not modified.
    """
    if parcellation.ndim != 4 or parcellation.shape[0] != len(PARCELLATION_VALUES):
        raise ModelError(f"parcellation output has shape {parcellation.shape}; expected "
                         f"({len(PARCELLATION_VALUES)}, X, Y, Z)")
    post = np.array(parcellation[(slice(None),) + tuple(inner)], dtype=np.float32)
    cortex = np.isin(segmentation.labels, CORTEX_VALUES)
    post[0] = np.where(cortex, np.float32(0), np.float32(1))
    total = post.sum(axis=0)
    empty = total == 0
    post[0][empty] = 1.0
    total[empty] = 1.0
    post /= total
    labels = segmentation.labels.astype(np.int32, copy=True)
    labels[cortex] = PARCELLATION_VALUES[np.argmax(post[:, cortex], axis=0)]
    return Segmentation(posteriors=post, labels=labels)


def uncrop(array: np.ndarray, pre: Preprocessed) -> np.ndarray:
    """Results of the analysed box (``pre.analysed_box``: the crop, 2.10, and/or the head window)
    on the whole aligned grid: labels (x, y, z) are 0 outside the box, posteriors (x, y, z, C) 0
    there except background (channel 0), which is 1. Without a box, ``array`` itself."""
    box = pre.analysed_box
    if box is None:
        return array
    out = np.zeros(tuple(pre.aligned_shape) + array.shape[3:], dtype=array.dtype)
    if array.ndim == 4:
        out[..., 0] = 1
    out[box] = array
    return out


def to_native(array: np.ndarray, pre: Preprocessed) -> np.ndarray:
    """RAS-aligned (x, y, z) or (x, y, z, C) -> native voxel order of ``pre``'s output grid
    (``pre.grid_affine``); channels stay last. Returns a view."""
    if tuple(array.shape[:3]) != tuple(pre.aligned_shape):
        raise ValueError(f"array of shape {array.shape} does not match the aligned grid {pre.aligned_shape}")
    return pre.alignment.invert(array)
