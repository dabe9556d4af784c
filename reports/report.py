"""``report``: one self-contained HTML page with the paper's figures and tables for a cohort.

Sections appear for the inputs given: cohort (Fig. S3), segmentation summary, evaluation (Fig. 5),
ageing (Fig. 6, S5, S6, annual % change, outliers), normative centiles (centile charts, site
effects, flags and z profiles) and provenance. Every figure is also written as
PNG and PDF into ``<report>_figures/`` beside the page. Inputs are output folders and tables, or
the results objects of the Python API (:mod:`morphometry.reports.report_inputs`).
"""

from __future__ import annotations

import json
import platform
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from morphometry import __version__
from morphometry.atomic import atomic_write
from morphometry.errors import InputError
from morphometry.methods import method_order
from morphometry.reports.html import Page
from morphometry.reports.report_inputs import (
    AgeingTables,
    EvaluationTables,
    NormsTables,
    VolumesInput,
    describe,
    join_report_covariates,
    read_ageing,
    read_evaluation,
    read_norms,
    read_planted,
    read_volumes_inputs,
)
from morphometry.reports.style import save_figure

PREFERRED_STRUCTURES = ("hippocampus", "lateral_ventricle", "cerebral_cortex", "cerebral_white_matter",
                        "thalamus", "amygdala")


def report(out: str | Path, *, volumes=(), ageing=None, evaluation=None, covariates=None,
           structures: tuple[str, ...] = (), planted=None, norms=None, norm_scores=None,
           title: str = "morphometry report") -> Path:
    """Write the report page ``out`` (e.g. ``report.html``) and its figures; return the page's path.

    ``volumes``: volumes tables (paths or DataFrames, one or several); ``covariates``: a table
    with age and sex joined to them (path or DataFrame); ``ageing``: an output folder of
    ``morpho fit-ageing`` or an ``AgeingFit``; ``evaluation``: an output folder of
    ``morpho evaluate`` or an ``EvaluationResult``; ``structures``: the structures of Fig. 6
    (default: a few of PREFERRED_STRUCTURES that were fitted); ``planted``: known curves
    (structure, age_years, volume_mm3; path or DataFrame) drawn in Fig. 6; ``norms``: an output
    folder of ``morpho norms fit`` or a ``NormsModel``; ``norm_scores``: an output folder of
    ``morpho norms score`` or ``NormsScores`` (scans drawn over the centiles, flags, z profiles).
    Give at least one of volumes, ageing, evaluation and norms.
    """
    out = Path(out)
    structures = (structures,) if isinstance(structures, str) else tuple(structures)
    volume_inputs = read_volumes_inputs(volumes)
    if not (volume_inputs or ageing is not None or evaluation is not None or norms is not None):
        raise InputError("nothing to report: give volumes, ageing, evaluation and/or norms")
    if norm_scores is not None and norms is None:
        raise InputError("norm scores need the norms model they were scored with", setting="norm_scores")
    described = {"title": title, "volumes": [describe(v.path if v.path is not None else v.table)
                                             for v in volume_inputs]}
    described.update((name, describe(value)) for name, value in (
        ("ageing", ageing), ("evaluation", evaluation), ("covariates", covariates), ("planted", planted),
        ("norms", norms), ("norm_scores", norm_scores),
        ("structures", ", ".join(structures) or None)) if value is not None)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch:
        data = ReportData(
            volumes=volume_inputs,
            covariates=covariates,
            ageing=read_ageing(ageing, Path(scratch)) if ageing is not None else None,
            evaluation=read_evaluation(evaluation, Path(scratch)) if evaluation is not None else None,
            planted=read_planted(planted) if planted is not None else None,
            norms=read_norms(norms, norm_scores, Path(scratch)) if norms is not None else None,
            structures=structures,
            described={k: v for k, v in described.items() if v},
        )
    return ReportBuilder(data, out, title).build()


@dataclass(frozen=True, eq=False)
class ReportData:
    """The report's inputs, read."""

    volumes: list[VolumesInput]
    covariates: object
    ageing: AgeingTables | None
    evaluation: EvaluationTables | None
    planted: pd.DataFrame | None
    norms: NormsTables | None
    structures: tuple[str, ...]
    described: dict  # argument -> how it was given, for the provenance section


