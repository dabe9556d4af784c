"""Loading and checking scans.

``load_scan`` reads a NIfTI (.nii, .nii.gz) or MGZ/MGH file, checks it and returns a 3-D float32
array with its affine and acquisition facts; ``check_image`` applies the same checks to a nibabel
image held in memory. Every problem becomes an :class:`InputError` with a
one-line cause; recoverable oddities (a 4-D series, non-finite voxels, very few slices) become
warnings carried on the scan. The image size is checked from the header, before any voxel is
read, so an absurd header cannot exhaust memory.

Voxel values are in physical units (the header's scl_slope / scl_inter applied, as the original's
``get_fdata``). An in-memory NIfTI image gets the affine its file would hold (the sform rounded to
the header's float32), so it is segmented exactly as the same image saved and loaded.
``output_image`` / ``save_image`` write results the original's way: with the input's header, which
nibabel rewrites where the affine changed (a resampled grid gets sform_code 2, qform_code 0 and
1 mm pixdims; a native grid keeps the input's codes and pixdims), in the on-disk type asked for
(int32 labels unscaled, float32 posteriors) or, by default, the input's own (the ``--resample``
image: int16 inputs give int16 files with a scl_slope / scl_inter chosen by nibabel).
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from morphometry.atomic import atomic_write
from morphometry.errors import InputError
from morphometry.orientation import AXIS_NAMES, RasAlignment, ras_alignment

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mgz", ".mgh")


@dataclass(frozen=True)
class LoadLimits:
    """Guards applied before reading voxels."""

    max_voxels: int = 1024**3  # 1 Gi voxels (4 GiB as float32)
    min_slices: int = 4  # fewer voxels than this along an axis is a 2-D image
    few_slices: int = 10  # up to this many voxels along an axis gives a warning


@dataclass(frozen=True)
class ScanInfo:
    """Acquisition facts of a scan (voxel sizes in mm, along R, A, S after alignment)."""

    shape: tuple[int, int, int]  # native voxel grid
    zooms: tuple[float, float, float]  # header voxel sizes of the native axes, mm
    ras_spacing: tuple[float, float, float]  # voxel size along left-right, posterior-anterior, inferior-superior
    alignment: RasAlignment

    @property
    def ras_shape(self) -> tuple[int, int, int]:
        return tuple(self.shape[p] for p in self.alignment.perm)  # type: ignore[return-value]

    @property
    def slice_spacing(self) -> float:
        """Largest voxel size, mm."""
        return float(max(self.ras_spacing))

    @property
    def slice_axis(self) -> str:
        """``sagittal`` | ``coronal`` | ``axial``: the RAS axis with the largest spacing."""
        return AXIS_NAMES[int(np.argmax(self.ras_spacing))]

    def acquisition_columns(self) -> dict:
        sx, sy, sz = self.ras_spacing
        nx, ny, nz = self.ras_shape
        return {
            "spacing_x_mm": sx, "spacing_y_mm": sy, "spacing_z_mm": sz,
            "slice_spacing_mm": self.slice_spacing, "slice_axis": self.slice_axis,
            "shape_x": nx, "shape_y": ny, "shape_z": nz,
        }


@dataclass
class Scan:
    """A loaded scan: float32 voxels in native order, affine (voxel -> world mm), header."""

    path: Path
    data: np.ndarray
    affine: np.ndarray
    header: object
    info: ScanInfo
    warnings: list[str] = field(default_factory=list)


def is_image_path(path: Path) -> bool:
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def strip_image_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _open(path: Path):
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    if not is_image_path(path):
        raise InputError(f"{path}: not an image file (expected {', '.join(IMAGE_SUFFIXES)})")
    try:
        return nib.load(str(path))
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except Exception as exc:  # nibabel raises many types for a malformed file
        raise InputError(f"{path}: not a readable NIfTI/MGZ image ({_short(exc)})") from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _check_geometry(path: Path, img, limits: LoadLimits) -> tuple[tuple[int, ...], list[str]]:
    shape = tuple(int(s) for s in img.shape)
    warnings: list[str] = []
    if len(shape) < 3:
        raise InputError(f"{path}: {len(shape)}-D image, a 3-D volume is required (shape {shape})")
    extra = shape[3:]
    if any(s > 1 for s in extra[1:]):
        raise InputError(f"{path}: {len(shape)}-D image with several non-singleton extra axes (shape {shape})")
    if extra and extra[0] > 1:
        warnings.append(f"4-D image with {extra[0]} volumes: using the first")
    if any(s <= 0 for s in shape):
        raise InputError(f"{path}: empty image (shape {shape})")
    spatial = shape[:3]
    if min(spatial) < limits.min_slices:
        raise InputError(f"{path}: 2-D image or too few slices (shape {spatial}); a 3-D volume is required")
    if int(np.prod(spatial, dtype=np.int64)) > limits.max_voxels:
        raise InputError(f"{path}: absurd dimensions {spatial} ({np.prod(spatial, dtype=np.int64):,} voxels "
                         f"> limit {limits.max_voxels:,})")
    if min(spatial) <= limits.few_slices:
        warnings.append(f"very few slices (shape {spatial}); results may be poor")
    return spatial, warnings


def _stored_zooms(img, file: Path | None) -> tuple[float, ...]:
    """Voxel sizes as stored in the header. nibabel silently replaces zero or negative NIfTI pixdims by
    1 or their absolute value when loading, so the header of a NIfTI ``file`` is re-read without that
    fix (an image in memory has no file: its header is taken as it is)."""
    if isinstance(img, nib.Nifti1Image):
        header = img.header
        if file is not None:
            with nib.openers.ImageOpener(str(file)) as fh:
                header = type(img.header)(fh.read(img.header.sizeof_hdr), check=False)
        return tuple(float(z) for z in header["pixdim"][1:4])
    return tuple(float(z) for z in img.header.get_zooms()[:3])


def _check_affine(path: Path, img, file: Path | None) -> tuple[np.ndarray, tuple[float, float, float]]:
    # an image made in memory without an affine is saved (and reloaded) with the header's best affine
    affine = np.asarray(img.affine if img.affine is not None else img.header.get_best_affine(), dtype=np.float64)
    if file is None and isinstance(img, nib.Nifti1Image):  # as saved: the sform in the header's type
        affine = affine.astype(img.header["srow_x"].dtype).astype(np.float64)
    if not np.all(np.isfinite(affine)):
        raise InputError(f"{path}: non-finite values in the affine")
    zooms = _stored_zooms(img, file)
    if not all(np.isfinite(zooms)) or min(zooms) <= 0:
        raise InputError(f"{path}: zero or negative voxel size in the header {zooms}")
    lin = affine[:3, :3]
    norms = np.linalg.norm(lin, axis=0)
    if np.any(norms <= 1e-6) or abs(np.linalg.det(lin)) <= 1e-9 * np.prod(norms):
        raise InputError(f"{path}: singular affine (voxel axes are degenerate)")
    return affine, zooms  # type: ignore[return-value]


def _read_voxels(path: Path, img, n_extra: int) -> np.ndarray:
    try:
        if n_extra:
            data = np.asarray(img.dataobj[(slice(None),) * 3 + (0,) * n_extra])
        else:
            data = np.asarray(img.dataobj)
    except MemoryError:
        raise InputError(f"{path}: not enough memory to read the image") from None
    except (EOFError, OSError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise InputError(f"{path}: truncated or corrupt image data ({_short(exc)})") from None
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == bool):
        raise InputError(f"{path}: unsupported voxel type {data.dtype}")
    if np.iscomplexobj(data):
        raise InputError(f"{path}: complex-valued image")
    return data.astype(np.float32, copy=False)


def load_scan(path: str | Path, limits: LoadLimits = LoadLimits()) -> Scan:
    """Read and check one scan; raise InputError with the file and the cause.

    Non-finite voxels (NaN, +-Inf) are set to 0 with a warning; an image with no finite voxel, or
    whose finite voxels are all equal (all-zero or constant), is refused.
    """
    path = Path(path)
    return _checked_scan(_open(path), path, limits, file=path)


def check_image(img, name: str | Path = "image", limits: LoadLimits = LoadLimits()) -> Scan:
    """Check a nibabel image held in memory (Nifti1Image, Nifti2Image, MGHImage, ...) with the rules
    of :func:`load_scan`; ``name`` (its file, or a label) starts every error message and becomes the
    scan's ``path``."""
    if not isinstance(img, nib.spatialimages.SpatialImage):
        raise InputError(f"{name}: expected a nibabel image (e.g. Nifti1Image, MGHImage), got {type(img).__name__}")
    return _checked_scan(img, Path(name), limits, file=None)


