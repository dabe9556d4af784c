"""The normative (location-scale-shape) model of one structure and method, fitted by penalised
maximum likelihood.

For scan i, the volume ``y_i`` (mm^3), standardised as ``(y_i - c) / s`` with ``c`` the median and
``s`` 1.4826 MAD of the fitted volumes, follows the SHASH family
(:mod:`morphometry.analysis.norms_shash`) with

    mu_i        = sum_k beta_k B_k(age_i) + gamma . (spacing_i - r) + delta_sex (male_i - 1/2)
                  + site offsets (deviation coding: they sum to zero over the sites)
    log sigma_i = sum_k eta_k C_k(age_i) [+ kappa . (spacing_i - r)]
    epsilon, delta: constants (skewness, tail weight); family ``normal`` holds them at 0 and 1

``B_k``: the ageing model's cubic B-splines (``n_knots`` equally spaced knots over the fitted age
range, :class:`morphometry.analysis.splines.SplineBasis`); ``C_k`` the same with ``scale_knots``
knots. ``spacing``: the voxel-spacing columns of the ageing model, centred at ``r`` (medians).
With ``robust`` (default) the likelihood mixes in a uniform outlier component of weight
``pi`` <= 0.2 (fitted), so a few percent of gross errors do not bend the centiles.

Penalised negative log-likelihood: ``-sum log L_i + smoothing / 2 * (||D2 beta||^2 +
||D2 eta||^2) + (log delta)^2 / 2``, with ``D2`` second differences of the spline coefficients
(a P-spline penalty, Eilers & Marx 1996, in units of ``s``; default weight 300, or chosen by BIC
with the effective degrees of freedom from the outer product of the scans' gradients when
``smoothing`` is None) and a unit-normal prior on ``log delta``. Minimised by
L-BFGS-B with the analytic gradient from a trimmed least-squares start. Repeated scans of a
subject enter as independent scans; the bootstrap resamples subjects.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, logit

from morphometry.analysis.ageing_model import SPACING_COLUMNS
from morphometry.analysis.norms_shash import mixture_loglik, shash_logpdf_parts
from morphometry.analysis.splines import SplineBasis
from morphometry.errors import DataError, InputError

PI_MAX = 0.2
"""Largest outlier fraction the robust likelihood admits."""
DEFAULT_CENTILES = (2.5, 10.0, 25.0, 50.0, 75.0, 90.0, 97.5)
HARMONISATIONS = ("fixed", "combat")
FAMILIES = ("shash", "normal")
_ROBUST_SD = 1.482602218505602


@dataclass(frozen=True)
class NormsSpec:
    """Settings of the normative model (see the module docstring).

    ``structures``, ``methods``, ``where``, ``spacing_terms``, ``age_column``, ``sex_column``:
    as in :class:`morphometry.analysis.ageing_model.AgeingSpec`. ``n_knots``: knots of the
    location spline; ``scale_knots``: of the log-scale spline. ``scale_spacing``: spacing terms
    in the log scale too. ``site``: the covariate column naming the site or scanner (None: one
    site). ``harmonise``: ``fixed`` (site offsets in the location) or ``combat`` (ComBat on the
    volumes before the fit, :mod:`morphometry.analysis.norms_harmonise`). ``family``: ``shash``
    (skewness and tail weight fitted) or ``normal``. ``robust``: the uniform outlier component.
    ``smoothing``: weight of the second-difference penalty (None: chosen by BIC). ``centiles``: those of the curves
    (percent). ``flag_centiles``: scans below the first or above the second are flagged.
    ``outlier_probability``: scans whose posterior outlier probability exceeds it are flagged.
    """

    structures: tuple[str, ...] = ("summed",)
    methods: tuple[str, ...] | None = None
    where: str | None = None
    n_knots: int = 10
    scale_knots: int = 5
    spacing_terms: tuple[str, ...] = SPACING_COLUMNS
    scale_spacing: bool = False
    sex_term: bool = True
    site: str | None = None
    harmonise: str = "fixed"
    family: str = "shash"
    robust: bool = True
    smoothing: float | None = 300.0
    centiles: tuple[float, ...] = DEFAULT_CENTILES
    flag_centiles: tuple[float, float] = (2.5, 97.5)
    outlier_probability: float = 0.5
    age_column: str = "age"
    sex_column: str = "sex"

    def __post_init__(self):
        if self.harmonise not in HARMONISATIONS:
            raise InputError(f"must be fixed or combat, not {self.harmonise!r}", setting="harmonise")
        if self.family not in FAMILIES:
            raise InputError(f"must be shash or normal, not {self.family!r}", setting="family")
        for name in ("n_knots", "scale_knots"):
            if getattr(self, name) < 2:
                raise InputError(f"must be at least 2, not {getattr(self, name)}", setting=name)
        if self.smoothing is not None and not (np.isfinite(self.smoothing) and self.smoothing >= 0):
            raise InputError(f"must be a finite number >= 0, not {self.smoothing}", setting="smoothing")
        bad = [t for t in self.spacing_terms if t not in SPACING_COLUMNS]
        if bad:
            raise InputError(f"unknown spacing terms {bad}; choose from {', '.join(SPACING_COLUMNS)}",
                             setting="spacing_terms")
        if not all(0 < c < 100 for c in (*self.centiles, *self.flag_centiles)):
            raise InputError("centiles are percentages strictly between 0 and 100", setting="centiles")
        low, high = self.flag_centiles
        if not low < high:
            raise InputError(f"needs a low and a higher centile, not {self.flag_centiles}", setting="flag_centiles")
        if not 0 < self.outlier_probability < 1:
            raise InputError(f"must lie between 0 and 1, not {self.outlier_probability}",
                             setting="outlier_probability")
        if self.site is None and self.harmonise == "combat":
            raise InputError("ComBat needs a site column", setting="harmonise")


@dataclass(frozen=True)
class NormsDesign:
    """Design of one fit: age bases, reference spacing (mm) and site labels (deviation coded)."""

    basis: SplineBasis
    scale_basis: SplineBasis
    spacing_terms: tuple[str, ...]
    reference_spacing_mm: tuple[float, ...]
    sex_term: bool
    scale_spacing: bool
    sites: tuple[str, ...]  # () without a site factor in the location

    @property
    def location_terms(self) -> tuple[str, ...]:
        return (*[f"spline_{k + 1}" for k in range(self.basis.n_basis)], *self.spacing_terms,
                *(["male"] if self.sex_term else []), *[f"site_{s}" for s in self.sites[:-1]])

    @property
    def scale_terms(self) -> tuple[str, ...]:
        return (*[f"scale_spline_{k + 1}" for k in range(self.scale_basis.n_basis)],
                *([f"scale_{t}" for t in self.spacing_terms] if self.scale_spacing else []))

    def site_columns(self, site_index: np.ndarray) -> np.ndarray:
        """Deviation coding, (n, S-1): +1 for the scan's site, -1 in every column for the last
        site, all zero (the average site) for index -1 (a site not in the fit)."""
        n_sites = len(self.sites)
        out = np.zeros((len(site_index), max(n_sites - 1, 0)))
        if n_sites < 2:
            return out
        own = (site_index >= 0) & (site_index < n_sites - 1)
        out[np.flatnonzero(own), site_index[own]] = 1.0
        out[site_index == n_sites - 1] = -1.0
        return out

    def matrices(self, age, spacing, male, site_index) -> tuple[np.ndarray, np.ndarray]:
        """(location design, scale design) of scans; ages must lie in the fitted range."""
        centred = np.asarray(spacing, dtype=float).reshape(len(age), -1) - np.asarray(self.reference_spacing_mm)
        parts = [self.basis.evaluate(age), centred]
        if self.sex_term:
            parts.append((np.asarray(male, dtype=float) - 0.5)[:, None])
        parts.append(self.site_columns(np.asarray(site_index)))
        scale = [self.scale_basis.evaluate(age)] + ([centred] if self.scale_spacing else [])
        return np.column_stack(parts), np.column_stack(scale)


@dataclass(frozen=True)
class StructureNorms:
    """Fitted parameters of one (method, structure), in the standardised units ``(y - center) / spread``."""

    method: str
    structure: str
    center: float  # mm^3
    spread: float  # mm^3
    beta: np.ndarray  # location coefficients (NormsDesign.location_terms)
    eta: np.ndarray  # log-scale coefficients (NormsDesign.scale_terms)
    epsilon: float
    delta: float
    outlier_fraction: float  # pi
    log_u: float  # log density of the outlier component (standardised units)
    smoothing: float  # roughness weight used
    n_scans: int
    n_outliers: int  # training scans with posterior outlier probability above the threshold
    loglik: float
    converged: bool
    n_iter: int

    def parameters(self, xl: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) in mm^3 at the rows of the designs."""
        return self.center + self.spread * (xl @ self.beta), self.spread * np.exp(xs @ self.eta)

    def to_json(self) -> dict:
        return {"method": self.method, "structure": self.structure, "center": self.center, "spread": self.spread,
                "beta": self.beta.tolist(), "eta": self.eta.tolist(), "epsilon": self.epsilon, "delta": self.delta,
                "outlier_fraction": self.outlier_fraction, "log_u": self.log_u,
                "smoothing": self.smoothing, "n_scans": self.n_scans,
                "n_outliers": self.n_outliers, "loglik": self.loglik, "converged": self.converged,
                "n_iter": self.n_iter}

    @classmethod
    def from_json(cls, doc: dict) -> StructureNorms:
        doc = dict(doc)
        doc["beta"], doc["eta"] = np.asarray(doc["beta"], dtype=float), np.asarray(doc["eta"], dtype=float)
        return cls(**doc)


