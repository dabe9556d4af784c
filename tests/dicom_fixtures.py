"""DICOM series written with pydicom from synthetic volumes, for the tests of DICOM input.

A volume ``data`` (x, y, z) on a NIfTI ``affine`` (voxel -> RAS mm) becomes one slice per z: the
DICOM column index runs along x, the row index along y (patient coordinates are LPS, the
negated R and A of RAS). The same array saved as NIfTI on the same affine is the reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
LPS = np.diag([-1.0, -1.0, 1.0])

# identifying tags hold distinctive strings, so that a test can look for them in every output byte
PATIENT = {"PatientName": "Zyxquor^Wilhelmina", "PatientID": "PIDQX918273", "PatientBirthDate": "19500310",
           "PatientSex": "F", "PatientAge": "065Y", "StudyDate": "20150402",
           "AccessionNumber": "ACCQX5550123", "InstitutionName": "Qoppa Memorial Infirmary",
           "InstitutionAddress": "77 Vexillum Lane Qoppaville", "ReferringPhysicianName": "Dr^Xanthippus",
           "OtherPatientIDs": "OPIDQX4471", "StudyID": "STIDQX31"}
IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName",
               "InstitutionAddress", "ReferringPhysicianName", "OtherPatientIDs", "StudyID")


def _ds(number: float) -> str:
    """A DICOM decimal string of ``number`` (at most 16 characters)."""
    text = f"{number:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _geometry(affine: np.ndarray) -> tuple[list[str], list[str], float, list[np.ndarray]]:
    lin = np.asarray(affine, float)[:3, :3]
    sizes = np.linalg.norm(lin, axis=0)
    row_dir, col_dir = LPS @ lin[:, 0] / sizes[0], LPS @ lin[:, 1] / sizes[1]
    iop = [_ds(v) for v in (*row_dir, *col_dir)]
    pixel_spacing = [_ds(sizes[1]), _ds(sizes[0])]
    return iop, pixel_spacing, float(sizes[2]), [row_dir, col_dir]


def _position(affine: np.ndarray, k: int) -> list[str]:
    return [_ds(v) for v in LPS @ (np.asarray(affine, float) @ [0, 0, k, 1])[:3]]


def _base(sop_class: str, study: dict, series_uid: str, tags: dict) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.Modality = "MR"
    ds.Manufacturer = "ACME"
    ds.ManufacturerModelName = "Imager 3000"
    ds.MagneticFieldStrength = "3"
    ds.StudyInstanceUID = study["StudyInstanceUID"]
    ds.FrameOfReferenceUID = study["FrameOfReferenceUID"]
    ds.SeriesInstanceUID = series_uid
    ds.StudyTime = "101500"
    ds.SeriesNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
    ds.MRAcquisitionType = "3D"
    ds.RepetitionTime = "2300"
    ds.EchoTime = "2.98"
    ds.InversionTime = "900"
    ds.FlipAngle = "9"
    ds.SeriesDescription = "t1_mprage_sag"
    for key, value in {**PATIENT, **tags}.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    return ds


def _pixels(ds: Dataset, frame: np.ndarray) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.Rows, ds.Columns = int(frame.shape[-2]), int(frame.shape[-1])
    ds.PixelData = np.ascontiguousarray(frame.astype("<i2")).tobytes()


def study_uids() -> dict:
    """UIDs shared by the series of one study."""
    return {"StudyInstanceUID": generate_uid(), "FrameOfReferenceUID": generate_uid()}


def write_series(folder: Path, data: np.ndarray, affine: np.ndarray, study: dict, *, tags: dict | None = None,
                 skip: tuple[int, ...] = (), names=None, per_slice=None, modality_class: str = MR_STORAGE,
                 series_uid: str | None = None) -> str:
    """One classic single-frame DICOM file per slice of int16 ``data`` into ``folder``; returns the
    SeriesInstanceUID (``series_uid``, or a new one). ``skip``: slice indices left out;
    ``names(k)``: file name of slice k (default ``IM{k:04d}``, no extension); ``per_slice(k)``:
    extra tags of slice k; ``tags``: series tags (None as a value removes a tag)."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    iop, spacing, thickness, _ = _geometry(affine)
    for k in range(data.shape[2]):
        if k in skip:
            continue
        ds = _base(modality_class, study, series_uid, tags or {})
        uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SOPInstanceUID = uid
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = iop
        ds.ImagePositionPatient = _position(affine, k)
        ds.PixelSpacing = spacing
        ds.SliceThickness = _ds(thickness)
        for key, value in (per_slice(k) if per_slice else {}).items():
            setattr(ds, key, value)
        _pixels(ds, data[:, :, k].T)
        ds.save_as(folder / (names(k) if names else f"IM{k:04d}"), enforce_file_format=True)
    return series_uid


def write_multiframe(path: Path, data: np.ndarray, affine: np.ndarray, study: dict, *, tags: dict | None = None) -> str:
    """One enhanced MR multi-frame file of int16 ``data`` (a frame per z); returns the SeriesInstanceUID.
    Timing parameters live in the functional groups, as enhanced files hold them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    iop, spacing, thickness, _ = _geometry(affine)
    ds = _base(ENHANCED_MR_STORAGE, study, series_uid, tags or {})
    for key in ("RepetitionTime", "EchoTime", "InversionTime", "FlipAngle"):
        delattr(ds, key)
    uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SOPInstanceUID = uid
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime, ds.AcquisitionDateTime = "20150402", "101600", "20150402101600"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.NumberOfFrames = data.shape[2]
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing, measures.SliceThickness = spacing, _ds(thickness)
    measures.SpacingBetweenSlices = _ds(thickness)
    orientation = Dataset()
    orientation.ImageOrientationPatient = iop
    timing = Dataset()
    timing.RepetitionTime, timing.FlipAngle = 2300.0, 9.0
    echo = Dataset()
    echo.EffectiveEchoTime = 2.98
    modifiers = Dataset()
    modifiers.InversionTimes = [900.0]
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.MRTimingAndRelatedParametersSequence = Sequence([timing])
    shared.MREchoSequence = Sequence([echo])
    shared.MRModifierSequence = Sequence([modifiers])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    dim_uid = generate_uid()
    index = []
    for tag, group in ((0x00209056, 0x00209111), (0x00209057, 0x00209111)):
        item = Dataset()
        item.DimensionOrganizationUID, item.DimensionIndexPointer, item.FunctionalGroupPointer = dim_uid, tag, group
        index.append(item)
    ds.DimensionIndexSequence = Sequence(index)
    frames = []
    for k in range(data.shape[2]):
        frame = Dataset()
        content = Dataset()
        content.StackID, content.InStackPositionNumber, content.DimensionIndexValues = "1", k + 1, [1, k + 1]
        position = Dataset()
        position.ImagePositionPatient = _position(affine, k)
        frame.FrameContentSequence = Sequence([content])
        frame.PlanePositionSequence = Sequence([position])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    _pixels(ds, np.moveaxis(data, 2, 0).transpose(0, 2, 1))
    ds.save_as(path, enforce_file_format=True)
    return series_uid
