"""Alignment of voxel arrays to RAS by axis permutation and flips only (no resampling).

For an affine A, world axis j (Right, Anterior, Superior) is assigned the voxel axis with the
largest |coefficient| in column j of inv(A)[:3, :3]; if two world axes pick the same voxel axis,
the voxel axis left over replaces the last of the repeated picks. After permuting, every axis whose
diagonal affine element is negative is flipped. This is the original SynthSeg rule
(``ext/lab2im/edit_volumes.py``: ``get_ras_axes``); for non-oblique affines it equals nibabel's
closest canonical orientation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AXIS_NAMES = ("sagittal", "coronal", "axial")  # slice axis = R-L, A-P, S-I voxel axis after alignment


@dataclass(frozen=True)
class RasAlignment:
    """``aligned = flip(transpose(native, perm), flips)``; ``perm[j]`` = native axis of RAS axis j."""

    perm: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Native -> RAS-aligned; extra trailing axes (channels) are kept in place."""
        order = list(self.perm) + list(range(3, array.ndim))
        out = np.transpose(array, order)
        flip_axes = tuple(j for j in range(3) if self.flips[j])
        return np.flip(out, flip_axes) if flip_axes else out

    def invert(self, array: np.ndarray) -> np.ndarray:
        """RAS-aligned -> native voxel order."""
        flip_axes = tuple(j for j in range(3) if self.flips[j])
        out = np.flip(array, flip_axes) if flip_axes else array
        inverse = list(np.argsort(self.perm)) + list(range(3, array.ndim))
        return np.transpose(out, inverse)

    def aligned_affine(self, affine: np.ndarray, native_shape: tuple[int, ...]) -> np.ndarray:
        """Affine of the RAS-aligned array (maps aligned voxel indices to the same world points)."""
        out = affine[:, list(self.perm) + [3]].copy()
        aligned_shape = [native_shape[p] for p in self.perm]
        for j in range(3):
            if self.flips[j]:
                out[:, 3] += out[:, j] * (aligned_shape[j] - 1)
                out[:, j] = -out[:, j]
        return out


def ras_alignment(affine: np.ndarray) -> RasAlignment:
    """The permutation/flip that brings voxel axes closest to RAS (original SynthSeg rule)."""
    inv = np.linalg.inv(affine[:3, :3])
    picks = [int(np.argmax(np.abs(inv[:, j]))) for j in range(3)]
    while len(set(picks)) < 3:  # twice when all three world axes pick the same voxel axis
        values, counts = np.unique(picks, return_counts=True)
        repeated = int(values[np.argmax(counts)])
        missing = ({0, 1, 2} - set(picks)).pop()
        last = max(i for i, p in enumerate(picks) if p == repeated)
        picks[last] = missing
    perm = tuple(picks)
    permuted = affine[:3, :3][:, list(perm)]
    flips = tuple(bool(permuted[j, j] < 0) for j in range(3))
    return RasAlignment(perm, flips)  # type: ignore[arg-type]
