"""Benchmark of ``AgeingModel``: full fit and subject bootstrap on a synthetic cohort.

Cohort: 10,000 scans (about 2 scans per subject), 33 structures (total_intracranial + the 32
table columns), 5 methods, drawn from
:class:`morphometry.analysis.ageing_simulation.SimulatedAgeingData`. Goals on 2 cores: the full
fit (33 x 5 = 165 fits, no bootstrap) under 10 s; 1,000 bootstrap replicates of one structure
under 10 s. Prints medians over ``--repeats`` runs.

    .venv/bin/python benchmarks/ageing_fit.py [--scans 10000] [--replicates 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from morphometry.analysis.ageing_model import AgeingModel, AgeingSpec
from morphometry.analysis.ageing_simulation import SimulatedAgeingData, simulate_ageing_table
from morphometry.labels import STRUCTURES, TOTAL_INTRACRANIAL

METHODS = ("synthseg+", "s1+s2", "synthseg", "synthseg+d", "s1+s2+d")


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """Median wall-clock and process CPU seconds (CPU shows the work when the machine is shared)."""
    wall, cpu, out = [], [], None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=10_000)
    parser.add_argument("--replicates", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    planted = SimulatedAgeingData(n_subjects=args.scans // 2, structures=(TOTAL_INTRACRANIAL, *STRUCTURES),
                            methods=METHODS)
    table = simulate_ageing_table(planted, np.random.default_rng(args.seed))
    n_scans = int((table["method"] == METHODS[0]).sum())
    full_spec = AgeingSpec(structures=("lateral",))
    t_full, c_full, fit = timed(lambda: AgeingModel(full_spec).fit(table), args.repeats)
    n_fits = len(fit.fits)
    n_penalised = sum(f.penalised for f in fit.fits.values())

    one = AgeingModel(AgeingSpec(structures=("left_hippocampus",), methods=(METHODS[0],))).fit(table)
    t_boot, c_boot, boot = timed(lambda: one.bootstrap(args.replicates, np.random.default_rng(args.seed)), args.repeats)
    t_boot_all, c_boot_all, _ = timed(lambda: AgeingModel(AgeingSpec(structures=("left_hippocampus",))).fit(table)
                          .bootstrap(args.replicates, np.random.default_rng(args.seed)), 1)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{n_scans} scans/method, {len(fit.subjects)} subjects, median of {args.repeats}")
    rows = [
        ("full fit: 33 structures x 5 methods, no bootstrap", t_full, c_full,
         f"{n_fits} fits, {n_penalised} penalised"),
        (f"bootstrap: {args.replicates} replicates, 1 structure x 1 method", t_boot, c_boot,
         f"{boot.n_not_converged} not converged"),
        (f"bootstrap: {args.replicates} replicates, 1 structure x 5 methods (paired)", t_boot_all, c_boot_all,
         "1 run"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'case'.ljust(width)}  {'wall s':>7}  {'CPU s':>7}  notes")
    for name, wall, cpu, note in rows:
        print(f"{name.ljust(width)}  {wall:7.2f}  {cpu:7.2f}  {note}")


if __name__ == "__main__":
    main()
