"""``fit_norms`` and ``score_norms``: normative centiles and z-scores per scan and structure.

    model = fit_norms("volumes.parquet", "covariates.csv", structures=("hippocampus",), site="site")
    model.centiles([40, 60, 80], sex="F"); model.write("norms/")
    scores = score_norms("new_volumes.parquet", "norms/", "new_covariates.csv"); scores.write("scores/")

Tables are read as :func:`morphometry.analysis.ageing_api.fit_ageing` reads them (volumes of
``morpho segment`` or any table with the structures' columns; age, sex, spacing and the site
column from the volumes table or from ``covariates`` joined on ``scan_id``, else ``subject_id``).
The model is :mod:`morphometry.analysis.norms_model` per (method, structure); harmonisation
:mod:`morphometry.analysis.norms_harmonise`; files :mod:`morphometry.analysis.norms_outputs`.

Scoring scans outside the fitted age range: their age is held at the nearest end of the range,
they are flagged (``age_outside_range``) and a warning says how many. Scans of a site the model
did not see: scored at the average site (fixed) or without ComBat adjustment, flagged
(``site_unseen``) with a warning. Methods not in the model are left out with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from morphometry.analysis.ageing_api import ageing_table, normalised_settings
from morphometry.analysis.ageing_metrics import age_grid
from morphometry.analysis.ageing_model import (
    AgeingSpec,
    check_methods,
    parse_age,
    parse_sex,
    resolve_structures,
    structure_columns,
)
from morphometry.analysis.norms_harmonise import learn_combat
from morphometry.analysis.norms_model import (
    NormsDesign,
    NormsSpec,
    StructureNorms,
    fit_structure,
    outlier_probability,
)
from morphometry.analysis.norms_shash import shash_centile, shash_quantile, shash_z
from morphometry.analysis.splines import SplineBasis
from morphometry.errors import DataError, InputError
from morphometry.progress import Progress, log

_TUPLE_SETTINGS = ("structures", "methods", "spacing_terms", "centiles", "flag_centiles")
SEXES = {"F": 0.0, "M": 1.0}


def norms_spec(**settings) -> NormsSpec:
    """A :class:`NormsSpec` from keyword settings (lists or one string where it holds tuples);
    InputError naming an unknown setting."""
    settings = normalised_settings(NormsSpec, "the norms model", _TUPLE_SETTINGS, settings)
    return NormsSpec(**settings)


@dataclass(frozen=True, eq=False)
class Covariates:
    """The covariates of a table's scans: ages (years), male (1/0), spacing (mm), site labels."""

    age: np.ndarray
    male: np.ndarray
    spacing: np.ndarray
    site: np.ndarray  # str labels, "" without a site column


def _table(volumes, covariates, spec: NormsSpec, scoring: bool = False) -> tuple[pd.DataFrame, str, dict]:
    """The joined table (``ageing_table``), with the site and spacing columns checked; errors
    name the fit's settings, or (``scoring``) the model that needs the columns."""
    aspec = AgeingSpec(structures=spec.structures, spacing_terms=spec.spacing_terms, sex_term=spec.sex_term,
                       age_column=spec.age_column, sex_column=spec.sex_column, where=spec.where)
    table, source, inputs = ageing_table(volumes, covariates, aspec)
    needs = " (the norms model was fitted with it)" if scoring else ""
    if spec.site is not None and spec.site not in table.columns:
        shown = ", ".join(c for c in table.columns if not c.startswith(("left_", "right_")))[:200]
        raise InputError(f"{source}: no site column {spec.site!r}{needs} (columns: {shown})",
                         setting="covariates" if scoring else "site")
    missing = [c for c in spec.spacing_terms if c not in table.columns]
    if missing:
        raise InputError(f"{source}: missing columns: {', '.join(missing)}{needs}",
                         setting="volumes" if scoring else "spacing_terms")
    if spec.where:
        try:
            table = table.query(spec.where, engine="python")
        except Exception as exc:  # pandas raises many types for a bad expression
            raise InputError(f"{spec.where!r}: cannot evaluate on {source} ({type(exc).__name__}: {exc})",
                             setting="where") from None
    return table.reset_index(drop=True), source, inputs


