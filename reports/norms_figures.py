"""Charts of the normative model, drawn from its output tables.

- Centile charts: curves (2.5 ... 97.5, the median bold) per structure (rows) and sex (columns)
  at the reference spacing and the average site, with bootstrap bands shaded when present
  (``centiles.csv`` of ``morpho norms fit``), and scans drawn over them (their harmonised volume;
  ``scores`` of ``morpho norms score``), likely gross errors as crosses.
- Profiles: one subject's z-scores across structures (``scores``), with the flag thresholds.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.special import ndtri

from morphometry.reports.style import RC_PARAMS, method_colour, save_figure

PAGE_WIDTH_IN = 7.2
SEX_NAMES = {"F": "female", "M": "male"}


def _figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _safe(name: str) -> str:
    return name.replace("+", "plus").replace("/", "_")


def centile_figure(curves: pd.DataFrame, method: str, structures=None, scores: pd.DataFrame | None = None,
                   title: str | None = None) -> Figure:
    """Centile curves of ``method``: one row per structure, one column per sex."""
    part = curves[curves["method"] == method]
    structures = list(structures or dict.fromkeys(part["structure"]))
    sexes = [s for s in ("F", "M") if s in set(part["sex"])]
    colour = method_colour(method)
    with matplotlib.rc_context(RC_PARAMS):
        fig = _figure(PAGE_WIDTH_IN, 1.9 * len(structures) + 0.6)
        axes = fig.subplots(len(structures), len(sexes), sharex=True, squeeze=False)
        for r, structure in enumerate(structures):
            for c, sex in enumerate(sexes):
                ax = axes[r, c]
                panel = part[(part["structure"] == structure) & (part["sex"] == sex)]
                if scores is not None:
                    pts = scores[(scores["method"] == method) & (scores["structure"] == structure)
                                 & (scores["sex"] == sex)]
                    bad = pts["flag_outlier"].to_numpy(dtype=bool)
                    ax.scatter(pts["age"][~bad], pts["harmonised_volume"][~bad], s=3, alpha=0.35, color="0.35",
                               linewidths=0, rasterized=True)
                    ax.scatter(pts["age"][bad], pts["harmonised_volume"][bad], s=10, marker="x", color="black",
                               linewidths=0.6, rasterized=True)
                for q, curve in panel.groupby("centile"):
                    curve = curve.sort_values("age_years")
                    if curve["lower"].notna().any():
                        ax.fill_between(curve["age_years"], curve["lower"], curve["upper"], color=colour, alpha=0.2,
                                        linewidth=0)
                    ax.plot(curve["age_years"], curve["volume_mm3"], color=colour,
                            linewidth=1.6 if q == 50 else 0.8, linestyle="-" if 10 <= q <= 90 else "--")
                    ax.annotate(f"{q:g}", xy=(curve["age_years"].iloc[-1], curve["volume_mm3"].iloc[-1]),
                                xytext=(2, 0), textcoords="offset points", fontsize=6, va="center")
                if len(panel):
                    lo, hi = panel["volume_mm3"].min(), panel["volume_mm3"].max()
                    pad = 0.25 * (hi - lo or abs(hi) or 1.0)
                    ax.set_ylim(lo - pad, hi + pad)
                ax.grid(alpha=0.25, linewidth=0.5)
                if r == 0:
                    ax.set_title(SEX_NAMES.get(sex, sex), fontsize=9)
                if c == 0:
                    ax.set_ylabel(f"{structure.replace('_', ' ')}\n(mm$^3$)")
                if r == len(structures) - 1:
                    ax.set_xlabel("Age (years)")
        fig.suptitle(title or f"Normative centiles, {method}")
    return fig


def profile_figure(scores: pd.DataFrame, subject_id: str, method: str, flag_centiles=(2.5, 97.5)) -> Figure:
    """z-scores of one subject's scans across structures (one marker per scan)."""
    part = scores[(scores["subject_id"] == subject_id) & (scores["method"] == method)]
    structures = list(dict.fromkeys(part["structure"]))
    low, high = (float(ndtri(q / 100.0)) for q in flag_centiles)
    with matplotlib.rc_context(RC_PARAMS):
        fig = _figure(4.8, 0.22 * len(structures) + 1.0)
        ax = fig.subplots()
        ax.axvspan(low, high, color="0.92", linewidth=0)
        ax.axvline(0.0, color="0.5", linewidth=0.6)
        y = {s: i for i, s in enumerate(structures)}
        for _, row in part.iterrows():
            colour = "black" if row["flag_outlier"] else ("#d62728" if row["flag_low"] or row["flag_high"]
                                                          else method_colour(method))
            ax.plot(np.clip(row["z"], -6, 6), y[row["structure"]], marker="x" if row["flag_outlier"] else "o",
                    color=colour, markersize=4, linestyle="none")
        ax.set_yticks(range(len(structures)), [s.replace("_", " ") for s in structures], fontsize=7)
        ax.set_ylim(len(structures) - 0.5, -0.5)
        ax.set_xlim(-6.2, 6.2)
        ax.set_xlabel("z-score (grey: within the flag centiles; x: gross error)", fontsize=7)
        ax.set_title(f"{subject_id}, {method}", fontsize=9)
    return fig


