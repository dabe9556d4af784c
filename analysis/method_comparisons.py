"""Paired comparisons of segmentation methods on the same scans (the statistics behind Fig. 5).

For a pair of methods (``method`` against ``compared_to``), a QC group, a structure (or the
per-scan mean over structures) and a metric (Dice or MSD), the sample is the paired difference
``method - compared_to`` over the scans both methods were evaluated on with a finite value
(MSD is NaN for a structure missing in a map; such scans drop out of the MSD test). Positive Dice
differences and negative MSD differences favour ``method``.

* **Test**: Wilcoxon signed-rank, two-sided (:func:`scipy.stats.wilcoxon`). Differences are rounded
  to 1e-12 (so that equal differences tie) and zero differences are dropped (Wilcoxon's
  convention). With no ties among the absolute differences and at most 50 of them, the p-value
  comes from the exact null distribution (``exact``); with ties and at most 13 differences, from all
  2^n sign flips (``permutation``); otherwise from the normal approximation with the tie-corrected
  variance (``normal``). The statistic is ``min(W+, W-)``, the smaller signed-rank sum.
* **Multiple comparisons**: the p-values of one metric, over every method pair, QC group and
  structure of the table, form one family, corrected with
  :func:`statsmodels.stats.multitest.multipletests` (Holm by default).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from morphometry.analysis.qc_groups import group_order
from morphometry.errors import DataError, InputError
from morphometry.methods import method_order

METRICS = ("dice", "msd_mm")
CORRECTIONS = ("holm", "bonferroni", "holm-sidak", "sidak", "simes-hochberg", "hommel", "fdr_bh", "fdr_by")
"""Corrections of :func:`statsmodels.stats.multitest.multipletests` offered (family-wise error rate
or, for ``fdr_*``, false discovery rate)."""

COLUMNS = ("method", "compared_to", "qc_group", "structure", "metric", "n_scans", "n_nonzero",
           "method_median", "compared_to_median", "median_difference", "statistic", "p_value", "p_adjusted",
           "test")
EXACT_MAX_N = 50
PERMUTATION_MAX_N = 13


@dataclass(frozen=True)
class ComparisonConfig:
    """Which method pairs are compared, and how p-values are corrected.

    ``compare_to``: ``auto`` (every method against ``synthseg+`` when it was evaluated, else every
    pair), ``all`` (every pair; the method listed first in the paper's order is ``compared_to``),
    or a method name (every other method against it). ``correction``: one of :data:`CORRECTIONS`.
    """

    compare_to: str = "auto"
    correction: str = "holm"

    def __post_init__(self):
        if self.correction not in CORRECTIONS:
            raise InputError(f"must be one of {', '.join(CORRECTIONS)}, not {self.correction!r}", setting="correction")


def method_pairs(methods, compare_to: str = "auto") -> list[tuple[str, str]]:
    """(method, compared_to) pairs for the methods present (see :class:`ComparisonConfig`)."""
    ordered = method_order(methods)
    if compare_to == "auto":
        compare_to = "synthseg+" if "synthseg+" in ordered else "all"
    if compare_to == "all":
        return [(b, a) for i, a in enumerate(ordered) for b in ordered[i + 1:]]
    if compare_to not in ordered:
        raise DataError(f"method {compare_to} was not evaluated (found: {', '.join(ordered)})", setting="compare_to")
    return [(m, compare_to) for m in ordered if m != compare_to]


def signed_rank_test(differences) -> tuple[float, float, str, int]:
    """(statistic min(W+, W-), two-sided p-value, test used, number of non-zero differences) of
    paired differences; NaN statistic and p-value, test ``none``, without a non-zero difference."""
    d = np.round(np.asarray(differences, dtype=np.float64), 12)
    d = d[d != 0]
    n = len(d)
    if n == 0:
        return float("nan"), float("nan"), "none", 0
    ties = len(np.unique(np.abs(d))) < n
    if not ties and n <= EXACT_MAX_N:
        test, method = "exact", "exact"
    elif ties and n <= PERMUTATION_MAX_N:
        test, method = "permutation", stats.PermutationMethod(n_resamples=2**n)
    else:
        test, method = "normal", "asymptotic"
    result = stats.wilcoxon(d, method=method)
    return float(result.statistic), float(result.pvalue), test, n


def adjust(p_values, correction: str = "holm") -> np.ndarray:
    """Corrected p-values of one family; NaN entries (no test) stay NaN and are not counted."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    tested = np.isfinite(p)
    if tested.any():
        out[tested] = multipletests(p[tested], method=correction)[1]
    return out


def compare_methods(values: pd.DataFrame, config: ComparisonConfig = ComparisonConfig()) -> pd.DataFrame:
    """Paired comparisons (one row per method pair x QC group x structure x metric; see the module).

    ``values``: one row per scan x method x structure with columns scan_id, method, qc_group,
    structure and the :data:`METRICS` columns. Rows follow the method pairs, the QC groups in the
    paper's order, the structures in their order in ``values``, then the metrics.
    """
    pairs = method_pairs(values["method"].unique(), config.compare_to)
    wide = {key: part.pivot(index="scan_id", columns="method", values=list(METRICS))
            for key, part in values.groupby(["qc_group", "structure"], sort=False)}
    keys = [(group, structure) for group in group_order(values["qc_group"])
            for structure in dict.fromkeys(values["structure"]) if (group, structure) in wide]
    rows = []
    for method, compared_to in pairs:
        for group, structure in keys:
            table = wide[(group, structure)]
            for metric in METRICS:
                if method in table[metric] and compared_to in table[metric]:
                    row = _row(table[metric][method], table[metric][compared_to])
                    if row is not None:
                        rows.append({"method": method, "compared_to": compared_to, "qc_group": group,
                                     "structure": structure, "metric": metric, **row})
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    for metric in METRICS:
        of_metric = table["metric"] == metric
        table.loc[of_metric, "p_adjusted"] = adjust(table.loc[of_metric, "p_value"], config.correction)
    return table


def _row(x: pd.Series, y: pd.Series) -> dict | None:
    """Statistics of the scans with a value for both methods; None when there is none."""
    both = x.notna() & y.notna()
    if not both.any():
        return None
    x, y = x[both].to_numpy(float), y[both].to_numpy(float)
    statistic, p_value, test, n_nonzero = signed_rank_test(x - y)
    return {"n_scans": len(x), "n_nonzero": n_nonzero, "method_median": float(np.median(x)),
            "compared_to_median": float(np.median(y)), "median_difference": float(np.median(x - y)),
            "statistic": statistic, "p_value": p_value, "p_adjusted": np.nan, "test": test}
