"""Soft volumes: the sum of a structure's final posteriors times the voxel volume (mm^3).

The arithmetic is the original's, to the last bit: each channel is summed in float32, voxel after
voxel, in the order NumPy walks the original's posteriors (the padded RAS-aligned array, x outer and
z inner, each axis in the direction of the scan's own voxel index; parcels in the RAS direction);
the sums, "total intracranial" (the sum of the 32 structure sums) and the rescaled parcel sums are
multiplied by the voxel volume and rounded to 3 decimals, all in float32. Float32 accumulation
loses the small posteriors added to a large running sum, so a float64 sum is larger by up to 0.3 %
(csf, total intracranial) on a whole head; the published volumes carry that bias, and so do these.
With a crop the original pastes the posteriors into a float64 array, so its structure volumes are
float64 sums: pass ``dtype=numpy.float64`` to :func:`channel_sums` for them.

Table values are the results as Python floats rounded to 3 decimals: ``numpy.float32(value)``
gives back a float32 result, whose ``str()`` is what the original's CSV holds.
"""

from __future__ import annotations

import numpy as np

from morphometry.labels import PARCELLATION_LABELS, QC_GROUPS, TOTAL_INTRACRANIAL, LabelSet

DECIMALS = 3  # volumes are rounded to 1e-3 mm^3, as the original
PARCEL_REFERENCES = ("white_matter", "cortex")
"""What the 68 parcel volumes are rescaled to sum to: the cerebral white matter (labels 2 + 41, what
the original does, reading its volume vector one place too early) or the cerebral cortex (3 + 42,
what it meant to do)."""
_REFERENCE_VALUES = {"white_matter": (2, 41), "cortex": (3, 42)}
_SLAB_VOXELS = 1 << 16  # voxels per block of the float32 running sum


def channel_sums(posteriors: np.ndarray, reverse: tuple[bool, bool, bool] = (False, False, False),
                 dtype=np.float32) -> np.ndarray:
    """Sum of every channel of (C, x, y, z) posteriors in ``dtype``, accumulated voxel by voxel with
    x outer and z inner, an axis walked from its last index down where ``reverse`` says so.

    This is ``numpy.sum(p, axis=(0, 1, 2))`` of the original's channels-last array viewed in the
    scan's voxel order (NumPy follows the memory order and keeps each view's direction): pass the
    RAS alignment's ``flips`` (the original sums the parcellation unflipped).
    """
    n = posteriors.shape[0]
    flipped = tuple(a + 1 for a in range(3) if reverse[a])
    view = np.flip(posteriors, flipped) if flipped else posteriors
    total = np.zeros(n, dtype=dtype)
    rows = max(1, _SLAB_VOXELS // max(1, view.shape[3]))
    block = np.empty((1 + rows * view.shape[3], n), dtype=dtype)
    for x in range(view.shape[1]):
        for y in range(0, view.shape[2], rows):
            part = view[:, x, y:y + rows].reshape(n, -1)
            count = part.shape[1]
            block[0] = total
            block[1:1 + count] = part.T
            # reducing the leading axis of a C-ordered (voxels, channels) block adds row after row
            total = np.add.reduce(block[:1 + count], axis=0)
    return total


def soft_volumes(posteriors: np.ndarray, label_set: LabelSet, voxel_volume_mm3: float,
                 reverse: tuple[bool, bool, bool] = (False, False, False)) -> dict[str, float]:
    """Structure volumes (mm^3) from posteriors (C, x, y, z) over the whole image, plus
    ``total_intracranial`` = sum of every non-background structure (CSF included); summed as
    :func:`channel_sums` with ``reverse``."""
    return volumes_from_sums(channel_sums(posteriors, reverse), label_set, voxel_volume_mm3)


def volumes_from_sums(sums: np.ndarray, label_set: LabelSet, voxel_volume_mm3: float) -> dict[str, float]:
    """:func:`soft_volumes` from the channel sums (voxels; float32, or float64 for a crop), computed in
    their type."""
    structures = np.asarray(sums)[1:]
    values = np.concatenate([np.sum(structures, keepdims=True), structures])
    names = (TOTAL_INTRACRANIAL,) + tuple(lab.name for lab in label_set.labels[1:])
    return dict(zip(names, _scaled(values, voxel_volume_mm3)))


def parcel_volumes(parcel_sums: np.ndarray, segmentation_sums: np.ndarray, label_set: LabelSet,
                   voxel_volume_mm3: float, reference: str = "white_matter") -> dict[str, float]:
    """Parcel volumes (mm^3) from the float32 sums of the 68 parcel channels: rescaled (in float32) to
    sum to the ``reference`` structures' sums (:data:`PARCEL_REFERENCES`) of ``segmentation_sums``
    (all segmentation channels, :func:`channel_sums`), then times the voxel volume in the type of
    ``segmentation_sums``. All 0 when the reference is 0."""
    if reference not in _REFERENCE_VALUES:
        raise ValueError(f"reference must be one of {PARCEL_REFERENCES}, got {reference!r}")
    sums = np.asarray(parcel_sums, dtype=np.float32)
    seg = np.asarray(segmentation_sums)
    target = np.sum(seg[[label_set.channel_of(v) for v in _REFERENCE_VALUES[reference]]])
    total = np.sum(sums)
    rescaled = sums / total * np.float32(target) if total > 0 else np.zeros_like(sums)
    return dict(zip((p.name for p in PARCELLATION_LABELS), _scaled(rescaled.astype(seg.dtype), voxel_volume_mm3)))


def _scaled(sums: np.ndarray, voxel_volume_mm3: float) -> list[float]:
    """Sums (voxels) x voxel volume, rounded to 3 decimals, in the sums' type -> Python floats."""
    values = np.around(sums * sums.dtype.type(voxel_volume_mm3), DECIMALS)
    return [round(float(v), DECIMALS) for v in values]


def qc_scores(raw: np.ndarray) -> dict[str, float]:
    """QC network outputs (9) -> ``qc_<group>`` scores of groups 1..8, clipped to [0, 1], 4 decimals."""
    return {f"qc_{name}": round(float(np.clip(v, 0, 1)), 4) for name, v in zip(QC_GROUPS[1:], raw[1:])}
