"""The demo: the whole toolkit on data it makes itself, through the Python API.

Stages: simulate a cohort with planted ageing on the embedded default anatomy
(:func:`simulate_cohort`), segment it with the shipped starter models for every method they
support (:class:`Segmenter`), evaluate against the truth label maps (:func:`evaluate`), fit ageing
to the segmented volumes and to the true volumes side by side (:func:`fit_ageing`; the true
volumes are the method ``truth``), and write the report (:func:`report`) with the planted
population curves drawn over every method's recovered trajectory. ``OUT/timings.json`` records
the seconds of every stage.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from morphometry.atomic import atomic_write
from morphometry.errors import DataError, InputError
from morphometry.labels import BILATERAL_STRUCTURES
from morphometry.methods import method_order
from morphometry.progress import log


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
                spacing_terms=("spacing_x_mm", "spacing_y_mm", "spacing_z_mm"))
QUICK = DemoSize(subjects=7, sessions_per_subject=1, max_protocols=1, downsample=2, bootstrap=20, knots=2,
                 spacing_terms=())

DEMO_STRUCTURES = ("hippocampus", "lateral_ventricle", "cerebral_cortex", "cerebral_white_matter", "thalamus",
                   "amygdala", "putamen", "caudate", "cerebellum_cortex", "brain_stem")


@dataclass(frozen=True)
class DemoResult:
    """Where the demo wrote its outputs, and how long each stage took (s)."""

    out_dir: Path
    report: Path
    methods: tuple[str, ...]
    seconds: dict = field(default_factory=dict)


def fittable(volumes: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(structures, methods) the demo's ageing fit can use: structures of DEMO_STRUCTURES (left + right
    summed) whose volume varies across scans for the truth and the first segmentation method, and
    the methods for which all of them vary (a weak model that never finds a structure is left out)."""
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


@contextmanager
def _stage(name: str, seconds: dict[str, float]):
    """Log a stage's start and end; record its wall time (s) in ``seconds[name]``."""
    log.info(f"[demo] {name} ...")
    start = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - start, 1)
    log.info(f"[demo] {name} done in {seconds[name]:.0f} s")


def run_demo(out_dir: str | os.PathLike = "morpho-demo", *, quick: bool = False, models="starter",
             seed: int = 0) -> DemoResult:
    """Simulate, segment, evaluate, fit ageing and report into ``out_dir`` (refused if it already
    holds a demo). ``quick``: the small cohort (:data:`QUICK`) instead of :data:`FULL`;
    ``models``: a bundle folder or ``"starter"``; ``seed``: of the simulation and the bootstrap."""
    from morphometry.analysis.ageing_api import fit_ageing
    from morphometry.analysis.evaluation import evaluate
    from morphometry.reports.ageing_figures import write_ageing_figures
    from morphometry.reports.evaluation_figures import fig5_boxplots
    from morphometry.reports.report import report
    from morphometry.segment.bundle import load_bundle
    from morphometry.segment.methods import supported_methods
    from morphometry.segment.models import STARTER_BUNDLE
    from morphometry.segment.segmenter import Segmenter
    from morphometry.segment.synthesis.anatomy import default_anatomy
    from morphometry.segment.synthesis.cohort import CohortConfig, simulate_cohort
    from morphometry.tables import read_volumes

    size = QUICK if quick else FULL
    out = Path(out_dir)
    if (out / "cohort").exists():
        raise InputError(f"{out} already holds a demo; choose another folder", setting="out_dir")
    bundle = load_bundle(STARTER_BUNDLE if str(models) == "starter" else models)
    methods = tuple(supported_methods(set(bundle.networks)))
    if not methods:
        raise InputError(f"{bundle.root}: the bundle supports no segmentation method", setting="models")
    cohort, seg, evaluation, ageing = out / "cohort", out / "segment", out / "evaluation", out / "ageing"
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    with _stage("simulate cohort", seconds):
        config = CohortConfig(subjects=size.subjects, sessions_per_subject=size.sessions_per_subject,
                              max_protocols=size.max_protocols, seed=seed)
        manifest = simulate_cohort(cohort, default_anatomy().downsampled(size.downsample), config)
    log.info(f"[demo] methods of {bundle.model_id}: {', '.join(methods)}")
    with _stage("segment", seconds):
        batch = Segmenter(bundle, methods).segment_many(cohort / "manifest.csv", seg, resume=False)
    with _stage("evaluate against the truth", seconds):
        truth = {row.scan_id: cohort / row.truth_path for row in manifest.itertuples()}
        result = evaluate(seg, truth, qc_from="synthseg" if "synthseg" in methods else None,
                          jobs=os.cpu_count() or 1)
        fig5_boxplots(result.scans, result.write(evaluation) / "figures" / "fig5_dice_msd")
    with _stage("fit ageing", seconds):
        both = pd.concat([batch.volumes, read_volumes(cohort / "truth_volumes.parquet")], ignore_index=True)
        structures, fitted = fittable(both)
        fit = fit_ageing(both, cohort / "manifest.csv", structures=structures, methods=fitted,
                         n_knots=size.knots, spacing_terms=size.spacing_terms,
                         bootstrap=size.bootstrap, seed=seed)
        written = fit.write(ageing, reference_method="truth")
        write_ageing_figures(ageing / "figures", written["trajectories.parquet"], written["adjusted_volumes.parquet"],
                             structures=[s for s in ("cerebral_cortex", "hippocampus") if s in structures]
                             or structures[:2], s5_method="truth")
    with _stage("report", seconds):
        page = report(out / "report.html", volumes=[seg / "volumes.parquet"], covariates=cohort / "manifest.csv",
                      ageing=ageing, evaluation=evaluation, planted=cohort / "planted_trajectories.csv",
                      title="morphometry demo: simulated cohort with planted ageing")
    seconds["total"] = round(time.perf_counter() - start, 1)
    record = {"size": asdict(size), "scans": len(manifest), "methods": list(methods), "seconds": seconds}
    atomic_write(out / "timings.json", lambda tmp: tmp.write_text(json.dumps(record, indent=1)))
    log.info(f"[demo] done in {seconds['total']:.0f} s")
    return DemoResult(out, page, methods, seconds)
