"""The Python API as a notebook user calls it, checked against the command line's files on the
same inputs: segment one scan and a folder, fit ageing on a DataFrame with one structure column
and no method column, evaluate a pair, and write the report from results objects.

The API names are imported from ``morphometry`` itself, as a user does (the lazy exports).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import head_phantom, save

from morphometry import EvaluationResult, Segmenter, evaluate, fit_ageing, merge, report
from morphometry.analysis.ageing_api import SINGLE_METHOD
from morphometry.analysis.ageing_model import AgeingModel, AgeingSpec
from morphometry.analysis.ageing_outputs import OUTPUT_FILES
from morphometry.analysis.ageing_simulation import SimulatedAgeingData, simulate_ageing_table
from morphometry.cli import main
from morphometry.errors import InputError, ModelError
from morphometry.labels import STRUCTURES
from morphometry.progress import configure_logging
from morphometry.segment.batch import Shard
from morphometry.tables import read_table, write_volumes

# --- Segmentation: Segmenter.segment (a file or an in-memory image), segment_many, vs morpho segment ---

METHODS = ("synthseg+", "synthseg")


@pytest.fixture(scope="module")
def cli_out(tiny_bundle, scan_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "out"
    code = main(["segment", str(scan_folder), "-o", str(out), "--models", str(tiny_bundle.root),
                 *[a for m in METHODS for a in ("--method", m)], "--threads", "2", "--posteriors"])
    assert code == 1  # the broken file
    return out


@pytest.fixture(scope="module")
def segmenter(tiny_bundle):
    return Segmenter(tiny_bundle.root, METHODS, threads=2)


@pytest.fixture(scope="module")
def single(tiny_bundle):
    return Segmenter(tiny_bundle, "synthseg", threads=2)  # a loaded Bundle works too


def _cli_row(out, scan_id: str, method: str) -> pd.Series:
    vol = pd.read_parquet(out / "volumes.parquet")
    return vol[(vol.scan_id == scan_id) & (vol.method == method)].iloc[0]


def _assert_same_row(api: pd.Series, cli: pd.Series, skip: tuple[str, ...] = ()) -> None:
    assert list(api.index) == list(cli.index)
    for column in api.index:
        if column in skip:
            continue
        a, b = api[column], cli[column]
        assert (pd.isna(a) and pd.isna(b)) or a == b, (column, a, b)


def _assert_same_image(api: nib.Nifti1Image, path) -> None:
    written = nib.load(str(path))
    assert api.shape == written.shape and api.get_data_dtype() == written.get_data_dtype()
    np.testing.assert_array_equal(np.asarray(api.dataobj), np.asarray(written.dataobj))
    np.testing.assert_allclose(api.affine, written.affine, atol=1e-5)


def test_segment_a_file_gives_the_cli_files(segmenter, cli_out, scan_folder):
    seg = segmenter.segment(scan_folder / "iso15.nii.gz", posteriors=True)
    assert seg.scan_id == "iso15" and set(seg.methods) == set(METHODS)
    for method in METHODS:
        result = seg[method]
        assert np.asarray(result.labels.dataobj).dtype == np.int32
        _assert_same_image(result.labels, cli_out / "seg" / f"iso15_{method}.nii.gz")
        _assert_same_image(result.posteriors, cli_out / "posteriors" / f"iso15_{method}.nii.gz")
        _assert_same_row(result.volumes, _cli_row(cli_out, "iso15", method))
        assert result.volumes["path"] == str(scan_folder / "iso15.nii.gz")
    table = seg.volumes_table()
    assert table.method.tolist() == sorted(METHODS)
    cli = pd.read_parquet(cli_out / "volumes.parquet").query("scan_id == 'iso15'").reset_index(drop=True)
    pd.testing.assert_frame_equal(table.drop(columns="session_id"), cli.drop(columns="session_id"), check_dtype=False)
    with pytest.raises(InputError, match=r"2 methods \(synthseg\+, synthseg\); choose one"):
        seg.labels
    with pytest.raises(KeyError, match="no method 's1'"):
        seg["s1"]


def test_segment_an_image_in_memory(segmenter, single, cli_out, scan_folder):
    src = nib.load(str(scan_folder / "coronal5.nii.gz"))  # 5 mm coronal int16: resampled, not RAS
    image = nib.Nifti1Image(np.asarray(src.dataobj), src.affine)
    assert image.get_filename() is None
    seg = segmenter.segment(image, scan_id="coronal5")
    for method in METHODS:
        _assert_same_image(seg[method].labels, cli_out / "seg" / f"coronal5_{method}.nii.gz")
        _assert_same_row(seg[method].volumes, _cli_row(cli_out, "coronal5", method), skip=("path",))
        assert seg[method].volumes["path"] is None and seg[method].posteriors is None
    # an MGH image in memory: same voxels and geometry, same result
    iso = nib.load(str(scan_folder / "iso15.nii.gz"))
    mgh = single.segment(nib.MGHImage(np.asarray(iso.dataobj), iso.affine))
    assert mgh.scan_id == "image" and mgh.volumes["subject_id"] == "image"
    _assert_same_image(mgh.labels, cli_out / "seg" / "iso15_synthseg.nii.gz")
    _assert_same_row(mgh.volumes, _cli_row(cli_out, "iso15", "synthseg"), skip=("path", "scan_id", "subject_id"))


def test_one_method_results_directly_on_the_segmentation(single, cli_out, scan_folder):
    seg = single.segment(str(scan_folder / "sub" / "las1.nii"))
    _assert_same_image(seg.labels, cli_out / "seg" / "las1_synthseg.nii.gz")
    _assert_same_row(seg.volumes, _cli_row(cli_out, "las1", "synthseg"))
    assert seg.posteriors is None and seg.warnings == ()
    assert len(seg.volumes_table()) == 1


def test_a_4d_series_uses_its_first_volume_with_a_warning(single):
    rng = np.random.default_rng(2)
    first = head_phantom((30, 34, 28), rng)
    series = nib.Nifti1Image(np.stack([first, first[::-1]], axis=-1), np.diag([1.2, 1.2, 1.2, 1.0]))
    seg = single.segment(series, scan_id="series")
    assert seg.warnings == ("4-D image with 2 volumes: using the first",)
    plain = single.segment(nib.Nifti1Image(first, np.diag([1.2, 1.2, 1.2, 1.0])))
    np.testing.assert_array_equal(np.asarray(seg.labels.dataobj), np.asarray(plain.labels.dataobj))
    assert seg.volumes["scan_id"] == "series" and seg.volumes["subject_id"] == "series"


def test_segment_many_gives_the_cli_tables_and_files(segmenter, cli_out, scan_folder, tmp_path):
    out = tmp_path / "api"
    result = segmenter.segment_many(scan_folder, out, progress=False)
    assert (result.total, result.succeeded, result.failed, result.skipped) == (4, 3, 1, 0)
    assert not result.ok and result.out_dir == out
    pd.testing.assert_frame_equal(result.volumes, pd.read_parquet(cli_out / "volumes.parquet"))
    pd.testing.assert_frame_equal(result.failures, pd.read_csv(cli_out / "failures.csv", dtype=str))
    pd.testing.assert_frame_equal(pd.read_csv(out / "volumes.csv"), pd.read_csv(cli_out / "volumes.csv"))
    written = sorted(p.name for p in (out / "seg").iterdir())
    assert written == sorted(p.name for p in (cli_out / "seg").iterdir()) and len(written) == 6
    for name in written:
        np.testing.assert_array_equal(np.asarray(nib.load(str(out / "seg" / name)).dataobj),
                                      np.asarray(nib.load(str(cli_out / "seg" / name)).dataobj))
    prov = json.loads((out / "provenance.json").read_text())
    assert ".segment_many(" in prov["command"] and prov["result"]["succeeded"] == 3
    assert "network:s1" in result.timings and not (out / "posteriors").exists()

    again = segmenter.segment_many([scan_folder], out, progress=False)  # resume=True: only the failed scan
    assert (again.total, again.succeeded, again.failed, again.skipped) == (1, 0, 1, 3)
    pd.testing.assert_frame_equal(again.volumes, result.volumes)
    with pytest.raises(InputError) as refused:
        segmenter.segment_many(scan_folder, out, resume=False)
    assert refused.value.setting == "resume" and str(out) in str(refused.value)


def test_shards_partition_and_merge(single, scan_folder, tmp_path):
    images = [p for p in scan_folder.rglob("*.nii*") if p.name != "broken.nii.gz"]
    outs = [tmp_path / "a", tmp_path / "b"]
    parts = [single.segment_many(images, outs[0], shard="1/2", progress=False),
             single.segment_many(images, outs[1], shard=Shard(2, 2), progress=False)]
    assert sum(p.total for p in parts) == 3 and all(p.ok for p in parts)
    merged = merge(outs, tmp_path / "merged")
    assert sorted(merged.volumes.scan_id.unique()) == ["coronal5", "iso15", "las1"] and merged.failures.empty
    assert len(merged.volumes) == 3 and not merged.volumes.duplicated(["scan_id", "method"]).any()
    with pytest.raises(InputError, match="no segment results found"):
        merge([tmp_path / "merged"], tmp_path / "m2")


def test_bad_scans_name_the_file(segmenter, tmp_path):
    with pytest.raises(InputError, match=r"nope\.nii\.gz: file not found"):
        segmenter.segment(tmp_path / "nope.nii.gz")
    flat = nib.Nifti1Image(np.ones((40, 40), np.float32), np.eye(4))
    with pytest.raises(InputError, match=r"^image: 2-D image, a 3-D volume is required \(shape \(40, 40\)\)"):
        segmenter.segment(flat)
    with pytest.raises(InputError, match=r"^flat: 2-D image"):
        segmenter.segment(flat, scan_id="flat")
    with pytest.raises(InputError, match="expected a nibabel image .* got ndarray"):
        segmenter.segment(np.zeros((40, 40, 40), np.float32))
    with pytest.raises(InputError, match="is a folder") as folder:
        segmenter.segment(tmp_path)
    assert folder.value.setting == "image"
    constant = tmp_path / "constant.nii.gz"
    save(constant, np.full((30, 30, 30), 7, np.float32), np.eye(4))
    with pytest.raises(InputError, match=r"constant\.nii\.gz: image is constant \(7\)"):
        segmenter.segment(constant)


@pytest.mark.parametrize("kwargs, setting, message", [
    ({"methods": ("synthseg++",)}, "methods", r"unknown method\(s\) synthseg\+\+ \(choose from synthseg\+, "),
    ({"methods": ()}, "methods", "at least one method"),
    ({"device": "gpu"}, "device", "'gpu': choose auto, cpu, cuda"),
    ({"threads": -1}, "threads", "whole number >= 0"),
    ({"workers": 0}, "workers", "whole number >= 1"),
    ({"models": 3}, "models", "expected 'starter', a bundle folder or a Bundle"),
])
def test_bad_settings_name_the_setting(tiny_bundle, kwargs, setting, message):
    with pytest.raises(InputError, match=message) as error:
        Segmenter(**{"models": tiny_bundle.root, **kwargs})
    assert error.value.setting == setting and str(error.value).startswith(f"{setting}: ")


def test_bundle_problems_name_the_setting(tiny_bundle, tmp_path):
    from morphometry.segment.random_bundle import random_bundle

    with pytest.raises(ModelError, match="no bundle.json") as missing:
        Segmenter(tmp_path)
    assert missing.value.setting == "models"
    partial = random_bundle(tmp_path / "partial", features=2, roles=("synthseg",))
    with pytest.raises(ModelError, match="method synthseg\\+ needs network\\(s\\) d, s1, s2") as lacking:
        Segmenter(partial.root)
    assert lacking.value.setting == "methods"
    with pytest.raises(ModelError, match="parcellation needs network\\(s\\) parc") as parc:
        Segmenter(tiny_bundle.root, parc=True)
    assert parc.value.setting == "parc"
    with open(partial.root / "synthseg.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelError, match="does not match its sha256") as tampered:
        Segmenter(partial.root, "synthseg")
    assert tampered.value.setting == "models"


def test_shard_settings():
    assert Shard.parse("2/5") == Shard(2, 5)
    for text in ("3/2", "0/4", "x", "1/2/3"):
        with pytest.raises(InputError) as error:
            Shard.parse(text)
        assert error.value.setting == "shard"


# --- Ageing: fit_ageing on DataFrames or files, partial tables, TSV, against morpho fit-ageing -------

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


# --- Evaluation: evaluate on a pair and on folders, against morpho evaluate; analytic values ---------

def ball_map(shift_mm: float) -> np.ndarray:
    """Left (17) and right (53) hippocampus-like balls on a 1 mm 32^3 grid, shifted along x."""
    x, y, z = np.meshgrid(*[np.arange(32.0)] * 3, indexing="ij")
    data = np.zeros((32, 32, 32), dtype=np.int32)
    data[(x - 10 - shift_mm) ** 2 + (y - 16) ** 2 + (z - 16) ** 2 <= 36] = 17
    data[(x - 22 - shift_mm) ** 2 + (y - 16) ** 2 + (z - 16) ** 2 <= 36] = 53
    return data


def save_labels(path: Path, data: np.ndarray, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.fixture
def study(tmp_path):
    """References s1..s4; predictions by synthseg+ (exact) and synthseg (shifted by 0..3 mm)."""
    for i, shift in enumerate((0.0, 1.0, 2.0, 3.0), start=1):
        save_labels(tmp_path / "ref" / f"s{i}.nii.gz", ball_map(0.0))
        save_labels(tmp_path / "seg" / f"s{i}_synthseg+.nii.gz", ball_map(0.0))
        save_labels(tmp_path / "seg" / f"s{i}_synthseg.nii.gz", ball_map(shift))
    return tmp_path


def test_the_api_writes_what_the_cli_writes(study):
    assert main(["evaluate", "--pred", str(study / "seg"), "--reference", str(study / "ref"),
                 "-o", str(study / "cli"), "--no-figures"]) == 0
    result = evaluate(study / "seg", study / "ref", progress=False)
    assert isinstance(result, EvaluationResult) and result.ok
    for name in ("metrics", "scans", "summary", "comparisons"):
        pd.testing.assert_frame_equal(getattr(result, name), pd.read_parquet(study / "cli" / f"{name}.parquet"))
    result.write(study / "api")
    files = sorted(p.name for p in (study / "cli").iterdir())
    assert files == sorted(p.name for p in (study / "api").iterdir())
    for name in files:
        if name.endswith(".csv"):
            assert (study / "api" / name).read_text() == (study / "cli" / name).read_text()
    # synthseg against synthseg+ (the default reference method), per-scan mean Dice
    row = result.comparisons.set_index(["metric", "structure"]).loc[("dice", "mean_over_structures")]
    dice = result.scans.pivot(index="scan_id", columns="method", values="mean_dice")
    assert (row["method"], row["compared_to"], row["n_scans"]) == ("synthseg", "synthseg+", 4)
    assert row["median_difference"] == pytest.approx(np.median(dice["synthseg"] - dice["synthseg+"]))


def test_one_pair_from_files_and_from_images(study):
    pred, ref = study / "seg" / "s3_synthseg.nii.gz", study / "ref" / "s3.nii.gz"
    from_files = evaluate(pred, ref, progress=False)
    batch = evaluate(study / "seg", study / "ref", progress=False).metrics
    expected = batch[(batch["scan_id"] == "s3") & (batch["method"] == "synthseg")].reset_index(drop=True)
    pd.testing.assert_frame_equal(from_files.metrics, expected)
    assert from_files.comparisons.empty and from_files.unpaired.empty
    # in memory: the scan_id comes from the reference file's name, the method is "prediction"
    from_image = evaluate(nib.load(str(pred)), str(ref), progress=False).metrics
    assert set(from_image["scan_id"]) == {"s3"} and set(from_image["method"]) == {"prediction"}
    pd.testing.assert_frame_equal(from_image.drop(columns="method"), expected.drop(columns="method"))
    named = evaluate({"s3": nib.load(str(pred))}, {"s3": nib.load(str(ref))}, pred_method="mine", progress=False)
    assert named.metrics[["dice", "msd_mm"]].equals(expected[["dice", "msd_mm"]])
    assert set(named.metrics["method"]) == {"mine"}


def test_lists_dicts_and_dataframes(study):
    preds = sorted((study / "seg").glob("*_synthseg.nii.gz"))
    refs = sorted((study / "ref").glob("*.nii.gz"))
    by_list = evaluate(preds, refs, progress=False).metrics
    keyed = {(p.name.split("_")[0], "synthseg"): p for p in preds}
    by_dict = evaluate(keyed, {p.name.split(".")[0]: p for p in refs}, progress=False).metrics
    manifest = pd.DataFrame({"scan_id": [p.name.split("_")[0] for p in preds], "path": preds})
    by_frame = evaluate(manifest, refs, pred_method="synthseg", progress=False).metrics
    pd.testing.assert_frame_equal(by_list, by_dict)
    pd.testing.assert_frame_equal(by_list, by_frame)
    assert sorted(set(by_list["scan_id"])) == ["s1", "s2", "s3", "s4"]
    with pytest.raises(InputError, match="pred_method: .*plain.nii.gz: not named <scan_id>_<method>"):
        evaluate([save_labels(study / "plain.nii.gz", ball_map(0.0))], refs)
    with pytest.raises(InputError, match=r"predictions: in-memory images need names"):
        evaluate([nib.load(str(preds[0]))], refs)


def cube(shape, lo, size) -> np.ndarray:
    data = np.zeros(shape, dtype=np.int16)
    data[lo[0]:lo[0] + size, lo[1]:lo[1] + size, lo[2]:lo[2] + size] = 17
    return data


def test_two_offset_cubes_give_the_analytic_dice_and_msd():
    """8-voxel cubes at 1.5 mm, the prediction shifted by 2 voxels along x.

    Dice = 2 * (6 * 8 * 8) / (2 * 512) = 0.75. Each boundary (the 296-voxel shell) is at the
    following distances (voxels) from the other one: the 64 voxels of the trailing x face at 2, the
    28 of the next ring at 1, the 5 rings of 28 inside the other cube's y/z faces at 0, and on the
    leading x face (inside the other cube) its ring of 28 at 0 and its 6 x 6 interior at
    min(2, distance to the nearest y/z face): 20 at 1, 16 at 2. Mean: (128 + 28 + 20 + 32) / 296
    voxels in both directions; HD95: more than 5 % of the distances are 2 voxels.
    """
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    pred = nib.Nifti1Image(cube((20, 16, 16), (6, 4, 4), 8), affine)
    ref = nib.Nifti1Image(cube((20, 16, 16), (4, 4, 4), 8), affine)
    for msd in ("mean_of_means", "pooled"):
        row = evaluate(pred, ref, msd=msd, progress=False).metrics.iloc[0]
        assert row["structure"] == "left_hippocampus" and row["dice"] == pytest.approx(0.75)
        assert row["msd_mm"] == pytest.approx(1.5 * 208 / 296)
        assert row["mean_pred_to_ref_mm"] == pytest.approx(row["mean_ref_to_pred_mm"])
        assert row["hd95_mm"] == pytest.approx(3.0)


def test_settings_are_named_and_the_cli_shows_their_flags(study, capsys):
    with pytest.raises(InputError, match="^grid: must be one of reference, prediction"):
        evaluate(study / "seg", study / "ref", grid="native")
    with pytest.raises(InputError, match="^correction: must be one of holm"):
        evaluate(study / "seg", study / "ref", correction="holmes")
    with pytest.raises(InputError, match="^qc_from: .*not both"):
        evaluate(study / "seg", study / "ref", qc=study / "qc.csv", qc_from="synthseg")
    args = ["evaluate", "--pred", str(study / "seg"), "--reference", str(study / "ref"), "-o", str(study / "e"),
            "--no-figures"]
    assert main(args + ["--compare-to", "s1+s2"]) == 2
    assert "error: --compare-to: method s1+s2 was not evaluated (found: synthseg+, synthseg)" in capsys.readouterr().err
    assert main(args + ["--labels", "hippo"]) == 2
    assert "error: --labels: unknown structure 'hippo'" in capsys.readouterr().err


def test_progress_lines_when_stderr_is_not_a_terminal(study, capsys):
    configure_logging(0)
    evaluate(study / "seg", study / "ref")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("evaluate: ")]
    assert lines and lines[-1].startswith("evaluate: 8/8 scan (100 %)")
    evaluate(study / "seg", study / "ref", progress=False)
    assert "evaluate: " not in capsys.readouterr().err


# --- The report: report(...) from DataFrames and results objects, against morpho report --------------

FIT = dict(structures=("hippocampus", "lateral_ventricle"), bootstrap=10, seed=3)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Volumes of two methods for 50 scans, their covariates, and a per-scan evaluation table,
    both as DataFrames and as the files the commands write."""
    root = tmp_path_factory.mktemp("api_report")
    rng = np.random.default_rng(8)
    n = 50
    ages = rng.uniform(20, 90, n)
    rows = []
    for method, noise in (("synthseg+", 0.02), ("synthseg", 0.05)):
        for i, age in enumerate(ages):
            spacing = [1.0, 1.0, 1.0]
            spacing[i % 3] = 1.0 + (i * 5 % 7)
            row = {"scan_id": f"s{i:02d}", "subject_id": f"p{i:02d}", "session_id": "ses-1", "path": f"s{i}.nii.gz",
                   "method": method, "model_id": "test", "spacing_x_mm": spacing[0], "spacing_y_mm": spacing[1],
                   "spacing_z_mm": spacing[2], "slice_spacing_mm": max(spacing),
                   "slice_axis": ("sagittal", "coronal", "axial")[i % 3], "shape_x": 200, "shape_y": 200,
                   "shape_z": 60}
            shrink = 1 - 0.004 * max(age - 40, 0)
            for s in STRUCTURES:
                grow = 1 / shrink if "ventricle" in s else shrink
                row[s] = (4000.0 if "hippocampus" in s else 20000.0) * grow * (1 + noise * rng.normal())
            row["total_intracranial"] = sum(row[s] for s in STRUCTURES)
            rows.append(row)
    volumes = pd.DataFrame(rows)
    write_volumes(volumes, root / "seg")
    covariates = pd.DataFrame({"scan_id": [f"s{i:02d}" for i in range(n)], "age": ages,
                               "sex": rng.choice(["F", "M"], n)})
    covariates.to_csv(root / "cov.csv", index=False)
    scans = pd.DataFrame({"scan_id": np.repeat([f"s{i:02d}" for i in range(10)], 2),
                          "method": ["synthseg+", "synthseg"] * 10,
                          "qc_group": np.repeat(["pass", "small_fail"], 10),
                          "mean_dice": rng.uniform(0.5, 0.9, 20), "mean_msd_mm": rng.uniform(0.5, 3, 20)})
    (root / "evaluation").mkdir()
    scans.to_parquet(root / "evaluation" / "scans.parquet")
    return root, volumes, covariates, scans


