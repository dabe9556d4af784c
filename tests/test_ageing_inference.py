"""Standard errors of the ageing model: the cluster-robust sandwich against hand computations,
the random intercept (MixedLM) against generalised least squares and the subject bootstrap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from morphometry.analysis.ageing_bootstrap import subject_counts
from morphometry.analysis.ageing_inference import VarianceComponents, cluster_covariance, gls_transform
from morphometry.analysis.ageing_model import AgeingModel, AgeingSpec
from morphometry.analysis.ageing_simulation import SimulatedAgeingData, simulate_ageing_table
from morphometry.errors import DataError

S = "left_hippocampus"


def _hand_sandwich(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Cluster-robust covariance written out: bread (X'X)^-1, meat sum_g (X_g' e_g)(X_g' e_g)',
    factor G/(G-1) (n-1)/(n-k)."""
    n, k = x.shape
    beta = np.linalg.solve(x.T @ x, x.T @ y)
    resid = y - x @ beta
    meat = np.zeros((k, k))
    labels = np.unique(groups)
    for g in labels:
        score = x[groups == g].T @ resid[groups == g]
        meat += np.outer(score, score)
    bread = np.linalg.inv(x.T @ x)
    g = len(labels)
    return g / (g - 1) * (n - 1) / (n - k) * bread @ meat @ bread


def test_cluster_covariance_of_a_mean_is_the_analytic_value():
    # Intercept only: estimate = mean 3.5, residuals -2.5 .. 2.5, cluster sums -4, 0, 4;
    # variance = G/(G-1) * sum_g S_g^2 / n^2 = 1.5 * 32 / 36 = 4/3 (the (n-1)/(n-k) factor is 1).
    y = np.arange(1.0, 7.0)
    cov = cluster_covariance(np.ones((6, 1)), y, np.array(["a", "a", "b", "b", "c", "c"]))
    assert cov.shape == (1, 1)
    assert cov[0, 0] == pytest.approx(4.0 / 3.0, rel=1e-12)


def test_cluster_covariance_equals_the_hand_sandwich_on_a_small_design():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(5), [3, 2, 4, 1, 2])
    x = np.column_stack([np.ones(12), np.linspace(0.0, 1.0, 12), rng.normal(size=12)])
    y = 2.0 + 3.0 * x[:, 1] + rng.normal(size=12) + np.repeat(rng.normal(size=5), [3, 2, 4, 1, 2])
    np.testing.assert_allclose(cluster_covariance(x, y, groups), _hand_sandwich(x, y, groups), rtol=1e-10)


def test_penalised_fit_ses_are_the_sandwich_on_its_active_design():
    """A hard monotone fit with flat stretches: the covariance is the sandwich of least squares on
    the design without the increments held at zero (built here from the fitted curve)."""
    table = simulate_ageing_table(SimulatedAgeingData(n_subjects=250), np.random.default_rng(3))
    table[S] += 600.0 * np.exp(-0.5 * ((table["age"] - 55.0) / 6.0) ** 2)
    fit = AgeingModel(AgeingSpec(structures=(S,), direction="decreasing", penalty=1e3)).fit(table)
    f = fit.fits[("synthseg+", S)]
    steps = np.diff(f.coef[:12])
    flat = np.abs(steps) < 1e-6 * np.abs(f.coef[:12]).max()
    assert f.penalised and flat.any()
    # beta_spline = first + cumulative sums of the free increments; covariates unchanged.
    cum = np.tril(np.ones((12, 11)), -1)[:, ~flat]
    p = len(fit.terms)
    a = np.zeros((p, 1 + cum.shape[1] + p - 12))
    a[:12, 0], a[:12, 1 : 1 + cum.shape[1]], a[12:, 1 + cum.shape[1]:] = 1.0, cum, np.eye(p - 12)
    x = fit.design_matrix("synthseg+").to_numpy()
    groups = table["subject_id"].to_numpy()
    expected = a @ _hand_sandwich(x @ a, table[S].to_numpy(), groups) @ a.T
    np.testing.assert_allclose(f.cov, expected, rtol=1e-8, atol=1e-10 * np.abs(expected).max())
    assert f.df_resid == len(table) - a.shape[1]


