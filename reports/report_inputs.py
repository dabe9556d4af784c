"""What a report is drawn from: output folders and files, or the results objects of the Python API.

Each reader takes what ``morpho report`` takes (a folder or a table file) or the in-memory
equivalent (a DataFrame, an ``AgeingFit``, an ``EvaluationResult``) and returns the tables the
report draws. Results objects are duck-typed: an evaluation result with a ``scans`` DataFrame is
read directly; any other result with ``write(out_dir)`` (an ageing fit) is written into a scratch
folder and read back like an output folder, so the report shows exactly what the files would hold.
Errors name the argument at fault (``setting="ageing"``, ...), which the CLI shows as its flag.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from morphometry.errors import InputError
from morphometry.tables import join_covariates, read_metadata, read_table, read_volumes, validate_volumes

PLANTED_COLUMNS = ("structure", "age_years", "volume_mm3")
AGEING_FILES = ("trajectories.parquet", "adjusted_volumes.parquet", "summary.csv")


def is_path(value) -> bool:
    return isinstance(value, (str, os.PathLike))


def describe(value) -> str:
    """One line for the provenance section: a path as given, a table by its size, an object by its type."""
    if is_path(value):
        return str(value)
    if isinstance(value, pd.DataFrame):
        return f"DataFrame ({len(value)} rows x {len(value.columns)} columns)"
    return type(value).__name__


def _named(setting: str, read, *args):
    """``read(*args)``, with an InputError that names no setting attributed to ``setting``."""
    try:
        return read(*args)
    except InputError as exc:
        if exc.setting is None:
            raise InputError(exc.message, setting=setting) from None
        raise


@dataclass(frozen=True, eq=False)
class VolumesInput:
    """One volumes table and the file it came from (None for a DataFrame); ``failures.csv`` and
    ``provenance.json`` of ``morpho segment`` are looked up beside that file."""

    table: pd.DataFrame
    path: Path | None


def read_volumes_inputs(volumes) -> list[VolumesInput]:
    """``volumes``: a path or DataFrame, or a sequence of them."""
    items = [volumes] if is_path(volumes) or isinstance(volumes, pd.DataFrame) else list(volumes)
    out = []
    for item in items:
        if isinstance(item, pd.DataFrame):
            out.append(VolumesInput(_named("volumes", validate_volumes, item, "DataFrame"), None))
        elif is_path(item):
            out.append(VolumesInput(_named("volumes", read_volumes, Path(item)), Path(item)))
        else:
            raise InputError(f"expected a volumes table (path or DataFrame), got {type(item).__name__}",
                             setting="volumes")
    return out


def join_report_covariates(volumes: pd.DataFrame, covariates) -> pd.DataFrame:
    """``covariates``: a path or DataFrame joined on ``scan_id``, else ``subject_id`` (+ ``session_id``)."""
    if isinstance(covariates, pd.DataFrame):
        return _named("covariates", join_covariates, volumes, covariates, "DataFrame")
    if not is_path(covariates):
        raise InputError(f"expected a table (path or DataFrame), got {type(covariates).__name__}",
                         setting="covariates")
    table = _named("covariates", read_table, Path(covariates))
    return _named("covariates", join_covariates, volumes, table, str(covariates))


def read_planted(planted) -> pd.DataFrame:
    """Known population curves (simulate-cohort's ``planted_trajectories.csv``, or the same as a
    DataFrame); InputError when a column is missing or a value is not a number."""
    if isinstance(planted, pd.DataFrame):
        table, source = planted.copy(), "planted curves"
    elif is_path(planted):
        table, source = _named("planted", read_table, Path(planted)), str(planted)
    else:
        raise InputError(f"expected a table (path or DataFrame), got {type(planted).__name__}", setting="planted")
    missing = [c for c in PLANTED_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"{source}: planted curves need the column(s) {', '.join(missing)}", setting="planted")
    for column in ("age_years", "volume_mm3"):
        values = pd.to_numeric(table[column], errors="coerce")
        if values.isna().any():
            raise InputError(f"{source}: column {column} has a missing or non-numeric value in row "
                             f"{int(values.isna().to_numpy().argmax()) + 2}", setting="planted")
        table[column] = values
    return table


@dataclass(frozen=True, eq=False)
class AgeingTables:
    """The tables of ``morpho fit-ageing`` that the report draws, and its ``ageing.json``."""

    trajectories: pd.DataFrame
    adjusted: pd.DataFrame
    summary: pd.DataFrame
    meta: dict
    source: str

    @classmethod
    def from_folder(cls, folder: Path, source: str | None = None) -> AgeingTables:
        for name in AGEING_FILES:
            if not (folder / name).is_file():
                raise InputError(f"{source or folder}: no {name} (is this a fit-ageing output folder?)",
                                 setting="ageing")
        traj, adjusted, summary = (read_table(folder / name) for name in AGEING_FILES)
        meta_path = folder / "ageing.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        return cls(traj, adjusted, summary, meta, source or str(folder))


def read_ageing(ageing, scratch: Path) -> AgeingTables:
    """``ageing``: an output folder of ``morpho fit-ageing``, or a fit with ``write(out_dir)``
    writing the same files (written into ``scratch``)."""
    if is_path(ageing):
        return AgeingTables.from_folder(Path(ageing))
    if callable(getattr(ageing, "write", None)):
        folder = scratch / "ageing"
        ageing.write(folder)
        return AgeingTables.from_folder(folder, describe(ageing))
    raise InputError(f"expected a fit-ageing output folder or a fit with write(out_dir), got "
                     f"{type(ageing).__name__}", setting="ageing")


@dataclass(frozen=True, eq=False)
class EvaluationTables:
    """Per-scan evaluation (scan_id, method, qc_group, mean_dice, mean_msd_mm) and its metadata."""

    scans: pd.DataFrame
    meta: dict
    source: str

    @classmethod
    def from_folder(cls, folder: Path, source: str | None = None) -> EvaluationTables:
        path = folder / "scans.parquet"
        if not path.is_file():
            raise InputError(f"{source or folder}: no scans.parquet (is this an evaluate output folder?)",
                             setting="evaluation")
        return cls(read_table(path), read_metadata(path), source or str(folder))


def read_evaluation(evaluation, scratch: Path) -> EvaluationTables:
    """``evaluation``: an output folder of ``morpho evaluate``, a result with a ``scans`` DataFrame
    (and ``metadata()``), or one with ``write(out_dir)`` writing the same files."""
    if is_path(evaluation):
        return EvaluationTables.from_folder(Path(evaluation))
    scans = getattr(evaluation, "scans", None)
    if isinstance(scans, pd.DataFrame):
        meta = evaluation.metadata() if callable(getattr(evaluation, "metadata", None)) else {}
        return EvaluationTables(scans, meta, describe(evaluation))
    if callable(getattr(evaluation, "write", None)):
        folder = scratch / "evaluation"
        evaluation.write(folder)
        return EvaluationTables.from_folder(folder, describe(evaluation))
    raise InputError(f"expected an evaluate output folder or an evaluation result, got "
                     f"{type(evaluation).__name__}", setting="evaluation")


@dataclass(frozen=True, eq=False)
class NormsTables:
    """The tables of ``morpho norms fit`` that the report draws (``centiles.csv``, ``summary.csv``,
    ``site_effects.csv``, ``norms.json``) and, when given, those of ``morpho norms score``."""

    curves: pd.DataFrame
    summary: pd.DataFrame
    site_effects: pd.DataFrame
    meta: dict
    source: str
    scores: pd.DataFrame | None = None
    subjects: pd.DataFrame | None = None

    @classmethod
    def from_folder(cls, folder: Path, source: str | None = None) -> NormsTables:
        for name in ("norms.json", "centiles.csv", "summary.csv"):
            if not (folder / name).is_file():
                raise InputError(f"{source or folder}: no {name} (is this a norms fit output folder?)", setting="norms")
        effects = folder / "site_effects.csv"
        return cls(read_table(folder / "centiles.csv"), read_table(folder / "summary.csv"),
                   read_table(effects) if effects.is_file() else pd.DataFrame(),
                   json.loads((folder / "norms.json").read_text()), source or str(folder))


def read_norms(norms, scores, scratch: Path) -> NormsTables:
    """``norms``: an output folder of ``morpho norms fit`` or a model with ``write(out_dir)``;
    ``scores`` (or None): an output folder of ``morpho norms score`` or scores with ``write``."""
    if is_path(norms):
        tables = NormsTables.from_folder(Path(norms))
    elif callable(getattr(norms, "write", None)):
        norms.write(scratch / "norms")
        tables = NormsTables.from_folder(scratch / "norms", describe(norms))
    else:
        raise InputError(f"expected a norms fit output folder or a model with write(out_dir), got "
                         f"{type(norms).__name__}", setting="norms")
    if scores is None:
        return tables
    if not is_path(scores):
        if not callable(getattr(scores, "write", None)):
            raise InputError(f"expected a norms score output folder or scores with write(out_dir), got "
                             f"{type(scores).__name__}", setting="norm_scores")
        scores.write(scratch / "norm_scores")
        scores = scratch / "norm_scores"
    folder = Path(scores)
    for name in ("scores.parquet", "subjects.csv"):
        if not (folder / name).is_file():
            raise InputError(f"{folder}: no {name} (is this a norms score output folder?)", setting="norm_scores")
    return NormsTables(tables.curves, tables.summary, tables.site_effects, tables.meta, tables.source,
                       read_table(folder / "scores.parquet"), read_table(folder / "subjects.csv"))