def difference_penalty(n: int) -> np.ndarray:
    """``D2' D2`` with ``D2`` the second differences of ``n`` spline coefficients (P-splines)."""
    d2 = np.diff(np.eye(n), 2, axis=0)
    return d2.T @ d2


@dataclass(frozen=True)
class _Problem:
    """One penalised-likelihood problem in standardised units."""

    y: np.ndarray
    xl: np.ndarray
    xs: np.ndarray
    omega: np.ndarray  # roughness penalty of the whole parameter vector (zero outside the splines)
    family: str
    robust: bool
    smoothing: float
    log_u: float

    @property
    def sizes(self) -> tuple[int, int]:
        return self.xl.shape[1], self.xs.shape[1]

    def unpack(self, theta: np.ndarray):
        pl, ps = self.sizes
        beta, eta, rest = theta[:pl], theta[pl : pl + ps], theta[pl + ps :]
        eps, log_delta = (rest[0], rest[1]) if self.family == "shash" else (0.0, 0.0)
        psi = rest[-1] if self.robust else None
        return beta, eta, eps, log_delta, psi

    def _parts(self, theta: np.ndarray):
        """Log-likelihood of each scan and its derivatives with respect to mu, log sigma and the
        shape parameters (each a vector over scans; None where the spec holds them fixed)."""
        beta, eta, eps, log_delta, psi = self.unpack(theta)
        logpdf, d_mu, d_ls, d_eps, d_ld = shash_logpdf_parts(self.y, self.xl @ beta, self.xs @ eta, eps, log_delta)
        d_psi = None
        if self.robust:
            pi = PI_MAX * expit(psi)
            total, w = mixture_loglik(logpdf, np.log(pi), np.log1p(-pi), self.log_u)
            d_psi = (np.exp(self.log_u - total) - np.exp(logpdf - total)) * pi * (1.0 - pi / PI_MAX)
            d_mu, d_ls, d_eps, d_ld = w * d_mu, w * d_ls, w * d_eps, w * d_ld
        else:
            total = logpdf
        shape = (d_eps, d_ld) if self.family == "shash" else ()
        return total, d_mu, d_ls, shape, d_psi

    def scores(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(log-likelihood of each scan, its gradient: n x len(theta)), no penalty."""
        total, d_mu, d_ls, shape, d_psi = self._parts(theta)
        cols = [self.xl * d_mu[:, None], self.xs * d_ls[:, None], *[d[:, None] for d in shape]]
        if d_psi is not None:
            cols.append(d_psi[:, None])
        return total, np.column_stack(cols)

    def objective(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        total, d_mu, d_ls, shape, d_psi = self._parts(theta)
        pen = self.smoothing * (self.omega @ theta)
        value = -float(total.sum()) + 0.5 * float(theta @ pen)
        grad = np.concatenate([self.xl.T @ d_mu, self.xs.T @ d_ls, [d.sum() for d in shape],
                               [d_psi.sum()] if d_psi is not None else []])
        grad = -grad + pen
        if self.family == "shash":  # unit-normal prior on log delta
            k = sum(self.sizes) + 1
            value += 0.5 * theta[k] ** 2
            grad[k] += theta[k]
        n = len(self.y)
        return value / n, grad / n

    def effective_df(self, theta: np.ndarray) -> float:
        """trace((J + smoothing Omega)^-1 J), J the outer product of the scans' gradients."""
        g = self.scores(theta)[1]
        j = g.T @ g
        return float(np.trace(np.linalg.solve(j + self.smoothing * self.omega, j)))

    def start(self) -> np.ndarray:
        """Trimmed least squares for the location, the residuals' robust SD as a constant scale."""
        keep = np.ones(len(self.y), dtype=bool)
        for _ in range(3):
            beta = np.linalg.lstsq(self.xl[keep], self.y[keep], rcond=None)[0]
            resid = self.y - self.xl @ beta
            rsd = _ROBUST_SD * np.median(np.abs(resid - np.median(resid))) or float(np.std(resid)) or 1.0
            keep = np.abs(resid) < 3.5 * rsd
        eta = np.zeros(self.sizes[1])
        eta[: self.omega_blocks[1]] = np.log(rsd)  # the basis sums to one
        extra = ([0.0, 0.0] if self.family == "shash" else []) + ([logit(0.02 / PI_MAX)] if self.robust else [])
        return np.concatenate([beta, eta, extra])

    @property
    def omega_blocks(self) -> tuple[int, int]:
        """Sizes of the location and scale spline blocks (the penalised parts)."""
        pl = self.sizes[0]
        spl = np.flatnonzero(np.abs(self.omega).sum(axis=0) > 0)
        return int((spl < pl).sum()), int((spl >= pl).sum())

    def solve(self, theta0: np.ndarray):
        return minimize(self.objective, theta0, jac=True, method="L-BFGS-B",
                        options={"maxiter": 5000, "maxcor": 20, "ftol": 1e-13, "gtol": 1e-8})


SMOOTHING_GRID = (3000.0, 1000.0, 300.0, 100.0, 30.0, 10.0)
"""Candidate smoothing weights when the spec leaves it to the data (BIC)."""
SELECTION_SCANS = 10_000
"""At most this many scans (a fixed random subset) choose the smoothing."""


def penalty_matrix(design: NormsDesign, n_params: int) -> np.ndarray:
    """Roughness penalty over the whole parameter vector: the location and log-scale splines."""
    omega = np.zeros((n_params, n_params))
    k, pl = design.basis.n_basis, len(design.location_terms)
    ks = design.scale_basis.n_basis
    omega[:k, :k] = difference_penalty(k)
    omega[pl : pl + ks, pl : pl + ks] = difference_penalty(ks)
    return omega


def choose_smoothing(problem: _Problem) -> tuple[float, np.ndarray]:
    """(smoothing, solution) minimising BIC = -2 loglik + log(n) effective df over SMOOTHING_GRID,
    on at most SELECTION_SCANS scans; each fit starts from the previous (smoothest first)."""
    n = len(problem.y)
    if n > SELECTION_SCANS:
        rows = np.random.default_rng(0).choice(n, SELECTION_SCANS, replace=False)
        problem = replace(problem, y=problem.y[rows], xl=problem.xl[rows], xs=problem.xs[rows])
    theta, best = problem.start(), (np.inf, None, None)
    for weight in SMOOTHING_GRID:
        trial = replace(problem, smoothing=weight)
        theta = trial.solve(theta).x
        bic = -2.0 * float(trial.scores(theta)[0].sum()) + np.log(len(trial.y)) * trial.effective_df(theta)
        if bic < best[0]:
            best = (bic, weight, theta)
    return best[1] * n / len(problem.y), best[2]


def fit_structure(method: str, structure: str, y: np.ndarray, xl: np.ndarray, xs: np.ndarray,
                  design: NormsDesign, spec: NormsSpec, start: np.ndarray | None = None,
                  smoothing: float | None = None, where: str = "") -> tuple[StructureNorms, np.ndarray]:
    """Fit one structure (volumes ``y`` in mm^3, finite); returns (parameters, the optimiser's
    vector: a warm start for bootstrap replicates). ``smoothing`` overrides the spec's (the
    bootstrap reuses the full fit's choice)."""
    n, p = len(y), xl.shape[1] + xs.shape[1] + 3
    if n <= 2 * p:
        raise DataError(f"{where}: too few scans ({n}) for {p} parameters (use fewer knots)")
    if np.linalg.matrix_rank(xl) < xl.shape[1]:
        raise DataError(f"{where}: the location design is rank deficient (an empty age range between "
                        "knots, a single sex or spacing value, or a site without scans: use fewer knots or "
                        "leave the term out)")
    center = float(np.median(y))
    spread = _ROBUST_SD * float(np.median(np.abs(y - center))) or float(np.std(y))
    if spread == 0:
        raise DataError(f"{where}: all volumes are equal ({y[0]:g})")
    ys = (y - center) / spread
    width = float(np.ptp(ys)) * 1.1 or 1.0
    n_params = xl.shape[1] + xs.shape[1] + 2 * (spec.family == "shash") + spec.robust
    problem = _Problem(ys, xl, xs, penalty_matrix(design, n_params), spec.family, spec.robust, 0.0, -np.log(width))
    weight = smoothing if smoothing is not None else spec.smoothing
    if weight is None:
        weight, selected = choose_smoothing(problem)
        start = selected if start is None else start
    problem = replace(problem, smoothing=weight)
    res = problem.solve(problem.start() if start is None else start)
    beta, eta, eps, log_delta, psi = problem.unpack(res.x)
    pi = PI_MAX * float(expit(psi)) if spec.robust else 0.0
    total = problem.scores(res.x)[0]
    n_out = 0
    if spec.robust:
        logpdf = shash_logpdf_parts(ys, xl @ beta, xs @ eta, eps, log_delta)[0]
        w = mixture_loglik(logpdf, np.log(pi), np.log1p(-pi), problem.log_u)[1]
        n_out = int(((1.0 - w) > spec.outlier_probability).sum())
    loglik = float(total.sum()) - n * np.log(spread)  # of the volumes in mm^3
    grad = problem.objective(res.x)[1]
    converged = bool(res.success or np.abs(grad).max() < 1e-5)
    fit = StructureNorms(method, structure, center, spread, beta, eta, float(eps), float(np.exp(log_delta)), pi,
                         problem.log_u, float(weight), n, n_out, loglik, converged, int(res.nit))
    return fit, res.x


def outlier_probability(fit: StructureNorms, y: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Posterior probability that each volume (mm^3) is a gross error (0 without the outlier part)."""
    if fit.outlier_fraction <= 0:
        return np.zeros_like(y, dtype=float)
    ys, m, ls = (y - fit.center) / fit.spread, (mu - fit.center) / fit.spread, np.log(sigma / fit.spread)
    logpdf = shash_logpdf_parts(ys, m, ls, fit.epsilon, np.log(fit.delta))[0]
    return 1.0 - mixture_loglik(logpdf, np.log(fit.outlier_fraction), np.log1p(-fit.outlier_fraction), fit.log_u)[1]
