"""The volumes and QC CSV files of ``mri_synthseg`` (``--vol``, ``--qc``), in the original's layout.

Layout (the original's ``SynthSeg/predict_synthseg.py``, function ``write_csv``, as the files of
``shared/fixtures/e2e-original`` show): Python ``csv`` with ``\\r\\n`` line ends;

* volumes: ``subject``, ``total intracranial`` (SynthSeg 2.0 only), the structures in ascending
  label order under their original names (``left cerebral white matter``, ..., ``csf`` (2.0
  only), ..., ``right ventral DC``), with parcellation the 68 parcels (``ctx-lh-bankssts`` ...
  ``ctx-rh-insula``). Values in mm^3 as ``str`` of a float32 (``3947861.0``, ``109773.71``).
* QC: ``subject`` and the 8 QC groups (``general white matter`` ... ``hippocampus+amygdala``),
  scores written ``%.4f``.

One file for many subjects has the header row, then one row per subject. A subject's own file (the
original's ``.txt`` input lists) has a first row with an empty cell and the names, then the row.

Parcel volumes sum, in the original's files, to the cerebral white matter (labels 2 + 41) for
SynthSeg 2.0 (an off-by-one of the original that its files keep) and to the cerebral cortex
(3 + 42) for SynthSeg 1.0. A volumes table whose parcels sum to the other reference is rescaled
here (the parcels keep their proportions; all are 0 when the reference is 0).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from morphometry.atomic import atomic_write
from morphometry.labels import PARCELLATION_LABELS, QC_GROUPS, SYNTHSEG_1, SYNTHSEG_2, TOTAL_INTRACRANIAL, LabelSet

QC_NAMES = ("general white matter", "general grey matter", "general csf", "cerebellum", "brainstem", "thalamus",
            "putamen+pallidum", "hippocampus+amygdala")  # the original's names of QC_GROUPS[1:]
REFERENCE_STRUCTURES = {  # parcel reference -> the structures whose volumes the parcels sum to
    "white_matter": ("left_cerebral_white_matter", "right_cerebral_white_matter"),
    "cortex": ("left_cerebral_cortex", "right_cerebral_cortex"),
}


def original_reference(v1: bool) -> str:
    """The parcel reference of the original's files: ``white_matter`` (2.0) or ``cortex`` (1.0)."""
    return "cortex" if v1 else "white_matter"
LINE_END = "\r\n"


def structure_labels(v1: bool) -> LabelSet:
    """The label set of a version's volume columns (1.0 has no CSF)."""
    return SYNTHSEG_1 if v1 else SYNTHSEG_2


def volume_columns(parc: bool, v1: bool = False) -> list[tuple[str, str]]:
    """(column of the original's CSV, column of the volumes table) after ``subject``, in order."""
    columns = [] if v1 else [("total intracranial", TOTAL_INTRACRANIAL)]
    columns += [(lab.freesurfer_name, lab.name) for lab in structure_labels(v1).labels if lab.value != 0]
    if parc:
        columns += [(p.freesurfer_name, p.name) for p in PARCELLATION_LABELS]
    return columns


def qc_columns() -> list[tuple[str, str]]:
    """(column of the original's QC CSV, column of the volumes table) after ``subject``."""
    return [(name, f"qc_{group}") for name, group in zip(QC_NAMES, QC_GROUPS[1:])]


def volume_values(row: Mapping, parc: bool, v1: bool = False, parcel_reference: str = "white_matter") -> list[str]:
    """One subject's volumes (a volumes-table row, mm^3) as the original writes them;
    ``parcel_reference``: what the row's parcels sum to (``white_matter`` or ``cortex``)."""
    values = {table: float(row[table]) for _, table in volume_columns(parc, v1)}
    if parc and parcel_reference != original_reference(v1):
        values.update(rescaled_parcels(row, original_reference(v1)))
    return [format_volume(values[table]) for _, table in volume_columns(parc, v1)]


def rescaled_parcels(row: Mapping, reference: str) -> dict[str, float]:
    """The 68 parcel volumes of ``row`` rescaled to sum to the ``reference`` structures (mm^3)."""
    parcels = np.array([float(row[p.name]) for p in PARCELLATION_LABELS], dtype=np.float64)
    target = sum(float(row[name]) for name in REFERENCE_STRUCTURES[reference])
    total = parcels.sum()
    scaled = parcels * (target / total) if total > 0 else np.zeros_like(parcels)
    return {p.name: round(float(v), 3) for p, v in zip(PARCELLATION_LABELS, scaled)}


def format_volume(value: float) -> str:
    """The original's text of a float32 volume: ``str()`` of a NumPy 1.x float32 scalar, the
    shortest digits that read back as the same float32; positional with at least one decimal
    (``3947861.0``) for 0 and 1e-4 <= |v| < 1e16, else scientific (``1e-05``). NumPy 2 writes
    float32 values from 1e6 up in scientific notation, so the rule is spelled out here."""
    v = np.float32(value)
    if v == 0 or 1e-4 <= abs(v) < 1e16:
        return np.format_float_positional(v, unique=True, trim="0")
    return np.format_float_scientific(v, unique=True, trim="-")


def qc_values(row: Mapping) -> list[str]:
    """One subject's QC scores as the original writes them (clipped to [0, 1], ``%.4f``)."""
    return ["%.4f" % float(np.clip(float(row[table]), 0.0, 1.0)) for _, table in qc_columns()]


def write_volumes_csv(path: str | Path, rows: Iterable[tuple[str, Mapping]], parc: bool, v1: bool = False,
                      parcel_reference: str = "white_matter") -> None:
    """The volumes CSV of many subjects: header row, then one row per (subject, table row)."""
    header = ["subject"] + [name for name, _ in volume_columns(parc, v1)]
    _write(path, [header] + [[subject] + volume_values(row, parc, v1, parcel_reference) for subject, row in rows])


def write_subject_volumes_csv(path: str | Path, subject: str, row: Mapping, parc: bool, v1: bool = False,
                              parcel_reference: str = "white_matter") -> None:
    """One subject's own volumes CSV (``.txt`` input lists): an empty cell and the names, then the row."""
    header = [""] + [name for name, _ in volume_columns(parc, v1)]
    _write(path, [header, [subject] + volume_values(row, parc, v1, parcel_reference)])


def write_qc_csv(path: str | Path, rows: Iterable[tuple[str, Mapping]]) -> None:
    """The QC CSV of many subjects: header row, then one row per (subject, table row)."""
    header = ["subject"] + [name for name, _ in qc_columns()]
    _write(path, [header] + [[subject] + qc_values(row) for subject, row in rows])


def write_subject_qc_csv(path: str | Path, subject: str, row: Mapping) -> None:
    """One subject's own QC CSV (``.txt`` input lists)."""
    _write(path, [[""] + [name for name, _ in qc_columns()], [subject] + qc_values(row)])


def _write(path: str | Path, lines: list[list[str]]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            csv.writer(fh, lineterminator=LINE_END).writerows(lines)

    atomic_write(path, write, suffix=".csv")