def _covariates(table: pd.DataFrame, spec: NormsSpec, source: str) -> Covariates:
    age = parse_age(table[spec.age_column], source, spec.age_column, table["scan_id"])
    male = parse_sex(table[spec.sex_column], source, spec.sex_column) if spec.sex_term else np.full(len(table), 0.5)
    spacing = table[list(spec.spacing_terms)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(spacing).all(axis=1) | (spacing <= 0).any(axis=1)
    if bad.any():
        raise DataError(f"{source}: {int(bad.sum())} scans have a missing or non-positive voxel spacing "
                        f"(e.g. scan {table['scan_id'].iloc[int(np.argmax(bad))]})")
    if spec.site is None:
        site = np.full(len(table), "", dtype=object)
    else:
        values = table[spec.site]
        if values.isna().any():
            raise DataError(f"{source}: column {spec.site!r}: {int(values.isna().sum())} scans have no site "
                            f"(e.g. scan {table.loc[values.isna(), 'scan_id'].iloc[0]})", setting="site")
        site = values.astype(str).to_numpy(dtype=object)
    return Covariates(age, male, spacing, site)


def _volumes(table: pd.DataFrame, structures) -> np.ndarray:
    cols = [np.sum([pd.to_numeric(table[c], errors="coerce").to_numpy(dtype=float) for c in structure_columns(s)],
                   axis=0) for s in structures]
    return np.column_stack(cols)


def _combat_covariates(design: NormsDesign, xl: np.ndarray) -> np.ndarray:
    """ComBat's covariates: the location design without its first spline column and the sites."""
    n_loc = design.basis.n_basis + len(design.spacing_terms) + design.sex_term
    return xl[:, 1:n_loc]


@dataclass(frozen=True, eq=False)
class NormsModel:
    """Fitted normative model of every (method, structure); files via :meth:`write`.

    ``design``: the bases, reference spacing and (fixed-effect) sites; ``fits``: (method,
    structure) -> :class:`StructureNorms`; ``combat``: method -> :class:`ComBatParams` with
    ``harmonise="combat"``; ``sites``: every site of the fit; ``bands``: bootstrap bands of the
    centile curves (or None); ``fit_outliers``: training scans taken as gross errors.
    """

    spec: NormsSpec
    design: NormsDesign
    structures: tuple[str, ...]
    methods: tuple[str, ...]
    sites: tuple[str, ...]
    fits: dict = field(repr=False)
    combat: dict = field(default_factory=dict, repr=False)
    bands: pd.DataFrame | None = field(default=None, repr=False)
    fit_outliers: pd.DataFrame | None = field(default=None, repr=False)
    inputs: dict = field(default_factory=dict)
    n_bootstrap: int = 0
    seed: int | None = None

    def age_grid(self) -> np.ndarray:
        return age_grid(self.design.basis)

    def _designs(self, age, male, spacing=None, site=None):
        n = len(age)
        spacing = np.tile(self.design.reference_spacing_mm, (n, 1)) if spacing is None else spacing
        site_index = np.full(n, -1) if site is None else site
        return self.design.matrices(age, spacing, male, site_index)

    def site_index(self, labels) -> np.ndarray:
        """Index of each label in the fixed-effect sites (-1: not a fitted site, or no site term)."""
        lookup = {s: i for i, s in enumerate(self.design.sites)}
        return np.array([lookup.get(str(s), -1) for s in labels], dtype=int)

    def centiles(self, ages=None, sex=("F", "M"), centiles=None, *, methods=None, structures=None,
                 site=None, **spacing_mm) -> pd.DataFrame:
        """Centile curves (mm^3): columns method, structure, sex, age_years, centile, volume_mm3.

        ``ages``: years (default the 1-year grid of the fitted range); ``sex``: "F", "M" or both;
        ``centiles``: percentages (default the spec's); ``site``: a fitted site's label (default
        the average site); ``spacing_mm``: spacing values by column name (default the reference).
        """
        ages = self.age_grid() if ages is None else np.asarray(ages, dtype=float)
        lo, hi = self.design.basis.age_min, self.design.basis.age_max
        if ages.min() < lo or ages.max() > hi:
            raise InputError(f"ages must lie in the fitted range {lo:g}-{hi:g} years", setting="ages")
        sexes = (sex,) if isinstance(sex, str) else tuple(sex)
        bad = [s for s in sexes if s not in SEXES]
        if bad:
            raise InputError(f"sex must be F or M, not {bad[0]!r}", setting="sex")
        unknown = [k for k in spacing_mm if k not in self.design.spacing_terms]
        if unknown:
            raise InputError(f"not spacing terms of the model: {', '.join(unknown)}", setting="spacing_mm")
        reference = dict(zip(self.design.spacing_terms, self.design.reference_spacing_mm))
        reference.update(spacing_mm)
        spacing = np.tile([reference[t] for t in self.design.spacing_terms], (ages.size, 1))
        site_index = None
        if site is not None:
            site_index = self.site_index([site] * ages.size)
            if site_index[0] < 0:
                raise InputError(f"{site!r} is not a site of the fixed-effect fit ({', '.join(self.design.sites)})",
                                 setting="site")
        qs = np.asarray(self.spec.centiles if centiles is None else centiles, dtype=float)
        frames = []
        for method in methods or self.methods:
            for structure in structures or self.structures:
                fit = self.fits[(method, structure)]
                for s in sexes:
                    xl, xs = self._designs(ages, np.full(ages.size, SEXES[s]), spacing, site_index)
                    mu, sigma = fit.parameters(xl, xs)
                    values = shash_quantile(qs[:, None] / 100.0, mu[None, :], sigma[None, :], fit.epsilon, fit.delta)
                    frames.append(pd.DataFrame({"method": method, "structure": structure, "sex": s,
                                                "age_years": np.tile(ages, qs.size),
                                                "centile": np.repeat(qs, ages.size),
                                                "volume_mm3": values.ravel()}))
        return pd.concat(frames, ignore_index=True)

    def curves(self) -> pd.DataFrame:
        """The centile curves on the age grid at the reference covariates, with the bootstrap
        bands (``lower``, ``upper``; NaN without a bootstrap): what ``centiles.csv`` holds."""
        out = self.centiles()
        if self.bands is None:
            return out.assign(lower=np.nan, upper=np.nan)
        return out.merge(self.bands, on=["method", "structure", "sex", "age_years", "centile"], how="left")

    def summary(self) -> pd.DataFrame:
        """One row per (method, structure): scans, outliers, fitted shape and fit statistics."""
        rows = []
        for (method, structure), f in self.fits.items():
            rows.append({"method": method, "structure": structure, "harmonise": self.spec.harmonise,
                         "family": self.spec.family, "n_scans": f.n_scans, "n_outliers": f.n_outliers,
                         "outlier_fraction": f.outlier_fraction, "skewness_epsilon": f.epsilon,
                         "tail_delta": f.delta, "smoothing": f.smoothing, "loglik": f.loglik,
                         "converged": f.converged, "n_iter": f.n_iter})
        return pd.DataFrame(rows)

    def site_effects(self) -> pd.DataFrame:
        """Site offsets in mm^3 per (method, structure, site): the location's fixed effects
        (they sum to zero over sites), or ComBat's additive effects (with ``scale_ratio``,
        the variance ratio delta*)."""
        rows = []
        if self.spec.harmonise == "fixed" and len(self.design.sites) > 1:
            start = self.design.basis.n_basis + len(self.design.spacing_terms) + self.design.sex_term
            for (method, structure), f in self.fits.items():
                coded = f.beta[start:] * f.spread
                for site, offset in zip(self.design.sites, [*coded, -coded.sum()]):
                    rows.append({"method": method, "structure": structure, "site": site, "offset_mm3": offset,
                                 "scale_ratio": 1.0})
        for method, params in self.combat.items():
            offsets = params.site_offsets_mm3()
            for j, structure in enumerate(params.structures):
                for k, site in enumerate(params.sites):
                    rows.append({"method": method, "structure": structure, "site": site,
                                 "offset_mm3": offsets.iloc[k, j], "scale_ratio": params.delta_star[k, j]})
        return pd.DataFrame(rows, columns=["method", "structure", "site", "offset_mm3", "scale_ratio"])

    def write(self, out_dir) -> dict:
        """Write ``norms.json`` (every parameter), ``summary.csv``, ``centiles.csv``,
        ``site_effects.csv`` and ``fit_outliers.csv`` into ``out_dir``; returns them by name."""
        from morphometry.analysis.norms_outputs import write_model

        return write_model(self, Path(out_dir))

    @classmethod
    def read(cls, folder) -> NormsModel:
        """A model written by :meth:`write` (``morpho norms fit``)."""
        from morphometry.analysis.norms_outputs import read_model

        return cls(**read_model(Path(folder)))


@dataclass(frozen=True, eq=False)
class NormsScores:
    """Per (scan, method, structure) ``scores`` and per (subject, method) ``subjects`` summaries."""

    scores: pd.DataFrame
    subjects: pd.DataFrame

    def write(self, out_dir) -> dict:
        """Write ``scores.parquet``, ``scores.csv`` and ``subjects.csv`` into ``out_dir``."""
        from morphometry.analysis.norms_outputs import write_scores

        return write_scores(self, Path(out_dir))


def fit_norms(volumes, covariates=None, *, structures=("summed",), methods=None, site: str | None = None,
              harmonise: str = "fixed", bootstrap: int = 0, seed: int = 0, progress: bool = True,
              **spec) -> NormsModel:
    """Fit the normative model (:mod:`morphometry.analysis.norms_model`) to ``volumes``.

    ``volumes``, ``covariates``: DataFrames or paths (see the module docstring). ``site``: the
    covariate column of the site or scanner; ``harmonise``: ``fixed`` (site offsets in the
    location, the default) or ``combat``. ``bootstrap``: subject-bootstrap replicates (0 = none,
    else at least 2) for bands of the centile curves, drawn with ``seed``. ``**spec``: other
    fields of :class:`NormsSpec` (``n_knots=6``, ``family="normal"``, ``robust=False``, ...).
    """
    settings = norms_spec(structures=structures, methods=methods, site=site, harmonise=harmonise, **spec)
    if bootstrap < 0 or bootstrap == 1:
        raise InputError(f"must be 0 or at least 2, not {bootstrap}", setting="bootstrap")
    table, source, inputs = _table(volumes, covariates, settings)
    structure_names = resolve_structures(settings.structures, "mm3")
    if settings.methods is not None:
        table = table[table["method"].isin(check_methods(table, settings.methods, source))].reset_index(drop=True)
    if table.empty:
        raise DataError(f"{source}: no scans to fit", setting="where" if settings.where else None)
    cov = _covariates(table, settings, source)
    if cov.age.min() == cov.age.max():
        raise DataError(f"{source}: all scans have the same age ({cov.age.min():g} years)")
    basis = SplineBasis(float(cov.age.min()), float(cov.age.max()), settings.n_knots)
    scale_basis = SplineBasis(basis.age_min, basis.age_max, settings.scale_knots)
    sites = tuple(sorted(set(cov.site))) if settings.site else ()
    design = NormsDesign(basis, scale_basis, settings.spacing_terms, tuple(np.median(cov.spacing, axis=0)),
                         settings.sex_term, settings.scale_spacing, sites if settings.harmonise == "fixed" else ())
    volumes_all = _volumes(table, structure_names)
    lookup = {s: i for i, s in enumerate(design.sites)}
    site_index = np.array([lookup.get(s, -1) for s in cov.site], dtype=int)
    xl, xs = design.matrices(cov.age, cov.spacing, cov.male, site_index)
    methods_fitted = tuple(dict.fromkeys(table["method"].astype(str)))  # the table holds only the chosen methods
    method_col = table["method"].astype(str).to_numpy()
    fits, starts, combat, outliers, fitted_volumes = {}, {}, {}, [], {}
    with threadpool_limits(1, user_api="blas"), \
            Progress(len(methods_fitted) * len(structure_names), "norms fits", unit="fit", enabled=progress) as bar:
        for method in methods_fitted:
            rows = method_col == method
            y_method = volumes_all[rows]
            if settings.harmonise == "combat":
                if len(sites) < 2:
                    raise DataError(f"{source}: {method}: ComBat needs at least two sites (found {len(sites)})",
                                    setting="harmonise")
                combat[method] = learn_combat(y_method, cov.site[rows], _combat_covariates(design, xl[rows]),
                                              structure_names)
                lookup_combat = {s: i for i, s in enumerate(combat[method].sites)}
                site_all = np.array([lookup_combat.get(s, -1) for s in cov.site[rows]])
                y_method = combat[method].apply(y_method, site_all, _combat_covariates(design, xl[rows]))
            fitted_volumes[method] = y_method
            for j, structure in enumerate(structure_names):
                ok = np.isfinite(y_method[:, j])
                where = f"{source}: {method} / {structure}"
                fit, theta = fit_structure(method, structure, y_method[ok, j], xl[rows][ok], xs[rows][ok], design,
                                           settings, where=where)
                fits[(method, structure)], starts[(method, structure)] = fit, theta
                if not fit.converged:
                    log.warning(f"{where}: the optimiser did not converge")
                mu, sigma = fit.parameters(xl[rows][ok], xs[rows][ok])
                p_out = outlier_probability(fit, y_method[ok, j], mu, sigma)
                flagged = p_out > settings.outlier_probability
                ids = table.loc[rows, ["scan_id", "subject_id"]].to_numpy()[ok][flagged]
                outliers.append(pd.DataFrame({"method": method, "structure": structure, "scan_id": ids[:, 0],
                                              "subject_id": ids[:, 1],
                                              "volume": _raw_volume(table, rows, ok, structure)[flagged],
                                              "outlier_probability": p_out[flagged]}))
                bar.update()
    all_sites = tuple(sorted(set(cov.site))) if settings.site else ()
    model = NormsModel(settings, design, structure_names, methods_fitted, all_sites, fits, combat, None,
                       pd.concat(outliers, ignore_index=True), inputs)
    if bootstrap:
        from morphometry.analysis.norms_bootstrap import bootstrap_bands

        subjects = table["subject_id"].astype(str).to_numpy()
        bands = bootstrap_bands(model, subjects, method_col, xl, xs, fitted_volumes, starts, bootstrap, seed,
                                progress=progress)
        model = replace(model, bands=bands, n_bootstrap=bootstrap, seed=seed)
    return model


def _raw_volume(table: pd.DataFrame, rows: np.ndarray, ok: np.ndarray, structure: str) -> np.ndarray:
    """Raw volumes (mm^3) of ``structure`` at the selected rows."""
    return _volumes(table.loc[rows], (structure,))[ok, 0]


def _read_model(model) -> NormsModel:
    if isinstance(model, NormsModel):
        return model
    if isinstance(model, (str, Path)):
        return NormsModel.read(model)
    raise InputError(f"a NormsModel or a folder written by it, not {type(model).__name__}", setting="model")


def score_norms(volumes, model, covariates=None) -> NormsScores:
    """Centiles, z-scores and flags of every (scan, method, structure) of ``volumes`` under
    ``model`` (a :class:`NormsModel` or its folder); see the module docstring for scans outside
    the fitted ages or sites."""
    model = _read_model(model)
    spec = model.spec
    table, source, _ = _table(volumes, covariates, replace(spec, where=None), scoring=True)
    methods = table["method"].astype(str)
    others = sorted(set(methods) - set(model.methods))
    if others:
        log.warning(f"{source}: method(s) {', '.join(others)} are not in the norms model; left out")
    table = table[methods.isin(model.methods)].reset_index(drop=True)
    if table.empty:
        raise InputError(f"{source}: no scans of the model's methods ({', '.join(model.methods)})", setting="volumes")
    cov = _covariates(table, spec, source)
    lo, hi = model.design.basis.age_min, model.design.basis.age_max
    outside = (cov.age < lo) | (cov.age > hi)
    if outside.any():
        log.warning(f"{source}: {int(outside.sum())} scans are outside the fitted ages {lo:g}-{hi:g} years; "
                    "scored at the nearest fitted age and flagged (age_outside_range)")
    age = np.clip(cov.age, lo, hi)
    unseen = np.zeros(len(table), dtype=bool)
    if spec.site is not None:
        unseen = ~np.isin(cov.site, list(model.sites))
        if unseen.any():
            log.warning(f"{source}: {int(unseen.sum())} scans are of sites the model did not see "
                        f"({', '.join(sorted(set(cov.site[unseen])))}); scored "
                        + ("at the average site" if spec.harmonise == "fixed" else "without ComBat adjustment")
                        + " and flagged (site_unseen)")
    xl, xs = model.design.matrices(age, cov.spacing, cov.male, model.site_index(cov.site))
    raw = _volumes(table, model.structures)
    method_col = table["method"].astype(str).to_numpy()
    frames = []
    for method in model.methods:
        rows = method_col == method
        if not rows.any():
            continue
        y = raw[rows]
        if method in model.combat:
            params = model.combat[method]
            lookup = {s: i for i, s in enumerate(params.sites)}
            y = params.apply(y, np.array([lookup.get(s, -1) for s in cov.site[rows]]),
                             _combat_covariates(model.design, xl[rows]))
        for j, structure in enumerate(model.structures):
            fit: StructureNorms = model.fits[(method, structure)]
            mu, sigma = fit.parameters(xl[rows], xs[rows])
            centile = shash_centile(y[:, j], mu, sigma, fit.epsilon, fit.delta)
            p_out = outlier_probability(fit, y[:, j], mu, sigma)
            frames.append(pd.DataFrame({
                "scan_id": table.loc[rows, "scan_id"].to_numpy(),
                "subject_id": table.loc[rows, "subject_id"].to_numpy(),
                "method": method, "structure": structure, "volume": raw[rows, j], "harmonised_volume": y[:, j],
                "age": cov.age[rows], "sex": np.where(cov.male[rows] == 1, "M", np.where(cov.male[rows] == 0, "F", "")),
                "site": cov.site[rows], "centile": centile, "z": shash_z(y[:, j], mu, sigma, fit.epsilon, fit.delta),
                "outlier_probability": p_out,
                "flag_low": centile < spec.flag_centiles[0], "flag_high": centile > spec.flag_centiles[1],
                "flag_outlier": p_out > spec.outlier_probability,
                "age_outside_range": outside[rows], "site_unseen": unseen[rows]}))
    scores = pd.concat(frames, ignore_index=True)
    return NormsScores(scores, subject_summary(scores))


def subject_summary(scores: pd.DataFrame) -> pd.DataFrame:
    """Per (subject, method): scans, scored structures, lowest and highest z with their
    structures, mean |z| and the counts of each flag."""
    valid = scores[np.isfinite(scores["z"])]
    grouped = valid.groupby(["subject_id", "method"], sort=False)
    low = valid.loc[grouped["z"].idxmin(), ["subject_id", "method", "structure", "z"]]
    high = valid.loc[grouped["z"].idxmax(), ["subject_id", "method", "structure", "z"]]
    out = grouped.agg(n_scans=("scan_id", "nunique"), n_scores=("z", "size"),
                      mean_abs_z=("z", lambda z: float(np.mean(np.abs(z)))),
                      n_flag_low=("flag_low", "sum"), n_flag_high=("flag_high", "sum"),
                      n_flag_outlier=("flag_outlier", "sum")).reset_index()
    out = out.merge(low.rename(columns={"structure": "lowest_structure", "z": "lowest_z"}), on=["subject_id", "method"])
    return out.merge(high.rename(columns={"structure": "highest_structure", "z": "highest_z"}),
                     on=["subject_id", "method"])
