"""Change metrics of an ageing trajectory: peak age and annual % change (the paper's Sec. 3.4),
on the spline basis of :mod:`morphometry.analysis.splines`; ages in years."""

from __future__ import annotations

import numpy as np

from morphometry.analysis.splines import SplineBasis

CHANGE_AGES_YEARS = (30, 50, 70)


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
