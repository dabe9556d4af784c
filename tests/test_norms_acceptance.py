"""Acceptance checks of the norms model (issue 20) on data with a planted location, scale (growing
with age) and skewness: coverage of fresh scans per age decile, with and without 3 % gross
outliers; bootstrap bands holding the planted curves; site harmonisation.

Coverage tolerance: the issue asks 1.5 percentage points at every age decile (30 cells: 10
deciles x 3 centiles) at n = 5,000. That is below the fit's own sampling error at that size: over
10 training seeds the default model meets it in 3, and the planted family itself (cubic location
and log-scale, no penalty) in 4; the worst cell is 1.5-2.7 points off. At n = 20,000 the worst
cell is 0.7-1.6 points off (5 seeds). So the cells are held to 2 points at n = 20,000 and
3 points at n = 5,000, and the mean over cells to 0.75 and 1 point.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from morphometry.analysis.norms_api import fit_norms, score_norms
from morphometry.analysis.norms_simulation import SimulatedNorms, simulate_norms_table

pytestmark = pytest.mark.slow

PLANTED = SimulatedNorms(epsilon=0.4, sd_growth=1.0)
STRUCTURE = "left_hippocampus"


@pytest.fixture(scope="module")
def fresh():
    """200,000 fresh scans of the planted model (no outliers)."""
    return simulate_norms_table(PLANTED, np.random.default_rng(1000), n_scans=200_000)


def decile_coverage(model, fresh) -> np.ndarray:
    """Per age decile (rows) and centile 5, 50, 95 (columns): % of fresh scans below the fitted curve."""
    lo, hi = model.design.basis.age_min, model.design.basis.age_max
    inside = fresh[fresh["age"].between(lo, hi)]
    scores = score_norms(inside, model).scores
    decile = np.minimum(((scores["age"] - lo) / (hi - lo) * 10).astype(int), 9).to_numpy()
    centile = scores["centile"].to_numpy()
    return np.array([[100.0 * np.mean(centile[decile == d] < q) for q in (5, 50, 95)] for d in range(10)])


@pytest.mark.parametrize("n_scans,outliers,per_decile,mean", [
    (20_000, 0.0, 2.0, 0.75), (20_000, 0.03, 2.0, 0.75), (5_000, 0.0, 3.0, 1.0), (5_000, 0.03, 3.0, 1.0)])
def test_fresh_scans_fall_below_the_fitted_centiles_as_often_as_planted(fresh, n_scans, outliers, per_decile, mean):
    train = simulate_norms_table(replace(PLANTED, outliers=outliers), np.random.default_rng(7), n_scans=n_scans)
    model = fit_norms(train, structures=(STRUCTURE,), progress=False)
    error = np.abs(decile_coverage(model, fresh) - np.array([5.0, 50.0, 95.0]))
    assert error.max() <= per_decile and error.mean() <= mean, np.round(error, 2)
    if outliers:  # the gross errors are the ones taken as outliers
        flagged = set(model.fit_outliers["scan_id"])
        planted = set(train.loc[train["planted_outlier"], "scan_id"])
        assert len(flagged & planted) >= 0.9 * len(planted) and len(flagged - planted) <= 0.1 * len(planted)


def test_bootstrap_bands_hold_the_planted_curves():
    """Bands from 40 subject-bootstrap replicates of a fit with 3 % gross outliers at n = 5,000."""
    train = simulate_norms_table(replace(PLANTED, outliers=0.03), np.random.default_rng(8), n_scans=5_000)
    model = fit_norms(train, structures=(STRUCTURE,), bootstrap=40, seed=3, progress=False)
    curves = model.curves()
    curves = curves[curves["centile"].isin([10.0, 50.0, 90.0])]
    truth = PLANTED.centile(curves["centile"].to_numpy(), curves["age_years"].to_numpy(),
                            (curves["sex"] == "M").to_numpy(dtype=float))
    lower, upper, estimate = (curves[c].to_numpy() for c in ("lower", "upper", "volume_mm3"))
    assert (upper > lower).all()
    # Simultaneous 95 % bands per curve (6 curves: 3 centiles x 2 sexes): the planted curves lie
    # inside at nearly every age, and nowhere far outside.
    assert ((lower <= truth) & (truth <= upper)).mean() >= 0.9
    assert (np.abs(truth - estimate) <= 1.5 * (upper - lower) / 2).all()


@pytest.fixture(scope="module")
def four_sites():
    planted = replace(PLANTED, site_offsets=(-400.0, 0.0, 300.0, 700.0))
    table = simulate_norms_table(planted, np.random.default_rng(9), n_scans=20_000)
    site = table["site"].str.removeprefix("site").astype(int).to_numpy() - 1
    offsets = np.asarray(planted.site_offsets) - np.mean(planted.site_offsets)
    oracle = table.assign(**{STRUCTURE: table[STRUCTURE] - offsets[site]})  # site effects removed exactly
    reference = fit_norms(oracle, structures=(STRUCTURE,), progress=False)
    unharmonised = fit_norms(table, structures=(STRUCTURE,), progress=False)
    return table, offsets, reference, unharmonised


def _age_effect(model) -> float:
    """Change of the median (sexes averaged) from 30 to 80 years (mm^3)."""
    med = model.centiles([30.0, 80.0], centiles=(50,)).groupby("age_years")["volume_mm3"].mean()
    return float(med[80.0] - med[30.0])


def _site_spread(model, table) -> float:
    """Range over sites of the median z-score of the site's scans."""
    scores = score_norms(table, model).scores.drop(columns="site").merge(table[["scan_id", "site"]], on="scan_id")
    medians = scores.groupby("site")["z"].median()
    return float(medians.max() - medians.min())


@pytest.mark.parametrize("harmonise", ["fixed", "combat"])
def test_site_harmonisation_removes_offsets_and_keeps_the_age_effect(four_sites, harmonise):
    if harmonise == "combat":
        pytest.importorskip("neuroHarmonize", reason="ComBat needs neuroHarmonize (README)")
    table, offsets, reference, unharmonised = four_sites
    model = fit_norms(table, structures=(STRUCTURE,), site="site", harmonise=harmonise, progress=False)
    effects = model.site_effects().set_index("site")["offset_mm3"]
    recovered = effects.loc[[f"site{k + 1}" for k in range(4)]].to_numpy()
    recovered = recovered - recovered.mean()  # ComBat's are relative to the scan-weighted mean
    assert np.abs(recovered - offsets).max() < 0.1 * np.abs(offsets).max()
    planted_spread, residual_spread = _site_spread(unharmonised, table), _site_spread(model, table)
    assert planted_spread > 1.0  # the planted offsets show in the unharmonised scores
    assert residual_spread < 0.1 * planted_spread
    assert _age_effect(model) == pytest.approx(_age_effect(reference), rel=0.02)
