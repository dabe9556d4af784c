"""Subject bootstrap of the norms model: pointwise bands of the centile curves.

Subjects are resampled with replacement (all of a subject's scans together, the same resample
for every method); every (method, structure) is refitted from the full fit's solution with its
smoothing weight, knots, reference covariates and, with ComBat, its harmonised volumes (ComBat is
not re-estimated). Bands are simultaneous over ages: for each curve (method, structure, sex,
centile; reference covariates, 1-year age grid) the fitted curve +- c times the replicates'
pointwise SD, with c the 95th percentile over replicates of their largest standardised distance
to the fitted curve (a pointwise band misses a smooth curve error over a whole age range).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from morphometry.analysis.norms_model import fit_structure
from morphometry.progress import Progress

LEVEL = 0.95


def bootstrap_bands(model, subjects: np.ndarray, method_col: np.ndarray, xl: np.ndarray, xs: np.ndarray,
                    fitted_volumes: dict, starts: dict, n_replicates: int, seed: int, *,
                    progress: bool = True) -> pd.DataFrame:
    """Bands (columns method, structure, sex, age_years, centile, lower, upper) from
    ``n_replicates`` resamples drawn with ``seed``; ``fitted_volumes``: method -> the volumes the
    fit saw (n_method, J); ``starts``: (method, structure) -> the full fit's parameter vector."""
    rng = np.random.default_rng(seed)
    labels, index = np.unique(subjects, return_inverse=True)
    by_subject = [np.flatnonzero(index == k) for k in range(labels.size)]
    grid = model.centiles()
    keys = grid[["method", "structure", "sex", "age_years", "centile"]]
    replicates = np.empty((n_replicates, len(grid)))
    with threadpool_limits(1, user_api="blas"), \
            Progress(n_replicates, "norms bootstrap", unit="replicate", enabled=progress) as bar:
        for b in range(n_replicates):
            drawn = np.concatenate([by_subject[k] for k in rng.integers(0, labels.size, labels.size)])
            fits = {}
            for method in model.methods:
                local = np.flatnonzero(method_col == method)  # table rows of this method, in order
                position = np.full(len(method_col), -1)
                position[local] = np.arange(local.size)
                rows = drawn[method_col[drawn] == method]
                for j, structure in enumerate(model.structures):
                    y = fitted_volumes[method][position[rows], j]
                    ok = np.isfinite(y)
                    full = model.fits[(method, structure)]
                    fits[(method, structure)] = fit_structure(
                        method, structure, y[ok], xl[rows][ok], xs[rows][ok], model.design, model.spec,
                        start=starts[(method, structure)], smoothing=full.smoothing)[0]
            replicates[b] = replace(model, fits=fits).centiles()["volume_mm3"].to_numpy()
            bar.update()
    estimate = grid["volume_mm3"].to_numpy()
    half = np.empty(len(grid))
    for rows in keys.groupby(["method", "structure", "sex", "centile"], sort=False).indices.values():
        half[rows] = simultaneous_half_width(replicates[:, rows], estimate[rows])
    return keys.assign(lower=estimate - half, upper=estimate + half)


def simultaneous_half_width(replicates: np.ndarray, estimate: np.ndarray, level: float = LEVEL) -> np.ndarray:
    """Half-widths of a band ``estimate +- c sd`` over one curve (ages): ``sd`` the replicates'
    pointwise SD, ``c`` the ``level`` quantile over replicates of their largest standardised
    distance to the estimate, so that a share ``level`` of replicate curves lies wholly inside."""
    sd = replicates.std(axis=0, ddof=1)
    sd = np.where(sd > 0, sd, np.finfo(float).tiny)
    largest = np.max(np.abs(replicates - estimate[None, :]) / sd[None, :], axis=1)
    return np.quantile(largest, level) * sd