def test_gls_transform_gives_generalised_least_squares():
    rng = np.random.default_rng(1)
    sizes = [1, 3, 2, 4, 1, 2]
    groups = np.repeat(np.arange(6), sizes)
    x = np.column_stack([np.ones(13), rng.normal(size=13)])
    y = rng.normal(size=13)
    variance = VarianceComponents(subject_var=2.0, scan_var=0.5)
    xt, yt = gls_transform(x, y, groups, variance)
    v_inv = np.zeros((13, 13))
    start = 0
    for m in sizes:
        block = slice(start, start + m)
        v_inv[block, block] = np.linalg.inv(0.5 * np.eye(m) + 2.0 * np.ones((m, m)))
        start += m
    np.testing.assert_allclose(xt.T @ xt, 2.5 * x.T @ v_inv @ x, rtol=1e-12)  # (s2 + t2) X'V^-1 X
    np.testing.assert_allclose(xt.T @ yt, 2.5 * x.T @ v_inv @ y, rtol=1e-12)
    single = groups == 0
    np.testing.assert_allclose(xt[single], x[single])  # one scan: unchanged


def _repeated_table(n_subjects: int, seed: int) -> tuple[SimulatedAgeingData, pd.DataFrame]:
    sim = SimulatedAgeingData(n_subjects=n_subjects, max_scans_per_subject=4, subject_sd=150.0, noise_sd=100.0)
    return sim, simulate_ageing_table(sim, np.random.default_rng(seed))


RI = AgeingSpec(structures=(S,), penalty=0.0, reference_spacing_mm=(1.0, 1.0, 1.0), random_intercept=True)


def test_random_intercept_fit_equals_statsmodels_mixedlm():
    from statsmodels.regression.mixed_linear_model import MixedLM

    _, table = _repeated_table(150, 0)
    fit = AgeingModel(RI).fit(table)
    f = fit.fits[("synthseg+", S)]
    x = fit.design_matrix("synthseg+").to_numpy()
    ref = MixedLM(table[S].to_numpy(), x, groups=table["subject_id"].to_numpy()).fit(reml=True)
    np.testing.assert_allclose(f.coef, ref.fe_params, rtol=1e-6)
    np.testing.assert_allclose(np.sqrt(np.diag(f.cov)), ref.bse_fe, rtol=1e-4)
    summary = fit.summary().iloc[0]
    assert summary["subject_sd"] == pytest.approx(np.sqrt(np.asarray(ref.cov_re)[0, 0]), rel=1e-4)
    assert summary["scan_sd"] == pytest.approx(np.sqrt(ref.scale), rel=1e-4)


def test_random_intercept_ses_agree_with_the_subject_bootstrap_and_cover_the_planted_truth():
    """600 subjects with 1-4 scans, subject SD 150 mm^3 and scan SD 100 mm^3. The bootstrap
    refits generalised least squares with the variance components fixed; 2000 replicates put its
    SEs within about 2% of their limit. Tolerance: the median ratio of bootstrap to MixedLM SE
    of the 12 spline coefficients within 10% of 1 and each within 0.65-1.5; the pointwise SE
    of the trajectory within 0.8-1.25 at every whole age from 25 to 85 years."""
    sim, table = _repeated_table(600, 0)
    fit = AgeingModel(RI).fit(table)
    f = fit.fits[("synthseg+", S)]
    boot = fit.bootstrap(2000, 0, progress=False)
    model_se = np.sqrt(np.diag(f.cov))[:12]
    ratio = boot.coefs[("synthseg+", S)][:, :12].std(axis=0, ddof=1) / model_se
    assert abs(np.median(ratio) - 1.0) < 0.10, ratio
    assert ((ratio > 0.65) & (ratio < 1.5)).all(), ratio
    ages = np.arange(25.0, 86.0)
    b = fit.basis.evaluate(ages)
    curve_se = np.sqrt(np.einsum("ij,jk,ik->i", b, f.cov[:12, :12], b))
    boot_se = boot.replicate_trajectories("synthseg+", S, ages).std(axis=0, ddof=1)
    assert ((boot_se / curve_se > 0.8) & (boot_se / curve_se < 1.25)).all()
    # The planted curve is quadratic in age, so spline coefficients reproduce it exactly.
    fine = np.linspace(fit.basis.age_min, fit.basis.age_max, 300)
    spline_truth = np.linalg.lstsq(fit.basis.evaluate(fine), sim.truth(fine), rcond=None)[0]
    truth = np.r_[spline_truth, sim.gamma, sim.delta]
    coef = fit.coefficients()
    inside = (coef["ci_low"] <= truth) & (truth <= coef["ci_high"])
    assert inside.sum() >= 14, coef.assign(truth=truth)
    wide = stats.t.ppf(0.9995, f.n_subjects - 1) * coef["std_error"]
    assert (np.abs(coef["estimate"] - truth) <= wide).all()


