"""Reading ../shared/fixtures/e2e-original (its README.md): what the original SynthSeg wrote for six
scans in five modes, and the acceptance bounds that README derives from the original's own reruns."""

from __future__ import annotations

import csv
import json
import os
from functools import cache
from pathlib import Path

import nibabel as nib
import numpy as np
from conftest import SHARED

from morphometry.labels import PARCELLATION_LABELS, SEGMENTATION_LABELS, TOTAL_INTRACRANIAL

E2E = SHARED / "fixtures" / "e2e-original"
KERAS = SHARED / "fixtures" / "keras-reference"
WEIGHTS = ("robust_weights.h5", "synthseg_weights.h5", "parc_weights.h5", "qc_weights.h5")
SCANS = ("flair_oblique", "pd_coronal_flipped", "t1_0p96mm", "t1_1mm", "t2_0p8mm", "tiny_1mm")
RESAMPLED_SCANS = ("flair_oblique", "pd_coronal_flipped", "t2_0p8mm")
SMALL_SCANS = ("t2_0p8mm", "tiny_1mm")  # network inputs of 3.3 and 2.1 M voxels (the others: 5.9 to 9.4 M)
FULL = os.environ.get("MORPHO_E2E_FULL") == "1"
"""Run the networks on every scan: 9 to 11 minutes on 2 cores (the small scans alone: 1.5)."""

AFFINE_TOL_MM = 1e-4  # output grid affines
MIN_AGREEMENT = 0.99995  # hard labels, default / fast / parc (the original against itself: >= 0.999997)
VOLUME_ABS_MM3, VOLUME_REL = 10.0, 1e-3  # |v - v_ref| <= 10 mm^3 + 1e-3 v_ref
ROBUST_TOTAL_REL = 5e-3  # robust end to end: total intracranial within 0.5 %
ROBUST_MIN_AGREEMENT = 0.5  # robust end to end: "well over half" (the original's oneDNN rerun: 64-82 %)
QC_TOL = 0.02  # QC scores, end to end
S1_MARGIN = 1e-4  # S1 hand-over voxels whose own top-2 margin is below this may differ
# Parcel labels inside the cortex: the parcellation network reads the argmax of the segmentation
# posteriors over the whole padded volume, where cortex / non-cortex near-ties are common (pd: 21
# voxels with a margin < 1e-6; flipping just these changes 220 parcel labels), so float noise moves
# parcel labels far more than the segmentation's (measured: >= 0.976 of the cortex voxels agree).
MIN_PARCEL_AGREEMENT = 0.95

COLUMN_NAMES = {"total intracranial": TOTAL_INTRACRANIAL,
                **{lab.freesurfer_name: lab.name for lab in SEGMENTATION_LABELS[1:]},
                **{p.freesurfer_name: p.name for p in PARCELLATION_LABELS}}
"""The original's CSV header names -> our table columns."""


def scan_cases() -> list:
    """SCANS as pytest params: every scan runs the networks with MORPHO_E2E_FULL=1, else the small
    ones only (the others marked slow and skipped with the reason)."""
    import pytest

    skip = pytest.mark.skipif(not FULL, reason="runs the networks on a large scan: set MORPHO_E2E_FULL=1")
    return [s if s in SMALL_SCANS else pytest.param(s, marks=[pytest.mark.slow, skip]) for s in SCANS]


def available() -> bool:
    return (E2E / "README.md").is_file() and all((KERAS / w).is_file() for w in WEIGHTS)


@cache
def info() -> dict:
    return json.loads((E2E / "reference_info.json").read_text())


@cache
def volumes(mode: str) -> dict[str, dict[str, float]]:
    """``<mode>/volumes.csv`` as {scan: {our column: value in mm^3}}."""
    with open(E2E / mode / "volumes.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    header = [COLUMN_NAMES[name] for name in rows[0][1:]]
    return {row[0]: dict(zip(header, map(float, row[1:]))) for row in rows[1:]}


@cache
def qc_scores() -> dict[str, dict[str, float]]:
    """``robust/qc.csv`` as {scan: {qc_<group>: score}}."""
    with open(E2E / "robust" / "qc.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    header = ["qc_" + name.replace(" ", "_").replace("+", "_") for name in rows[0][1:]]
    return {row[0]: dict(zip(header, map(float, row[1:]))) for row in rows[1:]}


def segmentation(mode: str, scan: str) -> nib.Nifti1Image:
    return nib.load(str(E2E / mode / f"{scan}_synthseg.nii.gz"))


def input_path(scan: str) -> Path:
    return E2E / "inputs" / f"{scan}.nii.gz"


def posteriors_path(mode: str, scan: str) -> Path:
    return E2E / mode / "posteriors" / f"{scan}_posteriors.nii.gz"


def handover(scan: str) -> Path:
    return E2E / "robust" / "handover" / f"{scan}_handover.npz"


def volume_excess(ours: dict, reference: dict[str, float]) -> dict[str, tuple[float, float]]:
    """Columns outside |v - v_ref| <= 10 mm^3 + 1e-3 v_ref: {column: (ours, reference)}."""
    return {k: (ours[k], v) for k, v in reference.items()
            if not abs(ours[k] - v) <= VOLUME_ABS_MM3 + VOLUME_REL * abs(v)}


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.count_nonzero(a == b)) / a.size


def parcel_split(labels: np.ndarray) -> np.ndarray:
    """Parcel labels (1001..2035) as one 'cortex' value -1: the segmentation a parcellation refines."""
    return np.where(labels >= 1000, -1, labels)
