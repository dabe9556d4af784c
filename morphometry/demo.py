"""The demo: the whole toolkit on data it makes itself, through the Python API.

Stages: simulate a cohort with planted ageing on the embedded default anatomy
(:func:`simulate_cohort`; three sites with planted measurement offsets, a few failed
segmentations and between-subject variance growing with age), segment it with the shipped starter
models for every method they support (:class:`Segmenter`), evaluate against the truth label maps
(:func:`evaluate`), fit ageing to the segmented volumes and to the true volumes side by side
(:func:`fit_ageing`; the true volumes are the method ``truth``), fit normative centiles to a
reference population drawn from the same planted model (:func:`fit_norms`, site offsets as fixed
effects) and score the cohort's measured volumes against them (:func:`score_norms`), and write the
report (:func:`report`) with the planted population curves drawn over every method's recovered
trajectory. The norms' known answer (planted against recovered site offsets, planted failures
against flagged scans) is written to ``norms/known_answer.json``. ``OUT/timings.json`` records
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
    norms_scans: int  # size of the reference population of the normative model
    norms_knots: int  # location knots of the normative model (its log scale gets about half)


# Sized for the 3- and 15-minute budgets on 2 CPU cores: segmenting one scan with all five methods
# of the starter bundle takes about 16 s there (docs/benchmarks.md).
FULL = DemoSize(subjects=30, sessions_per_subject=1, max_protocols=1, downsample=2, bootstrap=200, knots=6,
                spacing_terms=("spacing_x_mm", "spacing_y_mm", "spacing_z_mm"), norms_scans=4000, norms_knots=8)
QUICK = DemoSize(subjects=7, sessions_per_subject=1, max_protocols=1, downsample=2, bootstrap=20, knots=2,
                 spacing_terms=(), norms_scans=1500, norms_knots=5)

PLANTED_NORMS = {"sites": 3, "site_offset_sd": 0.05, "failure_fraction": 0.05,
                 "deviation_sd": 0.04, "deviation_sd_per_decade": 0.01}
"""What the demo's cohort plants for the normative model (see CohortConfig and PlantedAgeingModel)."""
NORMS_STRUCTURES = ("hippocampus", "lateral_ventricle", "cerebral_cortex", "thalamus")

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


def _norms_reference(config, cohort: Path, size: DemoSize, seed: int) -> pd.DataFrame:
    """The reference population of the demo's norms, drawn from the cohort's planted model."""
    import numpy as np

    from morphometry.labels import STRUCTURES
    from morphometry.segment.synthesis.norms_reference import reference_table

    subjects = pd.read_csv(cohort / "subjects.csv")
    mean_base = {sex: part[list(STRUCTURES)].mean().to_dict() for sex, part in subjects.groupby("sex")}
    return reference_table(config, mean_base, size.norms_scans, np.random.default_rng([seed, 20]))


def _norms_known_answer(config, reference: pd.DataFrame, model, scores, manifest: pd.DataFrame, folder: Path) -> dict:
    """Planted against recovered site offsets (mm^3) and planted failures against flagged scans."""
    from morphometry.segment.synthesis.norms_reference import planted_site_offsets_mm3

    planted = planted_site_offsets_mm3(config, reference, model.structures)
    fitted = model.site_effects().rename(columns={"offset_mm3": "fitted_offset_mm3"})
    sites = planted.merge(fitted[["structure", "site", "fitted_offset_mm3"]], on=["structure", "site"])
    flagged_ref = set(model.fit_outliers["scan_id"])
    failed_ref = set(reference.loc[reference["planted_failure"], "scan_id"])
    s = scores.scores
    flagged = set(s.loc[s["flag_outlier"], "scan_id"])
    failed = set(manifest.loc[manifest["planted_failure"].astype(bool), "scan_id"])
    answer = {
        "site_offsets": sites.to_dict(orient="records"),
        "reference_failures": {"planted": len(failed_ref), "flagged_in_some_structure": len(failed_ref & flagged_ref),
                               "flagged_but_not_planted": len(flagged_ref - failed_ref)},
        "cohort_failures": {"planted": sorted(failed), "flagged": sorted(flagged)},
    }
    atomic_write(folder / "known_answer.json", lambda tmp: tmp.write_text(json.dumps(answer, indent=1)))
    error = (sites["fitted_offset_mm3"] - sites["planted_offset_mm3"]).abs().max()
    log.info(f"[demo] norms: site offsets within {error:.0f} mm^3 of the planted ones; "
             f"{len(failed_ref & flagged_ref)} of {len(failed_ref)} planted failures of the reference flagged")
    return answer


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
    from morphometry.analysis.norms_api import fit_norms, score_norms
    from morphometry.reports.ageing_figures import write_ageing_figures
    from morphometry.reports.evaluation_figures import fig5_boxplots
    from morphometry.reports.report import report
    from morphometry.segment.bundle import load_bundle
    from morphometry.segment.methods import supported_methods
    from morphometry.segment.models import STARTER_BUNDLE
    from morphometry.segment.segmenter import Segmenter
    from morphometry.segment.synthesis.anatomy import default_anatomy
    from morphometry.segment.synthesis.cohort import CohortConfig, simulate_cohort
    from morphometry.segment.synthesis.planted_ageing import PlantedAgeingModel
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
        planted = PlantedAgeingModel(deviation_sd=PLANTED_NORMS["deviation_sd"],
                                     deviation_sd_per_decade=PLANTED_NORMS["deviation_sd_per_decade"])
        config = CohortConfig(subjects=size.subjects, sessions_per_subject=size.sessions_per_subject,
                              max_protocols=size.max_protocols, seed=seed, ageing=planted, sites=PLANTED_NORMS["sites"],
                              site_offset_sd=PLANTED_NORMS["site_offset_sd"],
                              failure_fraction=PLANTED_NORMS["failure_fraction"])
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
    with _stage("fit and score norms", seconds):
        norms, norm_scores = out / "norms", out / "norm_scores"
        reference = _norms_reference(config, cohort, size, seed)
        model = fit_norms(reference, structures=NORMS_STRUCTURES, site="site", spacing_terms=(),
                          n_knots=size.norms_knots, scale_knots=max(2, size.norms_knots // 2), progress=False)
        model.write(norms)
        scores = score_norms(cohort / "measured_volumes.parquet", model, cohort / "manifest.csv")
        scores.write(norm_scores)
        _norms_known_answer(config, reference, model, scores, pd.read_csv(cohort / "manifest.csv"), norms)
    with _stage("report", seconds):
        page = report(out / "report.html", volumes=[seg / "volumes.parquet"], covariates=cohort / "manifest.csv",
                      ageing=ageing, evaluation=evaluation, planted=cohort / "planted_trajectories.csv",
                      norms=norms, norm_scores=norm_scores,
                      title="morphometry demo: simulated cohort with planted ageing")
    seconds["total"] = round(time.perf_counter() - start, 1)
    record = {"size": asdict(size), "scans": len(manifest), "methods": list(methods), "seconds": seconds}
    atomic_write(out / "timings.json", lambda tmp: tmp.write_text(json.dumps(record, indent=1)))
    log.info(f"[demo] done in {seconds['total']:.0f} s")
    return DemoResult(out, page, methods, seconds)
