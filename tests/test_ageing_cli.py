"""``morpho fit-ageing`` end to end on a synthetic volumes table and covariates CSV."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest

from morphometry.analysis.ageing_simulation import SimulatedAgeingData, simulate_ageing_table
from morphometry.cli import fit_ageing as ageing_cli
from morphometry.errors import InputError
from morphometry.labels import STRUCTURES, TOTAL_INTRACRANIAL
from morphometry.tables import REQUIRED_COLUMNS


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ageing")
    planted = SimulatedAgeingData(n_subjects=80, structures=(TOTAL_INTRACRANIAL, *STRUCTURES),
                            methods=("synthseg+", "synthseg"))
    table = simulate_ageing_table(planted, np.random.default_rng(0))
    table = table.assign(path=table["scan_id"] + ".nii.gz", model_id="test", shape_x=256, shape_y=256, shape_z=40)
    volumes = table[list(REQUIRED_COLUMNS)]
    volumes.to_parquet(folder / "volumes.parquet")
    covariates = table.loc[table["method"] == "synthseg+", ["scan_id", "age", "sex"]]
    covariates.assign(sex=covariates["sex"].map({"M": "male", "F": "female"})).to_csv(folder / "cov.csv", index=False)
    return folder


def _run(*argv) -> int:
    parser = argparse.ArgumentParser()
    ageing_cli.register(parser.add_subparsers())
    args = parser.parse_args(["fit-ageing", *map(str, argv)])
    return args.func(args)


def test_fit_ageing_writes_tables_and_figures(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    rc = _run(inputs / "volumes.parquet", "--covariates", inputs / "cov.csv", "-o", out,
              "--structures", "hippocampus", "cerebral_cortex", "total_intracranial",
              "--bootstrap", "20", "--seed", "3", "--direction", "total_intracranial=none")
    assert rc == 0
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 3 * 2
    assert set(summary["method"]) == {"synthseg+", "synthseg"}
    assert summary.set_index(["method", "structure"]).loc[("synthseg", "total_intracranial"), "direction"] == "none"
    assert {"residual_sd", "r2", "peak_age_years", "annual_pct_change_at_50", "n_outliers",
            "annual_pct_change_at_50_ci_low"} <= set(summary.columns)
    coef = pd.read_csv(out / "coefficients.csv")
    assert len(coef) == 6 * 16 and coef["bootstrap_ci_low"].notna().all()
    traj = pd.read_parquet(out / "trajectories.parquet")
    assert set(traj["quantity"]) == {"trajectory", "difference"}
    diff = traj[traj["quantity"] == "difference"]
    assert (diff["reference_method"] == "synthseg+").all() and diff["lower"].notna().all()
    assert np.diff(traj["age_years"].unique()).max() == pytest.approx(1.0)
    outliers = pd.read_csv(out / "outliers.csv")
    assert len(outliers) == summary["n_outliers"].sum()
    meta = json.loads((out / "ageing.json").read_text())
    assert meta["seed"] == 3 and meta["n_basis"] == 12 and len(meta["knots_years"]) == 10
    for stem in ("fig6_trajectories", "fig_s5_synthsegplus"):
        for ext in ("png", "pdf"):
            assert (out / "figures" / f"{stem}.{ext}").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "outliers" in printed and "hippocampus" in printed


def test_where_subset_makes_the_s6_figure(inputs, tmp_path):
    out = tmp_path / "s6"
    _run(inputs / "volumes.parquet", "--covariates", inputs / "cov.csv", "-o", out,
         "--structures", "hippocampus", "--where", "slice_spacing_mm > 3", "--bootstrap", "0",
         "--knots", "6", "--methods", "synthseg+")
    assert (out / "figures" / "fig_s6_trajectories.png").exists()
    summary = pd.read_csv(out / "summary.csv")
    volumes = pd.read_parquet(inputs / "volumes.parquet")
    expected = ((volumes["slice_spacing_mm"] > 3) & (volumes["method"] == "synthseg+")).sum()
    assert summary["n_scans"].iloc[0] == expected
    assert summary["n_bootstrap"].iloc[0] == 0


def test_fraction_of_tiv_default_structures_without_figures(inputs, tmp_path):
    out = tmp_path / "frac"
    _run(inputs / "volumes.parquet", "--covariates", inputs / "cov.csv", "-o", out,
         "--units", "fraction-tiv", "--bootstrap", "0", "--no-figures", "--methods", "synthseg+")
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 14 + 4 and (summary["units"] == "fraction of TIV").all()
    assert not (out / "figures").exists()


def test_covariate_problems_name_the_file(inputs, tmp_path):
    cov = pd.read_csv(inputs / "cov.csv")
    cov.drop(columns="sex").to_csv(tmp_path / "nosex.csv", index=False)
    with pytest.raises(InputError, match=r"nosex.csv: missing columns: sex"):
        _run(inputs / "volumes.parquet", "--covariates", tmp_path / "nosex.csv", "-o", tmp_path / "o")
    cov.iloc[5:].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(InputError, match=r"short.csv: no covariates for 10 scans"):
        _run(inputs / "volumes.parquet", "--covariates", tmp_path / "short.csv", "-o", tmp_path / "o")
    with pytest.raises(InputError, match=r"missing.csv: file not found"):
        _run(inputs / "volumes.parquet", "--covariates", tmp_path / "missing.csv", "-o", tmp_path / "o")
    with pytest.raises(InputError, match=r"--figure-structures: putamen not fitted"):
        _run(inputs / "volumes.parquet", "--covariates", inputs / "cov.csv", "-o", tmp_path / "o",
             "--structures", "hippocampus", "--bootstrap", "0", "--figure-structures", "putamen")


def test_morpho_main_prints_one_line(inputs, tmp_path, capsys):
    from morphometry.cli import main

    rc = main(["fit-ageing", str(inputs / "volumes.parquet"), "--covariates", str(inputs / "cov.csv"),
               "-o", str(tmp_path / "o"), "--methods", "s1+s2"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "method(s) s1+s2 not in the table" in err


def test_random_intercept_option_reports_mixedlm_ses(inputs, tmp_path):
    from morphometry.analysis.ageing_api import fit_ageing

    out = tmp_path / "ri"
    _run(inputs / "volumes.parquet", "--covariates", inputs / "cov.csv", "-o", out, "--structures", "hippocampus",
         "--methods", "synthseg+", "--penalty", "0", "--bootstrap", "0", "--no-figures", "--random-intercept")
    coef = pd.read_csv(out / "coefficients.csv")
    ri = fit_ageing(inputs / "volumes.parquet", inputs / "cov.csv", structures="hippocampus", methods="synthseg+",
                    penalty=0.0, random_intercept=True)
    plain = fit_ageing(inputs / "volumes.parquet", inputs / "cov.csv", structures="hippocampus",
                       methods="synthseg+", penalty=0.0)
    np.testing.assert_allclose(coef["std_error"], ri.coefficients()["std_error"], rtol=1e-9)
    assert not np.allclose(coef["std_error"], plain.coefficients()["std_error"], rtol=1e-3)
    summary = pd.read_csv(out / "summary.csv")
    assert summary["subject_sd"].iloc[0] > 0 and summary["scan_sd"].iloc[0] > 0
    assert json.loads((out / "ageing.json").read_text())["spec"]["random_intercept"] is True


def test_errors_name_the_flag_of_the_setting(inputs, tmp_path, capsys):
    from morphometry.cli import main

    base = ["fit-ageing", str(inputs / "volumes.parquet"), "--covariates", str(inputs / "cov.csv"),
            "-o", str(tmp_path / "o"), "--bootstrap", "0", "--no-figures", "--structures", "hippocampus"]
    cases = [(["--knots", "1"], "--knots: must be at least 2, not 1"),
             (["--structures", "hipocampus"], "--structures: unknown structure 'hipocampus'"),
             (["--direction", "hippocampus=down"], "--direction: 'down' for hippocampus is not one of"),
             (["--reference-spacing", "1", "1"], "--reference-spacing: needs 3 values"),
             (["--age-column", "age_years"], "--age-column: "),
             (["--where", "slice_spacing_mm >"], "--where: 'slice_spacing_mm >': cannot evaluate"),
             (["--reference-method", "s1+s2"], "--reference-method: 's1+s2' was not fitted"),
             (["--bootstrap", "1"], "--bootstrap: the bootstrap needs at least 2 replicates, not 1")]
    for extra, expected in cases:
        assert main(base + extra) == 2  # a repeated option: the last one counts
        err = capsys.readouterr().err
        assert expected in err, (extra, err)


def test_bootstrap_reports_progress_in_replicates(inputs, tmp_path, capsys):
    from morphometry.cli import main

    rc = main(["fit-ageing", str(inputs / "volumes.parquet"), "--covariates", str(inputs / "cov.csv"),
               "-o", str(tmp_path / "o"), "--structures", "hippocampus", "--bootstrap", "40", "--no-figures"])
    assert rc == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bootstrap")]
    assert lines and "replicate" in lines[-1]
    assert "80/80 replicate (100 %)" in lines[-1]  # 2 methods x 40 replicates
    rc = main(["-q", "fit-ageing", str(inputs / "volumes.parquet"), "--covariates", str(inputs / "cov.csv"),
               "-o", str(tmp_path / "q"), "--structures", "hippocampus", "--bootstrap", "40", "--no-figures"])
    assert rc == 0 and "bootstrap" not in capsys.readouterr().err