@dataclass(frozen=True)
class ScansOnly:
    """An evaluation result as the report reads it: a ``scans`` table and ``metadata()``."""

    scans: pd.DataFrame

    def metadata(self) -> dict:
        return {}


@dataclass(frozen=True)
class WritesOnly:
    """A result that can only write its output folder."""

    scans: None
    table: pd.DataFrame

    def write(self, out_dir) -> None:
        out_dir.mkdir(parents=True)
        self.table.to_parquet(out_dir / "scans.parquet")


def _tables(page: str) -> list[str]:
    return re.findall(r"<table.*?</table>", page, flags=re.S)


def _rows(table: str) -> list[str]:
    return re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1], flags=re.S)


def _cells(row: str) -> list[str]:
    return re.findall(r"<td>(.*?)</td>", row)


def _headings(page: str) -> list[str]:
    return re.findall(r"<h[23]>(.*?)</h[23]>", page)


def test_report_from_results_objects_equals_the_cli_on_files(cohort, tmp_path):
    from morphometry.analysis.ageing_api import fit_ageing

    root, volumes, covariates, scans = cohort
    fit = fit_ageing(volumes, covariates, **FIT)
    api = report(tmp_path / "api.html", volumes=volumes, covariates=covariates, ageing=fit,
                 evaluation=ScansOnly(scans), title="study")
    assert api == tmp_path / "api.html"

    assert main(["fit-ageing", str(root / "seg" / "volumes.parquet"), "--covariates", str(root / "cov.csv"),
                 "-o", str(tmp_path / "ageing"), "--structures", *FIT["structures"], "--bootstrap",
                 str(FIT["bootstrap"]), "--seed", str(FIT["seed"]), "--no-figures"]) == 0
    cli = tmp_path / "cli" / "report.html"
    assert main(["report", "-o", str(cli), "--volumes", str(root / "seg" / "volumes.parquet"), "--covariates",
                 str(root / "cov.csv"), "--ageing", str(tmp_path / "ageing"), "--evaluation",
                 str(root / "evaluation"), "--title", "study"]) == 0

    a, b = api.read_text(), cli.read_text()
    assert _headings(a) == _headings(b) == ["Cohort", "Segmentation", "Evaluation against silver standards",
                                            "Ageing trajectories", "Annual % change", "Outliers per method",
                                            "Provenance"]
    assert len(_tables(a)) == 4 and _tables(a) == _tables(b)  # segmentation, evaluation, change, outliers
    names = sorted(p.name for p in (tmp_path / "api_figures").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "cli" / "report_figures").iterdir())
    for name in ("fig6_trajectories.png", "fig_s3_cohort.png", "fig5_dice_msd.png"):  # drawn from equal tables
        cli_figure = tmp_path / "cli" / "report_figures" / name
        assert (tmp_path / "api_figures" / name).read_bytes() == cli_figure.read_bytes()
    assert "DataFrame (100 rows x" in a and "AgeingFit" in a  # the provenance says how inputs were given
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the scratch folder is gone


