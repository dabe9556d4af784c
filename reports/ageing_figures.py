"""Figures of the ageing analysis (the paper's Fig. 6, S5 and S6), drawn from the output tables.

Inputs are the ``trajectories.parquet`` and ``adjusted_volumes.parquet`` tables of
``morpho fit-ageing`` (or the same frames from
:class:`morphometry.analysis.ageing_model.AgeingFit`), so a report can redraw them from a results
folder. Scatter: covariate-adjusted volumes (trajectory +
residual); lines: trajectories at the reference spacing, sexes averaged; shading: pointwise
bootstrap bands; outliers (|residual| > 3 robust SD) drawn as crosses and counted per panel
(the scan count N is in the title). A known truth (the planted curves of a simulated cohort,
columns structure, age_years, volume_mm3) can be overlaid as a dashed black line.
"""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from morphometry.methods import method_order
from morphometry.reports.style import RC_PARAMS, method_colour, save_figure

PAGE_WIDTH_IN = 7.2


def _new_figure(width_in: float, height_in: float) -> Figure:
    """A figure on the Agg canvas (no pyplot, no display needed)."""
    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _label(structure: str) -> str:
    return structure.replace("_", " ")


def _volume_axis_label(units: str) -> str:
    return "Volume (mm$^3$)" if units == "mm^3" else f"Volume ({units})"


def _format_axes(ax, units: str, ylabel: bool, xlabel: bool) -> None:
    fmt = ScalarFormatter(useMathText=True)
    fmt.set_powerlimits((-2, 4))
    ax.yaxis.set_major_formatter(fmt)
    ax.grid(alpha=0.25, linewidth=0.5)
    if ylabel:
        ax.set_ylabel(_volume_axis_label(units))
    if xlabel:
        ax.set_xlabel("Age (years)")


def _limits(values: np.ndarray) -> tuple[float, float]:
    lo, hi = np.nanquantile(values, [0.001, 0.999])
    pad = 0.08 * (hi - lo if hi > lo else abs(hi) or 1.0)
    return lo - pad, hi + pad


def _draw_panel(ax, traj: pd.DataFrame, points: pd.DataFrame, method: str, scatter: bool) -> None:
    colour = method_colour(method)
    if scatter and not points.empty:
        inlier = ~points["outlier"].to_numpy()
        ax.scatter(points["age_years"][inlier], points["adjusted_volume"][inlier], s=2, alpha=0.25,
                   color=colour, linewidths=0, rasterized=True)
        ax.scatter(points["age_years"][~inlier], points["adjusted_volume"][~inlier], s=8, marker="x",
                   color="0.25", linewidths=0.6, rasterized=True)
    if traj["lower"].notna().any():
        ax.fill_between(traj["age_years"], traj["lower"], traj["upper"], color=colour, alpha=0.3, linewidth=0)
    ax.plot(traj["age_years"], traj["estimate"], color="black" if scatter else colour, linewidth=1.2)


PLANTED_STYLE = {"color": "black", "linestyle": (0, (3, 2)), "linewidth": 1.1}


def _draw_planted(ax, planted: pd.DataFrame | None, structure: str, ages: pd.Series) -> None:
    """The known curve of ``structure`` over the trajectory's age range, if one is given."""
    if planted is None or ages.empty:
        return
    part = planted[(planted["structure"] == structure) & planted["age_years"].between(ages.min(), ages.max())]
    if not part.empty:
        ax.plot(part["age_years"], part["volume_mm3"], label="planted truth", **PLANTED_STYLE)


