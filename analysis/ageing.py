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
  SD (see :mod:`morphometry.analysis.splines`), ``d`` from the structure's direction; ``auto`` takes the sign
  of the Spearman correlation of volume with age.
- Fit by L-BFGS-B from the least-squares solution. Standard errors are cluster-robust by subject
  (sandwich, small-sample factor G/(G-1) (n-1)/(n-k)), computed on the design with the increments
  that the penalty set to exactly zero held fixed; intervals use Student t with G-1 degrees of
  freedom. Trajectory bands come from :meth:`AgeingFit.bootstrap`, which resamples subjects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
from scipy import sparse, stats
from threadpoolctl import threadpool_limits

from morphometry.analysis.splines import (DIRECTIONS, PenaltySettings, SplineBasis, least_squares,
                              solve_patterns, solve_penalised, wrong_sign_increments)
from morphometry.errors import DataError, InputError
from morphometry.labels import BILATERAL_STRUCTURES, STRUCTURES, TOTAL_INTRACRANIAL, bilateral_name

SPACING_COLUMNS = ("spacing_x_mm", "spacing_y_mm", "spacing_z_mm")
UNITS = {"mm3": "mm^3", "fraction_tiv": "fraction of TIV"}
AGE_RANGE_YEARS = (0.0, 120.0)
SEX_CODES = {"m": 1, "male": 1, "1": 1, "f": 0, "female": 0, "0": 0}
"""Accepted sex values (case-insensitive): M/male/1 -> male, F/female/0 -> female."""

CHANGE_AGES_YEARS = (30, 50, 70)
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

    def __post_init__(self):
        if self.units not in UNITS:
            raise InputError(f"units must be one of {', '.join(UNITS)}, not {self.units!r}")
        for name, value in (("direction", self.direction), *self.directions):
            if value not in (*DIRECTIONS, "auto"):
                raise InputError(f"direction for {name}: {value!r} is not one of "
                                 "decreasing, increasing, none, auto")
        if not (np.isfinite(self.penalty) and self.penalty >= 0):
            raise InputError(f"penalty (lambda) must be a finite number >= 0, not {self.penalty}")
        if self.n_knots < 2:
            raise InputError(f"n_knots must be at least 2, not {self.n_knots}")
        bad = [t for t in self.spacing_terms if t not in SPACING_COLUMNS]
        if bad:
            raise InputError(f"unknown spacing terms {bad}; choose from {', '.join(SPACING_COLUMNS)}")
        if self.reference_spacing_mm is not None and len(self.reference_spacing_mm) != len(self.spacing_terms):
            raise InputError(f"reference_spacing_mm needs {len(self.spacing_terms)} values, one per spacing term")
        if self.outlier_sd <= 0:
            raise InputError(f"outlier_sd must be positive, not {self.outlier_sd}")

    @property
    def units_label(self) -> str:
        return UNITS[self.units]

    def direction_of(self, structure: str) -> str:
        return dict(self.directions).get(structure, self.direction)


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
                             "left+right sum (hippocampus), total_intracranial, 'summed' or 'lateral'")
    out = list(dict.fromkeys(out))
    if units == "fraction_tiv" and TOTAL_INTRACRANIAL in out:
        if any(n == TOTAL_INTRACRANIAL for n in names):
            raise InputError("total_intracranial cannot be fitted as a fraction of itself")
        out.remove(TOTAL_INTRACRANIAL)
    if not out:
        raise InputError("no structures to fit")
    return tuple(out)


def structure_columns(structure: str) -> tuple[str, ...]:
    """Table columns summed to make ``structure``."""
    return BILATERAL_STRUCTURES.get(structure, (structure,))


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
    cov: np.ndarray  # cluster-robust covariance of coef
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


