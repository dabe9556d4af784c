"""Scans per hour and scheduling overhead per scan of ``segment_many`` on a local Dask cluster of 1
and 2 worker processes, against the single-process batch, on small synthetic scans.

Scans: ``--scans`` heads of 48 x 56 x 44 voxels of 2 mm, segmented with a bundle of small random
networks (2 features, 4 levels, 64-voxel minimum grid) by ``synthseg``, one network thread per
worker. Per run: the wall time of the whole call (discovery, cluster start, scans, tables), the
scans' work (the sum of the tasks' wall times on the workers), the cluster's start alone (a
separate start and stop), and the overhead per scan: worker-seconds not spent on scans,
(wall x workers - work) / scans, with and without the start.

The journal's merge time and memory at 10^4, 10^5 and 10^6 entries are measured by
``benchmarks/journal_scale.py`` (each reading in a fresh process); ``--journal`` runs it after the
table above.

    python benchmarks/cluster.py [--scans 20] [--journal]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from morphometry.cluster import ClusterSpec, connect
from morphometry.progress import log
from morphometry.segment.random_bundle import random_bundle
from morphometry.segment.segmenter import Segmenter


def head(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    grid = np.indices(shape).astype(np.float32)
    centre = (np.array(shape, np.float32) - 1)[:, None, None, None] / 2
    radius = np.sqrt((((grid - centre) / (centre + 1)) ** 2).sum(0))
    return (100.0 * (radius < 0.8) + 60.0 * (radius < 0.5) + rng.normal(0, 5, shape)).astype(np.float32)


def start_seconds(spec: ClusterSpec) -> float:
    start = time.perf_counter()
    with connect(spec) as client:
        client.wait_for_workers(spec.processes)
        started = time.perf_counter() - start
    return started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=20)
    parser.add_argument("--journal", action="store_true", help="then run benchmarks/journal_scale.py")
    args = parser.parse_args()
    log.setLevel("WARNING")
    root = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    try:
        bundle = random_bundle(root / "bundle", features=2, seed=7, levels=4, min_size=64)
        rng = np.random.default_rng(0)
        scans = root / "scans"
        scans.mkdir()
        for i in range(args.scans):
            nib.save(nib.Nifti1Image(head((48, 56, 44), rng), np.diag([2.0, 2.0, 2.0, 1.0])),
                     str(scans / f"scan{i:03d}.nii.gz"))
        segmenter = Segmenter(bundle.root, "synthseg", threads=1)
        segmenter.segment(scans / "scan000.nii.gz")  # warm-up
        rows = []
        start = time.perf_counter()
        reference = segmenter.segment_many(scans, root / "single", progress=False)
        rows.append(("single process", 1, time.perf_counter() - start, None, None))
        for workers in (1, 2):
            spec = ClusterSpec("local", processes=workers)
            started = start_seconds(spec)
            start = time.perf_counter()
            result = segmenter.segment_many(scans, root / f"local{workers}", progress=False, cluster=spec)
            wall = time.perf_counter() - start
            assert result.volumes.equals(reference.volumes), "cluster table differs from the single-process one"
            rows.append((f"local:{workers}", workers, wall, result.timings["cluster:task_wall"], started))
        print(f"{args.scans} scans of 48 x 56 x 44 voxels (2 mm), random bundle, synthseg, 1 network thread per worker")
        print(f"{'run':<16}{'wall s':>8}{'scans/h':>10}{'work s':>8}{'start s':>9}{'overhead/scan s':>17}"
              f"{'w/o start':>11}")
        for name, workers, wall, work, started in rows:
            line = f"{name:<16}{wall:8.1f}{3600 * args.scans / wall:10.0f}"
            if work is not None:
                overhead = (wall * workers - work) / args.scans
                line += (f"{work:8.1f}{started:9.1f}{overhead:17.2f}"
                         f"{(overhead - started * workers / args.scans):11.2f}")
            print(line)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.journal:
        subprocess.run([sys.executable, str(Path(__file__).with_name("journal_scale.py"))], check=True)


if __name__ == "__main__":
    main()