def test_a_result_is_written_and_read_back_when_it_only_writes(cohort, tmp_path):
    root, volumes, covariates, scans = cohort
    page = report(tmp_path / "r.html", evaluation=WritesOnly(None, scans)).read_text()
    expected = scans.groupby(["qc_group", "method"], sort=False)["mean_dice"].median()
    shown = [float(_cells(row)[3]) for row in _rows(_tables(page)[0])]  # qc_group, method, scans, median_dice
    np.testing.assert_allclose(shown, expected.to_numpy(), rtol=5e-3)  # the table shows 3 significant digits
    assert (tmp_path / "r_figures" / "fig5_dice_msd.png").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_report_of_a_real_evaluation_result(tmp_path):
    from morphometry.analysis.evaluation import evaluate

    truth = np.zeros((20, 20, 20), dtype=np.int32)
    truth[5:15, 5:15, 5:15] = 17  # left hippocampus, a 10-voxel cube
    pred = np.roll(truth, 1, axis=0)  # shifted by one voxel: Dice 9/10
    affine = np.eye(4)
    result = evaluate(nib.Nifti1Image(pred, affine), nib.Nifti1Image(truth, affine), labels=("left_hippocampus",),
                      progress=False)
    page = report(tmp_path / "e.html", evaluation=result).read_text()
    assert ">Evaluation against silver standards<" in page
    (row,) = _rows(_tables(page)[0])
    assert _cells(row)[2:4] == ["1", "0.9"]  # one scan, its Dice


def test_report_api_errors_name_the_argument(cohort, tmp_path):
    root, volumes, covariates, scans = cohort
    with pytest.raises(InputError, match="nothing to report"):
        report(tmp_path / "r.html")
    with pytest.raises(InputError) as err:
        report(tmp_path / "r.html", ageing=42)
    assert err.value.setting == "ageing"
    with pytest.raises(InputError) as err:
        report(tmp_path / "r.html", volumes=volumes.drop(columns=["left_hippocampus"]))
    assert err.value.setting == "volumes" and "left_hippocampus" in str(err.value)
    with pytest.raises(InputError) as err:
        report(tmp_path / "r.html", evaluation=root / "seg")
    assert err.value.setting == "evaluation" and "no scans.parquet" in str(err.value)
    with pytest.raises(InputError) as err:
        report(tmp_path / "r.html", volumes=volumes, planted=pd.DataFrame({"structure": ["x"]}))
    assert err.value.setting == "planted" and "age_years, volume_mm3" in str(err.value)
    with pytest.raises(InputError) as err:
        report(tmp_path / "r.html", volumes=volumes, covariates=tmp_path / "none.csv")
    assert err.value.setting == "covariates" and "file not found" in str(err.value)
