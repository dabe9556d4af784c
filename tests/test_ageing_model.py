"""The ageing model against independent computations: OLS, hard-constrained LS, analytic cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import lsq_linear

from morphometry.analysis.ageing_metrics import change_metrics
from morphometry.analysis.ageing_model import AgeingModel, AgeingSpec, parse_sex, resolve_structures
from morphometry.analysis.ageing_simulation import SimulatedAgeingData, simulate_ageing_table
from morphometry.analysis.splines import SplineBasis
from morphometry.errors import DataError
from morphometry.labels import STRUCTURES, TOTAL_INTRACRANIAL

SM = pytest.importorskip("statsmodels.api")


def _table(n_subjects=150, seed=0, **kw) -> pd.DataFrame:
    return simulate_ageing_table(SimulatedAgeingData(n_subjects=n_subjects, **kw), np.random.default_rng(seed))


def test_basis_has_n_knots_plus_two_functions_and_reproduces_cubics():
    basis = SplineBasis(20.0, 90.0, n_knots=10)
    assert basis.n_basis == 12
    ages = np.linspace(20, 90, 57)
    b = basis.evaluate(ages)
    assert b.shape == (57, 12)
    np.testing.assert_allclose(b.sum(axis=1), 1.0, atol=1e-12)
    cubic = 3.0 - 0.2 * ages + 0.004 * ages**2 - 2e-5 * ages**3
    coef, *_ = np.linalg.lstsq(b, cubic, rcond=None)
    np.testing.assert_allclose(b @ coef, cubic, atol=1e-9)
    deriv = -0.2 + 0.008 * ages - 6e-5 * ages**2
    np.testing.assert_allclose(basis.derivative(ages) @ coef, deriv, atol=1e-9)
    with pytest.raises(ValueError):
        basis.evaluate([19.0])


def test_lambda_zero_equals_statsmodels_ols_with_cluster_se():
    table = _table(seed=1)
    fit = AgeingModel(AgeingSpec(structures=("left_hippocampus",), penalty=0.0)).fit(table)
    x = fit.design_matrix("synthseg+")
    y = table["left_hippocampus"].to_numpy()
    groups = pd.factorize(table["subject_id"])[0]
    ols = SM.OLS(y, x.to_numpy()).fit(cov_type="cluster", cov_kwds={"groups": groups})
    coef = fit.coefficients()
    np.testing.assert_allclose(coef["estimate"], ols.params, rtol=1e-6)
    np.testing.assert_allclose(coef["std_error"], ols.bse, rtol=1e-6)
    summary = fit.summary().iloc[0]
    assert summary["r2"] == pytest.approx(ols.rsquared, rel=1e-9)
    assert summary["residual_sd"] == pytest.approx(np.sqrt(ols.ssr / ols.df_resid), rel=1e-9)


def test_design_matrix_columns_and_reference_centring():
    table = _table(seed=2)
    spec = AgeingSpec(structures=("left_hippocampus",), reference_spacing_mm=(1.0, 1.0, 1.0))
    fit = AgeingModel(spec).fit(table)
    x = fit.design_matrix("synthseg+")
    assert list(x.columns) == [f"spline_{k}" for k in range(1, 13)] + [
        "spacing_x_mm", "spacing_y_mm", "spacing_z_mm", "male"]
    np.testing.assert_allclose(x["spacing_z_mm"], table["spacing_z_mm"] - 1.0)
    np.testing.assert_allclose(x["male"], np.where(table["sex"] == "M", 0.5, -0.5))
    assert x.index[0] == table["scan_id"].iloc[0]


def _hard_constrained(x: np.ndarray, y: np.ndarray, k: int, sign: int) -> np.ndarray:
    """min ||y - X beta|| subject to sign * diff(beta[:k]) >= 0, via non-negative increments."""
    p = x.shape[1]
    m = np.zeros((p, p))
    m[:k, 0] = 1.0
    m[:k, 1:k] = sign * np.tril(np.ones((k, k - 1)), -1)
    m[k:, k:] = np.eye(p - k)
    lower = np.r_[-np.inf, np.zeros(k - 1), np.full(p - k, -np.inf)]
    res = lsq_linear(x @ m, y, bounds=(lower, np.inf), tol=1e-14, lsmr_tol="auto", max_iter=10_000)
    return m @ res.x


def test_large_lambda_gives_the_hard_constrained_solution():
    # A curve with a bump: least squares is not monotone, so the constraint binds.
    table = _table(n_subjects=300, seed=3)
    bump = 600.0 * np.exp(-0.5 * ((table["age"] - 55.0) / 6.0) ** 2)
    table["left_hippocampus"] = table["left_hippocampus"] + bump
    spec = AgeingSpec(structures=("left_hippocampus",), direction="decreasing", penalty=1e3)
    fit = AgeingModel(spec).fit(table)
    f = fit.fits[("synthseg+", "left_hippocampus")]
    assert f.penalised and f.converged
    spline = f.coef[:12]
    assert np.all(np.diff(spline) <= 1e-8)
    x = fit.design_matrix("synthseg+").to_numpy()
    expected = _hard_constrained(x, table["left_hippocampus"].to_numpy(), 12, -1)
    np.testing.assert_allclose(f.coef, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())
    # The unconstrained fit of the same data really is non-monotone.
    free = AgeingModel(AgeingSpec(structures=("left_hippocampus",), penalty=0.0)).fit(table)
    assert np.diff(free.fits[("synthseg+", "left_hippocampus")].coef[:12]).max() > 50.0


def test_soft_penalty_lies_between_ols_and_hard_constraint():
    table = _table(n_subjects=300, seed=4)
    table["left_hippocampus"] += 600.0 * np.exp(-0.5 * ((table["age"] - 55.0) / 6.0) ** 2)

    def wrong_sign_total(penalty):
        spec = AgeingSpec(structures=("left_hippocampus",), direction="decreasing", penalty=penalty)
        coef = AgeingModel(spec).fit(table).fits[("synthseg+", "left_hippocampus")].coef
        return np.maximum(np.diff(coef[:12]), 0).sum()

    totals = [wrong_sign_total(lam) for lam in (0.0, 0.01, 0.1, 1e3)]
    assert totals[0] > totals[1] > totals[2] > totals[3] == 0.0


def test_penalty_is_scale_free():
    table = _table(seed=5)
    spec = AgeingSpec(structures=("left_hippocampus",), direction="decreasing", penalty=0.05)
    a = AgeingModel(spec).fit(table).fits[("synthseg+", "left_hippocampus")].coef
    scaled = table.assign(left_hippocampus=table["left_hippocampus"] * 1e-3)
    b = AgeingModel(spec).fit(scaled).fits[("synthseg+", "left_hippocampus")].coef
    np.testing.assert_allclose(b * 1e3, a, rtol=1e-5, atol=1e-5 * np.abs(a).max())


def test_auto_direction_follows_rank_correlation():
    table = _table(seed=6)
    table["right_hippocampus"] = 8000.0 - table["left_hippocampus"]  # increases with age
    fit = AgeingModel(AgeingSpec(structures=("left_hippocampus", "right_hippocampus"),
                                 directions=(("left_hippocampus", "none"),))).fit(table)
    assert fit.fits[("synthseg+", "left_hippocampus")].direction == "none"
    assert fit.fits[("synthseg+", "right_hippocampus")].direction == "increasing"
    fit = AgeingModel(AgeingSpec(structures=("left_hippocampus",))).fit(table)
    assert fit.fits[("synthseg+", "left_hippocampus")].direction == "decreasing"


def test_change_metrics_on_a_linear_trajectory():
    basis = SplineBasis(20.0, 90.0)
    ages = np.linspace(20, 90, 200)
    line = 5000.0 - 20.0 * (ages - 20.0)
    coef, *_ = np.linalg.lstsq(basis.evaluate(ages), line, rcond=None)
    m = change_metrics(basis, coef)
    assert m["peak_age_years"] == pytest.approx(20.0)
    for a in (30, 50, 70):
        assert m[f"annual_pct_change_at_{a}"] == pytest.approx(100 * -20.0 / (5000.0 - 20.0 * (a - 20)), rel=1e-9)
    assert m["annual_pct_change_30_40"] == pytest.approx(100 * -200.0 / (10 * 4800.0), rel=1e-9)
    assert "annual_pct_change_80_90" in m and "annual_pct_change_90_100" not in m
    stacked = change_metrics(basis, np.stack([coef, 2 * coef]))
    np.testing.assert_allclose(stacked["annual_pct_change_at_50"], m["annual_pct_change_at_50"])


def test_bilateral_sum_and_fraction_of_tiv():
    table = _table(seed=7, structures=("left_hippocampus", "right_hippocampus", TOTAL_INTRACRANIAL))
    table[TOTAL_INTRACRANIAL] = table[TOTAL_INTRACRANIAL] + 1.4e6
    fit = AgeingModel(AgeingSpec(structures=("hippocampus",), units="fraction_tiv", penalty=0.0)).fit(table)
    y = (table["left_hippocampus"] + table["right_hippocampus"]) / table[TOTAL_INTRACRANIAL]
    x = fit.design_matrix("synthseg+").to_numpy()
    expected, *_ = np.linalg.lstsq(x, y.to_numpy(), rcond=None)
    np.testing.assert_allclose(fit.fits[("synthseg+", "hippocampus")].coef, expected, rtol=1e-8)
    res = fit.residuals()
    np.testing.assert_allclose(res["volume"], y)
    assert fit.summary()["units"].iloc[0] == "fraction of TIV"


def test_structure_groups():
    summed = resolve_structures(("summed",), "mm3")
    assert summed[0] == TOTAL_INTRACRANIAL and "hippocampus" in summed and "brain_stem" in summed
    assert len(summed) == 1 + 14 + 4
    assert resolve_structures(("lateral",), "mm3") == (TOTAL_INTRACRANIAL, *STRUCTURES)
    assert TOTAL_INTRACRANIAL not in resolve_structures(("lateral",), "fraction_tiv")


@pytest.mark.parametrize("values,expected", [
    (["M", "F", "male", "Female", " m "], [1, 0, 1, 0, 1]),
    ([1, 0, 1.0, 0.0], [1, 0, 1, 0]),
    (["1", "0"], [1, 0]),
])
def test_sex_codes(values, expected):
    np.testing.assert_array_equal(parse_sex(pd.Series(values), "cov.csv", "sex"), expected)


@pytest.mark.parametrize("bad", [["M", "X"], ["M", None], [1, 2], ["M", "unknown"]])
def test_sex_rejects_other_values(bad):
    with pytest.raises(DataError, match=r"cov.csv: column 'sex'.*1 = male, 0 = female"):
        parse_sex(pd.Series(bad), "cov.csv", "sex")


def test_predict_and_trajectory_agree_at_reference_covariates():
    table = _table(seed=8)
    fit = AgeingModel(AgeingSpec(structures=("left_hippocampus",), reference_spacing_mm=(1.0, 1.0, 1.0))).fit(table)
    probe = pd.DataFrame({"scan_id": ["a", "b"], "method": "synthseg+", "age": [40.0, 40.0],
                          "sex": ["M", "F"], "spacing_x_mm": 1.0, "spacing_y_mm": 1.0, "spacing_z_mm": 1.0})
    pred = fit.predict(probe)["left_hippocampus"].to_numpy()
    assert pred.mean() == pytest.approx(fit.trajectory("synthseg+", "left_hippocampus", [40.0])[0])
    delta = fit.coefficients().set_index("term").loc["male", "estimate"]
    assert pred[0] - pred[1] == pytest.approx(delta)
    with pytest.raises(DataError, match="fitted range"):
        fit.predict(probe.assign(age=[5.0, 40.0]))


def test_outliers_are_planted_scans():
    table = _table(n_subjects=300, seed=9, noise_sd=50.0, subject_sd=0.0)
    planted = table.index[[5, 50, 150]]
    table.loc[planted, "left_hippocampus"] += 2000.0
    fit = AgeingModel(AgeingSpec(structures=("left_hippocampus",))).fit(table)
    out = fit.outliers()
    assert set(table.loc[planted, "scan_id"]) <= set(out["scan_id"])
    assert len(out) <= 3 + 3  # about 0.3% of ~600 scans beyond 3 SD by chance
    assert fit.summary()["n_outliers"].iloc[0] == len(out)


def test_missing_volumes_drop_scans_per_structure_and_bootstrap_uses_the_same_rows():
    table = _table(seed=10, structures=("left_hippocampus", "right_hippocampus"))
    gone = table.index[::7]
    table.loc[gone, "right_hippocampus"] = np.nan
    spec = AgeingSpec(structures=("left_hippocampus", "right_hippocampus"), penalty=0.0)
    fit = AgeingModel(spec).fit(table)
    assert fit.fits[("synthseg+", "left_hippocampus")].n_scans == len(table)
    assert fit.fits[("synthseg+", "right_hippocampus")].n_scans == len(table) - len(gone)
    keep = table["right_hippocampus"].notna().to_numpy()
    x = fit.design_matrix("synthseg+").to_numpy()
    expected, *_ = np.linalg.lstsq(x[keep], table["right_hippocampus"].to_numpy()[keep], rcond=None)
    np.testing.assert_allclose(fit.fits[("synthseg+", "right_hippocampus")].coef, expected, rtol=1e-8)
    from morphometry.analysis.ageing_bootstrap import subject_counts

    boot = fit.bootstrap(3, np.random.default_rng(0))
    counts = subject_counts(len(fit.subjects), 3, np.random.default_rng(0))
    w = counts[0, np.searchsorted(fit.subjects, table["subject_id"].to_numpy())][keep]
    xw = x[keep] * np.sqrt(w)[:, None]
    rep, *_ = np.linalg.lstsq(xw, table["right_hippocampus"].to_numpy()[keep] * np.sqrt(w), rcond=None)
    np.testing.assert_allclose(boot.coefs[("synthseg+", "right_hippocampus")][0], rep, rtol=1e-6)
