"""Fig. 5 of the paper: box plots of Dice and MSD per method within each QC group.

Each box holds one value per scan: the scan's mean over structures (the ``scans`` table of
:func:`morphometry.analysis.evaluation.evaluate`). Boxes are drawn with seaborn in the project's
method colours.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from morphometry.analysis.qc_groups import group_order
from morphometry.methods import method_order
from morphometry.reports.style import RC_PARAMS, method_colour, save_figure

GROUP_TITLES = {"big_fail": "Big fails", "small_fail": "Small fails", "pass": "Passes", "all": "All scans"}
PANELS = (("mean_dice", "Dice"), ("mean_msd_mm", "MSD (mm)"))


def fig5_boxplots(scans: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Draw Dice (top row) and MSD (bottom row) per method, one column per QC group.

    ``scans`` has columns scan_id, method, qc_group, mean_dice, mean_msd_mm. Writes ``stem.png``
    and ``stem.pdf`` and returns their paths.
    """
    import matplotlib
    import seaborn as sns
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    groups = group_order(scans["qc_group"])
    methods = method_order(scans["method"])
    palette = {m: method_colour(m) for m in methods}
    with matplotlib.rc_context(RC_PARAMS):
        fig = Figure(figsize=(2.2 * len(groups) + 1.0, 4.6))
        axes = fig.subplots(len(PANELS), len(groups), squeeze=False, sharey="row")
        for col, group in enumerate(groups):
            in_group = scans[scans["qc_group"] == group]
            for row, (column, label) in enumerate(PANELS):
                ax = axes[row, col]
                shown = in_group.dropna(subset=[column])
                if len(shown):
                    with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib's deprecated ``vert``
                        warnings.filterwarnings("ignore", message=".*vert.*", category=DeprecationWarning)
                        sns.boxplot(data=shown, x="method", y=column, hue="method", order=methods,
                                    hue_order=methods, palette=palette, legend=False, width=0.7,
                                    linecolor="black", fliersize=2, saturation=1, ax=ax)
                ax.set_xlim(-0.6, len(methods) - 0.4)
                ax.set_xticks([])
                ax.set_xlabel("")
                ax.set_ylabel(label if col == 0 else "")
            axes[0, col].set_title(f"{GROUP_TITLES.get(group, group)} ({in_group['scan_id'].nunique()})")
        fig.legend(handles=[Patch(facecolor=palette[m], edgecolor="black", label=m) for m in methods],
                   loc="lower center", ncol=len(methods), frameon=False, bbox_to_anchor=(0.5, -0.02))
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        return save_figure(fig, stem)
