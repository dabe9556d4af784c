"""The norms model's parts against independent computations: the SHASH family, the likelihood
gradient, statsmodels QuantReg on no-skew data, and ComBat against neuroHarmonize's own output."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats
from scipy.optimize import approx_fprime

from morphometry.analysis.norms_api import fit_norms
from morphometry.analysis.norms_harmonise import learn_combat
from morphometry.analysis.norms_model import NormsDesign, _Problem, penalty_matrix
from morphometry.analysis.norms_shash import shash_centile, shash_logpdf_parts, shash_quantile, shash_z
from morphometry.analysis.norms_simulation import SimulatedNorms, simulate_norms_table
from morphometry.analysis.splines import SplineBasis


def test_shash_is_a_density_with_matching_quantiles_and_normal_special_case():
    mu, sigma, eps, delta = 3.0, 2.0, 0.7, 0.8

    def pdf(y):
        return np.exp(shash_logpdf_parts(y, mu, np.log(sigma), eps, np.log(delta))[0])

    assert integrate.quad(pdf, -np.inf, np.inf)[0] == pytest.approx(1.0, abs=1e-7)
    for q in (0.025, 0.3, 0.5, 0.9):
        yq = shash_quantile(q, mu, sigma, eps, delta)
        assert integrate.quad(pdf, -np.inf, yq)[0] == pytest.approx(q, abs=1e-7)
        assert shash_centile(yq, mu, sigma, eps, delta) == pytest.approx(100 * q)
        assert stats.norm.cdf(shash_z(yq, mu, sigma, eps, delta)) == pytest.approx(q)
    y = np.linspace(-5, 9, 7)
    normal = shash_logpdf_parts(y, mu, np.log(sigma), 0.0, 0.0)[0]
    np.testing.assert_allclose(normal, stats.norm.logpdf(y, mu, sigma), rtol=1e-12)


def _design(table, n_knots=6, scale_knots=4, sites=()):
    age = table["age"].to_numpy()
    spacing = table[["spacing_x_mm", "spacing_y_mm", "spacing_z_mm"]].to_numpy()
    design = NormsDesign(SplineBasis(age.min(), age.max(), n_knots), SplineBasis(age.min(), age.max(), scale_knots),
                         ("spacing_x_mm", "spacing_y_mm", "spacing_z_mm"), tuple(np.median(spacing, axis=0)), True,
                         False, sites)
    male = (table["sex"] == "M").to_numpy(dtype=float)
    return design, *design.matrices(age, spacing, male, np.zeros(len(age), dtype=int))


@pytest.mark.parametrize("family,robust", [("shash", True), ("normal", False)])
def test_penalised_likelihood_gradient_matches_finite_differences(family, robust):
    table = simulate_norms_table(SimulatedNorms(n_scans=400, outliers=0.05), np.random.default_rng(3))
    design, xl, xs = _design(table)
    y = table["left_hippocampus"].to_numpy()
    n_params = xl.shape[1] + xs.shape[1] + 2 * (family == "shash") + robust
    problem = _Problem((y - 4000) / 300, xl, xs, penalty_matrix(design, n_params), family, robust, 50.0, -np.log(12))
    theta = problem.start() + np.random.default_rng(0).normal(0, 0.05, n_params)
    numeric = approx_fprime(theta, lambda t: problem.objective(t)[0], 1e-7)
    np.testing.assert_allclose(problem.objective(theta)[1], numeric, atol=2e-6)


def test_centiles_match_quantile_regression_without_skew_or_outliers():
    """Normal data (no skew, no outliers), scale growing with age: the fitted 10th, 50th and 90th
    centiles at the reference covariates equal statsmodels QuantReg's on the same B-spline basis
    (with the same sex and spacing terms) within 0.15 planted SD (at that age) at every age of
    25..85 years. The tolerance is QuantReg's own sampling error: at n = 20,000 its 90th centile
    is up to 0.1 SD from the planted one here, ours within 0.06 SD (checked too)."""
    from statsmodels.regression.quantile_regression import QuantReg

    planted = SimulatedNorms(n_scans=20_000, epsilon=0.0, delta=1.0)
    table = simulate_norms_table(planted, np.random.default_rng(11))
    model = fit_norms(table, structures=("left_hippocampus",), n_knots=6, scale_knots=4, progress=False)
    design = model.design
    ages = np.arange(25.0, 86.0, 5.0)
    x_ref = design.matrices(ages, np.tile(design.reference_spacing_mm, (ages.size, 1)), np.full(ages.size, 0.5),
                            np.zeros(ages.size, dtype=int))[0]
    male = (table["sex"] == "M").to_numpy(dtype=float)
    x = design.matrices(table["age"].to_numpy(), table[list(design.spacing_terms)].to_numpy(), male,
                        np.zeros(len(table), dtype=int))[0]
    curves = model.centiles(ages, sex=("F", "M"), centiles=(10, 50, 90))
    for q in (10, 50, 90):
        qr = QuantReg(table["left_hippocampus"].to_numpy(), x).fit(q=q / 100.0, max_iter=5000)
        expected = x_ref @ qr.params
        ours = curves[curves["centile"] == q].groupby("age_years")["volume_mm3"].mean().to_numpy()  # sexes averaged
        sd = planted.scale(ages)
        assert (np.abs(ours - expected) < 0.15 * sd).all(), q
        assert (np.abs(ours - planted.centile(q, ages, 0.5)) < 0.075 * sd).all(), q


def test_combat_adjustment_reproduces_neuroharmonize():
    """The adjustment written out from the learned parameters equals neuroHarmonize's adjusted data."""
    harmonization = pytest.importorskip("neuroHarmonize", reason="ComBat needs neuroHarmonize (README)")
    harmonizationLearn = harmonization.harmonizationLearn

    rng = np.random.default_rng(5)
    n = 600
    sites = rng.choice(["a", "b", "c"], n)
    cov = rng.normal(size=(n, 2))
    offsets = {"a": (0, 0), "b": (30, -10), "c": (-20, 25)}
    noise = rng.normal(0, 10, (n, 2)) * (1 + (sites == "c"))[:, None]  # site c is noisier
    y = np.column_stack([100 + 5 * cov[:, 0] + [offsets[s][j] for s in sites] for j in range(2)]) + noise
    params = learn_combat(y, sites, cov, ("s1", "s2"))
    covars = pd.DataFrame({"SITE": sites, "x0": cov[:, 0], "x1": cov[:, 1]})
    with pytest.warns(PendingDeprecationWarning):  # neuroHarmonize's np.matrix
        _, expected = harmonizationLearn(y, covars, eb=True)
    index = np.array([params.sites.index(s) for s in sites])
    np.testing.assert_allclose(params.apply(y, index, cov), expected, rtol=1e-7)
    unseen = params.apply(y[:5], np.full(5, -1), cov[:5])
    np.testing.assert_array_equal(unseen, y[:5])


def test_smoothing_chosen_by_bic_is_a_grid_value_and_refits_the_same():
    from morphometry.analysis.norms_model import SMOOTHING_GRID

    table = simulate_norms_table(SimulatedNorms(n_scans=2000), np.random.default_rng(4))
    chosen = fit_norms(table, structures=("left_hippocampus",), smoothing=None, progress=False)
    fit = chosen.fits[("synthseg+", "left_hippocampus")]
    assert fit.smoothing in SMOOTHING_GRID
    fixed = fit_norms(table, structures=("left_hippocampus",), smoothing=fit.smoothing, progress=False)
    again = fixed.fits[("synthseg+", "left_hippocampus")]
    assert again.loglik == pytest.approx(fit.loglik, abs=1e-3)
