"""Turning command-line inputs into a list of scans to process.

An input is an image file, a folder (searched recursively; BIDS subject/session taken from
``sub-*``/``ses-*`` path parts, ``derivatives/`` skipped), or a manifest CSV with a ``path``
column and optional ``scan_id``, ``subject_id``, ``session_id`` (other columns are kept).
A listed file that does not exist is still returned: it fails in the batch, with its cause.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from morphometry.errors import InputError
from morphometry.io import is_image_path, strip_image_suffix
from morphometry.tables import read_text_csv

_BIDS_SUB = re.compile(r"^sub-[A-Za-z0-9]+$")
_BIDS_SES = re.compile(r"^ses-[A-Za-z0-9]+$")


@dataclass(frozen=True)
class ScanRecord:
    """One scan to process and its identifiers."""

    path: Path
    scan_id: str
    subject_id: str
    session_id: str | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)


def _bids_ids(path: Path) -> tuple[str | None, str | None]:
    subject = next((p for p in path.parts if _BIDS_SUB.match(p)), None)
    session = next((p for p in path.parts if _BIDS_SES.match(p)), None)
    return subject, session


def _from_folder(folder: Path) -> list[ScanRecord]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_path(p)
                   and "derivatives" not in p.relative_to(folder).parts
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    stems = [strip_image_suffix(p.name) for p in files]
    records = []
    for p, stem in zip(files, stems):
        if stems.count(stem) > 1:  # same file name in several subfolders: qualify by the path
            stem = strip_image_suffix(str(p.relative_to(folder))).replace("/", "_")
        subject, session = _bids_ids(p.relative_to(folder))
        records.append(ScanRecord(p, stem, subject or stem, session))
    return records


def _text(value) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


def _from_manifest(csv: Path) -> list[ScanRecord]:
    df = read_text_csv(csv, "manifest")
    if "path" not in df.columns:
        raise InputError(f"{csv}: manifest needs a 'path' column (has: {', '.join(df.columns)})")
    records = []
    for i, row in df.iterrows():
        raw = _text(row["path"])
        if raw is None:
            raise InputError(f"{csv}: row {i + 2} has an empty path")
        path = Path(raw) if Path(raw).is_absolute() else csv.parent / raw
        scan_id = _text(row.get("scan_id")) or strip_image_suffix(path.name)
        subject, session = _bids_ids(path)
        extra = {k: v for k, v in row.items() if k not in ("path", "scan_id", "subject_id", "session_id")}
        records.append(ScanRecord(path, scan_id, _text(row.get("subject_id")) or subject or scan_id,
                                  _text(row.get("session_id")) or session, extra))
    return records


def discover(inputs: list[str | Path]) -> list[ScanRecord]:
    """All scans named by ``inputs``; InputError on duplicate scan_ids or an empty result."""
    records: list[ScanRecord] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = _from_folder(path)
            if not found:
                raise InputError(f"{path}: no .nii, .nii.gz or .mgz files in this folder")
            records += found
        elif path.suffix.lower() in (".csv", ".tsv") and path.is_file():
            records += _from_manifest(path)
        else:
            subject, session = _bids_ids(path)
            stem = strip_image_suffix(path.name)
            records.append(ScanRecord(path, stem, subject or stem, session))
    seen: dict[str, Path] = {}
    for rec in records:
        if rec.scan_id in seen and seen[rec.scan_id] != rec.path:
            raise InputError(f"duplicate scan_id {rec.scan_id!r}: {seen[rec.scan_id]} and {rec.path} "
                             "(give scan_ids in a manifest)")
        seen[rec.scan_id] = rec.path
    unique = list({rec.scan_id: rec for rec in records}.values())
    if not unique:
        raise InputError("no input scans")
    return unique
