"""DICOM discovery and its vocabulary: contrast rule, age and sex, keyed ids, series filter,
manifests naming series folders, CT, identifiers kept on request, and bad inputs (a series
dcm2niix cannot decode, a DICOMDIR alone) that cost one line each."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import head_phantom, save
from dicom_fixtures import CT_STORAGE, PATIENT, study_uids, write_series
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit

from morphometry.acquisition import age_years, guess_contrast
from morphometry.cli import main
from morphometry.dicom_series import DicomOptions, SeriesFilter
from morphometry.errors import InputError
from morphometry.identity import load_key, pseudonym
from morphometry.inputs import discover, survey

GRID = np.diag([1.5, 1.5, 1.5, 1.0])


def _volume(seed: int = 0, shape=(20, 24, 18)) -> np.ndarray:
    return np.round(head_phantom(shape, np.random.default_rng(seed))).astype(np.int16)


@pytest.mark.parametrize(("words", "tr", "te", "ti", "expected"), [
    ("sag_MPRAGE_1mm", None, None, None, "T1"),
    ("AX T2 FLAIR", None, None, None, "FLAIR"),  # FLAIR before T2
    ("ax pd tse", None, None, None, "PD"),
    ("series 7", 9000, 120, 2500, "FLAIR"),
    ("series 7", 500, 12, None, "T1"),
    ("series 7", 2300, 3, 900, "T1"),  # an MPRAGE by its timings
    ("series 7", 5000, 100, None, "T2"),
    ("series 7", 3000, 20, None, "PD"),
    ("series 7", 1000, 45, None, "other"),
    ("series 7", None, None, None, "other"),
])
def test_contrast_rule(words, tr, te, ti, expected):
    assert guess_contrast(words, tr, te, ti) == expected


@pytest.mark.parametrize(("tags", "expected"), [
    ({"PatientAge": "065Y"}, 65.0),
    ({"PatientAge": "018M"}, 1.5),
    ({"PatientAge": "026W"}, 26 * 7 / 365.25),
    ({"PatientAge": "", "PatientBirthDate": "20000229", "StudyDate": "20040301"}, 1462 / 365.25),
    ({"PatientAge": "000Y", "PatientBirthDate": "19800101", "StudyDate": "19800101"}, 0.0),
    ({"PatientBirthDate": "19990230", "StudyDate": "20200101"}, None),  # not a date
    ({"PatientBirthDate": "20200102", "StudyDate": "20200101"}, None),  # born after the scan
    ({}, None),
])
def test_age_in_years(tags, expected):
    ds = pydicom.Dataset()
    for key, value in tags.items():
        setattr(ds, key, value)
    assert age_years(ds) == (None if expected is None else pytest.approx(expected))


def test_key_is_created_private_reused_and_checked(tmp_path):
    path = tmp_path / "cfg" / "project.key"
    key = load_key(path)
    assert len(key) == 32 and oct(path.stat().st_mode & 0o777) == "0o600"
    assert load_key(path) == key
    a, b = pseudonym(key, "patient", "P1"), pseudonym(key, "patient", "P2")
    assert a.startswith("subj-") and len(a) == 21 and a != b
    assert pseudonym(key, "patient", "P1") == a and pseudonym(load_key(tmp_path / "other.key"), "patient", "P1") != a
    (tmp_path / "bad.key").write_text("not hex\n")
    with pytest.raises(InputError, match=r"bad.key: not an identity key") as err:
        load_key(tmp_path / "bad.key")
    assert err.value.setting == "id_key"


def test_series_filter_conditions_and_errors():
    ds = pydicom.Dataset()
    ds.SeriesDescription, ds.SliceThickness, ds.ImageType = "Sag MPRAGE 1mm", "1.2", ["ORIGINAL", "PRIMARY"]
    assert SeriesFilter("SeriesDescription ~ mprage")(ds)
    assert SeriesFilter("SeriesDescription ~ mprage and SliceThickness <= 1.5")(ds)
    assert not SeriesFilter("SeriesDescription ~ mprage and SliceThickness < 1")(ds)
    assert SeriesFilter("ImageType ~ ^original\\\\primary$ and SeriesDescription != 'ax t2'")(ds)
    assert not SeriesFilter("Modality = MR")(ds)  # absent tag: empty text
    for text, message in (("SeriesDesc ~ t1", "not a DICOM keyword"), ("SliceThickness < thin", "needs a number"),
                          ("SeriesDescription ~ (", "bad regular expression"), ("mprage", "expected 'Keyword OP")):
        with pytest.raises(InputError, match=message):
            SeriesFilter(text)




def test_manifest_rows_name_series_folders_and_give_ids(tmp_path):
    st = study_uids()
    write_series(tmp_path / "one", _volume(1), GRID, st, tags={"SeriesDescription": "t1 a"})
    write_series(tmp_path / "two" / "a", _volume(2), GRID, st, tags={"SeriesDescription": "t1 b", "SeriesNumber": 1})
    write_series(tmp_path / "two" / "b", _volume(3), GRID, st, tags={"SeriesDescription": "t1 c", "SeriesNumber": 2})
    pd.DataFrame({"path": ["one", "two"], "scan_id": ["visit1", "visit2"], "subject_id": ["S01", ""],
                  "site": ["north", "south"]}).to_csv(tmp_path / "m.csv", index=False)
    found = survey([tmp_path / "m.csv"], DicomOptions(id_key=tmp_path / "k"))
    recs = {r.scan_id: r for r in found.records}
    assert sorted(recs) == ["visit1", "visit2_1", "visit2_2"]
    assert recs["visit1"].subject_id == "S01" and recs["visit1"].extra["site"] == "north"
    assert recs["visit2_1"].subject_id.startswith("subj-") and recs["visit2_1"].extra["series_description"] == "t1 b"
    assert recs["visit2_2"].extra["series_description"] == "t1 c" and recs["visit2_2"].path == tmp_path / "two" / "b"
    assert {c["scan_id"]: c["subject_id"] for c in found.covariates}["visit1"] == "S01"


def test_ct_kept_only_when_asked_and_zip_given_directly(tmp_path):
    write_series(tmp_path / "ct", _volume(4), GRID, study_uids(), modality_class=CT_STORAGE, tags={"Modality": "CT"})
    with zipfile.ZipFile(tmp_path / "ct.zip", "w") as zf:
        for f in sorted((tmp_path / "ct").iterdir()):
            zf.write(f, f.name)
    without = survey([tmp_path / "ct.zip"], DicomOptions(id_key=tmp_path / "k"))
    assert not without.records and [s.reason for s in without.skipped] == ["CT series (give --ct to segment CT)"]
    with pytest.raises(InputError, match="no usable scans: 1 series or file"):
        discover([tmp_path / "ct.zip"], DicomOptions(id_key=tmp_path / "k"))
    kept = survey([tmp_path / "ct.zip"], DicomOptions(ct=True, id_key=tmp_path / "k")).records
    assert len(kept) == 1 and kept[0].path == tmp_path / "ct.zip" and kept[0].extra["modality"] == "CT"
    assert len(kept[0].series.files) == 18 and kept[0].series.files[0].member is not None


def test_identifiers_only_with_keep_identifiers(tmp_path):
    write_series(tmp_path / "s", _volume(5), GRID, study_uids())
    plain = survey([tmp_path], DicomOptions(id_key=tmp_path / "k")).records[0]
    assert "patient_id" not in plain.extra and PATIENT["PatientID"] not in str(plain)
    kept = survey([tmp_path], DicomOptions(keep_identifiers=True, id_key=tmp_path / "k")).records[0]
    assert (kept.extra["patient_id"], kept.extra["patient_name"], kept.extra["patient_birth_date"]) == \
        (PATIENT["PatientID"], PATIENT["PatientName"], "1950-03-10")
    assert kept.extra["series_instance_uid"] == kept.series.uid and kept.scan_id == plain.scan_id


def test_folders_without_dicom_list_no_junk(tmp_path):
    (tmp_path / "sub-01" / "anat").mkdir(parents=True)
    save(tmp_path / "sub-01" / "anat" / "sub-01_T1w.nii.gz", _volume().astype(np.float32), GRID)
    (tmp_path / "sub-01" / "anat" / "sub-01_T1w.json").write_text("{}")
    (tmp_path / "dataset_description.json").write_text("{}")
    found = survey([tmp_path])
    assert [r.scan_id for r in found.records] == ["sub-01_T1w"] and found.skipped == []


@pytest.fixture(scope="module")
def bundle64(tmp_path_factory):
    from morphometry.segment.random_bundle import random_bundle

    return random_bundle(tmp_path_factory.mktemp("bundle") / "tiny64", features=2, seed=7, min_size=64)


def test_bad_series_filter_is_one_line_naming_the_flag(tmp_path, bundle64, capsys):
    write_series(tmp_path / "s", _volume(), GRID, study_uids())
    assert main(["segment", str(tmp_path / "s"), "-o", str(tmp_path / "out"), "--models", str(bundle64.root),
                 "--id-key", str(tmp_path / "k"), "--series-filter", "Foo ~ bar"]) == 2
    assert capsys.readouterr().err == ("morpho segment: error: --series-filter: 'Foo' is not a DICOM keyword "
                                       "(e.g. SeriesDescription, Modality)\n")


def _undecodable(folder: Path) -> None:
    """A series whose pixel data claim JPEG compression but hold garbage."""
    write_series(folder, np.full((16, 16, 6), 5, np.int16), GRID, study_uids(),
                 tags={"SeriesDescription": "broken jpeg"})
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xdb not a jpeg stream" * 4])
        ds["PixelData"].VR = "OB"
        ds.save_as(f, enforce_file_format=True)


def test_series_that_cannot_be_converted_is_a_failure_and_the_batch_goes_on(tmp_path, bundle64, capsys):
    _undecodable(tmp_path / "in" / "jpeg")
    write_series(tmp_path / "in" / "good", _volume(6), GRID, study_uids(), tags={"SeriesDescription": "good t1"})
    out = tmp_path / "out"
    code = main(["segment", str(tmp_path / "in"), "-o", str(out), "--models", str(bundle64.root), "--method",
                 "synthseg", "--id-key", str(tmp_path / "k")])
    assert code == 1
    failures = pd.read_csv(out / "failures.csv")
    assert list(failures["stage"]) == ["convert"] and failures["error"][0].startswith(failures["scan_id"][0])
    assert "dcm2niix could not convert the series" in failures["error"][0]
    assert list(pd.read_parquet(out / "volumes.parquet")["series_description"]) == ["good t1"]
    assert "failed:" in capsys.readouterr().err


def test_dicomdir_alone_is_one_line_and_a_skipped_row(tmp_path, bundle64, capsys):
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    (tmp_path / "cd").mkdir()
    ds.save_as(tmp_path / "cd" / "DICOMDIR", enforce_file_format=True)
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "cd"), "-o", str(out), "--models", str(bundle64.root),
                 "--id-key", str(tmp_path / "k")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("morpho segment: error: no usable scans: 1 series or file(s) left out, reasons in "
                       f"{out}/skipped.csv")
    assert pd.read_csv(out / "skipped.csv")["reason"].tolist() == ["DICOMDIR (an index of images, not an image)"]