def write_centile_figures(out_dir, curves: pd.DataFrame, scores: pd.DataFrame | None = None, structures=None,
                          max_structures: int = 6) -> list:
    """One centile chart per method (at most ``max_structures`` structures, the first fitted
    unless ``structures`` names them) as PNG + PDF; returns the paths."""
    paths = []
    for method in dict.fromkeys(curves["method"]):
        chosen = list(structures or list(dict.fromkeys(curves["structure"]))[:max_structures])
        fig = centile_figure(curves, method, chosen, scores)
        paths += save_figure(fig, Path(out_dir) / f"norms_centiles_{_safe(method)}")
    return paths


def profile_subjects(subjects: pd.DataFrame, limit: int) -> pd.DataFrame:
    """The ``limit`` (subject, method) rows with the most flags, then the largest mean |z|."""
    flags = subjects["n_flag_low"] + subjects["n_flag_high"] + subjects["n_flag_outlier"]
    return subjects.assign(_flags=flags).sort_values(["_flags", "mean_abs_z"], ascending=False).head(limit)


def write_profile_figures(out_dir, scores: pd.DataFrame, subjects: pd.DataFrame, limit: int = 6) -> list:
    """z profiles of the most flagged subjects as PNG + PDF; returns the paths."""
    paths = []
    for row in profile_subjects(subjects, limit).itertuples():
        fig = profile_figure(scores, row.subject_id, row.method)
        paths += save_figure(fig, Path(out_dir) / f"norms_profile_{_safe(str(row.subject_id))}_{_safe(row.method)}")
    return paths


def profile_grid(scores: pd.DataFrame, subjects: pd.DataFrame, limit: int = 4) -> Figure:
    """Profiles of up to ``limit`` most flagged subjects side by side (for the report)."""
    chosen = profile_subjects(subjects, limit)
    structures = list(dict.fromkeys(scores["structure"]))
    ncols = max(len(chosen), 1)
    with matplotlib.rc_context(RC_PARAMS):
        fig = _figure(PAGE_WIDTH_IN, 0.22 * len(structures) + 1.2)
        axes = fig.subplots(1, ncols, sharey=True, squeeze=False)[0]
        for ax, row in zip(axes, chosen.itertuples()):
            part = scores[(scores["subject_id"] == row.subject_id) & (scores["method"] == row.method)]
            ax.axvspan(-1.96, 1.96, color="0.92", linewidth=0)
            ax.axvline(0.0, color="0.5", linewidth=0.6)
            pos = part["structure"].map({s: i for i, s in enumerate(structures)})
            flagged = (part["flag_low"] | part["flag_high"]).to_numpy()
            gross = part["flag_outlier"].to_numpy(dtype=bool)
            z = np.clip(part["z"].to_numpy(), -6, 6)
            ax.plot(z[~flagged & ~gross], pos[~flagged & ~gross], "o", color=method_colour(row.method), markersize=3)
            ax.plot(z[flagged & ~gross], pos[flagged & ~gross], "o", color="#d62728", markersize=3)
            ax.plot(z[gross], pos[gross], "x", color="black", markersize=4)
            ax.set_xlim(-6.2, 6.2)
            ax.set_title(f"{row.subject_id}\n{row.method}", fontsize=7)
            ax.set_xlabel("z")
        axes[0].set_yticks(range(len(structures)), [s.replace("_", " ") for s in structures], fontsize=6)
        axes[0].set_ylim(len(structures) - 0.5, -0.5)
        for ax in axes[len(chosen):]:
            ax.set_visible(False)
        fig.suptitle("Per-subject z profiles (most flagged subjects)", fontsize=9)
    return fig
