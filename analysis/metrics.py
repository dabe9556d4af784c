"""Overlap and surface-distance metrics between two label maps on one voxel grid.

A small, exact metric module. Definitions (pinned; stated again in the README and in the
metadata of ``metrics.parquet`` through :data:`DEFINITIONS`):

* **Dice** of a structure: ``2 |A ∩ B| / (|A| + |B|)`` over voxels.
* **Boundary** of a mask: the voxels of the mask removed by one 6-connected (face) erosion, with
  everything outside the array counted as background.
* **Surface distances**: for every boundary voxel of A, the Euclidean distance in mm (voxel
  spacing applied per axis) from its centre to the nearest boundary-voxel centre of B, and
  vice versa: the values of a Euclidean distance transform of the other boundary with the voxel
  spacing. They are computed on the union bounding box of A and B padded by one background voxel
  on every side, so boundary voxels lying on the box faces are kept, and exactly (shared boundary
  voxels at 0, face neighbours at the finest spacing, the rest by k-d tree look-up).
* **MSD** (mean symmetric surface distance, mm), default ``"mean_of_means"``: the mean of the two
  directed mean distances, ``(mean(A->B) + mean(B->A)) / 2`` as in the SynthSeg+ paper's own
  evaluation (which worked in voxel units and dropped the crop-face voxels).
  ``"pooled"``: the mean over both sets of distances together, as MedPy 0.5 ``assd`` and MONAI's
  symmetric option compute.
* **HD95** (mm): the 95th percentile (linear interpolation) of both sets of distances pooled,
  as MedPy 0.5 ``hd95`` and SynthSeg's evaluation compute.
* A structure empty in exactly one map has Dice 0 and NaN distances with a status flag; a
  structure empty in both is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

MSD_MODES = ("mean_of_means", "pooled")

OK = "ok"
MISSING_IN_PREDICTION = "missing_in_prediction"
MISSING_IN_REFERENCE = "missing_in_reference"

DEFINITIONS = {
    "dice": "2|A∩B| / (|A|+|B|) over voxels",
    "boundary": "mask voxels removed by one 6-connected erosion; outside the array is background",
    "surface_distance": ("Euclidean distance in mm (voxel spacing per axis) from each boundary voxel "
                         "centre to the nearest boundary voxel centre of the other mask (= exact EDT of "
                         "the other boundary), on the union bounding box padded by one voxel"),
    "msd_mean_of_means": "(mean(pred->ref) + mean(ref->pred)) / 2, mm",
    "msd_pooled": "mean of both directed distance sets pooled (MedPy 0.5 assd), mm",
    "hd95": "95th percentile (linear interpolation) of both directed distance sets pooled, mm",
    "empty": "structure empty in one map: dice 0, distances NaN, status flag; empty in both: skipped",
}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks (NaN when both are empty)."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    if total == 0:
        return float("nan")
    return 2.0 * int(np.count_nonzero(a & b)) / total


def boundary(mask: np.ndarray) -> np.ndarray:
    """Voxels of a boolean mask removed by one 6-connected erosion (outside counts as background)."""
    padded = np.pad(mask, 1)
    core = padded[1:-1, 1:-1, 1:-1].copy()
    for axis in range(3):
        for shift in (0, 2):
            index = [slice(1, -1)] * 3
            index[axis] = slice(shift, shift + mask.shape[axis])
            core &= padded[tuple(index)]
    return mask & ~core


@dataclass(frozen=True)
class SurfaceDistances:
    """Directed surface distances (mm) between masks A and B: one value per boundary voxel."""

    a_to_b: np.ndarray
    b_to_a: np.ndarray

    def mean_a_to_b(self) -> float:
        return float(self.a_to_b.mean())

    def mean_b_to_a(self) -> float:
        return float(self.b_to_a.mean())

    def msd(self, mode: str = "mean_of_means") -> float:
        """Mean symmetric surface distance (mm); ``mode`` is one of :data:`MSD_MODES`."""
        if mode == "mean_of_means":
            return 0.5 * (self.mean_a_to_b() + self.mean_b_to_a())
        if mode == "pooled":
            return float(np.concatenate([self.a_to_b, self.b_to_a]).mean())
        raise ValueError(f"unknown MSD mode {mode!r}; expected one of {MSD_MODES}")

    def hausdorff(self, percentile: float = 95.0) -> float:
        """Percentile (linear interpolation) of both directed distance sets pooled, mm."""
        return float(np.percentile(np.concatenate([self.a_to_b, self.b_to_a]), percentile))


def _union_box(a_box: tuple[slice, ...] | None, b_box: tuple[slice, ...] | None) -> tuple[slice, ...]:
    boxes = [box for box in (a_box, b_box) if box is not None]
    return tuple(slice(min(box[i].start for box in boxes), max(box[i].stop for box in boxes))
                 for i in range(3))


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    found = ndimage.find_objects(mask.astype(np.uint8))
    return found[0] if found else None


def surface_distances(a: np.ndarray, b: np.ndarray, spacing_mm) -> SurfaceDistances:
    """Directed surface distances (mm) between two non-empty boolean masks on one grid.

    ``spacing_mm`` is the voxel size along each array axis. Raises ValueError if a mask is empty.
    """
    a_box, b_box = _bounding_box(a), _bounding_box(b)
    if a_box is None or b_box is None:
        raise ValueError("surface distances need two non-empty masks")
    box = _union_box(a_box, b_box)
    return cropped_surface_distances(np.pad(a[box], 1), np.pad(b[box], 1), spacing_mm)


def _next_to(edge: np.ndarray, axes) -> np.ndarray:
    """Voxels with a face neighbour along one of ``axes`` in ``edge`` (array padded by one voxel)."""
    near = np.zeros_like(edge)
    inner = (slice(1, -1),) * 3
    for axis in axes:
        for step in (-1, 1):
            index = list(inner)
            index[axis] = slice(1 + step, edge.shape[axis] - 1 + step)
            near[inner] |= edge[tuple(index)]
    return near


def _directed(from_edge: np.ndarray, to_edge: np.ndarray, to_tree: cKDTree, spacing: np.ndarray) -> np.ndarray:
    """Distance (mm) from each ``from_edge`` voxel to the nearest ``to_edge`` voxel, in C order.

    Shortcuts that keep the result exact: a voxel on both boundaries is at 0; a voxel whose face
    neighbour along a finest axis is on the other boundary is at the smallest spacing, the least
    non-zero distance between voxel centres. The rest are looked up in the k-d tree.
    """
    finest = np.flatnonzero(spacing == spacing.min())
    distances = np.where(to_edge[from_edge], 0.0, spacing.min())
    far = from_edge & ~to_edge & ~_next_to(to_edge, finest)
    points = np.argwhere(far) * spacing
    if len(points):
        distances[far[from_edge]] = to_tree.query(points)[0]
    return distances


def cropped_surface_distances(a: np.ndarray, b: np.ndarray, spacing_mm) -> SurfaceDistances:
    """Surface distances of two non-empty masks already cropped and padded by one voxel.

    The nearest-boundary distance is exact: boundary voxels shared by both masks get 0 and the
    others are looked up in a k-d tree of the other boundary's voxel centres (in mm), which gives
    the values of a Euclidean distance transform of that boundary with the voxel spacing.
    """
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    edge_a, edge_b = boundary(a), boundary(b)
    tree_a = cKDTree(np.argwhere(edge_a) * spacing)
    tree_b = cKDTree(np.argwhere(edge_b) * spacing)
    return SurfaceDistances(a_to_b=_directed(edge_a, edge_b, tree_b, spacing),
                            b_to_a=_directed(edge_b, edge_a, tree_a, spacing))


@dataclass(frozen=True)
class StructureMetrics:
    """Metrics of one label value between a prediction (A) and a reference (B)."""

    label: int
    dice: float
    msd_mm: float
    hd95_mm: float
    mean_pred_to_ref_mm: float
    mean_ref_to_pred_mm: float
    pred_voxels: int
    ref_voxels: int
    status: str


def _label_boxes(labels: np.ndarray) -> list:
    if labels.size and int(labels.min()) < 0:
        raise ValueError("negative label values")
    return ndimage.find_objects(labels) if labels.size else []


def _box(boxes: list, value: int) -> tuple[slice, ...] | None:
    return boxes[value - 1] if 0 < value <= len(boxes) else None


def _crop_padded(labels: np.ndarray, box: tuple[slice, ...], value: int) -> np.ndarray:
    return np.pad(labels[box] == value, 1)


def label_metrics(pred: np.ndarray, ref: np.ndarray, spacing_mm, values, msd_mode: str = "mean_of_means"
                  ) -> list[StructureMetrics]:
    """Metrics for each label value in ``values`` between two integer label maps on one grid.

    Each label is cropped to the union of its bounding boxes in both maps (padded by one voxel),
    so the cost is one erosion and one distance transform per label and side. Labels empty in
    both maps are left out of the result.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"label maps differ in shape: {pred.shape} vs {ref.shape}")
    if msd_mode not in MSD_MODES:
        raise ValueError(f"unknown MSD mode {msd_mode!r}; expected one of {MSD_MODES}")
    pred_boxes, ref_boxes = _label_boxes(pred), _label_boxes(ref)
    results = []
    for value in (int(v) for v in values):
        pred_box, ref_box = _box(pred_boxes, value), _box(ref_boxes, value)
        if pred_box is None and ref_box is None:
            continue
        box = _union_box(pred_box, ref_box)
        a, b = _crop_padded(pred, box, value), _crop_padded(ref, box, value)
        n_a, n_b = int(np.count_nonzero(a)), int(np.count_nonzero(b))
        if n_a == 0 or n_b == 0:
            status = MISSING_IN_PREDICTION if n_a == 0 else MISSING_IN_REFERENCE
            nan = float("nan")
            results.append(StructureMetrics(value, 0.0, nan, nan, nan, nan, n_a, n_b, status))
            continue
        dist = cropped_surface_distances(a, b, spacing_mm)
        results.append(StructureMetrics(
            label=value, dice=dice(a, b), msd_mm=dist.msd(msd_mode), hd95_mm=dist.hausdorff(95.0),
            mean_pred_to_ref_mm=dist.mean_a_to_b(), mean_ref_to_pred_mm=dist.mean_b_to_a(),
            pred_voxels=n_a, ref_voxels=n_b, status=OK))
    return results
