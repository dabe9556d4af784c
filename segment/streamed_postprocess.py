"""The fast postprocessing (robust methods) fed slab by slab, without the whole posteriors.

:func:`morphometry.segment.postprocess.postprocess` in fast mode needs, of the 33-channel
posteriors (1.45 GB at 1 mm): the background channel, the foreground mask (sum of the other
channels > 0.25) and, per other channel, the voxels where it exceeds 0.2 (step C zeroes the rest).
:class:`FastStream` is a slab sink (morphometry.segment.slabs) that keeps just these: a float32
background volume, a boolean mask, and each channel's above-threshold voxels as (flat index,
value) pairs (at most four channels can exceed 0.2 at a voxel whose posteriors sum to 1, and most
voxels have none). :meth:`FastStream.result` then applies steps A, C and D with the same float32
operations in the same order as the dense code, so labels are identical and channel sums are
bit-identical (adding the dense path's zeros changes no float sum).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from morphometry.errors import ModelError
from morphometry.labels import LabelSet
from morphometry.segment.postprocess import Box, PostprocessConfig, largest_component


@dataclass(frozen=True, eq=False)
class StreamedSegmentation:
    """Renormalised fast-mode posteriors in compact form, on the inner (unpadded) grid.

    ``background``: channel 0 (x, y, z) float32; ``channels``: channel -> (flat C-order indices
    int64, ascending; values float32) of its non-zero voxels; ``labels``: (x, y, z) int32 values."""

    background: np.ndarray
    channels: dict[int, tuple[np.ndarray, np.ndarray]]
    labels: np.ndarray
    n_channels: int

    def channel_sums(self, reverse: tuple[bool, bool, bool] = (False, False, False), dtype=np.float32) -> np.ndarray:
        """:func:`morphometry.volumes.channel_sums` of the dense posteriors: each channel summed in
        ``dtype`` voxel by voxel, x outer and z inner, an axis walked backwards where ``reverse``."""
        sums = np.zeros(self.n_channels, dtype=dtype)
        walked = np.flip(self.background, [a for a in range(3) if reverse[a]])
        sums[0] = np.cumsum(walked, dtype=dtype)[-1]  # accumulate adds one value after the other
        shape = self.background.shape
        for c, (index, values) in self.channels.items():
            order = np.argsort(_walk_rank(index, shape, reverse), kind="stable")
            sums[c] = np.cumsum(values[order], dtype=dtype)[-1]
        return sums


def _walk_rank(index: np.ndarray, shape: tuple[int, ...], reverse: tuple[bool, bool, bool]) -> np.ndarray:
    """Position of flat C-order ``index`` in the walk of :func:`channel_sums` with ``reverse``."""
    coords = np.unravel_index(index, shape)
    walked = [np.asarray(n - 1 - c if r else c) for c, n, r in zip(coords, shape, reverse)]
    return np.ravel_multi_index(walked, shape)


class FastStream:
    """A slab sink for a stage's posteriors on the padded grid (``shape``: X, Y, Z) that keeps
    what the fast postprocessing of ``inner`` needs (module docstring)."""

    def __init__(self, label_set: LabelSet, shape: tuple[int, int, int], inner: Box, config: PostprocessConfig):
        if config.topology:
            raise ValueError("the topology clean-up needs the whole posteriors; stream only the fast mode")
        self.label_set, self.config = label_set, config
        self.shape, self.inner = tuple(shape), tuple(inner)
        size = tuple(s.stop - s.start for s in self.inner)
        self.background = np.empty(size, np.float32)
        self.foreground = np.empty(size, bool)
        self._parts: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {
            c: [] for c in range(1, label_set.n_channels)}
        self._rows_seen = 0

    def __call__(self, a: int, b: int, posteriors: np.ndarray) -> None:
        """Take rows [a, b) of padded axis 0: ``posteriors`` (C, b - a, Y, Z)."""
        if posteriors.shape[0] != self.label_set.n_channels or posteriors.shape[2:] != self.shape[1:] \
                or not 0 <= a < b <= self.shape[0] or posteriors.shape[1] != b - a:
            raise ModelError(f"segmentation output rows [{a}, {b}) of shape {posteriors.shape}; expected "
                             f"({self.label_set.n_channels}, {b - a}, {self.shape[1]}, {self.shape[2]}) "
                             f"within {self.shape[0]} rows")
        rows = self.inner[0]
        lo, hi = max(a, rows.start), min(b, rows.stop)
        if hi <= lo:
            return
        part = posteriors[:, lo - a:hi - a, self.inner[1], self.inner[2]]
        local = slice(lo - rows.start, hi - rows.start)
        self.background[local] = part[0]
        np.greater(np.sum(part[1:], axis=0, dtype=np.float32), self.config.foreground_threshold,
                   out=self.foreground[local])
        offset = local.start * self.foreground[0].size
        for c, pieces in self._parts.items():
            index = np.flatnonzero(part[c] > self.config.fast_threshold)
            if index.size:
                pieces.append((index + offset, part[c].ravel()[index]))
        self._rows_seen += hi - lo

    def result(self) -> StreamedSegmentation:
        """Steps A, C and D of the fast postprocessing (morphometry.segment.postprocess)."""
        if self._rows_seen != self.background.shape[0]:
            raise ModelError(f"the posteriors stream covered {self._rows_seen} of {self.background.shape[0]} rows")
        found = largest_component(self.foreground)
        keep = np.zeros(self.foreground.shape, bool)
        if found is not None:
            keep[found[0]] = found[1]
        keep = keep.ravel()
        channels = {}
        for c, pieces in self._parts.items():
            if found is None or not pieces:
                continue
            index = np.concatenate([i for i, _ in pieces])
            values = np.concatenate([v for _, v in pieces])
            inside = keep[index]
            if inside.any():
                channels[c] = (index[inside], values[inside])
        self._parts.clear()
        return _renormalise_and_label(self.background, channels, self.label_set)


def _renormalise_and_label(background: np.ndarray, channels: dict[int, tuple[np.ndarray, np.ndarray]],
                           label_set: LabelSet) -> StreamedSegmentation:
    """Step D on the compact posteriors: every voxel divided by its channel total, hard label =
    first maximum; a voxel whose channels are all 0 becomes background."""
    flat = background.ravel()
    total = flat.copy()
    for c in sorted(channels):
        index, values = channels[c]
        total[index] += values
    empty = total == 0
    flat[empty] = 1.0
    total[empty] = 1.0
    flat /= total
    best = flat.copy()
    label_index = np.zeros(flat.shape, np.int32)
    renormalised = {}
    for c in sorted(channels):
        index, values = channels[c]
        values = values / total[index]
        higher = values > best[index]
        best[index[higher]] = values[higher]
        label_index[index[higher]] = c
        renormalised[c] = (index, values)
    labels = label_set.values[label_index].astype(np.int32, copy=False).reshape(background.shape)
    return StreamedSegmentation(background, renormalised, labels, label_set.n_channels)
