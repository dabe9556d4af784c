"""Soft volumes: the sum of a structure's final posteriors times the voxel volume (mm^3)."""

from __future__ import annotations

import numpy as np

from morphometry.labels import PARCELLATION_LABELS, QC_GROUPS, TOTAL_INTRACRANIAL, LabelSet

DECIMALS = 3  # volumes are rounded to 1e-3 mm^3, as the original


def soft_volumes(posteriors: np.ndarray, label_set: LabelSet, voxel_volume_mm3: float) -> dict[str, float]:
    """Structure volumes (mm^3) from posteriors (C, x, y, z) over the whole image, plus
    ``total_intracranial`` = sum of every non-background structure (CSF included)."""
    sums = posteriors.reshape(posteriors.shape[0], -1).sum(axis=1, dtype=np.float64) * voxel_volume_mm3
    volumes = {lab.name: float(s) for lab, s in zip(label_set.labels, sums) if lab.value != 0}
    total = sum(volumes.values())
    return {TOTAL_INTRACRANIAL: round(total, DECIMALS), **{k: round(v, DECIMALS) for k, v in volumes.items()}}


def parcel_volumes(parcel_sums: np.ndarray, cortex_mm3: float) -> dict[str, float]:
    """Parcel volumes (mm^3): the 68 parcel posterior sums rescaled to sum to the cortex volume."""
    scale = cortex_mm3 / parcel_sums.sum() if parcel_sums.sum() > 0 else 0.0
    return {p.name: round(float(s * scale), DECIMALS) for p, s in zip(PARCELLATION_LABELS, parcel_sums)}


def qc_scores(raw: np.ndarray) -> dict[str, float]:
    """QC network outputs (9) -> ``qc_<group>`` scores of groups 1..8, clipped to [0, 1], 4 decimals."""
    return {f"qc_{name}": round(float(np.clip(v, 0, 1)), 4) for name, v in zip(QC_GROUPS[1:], raw[1:])}
