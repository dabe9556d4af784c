"""The ageing model of the paper's Sec. 3.4, fitted per structure and per method.

For scan i of structure volume y_i (mm^3, or a fraction of total intracranial volume):

    y_i = sum_k beta_k B_k(age_i) + gamma_x (s_x,i - r_x) + gamma_y (s_y,i - r_y)
          + gamma_z (s_z,i - r_z) + delta (male_i - 1/2) + e_i

- ``B_k``: cubic B-splines with ``n_knots`` (default 10) equally spaced knots from the youngest
  to the oldest age of the fitted table (all methods together): 12 basis functions by default.
  They sum to one, so they carry the intercept.
- ``s_x, s_y, s_z``: voxel spacing (mm) along the left-right, posterior-anterior and
  inferior-superior axes (``spacing_x_mm`` ...), centred at reference values ``r`` (default: the
  medians of the fitted table); ``male`` is 1 for male and 0 for female, centred at 1/2, so
  ``sum_k beta_k B_k(age)`` is the trajectory at the reference spacing, averaged over sexes.
- Soft monotonicity: ``lambda * sum_k max(0, -d (beta_{k+1} - beta_k))`` in units of the volume
  SD (see :mod:`morphometry.analysis.splines`), ``d`` from the structure's direction; ``auto``
  takes the sign of the Spearman correlation of volume with age.
- Fit by L-BFGS-B from the least-squares solution. Standard errors are cluster-robust by subject
  (statsmodels, small-sample factor G/(G-1) (n-1)/(n-k)), computed on the active design: the
  increments that the penalty set to exactly zero held fixed; intervals use Student t with G-1
  degrees of freedom (:mod:`morphometry.analysis.ageing_inference`). Trajectory bands come from
  :meth:`AgeingFit.bootstrap`, which resamples subjects (:mod:`morphometry.analysis.ageing_bootstrap`).
- ``random_intercept``: ``e_i = u_subject + eps_i`` instead. The variance components come from a
  statsmodels MixedLM (REML) fit; the coefficients are the penalised generalised least-squares
  fit with those components; the standard errors are MixedLM's on the active design; the
  bootstrap refits generalised least squares with the components fixed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np
import pandas as pd
from scipy import stats
from threadpoolctl import threadpool_limits

from morphometry.analysis.ageing_bootstrap import AgeingBootstrap, resample
from morphometry.analysis.ageing_inference import (
    VarianceComponents,
    cluster_covariance,
    fit_random_intercept,
    gls_transform,
)
from morphometry.analysis.ageing_metrics import age_grid, change_metrics
from morphometry.analysis.ageing_outputs import write_ageing_outputs
from morphometry.analysis.splines import DIRECTIONS, PenaltySettings, SplineBasis, active_map, solve_penalised
from morphometry.errors import DataError, InputError
from morphometry.labels import BILATERAL_STRUCTURES, STRUCTURES, TOTAL_INTRACRANIAL, bilateral_name
from morphometry.progress import Progress

SPACING_COLUMNS = ("spacing_x_mm", "spacing_y_mm", "spacing_z_mm")
UNITS = {"mm3": "mm^3", "fraction_tiv": "fraction of TIV"}
AGE_RANGE_YEARS = (0.0, 120.0)
SEX_CODES = {"m": 1, "male": 1, "1": 1, "f": 0, "female": 0, "0": 0}
"""Accepted sex values (case-insensitive): M/male/1 -> male, F/female/0 -> female."""

SUMMED_STRUCTURES = tuple(dict.fromkeys(bilateral_name(s) for s in STRUCTURES))
"""Left+right sums (``hippocampus``) and midline structures, as the paper plots them."""

_ROBUST_SD = 1.482602218505602  # MAD -> SD for a normal distribution


@dataclass(frozen=True)
class AgeingSpec:
    """Settings of the ageing model (see the module docstring for the model).

    ``structures``: names from the table (``left_hippocampus``), summed names (``hippocampus``)
    or the groups ``summed`` (left+right sums and midline structures) and ``lateral`` (the 32
    table columns); ``total_intracranial`` is added in mm^3 units. ``methods``: None = all in
    the table. ``where``: a pandas query on the joined table (``slice_spacing_mm > 6.5``).
    ``directions``: per-structure overrides of ``direction`` as (structure, direction) pairs.
    ``penalty``: lambda (dimensionless). ``reference_spacing_mm``: one value per spacing term,
    None = medians. ``outlier_sd``: outliers have |residual| above this many robust SDs.
    ``random_intercept``: a random intercept per subject (MixedLM) instead of cluster-robust
    standard errors.
    """

    structures: tuple[str, ...] = ("summed",)
    methods: tuple[str, ...] | None = None
    units: str = "mm3"
    where: str | None = None
    n_knots: int = 10
    direction: str = "auto"
    directions: tuple[tuple[str, str], ...] = ()
    penalty: float = 0.1
    spacing_terms: tuple[str, ...] = SPACING_COLUMNS
    sex_term: bool = True
    reference_spacing_mm: tuple[float, ...] | None = None
    outlier_sd: float = 3.0
    age_column: str = "age"
    sex_column: str = "sex"
    random_intercept: bool = False

    def __post_init__(self):
        if self.units not in UNITS:
            raise InputError(f"must be one of {', '.join(UNITS)}, not {self.units!r}", setting="units")
        for name, value in (("all structures", self.direction), *self.directions):
            if value not in (*DIRECTIONS, "auto"):
                raise InputError(f"{value!r} for {name} is not one of decreasing, increasing, none, auto",
                                 setting="direction")
        if not (np.isfinite(self.penalty) and self.penalty >= 0):
            raise InputError(f"lambda must be a finite number >= 0, not {self.penalty}", setting="penalty")
        if self.n_knots < 2:
            raise InputError(f"must be at least 2, not {self.n_knots}", setting="n_knots")
        bad = [t for t in self.spacing_terms if t not in SPACING_COLUMNS]
        if bad:
            raise InputError(f"unknown spacing terms {bad}; choose from {', '.join(SPACING_COLUMNS)}",
                             setting="spacing_terms")
        if self.reference_spacing_mm is not None and len(self.reference_spacing_mm) != len(self.spacing_terms):
            raise InputError(f"needs {len(self.spacing_terms)} values, one per spacing term",
                             setting="reference_spacing_mm")
        if self.outlier_sd <= 0:
            raise InputError(f"must be positive, not {self.outlier_sd}", setting="outlier_sd")

    @property
    def units_label(self) -> str:
        return UNITS[self.units]

    def direction_of(self, structure: str) -> str:
        return dict(self.directions).get(structure, self.direction)


def check_methods(table: pd.DataFrame, methods, source: str):
    """``methods``, after an InputError naming ``source`` if any is not in the table's method column."""
    present = list(dict.fromkeys(table["method"].astype(str)))
    absent = [m for m in methods if m not in present]
    if absent:
        raise InputError(f"{source}: method(s) {', '.join(absent)} not in the table (present: "
                         f"{', '.join(present)})", setting="methods")
    return methods


