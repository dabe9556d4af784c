"""Fig. 5 of the paper: box plots of Dice and MSD per method within each QC group.

Each box holds one value per scan: the scan's mean over structures (``morphometry.analysis.evaluation.per_scan``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from morphometry.analysis.evaluation import group_order
from morphometry.reports.style import RC_PARAMS, method_colour, method_order, save_figure

GROUP_TITLES = {"big_fail": "Big fails", "small_fail": "Small fails", "pass": "Passes", "all": "All scans"}
PANELS = (("mean_dice", "Dice"), ("mean_msd_mm", "MSD (mm)"))


def fig5_boxplots(scans: pd.DataFrame, stem: str | Path) -> list[Path]:
    """Draw Dice (top row) and MSD (bottom row) per method, one column per QC group.

    ``scans`` has columns scan_id, method, qc_group, mean_dice, mean_msd_mm. Writes ``stem.png``
    and ``stem.pdf`` and returns their paths.
    """
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    groups = group_order(scans["qc_group"])
    methods = method_order(scans["method"])
    with matplotlib.rc_context(RC_PARAMS):
        fig = Figure(figsize=(2.2 * len(groups) + 1.0, 4.6))
        axes = fig.subplots(len(PANELS), len(groups), squeeze=False, sharey="row")
        for col, group in enumerate(groups):
            in_group = scans[scans["qc_group"] == group]
            n = in_group["scan_id"].nunique()
            for row, (column, label) in enumerate(PANELS):
                _boxes(axes[row, col], in_group, methods, column)
                axes[row, col].set_xticks([])
                if col == 0:
                    axes[row, col].set_ylabel(label)
            axes[0, col].set_title(f"{GROUP_TITLES.get(group, group)} ({n})")
        fig.legend(handles=[Patch(facecolor=method_colour(m), edgecolor="black", label=m) for m in methods],
                   loc="lower center", ncol=len(methods), frameon=False, bbox_to_anchor=(0.5, -0.02))
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        return save_figure(fig, stem)


def _boxes(ax, frame: pd.DataFrame, methods: list[str], column: str) -> None:
    values = [frame.loc[frame["method"] == m, column].dropna().to_numpy() for m in methods]
    positions = np.arange(len(methods))
    shown = [i for i, v in enumerate(values) if len(v)]
    if not shown:
        return
    parts = ax.boxplot([values[i] for i in shown], positions=positions[shown], widths=0.7,
                       patch_artist=True, showfliers=True, flierprops={"markersize": 2})
    for patch, i in zip(parts["boxes"], shown):
        patch.set_facecolor(method_colour(methods[i]))
        patch.set_edgecolor("black")
    for median in parts["medians"]:
        median.set_color("black")
    ax.set_xlim(-0.6, len(methods) - 0.4)