@pytest.mark.slow
def test_random_intercept_intervals_have_nominal_coverage():
    hits = []
    for seed in range(40):
        sim, table = _repeated_table(300, 100 + seed)
        fit = AgeingModel(RI).fit(table)
        fine = np.linspace(fit.basis.age_min, fit.basis.age_max, 300)
        truth = np.r_[np.linalg.lstsq(fit.basis.evaluate(fine), sim.truth(fine), rcond=None)[0], sim.gamma, sim.delta]
        coef = fit.coefficients()
        hits.append(((coef["ci_low"] <= truth) & (truth <= coef["ci_high"])).to_numpy())
    assert 0.92 <= np.mean(hits) <= 0.975


def test_random_intercept_bootstrap_replicates_are_gls_fits_of_the_resampled_subjects():
    """Replicate b: generalised least squares on the drawn subjects (a subject drawn twice counts
    twice), with the full fit's variance components, written with explicit V^-1 blocks."""
    _, table = _repeated_table(80, 2)
    fit = AgeingModel(RI).fit(table)
    f = fit.fits[("synthseg+", S)]
    boot = fit.bootstrap(4, np.random.default_rng(9), progress=False)
    counts = subject_counts(len(fit.subjects), 4, np.random.default_rng(9))
    x = fit.design_matrix("synthseg+").to_numpy()
    y = table[S].to_numpy()
    index = np.searchsorted(fit.subjects, table["subject_id"].to_numpy())
    t2, s2 = f.variance.subject_var, f.variance.scan_var
    for b in range(4):
        lhs, rhs = 0.0, 0.0
        for i in np.flatnonzero(counts[b]):
            rows = index == i
            v_inv = np.linalg.inv(s2 * np.eye(rows.sum()) + t2)
            lhs = lhs + counts[b, i] * x[rows].T @ v_inv @ x[rows]
            rhs = rhs + counts[b, i] * x[rows].T @ v_inv @ y[rows]
        np.testing.assert_allclose(boot.coefs[("synthseg+", S)][b], np.linalg.solve(lhs, rhs), rtol=1e-8)


def test_random_intercept_penalised_fit_is_monotone_and_uses_the_active_design():
    _, table = _repeated_table(250, 4)
    table[S] += 600.0 * np.exp(-0.5 * ((table["age"] - 55.0) / 6.0) ** 2)
    fit = AgeingModel(AgeingSpec(structures=(S,), direction="decreasing", penalty=1e3,
                                 random_intercept=True)).fit(table)
    f = fit.fits[("synthseg+", S)]
    assert f.penalised and (np.diff(f.coef[:12]) <= 1e-8 * np.abs(f.coef).max()).all()
    flat = f.pattern == 0
    assert flat.any()
    # Held increments have zero variance: the spline coefficients around a flat step move together.
    k = int(np.flatnonzero(flat)[0])
    diff = np.zeros(len(fit.terms))
    diff[k], diff[k + 1] = -1.0, 1.0
    assert diff @ f.cov @ diff == pytest.approx(0.0, abs=1e-9 * f.cov[k, k])


def test_random_intercept_needs_repeated_scans():
    table = simulate_ageing_table(SimulatedAgeingData(n_subjects=100, max_scans_per_subject=1),
                                  np.random.default_rng(0))
    with pytest.raises(DataError, match="^random_intercept: .*every subject has one scan"):
        AgeingModel(AgeingSpec(structures=(S,), random_intercept=True)).fit(table)
