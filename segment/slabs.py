"""Slab-wise evaluation of the U-Nets: the full-resolution levels run in slabs along RAS axis 0.

At 1 mm a full-resolution feature tensor of the official networks is 1 GB (24 channels x 11 M
voxels) and the whole graph holds several at once. Here the top ``split`` levels of each U-Net run
slab by slab (``thickness`` rows at a time plus a halo), only the deeper levels (1/8 of the voxels
per level down) run whole, and a stage's result is written into its output array slab by slab:

- encoder level l: the slab's rows [a, b) are computed from input rows [a - h, b + h), where the halo
  h = convolutions x (kernel // 2), rounded up to even, covers the rows that the convolutions' zero
  padding at the slab's cut would reach; pooled rows [a/2, b/2) follow because a and b are even;
- decoder level l: rows [a, b) from the inner (coarser) output's rows [(a - h)/2, (b + h)/2) and the
  skip tensor's rows [a - h, b + h); the level-l skip is kept whole below the top level and
  recomputed for each slab from the input rows [a - 2h, b + 2h) at the top level, inside the
  decoder part's graph (holding it would cost 1 GB at 1 mm, recomputing it about a sixth more work
  at that level).

Every voxel of the result is computed with the same operations on the same values as the whole
graph (morphometry.segment.networks.unet_parts), so results agree with it to rounding.
Stage glue (argmax hand-overs, concatenation with the image, the left-right flip average and the
posterior smoothing of ``synthseg``) is done on the host between slabs; a sink receives the
backend's output buffer and must be done with it when it returns. The posteriors of ``s2``
and ``d_all`` can go to a sink slab by slab (morphometry.segment.streamed_postprocess) instead of
a whole array.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from morphometry.segment.networks import UNetSpec, Weights, unet_parts
from morphometry.segment.stages import SMOOTHING_SIGMA, gaussian_kernel_1d

Source = Callable[[int, int], np.ndarray]  # rows [lo, hi) of axis 0 -> network input (C, hi - lo, Y, Z)
Sink = Callable[[int, int, np.ndarray], None]  # rows [a, b) and the output there (C, b - a, Y, Z)
STREAMED_STAGES = ("s2", "d_all")  # stages whose posteriors can go to a sink slab by slab (no whole-volume glue)


@dataclass(frozen=True)
class SlabPlan:
    """How a network runs in slabs: ``thickness`` rows (even) per slab at every slabbed level,
    ``split`` top levels slabbed (the rest runs whole); ``host_threads`` for the host's work on
    whole volumes between passes (posterior smoothing)."""

    thickness: int = 16
    split: int = 2
    host_threads: int = 1


def row_slabs(size: int, thickness: int) -> list[tuple[int, int]]:
    """Consecutive row ranges [a, b) covering ``size`` rows, ``thickness`` each (the last may be
    shorter); every a is even."""
    return [(a, min(a + thickness, size)) for a in range(0, size, thickness)]


def halo(spec: UNetSpec) -> int:
    """Rows each side a level's convolutions need: convs x (kernel // 2), rounded up to even."""
    h = spec.convs_per_level * (spec.kernel // 2)
    return h + h % 2


class SlabUNet:
    """One U-Net compiled as parts on an engine's backend (``infer``/``release``)."""

    def __init__(self, backend, name: str, spec: UNetSpec, weights: Weights, plan: SlabPlan):
        if plan.thickness < 2 or plan.thickness % 2:
            raise ValueError(f"slab thickness {plan.thickness}: an even number of rows >= 2")
        self.backend, self.name, self.spec = backend, name, spec
        self.split = min(plan.split, spec.levels - 1)
        self.thickness, self.halo = plan.thickness, halo(spec)
        for part, model in unet_parts(spec, weights, self.split).items():
            backend.compile(f"{name}/{part}", model)

    def run(self, source: Source, size: tuple[int, int, int], sink: Sink) -> None:
        """Evaluate the network on an input of spatial ``size`` read through ``source``; the
        posteriors reach ``sink`` slab by slab."""
        self._level(0, source, size, sink)

    def _infer(self, part: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        """The named outputs of a part, valid until the next call (the backend's buffers)."""
        return self.backend.infer(f"{self.name}/{part}", feeds, outputs)

    def _level(self, level: int, source: Source, size: tuple[int, ...], sink: Sink) -> None:
        rows, h = size[0], self.halo
        keeps = self.spec.keeps_skip(self.spec.levels - 2 - level)
        store = keeps and level > 0  # the top level's skip is recomputed per slab inside dec0: 1 GB at 1 mm
        pooled = skip = None
        for a, b in row_slabs(rows, self.thickness):
            lo, hi = max(a - h, 0), min(b + h, rows)
            outs = self._infer(f"enc{level}", {"x": source(lo, hi)[None]}, ["pooled", "skip"] if store else ["pooled"])
            if pooled is None:
                pooled = np.empty((outs[0].shape[1], rows // 2, *outs[0].shape[3:]), np.float32)
                if store:
                    skip = np.empty((outs[1].shape[1], rows, *outs[1].shape[3:]), np.float32)
            pooled[:, a // 2:b // 2] = outs[0][0, :, (a - lo) // 2:(b - lo) // 2]
            if store:
                skip[:, a:b] = outs[1][0, :, a - lo:b - lo]
        self.backend.release(f"{self.name}/enc{level}")
        inner_size = tuple(s // 2 for s in size)
        if level + 1 < self.split:
            inner = _ArrayOutput(self.spec.width(level + 1), inner_size)
            self._level(level + 1, _rows_of(pooled), inner_size, inner)
            inner = inner.array
        else:
            inner = self._infer("mid", {"x": pooled[None]}, ["features"])[0][0].copy()
            self.backend.release(f"{self.name}/mid")
        del pooled
        for a, b in row_slabs(rows, self.thickness):
            lo, hi = max(a - h, 0), min(b + h, rows)
            feeds = {"inner": np.ascontiguousarray(inner[None, :, lo // 2:hi // 2])}
            if store:
                feeds["skip"] = np.ascontiguousarray(skip[None, :, lo:hi])
            elif keeps:  # dec0 computes the skip rows [lo, hi) from input rows [lo2, hi2)
                lo2, hi2 = max(lo - h, 0), min(hi + h, rows)
                feeds.update(x=source(lo2, hi2)[None], skip_start=np.array([lo - lo2]),
                             skip_stop=np.array([hi - lo2]))
            out = self._infer(f"dec{level}", feeds, ["posteriors" if level == 0 else "features"])[0][0]
            sink(a, b, out[:, a - lo:b - lo])
        self.backend.release(f"{self.name}/dec{level}")


class _ArrayOutput:
    """A sink that assembles a level's output array (channels, *size)."""

    def __init__(self, channels: int, size: tuple[int, ...]):
        self.array = np.empty((channels, *size), np.float32)

    def __call__(self, a: int, b: int, values: np.ndarray) -> None:
        self.array[:, a:b] = values


def _rows_of(array: np.ndarray) -> Source:
    return lambda lo, hi: np.ascontiguousarray(array[:, lo:hi])


def one_hot(labels: np.ndarray, n: int) -> np.ndarray:
    """(n, *labels.shape) float32 one-hot of integer labels."""
    return (labels[None] == np.arange(n, dtype=labels.dtype).reshape(n, *([1] * labels.ndim))).astype(np.float32)


def channel_argmax(posteriors: np.ndarray) -> np.ndarray:
    """argmax over the channels of (C, X, Y, Z) as uint8 (C <= 256; ties to the first, as numpy's),
    a channel at a time: numpy's own argmax over a leading axis copies the whole array first."""
    best = posteriors[0].copy()
    labels = np.zeros(best.shape, np.uint8)
    for c in range(1, len(posteriors)):
        higher = posteriors[c] > best
        np.copyto(best, posteriors[c], where=higher)
        labels[higher] = c
    return labels


def smooth_in_place(posteriors: np.ndarray, sigma: float = SMOOTHING_SIGMA, threads: int = 1) -> None:
    """The stage graphs' posterior smoothing (separable Gaussian, zero padding), channel by channel
    on ``threads`` threads (SciPy's filters release the GIL: 5.7 -> 3.0 s for 33 channels of a
    1 mm head on 2)."""
    kernel = gaussian_kernel_1d(sigma)

    def smooth(channel: np.ndarray) -> None:
        for axis in range(3):
            ndimage.correlate1d(channel, kernel, axis=axis, output=channel, mode="constant", cval=0.0)

    with ThreadPoolExecutor(max(threads, 1)) as pool:
        list(pool.map(smooth, posteriors))


class SlabStages:
    """The segmentation stages (s1, d, s2, synthseg, d_all) evaluated in slabs.

    ``networks``: role -> (spec, weights); ``flip``: the channel permutation of the ``synthseg``
    stage's left-right flip average (None: no flip). Tissue stages return labels (X, Y, Z) uint8,
    the others posteriors (C, X, Y, Z) float32.
    """

    def __init__(self, backend, networks: dict[str, tuple[UNetSpec, Weights]], plan: SlabPlan,
                 flip: np.ndarray | None):
        self.flip, self.host_threads = flip, plan.host_threads
        self.nets = {role: SlabUNet(backend, role, spec, weights, plan) for role, (spec, weights) in networks.items()}

    def run(self, stage: str, image: np.ndarray, previous: np.ndarray | None, sink: Sink | None = None):
        """The stage's output: tissue labels, or posteriors (C, X, Y, Z); with ``sink`` (stages
        ``s2`` and ``d_all``) the posteriors go to it slab by slab and the sink is returned."""
        size = image.shape
        if sink is not None and stage not in STREAMED_STAGES:
            raise ValueError(f"stage {stage} cannot stream its output (streamed: {', '.join(STREAMED_STAGES)})")
        if stage in ("s1", "d"):
            labels = np.empty(size, np.uint8)

            def to_labels(a, b, post):
                labels[a:b] = post.argmax(axis=0)

            source = (_rows_of(image[None]) if stage == "s1"
                      else lambda lo, hi: one_hot(previous[lo:hi], self.nets["d"].spec.in_channels))
            self.nets[stage].run(source, size, to_labels)
            return labels
        net = self.nets[stage]
        posteriors = _ArrayOutput(net.spec.n_labels, size) if sink is None else sink
        if stage == "s2":
            groups = net.spec.in_channels - 1
            source = lambda lo, hi: np.concatenate([image[None, lo:hi], one_hot(previous[lo:hi], groups)])  # noqa: E731
        elif stage == "d_all":
            labels = channel_argmax(previous)  # once, not per slab and halo (1.3 s against 2.6)
            source = lambda lo, hi: one_hot(labels[lo:hi], net.spec.in_channels)  # noqa: E731
        else:
            source = _rows_of(image[None])
        net.run(source, size, posteriors)
        if sink is not None:
            return sink
        out = posteriors.array
        if stage == "synthseg":
            if self.flip is not None:
                self._add_flipped(net, image, out)
            smooth_in_place(out, threads=self.host_threads)
        return out

    def _add_flipped(self, net: SlabUNet, image: np.ndarray, out: np.ndarray) -> None:
        """out = (out + the network's output on the flipped image, flipped back, channels permuted) / 2."""
        rows = image.shape[0]
        flipped = _rows_of(image[None, ::-1])

        def average(a, b, post):
            target = out[:, rows - b:rows - a]
            target += post[self.flip, ::-1]
            target *= np.float32(0.5)

        net.run(flipped, image.shape, average)
