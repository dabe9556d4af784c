"""Paired method comparisons: Wilcoxon signed-rank tests against a brute-force enumeration of sign
flips, corrected p-values against Holm and Bonferroni by hand."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata

from morphometry.analysis.method_comparisons import (
    ComparisonConfig,
    adjust,
    compare_methods,
    method_pairs,
    signed_rank_test,
)
from morphometry.errors import DataError, InputError


def brute_force_wilcoxon(d) -> tuple[float, float]:
    """(min(W+, W-), two-sided p) from all 2^n sign flips of the ranks of |d| (zeros dropped, ties
    given average ranks): p = P(|W+ - E W+| >= |w - E W+|) under the flips."""
    d = np.asarray([v for v in d if v != 0], dtype=float)
    ranks = rankdata(np.abs(d))
    w_plus = ranks[d > 0].sum()
    centre = ranks.sum() / 2
    flips = np.array([ranks[np.array(signs, dtype=bool)].sum()
                      for signs in itertools.product((0, 1), repeat=len(d))])
    p = np.mean(np.abs(flips - centre) >= abs(w_plus - centre) - 1e-9)
    return min(w_plus, ranks.sum() - w_plus), float(p)


@pytest.mark.parametrize("differences,test", [
    ([0.30, -0.10, 0.45, 0.20, 0.05, 0.70, -0.25, 0.60], "exact"),        # no ties: exact distribution
    ([0.2, -0.2, 0.5, 0.3, 0.3, -0.1, 0.0, 0.4, 0.0], "permutation"),     # ties and zeros: all sign flips
    ([0.1, 0.2, 0.3], "exact"),                                          # every sign positive
])
def test_signed_rank_test_matches_the_enumeration_of_sign_flips(differences, test):
    statistic, p_value, used, n = signed_rank_test(differences)
    expected_statistic, expected_p = brute_force_wilcoxon(differences)
    assert used == test and n == sum(d != 0 for d in differences)
    assert statistic == pytest.approx(expected_statistic)
    assert p_value == pytest.approx(expected_p)


def test_signed_rank_test_of_large_samples_and_of_no_difference():
    rng = np.random.default_rng(0)
    statistic, p_value, test, n = signed_rank_test(rng.normal(0.3, 1.0, 80))
    assert test == "normal" and n == 80 and 0 <= p_value <= 1
    assert signed_rank_test([0.0, 1e-14, -1e-13])[2:] == ("none", 0)  # rounding to 1e-12: all ties at 0
    assert np.isnan(signed_rank_test([0.0, 0.0])[1])


def test_holm_and_bonferroni_by_hand():
    # Holm: sorted p 0.01, 0.03, 0.04, 0.2 times 4, 3, 2, 1 = 0.04, 0.09, 0.08, 0.2; running maximum
    p = [0.01, np.nan, 0.04, 0.03, 0.2]
    assert np.allclose(adjust(p, "holm"), [0.04, np.nan, 0.09, 0.09, 0.2], equal_nan=True)
    assert np.allclose(adjust(p, "bonferroni"), [0.04, np.nan, 0.16, 0.12, 0.8], equal_nan=True)
    assert np.isnan(adjust([np.nan, np.nan])).all()


def test_method_pairs():
    methods = ["synthseg", "mytool", "synthseg+", "s1+s2"]
    assert method_pairs(methods) == [("s1+s2", "synthseg+"), ("synthseg", "synthseg+"), ("mytool", "synthseg+")]
    assert method_pairs(["synthseg", "s1+s2"]) == [("synthseg", "s1+s2")]
    assert method_pairs(methods[:2], "all") == [("mytool", "synthseg")]
    assert method_pairs(methods, "mytool")[0] == ("synthseg+", "mytool")
    with pytest.raises(DataError, match="^compare_to: method s1\\+s2\\+d was not evaluated"):
        method_pairs(methods, "s1+s2+d")
    with pytest.raises(InputError, match="^correction: "):
        ComparisonConfig(correction="holmes")


def holm_by_hand(p) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    order = np.argsort(p)
    scaled = np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order])
    out = np.empty_like(p)
    out[order] = np.minimum(scaled, 1.0)
    return out


@pytest.fixture
def values() -> pd.DataFrame:
    """Dice and MSD of 3 methods on 12 scans in two QC groups, one structure and the mean."""
    rng = np.random.default_rng(4)
    rows = []
    for i in range(12):
        group = "pass" if i < 7 else "big_fail"
        for method, shift in (("synthseg+", 0.0), ("synthseg", -0.04), ("s1+s2", 0.01)):
            for structure in ("mean_over_structures", "left_hippocampus"):
                dice = 0.8 + shift + rng.normal(0, 0.03)
                msd = np.nan if (i, method, structure) == (3, "synthseg", "left_hippocampus") else 1 - dice
                rows.append({"scan_id": f"s{i}", "method": method, "qc_group": group, "structure": structure,
                             "dice": dice, "msd_mm": msd})
    return pd.DataFrame(rows)


def test_compare_methods_against_direct_computations(values):
    table = compare_methods(values)
    assert len(table) == 2 * 2 * 2 * 2  # pairs x groups x structures x metrics
    assert list(table[["method", "qc_group", "structure", "metric"]].iloc[0]) == [
        "s1+s2", "big_fail", "mean_over_structures", "dice"]
    assert set(table["compared_to"]) == {"synthseg+"}
    for row in table.itertuples():
        part = values[(values["qc_group"] == row.qc_group) & (values["structure"] == row.structure)]
        wide = part.pivot(index="scan_id", columns="method", values=row.metric).dropna(
            subset=[row.method, row.compared_to])
        d = (wide[row.method] - wide[row.compared_to]).to_numpy()
        statistic, p_value = brute_force_wilcoxon(np.round(d, 12))
        assert row.n_scans == len(d) and row.median_difference == pytest.approx(np.median(d))
        assert row.statistic == pytest.approx(statistic) and row.p_value == pytest.approx(p_value)
    missing = table[(table["method"] == "synthseg") & (table["qc_group"] == "pass")
                    & (table["structure"] == "left_hippocampus")].set_index("metric")
    assert missing.loc["dice", "n_scans"] == 7 and missing.loc["msd_mm", "n_scans"] == 6
    for metric, rows in table.groupby("metric"):
        assert np.allclose(rows["p_adjusted"], holm_by_hand(rows["p_value"]))
    bonferroni = compare_methods(values, ComparisonConfig(compare_to="all", correction="bonferroni"))
    assert len(bonferroni) == 3 * 8 and ("synthseg", "s1+s2") in set(zip(bonferroni["method"],
                                                                          bonferroni["compared_to"]))
    for metric, rows in bonferroni.groupby("metric"):
        assert np.allclose(rows["p_adjusted"], np.minimum(1.0, rows["p_value"] * len(rows)))