class AgeingModel:
    """Estimator: ``AgeingModel(spec).fit(table)``; ``table`` is a VolumesTable joined with covariates."""

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
        with threadpool_limits(1, user_api="blas"):  # many tiny problems: threads only cost
            for method in methods:
                rows = method_col == method
                design = np.column_stack([basis.evaluate(age[rows]), covars[rows]])
                data[method] = MethodData(method, df["scan_id"].to_numpy()[rows].astype(str),
                                          subjects[subject_index[rows]], subject_index[rows], age[rows],
                                          male[rows] if spec.sex_term else np.full(rows.sum(), np.nan),
                                          design, volumes[rows])
                sums = _subject_sums(subject_index[rows])
                for j, structure in enumerate(structures):
                    fits[(method, structure)] = _fit_one(data[method], j, structure, basis, terms, spec,
                                                         source, sums)
        return AgeingFit(spec, basis, structures, methods, terms, tuple(reference), subjects, data, fits)

    def _select(self, table: pd.DataFrame, structures, source: str) -> pd.DataFrame:
        spec = self.spec
        needed = ["scan_id", "subject_id", "method", spec.age_column, *spec.spacing_terms]
        needed += [spec.sex_column] if spec.sex_term else []
        needed += [c for s in structures for c in structure_columns(s)]
        needed += [TOTAL_INTRACRANIAL] if spec.units == "fraction_tiv" else []
        missing = [c for c in dict.fromkeys(needed) if c not in table.columns]
        if missing:
            raise InputError(f"{source}: missing columns: {', '.join(missing)}")
        df = table
        if spec.where:
            try:
                df = df.query(spec.where, engine="python")
            except Exception as exc:  # pandas raises many types for a bad expression
                raise InputError(f"--where {spec.where!r}: cannot evaluate on {source} "
                                 f"({type(exc).__name__}: {exc})") from None
        present = list(dict.fromkeys(table["method"].astype(str)))
        if spec.methods is not None:
            absent = [m for m in spec.methods if m not in present]
            if absent:
                raise InputError(f"{source}: method(s) {', '.join(absent)} not in the table "
                                 f"(present: {', '.join(present)})")
            df = df[df["method"].isin(spec.methods)]
        if df.empty:
            after = f" after --where {spec.where!r}" if spec.where else ""
            raise DataError(f"{source}: no scans left to fit{after}")
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


def _subject_sums(subject_index: np.ndarray) -> sparse.csr_matrix:
    """Sparse (subjects x scans) matrix that sums scan rows per subject."""
    _, local = np.unique(subject_index, return_inverse=True)
    n = subject_index.size
    return sparse.csr_matrix((np.ones(n), (local, np.arange(n))), shape=(local.max() + 1, n))


def _fit_one(data: MethodData, j: int, structure: str, basis: SplineBasis, terms, spec: AgeingSpec,
             source: str, sums: sparse.csr_matrix) -> StructureFit:
    rows = np.isfinite(data.volumes[:, j])
    x, y = data.design[rows], data.volumes[rows, j]
    if not rows.all():
        sums = sums[:, rows]
        sums = sums[sums.getnnz(axis=1) > 0]
    p, n_subjects = x.shape[1], sums.shape[0]
    where = f"{source}: {data.method} / {structure}"
    if n_subjects <= p:
        raise DataError(f"{where}: too few subjects ({n_subjects}) for {p} parameters "
                        f"({basis.n_basis} spline basis functions from {basis.n_knots} knots + "
                        f"{p - basis.n_basis} covariates)")
    gram, xty = x.T @ x, x.T @ y
    if np.linalg.matrix_rank(gram) < p:
        raise DataError(f"{where}: the design matrix is rank deficient: {_rank_problem(data, rows, basis, terms)}")
    scale = float(np.std(y))
    if scale == 0:
        raise DataError(f"{where}: all volumes are equal ({y[0]:g})")
    direction = _resolve_direction(spec, structure, stats.rankdata(data.age[rows]), y)
    settings = PenaltySettings(basis.n_basis, DIRECTIONS[direction], spec.penalty)
    sol = solve_penalised(gram, xty, len(y), scale, settings)
    penalised = sol.n_iter > 0
    resid = y - x @ sol.coef
    fixed = sol.pattern == 0 if penalised else np.zeros(basis.n_basis - 1, dtype=bool)
    cov, k = _cluster_covariance(x, resid, sums, fixed)
    return StructureFit(data.method, structure, direction, sol.coef, cov, len(y), n_subjects,
                        float(resid @ resid), float(((y - y.mean()) ** 2).sum()), len(y) - k, scale,
                        penalised, sol.converged, sol.n_iter, sol.pattern)