def trajectory_figure(trajectories: pd.DataFrame, adjusted: pd.DataFrame, structures, methods=None,
                      title: str | None = None, planted: pd.DataFrame | None = None) -> Figure:
    """Fig. 6 / S6 layout: one row per structure, one column per method (scatter + trajectory),
    and a last column overlaying all methods' trajectories with their bands; ``planted`` curves
    (mm^3) are drawn dashed in every panel."""
    traj = trajectories[trajectories["quantity"] == "trajectory"]
    methods = method_order(methods or traj["method"].unique())
    units = traj["units"].iloc[0]
    ncols = len(methods) + (len(methods) > 1)
    with matplotlib.rc_context(RC_PARAMS):
        fig = _new_figure(PAGE_WIDTH_IN, 1.9 * len(structures) + 0.5)
        axes = np.atleast_2d(fig.subplots(len(structures), ncols, sharex=True, squeeze=False))
        for r, s in enumerate(structures):
            pts_s = adjusted[adjusted["structure"] == s]
            limits = _limits(pts_s["adjusted_volume"].to_numpy()) if not pts_s.empty else None
            for c, m in enumerate(methods):
                ax = axes[r, c]
                pts = pts_s[pts_s["method"] == m]
                _draw_panel(ax, traj[(traj["structure"] == s) & (traj["method"] == m)], pts, m, True)
                _draw_planted(ax, planted, s, traj["age_years"])
                counts = f"{int(pts['outlier'].sum())} outliers"
                ax.set_title(f"{m}\n{counts}" if r == 0 else counts, fontsize=8)
                if limits:
                    ax.set_ylim(*limits)
                _format_axes(ax, units, c == 0, r == len(structures) - 1)
            if ncols > len(methods):
                ax = axes[r, -1]
                for m in methods:
                    _draw_panel(ax, traj[(traj["structure"] == s) & (traj["method"] == m)], pts_s.iloc[:0], m, False)
                _draw_planted(ax, planted, s, traj["age_years"])
                if r == 0:
                    ax.set_title("all methods", fontsize=8)
                if limits:  # the same range as the scatter panels, not the bands' extremes
                    ax.set_ylim(*limits)
                _format_axes(ax, units, False, r == len(structures) - 1)
            axes[r, 0].annotate(_label(s), xy=(0, 0.5), xycoords="axes fraction", xytext=(-48, 0),
                                textcoords="offset points", rotation=90, ha="center", va="center",
                                fontweight="bold")
        drawn = [line for ax in axes.flat for line in ax.get_lines() if line.get_label() == "planted truth"]
        if drawn:
            fig.legend(drawn[:1], ["planted truth"], loc="outside lower center", frameon=False)
        if title:
            fig.suptitle(title)
    return fig


def structure_grid_figure(trajectories: pd.DataFrame, adjusted: pd.DataFrame, method: str,
                          structures=None, ncols: int = 4, title: str | None = None) -> Figure:
    """Fig. S5 layout: every structure for one method, scatter + trajectory + band."""
    traj = trajectories[(trajectories["quantity"] == "trajectory") & (trajectories["method"] == method)]
    structures = list(structures or dict.fromkeys(traj["structure"]))
    units = traj["units"].iloc[0]
    nrows = math.ceil(len(structures) / ncols)
    with matplotlib.rc_context(RC_PARAMS):
        fig = _new_figure(PAGE_WIDTH_IN, 1.7 * nrows + 0.4)
        axes = fig.subplots(nrows, ncols, sharex=True, squeeze=False)
        for i, s in enumerate(structures):
            ax = axes[i // ncols, i % ncols]
            pts = adjusted[(adjusted["structure"] == s) & (adjusted["method"] == method)]
            _draw_panel(ax, traj[traj["structure"] == s], pts, method, True)
            if not pts.empty:
                ax.set_ylim(*_limits(pts["adjusted_volume"].to_numpy()))
            ax.set_title(_label(s), fontsize=8)
            bottom = i + ncols >= len(structures)  # nothing drawn below this panel
            _format_axes(ax, units, i % ncols == 0, bottom)
            ax.xaxis.set_tick_params(labelbottom=bottom)
        for j in range(len(structures), nrows * ncols):
            axes[j // ncols, j % ncols].set_visible(False)
        fig.suptitle(title or f"Volume trajectories, {method}")
    return fig


def write_ageing_figures(out_dir, trajectories: pd.DataFrame, adjusted: pd.DataFrame, *,
                         structures, s5_method: str, subset_label: str | None = None) -> list:
    """Write Fig. 6 (or S6 when ``subset_label`` names a subset) and the S5 grid as PNG + PDF."""
    from pathlib import Path

    out_dir = Path(out_dir)
    n = adjusted[["method", "scan_id"]].drop_duplicates().groupby("method").size().max()
    paths = []
    with matplotlib.rc_context(RC_PARAMS):
        if subset_label:
            fig = trajectory_figure(trajectories, adjusted, structures, title=f"{subset_label} (N = {n} scans)")
            paths += save_figure(fig, out_dir / "fig_s6_trajectories")
        else:
            fig = trajectory_figure(trajectories, adjusted, structures, title=f"Volume trajectories (N = {n} scans)")
            paths += save_figure(fig, out_dir / "fig6_trajectories")
        suffix = f", {subset_label}" if subset_label else ""
        fig = structure_grid_figure(trajectories, adjusted, s5_method,
                                    title=f"Volume trajectories, {s5_method}{suffix}")
        paths += save_figure(fig, out_dir / f"fig_s5_{s5_method.replace('+', 'plus')}")
    return paths