class ReportBuilder:
    """Draws the sections of one report page from :class:`ReportData`."""

    def __init__(self, data: ReportData, out_html: Path, title: str):
        self.data, self.out_html = data, Path(out_html)
        self.fig_dir = self.out_html.with_name(self.out_html.stem + "_figures")
        self.page = Page(title)

    def _figure(self, fig, name: str, caption: str) -> None:
        self.page.figure(save_figure(fig, self.fig_dir / name)[0], caption)

    def build(self) -> Path:
        self.page.paragraph(f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by morphometry "
                            f"{__version__}.", "note")
        volumes = self._volumes()
        if volumes is not None:
            self._cohort(volumes)
            self._segmentation(volumes)
        if self.data.evaluation is not None:
            self._evaluation(self.data.evaluation)
        if self.data.ageing is not None:
            self._ageing(self.data.ageing)
        if self.data.norms is not None:
            self._norms(self.data.norms)
        self._provenance()
        atomic_write(self.out_html, lambda tmp: tmp.write_text(self.page.render(), encoding="utf-8"))
        return self.out_html

    # -- sections ---------------------------------------------------------------------------
    def _volumes(self) -> pd.DataFrame | None:
        if not self.data.volumes:
            return None
        volumes = pd.concat([v.table for v in self.data.volumes], ignore_index=True)
        if self.data.covariates is not None:
            volumes = join_report_covariates(volumes, self.data.covariates)
        return volumes

    def _cohort(self, volumes: pd.DataFrame) -> None:
        from morphometry.reports.cohort_figures import cohort_figure

        scans = volumes.drop_duplicates("scan_id")
        self.page.heading("Cohort")
        n_subjects = scans["subject_id"].nunique() if "subject_id" in scans else len(scans)
        self.page.paragraph(f"{len(scans)} scans of {n_subjects} subjects.")
        if {"slice_spacing_mm", "slice_axis"} <= set(scans.columns):
            self._figure(cohort_figure(scans), "fig_s3_cohort",
                         "Fig. S3 style: ages by sex (when covariates are given) and slice spacing by slice axis.")

    def _segmentation(self, volumes: pd.DataFrame) -> None:
        self.page.heading("Segmentation")
        rows = []
        qc_cols = [c for c in volumes.columns if c.startswith("qc_")]
        for method in method_order(volumes["method"].unique()):
            part = volumes[volumes["method"] == method]
            row = {"method": method, "scans": part["scan_id"].nunique()}
            if "total_intracranial" in part:
                row["median total intracranial (mm^3)"] = part["total_intracranial"].median()
            if qc_cols:
                row["median QC score (mean of groups)"] = part[qc_cols].mean(axis=1).median()
            rows.append(row)
        self.page.table(pd.DataFrame(rows))
        failures = [pd.read_csv(f) for v in self.data.volumes if v.path is not None
                    and (f := v.path.with_name("failures.csv")).is_file() and f.stat().st_size > 0]
        failures = pd.concat(failures, ignore_index=True) if failures else pd.DataFrame()
        self.page.paragraph(f"{len(failures)} scan(s) failed." if len(failures) else "No scan failed.")
        if len(failures):
            self.page.table(failures.head(50))

    def _evaluation(self, evaluation: EvaluationTables) -> None:
        from morphometry.reports.evaluation_figures import fig5_boxplots

        scans, meta = evaluation.scans, evaluation.meta
        self.page.heading("Evaluation against silver standards")
        if meta:
            self.page.paragraph("Metric definitions: " + "; ".join(f"{k}: {v}" for k, v in meta.items()
                                                                  if isinstance(v, (str, int, float))), "note")
        paths = fig5_boxplots(scans, self.fig_dir / "fig5_dice_msd")
        self.page.figure(paths[0], "Fig. 5 style: mean Dice and mean surface distance per scan, by method and QC group.")
        table = (scans.groupby(["qc_group", "method"], sort=False)
                 .agg(scans=("scan_id", "nunique"), median_dice=("mean_dice", "median"),
                      median_msd_mm=("mean_msd_mm", "median")).reset_index())
        self.page.table(table)

    def _ageing(self, ageing: AgeingTables) -> None:
        from morphometry.reports.ageing_figures import structure_grid_figure, trajectory_figure

        traj, adjusted, summary = ageing.trajectories, ageing.adjusted, ageing.summary
        where = (ageing.meta.get("spec") or {}).get("where")
        self.page.heading("Ageing trajectories" + (f" (subset: {where})" if where else ""))
        available = list(dict.fromkeys(summary["structure"]))
        wanted = self.data.structures
        structures = [s for s in wanted if s in available] or \
            [s for s in PREFERRED_STRUCTURES if s in available][:4] or available[:4]
        missing = [s for s in wanted if s not in available]
        if missing:
            raise InputError(f"{ageing.source}: structures not in the ageing fit: {', '.join(missing)}",
                             setting="structures")
        planted = self.data.planted
        if planted is not None and traj["units"].iloc[0] != "mm^3":
            self.page.paragraph(f"The planted curves (mm^3) are not drawn: this fit is in {traj['units'].iloc[0]}.", "note")
            planted = None
        name = "fig_s6_trajectories" if where else "fig6_trajectories"
        self._figure(trajectory_figure(traj, adjusted, structures, planted=planted), name,
                     ("Fig. S6" if where else "Fig. 6") + " style: covariate-adjusted volumes and fitted trajectories "
                     "(pointwise 95% bootstrap bands) per method; crosses are outliers"
                     + ("; dashed: the planted truth (sexes averaged)." if planted is not None else "."))
        methods = method_order(summary["method"].unique())
        segmented = [m for m in methods if m != "truth"]
        s5 = segmented[0] if segmented else methods[0]
        self._figure(structure_grid_figure(traj, adjusted, s5), f"fig_s5_{s5.replace('+', 'plus')}",
                     f"Fig. S5 style: every structure, {s5}.")
        change = [c for c in summary.columns if c.startswith("annual_pct_change") or c.startswith("peak_age")]
        self.page.heading("Annual % change", level=3)
        self.page.table(summary[["method", "structure", *change]])
        self.page.heading("Outliers per method", level=3)
        self.page.table(summary.groupby("method", sort=False)
                        .agg(fits=("structure", "size"), outliers=("n_outliers", "sum"),
                             scans=("n_scans", "max")).reset_index())

    def _norms(self, norms: NormsTables) -> None:
        from morphometry.reports.norms_figures import centile_figure, profile_grid

        spec = norms.meta.get("spec", {})
        self.page.heading("Normative centiles")
        site = spec.get("site")
        self.page.paragraph(
            f"Location-scale-shape model ({spec.get('family', 'shash')}) per structure and method: B-splines on "
            f"age for the location and log-scale, sex and slice-spacing terms, "
            + (f"site column {site!r} harmonised by {spec.get('harmonise')}" if site else "no site term")
            + "; gross errors taken up by a uniform outlier component. Curves at the reference spacing"
            + (" and the average site" if site else "") + ".", "note")
        curves, summary = norms.curves, norms.summary
        methods = method_order(curves["method"].unique())
        available = list(dict.fromkeys(curves["structure"]))
        structures = [s for s in self.data.structures if s in available] or \
            [s for s in PREFERRED_STRUCTURES if s in available][:3] or available[:3]
        method = methods[0]
        bands = "; shaded: 95% bootstrap bands" if curves["lower"].notna().any() else ""
        drawn = "; points: scored scans (harmonised volumes), crosses: likely gross errors" \
            if norms.scores is not None else ""
        self._figure(centile_figure(curves, method, structures, norms.scores),
                     f"norms_centiles_{method.replace('+', 'plus')}",
                     f"Centile curves (2.5 ... 97.5, median bold) of {method} by sex{bands}{drawn}.")
        self.page.table(summary[["method", "structure", "n_scans", "n_outliers", "outlier_fraction",
                                 "skewness_epsilon", "tail_delta", "converged"]])
        if not norms.site_effects.empty:
            self.page.heading("Site effects (mm^3)", level=3)
            self.page.table(norms.site_effects.pivot_table(index=["method", "structure"], columns="site",
                                                            values="offset_mm3").reset_index())
        if norms.scores is not None:
            s = norms.scores
            self.page.heading("Scores", level=3)
            self.page.table(s.groupby(["method", "structure"], sort=False).agg(
                scans=("scan_id", "nunique"), median_z=("z", "median"), flag_low=("flag_low", "sum"),
                flag_high=("flag_high", "sum"), likely_gross_errors=("flag_outlier", "sum"),
                outside_ages=("age_outside_range", "sum"), unseen_sites=("site_unseen", "sum")).reset_index())
            self._figure(profile_grid(s, norms.subjects), "norms_profiles",
                         "z-scores across structures of the most flagged subjects (grey: |z| < 1.96; red: "
                         "flagged; x: likely gross error).")

    def _provenance(self) -> None:
        self.page.heading("Provenance")
        doc = {"morphometry": __version__, "python": platform.python_version(), "inputs": self.data.described}
        for v in self.data.volumes:
            prov = v.path.with_name("provenance.json") if v.path is not None else None
            if prov is not None and prov.is_file():
                seg = json.loads(prov.read_text())
                doc[f"segment ({v.path})"] = {k: seg.get(k) for k in ("command", "versions", "device", "bundle",
                                                                       "seconds_per_stage")}
        if self.data.ageing is not None and self.data.ageing.meta:
            doc["fit-ageing"] = self.data.ageing.meta
        if self.data.evaluation is not None:
            doc["evaluate"] = self.data.evaluation.meta
        if self.data.norms is not None:
            doc["norms"] = {k: v for k, v in self.data.norms.meta.items() if k not in ("fits", "combat")}
        self.page.preformatted(json.dumps(doc, indent=1, default=str))
