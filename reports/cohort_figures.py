"""Cohort description (the paper's Fig. S3): ages by sex, and the scans' resolution."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from morphometry.reports.style import RC_PARAMS

SEX_COLOURS = {"female": "#c44e52", "male": "#4c72b0", "unknown": "#8c8c8c"}
AXIS_COLOURS = {"axial": "#4c72b0", "coronal": "#55a868", "sagittal": "#dd8452"}


def _sex_labels(values: pd.Series) -> pd.Series:
    text = values.astype(str).str.strip().str.lower()
    return text.map({"f": "female", "female": "female", "0": "female", "m": "male", "male": "male",
                     "1": "male"}).fillna("unknown")


def cohort_figure(scans: pd.DataFrame) -> Figure:
    """Age histogram by sex (when ``age`` is known) and slice spacing per acquisition axis, both
    stacked histograms (seaborn) with 5-year and 0.5 mm bins.

    ``scans``: one row per scan with ``slice_spacing_mm`` and ``slice_axis``, optionally ``age``
    (years) and ``sex``.
    """
    import seaborn as sns

    has_age = "age" in scans.columns and scans["age"].notna().any()
    with matplotlib.rc_context(RC_PARAMS):
        fig = Figure(figsize=(7.0 if has_age else 3.6, 2.8))
        axes = fig.subplots(1, 2 if has_age else 1, squeeze=False)[0]
        bars = dict(multiple="stack", alpha=1.0, edgecolor="white", linewidth=0.4)
        if has_age:
            ax = axes[0]
            frame = pd.DataFrame({"age": pd.to_numeric(scans["age"], errors="coerce"),
                                  "sex": _sex_labels(scans["sex"]) if "sex" in scans.columns else "unknown"})
            ages = frame["age"]
            bins = np.arange(np.floor(ages.min() / 5) * 5, np.ceil(ages.max() / 5) * 5 + 5, 5)
            groups = [s for s in SEX_COLOURS if (frame["sex"] == s).any()]
            sns.histplot(frame.dropna(), x="age", hue="sex", hue_order=groups, palette=SEX_COLOURS, bins=bins, ax=ax,
                         **bars)
            sns.move_legend(ax, "best", frameon=False, title=None)
            ax.set_xlabel("age (years)")
            ax.set_ylabel("scans")
            ax.set_title("Age and sex")
        ax = axes[-1]
        frame = pd.DataFrame({"spacing": pd.to_numeric(scans["slice_spacing_mm"], errors="coerce"),
                              "slice axis": scans["slice_axis"]})
        bins = np.arange(0.5, max(10.0, float(frame["spacing"].max()) + 1.0), 0.5)
        axis_names = [a for a in AXIS_COLOURS if (frame["slice axis"] == a).any()]
        sns.histplot(frame[frame["slice axis"].isin(axis_names)], x="spacing", hue="slice axis", hue_order=axis_names,
                     palette=AXIS_COLOURS, bins=bins, ax=ax, **bars)
        sns.move_legend(ax, "best", frameon=False)
        ax.set_xlabel("slice spacing (mm)")
        ax.set_ylabel("scans")
        ax.set_title("Resolution")
        fig.tight_layout()
    return fig
