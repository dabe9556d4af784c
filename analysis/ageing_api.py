"""``fit_ageing``: the ageing model on any table that holds the structures under study.

    fit = fit_ageing("volumes.parquet", "covariates.tsv", structures=("hippocampus",), bootstrap=200)
    fit.summary(); fit.trajectories(); fit.write("ageing/")

Tables are DataFrames or files (``.parquet``, ``.csv``, ``.tsv``, ``.txt``; see
:func:`morphometry.tables.read_table`). The volumes table needs the volume columns of the
requested structures only (``left_hippocampus`` and ``right_hippocampus`` for ``hippocampus``);
``method`` is optional (without it every row belongs to one method named ``volumes``);
``scan_id`` is optional when every row is a scan (one method): it is then made from the row
number (``row1``, ``row2``, ...); ``subject_id`` is optional (without it every scan is its own
subject). Age, sex and spacing columns are read from the volumes table, or from ``covariates``
joined on ``scan_id``, else ``subject_id`` (+ ``session_id``).
"""

from __future__ import annotations

import difflib
from dataclasses import fields, replace
from pathlib import Path

import pandas as pd

from morphometry.analysis.ageing_model import AgeingFit, AgeingModel, AgeingSpec, volume_columns
from morphometry.errors import InputError
from morphometry.progress import log
from morphometry.tables import join_covariates, read_table, validate_volumes

SINGLE_METHOD = "volumes"
"""Method name of a table without a ``method`` column."""

_TUPLE_SETTINGS = ("structures", "methods", "spacing_terms", "reference_spacing_mm")


def fit_ageing(volumes, covariates=None, *, structures=("summed",), methods=None, bootstrap: int = 0,
               seed: int = 0, progress: bool = True, **spec) -> AgeingFit:
    """Fit the ageing model (:mod:`morphometry.analysis.ageing_model`) to ``volumes``.

    ``volumes``, ``covariates``: DataFrames or paths (see the module docstring for what they
    need); ``covariates=None`` reads age and sex from the volumes table. ``structures``,
    ``methods`` and ``**spec``: fields of :class:`AgeingSpec` (``n_knots=6``, ``penalty=0``,
    ``random_intercept=True``, ``directions={"hippocampus": "decreasing"}``, ...); a name that
    is not a field is an InputError naming it. ``bootstrap``: subject-bootstrap replicates (0 =
    none, else at least 2) drawn with ``seed``, attached as ``fit.bootstrap_result``, so that
    ``fit.coefficients()``, ``fit.summary()``, ``fit.trajectories()`` and ``fit.write(out_dir)``
    carry the bootstrap intervals and bands. ``progress``: report bootstrap replicates.
    """
    settings = ageing_spec(structures=structures, methods=methods, **spec)
    if bootstrap < 0 or bootstrap == 1:
        raise InputError(f"must be 0 or at least 2, not {bootstrap}", setting="bootstrap")
    table, source, inputs = ageing_table(volumes, covariates, settings)
    fit = replace(AgeingModel(settings).fit(table, source=source), inputs=inputs)
    return fit.with_bootstrap(bootstrap, seed, progress=progress) if bootstrap else fit


def normalised_settings(spec_class, model: str, tuple_settings: tuple[str, ...], settings: dict) -> dict:
    """``settings`` checked against the fields of the frozen dataclass ``spec_class`` (InputError
    naming an unknown one, with the closest field), lists or a single string turned into tuples
    for ``tuple_settings``."""
    known = [f.name for f in fields(spec_class)]
    for name in settings:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]}?" if close else f"settings: {', '.join(known)}"
            raise InputError(f"not a setting of {model} ({hint})", setting=name)
    out = dict(settings)
    for name in tuple_settings:
        value = out.get(name)
        if isinstance(value, str):
            out[name] = (value,)
        elif value is not None:
            out[name] = tuple(value)
    return out


def ageing_spec(**settings) -> AgeingSpec:
    """An :class:`AgeingSpec` from keyword settings; lists or a single string are accepted where
    the spec holds tuples, and a dict for ``directions``. InputError naming an unknown setting."""
    settings = normalised_settings(AgeingSpec, "the ageing model", _TUPLE_SETTINGS, settings)
    if isinstance(settings.get("directions"), dict):
        settings["directions"] = tuple(settings["directions"].items())
    elif "directions" in settings:
        settings["directions"] = tuple(tuple(pair) for pair in settings["directions"])
    return AgeingSpec(**settings)


def ageing_table(volumes, covariates, spec: AgeingSpec) -> tuple[pd.DataFrame, str, dict]:
    """The table :class:`AgeingModel` fits: volumes with identifiers completed and covariates
    joined. Returns (table, source named in messages, inputs recorded in ageing.json)."""
    vol, vol_name = _load(volumes, "volumes")
    vol = _identifiers(vol, vol_name)
    missing = [c for c in volume_columns(spec) if c not in vol.columns]
    if missing:
        shown = ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else "")
        raise InputError(f"{vol_name}: missing columns: {shown} (fit the structures the table holds)",
                         setting="structures")
    validate_volumes(vol, vol_name, volume_columns(spec))
    if covariates is None:
        return _subjects(vol, spec), vol_name, {"volumes": _described(volumes), "covariates": None}
    cov, cov_name = _load(covariates, "covariates")
    needed = [(spec.age_column, "age_column")] + ([(spec.sex_column, "sex_column")] if spec.sex_term else [])
    for column, setting in needed:
        if column not in cov.columns:
            raise InputError(f"{cov_name}: missing columns: {column}", setting=setting)
    table = join_covariates(vol, cov, source=cov_name)
    no_cov = table[spec.age_column].isna()
    if no_cov.any() and not spec.where:
        raise InputError(f"{cov_name}: no covariates for {int(no_cov.sum())} scans "
                         f"(e.g. {table.loc[no_cov, 'scan_id'].iloc[0]}); add them or leave those scans "
                         "out with a where selection", setting="covariates")
    inputs = {"volumes": _described(volumes), "covariates": _described(covariates)}
    return _subjects(table, spec), f"{vol_name} + {cov_name}", inputs


def _load(table, what: str) -> tuple[pd.DataFrame, str]:
    if isinstance(table, pd.DataFrame):
        return table, f"{what} DataFrame"
    if isinstance(table, (str, Path)):
        return read_table(Path(table)), str(table)
    raise InputError(f"a DataFrame or a path, not {type(table).__name__}", setting=what)


def _described(table) -> str:
    return "DataFrame" if isinstance(table, pd.DataFrame) else str(table)


def _identifiers(vol: pd.DataFrame, name: str) -> pd.DataFrame:
    """Add ``method`` (one method) and ``scan_id`` (row numbers) where the table has none."""
    if "method" not in vol.columns:
        vol = vol.assign(method=SINGLE_METHOD)
    if "scan_id" not in vol.columns:
        if vol["method"].nunique() > 1:
            raise InputError(f"{name}: no scan_id column: with several methods it must say which rows "
                             "are the same scan")
        vol = vol.assign(scan_id=[f"row{i}" for i in range(1, len(vol) + 1)])
    return vol


def _subjects(table: pd.DataFrame, spec: AgeingSpec) -> pd.DataFrame:
    """Without ``subject_id``, every scan is its own subject."""
    if "subject_id" in table.columns:
        return table
    if spec.random_intercept:
        raise InputError("needs a subject_id column (in the volumes or the covariates)", setting="random_intercept")
    log.info("no subject_id column: every scan is taken as a separate subject")
    return table.assign(subject_id=table["scan_id"])
