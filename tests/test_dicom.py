"""DICOM input end to end: a nested export of mixed series and junk -> the right scans segmented
(volumes and labels equal to the same volumes given as NIfTI), the right series skipped with
reasons, acquisition columns, covariates for fit-ageing, and no identifier in any output byte."""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import shutil
import zipfile
from datetime import date
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import head_phantom, save
from dicom_fixtures import (
    CT_STORAGE,
    IDENTIFYING,
    PATIENT,
    SECONDARY_CAPTURE,
    study_uids,
    write_multiframe,
    write_series,
)

from morphometry.cli import main
from morphometry.dicom_series import DicomOptions
from morphometry.inputs import survey
from morphometry.labels import STRUCTURES, TOTAL_INTRACRANIAL
from morphometry.segment import journal

AXIAL = np.array([[1.2, 0, 0, -30], [0, 1.2, 0, -40], [0, 0, 5, -20], [0, 0, 0, 1.0]])
SAGITTAL = np.array([[0, 0, -1, 40], [-1, 0, 0, 30], [0, -1, 0, 50], [0, 0, 0, 1.0]])
OBLIQUE = np.array([[1, 0, 0, -20], [0, 0.8, -0.9, -30], [0, 0.6, 1.2, -10], [0, 0, 0, 1.0]])  # 37 deg, 1.5 mm
ISO = np.diag([1.5, 1.5, 1.5, 1.0])
T2 = {"MRAcquisitionType": "2D", "RepetitionTime": "6000", "EchoTime": "100", "InversionTime": None,
      "FlipAngle": "150"}
FLAIR = {"RepetitionTime": "9000", "EchoTime": "120", "InversionTime": "2500", "FlipAngle": "120"}
# the NIfTI twins of the kept series (name -> SeriesDescription), the extra subjects (age, sex)
TWINS = {"axial": "AX T2 TSE", "sagittal": "t1_mprage_sag", "oblique": "obl flair", "enhanced": "enhanced t1",
         "zipped": "sag t1 p2"}
EXTRA = [(42, "M"), (51, "F"), (58, "M"), (71, "F"), (79, "M")]
SKIPPED = {"localiser": "localiser (ImageType LOCALIZER)", "derived": "derived image (ImageType DERIVED/SECONDARY/MPR)",
           "dwi": "diffusion series (4-D, 2 volumes)", "two": "only 2 slice(s): a localiser or a 2-D image",
           "size": "slices disagree in size (rows x columns)", "capture": "secondary capture or screenshot",
           "ct": "CT series (give --ct to segment CT)"}