def resolve_structures(names, units: str) -> tuple[str, ...]:
    """Expand groups, check names; InputError for an unknown name."""
    out = [TOTAL_INTRACRANIAL] if units == "mm3" and any(n in ("summed", "lateral") for n in names) else []
    for name in names:
        if name == "summed":
            out += SUMMED_STRUCTURES
        elif name == "lateral":
            out += STRUCTURES
        elif name in STRUCTURES or name in BILATERAL_STRUCTURES or name == TOTAL_INTRACRANIAL:
            out.append(name)
        else:
            raise InputError(f"unknown structure {name!r}: use a table column (left_hippocampus), a "
                             "left+right sum (hippocampus), total_intracranial, 'summed' or 'lateral'",
                             setting="structures")
    out = list(dict.fromkeys(out))
    if units == "fraction_tiv" and TOTAL_INTRACRANIAL in out:
        if any(n == TOTAL_INTRACRANIAL for n in names):
            raise InputError("total_intracranial cannot be fitted as a fraction of itself", setting="structures")
        out.remove(TOTAL_INTRACRANIAL)
    if not out:
        raise InputError("no structures to fit", setting="structures")
    return tuple(out)


def structure_columns(structure: str) -> tuple[str, ...]:
    """Table columns summed to make ``structure``."""
    return BILATERAL_STRUCTURES.get(structure, (structure,))


