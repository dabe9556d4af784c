"""Subject bootstrap of the ageing model: every (method, structure) fit refitted on resamples of
subjects (with replacement, all of a subject's scans together, the same resample for every method
so that method differences are paired); knots, reference covariates, scale, direction and the
random-intercept variances stay those of the full fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import sparse
from threadpoolctl import threadpool_limits

from morphometry.analysis.ageing_inference import VarianceComponents
from morphometry.analysis.ageing_metrics import change_metrics
from morphometry.analysis.splines import (
    DIRECTIONS,
    PenaltySettings,
    least_squares,
    solve_patterns,
    solve_penalised,
    wrong_sign_increments,
)
from morphometry.progress import Progress

_PROGRESS_STEPS = 20  # replicates run in this many batches


@dataclass(frozen=True)
class AgeingBootstrap:
    """Bootstrap replicates of every (method, structure) fit: coefficient stacks (B x p).
    ``seed``: the seed that drew the resamples (None when a Generator was given)."""

    fit: object  # the AgeingFit (without a bootstrap attached)
    n_replicates: int
    coefs: dict = field(repr=False)
    n_not_converged: int = 0
    level: float = 0.95
    seed: int | None = None

    def _quantiles(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        alpha = (1.0 - self.level) / 2.0
        return np.nanquantile(values, alpha, axis=0), np.nanquantile(values, 1.0 - alpha, axis=0)

    def replicate_trajectories(self, method: str, structure: str, ages=None) -> np.ndarray:
        """Trajectories of every replicate, shape (B, len(ages))."""
        ages = self.fit.age_grid() if ages is None else np.asarray(ages, dtype=float)
        return self.coefs[(method, structure)][:, : self.fit.n_spline] @ self.fit.basis.evaluate(ages).T

    def trajectories(self, reference_method: str | None = None) -> pd.DataFrame:
        """:meth:`AgeingFit.trajectories` with pointwise percentile bands (``level``)."""
        return self.fit.trajectories(reference_method, bands=self.bands)

    def bands(self, method: str, structure: str, ages: np.ndarray, reference: str | None):
        """Pointwise percentile band (lower, upper) of a trajectory, or of its difference to
        ``reference``'s, at ``ages`` (years)."""
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


