"""Planted truth: the fit recovers the curve, the covariate effects and honest uncertainty."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import lsq_linear
from threadpoolctl import threadpool_limits

from morphometry.analysis.ageing_bootstrap import subject_counts
from morphometry.analysis.ageing_model import AgeingModel, AgeingSpec
from morphometry.analysis.ageing_simulation import SimulatedAgeingData, simulate_ageing_table
from morphometry.analysis.splines import PenaltySettings, solve_penalised

S = "left_hippocampus"
REF = AgeingSpec(structures=(S,), reference_spacing_mm=(1.0, 1.0, 1.0))


def _fit(planted: SimulatedAgeingData, seed: int, spec: AgeingSpec = REF):
    return AgeingModel(spec).fit(simulate_ageing_table(planted, np.random.default_rng(seed)))


def test_curve_rmse_shrinks_with_n_and_is_bounded_at_1000_subjects():
    # Noise: 150 mm^3 per scan + 100 mm^3 per subject; about 2 scans per subject. With 12 spline
    # coefficients the curve's standard error at 1000 subjects is about 15 mm^3.
    rmse = {}
    for n in (250, 1000, 4000):
        planted = SimulatedAgeingData(n_subjects=n)
        errors = []
        for seed in range(3):
            fit = _fit(planted, seed)
            ages = fit.age_grid()
            errors.append(np.sqrt(np.mean((fit.trajectory("synthseg+", S, ages) - planted.truth(ages)) ** 2)))
        rmse[n] = float(np.mean(errors))
    assert rmse[250] > rmse[1000] > rmse[4000]
    assert rmse[1000] < 30.0  # mm^3, i.e. < 1% of the 2800-4000 mm^3 curve


@pytest.mark.slow
def test_spacing_and_sex_effects_inside_their_95_intervals():
    planted = SimulatedAgeingData(n_subjects=120)
    truth = np.r_[planted.gamma, planted.delta]
    hits = np.zeros(4)
    for seed in range(100):
        coef = _fit(planted, seed, AgeingSpec(structures=(S,))).coefficients().iloc[-4:]
        hits += (coef["ci_low"].to_numpy() <= truth) & (truth <= coef["ci_high"].to_numpy())
    assert list(coef["term"]) == ["spacing_x_mm", "spacing_y_mm", "spacing_z_mm", "male"]
    assert (hits >= 90).all(), hits


@pytest.mark.slow
def test_bootstrap_bands_cover_the_true_curve_at_the_nominal_rate():
    planted = SimulatedAgeingData(n_subjects=300, drop=0.5, noise_sd=100.0, subject_sd=50.0)
    coverage = []
    for seed in range(60):
        fit = _fit(planted, seed)
        bands = fit.bootstrap(200, np.random.default_rng(1000 + seed)).trajectories()
        truth = planted.truth(bands["age_years"])
        coverage.append(((bands["lower"] <= truth) & (truth <= bands["upper"])).mean())
    mean, se = np.mean(coverage), np.std(coverage, ddof=1) / np.sqrt(len(coverage))
    assert abs(mean - 0.95) <= 3 * se, (mean, se)


def test_bootstrap_replicates_equal_direct_fits_of_resampled_subjects():
    """Replicate b refits the same model (knots, scale, direction) to the subjects drawn for it:
    check against a weighted hard-constrained least squares (large lambda) built independently."""
    planted = SimulatedAgeingData(n_subjects=80)
    table = simulate_ageing_table(planted, np.random.default_rng(11))
    table[S] += 500.0 * np.exp(-0.5 * ((table["age"] - 50.0) / 6.0) ** 2)
    spec = AgeingSpec(structures=(S,), direction="decreasing", penalty=1e3)
    fit = AgeingModel(spec).fit(table)
    boot = fit.bootstrap(6, np.random.default_rng(5))
    counts = subject_counts(len(fit.subjects), 6, np.random.default_rng(5))
    x = fit.design_matrix("synthseg+").to_numpy()
    y = table[S].to_numpy()
    index = np.searchsorted(fit.subjects, table["subject_id"].to_numpy())
    k, p = 12, x.shape[1]
    m = np.eye(p)
    m[:k, 0] = 1.0
    m[:k, 1:k] = -np.tril(np.ones((k, k - 1)), -1)
    lower = np.r_[-np.inf, np.zeros(k - 1), np.full(p - k, -np.inf)]
    for b in range(6):
        w = np.sqrt(counts[b, index])
        res = lsq_linear((x @ m) * w[:, None], y * w, bounds=(lower, np.inf), tol=1e-14, max_iter=10_000)
        expected = m @ res.x
        np.testing.assert_allclose(boot.coefs[("synthseg+", S)][b], expected, rtol=1e-6,
                                   atol=1e-6 * np.abs(expected).max())


def test_active_set_and_lbfgsb_agree_on_soft_penalty_replicates():
    planted = SimulatedAgeingData(n_subjects=150)
    fit = _fit(planted, 12, AgeingSpec(structures=(S,), direction="decreasing", penalty=0.05))
    boot = fit.bootstrap(20, np.random.default_rng(3))
    counts = subject_counts(len(fit.subjects), 20, np.random.default_rng(3))
    d = fit.data["synthseg+"]
    f = fit.fits[("synthseg+", S)]
    settings = PenaltySettings(12, -1, 0.05)
    checked = 0
    with threadpool_limits(1, user_api="blas"):  # tiny solves: BLAS threads only add overhead
        sols = []
        for b in range(20):
            w = counts[b, d.subject_index]
            gram, xty = (d.design * w[:, None]).T @ d.design, (d.design * w[:, None]).T @ d.volumes[:, 0]
            sols.append(solve_penalised(gram, xty, w.sum(), f.scale, settings))
    for b, sol in enumerate(sols):
        checked += sol.n_iter > 0
        np.testing.assert_allclose(boot.coefs[("synthseg+", S)][b], sol.coef, rtol=1e-6,
                                   atol=1e-6 * np.abs(sol.coef).max())
    assert checked > 5  # most replicates needed the penalty


def test_bootstrap_is_reproducible_and_resamples_subjects():
    planted = SimulatedAgeingData(n_subjects=60, methods=("synthseg+", "synthseg"))
    fit = _fit(planted, 13, AgeingSpec(structures=(S,)))
    a = fit.bootstrap(10, np.random.default_rng(7)).coefs[("synthseg", S)]
    b = fit.bootstrap(10, np.random.default_rng(7)).coefs[("synthseg", S)]
    np.testing.assert_array_equal(a, b)
    counts = subject_counts(60, 10, np.random.default_rng(7))
    assert counts.shape == (10, 60) and (counts.sum(axis=1) == 60).all()
    diff = fit.bootstrap(50, np.random.default_rng(1)).trajectories()
    diff = diff[diff["quantity"] == "difference"]
    assert (diff["method"] == "synthseg").all() and (diff["reference_method"] == "synthseg+").all()
    assert (diff["lower"] <= diff["estimate"] + 1e-9).mean() > 0.9
    assert (diff["upper"] >= diff["estimate"] - 1e-9).mean() > 0.9
