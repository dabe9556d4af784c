"""Random spatial deformation: affine (rotation, scaling, shearing, translation) composed with a
diffeomorphism integrated from a smooth stationary velocity field (``ext/lab2im/layers.py``:
``RandomSpatialDeformation``).

Pull-back convention: with c = (n - 1) / 2 per axis and u the dense displacement at output voxel
x, the source position is ``M (x - c + u(x)) + c + t`` (voxels = mm for 1 mm maps), M = S Shear R.
The velocity field has ceil(nonlin_scale * n) control points per axis with values ~ N(0, std^2)
voxels. The original integrates those values as half-resolution voxels and applies the result
unscaled as full-resolution voxels, which matches to first order but is not exactly a group
exponential; here the same values are integrated as full-resolution voxels, so the displacement
magnitudes agree with the original's and the transform is a true diffeomorphism whose inverse is
exp(-v). Integration is by scaling and squaring on a coarse grid (three points per control point
interval, plenty for a field this smooth); the result is resized to the output with separable
linear interpolation (matrix products), so a whole-head warp costs little more than the lookup.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from morphometry.segment.synthesis.priors import SpatialPriors


@dataclass(frozen=True, eq=False)
class DeformationParams:
    """Every sampled quantity of one spatial deformation."""

    rotation_deg: np.ndarray  # (3,) about array axes 0, 1, 2, degrees
    scaling: np.ndarray  # (3,)
    shearing: np.ndarray  # (6,) [h0..h5] of [[1, h0, h1], [h2, 1, h3], [h4, h5, 1]]
    translation_mm: np.ndarray  # (3,) voxels of the 1 mm map
    nonlin_std: float  # std of the velocity control points, voxels
    velocity: np.ndarray  # (k0, k1, k2, 3) control points, voxels
    integration_steps: int

    @classmethod
    def identity(cls, shape: tuple[int, ...]) -> "DeformationParams":
        return cls(np.zeros(3), np.ones(3), np.zeros(6), np.zeros(3), 0.0,
                   np.zeros((*control_shape(shape, 0.04), 3), np.float32), 7)


def control_shape(shape: tuple[int, ...], scale: float) -> tuple[int, int, int]:
    """Number of velocity control points per axis (at least 2)."""
    return tuple(max(2, math.ceil(scale * n)) for n in shape[:3])  # type: ignore[return-value]


def sample_deformation(rng: np.random.Generator, priors: SpatialPriors, shape: tuple[int, ...]) -> DeformationParams:
    """Draw an affine and a velocity field for a map of ``shape`` voxels."""
    rotation = np.asarray(priors.rotation_deg.sample(rng, 3), dtype=np.float64)
    scaling = np.asarray(priors.scaling.sample(rng, 3), dtype=np.float64)
    shearing = np.asarray(priors.shearing.sample(rng, 6), dtype=np.float64)
    translation = np.asarray(priors.translation_mm.sample(rng, 3), dtype=np.float64)
    std = float(priors.nonlin_std.sample(rng))
    k = control_shape(shape, priors.nonlin_scale)
    velocity = (rng.standard_normal((*k, 3)) * std).astype(np.float32)
    return DeformationParams(rotation, scaling, shearing, translation, std, velocity, priors.integration_steps)


def affine_matrix(params: DeformationParams) -> np.ndarray:
    """M = S . Shear . R with R = Rx Ry Rz (3 x 3)."""
    ax, ay, az = np.deg2rad(params.rotation_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    h = params.shearing
    shear = np.array([[1, h[0], h[1]], [h[2], 1, h[3]], [h[4], h[5], 1]])
    return np.diag(params.scaling) @ shear @ rx @ ry @ rz


def interpolation_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) linear interpolation, corners aligned (out 0 -> in 0, out n-1 -> in n-1)."""
    w = np.zeros((n_out, n_in), dtype=np.float32)
    if n_in == 1 or n_out == 1:
        w[:, 0] = 1.0
        return w
    pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1))
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - lo
    rows = np.arange(n_out)
    w[rows, lo] = 1.0 - frac
    w[rows, lo + 1] += frac
    return w


