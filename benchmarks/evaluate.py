"""Benchmark of ``morpho evaluate``: metrics of one whole-head pair, and scans per minute.

Pair: a 256^3 1 mm whole-head label map of ../shared/data/label-maps (kept to the 33 SynthSeg
labels; the rest set to background) as the reference, and the same map moved by one voxel along
each axis as the prediction (every boundary moves: a pessimistic case for the distance search).
Goal: Dice + MSD + HD95 of the 32 structures under 2 s on one core. Then ``--scans`` such pairs
(different subjects, two methods each) written as .nii.gz and evaluated with 1 and 2 processes,
reading included: predictions per minute. Prints medians over ``--repeats`` runs.

    .venv/bin/python benchmarks/evaluate.py [--repeats 5] [--scans 4]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from morphometry.analysis import evaluation as ev
from morphometry.analysis.evaluation_inputs import find_predictions, find_references, pair_by_scan_id
from morphometry.analysis.metrics import label_metrics
from morphometry.labels import SYNTHSEG_2

LABEL_MAPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "label-maps"


def reference_map(index: int) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(LABEL_MAPS / f"training_seg_{index:02d}.nii.gz"))
    data = np.rint(np.asarray(image.dataobj)).astype(np.int32)
    return np.where(np.isin(data, SYNTHSEG_2.values), data, 0).astype(np.int32), image.affine


def moved(data: np.ndarray) -> np.ndarray:
    return np.roll(data, (1, -1, 1), axis=(0, 1, 2))


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """Median wall-clock and CPU seconds of this process (CPU time is less sensitive to a busy
    machine; worker processes are not counted in it)."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    return statistics.median(walls), statistics.median(cpus), out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scans", type=int, default=4, help="subjects for the throughput run (<= 15)")
    args = parser.parse_args()
    if not LABEL_MAPS.is_dir():
        print(f"skipped: {LABEL_MAPS} (the shared label maps) is absent", file=sys.stderr)
        return 1
    ref, affine = reference_map(1)
    pred = moved(ref)
    values = ev.SYNTHSEG_VALUES
    rows = []
    for mode in ("mean_of_means", "pooled"):
        t, cpu, result = timed(lambda: label_metrics(pred, ref, (1.0, 1.0, 1.0), values, mode), args.repeats)
        rows.append((f"32 structures, 256^3, msd={mode}", t, cpu, f"{len(result)} structures"))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "ref").mkdir()
        (tmp / "seg").mkdir()
        for i in range(1, args.scans + 1):
            ref_i, aff_i = reference_map(i)
            nib.save(nib.Nifti1Image(ref_i, aff_i), str(tmp / "ref" / f"s{i}.nii.gz"))
            nib.save(nib.Nifti1Image(moved(ref_i), aff_i), str(tmp / "seg" / f"s{i}_synthseg+.nii.gz"))
            nib.save(nib.Nifti1Image(ref_i, aff_i), str(tmp / "seg" / f"s{i}_synthseg.nii.gz"))
        pairing = pair_by_scan_id(find_predictions(tmp), find_references(tmp / "ref"))
        config = ev.EvaluationConfig()
        n = len(pairing.pairs)
        t, cpu, _ = timed(lambda: ev.evaluate_pair(*pairing.pairs[0], config), args.repeats)
        rows.append(("one pair incl. reading two .nii.gz", t, cpu, ""))
        for jobs in (1, 2):
            t, cpu, _ = timed(lambda: ev.evaluate_pairs(pairing, config, jobs), max(1, args.repeats // 2))
            rows.append((f"evaluate {n} predictions, --jobs {jobs}", t, cpu if jobs == 1 else float("nan"),
                         f"{60 * n / t:.1f} predictions/min"))

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; median of {args.repeats}")
    print(f"{'case':45s} {'wall s':>7s} {'cpu s':>7s}  note")
    for name, t, cpu, note in rows:
        print(f"{name:45s} {t:7.2f} {cpu:7.2f}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
