"""Acquisition facts of a DICOM series: the volumes-table columns, the contrast guess, age and sex.

Columns (from the series' first file; enhanced multi-frame files hold some of them in their
functional groups, which are searched too): ``modality``, ``manufacturer``, ``manufacturer_model``,
``field_strength_t`` (tesla), ``series_description``, ``acquisition_type`` (2D/3D),
``slice_thickness_mm``, ``spacing_between_slices_mm``, ``repetition_time_ms``, ``echo_time_ms``,
``inversion_time_ms``, ``flip_angle_deg``, ``study_date`` (a date) and ``contrast``.

Contrast rule (:func:`guess_contrast`), first match wins: words of SeriesDescription,
ProtocolName and SequenceName (FLAIR; T1, MPRAGE, MP2RAGE, SPGR, BRAVO, TFL, TFE; T2; PD) name
it; else the timings in ms: TI >= 1500 and TE >= 60 is FLAIR; TE < 30 with TR < 800 or with
300 <= TI < 1500 is T1; TE >= 60 with TR >= 1500 is T2; TE < 40 with TR >= 1500 is PD; else
``other`` (also when a timing is missing).

Age in years (:func:`age_years`): PatientAge (``065Y``, ``006M``, ``010W``, ``021D``), else the
days from PatientBirthDate to the StudyDate (or SeriesDate, AcquisitionDate) / 365.25. Sex:
PatientSex ``M`` or ``F``; anything else is unknown.
"""

from __future__ import annotations

import math
import re
from datetime import date

COLUMNS = ("modality", "manufacturer", "manufacturer_model", "field_strength_t", "series_description",
           "acquisition_type", "slice_thickness_mm", "spacing_between_slices_mm", "repetition_time_ms",
           "echo_time_ms", "inversion_time_ms", "flip_angle_deg", "study_date", "contrast")
CONTRASTS = ("T1", "T2", "FLAIR", "PD", "other")
_TEXT = {"modality": "Modality", "manufacturer": "Manufacturer", "manufacturer_model": "ManufacturerModelName",
         "series_description": "SeriesDescription", "acquisition_type": "MRAcquisitionType"}
_NUMBER = {"field_strength_t": ("MagneticFieldStrength",), "slice_thickness_mm": ("SliceThickness",),
           "spacing_between_slices_mm": ("SpacingBetweenSlices",), "repetition_time_ms": ("RepetitionTime",),
           "echo_time_ms": ("EchoTime", "EffectiveEchoTime"), "inversion_time_ms": ("InversionTime", "InversionTimes"),
           "flip_angle_deg": ("FlipAngle",)}
_WORDS = (("FLAIR", r"flair|dark.?fluid"), ("T1", r"t1|mprage|mp2rage|spgr|bravo|tfl|tfe"),
          ("T2", r"t2"), ("PD", r"\bpd|proton.?dens"))
_AGE = re.compile(r"^(\d{1,3})([DWMY])$")
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def find(ds, keyword: str):
    """The value of ``keyword`` in the dataset, else in its shared, else first per-frame functional
    groups (one level of sub-sequences); None when absent or empty."""
    value = ds.get(keyword)
    if value not in (None, ""):
        return value
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        seq = ds.get(groups)
        if not seq:
            continue
        for element in seq[0]:
            if element.VR != "SQ":
                continue
            for item in element.value:
                value = item.get(keyword)
                if value not in (None, ""):
                    return value
    return None


def _number(value) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (str, bytes, int, float)) and hasattr(value, "__len__"):
        value = value[0] if len(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def dicom_date(value) -> date | None:
    """A DICOM DA value (YYYYMMDD) as a date; None when absent or malformed."""
    text = str(value or "").strip()
    if not re.fullmatch(r"\d{8}", text):
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def acquisition_columns(ds) -> dict:
    """The columns of the module docstring for a series whose first file is ``ds``."""
    row: dict = {}
    for column, keyword in _TEXT.items():
        value = find(ds, keyword)
        row[column] = str(value).strip() if value is not None else None
    for column, keywords in _NUMBER.items():
        row[column] = next((n for n in (_number(find(ds, k)) for k in keywords) if n is not None), None)
    row["study_date"] = dicom_date(ds.get("StudyDate") or ds.get("SeriesDate") or ds.get("AcquisitionDate"))
    words = " ".join(str(ds.get(k) or "") for k in ("SeriesDescription", "ProtocolName", "SequenceName"))
    row["contrast"] = guess_contrast(words, row["repetition_time_ms"], row["echo_time_ms"], row["inversion_time_ms"])
    return row


def guess_contrast(words: str, tr_ms: float | None, te_ms: float | None, ti_ms: float | None) -> str:
    """T1 | T2 | FLAIR | PD | other, by the rule of the module docstring."""
    text = words.lower().replace("_", " ")
    for contrast, pattern in _WORDS:
        if re.search(pattern, text):
            return contrast
    if te_ms is None:
        return "other"
    if ti_ms is not None and ti_ms >= 1500 and te_ms >= 60:
        return "FLAIR"
    if te_ms < 30 and ((tr_ms is not None and tr_ms < 800) or (ti_ms is not None and 300 <= ti_ms < 1500)):
        return "T1"
    if tr_ms is not None and tr_ms >= 1500:
        if te_ms >= 60:
            return "T2"
        if te_ms < 40:
            return "PD"
    return "other"


def age_years(ds) -> float | None:
    """Age at the scan in years (module docstring); None when unknown."""
    match = _AGE.match(str(ds.get("PatientAge") or "").strip().upper())
    if match and int(match.group(1)) > 0:
        return int(match.group(1)) * _AGE_UNIT_YEARS[match.group(2)]
    born = dicom_date(ds.get("PatientBirthDate"))
    scanned = dicom_date(ds.get("StudyDate") or ds.get("SeriesDate") or ds.get("AcquisitionDate"))
    if born is None or scanned is None or scanned < born:
        return None
    return (scanned - born).days / 365.25


def sex(ds) -> str | None:
    """``M``, ``F`` or None."""
    value = str(ds.get("PatientSex") or "").strip().upper()
    return value if value in ("M", "F") else None