def _cluster_covariance(x, resid, sums: sparse.csr_matrix, fixed: np.ndarray):
    """Cluster-robust (by subject; ``sums`` adds scans per subject) covariance of the coefficients,
    with the spline increments flagged in ``fixed`` (held at zero by the penalty) kept fixed.

    Returns (covariance p x p, number of free parameters).
    """
    p, k = x.shape[1], fixed.size + 1
    cum = np.tril(np.ones((k, k - 1)), -1)[:, ~fixed]
    basis_map = np.zeros((p, 1 + cum.shape[1] + p - k))
    basis_map[:k, 0] = 1.0
    basis_map[:k, 1 : 1 + cum.shape[1]] = cum
    basis_map[k:, 1 + cum.shape[1]:] = np.eye(p - k)
    xr = x @ basis_map
    n, kf = xr.shape
    n_groups = sums.shape[0]
    scores = sums @ (xr * resid[:, None])
    bread = np.linalg.inv(xr.T @ xr)
    factor = n_groups / (n_groups - 1) * (n - 1) / (n - kf)
    cov_r = factor * bread @ (scores.T @ scores) @ bread
    return basis_map @ cov_r @ basis_map.T, kf


def age_grid(basis: SplineBasis) -> np.ndarray:
    """Whole years inside the fitted age range (1-year spacing)."""
    grid = np.arange(np.ceil(basis.age_min), np.floor(basis.age_max) + 1.0)
    return grid if grid.size >= 2 else np.array([basis.age_min, basis.age_max])


def decades(basis: SplineBasis) -> list[int]:
    """Starts of the whole decades (years) inside the fitted age range."""
    start = int(np.ceil(basis.age_min / 10.0) * 10)
    return [a for a in range(start, int(basis.age_max) + 1, 10) if a + 10 <= basis.age_max]


def change_metrics(basis: SplineBasis, spline_coef: np.ndarray) -> dict:
    """Peak age, annual % change at 30/50/70 years and mean annual % change per decade.

    ``spline_coef`` may be a stack (..., n_basis); values are NaN outside the fitted range.
    Annual % change at age a: 100 f'(a) / f(a). Per decade [a, a+10): 100 (f(a+10) - f(a)) / (10 f(a)).
    """
    fine = np.linspace(basis.age_min, basis.age_max, 1001)
    curve = spline_coef @ basis.evaluate(fine).T
    out = {"peak_age_years": fine[np.argmax(curve, axis=-1)]}
    for a in CHANGE_AGES_YEARS:
        if basis.age_min <= a <= basis.age_max:
            f = spline_coef @ basis.evaluate([a])[0]
            out[f"annual_pct_change_at_{a}"] = 100.0 * (spline_coef @ basis.derivative([a])[0]) / f
        else:
            out[f"annual_pct_change_at_{a}"] = np.full(curve.shape[:-1], np.nan)
    for a in decades(basis):
        ends = spline_coef @ basis.evaluate([a, a + 10]).T
        f0, f1 = ends[..., 0], ends[..., 1]
        out[f"annual_pct_change_{a}_{a + 10}"] = 100.0 * (f1 - f0) / (10.0 * f0)
    return out


