"""``morpho demo``: the whole toolkit on data it makes itself.

Stages, each the real command: simulate a cohort with planted ageing on the embedded default
anatomy (``simulate-cohort``), segment it with the shipped starter models for every method they
support (``segment``), evaluate against the truth label maps (``evaluate``), fit ageing to the
segmented volumes and to the true volumes side by side (``fit-ageing``; the true volumes are the
method ``truth``), and write the report (``report``) with the planted population curves drawn over
every method's recovered trajectory. ``DIR/timings.json`` records the seconds of every stage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class DemoSize:
    """How big the simulated cohort is and how rich the ageing model and its resampling are."""

    subjects: int
    sessions_per_subject: int
    max_protocols: int
    downsample: int  # keep every N-th anatomy voxel (2 = 2 mm anatomy)
    bootstrap: int
    knots: int  # spline knots of the ageing model (fewer for a small cohort)
    spacing_terms: tuple[str, ...]  # slice-spacing covariates of the ageing model


# Sized for the 3- and 15-minute budgets on 2 CPU cores: segmenting one scan with all five methods
# of the starter bundle takes about 16 s there (docs/benchmarks.md).
FULL = DemoSize(subjects=30, sessions_per_subject=1, max_protocols=1, downsample=2, bootstrap=200, knots=6,
                spacing_terms=("x", "y", "z"))
QUICK = DemoSize(subjects=7, sessions_per_subject=1, max_protocols=1, downsample=2, bootstrap=20, knots=2,
                 spacing_terms=())


def register(sub) -> None:
    p = sub.add_parser("demo", help="simulate, segment, evaluate, fit ageing and report, out of the box",
                       description=__doc__.split("\n\n")[1])
    p.add_argument("-o", "--out", type=Path, default=Path("morpho-demo"), help="output folder (default: morpho-demo)")
    p.add_argument("--quick", action="store_true",
                   help=f"a small cohort ({QUICK.subjects} subjects, {QUICK.bootstrap} bootstrap replicates) "
                        f"instead of {FULL.subjects} subjects")
    p.add_argument("--models", type=Path, default=None, help="model bundle (default: the shipped starter bundle)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulation and the bootstrap (default: 0)")
    p.set_defaults(func=run)


DEMO_STRUCTURES = ("hippocampus", "lateral_ventricle", "cerebral_cortex", "cerebral_white_matter", "thalamus",
                   "amygdala", "putamen", "caudate", "cerebellum_cortex", "brain_stem")


def fittable(volumes) -> tuple[list[str], list[str]]:
    """(structures, methods) the demo's ageing fit can use: structures of DEMO_STRUCTURES (left + right
    summed) whose volume varies across scans for the truth and the first segmentation method, and
    the methods for which all of them vary (a weak model that never finds a structure is left out)."""
    from morphometry.errors import DataError
    from morphometry.labels import BILATERAL_STRUCTURES
    from morphometry.reports.style import method_order

    varying = {}
    for name in DEMO_STRUCTURES:
        summed = volumes[list(BILATERAL_STRUCTURES.get(name, (name,)))].sum(axis=1)
        stds = summed.groupby(volumes["method"]).std()
        varying[name] = set(stds[stds > 0].index)
    methods = [m for m in method_order(volumes["method"].unique()) if m != "truth"]
    anchors = {"truth", methods[0]} if methods else {"truth"}
    structures = [name for name in DEMO_STRUCTURES if anchors <= varying[name]]
    if not structures:
        raise DataError("no structure varies across scans; the demo cannot fit ageing")
    kept = [m for m in [*methods, "truth"] if all(m in varying[name] for name in structures)]
    return structures, kept


def _stage(name: str, argv: list[str], timings: dict[str, float], detail: str = "") -> None:
    """Run one command; record its wall time (s) in ``timings[name]``."""
    from morphometry.cli import main
    from morphometry.errors import DataError

    print(f"[demo] {name}{detail} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    code = main(argv)
    if code not in (0, 1):  # 1 = some scans failed, recorded in failures.csv; the demo goes on
        raise DataError(f"demo stage '{name}' failed (exit code {code}); see the message above")
    timings[name] = round(time.perf_counter() - start, 1)
    print(f"[demo] {name} done in {timings[name]:.0f} s", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from morphometry.errors import InputError
    from morphometry.tables import atomic_write, read_volumes, write_volumes
    from morphometry.segment.bundle import load_bundle
    from morphometry.segment.models import STARTER_BUNDLE as DEFAULT_BUNDLE
    from morphometry.segment.methods import supported_methods

    size = QUICK if args.quick else FULL
    out = args.out
    if (out / "cohort").exists():
        raise InputError(f"{out} already holds a demo; choose another -o")
    bundle = load_bundle(args.models or DEFAULT_BUNDLE)
    methods = supported_methods(set(bundle.networks))
    if not methods:
        raise InputError(f"{bundle.root}: the bundle supports no segmentation method")
    cohort, seg, evaluation, ageing = out / "cohort", out / "segment", out / "evaluation", out / "ageing"
    timings: dict[str, float] = {}
    start = time.perf_counter()
    _stage("simulate cohort", ["simulate-cohort", "-o", str(cohort), "--subjects", str(size.subjects),
                               "--sessions-per-subject", str(size.sessions_per_subject),
                               "--max-protocols", str(size.max_protocols), "--downsample", str(size.downsample),
                               "--seed", str(args.seed)], timings)
    argv = ["segment", str(cohort / "manifest.csv"), "-o", str(seg), "--models", str(bundle.root)]
    _stage("segment", argv + [a for m in methods for a in ("--method", m)], timings, f" ({', '.join(methods)})")
    manifest = pd.read_csv(cohort / "manifest.csv")
    references = out / "truth_manifest.csv"
    manifest.assign(path=[str((cohort / p).resolve()) for p in manifest["truth_path"]])[["scan_id", "path"]] \
        .to_csv(references, index=False)
    qc = ["--qc-from", "synthseg"] if "synthseg" in methods else []
    _stage("evaluate against the truth", ["evaluate", "--pred", str(seg), "--reference", str(references),
                                          "-o", str(evaluation), "--jobs", str(os.cpu_count() or 1), *qc],
           timings)
    both = pd.concat([read_volumes(seg / "volumes.parquet"), read_volumes(cohort / "truth_volumes.parquet")],
                     ignore_index=True)
    write_volumes(both, out / "volumes_with_truth")
    structures, fitted = fittable(both)
    _stage("fit ageing", ["fit-ageing", str(out / "volumes_with_truth" / "volumes.parquet"), "--structures",
                          *structures, "--methods", *fitted, "--covariates",
                          str(cohort / "manifest.csv"), "-o", str(ageing), "--bootstrap", str(size.bootstrap),
                          "--knots", str(size.knots), "--spacing-terms", *size.spacing_terms,
                          "--seed", str(args.seed), "--reference-method", "truth"], timings)
    report = out / "report.html"
    _stage("report", ["report", "-o", str(report), "--volumes", str(seg / "volumes.parquet"), "--covariates",
                      str(cohort / "manifest.csv"), "--ageing", str(ageing), "--evaluation", str(evaluation),
                      "--planted", str(cohort / "planted_trajectories.csv"),
                      "--title", "morphometry demo: simulated cohort with planted ageing"], timings)
    timings["total"] = round(time.perf_counter() - start, 1)
    record = {"size": asdict(size), "scans": len(manifest), "methods": methods, "seconds": timings}
    atomic_write(out / "timings.json", lambda tmp: tmp.write_text(json.dumps(record, indent=1)))
    print(f"[demo] done in {timings['total']:.0f} s", file=sys.stderr)
    print(f"report: {report.resolve()}")
    return 0
