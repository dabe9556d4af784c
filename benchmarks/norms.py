"""Benchmark of the normative model: size, site harmonisation and coverage.

1. Fit and score 100,000 scans x 33 structures (total_intracranial + the 32 table columns), one
   method, 4 sites, 3 % gross outliers (:class:`morphometry.analysis.norms_simulation.SimulatedNorms`).
2. Site harmonisation on 4-site data (n = 20,000, one structure, planted offsets -400, 0, 300,
   700 mm^3; clean and with 3 % gross outliers): ``fixed`` against ``combat``. Residual site effect:
   range over sites of the median z, as a % of that of a fit without a site term; offset error: the
   largest error of the recovered offsets, % of the largest planted one; age effect: change of the
   median from 30 to 80 years, % difference from a fit to the same scans with the offsets removed
   exactly; coverage: the worst of the 30 (age decile x centile 5/50/95) cells of 200,000 fresh
   scans of the same 4 sites, scored at their own site.
3. Coverage at n = 5,000 over ``--seeds`` training sets: how often every one of the 30 cells is
   within 1.5 percentage points, for the default model and for the planted family itself (cubic
   location and log-scale, no penalty), with 3 % gross outliers.

    .venv/bin/python benchmarks/norms.py [--scans 100000] [--seeds 10]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import replace

import numpy as np

from morphometry.analysis.norms_api import fit_norms, score_norms
from morphometry.analysis.norms_simulation import SimulatedNorms, simulate_norms_table
from morphometry.labels import STRUCTURES, TOTAL_INTRACRANIAL

PLANTED = SimulatedNorms(epsilon=0.4, sd_growth=1.0)
SITES = (-400.0, 0.0, 300.0, 700.0)


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def worst_cell(model, fresh) -> float:
    lo, hi = model.design.basis.age_min, model.design.basis.age_max
    inside = fresh[fresh["age"].between(lo, hi)]
    s = score_norms(inside, model).scores
    decile = np.minimum(((s["age"] - lo) / (hi - lo) * 10).astype(int), 9).to_numpy()
    c = s["centile"].to_numpy()
    return max(abs(100.0 * np.mean(c[decile == d] < q) - q) for d in range(10) for q in (5, 50, 95))


def site_spread(model, table) -> float:
    s = score_norms(table, model).scores.drop(columns="site").merge(table[["scan_id", "site"]], on="scan_id")
    med = s.groupby("site")["z"].median()
    return float(med.max() - med.min())


def age_effect(model) -> float:
    med = model.centiles([30.0, 80.0], centiles=(50,)).groupby("age_years")["volume_mm3"].mean()
    return float(med[80.0] - med[30.0])


def size_benchmark(n_scans: int) -> None:
    structures = (TOTAL_INTRACRANIAL, *STRUCTURES)
    planted = replace(PLANTED, structures=structures, site_offsets=SITES, outliers=0.03)
    table = simulate_norms_table(planted, np.random.default_rng(0), n_scans=n_scans)
    print(f"\n1. {n_scans} scans x {len(structures)} structures, 4 sites, 3 % gross outliers")
    print(f"{'case':<34} {'wall s':>7} {'CPU s':>7}  notes")
    for harmonise in ("fixed", "combat"):
        wall, cpu, model = timed(lambda h=harmonise, t=table: fit_norms(t, structures=("lateral", TOTAL_INTRACRANIAL),
                                                                 site="site", harmonise=h, progress=False))
        summary = model.summary()
        flagged = model.fit_outliers.groupby("structure")["scan_id"].apply(set)
        planted_ids = set(table.loc[table["planted_outlier"], "scan_id"])
        recall = np.mean([len(ids & planted_ids) / len(planted_ids) for ids in flagged])
        false = np.mean([len(ids - planted_ids) / (len(table) - len(planted_ids)) for ids in flagged])
        print(f"{'fit (' + harmonise + ')':<34} {wall:7.1f} {cpu:7.1f}  {len(summary)} fits, "
              f"{int((~summary['converged']).sum())} not converged, median {int(summary['n_iter'].median())} "
              f"iterations; gross errors flagged {100 * recall:.1f} %, false flags {100 * false:.2f} %")
        wall, cpu, scores = timed(lambda m=model, t=table: score_norms(t, m))
        print(f"{'score (' + harmonise + ')':<34} {wall:7.1f} {cpu:7.1f}  {len(scores.scores)} scores")


def harmonisation_benchmark() -> None:
    print("\n2. site harmonisation, 20,000 scans, 4 sites (offsets -400, 0, 300, 700 mm^3), one structure")
    print(f"{'case':<26} {'residual site %':>15} {'offset err %':>12} {'age effect %':>12} "
          f"{'worst cell':>10} {'fit s':>6}")
    fresh = simulate_norms_table(replace(PLANTED, site_offsets=SITES), np.random.default_rng(1001), n_scans=200_000)
    for outliers in (0.0, 0.03):
        planted = replace(PLANTED, site_offsets=SITES, outliers=outliers)
        table = simulate_norms_table(planted, np.random.default_rng(9), n_scans=20_000)
        site = table["site"].str.removeprefix("site").astype(int).to_numpy() - 1
        offsets = np.asarray(SITES) - np.mean(SITES)
        oracle = table.assign(left_hippocampus=table["left_hippocampus"] - offsets[site])
        reference = fit_norms(oracle, structures=("left_hippocampus",), progress=False)
        base_spread = site_spread(fit_norms(table, structures=("left_hippocampus",), progress=False), table)
        for harmonise in ("fixed", "combat"):
            wall, _, model = timed(lambda h=harmonise, t=table: fit_norms(
                t, structures=("left_hippocampus",), site="site", harmonise=h, progress=False))
            effects = model.site_effects().set_index("site")["offset_mm3"]
            eff = effects.loc[[f"site{k + 1}" for k in range(4)]].to_numpy()
            err = np.abs((eff - eff.mean()) - offsets).max() / np.abs(offsets).max()
            residual = site_spread(model, table) / base_spread
            age = age_effect(model) / age_effect(reference) - 1.0
            name = f"{harmonise}, {outliers:.0%} outliers"
            print(f"{name:<26} {100 * residual:15.1f} {100 * err:12.1f} {100 * age:12.2f} "
                  f"{worst_cell(model, fresh):10.2f} {wall:6.1f}")


def coverage_benchmark(fresh, seeds: int) -> None:
    print(f"\n3. coverage at n = 5,000 with 3 % gross outliers, {seeds} training sets: worst of 30 cells (points)")
    planted = replace(PLANTED, outliers=0.03)
    for name, settings in (("default (10 + 5 knots, smoothing 300)", {}),
                           ("planted family (cubic, no penalty)", {"n_knots": 2, "scale_knots": 2, "smoothing": 0.0})):
        worst = [worst_cell(fit_norms(simulate_norms_table(planted, np.random.default_rng(s), n_scans=5_000),
                                      structures=("left_hippocampus",), progress=False, **settings), fresh)
                 for s in range(seeds)]
        print(f"{name:<40} within 1.5 in {sum(w <= 1.5 for w in worst)}/{seeds}; worst cells "
              + ", ".join(f"{w:.2f}" for w in worst))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=100_000)
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    size_benchmark(args.scans)
    fresh = simulate_norms_table(PLANTED, np.random.default_rng(1000), n_scans=200_000)
    harmonisation_benchmark()
    coverage_benchmark(fresh, args.seeds)


if __name__ == "__main__":
    main()
