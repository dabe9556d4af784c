"""Median seconds of morphometry.segment.preprocess and morphometry.segment.postprocess on synthetic scans.

Scans: a 1 mm 256^3 head (no resampling), a 0.8 mm 288^3 head (resampled to 1 mm) and a 6 mm
axial clinical scan of 256 x 256 x 25 voxels of 0.9 x 0.9 x 6 mm (resampled to 1 mm). Posteriors:
33 channels in the padded network space, from a synthetic label map (two hemispheres with cortex,
white matter, ventricles and deep nuclei, a midline brainstem, blobs of every label), with soft boundaries
and a little uniform noise on every channel.

    python benchmarks/prepost.py [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from morphometry.io import Scan, ScanInfo
from morphometry.labels import SYNTHSEG_2
from morphometry.orientation import ras_alignment
from morphometry.segment.postprocess import PostprocessConfig, postprocess, to_native
from morphometry.segment.preprocess import PreprocessConfig, preprocess


def synthetic_scan(shape, zooms, rng: np.random.Generator) -> Scan:
    """A head-like image in LIA voxel order (as FreeSurfer conformed volumes)."""
    affine = np.zeros((4, 4))
    affine[0, 0], affine[2, 1], affine[1, 2], affine[3, 3] = -zooms[0], -zooms[1], zooms[2], 1.0
    affine[:3, 3] = -affine[:3, :3] @ (np.asarray(shape) / 2)
    grid = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij", sparse=True)
    radius = grid[0] ** 2 + grid[1] ** 2 + grid[2] ** 2
    image = np.where(radius < 0.7, 100 - 60 * radius, 0).astype(np.float32)
    image += rng.normal(0, 5, size=shape).astype(np.float32)
    alignment = ras_alignment(affine)
    zooms = tuple(float(z) for z in zooms)
    info = ScanInfo(shape=tuple(shape), zooms=zooms, ras_spacing=tuple(zooms[p] for p in alignment.perm),
                    alignment=alignment)
    return Scan(path=Path("synthetic.nii.gz"), data=image, affine=affine, header=None, info=info)


def synthetic_posteriors(shape, inner, rng: np.random.Generator) -> np.ndarray:
    """(33, X, Y, Z) float32 posteriors of a crude two-hemisphere brain in the inner box."""
    channel = np.zeros(shape, dtype=np.int64)
    size = [s.stop - s.start for s in inner]
    g = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in size], indexing="ij", sparse=True)
    r = np.sqrt((g[0] / 0.8) ** 2 + (g[1] / 0.9) ** 2 + (g[2] / 0.8) ** 2)
    left = g[0] < 0
    sub = np.zeros(size, dtype=np.int64)
    for value_left, value_right, lo, hi in ((3, 42, 0.75, 0.9), (2, 41, 0.35, 0.75), (4, 43, 0.2, 0.35),
                                            (10, 49, 0.0, 0.2)):
        shell = (r >= lo) & (r < hi)
        sub[shell & left] = SYNTHSEG_2.channel_of(value_left)
        sub[shell & ~left] = SYNTHSEG_2.channel_of(value_right)
    sub[(r < 0.9) & (np.abs(g[0]) < 0.03)] = SYNTHSEG_2.channel_of(16)
    for _ in range(40):  # blobs of random labels inside the brain: most topology classes present
        c = [int(rng.integers(0.3 * n, 0.7 * n)) for n in size]
        sub[c[0] - 2:c[0] + 2, c[1] - 2:c[1] + 2, c[2] - 2:c[2] + 2] = int(rng.integers(1, 33))
    channel[inner] = sub
    post = rng.random((33,) + tuple(shape), dtype=np.float32)
    post *= np.float32(0.01)  # background voxels: non-background posteriors sum to about 0.14
    for c in range(33):
        post[c][channel == c] += np.float32(1.0)
    neighbour = np.roll(channel, 1, axis=0)
    neighbour[neighbour == channel] = -1  # soft boundaries: 0.8 more to the neighbour's label
    for c in range(33):
        post[c][neighbour == c] += np.float32(0.8)
    post /= post.sum(axis=0)
    return post


def median_seconds(fn, repeats: int, setup=lambda: None) -> tuple[float, float]:
    """Median wall and CPU seconds of ``fn(setup())`` after one untimed warm-up run (setup not
    timed): a batch runs many scans, so the first touch of fresh memory is not what it pays."""
    fn(setup())
    wall, cpu = [], []
    for _ in range(repeats):
        argument = setup()
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        fn(argument)
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case (default 5)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    cases = [
        ("1 mm head 256^3", (256, 256, 256), (1.0, 1.0, 1.0)),
        ("0.8 mm head 288^3", (288, 288, 288), (0.8, 0.8, 0.8)),
        ("6 mm axial 256x256x25", (256, 256, 25), (0.9, 0.9, 6.0)),
    ]
    print(f"{'scan':<22} {'grid':>12} {'padded':>12}  {'stage':<29} {'wall s':>7} {'cpu s':>7}")
    for name, shape, zooms in cases:
        scan = synthetic_scan(shape, zooms, rng)
        pre = preprocess(scan, PreprocessConfig())
        n = max(1, args.repeats // 2)
        post = synthetic_posteriors(pre.image.shape, pre.inner, rng)
        seg = postprocess(post, SYNTHSEG_2, pre.inner, PostprocessConfig(False))
        stages = [
            ("preprocess", lambda _: preprocess(scan, PreprocessConfig()), args.repeats, lambda: None),
            ("postprocess topology", lambda _: postprocess(post, SYNTHSEG_2, pre.inner, PostprocessConfig(True)),
             n, lambda: None),
            ("postprocess fast", lambda _: postprocess(post, SYNTHSEG_2, pre.inner, PostprocessConfig(False)),
             n, lambda: None),
            ("postprocess topology in place",
             lambda fresh: postprocess(fresh, SYNTHSEG_2, pre.inner, PostprocessConfig(True, in_place=True)),
             n, post.copy),
            ("postprocess fast in place",
             lambda fresh: postprocess(fresh, SYNTHSEG_2, pre.inner, PostprocessConfig(False, in_place=True)),
             n, post.copy),
            ("to native (NIfTI order)", lambda _: (np.asfortranarray(to_native(seg.labels, pre)),
                                                   np.asfortranarray(to_native(np.moveaxis(seg.posteriors, 0, -1),
                                                                               pre))), n, lambda: None),
        ]
        grid = "x".join(map(str, pre.grid_shape))
        padded = "x".join(map(str, pre.image.shape))
        for stage, fn, repeats, setup in stages:
            wall, cpu = median_seconds(fn, repeats, setup)
            print(f"{name:<22} {grid:>12} {padded:>12}  {stage:<29} {wall:>7.3f} {cpu:>7.3f}", flush=True)
        post = seg = None  # free them before the next case allocates its own
    print("medians; postprocess: 33-channel float32 posteriors; to native: labels and channels-last "
          "posteriors copied to the scan's voxel order in NIfTI (Fortran) layout")


if __name__ == "__main__":
    main()
