"""Label maps for evaluation: reading and checking them, and bringing two onto one voxel grid.

A label map is a 3-D integer image (NIfTI/MGZ on disk or a nibabel image in memory) with its
affine (voxel -> world mm). Two maps on different grids are compared after resampling one into
the other's grid through their affines with nearest neighbour.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from morphometry.errors import DataError, InputError
from morphometry.io import IMAGE_SUFFIXES, is_image_path

MAX_LABEL_VALUE = 65535
IN_MEMORY = "<in-memory image>"


@dataclass(frozen=True)
class LabelImage:
    """An integer label map with its affine (voxel -> world mm); ``path`` names it in messages."""

    path: Path | str
    data: np.ndarray
    affine: np.ndarray

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


def is_image(obj) -> bool:
    """Whether ``obj`` is an in-memory nibabel image (anything with an affine and voxel data)."""
    return isinstance(obj, nib.spatialimages.SpatialImage)


def load_labels(source, name: str | None = None) -> LabelImage:
    """Read a 3-D label map from a path (NIfTI/MGZ) or a nibabel image; InputError/DataError
    naming the file (or ``name`` of an in-memory image) and the cause."""
    if is_image(source):
        return labels_from_image(source, name or IN_MEMORY)
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{path}: label map not found")
    if not is_image_path(path):
        raise InputError(f"{path}: not an image file (expected {', '.join(IMAGE_SUFFIXES)})")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for a bad file
        raise InputError(f"{path}: not a readable label map ({type(exc).__name__}: {exc})") from None
    return labels_from_image(img, path)


def labels_from_image(img, name: Path | str) -> LabelImage:
    """Check a nibabel image as a 3-D label map (integer values 0..65535, a regular affine)."""
    try:
        data = np.asarray(img.dataobj)
    except Exception as exc:  # truncated or corrupt voxel data
        raise InputError(f"{name}: not a readable label map ({type(exc).__name__}: {exc})") from None
    if data.ndim > 3 and all(s == 1 for s in data.shape[3:]):
        data = data.reshape(data.shape[:3])
    if data.ndim != 3:
        raise InputError(f"{name}: a 3-D label map is required (shape {data.shape})")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(f"{name}: singular or non-finite affine")
    return LabelImage(name, _as_labels(name, data), affine)


def _as_labels(name, data: np.ndarray) -> np.ndarray:
    if not np.issubdtype(data.dtype, np.integer):
        if not np.issubdtype(data.dtype, np.floating) or not np.all(np.isfinite(data)):
            raise DataError(f"{name}: label map has non-numeric or non-finite values")
        rounded = np.rint(data)
        if np.max(np.abs(data - rounded), initial=0.0) > 1e-3:
            raise DataError(f"{name}: label map has non-integer values (is it an intensity image?)")
        data = rounded
    lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
    if lo < 0 or hi > MAX_LABEL_VALUE:
        raise DataError(f"{name}: label values must lie in 0..{MAX_LABEL_VALUE} (found {lo}..{hi})")
    return np.ascontiguousarray(data, dtype=np.int32)


def same_grid(a: LabelImage, b: LabelImage, atol_mm: float = 1e-4) -> bool:
    return a.data.shape == b.data.shape and np.allclose(a.affine, b.affine, atol=atol_mm)


def resample_nearest(source: LabelImage, shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """Labels of ``source`` at the voxel centres of the grid (shape, affine); 0 outside its field of view."""
    to_source = np.linalg.inv(source.affine) @ np.asarray(affine, dtype=np.float64)
    return ndimage.affine_transform(source.data, to_source[:3, :3], offset=to_source[:3, 3],
                                    output_shape=tuple(shape), order=0, mode="constant", cval=0,
                                    output=np.int32)


def on_common_grid(pred: LabelImage, ref: LabelImage, grid: str) -> tuple[np.ndarray, np.ndarray, tuple, str]:
    """(pred voxels, ref voxels, spacing mm, which side was resampled: ``none``/``prediction``/``reference``).

    ``grid`` is ``reference`` or ``prediction``: the grid the other map is resampled into.
    """
    if same_grid(pred, ref):
        return pred.data, ref.data, ref.spacing_mm, "none"
    target, source = (ref, pred) if grid == "reference" else (pred, ref)
    moved = resample_nearest(source, target.data.shape, target.affine)
    if np.any(source.data) and not np.any(moved):
        raise DataError(f"{pred.path} and {ref.path} do not overlap in world space (check their affines)")
    if grid == "reference":
        return moved, ref.data, ref.spacing_mm, "prediction"
    return pred.data, moved, pred.spacing_mm, "reference"