def _checked_scan(img, path: Path, limits: LoadLimits, file: Path | None) -> Scan:
    """The checks of a loaded or in-memory image; ``path`` names it in messages, ``file`` is where it
    was read from (None in memory)."""
    shape, warnings = _check_geometry(path, img, limits)
    affine, zooms = _check_affine(path, img, file)
    data = _read_voxels(path, img, len(img.shape) - 3)
    finite = np.isfinite(data)
    n_bad = int(data.size - np.count_nonzero(finite))
    if n_bad == data.size:
        raise InputError(f"{path}: no finite voxel (all NaN/Inf)")
    if n_bad:
        data = np.where(finite, data, np.float32(0))
        warnings.append(f"{n_bad} NaN/Inf voxels set to 0")
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        what = "all-zero" if lo == 0 else f"constant ({lo:g})"
        raise InputError(f"{path}: image is {what}")
    alignment = ras_alignment(affine)
    ras_spacing = tuple(zooms[p] for p in alignment.perm)
    info = ScanInfo(shape=shape, zooms=zooms, ras_spacing=ras_spacing, alignment=alignment)  # type: ignore[arg-type]
    return Scan(path=path, data=data, affine=affine, header=img.header, info=info, warnings=warnings)


def output_image(array: np.ndarray, affine: np.ndarray, header=None, dtype=None) -> nib.Nifti1Image:
    """A NIfTI image of ``array`` on ``affine`` as the original writes its outputs.

    ``header``: the input scan's header (NIfTI or MGH; module docstring for what nibabel keeps and
    rewrites), or None for a fresh header with mm units. ``dtype``: the on-disk voxel type, e.g.
    ``np.int32`` for labels (written unscaled) or ``np.float32``; None keeps the header's type (the
    input's; nibabel then picks a scl_slope / scl_inter for integer types) or, without a header,
    the array's.
    """
    img = nib.Nifti1Image(np.ascontiguousarray(array), affine, header)
    if header is None:
        img.header.set_xyzt_units("mm")
    if dtype is not None:
        img.set_data_dtype(dtype)
    return img


def save_image(array: np.ndarray, affine: np.ndarray, path: str | Path, header=None, dtype=None) -> None:
    """Write :func:`output_image` as .nii or .nii.gz atomically (temporary file in the same folder, then
    rename)."""
    path = Path(path)
    img = output_image(array, affine, header, dtype)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    atomic_write(path, lambda tmp: nib.save(img, str(tmp)), suffix=suffix)