def volume_columns(spec: AgeingSpec) -> tuple[str, ...]:
    """Every volume column the fit of ``spec`` reads (structure parts, and TIV for fractions)."""
    cols = [c for s in resolve_structures(spec.structures, spec.units) for c in structure_columns(s)]
    return tuple(dict.fromkeys(cols + ([TOTAL_INTRACRANIAL] if spec.units == "fraction_tiv" else [])))


def parse_sex(values: pd.Series, source: str, column: str) -> np.ndarray:
    """1 for male (M, male, 1), 0 for female (F, female, 0); DataError for anything else."""
    def text(v):
        if isinstance(v, (int, float, np.integer, np.floating)) and np.isfinite(v) and float(v).is_integer():
            return str(int(v))
        return str(v).strip().lower()

    codes = values.map(text)
    bad = ~codes.isin(list(SEX_CODES))
    if bad.any():
        shown = ", ".join(sorted({repr(v) for v in values[bad].head(20)})[:5])
        raise DataError(f"{source}: column {column!r} has {int(bad.sum())} values that are not "
                        f"M/F/male/female/1/0 (1 = male, 0 = female): {shown}")
    return codes.map(SEX_CODES).to_numpy(dtype=float)


def parse_age(values: pd.Series, source: str, column: str, ids: pd.Series) -> np.ndarray:
    age = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    lo, hi = AGE_RANGE_YEARS
    bad = ~np.isfinite(age) | (age < lo) | (age > hi)
    if bad.any():
        shown = ", ".join(f"{i}={v!r}" for i, v in zip(ids[bad].head(3), values[bad].head(3)))
        raise DataError(f"{source}: column {column!r}: {int(bad.sum())} scans have a missing, "
                        f"non-numeric or out-of-range age (allowed {lo:g}-{hi:g} years): {shown}")
    return age


@dataclass(frozen=True)
class MethodData:
    """The rows of one method: identifiers, covariates, design (n x p) and volumes (n x J)."""

    method: str
    scan_id: np.ndarray
    subject_id: np.ndarray
    subject_index: np.ndarray  # into AgeingFit.subjects
    age: np.ndarray  # years
    male: np.ndarray  # 1 male, 0 female
    design: np.ndarray
    volumes: np.ndarray  # NaN where missing