@dataclass(frozen=True)
class AgeingFit:
    """Fitted ageing model for every (method, structure); tables via the methods below."""

    spec: AgeingSpec
    basis: SplineBasis
    structures: tuple[str, ...]
    methods: tuple[str, ...]
    terms: tuple[str, ...]
    reference_spacing_mm: tuple[float, ...]
    subjects: np.ndarray
    data: dict = field(repr=False)
    fits: dict = field(repr=False)

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
            raise InputError(f"reference method {method!r} was not fitted (fitted: {', '.join(self.methods)})")
        return method

    def trajectories(self, reference_method: str | None = None, bands=None) -> pd.DataFrame:
        """Trajectories on the 1-year grid and their differences to ``reference_method``.

        Columns: quantity (trajectory | difference), method, reference_method, structure,
        age_years, estimate, lower, upper (NaN without a bootstrap), units.
        ``bands(method, structure, ages, reference or None) -> (lower, upper)`` fills the bands.
        """
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
        """Predicted volumes (fit units) for rows of ``table`` (method, age, sex, spacing columns)."""
        spec = self.spec
        age = parse_age(table[spec.age_column], "predict", spec.age_column, table["scan_id"])
        lo, hi = self.basis.age_min, self.basis.age_max
        if age.min() < lo or age.max() > hi:
            raise DataError(f"predict: ages must lie in the fitted range {lo:g}-{hi:g} years")
        covars = table[list(spec.spacing_terms)].to_numpy(dtype=float) - np.asarray(self.reference_spacing_mm)
        if spec.sex_term:
            covars = np.column_stack([covars, parse_sex(table[spec.sex_column], "predict", spec.sex_column) - 0.5])
        x = np.column_stack([self.basis.evaluate(age), covars])
        out = pd.DataFrame(np.nan, index=table.index, columns=list(self.structures))
        for method in self.methods:
            rows = (table["method"] == method).to_numpy()
            for s in self.structures:
                out.loc[rows, s] = x[rows] @ self.fits[(method, s)].coef
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
        """Estimates with cluster-robust standard errors and 95% t intervals (G-1 df)."""
        rows = []
        for (method, s), f in self.fits.items():
            se = np.sqrt(np.maximum(np.diag(f.cov), 0.0))
            t = stats.t.ppf(0.975, f.n_subjects - 1)
            for term, est, e in zip(self.terms, f.coef, se):
                rows.append({"method": method, "structure": s, "term": term, "estimate": est,
                             "std_error": e, "ci_low": est - t * e, "ci_high": est + t * e})
        out = pd.DataFrame(rows)
        out.insert(3, "units", self._term_units(out["term"]))
        return out

    def _term_units(self, terms: pd.Series) -> list[str]:
        u = self.spec.units_label
        return [f"{u} per mm" if t.startswith("spacing") else u for t in terms]

    def summary(self) -> pd.DataFrame:
        """One row per (method, structure): fit statistics, change metrics and outlier counts."""
        res = self.residuals()
        n_out = res.groupby(["method", "structure"], sort=False)["outlier"].sum()
        rows = []
        for (method, s), f in self.fits.items():
            row = {"method": method, "structure": s, "units": self.spec.units_label,
                   "direction": f.direction, "penalty": self.spec.penalty, "n_scans": f.n_scans,
                   "n_subjects": f.n_subjects, "residual_sd": np.sqrt(f.ssr / f.df_resid),
                   "r2": 1.0 - f.ssr / f.sst if f.sst > 0 else np.nan,
                   "penalty_active": f.penalised, "converged": f.converged}
            row.update({k: float(v) for k, v in change_metrics(self.basis, f.coef[: self.n_spline]).items()})
            row["n_outliers"] = int(n_out[(method, s)])
            row["outlier_fraction"] = row["n_outliers"] / f.n_scans
            rows.append(row)
        return pd.DataFrame(rows)

    def bootstrap(self, n_replicates: int, rng: np.random.Generator) -> "AgeingBootstrap":
        """Refit on ``n_replicates`` resamples of subjects (with replacement, all of a subject's
        scans together, the same resample for every method so differences are paired)."""
        return _resample(self, n_replicates, rng)


