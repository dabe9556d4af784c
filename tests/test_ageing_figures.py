"""Ageing figures: panels, units on the axes, one colour per method, PNG + PDF files."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

from morphometry.analysis.ageing_model import AgeingModel, AgeingSpec
from morphometry.analysis.ageing_simulation import SimulatedAgeingData, simulate_ageing_table
from morphometry.reports.ageing_figures import structure_grid_figure, trajectory_figure, write_ageing_figures
from morphometry.reports.style import method_colour


@pytest.fixture(scope="module")
def tables():
    planted = SimulatedAgeingData(n_subjects=60, structures=("left_hippocampus", "right_hippocampus", "csf"),
                            methods=("synthseg", "synthseg+"))
    fit = AgeingModel(AgeingSpec(structures=("hippocampus", "csf"))).fit(
        simulate_ageing_table(planted, np.random.default_rng(0)))
    boot = fit.bootstrap(10, np.random.default_rng(1))
    return boot.trajectories(), fit.residuals()


def test_trajectory_figure_layout_and_units(tables):
    traj, adjusted = tables
    fig = trajectory_figure(traj, adjusted, ["hippocampus", "csf"])
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2 * 3  # 2 structures x (2 methods + overlay)
    assert axes[0].get_title().startswith("synthseg+")  # the paper's method order
    assert axes[0].get_ylabel() == "Volume (mm$^3$)"
    assert axes[-1].get_xlabel() == "Age (years)"
    line_colours = {to_hex(line.get_color()) for line in axes[2].get_lines()}
    assert line_colours == {method_colour("synthseg+"), method_colour("synthseg")}


def test_planted_curves_drawn_dashed_in_every_panel_of_their_structure(tables):
    traj, adjusted = tables
    ages = np.arange(0.0, 120.0, 0.5)  # wider than the fit: clipped to the trajectories' ages
    planted = pd.DataFrame({"structure": "hippocampus", "age_years": ages, "volume_mm3": 8000.0 - 10 * ages})
    fig = trajectory_figure(traj, adjusted, ["hippocampus", "csf"], planted=planted)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    for i, ax in enumerate(axes):
        dashed = [line for line in ax.get_lines() if line.get_label() == "planted truth"]
        assert len(dashed) == (1 if i < 3 else 0)  # the hippocampus row only
        if dashed:
            x, y = dashed[0].get_data()
            assert x.min() >= traj["age_years"].min() and x.max() <= traj["age_years"].max()
            np.testing.assert_allclose(y, 8000.0 - 10 * np.asarray(x))
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["planted truth"]


def test_structure_grid_hides_unused_panels(tables):
    traj, adjusted = tables
    fig = structure_grid_figure(traj, adjusted, "synthseg", ncols=3)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["hippocampus", "csf"]
    assert all(ax.get_xlabel() == "Age (years)" for ax in visible)


def test_fraction_units_label(tables):
    traj, adjusted = tables
    fig = structure_grid_figure(traj.assign(units="fraction of TIV"), adjusted, "synthseg")
    assert fig.axes[0].get_ylabel() == "Volume (fraction of TIV)"


def test_write_figures_png_and_pdf(tables, tmp_path):
    traj, adjusted = tables
    paths = write_ageing_figures(tmp_path, traj, adjusted, structures=["hippocampus"], s5_method="synthseg+",
                                 subset_label="subset: slice_spacing_mm > 6.5")
    names = sorted(p.name for p in paths)
    assert names == ["fig_s5_synthsegplus.pdf", "fig_s5_synthsegplus.png",
                     "fig_s6_trajectories.pdf", "fig_s6_trajectories.png"]
    assert all(p.stat().st_size > 5_000 for p in paths)
