"""Cohort description (the paper's Fig. S3): ages by sex, and the scans' resolution."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from morphometry.reports.style import RC_PARAMS

SEX_COLOURS = {"female": "#c44e52", "male": "#4c72b0", "unknown": "#8c8c8c"}


def _sex_labels(values: pd.Series) -> pd.Series:
    text = values.astype(str).str.strip().str.lower()
    return text.map({"f": "female", "female": "female", "0": "female", "m": "male", "male": "male",
                     "1": "male"}).fillna("unknown")


def cohort_figure(scans: pd.DataFrame) -> Figure:
    """Age histogram by sex (when ``age`` is known) and slice spacing per acquisition axis.

    ``scans``: one row per scan with ``slice_spacing_mm`` and ``slice_axis``, optionally ``age``
    (years) and ``sex``.
    """
    has_age = "age" in scans.columns and scans["age"].notna().any()
    with matplotlib.rc_context(RC_PARAMS):
        fig = Figure(figsize=(7.0 if has_age else 3.6, 2.8))
        axes = fig.subplots(1, 2 if has_age else 1, squeeze=False)[0]
        if has_age:
            ax = axes[0]
            ages = pd.to_numeric(scans["age"], errors="coerce")
            sexes = _sex_labels(scans["sex"]) if "sex" in scans.columns else pd.Series("unknown", index=scans.index)
            bins = np.arange(np.floor(ages.min() / 5) * 5, np.ceil(ages.max() / 5) * 5 + 5, 5)
            groups = [s for s in ("female", "male", "unknown") if (sexes == s).any()]
            ax.hist([ages[sexes == s].dropna() for s in groups], bins=bins, stacked=True,
                    color=[SEX_COLOURS[s] for s in groups], label=groups, edgecolor="white", linewidth=0.4)
            ax.set_xlabel("age (years)")
            ax.set_ylabel("scans")
            ax.legend(frameon=False)
            ax.set_title("Age and sex")
        ax = axes[-1]
        spacing = pd.to_numeric(scans["slice_spacing_mm"], errors="coerce")
        bins = np.arange(0.5, max(10.0, float(spacing.max()) + 1.0), 0.5)
        axis_names = [a for a in ("axial", "coronal", "sagittal") if (scans["slice_axis"] == a).any()]
        palette = {"axial": "#4c72b0", "coronal": "#55a868", "sagittal": "#dd8452"}
        ax.hist([spacing[scans["slice_axis"] == a] for a in axis_names], bins=bins, stacked=True,
                color=[palette[a] for a in axis_names], label=axis_names, edgecolor="white", linewidth=0.4)
        ax.set_xlabel("slice spacing (mm)")
        ax.set_ylabel("scans")
        ax.legend(title="slice axis", frameon=False)
        ax.set_title("Resolution")
        fig.tight_layout()
    return fig