def _patient(i: int) -> dict:
    return {"PatientName": f"Qwertzu{i}^Brunhilde", "PatientID": f"PIDQX{i}0042", "PatientBirthDate": f"19{20 + i}0707",
            "AccessionNumber": f"ACCQX{i}777", "InstitutionName": f"Xylophon Klinik {i}",
            "InstitutionAddress": f"{i} Quuxstrasse", "ReferringPhysicianName": f"Dr^Quintus{i}",
            "OtherPatientIDs": f"OPIDQX{i}9", "StudyID": f"STIDQX{i}"}


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A PACS export: one patient with kept and skipped series, a zipped patient, five small
    patients, junk files; and a folder of NIfTI twins of the kept series."""
    rng = np.random.default_rng(11)
    root = tmp_path_factory.mktemp("dicom")
    tree, twins = root / "export", root / "nifti"
    twins.mkdir()
    st = study_uids()
    p1 = tree / "PAT1" / "ST1"
    volumes = {"axial": (head_phantom((40, 48, 10), rng), AXIAL),
               "sagittal": (head_phantom((36, 40, 44), rng), SAGITTAL),
               "oblique": (head_phantom((36, 40, 24), rng), OBLIQUE),
               "enhanced": (head_phantom((40, 36, 30), rng), ISO),
               "zipped": (head_phantom((30, 36, 32), rng), SAGITTAL)}
    volumes = {k: (np.round(v).astype(np.int16), a) for k, (v, a) in volumes.items()}
    write_series(p1 / "s2", *volumes["axial"], st, tags={**T2, "SeriesDescription": TWINS["axial"], "SeriesNumber": 2})
    shutil.copy(p1 / "s2" / "IM0003", p1 / "s2" / "IM0003 (copy)")  # the same image twice: used once
    write_series(p1 / "s3", *volumes["sagittal"], st, tags={"SeriesDescription": TWINS["sagittal"], "SeriesNumber": 3},
                 names=lambda k: f"1.3.12.2.{k}.dcm")
    write_series(p1 / "deep" / "er" / "s4", *volumes["oblique"], st,
                 tags={**FLAIR, "SeriesDescription": TWINS["oblique"]})
    write_multiframe(p1 / "s5" / "ENH0001", *volumes["enhanced"], st, tags={"SeriesDescription": TWINS["enhanced"]})
    gap = np.round(head_phantom((40, 48, 12), rng)).astype(np.int16)
    write_series(p1 / "s6", gap, AXIAL, st, tags={"SeriesDescription": "ax t1 gap"}, skip=(5,))
    small = np.round(head_phantom((20, 24, 8), rng)).astype(np.int16)
    write_series(p1 / "localiser", small[:, :, :3], AXIAL, st,
                 tags={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"], "SeriesDescription": "loc"})
    write_series(p1 / "derived", small, AXIAL, st, tags={"ImageType": ["DERIVED", "SECONDARY", "MPR"]})
    uid = write_series(p1 / "dwi", small, AXIAL, st, tags={"SeriesDescription": "ep2d_diff"},
                       per_slice=lambda k: {"DiffusionBValue": 0.0})
    write_series(p1 / "dwi", small, AXIAL, st, series_uid=uid, tags={"SeriesDescription": "ep2d_diff"},
                 names=lambda k: f"B1000_{k}",
                 per_slice=lambda k: {"DiffusionBValue": 1000.0, "InstanceNumber": 20 + k})
    write_series(p1 / "two", small[:, :, :2], AXIAL, st)
    uid = write_series(p1 / "size", small, AXIAL, st, skip=(7,))
    write_series(p1 / "size", small[:16], AXIAL, st, series_uid=uid, skip=tuple(range(7)), names=lambda k: "LAST")
    write_series(p1 / "capture", small[:, :, :1], AXIAL, st, modality_class=SECONDARY_CAPTURE, tags={"Modality": "OT"})
    write_series(p1 / "ct", small, AXIAL, st, modality_class=CT_STORAGE, tags={"Modality": "CT"})
    # junk: text, random bytes, a truncated DICOM, a DICOMDIR alone, a broken zip
    (tree / "README.txt").write_text("exported by PACS\n")
    (tree / "PAT1" / "viewer.bin").write_bytes(rng.bytes(3000))
    first = p1 / "s3" / "1.3.12.2.0.dcm"
    (tree / "PAT1" / "broken").write_bytes(first.read_bytes()[:-700])
    dicomdir = pydicom.Dataset()
    dicomdir.file_meta = pydicom.dataset.FileMetaDataset()
    dicomdir.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    dicomdir.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    dicomdir.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    dicomdir.FileSetID = "EXPORT"
    (tree / "dirdir").mkdir()
    dicomdir.save_as(tree / "dirdir" / "DICOMDIR", enforce_file_format=True)
    (tree / "bad.zip").write_bytes(b"PK\x03\x04 this archive was cut short")
    # a zipped patient (age from the birth date), five small patients (PatientAge)
    zipped = root / "zipped"
    write_series(zipped / "x", *volumes["zipped"], study_uids(),
                 tags={**_patient(2), "PatientAge": None, "PatientBirthDate": "19600115", "PatientSex": "M",
                       "SeriesDescription": TWINS["zipped"]})
    with zipfile.ZipFile(tree / "PAT2.zip", "w") as zf:
        for f in sorted((zipped / "x").iterdir()):
            zf.write(f, f"DICOM/{f.name}")
    for i, (age, sex) in enumerate(EXTRA, start=3):
        write_series(tree / "others" / f"P{i}", np.round(head_phantom((24, 28, 20), rng)).astype(np.int16), ISO,
                     study_uids(), tags={**_patient(i), "PatientAge": f"{age:03d}Y", "PatientSex": sex,
                                         "SeriesDescription": f"t1 mprage {i}"})
    for name, (data, affine) in volumes.items():
        save(twins / f"{name}.nii.gz", data, affine)
    return tree, twins


@pytest.fixture(scope="module")
def bundle64(tmp_path_factory):
    """The tiny random bundle of conftest with a 64-voxel minimum grid: every test volume fits, and
    a scan takes a fraction of a second."""
    from morphometry.segment.random_bundle import random_bundle

    return random_bundle(tmp_path_factory.mktemp("bundle") / "tiny64", features=2, seed=7, min_size=64)


def _segment(inputs: list[Path], out: Path, bundle, *flags: str) -> int:
    return main(["segment", *map(str, inputs), "-o", str(out), "--models", str(bundle.root), "--method", "synthseg",
                 "--threads", "2", *flags])


@pytest.fixture(scope="module")
def segmented(export, bundle64, tmp_path_factory):
    """``morpho segment`` on the export and the NIfTI twins together, with a key of the test's own;
    the exit code, the output folder, the key file and the log."""
    tree, twins = export
    base = tmp_path_factory.mktemp("run")
    out, key = base / "out", base / "keys" / "project.key"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger("morphometry").addHandler(handler)
    try:
        code = _segment([tree, twins], out, bundle64, "--posteriors", "--id-key", str(key))
    finally:
        logging.getLogger("morphometry").removeHandler(handler)
    return code, out, key, stream.getvalue()


def _rows(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "volumes.parquet")


def test_usable_series_are_segmented_with_acquisition_columns(segmented):
    code, out, _, _ = segmented
    assert code == 0, (out / "failures.csv").read_text()
    vol = _rows(out)
    dicom = vol[vol["modality"].notna()].set_index("series_description")
    assert sorted(dicom.index) == sorted([*TWINS.values(), "ax t1 gap", *(f"t1 mprage {i}" for i in range(3, 8))])
    assert all(dicom["scan_id"].str.fullmatch(r"scan-[0-9a-f]{16}"))
    assert all(dicom["path"].map(lambda p: Path(p).parent == out / "converted" and Path(p).is_file()))
    ax = dicom.loc["AX T2 TSE"]
    assert (ax["acquisition_type"], ax["contrast"], ax["slice_thickness_mm"], ax["repetition_time_ms"]) == \
        ("2D", "T2", 5.0, 6000)
    assert (ax["manufacturer"], ax["manufacturer_model"], ax["field_strength_t"]) == ("ACME", "Imager 3000", 3.0)
    assert ax["study_date"] == "2015-04-02" and date.fromisoformat(ax["study_date"]).year == 2015
    assert dicom.loc["obl flair", "contrast"] == "FLAIR" and dicom.loc["obl flair", "inversion_time_ms"] == 2500
    enhanced = dicom.loc["enhanced t1"]  # timings read from the functional groups of the multi-frame file
    assert (enhanced["repetition_time_ms"], enhanced["echo_time_ms"], enhanced["inversion_time_ms"],
            enhanced["flip_angle_deg"], enhanced["contrast"]) == (2300, 2.98, 900, 9, "T1")
    # the series with a missing slice: converted as dcm2niix does (equal spacing, 12 slices) and flagged
    gap = dicom.loc["ax t1 gap"]
    assert gap["shape_z"] == 12 and "irregular slice spacing" in gap["dicom_flags"]
    assert dicom.drop(index="ax t1 gap")["dicom_flags"].isna().all()
    # subjects: one per patient, sessions per study
    assert dicom.loc[list(TWINS.values())[:4], "subject_id"].nunique() == 1
    assert dicom["subject_id"].nunique() == 7


def test_dicom_volumes_and_labels_equal_the_nifti_twins(segmented, export):
    _, out, _, _ = segmented
    vol = _rows(out)
    twins = vol[vol["modality"].isna()].set_index("scan_id")
    dicom = vol[vol["modality"].notna()].set_index("series_description")
    columns = ["shape_x", "shape_y", "shape_z", "spacing_x_mm", "spacing_y_mm", "spacing_z_mm", "slice_axis"]
    for name, description in TWINS.items():
        mine, twin = dicom.loc[description], twins.loc[name]
        assert mine[columns].tolist() == twin[columns].tolist(), name
        np.testing.assert_allclose(mine[[TOTAL_INTRACRANIAL, *STRUCTURES]].astype(float),
                                   twin[[TOTAL_INTRACRANIAL, *STRUCTURES]].astype(float), rtol=1e-5, err_msg=name)
        assert twin[TOTAL_INTRACRANIAL] > 0
        for kind in ("seg", "posteriors"):
            a = nib.as_closest_canonical(nib.load(out / kind / f"{mine['scan_id']}_synthseg.nii.gz"))
            b = nib.as_closest_canonical(nib.load(out / kind / f"{name}_synthseg.nii.gz"))
            np.testing.assert_allclose(a.affine, b.affine, atol=1e-5, err_msg=name)
            assert a.shape == b.shape, name
            np.testing.assert_allclose(np.asarray(a.dataobj), np.asarray(b.dataobj), atol=1e-6, err_msg=name)


def test_series_and_files_left_out_with_reasons(segmented, export):
    tree, _ = export
    _, out, _, _ = segmented
    skipped = pd.read_csv(out / "skipped.csv", dtype=str, keep_default_na=False)
    by_path = dict(zip(skipped["path"], skipped["reason"]))
    p1 = tree / "PAT1" / "ST1"
    for folder, reason in SKIPPED.items():
        assert by_path[str(p1 / folder)] == reason
    assert by_path[str(tree / "README.txt")] == "not a DICOM file"
    assert by_path[str(tree / "PAT1" / "viewer.bin")] == "not a DICOM file"
    assert by_path[str(tree / "PAT1" / "broken")].startswith("truncated DICOM (pixel data")
    assert by_path[str(tree / "dirdir" / "DICOMDIR")].startswith("DICOMDIR")
    assert by_path[str(tree / "bad.zip")].startswith("unreadable zip archive (BadZipFile")
    assert len(skipped) == len(SKIPPED) + 5
    series = skipped[skipped["scan_id"] != ""]
    assert len(series) == len(SKIPPED) and all(series["scan_id"].str.fullmatch(r"scan-[0-9a-f]{16}"))
    assert pd.read_csv(out / "failures.csv").empty


def test_covariates_from_the_tags(segmented):
    _, out, _, _ = segmented
    cov = pd.read_csv(out / "covariates.csv")
    assert list(cov.columns) == ["scan_id", "subject_id", "age", "sex"]
    vol = _rows(out)
    dicom = vol[vol["modality"].notna()].set_index("scan_id")
    assert sorted(cov["scan_id"]) == sorted(dicom.index)
    cov = cov.set_index("scan_id").join(dicom[["series_description"]]).set_index("series_description")
    assert cov.loc["AX T2 TSE", "age"] == 65 and cov.loc["AX T2 TSE", "sex"] == "F"
    born, scanned = date(1960, 1, 15), date(2015, 4, 2)
    assert cov.loc["sag t1 p2", "age"] == pytest.approx((scanned - born).days / 365.25, abs=1e-3)
    assert cov.loc["sag t1 p2", "sex"] == "M"
    for i, (age, sex) in enumerate(EXTRA, start=3):
        assert (cov.loc[f"t1 mprage {i}", "age"], cov.loc[f"t1 mprage {i}", "sex"]) == (age, sex)


def test_covariates_feed_fit_ageing(segmented, tmp_path, capsys):
    _, out, _, _ = segmented
    vol = _rows(out)
    vol[vol["modality"].notna()].to_parquet(tmp_path / "dicom_volumes.parquet")
    code = main(["fit-ageing", str(tmp_path / "dicom_volumes.parquet"), "--covariates", str(out / "covariates.csv"),
                 "-o", str(tmp_path / "fit"), "--structures", TOTAL_INTRACRANIAL, "--knots", "2", "--spacing-terms",
                 "--bootstrap", "0", "--no-figures", "--direction", "none"])
    assert code == 0, capsys.readouterr().err
    written = [p for p in (tmp_path / "fit").rglob("*") if p.is_file()]
    assert written
    text = "".join(p.read_text(errors="replace") for p in written if p.suffix in (".csv", ".json"))
    assert TOTAL_INTRACRANIAL in text


def _planted(tree: Path) -> set[str]:
    """Every identifying value of the export: planted tags, birth dates as dates, and every UID."""
    values = set()
    files = [p for p in tree.rglob("*") if p.is_file()]
    datasets = []
    for p in files:
        if p.suffix == ".zip":
            try:
                with zipfile.ZipFile(p) as zf:
                    datasets += [pydicom.dcmread(io.BytesIO(zf.read(n)), stop_before_pixels=True)
                                 for n in zf.namelist()]
            except zipfile.BadZipFile:
                pass
            continue
        try:
            datasets.append(pydicom.dcmread(p, stop_before_pixels=True))
        except (pydicom.errors.InvalidDicomError, OSError, EOFError):
            continue
    for ds in datasets:
        for keyword in IDENTIFYING:
            if keyword in ds and str(ds.get(keyword)):
                values.add(str(ds.get(keyword)))
        born = str(ds.get("PatientBirthDate") or "")
        if born:
            values.add(f"{born[:4]}-{born[4:6]}-{born[6:]}")
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
            if keyword in ds:
                values.add(str(ds.get(keyword)))
    return values


def _output_texts(out: Path) -> list[tuple[Path, bytes]]:
    """Every output file's bytes, and, decompressed, those of gzip files and parquet tables."""
    texts = []
    for p in sorted(out.rglob("*")):
        if not p.is_file():
            continue
        raw = p.read_bytes()
        texts.append((p, raw))
        if raw[:2] == b"\x1f\x8b":
            texts.append((p, gzip.decompress(raw)))
        if p.suffix == ".parquet":
            texts.append((p, pd.read_parquet(p).to_csv().encode()))
    return texts


