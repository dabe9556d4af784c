"""Reading training label maps: RAS alignment, integer check, generation-label check, and trimming
of the empty border (a 256^3 map is about half background; the head with a margin is kept)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from morphometry.errors import DataError
from morphometry.segment.synthesis.generation_labels import GENERATION_LABELS, GenerationLabels


def trim_to_head(labels: np.ndarray, margin: int = 8) -> np.ndarray:
    """Crop to the bounding box of non-zero labels plus ``margin`` voxels (within the array)."""
    box = []
    for axis in range(3):
        occupied = np.flatnonzero(np.any(labels != 0, axis=tuple(a for a in range(3) if a != axis)))
        if occupied.size == 0:
            return labels
        box.append(slice(max(int(occupied[0]) - margin, 0), min(int(occupied[-1]) + margin + 1, labels.shape[axis])))
    return labels[tuple(box)]


def check_generation_labels(labels: np.ndarray, source: str, table: GenerationLabels = GENERATION_LABELS) -> None:
    """DataError naming ``source`` when a value is not a generation label."""
    unknown = table.unknown_values(np.unique(labels))
    if unknown:
        shown = ", ".join(str(v) for v in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise DataError(f"{source}: label values not in the generation label table: {shown}")


def read_label_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Integer labels (int32, native voxel order) and affine of a label image; InputError/DataError."""
    from morphometry.io import load_scan

    scan = load_scan(path)
    rounded = np.rint(scan.data)
    if not np.array_equal(rounded, scan.data):
        raise DataError(f"{path}: not a label map (non-integer voxel values)")
    return rounded.astype(np.int32), scan.affine


def load_label_map(path: str | Path, margin: int = 8) -> np.ndarray:
    """A training label map: RAS-aligned, checked against the generation labels, trimmed (int16)."""
    from morphometry.orientation import ras_alignment

    labels, affine = read_label_volume(path)
    check_generation_labels(labels, str(path))
    aligned = np.ascontiguousarray(ras_alignment(affine).apply(labels))
    return trim_to_head(aligned, margin).astype(np.int16)
