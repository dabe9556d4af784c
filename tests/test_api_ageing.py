"""``fit_ageing``, the Python API of ``morpho fit-ageing``: DataFrames or files, partial tables,
TSV, no ``method`` / ``scan_id`` / ``subject_id`` columns, the bootstrap attached to the fit."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from morphometry.analysis.ageing_api import SINGLE_METHOD, fit_ageing
from morphometry.analysis.ageing_model import AgeingModel, AgeingSpec
from morphometry.analysis.ageing_outputs import OUTPUT_FILES
from morphometry.analysis.ageing_simulation import SimulatedAgeingData, simulate_ageing_table
from morphometry.cli import main
from morphometry.errors import InputError
from morphometry.tables import read_table

S = "left_hippocampus"


@pytest.fixture(scope="module")
def one_structure() -> pd.DataFrame:
    """One structure column, covariates in the same table, no method column."""
    table = simulate_ageing_table(SimulatedAgeingData(n_subjects=90), np.random.default_rng(0))
    return table[["scan_id", "subject_id", "spacing_x_mm", "spacing_y_mm", "spacing_z_mm", "age", "sex", S]]


@pytest.fixture(scope="module")
def two_methods() -> pd.DataFrame:
    """Two methods, left and right hippocampus only (a partial volumes table) with covariates."""
    return simulate_ageing_table(SimulatedAgeingData(n_subjects=70, structures=(S, "right_hippocampus"),
                                                     methods=("synthseg+", "synthseg")), np.random.default_rng(1))


def test_dataframe_without_method_column_matches_the_cli_files(one_structure, tmp_path, capsys):
    fit = fit_ageing(one_structure, structures=S, bootstrap=50, seed=3, progress=False)
    assert fit.methods == (SINGLE_METHOD,) and fit.bootstrap_result.n_replicates == 50
    assert fit.bootstrap_result.seed == 3
    one_structure.to_csv(tmp_path / "volumes.csv", index=False)
    out = tmp_path / "cli"
    assert main(["fit-ageing", str(tmp_path / "volumes.csv"), "-o", str(out), "--structures", S,
                 "--bootstrap", "50", "--seed", "3", "--no-figures"]) == 0
    assert "fitted 1 structures x 1 methods on 90 subjects" in capsys.readouterr().out
    coef = pd.read_csv(out / "coefficients.csv")
    api = fit.coefficients()
    assert list(coef.columns) == list(api.columns) and (coef["method"] == SINGLE_METHOD).all()
    for column in ("estimate", "std_error", "ci_low", "bootstrap_se", "bootstrap_ci_high"):
        np.testing.assert_allclose(coef[column], api[column], rtol=1e-9)
    traj = pd.read_parquet(out / "trajectories.parquet")
    for column in ("age_years", "estimate", "lower", "upper"):
        np.testing.assert_allclose(traj[column], fit.trajectories()[column], rtol=1e-9)
    # The planted curve: the trajectory estimates it within a few per cent.
    truth = SimulatedAgeingData().truth(traj["age_years"])
    assert np.abs(traj["estimate"] / truth - 1.0).max() < 0.05
    written = fit.write(tmp_path / "api")
    for name in OUTPUT_FILES[:-1]:
        pd.testing.assert_frame_equal(read_table(tmp_path / "api" / name), read_table(out / name))
    meta = json.loads((tmp_path / "api" / "ageing.json").read_text())
    assert meta["inputs"] == {"volumes": "DataFrame", "covariates": None} and meta["seed"] == 3
    assert written["ageing.json"]["n_bootstrap"] == 50


def test_tsv_tables_are_read_as_tab_separated(two_methods, tmp_path):
    volumes = two_methods.drop(columns=["age", "sex"])
    covariates = two_methods.loc[two_methods["method"] == "synthseg", ["scan_id", "age", "sex"]]
    volumes.to_csv(tmp_path / "volumes.tsv", sep="\t", index=False)
    covariates.to_csv(tmp_path / "participants.tsv", sep="\t", index=False)
    from_files = fit_ageing(tmp_path / "volumes.tsv", tmp_path / "participants.tsv", structures="hippocampus",
                            penalty=0.0)
    from_frames = fit_ageing(volumes, covariates, structures=["hippocampus"], penalty=0.0)
    pd.testing.assert_frame_equal(from_files.coefficients(), from_frames.coefficients())
    assert from_files.inputs == {"volumes": str(tmp_path / "volumes.tsv"),
                                 "covariates": str(tmp_path / "participants.tsv")}
    # The same numbers as the model on the joined table.
    direct = AgeingModel(AgeingSpec(structures=("hippocampus",), penalty=0.0)).fit(two_methods)
    np.testing.assert_allclose(from_files.coefficients()["estimate"], direct.coefficients()["estimate"], rtol=1e-10)
    assert main(["-q", "fit-ageing", str(tmp_path / "volumes.tsv"), "--covariates", str(tmp_path / "participants.tsv"),
                 "-o", str(tmp_path / "out"), "--structures", "hippocampus", "--bootstrap", "0", "--no-figures"]) == 0


@pytest.mark.parametrize("name,sep", [("t.txt", "\t"), ("c.txt", ","), ("s.txt", ";"), ("z.tsv.gz", "\t"),
                                      ("z.csv.gz", ",")])
def test_read_table_suffixes(tmp_path, name, sep):
    frame = pd.DataFrame({"scan_id": ["a", "b"], "age": [30.5, 41.0], "sex": ["M", "F"]})
    frame.to_csv(tmp_path / name, sep=sep, index=False)
    pd.testing.assert_frame_equal(read_table(tmp_path / name), frame)


def test_partial_table_through_the_cli(two_methods, tmp_path, capsys):
    volumes = two_methods.drop(columns=["age", "sex"])
    volumes.to_parquet(tmp_path / "volumes.parquet")
    two_methods[["scan_id", "age", "sex"]].drop_duplicates("scan_id").to_csv(tmp_path / "cov.csv", index=False)
    out = tmp_path / "out"
    assert main(["fit-ageing", str(tmp_path / "volumes.parquet"), "--covariates", str(tmp_path / "cov.csv"),
                 "-o", str(out), "--structures", "hippocampus", "left_hippocampus", "--bootstrap", "20"]) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(zip(summary["method"], summary["structure"])) == sorted(
        (m, s) for m in ("synthseg+", "synthseg") for s in ("hippocampus", "left_hippocampus"))
    assert (out / "figures" / "fig_s5_synthsegplus.png").stat().st_size > 10_000
    capsys.readouterr()
    # The default structures need columns this table does not hold: the error says which, and how.
    assert main(["fit-ageing", str(tmp_path / "volumes.parquet"), "--covariates", str(tmp_path / "cov.csv"),
                 "-o", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("morpho fit-ageing: error: --structures: ") and "missing columns: total_intracranial" in err
    assert "not a volumes table" not in err


def test_scan_and_subject_ids_are_optional_for_one_method(one_structure):
    bare = one_structure.drop(columns=["scan_id", "subject_id"])
    fit = fit_ageing(bare, structures=S, penalty=0.0)
    res = fit.residuals()
    assert list(res["scan_id"][:3]) == ["row1", "row2", "row3"]
    f = fit.fits[(SINGLE_METHOD, S)]
    assert f.n_subjects == f.n_scans == len(bare)  # every scan its own subject
    # Same estimates as with the ids; the SEs then ignore that scans share a subject.
    with_ids = fit_ageing(one_structure, structures=S, penalty=0.0)
    np.testing.assert_allclose(fit.coefficients()["estimate"], with_ids.coefficients()["estimate"], rtol=1e-10)
    pred = fit.predict(one_structure.iloc[:5].drop(columns="scan_id"))
    np.testing.assert_allclose(pred[S], res["fitted"][:5], rtol=1e-10)
    with pytest.raises(InputError, match="^random_intercept: needs a subject_id column"):
        fit_ageing(bare, structures=S, random_intercept=True)


def test_several_methods_need_scan_ids(two_methods):
    with pytest.raises(InputError, match="no scan_id column: with several methods"):
        fit_ageing(two_methods.drop(columns="scan_id"), structures="hippocampus")


def test_unknown_and_invalid_settings_are_named(one_structure):
    with pytest.raises(InputError, match=r"^n_knot: not a setting of the ageing model \(did you mean n_knots\?\)"):
        fit_ageing(one_structure, structures=S, n_knot=5)
    with pytest.raises(InputError, match=r"^bootstrap: must be 0 or at least 2, not 1"):
        fit_ageing(one_structure, structures=S, bootstrap=1)
    with pytest.raises(InputError, match=r"^volumes: a DataFrame or a path, not list"):
        fit_ageing([1, 2], structures=S)
    fit = fit_ageing(one_structure, structures=S, directions={S: "none"}, spacing_terms=["spacing_z_mm"])
    assert fit.fits[(SINGLE_METHOD, S)].direction == "none" and fit.terms[-2:] == ("spacing_z_mm", "male")


def test_with_bootstrap_is_the_seeded_bootstrap(one_structure):
    fit = fit_ageing(one_structure, structures=S)
    boot = fit.bootstrap(30, np.random.default_rng(5), progress=False)
    attached = fit.with_bootstrap(30, seed=5, progress=False)
    assert attached.bootstrap_result.seed == 5 and boot.seed is None
    pd.testing.assert_frame_equal(attached.trajectories(), boot.trajectories())
    assert fit.summary()["n_bootstrap"].iloc[0] == 0 and attached.summary()["n_bootstrap"].iloc[0] == 30
    assert "peak_age_years_ci_low" in attached.summary() and "bootstrap_se" in attached.coefficients()
    assert fit.trajectories()["lower"].isna().all()
