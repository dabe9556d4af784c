"""Converting one DICOM series to NIfTI with dcm2niix (the ``dcm2niix`` wheel's binary).

dcm2niix is the reference converter: it assembles mosaics, enhanced multi-frame files, gantry
tilt and variable slice spacing into a correct NIfTI geometry. The series' files (or its zip
members) are linked (extracted) into a private folder and converted there with no sidecar
(``-b n``); where dcm2niix writes a corrected volume besides the raw one (``_Eq``: missing or
unequal slices resampled to equal spacing; ``_Tilt``: gantry tilt undone) the corrected one is
taken. The result is written with a header of geometry and voxels only (description, aux file
and intent name emptied, no extensions), so that nothing from the DICOM tags travels with it.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import zipfile
from collections import defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np

from morphometry.atomic import atomic_write
from morphometry.dicom_series import DicomSeries
from morphometry.errors import InputError

TIMEOUT_S = 600  # one series
_PREFERRED = ("_Eq", "_Tilt")  # corrected outputs of dcm2niix, taken before the raw one
_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name")


def dcm2niix_binary() -> str:
    """Path of the dcm2niix binary of the ``dcm2niix`` package; InputError when it is missing."""
    try:
        import dcm2niix
    except ImportError:
        raise InputError("DICOM input needs the dcm2niix package (pip install dcm2niix)") from None
    if not Path(dcm2niix.bin).is_file():
        raise InputError(f"{dcm2niix.bin}: the dcm2niix package has no binary for this platform")
    return dcm2niix.bin


def _stage(series: DicomSeries, folder: Path) -> None:
    """Put the series' files into ``folder``: links to plain files, extracted zip members."""
    folder.mkdir()
    members = defaultdict(list)
    for i, file in enumerate(series.files):
        target = folder / f"{i:06d}.dcm"
        if file.member is None:
            os.symlink(file.source.resolve(), target)
        else:
            members[file.source].append((file.member, target))
    for archive, names in members.items():
        with zipfile.ZipFile(archive) as zf:
            for member, target in names:
                target.write_bytes(zf.read(member))


def _pick(outputs: list[Path]) -> Path:
    for marker in _PREFERRED:
        found = [p for p in outputs if marker in p.name]
        if found:
            return found[0]
    return min(outputs, key=lambda p: len(p.name))


def dicom_order(data: np.ndarray, affine: np.ndarray, series: DicomSeries) -> tuple[np.ndarray, np.ndarray]:
    """dcm2niix's voxels and affine back in the series' own voxel order, on its exact grid: i along
    a row, j down a column, k from the first slice (lowest InstanceNumber, or first frame) to the
    last; voxel steps and origin computed in float64 from the header (:meth:`DicomSeries.geometry`).
    dcm2niix flips rows and reorients 3-D volumes, and its float32 arithmetic reads an oblique
    1.5 mm slice step as 1.4999996 mm; both change the working grid of the segmentation. Where a
    dcm2niix axis or origin matches no header vector within 1e-3 mm (mosaics, tilt-corrected or
    equalised volumes) its output is kept as it is."""
    geometry = series.geometry()
    if geometry is None or data.ndim != 3:
        return data, affine
    steps, origin = geometry
    axes, signs = [], []
    for j in range(3):
        distances = {(d, sign): np.linalg.norm(affine[:3, j] - sign * steps[:, d])
                     for d in range(3) for sign in (1, -1)}
        (d, sign), distance = min(distances.items(), key=lambda item: item[1])
        if distance > 1e-3 or d in axes:
            return data, affine
        axes.append(d)
        signs.append(sign)
    ordered = np.transpose(data, np.argsort(axes))  # dcm2niix axis j holds header axis axes[j]
    flips = tuple(d for j, d in enumerate(axes) if signs[j] < 0)
    ordered = np.flip(ordered, flips) if flips else ordered
    exact = np.eye(4)
    exact[:3, :3], exact[:3, 3] = steps, origin
    # dcm2niix's first voxel is the header's voxel at the far end of every flipped axis
    first = nib.affines.apply_affine(exact, [0 if signs[axes.index(d)] > 0 else ordered.shape[d] - 1 for d in range(3)])
    if np.linalg.norm(first - affine[:3, 3]) > 1e-3:
        return data, affine
    return np.ascontiguousarray(ordered), exact


def clean_image(img: nib.Nifti1Image, series: DicomSeries | None = None) -> nib.Nifti1Image:
    """The voxels (scaled as stored) and geometry of ``img`` (in the order of :func:`dicom_order`
    when ``series`` is given) under a header without text fields."""
    header = img.header.copy()
    for name in _TEXT_FIELDS:
        if name in header:
            header[name] = b""
    header.extensions.clear()
    data, affine = np.asanyarray(img.dataobj), img.affine
    if series is not None:
        data, affine = dicom_order(data, affine, series)
    header.set_data_dtype(data.dtype)
    header.set_data_shape(data.shape)
    header.set_sform(affine, int(header["sform_code"]) or 1)  # nibabel keeps a header affine close to the new one
    header.set_qform(affine, int(header["qform_code"]) or 1)
    return nib.Nifti1Image(data, affine, header)


def convert_series(series: DicomSeries, dest: Path, name: str) -> None:
    """Convert ``series`` to the NIfTI file ``dest`` (written atomically). ``name`` (the scan id)
    starts every error message; InputError when dcm2niix fails or writes no volume."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    binary = dcm2niix_binary()
    with tempfile.TemporaryDirectory(prefix=".convert-", dir=dest.parent) as tmp:
        inputs, outputs = Path(tmp) / "in", Path(tmp) / "out"
        try:
            _stage(series, inputs)
        except (OSError, zipfile.BadZipFile) as exc:
            raise InputError(f"{name}: cannot read the series' files ({type(exc).__name__}: {exc})") from None
        outputs.mkdir()
        args = [binary, "-b", "n", "-z", "n", "-f", "series", "-o", str(outputs), "-i", "n", "-d", "0",
                "-w", "1", "-x", "n", str(inputs)]
        try:
            done = subprocess.run(args, capture_output=True, text=True, errors="replace", timeout=TIMEOUT_S,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise InputError(f"{name}: dcm2niix took over {TIMEOUT_S} s") from None
        written = sorted(outputs.glob("*.nii"))
        if done.returncode != 0 or not written:
            errors = [line.strip() for line in (done.stdout + done.stderr).splitlines() if "error" in line.lower()]
            cause = errors[-1] if errors else f"exit code {done.returncode}, no volume written"
            raise InputError(f"{name}: dcm2niix could not convert the series ({cause.replace(tmp, '')})")
        img = clean_image(nib.load(str(_pick(written))), series)
        atomic_write(dest, lambda path: nib.save(img, str(path)), suffix=".nii.gz")