def resize_block(array: np.ndarray, full: tuple[int, ...], start: tuple[int, ...], size: tuple[int, ...]) -> np.ndarray:
    """Linear resize of a 3-D array to the grid ``full`` (corners aligned), evaluated only on the
    block ``start : start + size`` (float32)."""
    mats = [interpolation_matrix(array.shape[a], full[a])[start[a]: start[a] + size[a]] for a in range(3)]
    out = np.asarray(array, dtype=np.float32) @ mats[2].T  # (a0, a1, s2)
    out = mats[1] @ out  # (a0, s1, s2)
    a0 = out.shape[0]
    return (mats[0] @ out.reshape(a0, -1)).reshape(size[0], size[1], size[2])


def integrate_velocity(params: DeformationParams, shape: tuple[int, ...]) -> np.ndarray:
    """Displacement (c0, c1, c2, 3) on a coarse grid spanning the map, in voxels of the map.

    Scaling and squaring: v <- v / 2^steps, then ``steps`` times v <- v + v o (id + v) with
    linear interpolation clamped at the border.
    """
    k = params.velocity.shape[:3]
    coarse = tuple(max(8, 3 * ki) for ki in k)
    # coarse-grid voxel size, in voxels of the map
    unit = np.array([(n - 1) / (c - 1) for n, c in zip(shape[:3], coarse)], dtype=np.float32)
    v = np.stack([resize_block(params.velocity[..., a], coarse, (0, 0, 0), coarse) for a in range(3)], axis=-1)
    v = v / unit / np.float32(2 ** params.integration_steps)
    grid = np.stack(np.meshgrid(*[np.arange(c, dtype=np.float32) for c in coarse], indexing="ij"))
    for _ in range(params.integration_steps):
        pos = grid + np.moveaxis(v, -1, 0)
        v = v + np.stack([ndi.map_coordinates(v[..., a], pos, order=1, mode="nearest") for a in range(3)], axis=-1)
    return v * unit


def source_coordinates(params: DeformationParams, shape: tuple[int, ...], out_shape: tuple[int, ...] | None = None,
                       offset: tuple[int, ...] = (0, 0, 0)) -> np.ndarray:
    """Source voxel positions (3, *out_shape) float32 of the output block at ``offset`` of a
    deformed map of ``shape`` (output grid = input grid, optionally cropped).

    The full transform is evaluated on the coarse grid and resized linearly: exact for the affine
    part (linear interpolation reproduces linear functions), and the same interpolation as the
    displacement alone would get.
    """
    out_shape = tuple(shape[:3]) if out_shape is None else tuple(out_shape)
    m = affine_matrix(params)
    centre = (np.asarray(shape[:3], dtype=np.float64) - 1) / 2
    if params.nonlin_std > 0:
        disp = integrate_velocity(params, shape).astype(np.float64)
    else:
        disp = np.zeros((2, 2, 2, 3))
    coarse = disp.shape[:3]
    # full-resolution position of each coarse point, relative to the centre
    axes = [np.arange(c) * ((n - 1) / (c - 1)) - cn for c, n, cn in zip(coarse, shape[:3], centre)]
    rel = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1) + disp
    field = rel @ m.T + centre + params.translation_mm  # (c0, c1, c2, 3)
    coords = np.empty((3, *out_shape), dtype=np.float32)
    for a in range(3):
        coords[a] = resize_block(field[..., a], shape, offset, out_shape)
    return coords


def warp_labels(labels: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Nearest-neighbour pull-back, border values repeated outside the map."""
    return ndi.map_coordinates(labels, coords, order=0, mode="nearest")


def warp_image(image: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Trilinear pull-back (float32), border values repeated outside the image."""
    return ndi.map_coordinates(np.asarray(image, dtype=np.float32), coords, order=1, mode="nearest", prefilter=False)


def jacobian_determinant(coords: np.ndarray) -> np.ndarray:
    """det(d source / d x) by central differences, on a (3, ...) coordinate field."""
    grads = np.stack([np.stack(np.gradient(coords[a].astype(np.float64)), axis=-1) for a in range(3)], axis=-2)
    return np.linalg.det(grads)
