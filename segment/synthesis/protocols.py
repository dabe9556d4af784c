"""Clinical acquisition protocols of the cohort simulator: a contrast (tissue intensity template
with jitter), slice spacing and thickness along one axis, bias field, noise and a stored voxel
orientation. Intensities are on the [0, 255] scale of the generative model.

The acquisition blurs each axis with a Gaussian whose FWHM is the slice thickness
(sigma = thickness / 2.3548), samples slices every ``spacing`` mm (in-plane: the anatomy's voxel
size, 1 mm by default; a slice spacing drawn below it is raised to it, which makes the scan
isotropic), adds Gaussian noise, and writes the low-resolution grid with its true affine, its axes
permuted/flipped to a random orientation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from morphometry.orientation import RasAlignment
from morphometry.segment.synthesis.generation_labels import GENERATION_LABELS, SKIN, SKULL, SOFT_TISSUE
from morphometry.segment.synthesis.intensity import BiasParams, GmmParams, bias_field, render_gmm, sample_bias
from morphometry.segment.synthesis.priors import BiasPriors, Uniform
from morphometry.segment.synthesis.resolution import add_noise, blur, subsample

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))

# tissue type of each generation label
_TYPE_OF_LABEL = {
    0: "background", 24: "csf", 14: "csf", 15: "csf", 72: "csf", 4: "csf", 5: "csf", 43: "csf", 44: "csf",
    136: "csf", 137: "csf", 163: "csf", 164: "csf", 2: "wm", 41: "wm", 85: "wm", 3: "gm", 42: "gm",
    17: "gm", 18: "gm", 53: "gm", 54: "gm", 26: "gm", 58: "gm", 11: "caudate", 50: "caudate",
    10: "thalamus", 49: "thalamus", 12: "putamen", 51: "putamen", 13: "pallidum", 52: "pallidum",
    28: "ventral_dc", 60: "ventral_dc", 16: "brainstem", 7: "cerebellum_wm", 46: "cerebellum_wm",
    8: "cerebellum_gm", 47: "cerebellum_gm", 25: "lesion", 57: "lesion", 30: "vessel", 62: "vessel",
    SKULL: "skull", SOFT_TISSUE: "soft_tissue", SKIN: "skin",
}

# mean intensity of each tissue type per contrast ([0, 255] scale)
CONTRASTS: dict[str, dict[str, float]] = {
    "t1": dict(background=2, csf=30, wm=200, gm=120, caudate=135, thalamus=165, putamen=150, pallidum=175,
               ventral_dc=170, brainstem=180, cerebellum_wm=190, cerebellum_gm=125, lesion=110, vessel=60,
               skull=20, soft_tissue=230, skin=150),
    "t2": dict(background=2, csf=230, wm=70, gm=120, caudate=110, thalamus=95, putamen=95, pallidum=70,
               ventral_dc=85, brainstem=90, cerebellum_wm=80, cerebellum_gm=125, lesion=200, vessel=30,
               skull=15, soft_tissue=150, skin=120),
    "flair": dict(background=2, csf=20, wm=110, gm=150, caudate=140, thalamus=125, putamen=130, pallidum=115,
                  ventral_dc=120, brainstem=120, cerebellum_wm=110, cerebellum_gm=150, lesion=230, vessel=20,
                  skull=10, soft_tissue=170, skin=140),
    "pd": dict(background=2, csf=190, wm=140, gm=180, caudate=170, thalamus=160, putamen=165, pallidum=150,
               ventral_dc=155, brainstem=150, cerebellum_wm=140, cerebellum_gm=180, lesion=200, vessel=40,
               skull=20, soft_tissue=200, skin=170),
}
SLICE_AXES = ("sagittal", "coronal", "axial")


@dataclass(frozen=True)
class ProtocolPriors:
    """How protocols are drawn (mm, [0, 255] intensity scale)."""

    contrasts: tuple[str, ...] = ("t1", "t2", "flair", "pd")
    p_isotropic: float = 0.15  # 1 mm isotropic (research-like) scan
    slice_spacing_mm: Uniform = Uniform(1.0, 9.0)
    thickness_fraction: Uniform = Uniform(0.5, 1.0)  # thickness = max(1, fraction * spacing)
    contrast_jitter: float = 0.08  # relative jitter of each class mean
    class_std: Uniform = Uniform(2.0, 6.0)
    bias: BiasPriors = BiasPriors(std=Uniform(0.05, 0.3), scale=0.025, probability=1.0)
    noise_std: Uniform = Uniform(1.0, 8.0)


@dataclass(frozen=True, eq=False)
class Protocol:
    """One acquisition: everything needed to render and write a scan."""

    contrast: str
    slice_axis: int  # RAS array axis drawn for the large spacing
    spacing_mm: np.ndarray  # (3,) along the RAS axes
    thickness_mm: np.ndarray  # (3,)
    gmm: GmmParams
    bias: BiasParams
    noise_std: float
    orientation: RasAlignment  # how the stored array relates to the RAS-aligned one

    def columns(self) -> dict:
        """Manifest columns; the slice axis is the one with the largest spacing (sagittal when
        isotropic, as the header-derived ``slice_axis`` of the VolumesTable)."""
        a = int(np.argmax(self.spacing_mm))
        return {"contrast": self.contrast, "slice_axis": SLICE_AXES[a],
                "slice_spacing_mm": float(self.spacing_mm[a]), "thickness_mm": float(self.thickness_mm[a]),
                "noise_std": round(self.noise_std, 4), "bias_std": round(self.bias.std, 4)}


def _class_means(contrast: str) -> np.ndarray:
    table = GENERATION_LABELS
    means = np.zeros(table.n_classes)
    for value, cls in zip(table.values, table.classes):
        means[cls] = CONTRASTS[contrast][_TYPE_OF_LABEL.get(value, "soft_tissue")]
    return means


def sample_protocol(rng: np.random.Generator, priors: ProtocolPriors, shape: tuple[int, ...],
                    voxel_mm: float) -> Protocol:
    """Draw a protocol for an anatomy of ``shape`` voxels of ``voxel_mm``."""
    contrast = str(priors.contrasts[rng.integers(len(priors.contrasts))])
    axis = int(rng.integers(3))
    spacing = np.full(3, voxel_mm)
    thickness = np.full(3, max(voxel_mm, 1.0))
    if rng.uniform() >= priors.p_isotropic:
        spacing[axis] = max(float(priors.slice_spacing_mm.sample(rng)), voxel_mm)
        fraction = float(priors.thickness_fraction.sample(rng))
        if spacing[axis] > voxel_mm:
            thickness[axis] = max(1.0, fraction * spacing[axis])
    means = _class_means(contrast) * (1 + rng.uniform(-priors.contrast_jitter, priors.contrast_jitter,
                                                      GENERATION_LABELS.n_classes))
    stds = priors.class_std.sample(rng, GENERATION_LABELS.n_classes)
    stds[0] = 0.0
    gmm = GmmParams(np.maximum(means, 0), stds, "zero")
    bias = sample_bias(rng, priors.bias, shape)
    perm = tuple(int(p) for p in rng.permutation(3))
    flips = tuple(bool(f) for f in rng.uniform(size=3) < 0.5)
    return Protocol(contrast, axis, spacing, thickness, gmm, bias, float(priors.noise_std.sample(rng)),
                    RasAlignment(perm, flips))  # type: ignore[arg-type]


def acquire(labels: np.ndarray, affine: np.ndarray, protocol: Protocol,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Scan (float32, stored orientation) and its affine, from a RAS-aligned generation-label map
    with ``affine`` (isotropic voxels)."""
    voxel_mm = float(np.linalg.norm(affine[:3, 0]))
    image = render_gmm(labels, protocol.gmm, GENERATION_LABELS.class_lut, rng)
    field_ = bias_field(protocol.bias, labels.shape)
    if field_ is not None:
        image *= field_
    sigma = protocol.thickness_mm / FWHM_PER_SIGMA / voxel_mm
    step = protocol.spacing_mm / voxel_mm
    low = add_noise(subsample(blur(image, sigma), step), protocol.noise_std, rng)
    np.maximum(low, 0, out=low)
    lr_affine = affine.copy()
    lr_affine[:3, :3] = affine[:3, :3] @ np.diag(step)
    return stored_orientation(low.astype(np.float32), lr_affine, protocol.orientation)


def stored_orientation(aligned: np.ndarray, aligned_affine: np.ndarray,
                       orientation: RasAlignment) -> tuple[np.ndarray, np.ndarray]:
    """The native array whose RAS alignment by ``orientation`` is ``aligned``, and its affine."""
    native = np.ascontiguousarray(orientation.invert(aligned))
    # aligned index i_a = P i_n + o  =>  native affine = aligned affine @ [[P, o], [0, 1]]
    index_map = np.zeros((4, 4))
    index_map[3, 3] = 1.0
    for j, p in enumerate(orientation.perm):
        if orientation.flips[j]:
            index_map[j, p] = -1.0
            index_map[j, 3] = aligned.shape[j] - 1
        else:
            index_map[j, p] = 1.0
    return native, aligned_affine @ index_map