@dataclass(frozen=True)
class AgeingBootstrap:
    """Bootstrap replicates of every (method, structure) fit: coefficient stacks (B x p)."""

    fit: AgeingFit
    n_replicates: int
    coefs: dict = field(repr=False)
    n_not_converged: int = 0
    level: float = 0.95

    def _quantiles(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        alpha = (1.0 - self.level) / 2.0
        return np.nanquantile(values, alpha, axis=0), np.nanquantile(values, 1.0 - alpha, axis=0)

    def replicate_trajectories(self, method: str, structure: str, ages=None) -> np.ndarray:
        """Trajectories of every replicate, shape (B, len(ages))."""
        ages = self.fit.age_grid() if ages is None else np.asarray(ages, dtype=float)
        return self.coefs[(method, structure)][:, : self.fit.n_spline] @ self.fit.basis.evaluate(ages).T

    def trajectories(self, reference_method: str | None = None) -> pd.DataFrame:
        """:meth:`AgeingFit.trajectories` with pointwise percentile bands (``level``)."""
        return self.fit.trajectories(reference_method, bands=self._bands)

    def _bands(self, method: str, structure: str, ages: np.ndarray, reference: str | None):
        reps = self.replicate_trajectories(method, structure, ages)
        if reference is not None:
            reps = reps - self.replicate_trajectories(reference, structure, ages)
        return self._quantiles(reps)

    def coefficient_intervals(self) -> pd.DataFrame:
        """Bootstrap SE and percentile interval of every coefficient."""
        rows = []
        for (m, s), c in self.coefs.items():
            lo, hi = self._quantiles(c)
            for term, se, a, b in zip(self.fit.terms, np.nanstd(c, axis=0, ddof=1), lo, hi):
                rows.append({"method": m, "structure": s, "term": term, "bootstrap_se": se,
                             "bootstrap_ci_low": a, "bootstrap_ci_high": b})
        return pd.DataFrame(rows)

    def change_intervals(self) -> pd.DataFrame:
        """Percentile intervals of the change metrics (peak age, annual % change) per fit."""
        rows = []
        for (m, s), c in self.coefs.items():
            row = {"method": m, "structure": s}
            for name, values in change_metrics(self.fit.basis, c[:, : self.fit.n_spline]).items():
                lo, hi = self._quantiles(values)
                row[f"{name}_ci_low"], row[f"{name}_ci_high"] = float(lo), float(hi)
            rows.append(row)
        return pd.DataFrame(rows)


def subject_counts(n_subjects: int, n_replicates: int, rng: np.random.Generator) -> np.ndarray:
    """How often each subject is drawn in each replicate (B x S), drawing S subjects with replacement."""
    draws = rng.integers(0, n_subjects, size=(n_replicates, n_subjects))
    flat = (draws + n_subjects * np.arange(n_replicates)[:, None]).ravel()
    return np.bincount(flat, minlength=n_replicates * n_subjects).reshape(n_replicates, n_subjects).astype(float)


def _resample(fit: AgeingFit, n_replicates: int, rng: np.random.Generator) -> AgeingBootstrap:
    """Vectorised bootstrap: per-subject sums of x x' and x y, combined by the subject counts of
    each replicate into X'WX and X'Wy; least squares for all replicates at once; where that breaks
    the monotonicity, the active-set solve warm-started from the full-data pattern, and L-BFGS-B
    (started from the full-data fit) for the few replicates it does not settle."""
    if n_replicates < 2:
        raise InputError(f"the bootstrap needs at least 2 replicates, not {n_replicates}")
    n_sub = len(fit.subjects)
    counts = subject_counts(n_sub, n_replicates, rng)
    coefs, not_converged = {}, 0
    for method in fit.methods:
        d = fit.data[method]
        n, p = d.design.shape
        agg = sparse.csr_matrix((np.ones(n), (d.subject_index, np.arange(n))), shape=(n_sub, n))
        mask = np.isfinite(d.volumes)
        y = np.where(mask, d.volumes, 0.0)
        xx = (d.design[:, :, None] * d.design[:, None, :]).reshape(n, p * p)
        xty = (counts @ (agg @ (d.design[:, :, None] * y[:, None, :]).reshape(n, -1))).reshape(n_replicates, p, -1)
        n_obs = counts @ (agg @ mask.astype(float))
        patterns, which = np.unique(mask, axis=1, return_inverse=True)
        grams = [(counts @ (agg @ (xx * pat[:, None]))).reshape(n_replicates, p, p) for pat in patterns.T]
        with threadpool_limits(1, user_api="blas"):
            for j, s in enumerate(fit.structures):
                f = fit.fits[(method, s)]
                gram = grams[int(which.ravel()[j])]
                # A resample may leave a knot interval empty; a tiny ridge keeps it solvable.
                ridge = 1e-12 * np.trace(gram, axis1=1, axis2=2)[:, None, None] / p * np.eye(p)
                coef = least_squares(gram + ridge, xty[:, :, j])
                settings = PenaltySettings(fit.n_spline, DIRECTIONS[f.direction], fit.spec.penalty)
                if settings.direction and settings.weight > 0:
                    todo = np.flatnonzero(wrong_sign_increments(coef, settings).any(axis=1))
                    g, r = gram[todo] + ridge[todo], xty[todo, :, j]
                    solved_coef, solved, _ = solve_patterns(g, r, n_obs[todo, j], f.scale, settings, f.pattern)
                    coef[todo[solved]] = solved_coef[solved]
                    for i in np.flatnonzero(~solved):
                        sol = solve_penalised(g[i], r[i], n_obs[todo[i], j], f.scale, settings,
                                              unpenalised=coef[todo[i]], start=f.coef)
                        coef[todo[i]] = sol.coef
                        not_converged += not sol.converged
                coefs[(method, s)] = coef
    return AgeingBootstrap(fit, n_replicates, coefs, not_converged)


@dataclass(frozen=True)
class PlantedAgeing:
    """Known truth for synthetic tables (tests, benchmarks): every structure follows

    y = base (1 - drop (0.3 t + 0.7 t^2)) + gamma . (s - 1 mm) + delta (male - 1/2) + u_subject + e,

    t = (age - age_min) / (age_max - age_min), a strictly decreasing curve; u_subject ~ N(0,
    subject_sd^2) shared by a subject's scans, e ~ N(0, noise_sd^2) per scan and method.
    Volumes in mm^3, ages in years, spacings in mm (one thick-slice axis per scan).
    """

    n_subjects: int = 200
    max_scans_per_subject: int = 3
    age_min: float = 20.0
    age_max: float = 90.0
    base: float = 4000.0
    drop: float = 0.3
    gamma: tuple[float, float, float] = (-40.0, 25.0, -60.0)
    delta: float = 250.0
    subject_sd: float = 100.0
    noise_sd: float = 150.0
    structures: tuple[str, ...] = ("left_hippocampus",)
    methods: tuple[str, ...] = ("synthseg+",)

    def truth(self, ages) -> np.ndarray:
        """Planted trajectory (mm^3) at 1 mm spacing, sexes averaged."""
        t = (np.asarray(ages, dtype=float) - self.age_min) / (self.age_max - self.age_min)
        return self.base * (1.0 - self.drop * (0.3 * t + 0.7 * t**2))


def simulate_ageing_table(planted: PlantedAgeing, rng: np.random.Generator) -> pd.DataFrame:
    """A joined volumes + covariates table (age, sex) drawn from ``planted``."""
    n_scans = rng.integers(1, planted.max_scans_per_subject + 1, size=planted.n_subjects)
    subject = np.repeat(np.arange(planted.n_subjects), n_scans)
    n = subject.size
    start = rng.uniform(planted.age_min, planted.age_max, planted.n_subjects)
    age = np.clip(start[subject] + rng.uniform(0.0, 3.0, n) * (np.arange(n) != np.searchsorted(subject, subject)),
                  planted.age_min, planted.age_max)
    male = rng.integers(0, 2, planted.n_subjects)[subject]
    spacing = rng.uniform(0.8, 1.3, (n, 3))
    thick = rng.integers(0, 3, n)
    spacing[np.arange(n), thick] = rng.uniform(1.0, 8.0, n)
    mean = (planted.truth(age) + (spacing - 1.0) @ np.asarray(planted.gamma)
            + planted.delta * (male - 0.5) + rng.normal(0.0, planted.subject_sd, planted.n_subjects)[subject])
    base = pd.DataFrame({
        "scan_id": [f"scan{i:06d}" for i in range(n)], "subject_id": [f"sub{s:05d}" for s in subject],
        "session_id": "ses1", "spacing_x_mm": spacing[:, 0], "spacing_y_mm": spacing[:, 1],
        "spacing_z_mm": spacing[:, 2], "slice_spacing_mm": spacing.max(axis=1),
        "slice_axis": np.array(["sagittal", "coronal", "axial"])[thick], "age": age,
        "sex": np.where(male == 1, "M", "F")})
    frames = []
    for method in planted.methods:
        vols = {s: mean + rng.normal(0.0, planted.noise_sd, n) for s in planted.structures}
        frames.append(base.assign(method=method, **vols))
    return pd.concat(frames, ignore_index=True)
