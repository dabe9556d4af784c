"""DICOM series -> scans to segment, lines of ``skipped.csv`` and rows of ``covariates.csv``.

Ids are keyed pseudonyms (:mod:`morphometry.identity`): scan_id of the SeriesInstanceUID,
session_id of the StudyInstanceUID, subject_id of the PatientID (without one: of PatientName and
PatientBirthDate; without those: of the StudyInstanceUID, one subject per study). A manifest
row's own ids replace them. A scan's extra columns are the acquisition columns
(:mod:`morphometry.acquisition`), ``dicom_flags`` (oddities of a kept series) and, with
``keep_identifiers``, :data:`IDENTIFIER_COLUMNS` in clear.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from morphometry.acquisition import acquisition_columns, age_years, dicom_date, sex
from morphometry.dicom_series import DicomOptions, DicomSeries, SeriesFilter, Skipped
from morphometry.identity import load_key, pseudonym

IDENTIFIER_COLUMNS = {"patient_name": "PatientName", "patient_id": "PatientID",
                      "patient_birth_date": "PatientBirthDate", "accession_number": "AccessionNumber",
                      "institution_name": "InstitutionName",
                      "study_instance_uid": "StudyInstanceUID", "series_instance_uid": "SeriesInstanceUID"}
COVARIATE_COLUMNS = ("scan_id", "subject_id", "age", "sex")
NOT_DICOM = "not a DICOM file"


@dataclass
class DicomNaming:
    """The options of a discovery, its series filter and its key, read once when first needed."""

    options: DicomOptions
    series_filter: SeriesFilter | None = None
    _key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.options.series_filter:
            self.series_filter = SeriesFilter(self.options.series_filter)

    @property
    def key(self) -> bytes:
        if self._key is None:
            self._key = load_key(self.options.id_key)
        return self._key

    def ids(self, series: DicomSeries) -> tuple[str, str, str | None]:
        """(scan_id, subject_id, session_id) of ``series``."""
        ds = series.header
        study = str(ds.get("StudyInstanceUID") or "").strip()
        patient = str(ds.get("PatientID") or "").strip()
        if patient:
            subject = pseudonym(self.key, "patient", patient)
        elif str(ds.get("PatientName") or "").strip():
            subject = pseudonym(self.key, "patient", f"{ds.get('PatientName')}|{ds.get('PatientBirthDate') or ''}")
        else:
            subject = pseudonym(self.key, "patient", f"study:{study or series.uid}")
        return (pseudonym(self.key, "series", series.uid), subject,
                pseudonym(self.key, "study", study) if study else None)


@dataclass(frozen=True)
class DicomScan:
    """A kept series with its ids, extra columns and covariates."""

    series: DicomSeries
    scan_id: str
    subject_id: str
    session_id: str | None
    extra: dict
    covariates: dict


def identifiers(series: DicomSeries) -> dict:
    """The identifying tags in clear (``--keep-identifiers``) and the series' folder."""
    row = {}
    for column, keyword in IDENTIFIER_COLUMNS.items():
        value = series.header.get(keyword)
        row[column] = None if value in (None, "") else str(value)
    born = dicom_date(series.header.get("PatientBirthDate"))
    row["patient_birth_date"] = born.isoformat() if born else row["patient_birth_date"]
    row["source_path"] = str(series.folder)
    return row


def sort_series(series: list[DicomSeries], naming: DicomNaming) -> tuple[list[DicomScan], list[Skipped]]:
    """Kept series (with their ids and columns) and the series left out, with reasons."""
    kept, skipped = [], []
    for s in series:
        scan_id, subject_id, session_id = naming.ids(s)
        selected = naming.series_filter(s.header) if naming.series_filter else True
        reason = s.reason(naming.options, selected)
        if reason:
            skipped.append(Skipped(str(s.folder), reason, scan_id, s.description))
            continue
        extra = acquisition_columns(s.header)
        if extra["study_date"] is not None:
            extra["study_date"] = extra["study_date"].isoformat()
        extra["dicom_flags"] = "; ".join(s.flags()) or None
        if naming.options.keep_identifiers:
            extra.update(identifiers(s))
        age = age_years(s.header)
        covariates = {"scan_id": scan_id, "subject_id": subject_id,
                      "age": round(age, 3) if age is not None else None, "sex": sex(s.header)}
        kept.append(DicomScan(s, scan_id, subject_id, session_id, extra, covariates))
    return kept, skipped


def holds_dicom(kept: list, skipped: list[Skipped]) -> bool:
    """Whether a tree held DICOM content (series, DICOM files left out, archives), not only other files."""
    return bool(kept) or any(s.reason != NOT_DICOM for s in skipped)