def test_no_identifier_in_any_output_byte_or_log(segmented, export):
    tree, _ = export
    _, out, key, log_text = segmented
    planted = _planted(tree)
    assert {PATIENT["PatientName"], PATIENT["PatientID"], PATIENT["AccessionNumber"]} <= planted
    assert len(planted) > 300  # the UIDs of every file are among them
    outputs = _output_texts(out)
    assert any(p.name == "volumes.parquet" for p, _ in outputs) and any("converted" in p.parts for p, _ in outputs)
    for value in planted:
        needle = value.encode()
        leaks = [str(p.relative_to(out)) for p, data in outputs if needle in data]
        assert not leaks, f"{value!r} found in {leaks}"
        assert value not in log_text
    key_hex = key.read_text().strip()
    assert all(key_hex.encode() not in data for _, data in outputs)
    assert oct(key.stat().st_mode & 0o777) == "0o600"


def test_same_ids_in_a_second_run_with_the_same_key(segmented, export, bundle64, tmp_path):
    tree, _ = export
    _, out, key, _ = segmented
    second = tmp_path / "second"
    code = _segment([tree], second, bundle64, "--id-key", str(key), "--series-filter", "SeriesDescription ~ ^enhanced")
    assert code == 0
    first_rows, rows = _rows(out).set_index("series_description"), _rows(second)
    assert list(rows["series_description"]) == ["enhanced t1"]
    assert rows.iloc[0][["scan_id", "subject_id", "session_id"]].tolist() == \
        first_rows.loc["enhanced t1", ["scan_id", "subject_id", "session_id"]].tolist()
    a, b = (pd.read_csv(d / "skipped.csv", dtype=str, keep_default_na=False) for d in (out, second))
    common = a.merge(b, on="path", suffixes=("_a", "_b"))
    assert len(common) == len(a)
    assert (common["scan_id_a"] == common["scan_id_b"]).all()
    assert (b["reason"] == "not selected by --series-filter").sum() == 10 + len(SKIPPED)
    # another key: other ids for the same series
    other = survey([tree], DicomOptions(id_key=tmp_path / "other.key"))
    assert {r.series.uid for r in other.records} and not {r.scan_id for r in other.records} & set(first_rows["scan_id"])


def test_resume_does_not_convert_again(segmented, bundle64, export, tmp_path):
    tree, _ = export
    _, first, key, _ = segmented
    out = tmp_path / "resumed"
    shutil.copytree(first, out)
    vol = _rows(out)
    victim = vol.loc[vol["series_description"] == "obl flair", "scan_id"].iloc[0]
    # a newer failed entry for one series: resume segments it again (from its converted file)
    journal.record(out, {"scan_id": victim, "path": "x", "status": "failed", "stage": "test", "error": "x"})
    converted = sorted((out / "converted").iterdir())
    stamps = {p.name: p.stat().st_mtime_ns for p in converted}
    os.utime(converted[0], ns=(1, 1))
    stamps[converted[0].name] = 1
    code = _segment([tree], out, bundle64, "--id-key", str(key), "--resume")
    assert code == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "converted").iterdir()} == stamps
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["result"]["total"] == 1 and provenance["result"]["succeeded"] == 1
    assert victim in set(_rows(out)["scan_id"])