@dataclass(frozen=True)
class StructureFit:
    """The fit of one (method, structure)."""

    method: str
    structure: str
    direction: str  # resolved: increasing | decreasing | none
    coef: np.ndarray
    cov: np.ndarray  # covariance of coef: cluster-robust, or MixedLM's with a random intercept
    n_scans: int
    n_subjects: int
    ssr: float
    sst: float
    df_resid: int
    scale: float  # SD of the volumes (the penalty's unit)
    penalised: bool  # the penalty changed the least-squares solution
    converged: bool
    n_iter: int  # L-BFGS-B iterations
    pattern: np.ndarray  # spline increments: +1 right sign, 0 held at zero, -1 wrong sign
    variance: VarianceComponents | None = None  # with a random intercept

    def rows(self, data: MethodData, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows used, design, volumes) on which this fit is least squares: the scans with a
        volume, quasi-demeaned per subject with a random intercept."""
        rows = np.isfinite(data.volumes[:, j])
        x, y = data.design[rows], data.volumes[rows, j]
        if self.variance is not None:
            x, y = gls_transform(x, y, data.subject_index[rows], self.variance)
        return rows, x, y


class AgeingModel:
    """Estimator: ``AgeingModel(spec).fit(table)``; ``table`` is a VolumesTable joined with
    covariates (``scan_id``, ``subject_id``, ``method``, age, sex, spacing and volume columns;
    :func:`morphometry.analysis.ageing_api.fit_ageing` accepts less)."""

    def __init__(self, spec: AgeingSpec | None = None):
        self.spec = spec or AgeingSpec()

    def fit(self, table: pd.DataFrame, source: str = "table") -> "AgeingFit":
        spec = self.spec
        structures = resolve_structures(spec.structures, spec.units)
        df = self._select(table, structures, source)
        age = parse_age(df[spec.age_column], source, spec.age_column, df["scan_id"])
        male = parse_sex(df[spec.sex_column], source, spec.sex_column) if spec.sex_term else None
        spacing = df[list(spec.spacing_terms)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(spacing).all(axis=1) | (spacing <= 0).any(axis=1)
        if bad.any():
            raise DataError(f"{source}: {int(bad.sum())} scans have a missing or non-positive voxel "
                            f"spacing (e.g. scan {df['scan_id'].iloc[int(np.argmax(bad))]})")
        volumes = _volume_matrix(df, structures, spec.units, source)
        if age.min() == age.max():
            raise DataError(f"{source}: all scans have the same age ({age.min():g} years)")
        basis = SplineBasis(float(age.min()), float(age.max()), spec.n_knots)
        reference = (np.median(spacing, axis=0) if spec.reference_spacing_mm is None
                     else np.asarray(spec.reference_spacing_mm, dtype=float))
        terms = (*[f"spline_{k + 1}" for k in range(basis.n_basis)], *spec.spacing_terms,
                 *(["male"] if spec.sex_term else []))
        covars = spacing - reference
        if spec.sex_term:
            covars = np.column_stack([covars, male - 0.5])
        subjects, subject_index = np.unique(df["subject_id"].astype(str).to_numpy(), return_inverse=True)
        methods = tuple(dict.fromkeys(df["method"]))
        data, fits = {}, {}
        method_col = df["method"].to_numpy()
        # Many tiny problems: BLAS threads only cost. MixedLM fits take seconds each: report them.
        with (threadpool_limits(1, user_api="blas"),
              Progress(len(methods) * len(structures), "random-intercept fits", unit="fit",
                       enabled=spec.random_intercept) as bar):
            for method in methods:
                rows = method_col == method
                design = np.column_stack([basis.evaluate(age[rows]), covars[rows]])
                data[method] = MethodData(method, df["scan_id"].to_numpy()[rows].astype(str),
                                          subjects[subject_index[rows]], subject_index[rows], age[rows],
                                          male[rows] if spec.sex_term else np.full(rows.sum(), np.nan),
                                          design, volumes[rows])
                for j, structure in enumerate(structures):
                    fits[(method, structure)] = _fit_one(data[method], j, structure, basis, terms, spec, source)
                    bar.update()
        return AgeingFit(spec, basis, structures, methods, terms, tuple(reference), subjects, data, fits)

    def _select(self, table: pd.DataFrame, structures, source: str) -> pd.DataFrame:
        spec = self.spec
        needed = (
            ("structures", [c for s in structures for c in structure_columns(s)]),
            ("units", [TOTAL_INTRACRANIAL] if spec.units == "fraction_tiv" else []),
            (None, ["scan_id", "subject_id", "method"]),
            ("age_column", [spec.age_column]),
            ("sex_column", [spec.sex_column] if spec.sex_term else []),
            ("spacing_terms", list(spec.spacing_terms)),
        )
        for setting, columns in needed:
            missing = [c for c in dict.fromkeys(columns) if c not in table.columns]
            if missing:
                raise InputError(f"{source}: missing columns: {', '.join(missing)}", setting=setting)
        df = table
        if spec.where:
            try:
                df = df.query(spec.where, engine="python")
            except Exception as exc:  # pandas raises many types for a bad expression
                raise InputError(f"{spec.where!r}: cannot evaluate on {source} "
                                 f"({type(exc).__name__}: {exc})", setting="where") from None
        if spec.methods is not None:
            df = df[df["method"].isin(check_methods(table, spec.methods, source))]
        if df.empty:
            if spec.where:
                raise DataError(f"{source}: no scans left to fit after selecting {spec.where!r}", setting="where")
            raise DataError(f"{source}: no scans to fit")
        return df.reset_index(drop=True)


def _volume_matrix(df: pd.DataFrame, structures, units: str, source: str) -> np.ndarray:
    cols = []
    for s in structures:
        parts = [pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float) for c in structure_columns(s)]
        cols.append(np.sum(parts, axis=0))
    volumes = np.column_stack(cols)
    if units == "fraction_tiv":
        tiv = pd.to_numeric(df[TOTAL_INTRACRANIAL], errors="coerce").to_numpy(dtype=float)
        if (tiv <= 0).any():
            raise DataError(f"{source}: {int((tiv <= 0).sum())} scans have a non-positive "
                            f"{TOTAL_INTRACRANIAL}; cannot express volumes as fractions of it")
        volumes = volumes / tiv[:, None]
    return volumes


def _resolve_direction(spec: AgeingSpec, structure: str, age_rank: np.ndarray, y: np.ndarray) -> str:
    """The structure's direction; ``auto``: sign of Spearman's rho (Pearson on ranks) with age."""
    direction = spec.direction_of(structure)
    if direction != "auto":
        return direction
    ra, ry = age_rank - age_rank.mean(), stats.rankdata(y)
    rho = float(ra @ (ry - ry.mean()))
    return "none" if rho == 0 else ("increasing" if rho > 0 else "decreasing")


def _rank_problem(data: MethodData, rows: np.ndarray, basis: SplineBasis, terms) -> str:
    """A readable cause for a singular design."""
    age = data.age[rows]
    counts, _ = np.histogram(age, bins=basis.knots)
    if (counts == 0).any():
        i = int(np.flatnonzero(counts == 0)[0])
        return (f"no scans between ages {basis.knots[i]:.1f} and {basis.knots[i + 1]:.1f} years "
                "(use fewer knots)")
    n_spline = basis.n_basis
    for j, term in enumerate(terms[n_spline:], start=n_spline):
        if np.ptp(data.design[rows, j]) == 0:
            return f"{term} takes a single value (leave it out of the spacing/sex terms)"
    return "the covariates are collinear with age"


def _fit_one(data: MethodData, j: int, structure: str, basis: SplineBasis, terms, spec: AgeingSpec,
             source: str) -> StructureFit:
    rows = np.isfinite(data.volumes[:, j])
    x, y, groups = data.design[rows], data.volumes[rows, j], data.subject_index[rows]
    p, n_subjects = x.shape[1], np.unique(groups).size
    where = f"{source}: {data.method} / {structure}"
    if n_subjects <= p:
        raise DataError(f"{where}: too few subjects ({n_subjects}) for {p} parameters "
                        f"({basis.n_basis} spline basis functions from {basis.n_knots} knots + "
                        f"{p - basis.n_basis} covariates)")
    if np.linalg.matrix_rank(x.T @ x) < p:
        raise DataError(f"{where}: the design matrix is rank deficient: {_rank_problem(data, rows, basis, terms)}")
    scale = float(np.std(y))
    if scale == 0:
        raise DataError(f"{where}: all volumes are equal ({y[0]:g})")
    direction = _resolve_direction(spec, structure, stats.rankdata(data.age[rows]), y)
    settings = PenaltySettings(basis.n_basis, DIRECTIONS[direction], spec.penalty)
    mixed = None
    if spec.random_intercept:
        if n_subjects == len(y):
            raise DataError(f"{where}: every subject has one scan; a random intercept needs repeated "
                            "scans of some subjects", setting="random_intercept")
        mixed = fit_random_intercept(x, y, groups)
        xs, ys = gls_transform(x, y, groups, mixed.variance)
    else:
        xs, ys = x, y
    sol = solve_penalised(xs.T @ xs, xs.T @ ys, len(y), scale, settings)
    penalised = sol.n_iter > 0
    fixed = sol.pattern == 0 if penalised else np.zeros(basis.n_basis - 1, dtype=bool)
    a = active_map(p, settings, fixed)
    converged = sol.converged
    if mixed is None:
        cov = a @ cluster_covariance(x @ a, y, groups) @ a.T
    else:
        on_active = fit_random_intercept(x @ a, y, groups) if fixed.any() else mixed
        cov = a @ on_active.cov @ a.T
        converged = converged and mixed.converged and on_active.converged
    resid = y - x @ sol.coef
    return StructureFit(data.method, structure, direction, sol.coef, cov, len(y), n_subjects,
                        float(resid @ resid), float(((y - y.mean()) ** 2).sum()), len(y) - a.shape[1], scale,
                        penalised, converged, sol.n_iter, sol.pattern,
                        mixed.variance if mixed is not None else None)


@dataclass(frozen=True)
class AgeingFit:
    """Fitted ageing model for every (method, structure); tables via the methods below.

    ``bootstrap_result``: an :class:`AgeingBootstrap` attached by :meth:`with_bootstrap` (or
    ``fit_ageing(..., bootstrap=N)``); when present, :meth:`coefficients`, :meth:`summary` and
    :meth:`trajectories` include its intervals and bands, as the files of :meth:`write` do.
    ``inputs``: where the tables came from (recorded in ``ageing.json``).
    """

    spec: AgeingSpec
    basis: SplineBasis
    structures: tuple[str, ...]
    methods: tuple[str, ...]
    terms: tuple[str, ...]
    reference_spacing_mm: tuple[float, ...]
    subjects: np.ndarray
    data: dict = field(repr=False)
    fits: dict = field(repr=False)
    bootstrap_result: AgeingBootstrap | None = field(default=None, repr=False)
    inputs: dict = field(default_factory=dict)

    @property
    def n_spline(self) -> int:
        return self.basis.n_basis

    def design_matrix(self, method: str) -> pd.DataFrame:
        """The design (rows = scans of ``method``, columns = ``terms``), covariates centred."""
        d = self.data[method]
        return pd.DataFrame(d.design, columns=list(self.terms), index=pd.Index(d.scan_id, name="scan_id"))

    def age_grid(self) -> np.ndarray:
        return age_grid(self.basis)

    def trajectory(self, method: str, structure: str, ages=None) -> np.ndarray:
        """Expected volume at ``ages`` (years; default the 1-year grid), reference spacing, sexes averaged."""
        ages = self.age_grid() if ages is None else np.asarray(ages, dtype=float)
        return self.basis.evaluate(ages) @ self.fits[(method, structure)].coef[: self.n_spline]

    def reference_method(self, method: str | None = None) -> str:
        """``method`` checked, or the default reference: synthseg+ when fitted, else the first method."""
        if method is None:
            return "synthseg+" if "synthseg+" in self.methods else self.methods[0]
        if method not in self.methods:
            raise InputError(f"{method!r} was not fitted (fitted: {', '.join(self.methods)})",
                             setting="reference_method")
        return method

    def trajectories(self, reference_method: str | None = None, bands=None) -> pd.DataFrame:
        """Trajectories on the 1-year grid and their differences to ``reference_method``.

        Columns: quantity (trajectory | difference), method, reference_method, structure,
        age_years, estimate, lower, upper (bootstrap bands; NaN without a bootstrap), units.
        ``bands(method, structure, ages, reference or None) -> (lower, upper)`` fills the bands
        (default: those of the attached bootstrap).
        """
        if bands is None and self.bootstrap_result is not None:
            bands = self.bootstrap_result.bands
        ages, ref = self.age_grid(), self.reference_method(reference_method)
        nan = np.full(ages.size, np.nan)
        frames = []
        for s in self.structures:
            for m in self.methods:
                lo, hi = bands(m, s, ages, None) if bands else (nan, nan)
                frames.append(self._trajectory_frame("trajectory", m, "", s, ages, self.trajectory(m, s, ages), lo, hi))
                if m != ref:
                    lo, hi = bands(m, s, ages, ref) if bands else (nan, nan)
                    diff = self.trajectory(m, s, ages) - self.trajectory(ref, s, ages)
                    frames.append(self._trajectory_frame("difference", m, ref, s, ages, diff, lo, hi))
        return pd.concat(frames, ignore_index=True)

    def _trajectory_frame(self, quantity, method, ref, structure, ages, est, lo, hi) -> pd.DataFrame:
        return pd.DataFrame({"quantity": quantity, "method": method, "reference_method": ref,
                             "structure": structure, "age_years": ages, "estimate": est,
                             "lower": lo, "upper": hi, "units": self.spec.units_label})

    def predict(self, table: pd.DataFrame) -> pd.DataFrame:
        """Predicted volumes (fit units) for rows of ``table`` (age, sex, spacing columns, and
        ``method`` unless one method was fitted)."""
        spec = self.spec
        ids = table["scan_id"] if "scan_id" in table.columns else table.index.to_series()
        age = parse_age(table[spec.age_column], "predict", spec.age_column, ids)
        lo, hi = self.basis.age_min, self.basis.age_max
        if age.min() < lo or age.max() > hi:
            raise DataError(f"predict: ages must lie in the fitted range {lo:g}-{hi:g} years")
        covars = table[list(spec.spacing_terms)].to_numpy(dtype=float) - np.asarray(self.reference_spacing_mm)
        if spec.sex_term:
            covars = np.column_stack([covars, parse_sex(table[spec.sex_column], "predict", spec.sex_column) - 0.5])
        x = np.column_stack([self.basis.evaluate(age), covars])
        if "method" in table.columns:
            method = table["method"].to_numpy()
        elif len(self.methods) == 1:
            method = np.full(len(table), self.methods[0], dtype=object)
        else:
            raise InputError(f"predict: the table needs a method column (fitted: {', '.join(self.methods)})")
        out = pd.DataFrame(np.nan, index=table.index, columns=list(self.structures))
        for m in self.methods:
            rows = method == m
            for s in self.structures:
                out.loc[rows, s] = x[rows] @ self.fits[(m, s)].coef
        return out

    def residuals(self) -> pd.DataFrame:
        """One row per (method, structure, scan): volume, fitted value, covariate-adjusted volume
        (trajectory + residual), residual, robust z (residual / (1.4826 MAD)) and outlier flag."""
        return self._residual_table.copy()

    @cached_property
    def _residual_table(self) -> pd.DataFrame:
        frames = []
        for (method, s), f in self.fits.items():
            d = self.data[method]
            j = self.structures.index(s)
            rows = np.isfinite(d.volumes[:, j])
            y, x = d.volumes[rows, j], d.design[rows]
            fitted = x @ f.coef
            resid = y - fitted
            rsd = _ROBUST_SD * np.median(np.abs(resid - np.median(resid)))
            z = resid / rsd if rsd > 0 else np.zeros_like(resid)
            frames.append(pd.DataFrame({
                "method": method, "structure": s, "scan_id": d.scan_id[rows],
                "subject_id": d.subject_id[rows], "age_years": d.age[rows], "male": d.male[rows],
                "volume": y, "fitted": fitted,
                "adjusted_volume": x[:, : self.n_spline] @ f.coef[: self.n_spline] + resid,
                "residual": resid, "robust_z": z, "outlier": np.abs(z) > self.spec.outlier_sd}))
        return pd.concat(frames, ignore_index=True)

    def outliers(self) -> pd.DataFrame:
        res = self.residuals()
        return res[res["outlier"]].drop(columns="outlier").reset_index(drop=True)

    def coefficients(self) -> pd.DataFrame:
        """Estimates with standard errors (cluster-robust, or MixedLM's with a random intercept)
        and 95% t intervals (G-1 df); bootstrap SE and percentile interval when bootstrapped."""
        rows = []
        for (method, s), f in self.fits.items():
            se = np.sqrt(np.maximum(np.diag(f.cov), 0.0))
            t = stats.t.ppf(0.975, f.n_subjects - 1)
            for term, est, e in zip(self.terms, f.coef, se):
                rows.append({"method": method, "structure": s, "term": term, "estimate": est,
                             "std_error": e, "ci_low": est - t * e, "ci_high": est + t * e})
        out = pd.DataFrame(rows)
        out.insert(3, "units", self._term_units(out["term"]))
        if self.bootstrap_result is not None:
            out = out.merge(self.bootstrap_result.coefficient_intervals(), on=["method", "structure", "term"],
                            how="left")
        return out

    def _term_units(self, terms: pd.Series) -> list[str]:
        u = self.spec.units_label
        return [f"{u} per mm" if t.startswith("spacing") else u for t in terms]

    def summary(self) -> pd.DataFrame:
        """One row per (method, structure): fit statistics, change metrics, outlier counts, the
        number of bootstrap replicates and (when bootstrapped) intervals of the change metrics."""
        res = self.residuals()
        n_out = res.groupby(["method", "structure"], sort=False)["outlier"].sum()
        rows = []
        for (method, s), f in self.fits.items():
            row = {"method": method, "structure": s, "units": self.spec.units_label,
                   "direction": f.direction, "penalty": self.spec.penalty, "n_scans": f.n_scans,
                   "n_subjects": f.n_subjects, "residual_sd": np.sqrt(f.ssr / f.df_resid),
                   "r2": 1.0 - f.ssr / f.sst if f.sst > 0 else np.nan,
                   "penalty_active": f.penalised, "converged": f.converged}
            if f.variance is not None:
                row["subject_sd"] = np.sqrt(max(f.variance.subject_var, 0.0))
                row["scan_sd"] = np.sqrt(f.variance.scan_var)
            row.update({k: float(v) for k, v in change_metrics(self.basis, f.coef[: self.n_spline]).items()})
            row["n_outliers"] = int(n_out[(method, s)])
            row["outlier_fraction"] = row["n_outliers"] / f.n_scans
            rows.append(row)
        out = pd.DataFrame(rows)
        boot = self.bootstrap_result
        out["n_bootstrap"] = boot.n_replicates if boot is not None else 0
        if boot is not None:
            out = out.merge(boot.change_intervals(), on=["method", "structure"], how="left")
        return out

    def bootstrap(self, n_replicates: int, rng: np.random.Generator | int = 0, *,
                  progress: bool = True) -> AgeingBootstrap:
        """Refit on ``n_replicates`` resamples of subjects (:mod:`morphometry.analysis.ageing_bootstrap`).

        ``rng``: a Generator or a seed (recorded). ``progress``: report replicates through
        :class:`morphometry.progress.Progress` (when the ``morphometry`` logger shows information).
        """
        if n_replicates < 2:
            raise InputError(f"the bootstrap needs at least 2 replicates, not {n_replicates}",
                             setting="n_replicates")
        seed = int(rng) if isinstance(rng, (int, np.integer)) else None
        return resample(replace(self, bootstrap_result=None), n_replicates, np.random.default_rng(rng),
                        seed=seed, progress=progress)

    def with_bootstrap(self, n_replicates: int, seed: int = 0, *, progress: bool = True) -> AgeingFit:
        """This fit with a bootstrap of ``n_replicates`` (seeded by ``seed``) attached."""
        return replace(self, bootstrap_result=self.bootstrap(n_replicates, seed, progress=progress))

    def write(self, out_dir, *, reference_method: str | None = None) -> dict:
        """Write the tables of ``morpho fit-ageing`` (coefficients.csv, trajectories.parquet,
        summary.csv, outliers.csv, adjusted_volumes.parquet, ageing.json) into ``out_dir``;
        returns {file name: DataFrame or dict} as written. The figures are drawn by
        :func:`morphometry.reports.ageing_figures.write_ageing_figures` from these tables."""
        return write_ageing_outputs(self, out_dir, reference_method=self.reference_method(reference_method))