@dataclass(frozen=True)
class _SubjectSums:
    """Per-subject sums of one method's rows (S subjects, p terms, J structures): ``gram[q]``
    (S, p*p) over the rows of missing-value pattern ``q`` (``which[j]``: structure j's pattern),
    ``xy`` (S, p, J), ``n`` scans (S, J), ``x`` (S, p) per pattern, ``y`` (S, J)."""

    gram: list
    which: np.ndarray
    xy: np.ndarray
    n: np.ndarray
    x: list
    y: np.ndarray

    @classmethod
    def of(cls, d, n_subjects: int) -> _SubjectSums:
        """The sums of ``d``, a method's ``MethodData`` (design n x p, volumes n x J)."""
        n, p = d.design.shape
        agg = sparse.csr_matrix((np.ones(n), (d.subject_index, np.arange(n))), shape=(n_subjects, n))
        mask = np.isfinite(d.volumes)
        y = np.where(mask, d.volumes, 0.0)
        xx = (d.design[:, :, None] * d.design[:, None, :]).reshape(n, p * p)
        patterns, which = np.unique(mask, axis=1, return_inverse=True)
        return cls([agg @ (xx * pat[:, None]) for pat in patterns.T], which.ravel(),
                   (agg @ (d.design[:, :, None] * y[:, None, :]).reshape(n, -1)).reshape(n_subjects, p, -1),
                   agg @ mask.astype(float), [agg @ (d.design * pat[:, None]) for pat in patterns.T], agg @ y)

    def gls(self, counts: np.ndarray, j: int, variance: VarianceComponents, gram: np.ndarray,
            xty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Replicate sums of the quasi-demeaned rows (see ``gls_transform``) of structure j from
        the plain ones: per subject with m scans, ``w^2 (X'X - a Sx Sx' / m)`` and
        ``w^2 (X'y - a Sx Sy / m)``, ``a = m t2 / (s2 + m t2)``, ``w^2 = (s2 + t2) / s2``."""
        t2, s2 = max(variance.subject_var, 0.0), variance.scan_var
        m = self.n[:, j]
        shrink = np.divide(t2, s2 + m * t2)  # a / m
        sx = self.x[self.which[j]]
        p = sx.shape[1]
        outer = (sx[:, :, None] * sx[:, None, :]).reshape(len(m), p * p) * shrink[:, None]
        w2 = (s2 + t2) / s2
        gram = w2 * (gram - (counts @ outer).reshape(gram.shape))
        xty = w2 * (xty - counts @ (sx * (shrink * self.y[:, j])[:, None]))
        return gram, xty


def resample(fit, n_replicates: int, rng: np.random.Generator, *, seed: int | None = None,
             progress: bool = True) -> AgeingBootstrap:
    """The bootstrap of an :class:`~morphometry.analysis.ageing_model.AgeingFit` (``seed``: the
    seed of ``rng``, recorded; ``progress``: report replicates).

    Vectorised: per-subject sums of x x' and x y, combined by the subject counts of
    each replicate into X'WX and X'Wy; least squares for all replicates at once; where that breaks
    the monotonicity, the active-set solve warm-started from the full-data pattern, and L-BFGS-B
    (started from the full-data fit) for the few replicates it does not settle. Replicates run
    in batches so that progress can be reported."""
    n_sub, p = len(fit.subjects), len(fit.terms)
    counts = subject_counts(n_sub, n_replicates, rng)
    batches = np.array_split(np.arange(n_replicates), min(n_replicates, _PROGRESS_STEPS))
    coefs = {key: np.empty((n_replicates, p)) for key in fit.fits}
    not_converged = 0
    desc = "bootstrap" if len(fit.methods) == 1 else f"bootstrap ({len(fit.methods)} methods x {n_replicates})"
    with (Progress(n_replicates * len(fit.methods), desc, unit="replicate", enabled=progress) as bar,
          threadpool_limits(1, user_api="blas")):
        for method in fit.methods:
            sums = _SubjectSums.of(fit.data[method], n_sub)
            for batch in batches:
                c = counts[batch]
                grams = [(c @ g).reshape(-1, p, p) for g in sums.gram]
                xty = (c @ sums.xy.reshape(n_sub, -1)).reshape(len(batch), p, -1)
                n_obs = c @ sums.n
                for j, s in enumerate(fit.structures):
                    f = fit.fits[(method, s)]
                    gram, r = grams[sums.which[j]], xty[:, :, j]
                    if f.variance is not None:
                        gram, r = sums.gls(c, j, f.variance, gram, r)
                    coefs[(method, s)][batch], failed = _refit(fit, f, gram, r, n_obs[:, j])
                    not_converged += failed
                bar.update(len(batch))
    return AgeingBootstrap(fit, n_replicates, coefs, not_converged, seed=seed)


def _refit(fit, f, gram: np.ndarray, xty: np.ndarray, n_obs: np.ndarray):
    """Penalised fits of replicate sums (gram (B, p, p), xty (B, p)) with the settings of the
    full-data fit ``f`` (a ``StructureFit``); returns (coefs, number of unconverged solves)."""
    p = gram.shape[-1]
    # A resample may leave a knot interval empty; a tiny ridge keeps it solvable.
    ridge = 1e-12 * np.trace(gram, axis1=1, axis2=2)[:, None, None] / p * np.eye(p)
    coef = least_squares(gram + ridge, xty)
    settings = PenaltySettings(fit.n_spline, DIRECTIONS[f.direction], fit.spec.penalty)
    failed = 0
    if settings.direction and settings.weight > 0:
        todo = np.flatnonzero(wrong_sign_increments(coef, settings).any(axis=1))
        g, r = gram[todo] + ridge[todo], xty[todo]
        solved_coef, solved, _ = solve_patterns(g, r, n_obs[todo], f.scale, settings, f.pattern)
        coef[todo[solved]] = solved_coef[solved]
        for i in np.flatnonzero(~solved):
            sol = solve_penalised(g[i], r[i], n_obs[todo[i]], f.scale, settings,
                                  unpenalised=coef[todo[i]], start=f.coef)
            coef[todo[i]] = sol.coef
            failed += not sol.converged
    return coef, failed
