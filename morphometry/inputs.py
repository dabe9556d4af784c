"""Turning command-line inputs into a list of scans to process.

An input is an image file, a folder (searched recursively; BIDS subject/session taken from
``sub-*``/``ses-*`` path parts, ``derivatives/`` skipped), or a manifest CSV with a ``path``
column and optional ``scan_id``, ``subject_id``, ``session_id`` (other columns are kept).
A listed file that does not exist is still returned: it fails in the batch, with its cause.

DICOM: folders (any nesting, any file names), zip archives (given, or found in a folder) and
manifest rows pointing to a series folder or archive yield one scan per usable series
(:mod:`morphometry.dicom_series`, :mod:`morphometry.dicom_records`): its ``path`` is the series'
folder (or archive) and its ``series`` the :class:`~morphometry.dicom_series.DicomSeries` to
convert; series and files left out come back in :attr:`Survey.skipped`, age and sex in
:attr:`Survey.covariates`. A manifest row's scan_id names its folder's one usable series (several:
``<scan_id>_1``, ``_2``, ... in series order); its subject_id and session_id replace the pseudonyms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from morphometry.dicom_records import DicomNaming, holds_dicom, sort_series
from morphometry.dicom_series import DicomOptions, DicomSeries, Skipped, read_files
from morphometry.errors import InputError
from morphometry.io import is_image_path, strip_image_suffix
from morphometry.tables import read_text_csv

_BIDS_SUB = re.compile(r"^sub-[A-Za-z0-9]+$")
_BIDS_SES = re.compile(r"^ses-[A-Za-z0-9]+$")
DEFAULT_DICOM = DicomOptions()  # hashed ids, key in its default place, no filter, CT left out


@dataclass(frozen=True)
class ScanRecord:
    """One scan to process and its identifiers."""

    path: Path
    scan_id: str
    subject_id: str
    session_id: str | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)
    series: DicomSeries | None = field(default=None, compare=False, hash=False, repr=False)  # a DICOM series


@dataclass(frozen=True)
class Survey:
    """What the inputs hold: scans to segment, DICOM series and files left out, DICOM covariates."""

    records: list[ScanRecord]
    skipped: list[Skipped]
    covariates: list[dict]  # scan_id, subject_id, age (years), sex of each DICOM scan


@dataclass
class _Found:
    records: list[ScanRecord] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    covariates: list[dict] = field(default_factory=list)

    def add(self, other: _Found) -> None:
        self.records += other.records
        self.skipped += other.skipped
        self.covariates += other.covariates


def _bids_ids(path: Path) -> tuple[str | None, str | None]:
    subject = next((p for p in path.parts if _BIDS_SUB.match(p)), None)
    session = next((p for p in path.parts if _BIDS_SES.match(p)), None)
    return subject, session


def _dicom(files: list[Path], naming: DicomNaming, manifest: dict | None = None) -> _Found | None:
    """The DICOM scans of ``files`` (None when they hold no DICOM); ``manifest``: a manifest row's
    ids and extra columns."""
    series, skipped = read_files(files)
    kept, left_out = sort_series(series, naming)
    if not holds_dicom(kept, skipped + left_out):
        return None
    found = _Found(skipped=skipped + left_out)
    manifest = manifest or {}
    for k, scan in enumerate(kept, 1):
        scan_id = manifest.get("scan_id") and (manifest["scan_id"] if len(kept) == 1 else f"{manifest['scan_id']}_{k}")
        rec = ScanRecord(scan.series.folder, scan_id or scan.scan_id, manifest.get("subject_id") or scan.subject_id,
                         manifest.get("session_id") or scan.session_id, {**scan.extra, **manifest.get("extra", {})},
                         scan.series)
        found.records.append(rec)
        found.covariates.append({**scan.covariates, "scan_id": rec.scan_id, "subject_id": rec.subject_id})
    return found


def _from_folder(folder: Path, naming: DicomNaming) -> _Found:
    every = sorted(p for p in folder.rglob("*") if p.is_file()
                   and "derivatives" not in p.relative_to(folder).parts
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    files = [p for p in every if is_image_path(p)]
    found = _dicom([p for p in every if not is_image_path(p)], naming) or _Found()
    stems = [strip_image_suffix(p.name) for p in files]
    records = []
    for p, stem in zip(files, stems):
        if stems.count(stem) > 1:  # same file name in several subfolders: qualify by the path
            stem = strip_image_suffix(str(p.relative_to(folder))).replace("/", "_")
        subject, session = _bids_ids(p.relative_to(folder))
        records.append(ScanRecord(p, stem, subject or stem, session))
    found.records[:0] = records
    return found


def _text(value) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


def _from_manifest(csv: Path, naming: DicomNaming) -> _Found:
    df = read_text_csv(csv, "manifest")
    if "path" not in df.columns:
        raise InputError(f"{csv}: manifest needs a 'path' column (has: {', '.join(df.columns)})")
    found = _Found()
    for i, row in df.iterrows():
        raw = _text(row["path"])
        if raw is None:
            raise InputError(f"{csv}: row {i + 2} has an empty path")
        path = Path(raw) if Path(raw).is_absolute() else csv.parent / raw
        extra = {k: v for k, v in row.items() if k not in ("path", "scan_id", "subject_id", "session_id")}
        if path.is_dir() or _is_archive(path):
            ids = {k: _text(row.get(k)) for k in ("scan_id", "subject_id", "session_id")}
            dicom = _dicom(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path], naming,
                           {**ids, "extra": extra})
            if dicom is None:
                raise InputError(f"{csv}: row {i + 2}: {path} holds no DICOM series")
            found.add(dicom)
            continue
        scan_id = _text(row.get("scan_id")) or strip_image_suffix(path.name)
        subject, session = _bids_ids(path)
        found.records.append(ScanRecord(path, scan_id, _text(row.get("subject_id")) or subject or scan_id,
                                        _text(row.get("session_id")) or session, extra))
    return found


def _is_archive(path: Path) -> bool:
    return path.suffix.lower() == ".zip" and path.is_file()


def survey(inputs: list[str | Path], dicom: DicomOptions = DEFAULT_DICOM) -> Survey:
    """All scans named by ``inputs``, the DICOM series and files left out and the DICOM covariates.
    ``dicom``: how DICOM series are selected and named (the id key is read, or created, only when
    DICOM series are found). InputError on duplicate scan_ids, or when nothing is found."""
    naming = DicomNaming(dicom)
    found = _Found()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            here = _from_folder(path, naming)
            if not here.records and not here.skipped:
                raise InputError(f"{path}: no .nii, .nii.gz, .mgz or DICOM files in this folder")
            found.add(here)
        elif path.suffix.lower() in (".csv", ".tsv") and path.is_file():
            found.add(_from_manifest(path, naming))
        elif path.is_file() and (_is_archive(path) or not is_image_path(path)) and \
                (dicom_found := _dicom([path], naming)) is not None:
            found.add(dicom_found)
        else:
            subject, session = _bids_ids(path)
            stem = strip_image_suffix(path.name)
            found.records.append(ScanRecord(path, stem, subject or stem, session))
    seen: dict[str, ScanRecord] = {}
    for rec in found.records:
        first = seen.setdefault(rec.scan_id, rec)
        same_series = rec.series is not None and first.series is not None and rec.series.uid == first.series.uid
        if first.path != rec.path and not same_series:
            raise InputError(f"duplicate scan_id {rec.scan_id!r}: {first.path} and {rec.path} "
                             "(give scan_ids in a manifest)")
    unique = list(seen.values())
    if not unique and not found.skipped:
        raise InputError("no input scans")
    covariates = list({row["scan_id"]: row for row in found.covariates}.values())
    return Survey(unique, found.skipped, covariates)


def discover(inputs: list[str | Path], dicom: DicomOptions = DEFAULT_DICOM) -> list[ScanRecord]:
    """The scans of :func:`survey`; InputError when there is none (naming why DICOM series were left out)."""
    found = survey(inputs, dicom)
    if not found.records:
        reasons = sorted({s.reason for s in found.skipped})
        raise InputError(f"no usable scans: {len(found.skipped)} series or file(s) left out ({'; '.join(reasons[:3])})")
    return found.records
