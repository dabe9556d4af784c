"""Standard errors of the ageing model, from statsmodels.

- Cluster-robust covariance (by subject) of a least-squares fit: ``statsmodels`` OLS with
  ``cov_type="cluster"``: sandwich with the small-sample factor G/(G-1) (n-1)/(n-k), G subjects,
  k columns. For a penalised fit it is computed on the active design (the spline increments that
  the penalty holds at zero left out), i.e. the fit with the penalty's pattern taken as given.
- Random intercept per subject (repeated scans): ``statsmodels`` MixedLM fitted by REML gives the
  variance components and the model-based covariance of the fixed effects. With the variance
  components fixed, the fixed effects are generalised least squares, which is ordinary least
  squares on quasi-demeaned rows (:func:`gls_transform`); the penalised solver and the bootstrap
  run on those rows.

statsmodels is imported when a function runs, so importing this module stays cheap.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from morphometry.errors import DataError


@dataclass(frozen=True)
class VarianceComponents:
    """Random-intercept model: subject intercepts with variance ``subject_var`` and independent
    scan errors with variance ``scan_var`` (both in squared volume units)."""

    subject_var: float
    scan_var: float


@dataclass(frozen=True)
class MixedFit:
    """A MixedLM fit: fixed effects, their covariance, the variance components, convergence."""

    coef: np.ndarray
    cov: np.ndarray
    variance: VarianceComponents
    converged: bool


def cluster_covariance(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Cluster-robust covariance (k x k) of the least-squares coefficients of ``y`` on ``x``,
    clustered by ``groups`` (one label per row)."""
    from statsmodels.regression.linear_model import OLS

    result = OLS(y, x).fit(cov_type="cluster", cov_kwds={"groups": _codes(groups)})
    return np.asarray(result.cov_params())


def fit_random_intercept(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> MixedFit:
    """REML fit of ``y = x beta + u_group + e`` with statsmodels MixedLM.

    ``y`` is divided by its SD for the optimiser and the results scaled back; statsmodels'
    convergence warnings are silenced and its verdict kept in ``converged``.
    """
    from statsmodels.regression.mixed_linear_model import MixedLM
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    scale = float(np.std(y)) or 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # retries and boundary notes
        result = MixedLM(y / scale, x, groups=_codes(groups)).fit(reml=True)
    k = x.shape[1]
    converged = bool(result.converged)
    variance = VarianceComponents(float(np.asarray(result.cov_re)[0, 0]) * scale**2, float(result.scale) * scale**2)
    cov = np.asarray(result.cov_params())[:k, :k] * scale**2
    return MixedFit(np.asarray(result.fe_params) * scale, cov, variance, converged)


def gls_transform(x: np.ndarray, y: np.ndarray, groups: np.ndarray,
                  variance: VarianceComponents) -> tuple[np.ndarray, np.ndarray]:
    """Rows on which least squares is the GLS fit of the random-intercept model.

    A subject with ``m`` rows has the covariance ``scan_var I + subject_var J``; subtracting
    ``c = 1 - sqrt(scan_var / (scan_var + m subject_var))`` times the subject's mean whitens it.
    The rows are then multiplied by ``sqrt((scan_var + subject_var) / scan_var)``, so a subject
    with one scan keeps its row unchanged and sums of squares stay in the units of the data.
    """
    s2, t2 = variance.scan_var, variance.subject_var
    if not s2 > 0:
        raise DataError("the random-intercept fit left no variance within subjects")
    _, index, counts = np.unique(groups, return_inverse=True, return_counts=True)
    agg = sparse.csr_matrix((np.ones(index.size), (index, np.arange(index.size))))
    data = np.column_stack([x, y])
    means = (agg @ data) / counts[:, None]
    shrink = 1.0 - np.sqrt(s2 / (s2 + counts * max(t2, 0.0)))
    out = (data - shrink[index, None] * means[index]) * np.sqrt((s2 + max(t2, 0.0)) / s2)
    return out[:, :-1], out[:, -1]


def _codes(groups: np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(groups), return_inverse=True)[1].ravel()
