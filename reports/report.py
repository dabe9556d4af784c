"""``morpho report``: one self-contained HTML page with the paper's figures and tables for a cohort.

Sections appear for the inputs given: cohort (Fig. S3), segmentation summary, evaluation (Fig. 5),
ageing (Fig. 6, S5, S6, annual % change, outliers) and provenance. Every figure is also written as
PNG and PDF into ``<report>_figures/`` beside the page.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from morphometry import __version__
from morphometry.errors import InputError
from morphometry.tables import atomic_write, join_covariates, read_metadata, read_table, read_volumes
from morphometry.reports.html import Page
from morphometry.reports.style import method_order, save_figure

PREFERRED_STRUCTURES = ("hippocampus", "lateral_ventricle", "cerebral_cortex", "cerebral_white_matter",
                        "thalamus", "amygdala")


@dataclass(frozen=True)
class ReportInputs:
    """What to report on; every part is optional."""

    volumes: tuple[Path, ...] = ()
    ageing: Path | None = None
    evaluation: Path | None = None
    covariates: Path | None = None
    structures: tuple[str, ...] = ()  # structures of Fig. 6 (default: a few of PREFERRED_STRUCTURES)
    planted: Path | None = None  # known curves (structure, age_years, volume_mm3) drawn in Fig. 6
    title: str = "morphometry report"


PLANTED_COLUMNS = ("structure", "age_years", "volume_mm3")


def read_planted(path: Path) -> pd.DataFrame:
    """Known population curves (simulate-cohort's planted_trajectories.csv); InputError naming the
    file when a column is missing or a value is not a number."""
    table = read_table(path)
    missing = [c for c in PLANTED_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"{path}: planted curves need the column(s) {', '.join(missing)}")
    for column in ("age_years", "volume_mm3"):
        values = pd.to_numeric(table[column], errors="coerce")
        if values.isna().any():
            raise InputError(f"{path}: column {column} has a missing or non-numeric value in row "
                             f"{int(values.isna().to_numpy().argmax()) + 2}")
        table[column] = values
    return table


def _need(path: Path, name: str) -> Path:
    if not (path / name).is_file():
        raise InputError(f"{path}: no {name} (is this a {'fit-ageing' if 'traj' in name else 'evaluate'} output folder?)")
    return path / name


class ReportBuilder:
    def __init__(self, inputs: ReportInputs, out_html: Path):
        self.inputs, self.out_html = inputs, Path(out_html)
        self.fig_dir = self.out_html.with_name(self.out_html.stem + "_figures")
        self.page = Page(inputs.title)
        self.figures: list[Path] = []

    def _figure(self, fig, name: str, caption: str) -> None:
        paths = save_figure(fig, self.fig_dir / name)
        self.figures += paths
        self.page.figure(paths[0], caption)

    def build(self) -> Path:
        if not (self.inputs.volumes or self.inputs.ageing or self.inputs.evaluation):
            raise InputError("nothing to report: give --volumes, --ageing and/or --evaluation")
        self.page.paragraph(f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by morphometry "
                            f"{__version__}.", "note")
        volumes = self._volumes()
        if volumes is not None:
            self._cohort(volumes)
            self._segmentation(volumes)
        if self.inputs.evaluation:
            self._evaluation(Path(self.inputs.evaluation))
        if self.inputs.ageing:
            self._ageing(Path(self.inputs.ageing))
        self._provenance()
        atomic_write(self.out_html, lambda tmp: tmp.write_text(self.page.render(), encoding="utf-8"))
        return self.out_html

    # -- sections ---------------------------------------------------------------------------
    def _volumes(self) -> pd.DataFrame | None:
        if not self.inputs.volumes:
            return None
        frames = [read_volumes(Path(p)) for p in self.inputs.volumes]
        volumes = pd.concat(frames, ignore_index=True)
        if self.inputs.covariates:
            volumes = join_covariates(volumes, read_table(Path(self.inputs.covariates)), str(self.inputs.covariates))
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
            row = {"method": method, "scans": part["scan_id"].nunique(),
                   "median total intracranial (mm^3)": part["total_intracranial"].median()}
            if qc_cols:
                row["median QC score (mean of groups)"] = part[qc_cols].mean(axis=1).median()
            rows.append(row)
        self.page.table(pd.DataFrame(rows))
        failures = [pd.read_csv(f) for p in self.inputs.volumes
                    if (f := Path(p).with_name("failures.csv")).is_file() and f.stat().st_size > 0]
        failures = pd.concat(failures, ignore_index=True) if failures else pd.DataFrame()
        self.page.paragraph(f"{len(failures)} scan(s) failed." if len(failures) else "No scan failed.")
        if len(failures):
            self.page.table(failures.head(50))

    def _evaluation(self, folder: Path) -> None:
        from morphometry.reports.evaluation_figures import fig5_boxplots

        scans = read_table(_need(folder, "scans.parquet"))
        self.page.heading("Evaluation against silver standards")
        meta = read_metadata(folder / "scans.parquet")
        if meta:
            self.page.paragraph("Metric definitions: " + "; ".join(f"{k}: {v}" for k, v in meta.items()
                                                                  if isinstance(v, (str, int, float))), "note")
        paths = fig5_boxplots(scans, self.fig_dir / "fig5_dice_msd")
        self.figures += paths
        self.page.figure(paths[0], "Fig. 5 style: mean Dice and mean surface distance per scan, by method and QC group.")
        table = (scans.groupby(["qc_group", "method"], sort=False)
                 .agg(scans=("scan_id", "nunique"), median_dice=("mean_dice", "median"),
                      median_msd_mm=("mean_msd_mm", "median")).reset_index())
        self.page.table(table)

    def _ageing(self, folder: Path) -> None:
        from morphometry.reports.ageing_figures import structure_grid_figure, trajectory_figure

        traj = read_table(_need(folder, "trajectories.parquet"))
        adjusted = read_table(_need(folder, "adjusted_volumes.parquet"))
        summary = read_table(_need(folder, "summary.csv"))
        meta = json.loads((folder / "ageing.json").read_text()) if (folder / "ageing.json").is_file() else {}
        where = (meta.get("spec") or {}).get("where")
        self.page.heading("Ageing trajectories" + (f" (subset: {where})" if where else ""))
        available = list(dict.fromkeys(summary["structure"]))
        structures = [s for s in self.inputs.structures if s in available] or \
            [s for s in PREFERRED_STRUCTURES if s in available][:4] or available[:4]
        missing = [s for s in self.inputs.structures if s not in available]
        if missing:
            raise InputError(f"{folder}: structures not in the ageing fit: {', '.join(missing)}")
        planted = read_planted(Path(self.inputs.planted)) if self.inputs.planted else None
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

    def _provenance(self) -> None:
        self.page.heading("Provenance")
        doc = {"morphometry": __version__, "python": platform.python_version(),
               "inputs": {k: str(v) for k, v in vars(self.inputs).items() if v}}
        for p in self.inputs.volumes:
            prov = Path(p).with_name("provenance.json")
            if prov.is_file():
                seg = json.loads(prov.read_text())
                doc[f"segment ({p})"] = {k: seg.get(k) for k in ("command", "versions", "device", "bundle",
                                                                  "seconds_per_stage")}
        if self.inputs.ageing and (Path(self.inputs.ageing) / "ageing.json").is_file():
            doc["fit-ageing"] = json.loads((Path(self.inputs.ageing) / "ageing.json").read_text())
        if self.inputs.evaluation and (Path(self.inputs.evaluation) / "scans.parquet").is_file():
            doc["evaluate"] = read_metadata(Path(self.inputs.evaluation) / "scans.parquet")
        self.page.preformatted(json.dumps(doc, indent=1, default=str))


def build_report(inputs: ReportInputs, out_html: Path) -> Path:
    """Write the report page and its figures; return the page's path."""
    return ReportBuilder(inputs, out_html).build()
