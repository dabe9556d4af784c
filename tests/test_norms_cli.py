"""``morpho norms fit`` / ``score``, the written model read back, the report section, and bad inputs."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from morphometry import NormsModel, fit_norms, score_norms
from morphometry.analysis.norms_simulation import SimulatedNorms, simulate_norms_table
from morphometry.cli import main

PLANTED = SimulatedNorms(n_scans=1500, outliers=0.03, site_offsets=(0.0, 300.0, -200.0),
                         structures=("left_hippocampus", "right_hippocampus"))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("norms")
    table = simulate_norms_table(PLANTED, np.random.default_rng(0))
    table.drop(columns=["age", "sex", "site", "planted_outlier"]).to_parquet(root / "volumes.parquet")
    table[["scan_id", "age", "sex", "site"]].to_csv(root / "covariates.csv", index=False)
    return root, table


@pytest.fixture(scope="module")
def fitted(cohort):
    root, _ = cohort
    out = root / "model"
    assert main(["norms", "fit", str(root / "volumes.parquet"), "--covariates", str(root / "covariates.csv"),
                 "-o", str(out), "--site", "site", "--structures", "hippocampus", "left_hippocampus",
                 "--knots", "6", "--bootstrap", "5"]) == 0
    return out


def test_fit_writes_the_model_and_score_reproduces_the_api(cohort, fitted, tmp_path):
    root, table = cohort
    assert sorted(p.name for p in fitted.iterdir()) == ["centiles.csv", "figures", "fit_outliers.csv", "norms.json",
                                                        "site_effects.csv", "summary.csv"]
    assert sorted(p.name for p in (fitted / "figures").iterdir()) == ["norms_centiles_synthsegplus.pdf",
                                                                      "norms_centiles_synthsegplus.png"]
    curves = pd.read_csv(fitted / "centiles.csv")
    assert set(curves["centile"]) == {2.5, 10, 25, 50, 75, 90, 97.5} and set(curves["sex"]) == {"F", "M"}
    assert curves[["lower", "upper"]].notna().all().all()
    # the curves are ordered: a higher centile is a larger volume at every age
    wide = curves.pivot_table(index=["structure", "sex", "age_years"], columns="centile", values="volume_mm3")
    assert (np.diff(wide.to_numpy(), axis=1) > 0).all()
    out = tmp_path / "scores"
    assert main(["norms", "score", str(root / "volumes.parquet"), "--covariates", str(root / "covariates.csv"),
                 "--model", str(fitted), "-o", str(out), "--profiles", "2"]) == 0
    scores = pd.read_parquet(out / "scores.parquet")
    assert len(scores) == 2 * len(table) and len(pd.read_csv(out / "scores.csv")) == len(scores)
    assert len(list((out / "figures").glob("norms_profile_*.png"))) == 2
    # the model read back scores exactly as the fitted object does
    api = fit_norms(table, structures=("hippocampus", "left_hippocampus"), site="site", n_knots=6, progress=False)
    direct = score_norms(table, api).scores
    np.testing.assert_allclose(scores["z"], direct["z"], rtol=1e-6, atol=1e-9)
    # z is the normal deviate of the centile; flags follow the thresholds
    np.testing.assert_allclose(scores["centile"], 100 * stats.norm.cdf(scores["z"]), rtol=1e-9)
    assert (scores["flag_low"] == (scores["centile"] < 2.5)).all()
    # gross errors planted in the table are flagged as such
    left = scores[scores["structure"] == "left_hippocampus"].merge(table[["scan_id", "planted_outlier"]], on="scan_id")
    hit = left.loc[left["planted_outlier"], "flag_outlier"].mean()
    false = left.loc[~left["planted_outlier"], "flag_outlier"].mean()
    assert hit > 0.9 and false < 0.005
    subjects = pd.read_csv(out / "subjects.csv")
    assert len(subjects) == table["subject_id"].nunique()
    assert {"lowest_structure", "lowest_z", "highest_z", "n_flag_outlier"} <= set(subjects.columns)


def test_model_read_back_equals_the_written_one(fitted):
    model = NormsModel.read(fitted)
    again = model.centiles()
    written = pd.read_csv(fitted / "centiles.csv")
    np.testing.assert_allclose(again["volume_mm3"], written["volume_mm3"], rtol=1e-12)
    assert model.sites == ("site1", "site2", "site3") and model.spec.site == "site"
    effects = pd.read_csv(fitted / "site_effects.csv")
    left = effects[effects["structure"] == "left_hippocampus"].set_index("site")["offset_mm3"]
    planted = np.array(PLANTED.site_offsets) - np.mean(PLANTED.site_offsets)
    np.testing.assert_allclose(left.loc[["site1", "site2", "site3"]], planted, atol=60)


def test_report_has_the_norms_section(cohort, fitted, tmp_path):
    root, _ = cohort
    scores = tmp_path / "scores"
    assert main(["norms", "score", str(root / "volumes.parquet"), "--covariates", str(root / "covariates.csv"),
                 "--model", str(fitted), "-o", str(scores), "--profiles", "0"]) == 0
    page = tmp_path / "report.html"
    assert main(["report", "-o", str(page), "--norms", str(fitted), "--norm-scores", str(scores)]) == 0
    text = page.read_text()
    for heading in ("Normative centiles", "Site effects (mm^3)", "Scores", "Provenance"):
        assert f">{heading}<" in text
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', text)) == 2
    assert sorted(p.name for p in (tmp_path / "report_figures").iterdir()) == [
        "norms_centiles_synthsegplus.pdf", "norms_centiles_synthsegplus.png",
        "norms_profiles.pdf", "norms_profiles.png"]


def test_new_scans_outside_the_ages_or_sites_are_flagged_with_a_warning(cohort, fitted, caplog):
    _, table = cohort
    new = table.head(6).copy()
    new.loc[new.index[:2], "age"] = [5.0, 101.0]
    new.loc[new.index[2], "site"] = "elsewhere"
    with caplog.at_level("WARNING", logger="morphometry"):
        scores = score_norms(new, fitted).scores
    first = scores[scores["structure"] == "hippocampus"].set_index("scan_id")
    ids = new["scan_id"].tolist()
    assert first.loc[ids[:2], "age_outside_range"].all() and not first.loc[ids[2:], "age_outside_range"].any()
    assert first.loc[ids[2], "site_unseen"] and first["site_unseen"].sum() == 1
    assert first[["centile", "z"]].notna().all().all()
    assert "outside the fitted ages" in caplog.text and "did not see" in caplog.text


@pytest.mark.parametrize("args,message", [
    (["--site", "scanner"], "--site: {vol} + {cov}: no site column 'scanner'"),
    (["--harmonise", "combat"], "--harmonise: ComBat needs a site column"),
    (["--age-column", "age_years"], "--age-column: {cov}: missing columns: age_years"),
])
def test_bad_fit_inputs_are_one_line_errors(cohort, tmp_path, capsys, args, message):
    root, _ = cohort
    vol, cov = root / "volumes.parquet", root / "covariates.csv"
    code = main(["norms", "fit", str(vol), "--covariates", str(cov), "-o", str(tmp_path / "m"),
                 "--structures", "hippocampus", *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert message.format(vol=vol, cov=cov) in err


def test_score_with_a_folder_that_is_not_a_model(cohort, tmp_path, capsys):
    root, _ = cohort
    code = main(["norms", "score", str(root / "volumes.parquet"), "--covariates", str(root / "covariates.csv"),
                 "--model", str(root), "-o", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and f"--model: {root}: no norms.json (is this a folder written by morpho norms fit?)" in err


def test_scoring_scans_without_the_site_column_the_model_needs(cohort, fitted, tmp_path, capsys):
    root, table = cohort
    cov = tmp_path / "no_site.csv"
    table[["scan_id", "age", "sex"]].to_csv(cov, index=False)
    code = main(["norms", "score", str(root / "volumes.parquet"), "--covariates", str(cov), "--model", str(fitted),
                 "-o", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and "--covariates: " in err and "no site column 'site' (the norms model was fitted with it)" in err
