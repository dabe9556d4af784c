"""DICOM inputs: files found in folder trees and zip archives, grouped into series, classified.

Every file of a tree (any nesting, any name; hidden files, ``derivatives/`` and NIfTI/MGZ images
left aside) and every member of a zip archive is read with pydicom (header only; the pixel data's
length is checked against rows x columns x frames). Files are grouped by SeriesInstanceUID (a
SOPInstanceUID met twice counts once). A series is left out, with the first reason that applies
(:meth:`DicomSeries.reason`), when it does not pass ``--series-filter``; holds no pixel data or
is a secondary capture / screenshot; is not MR (CT is kept with ``ct``); is a localiser
(ImageType LOCALIZER or SCOUT); is derived (ImageType DERIVED: reformats, maps, projections);
has slices that disagree in orientation or size; has fewer than :data:`MIN_SLICES` slice
positions; is a 4-D series (several images per slice position: diffusion, perfusion, multi-echo
or functional time series) or diffusion weighted. A kept series with irregular slice spacing (missing slices) is flagged
(:meth:`DicomSeries.flags`). Files that are not DICOM, truncated files, DICOMDIR indexes and
unreadable archives become :class:`Skipped` lines.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from morphometry.errors import InputError

MIN_SLICES = 4  # fewer slice positions: a localiser or a 2-D image (io.LoadLimits.min_slices)
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # and its multi-frame variants .7.1 ... .7.4
PIXEL_DATA = 0x7FE00010
_ROUND_MM = 2  # decimals of mm when positions are compared
_DIFFUSION = re.compile(r"dwi|dti|diff|tensor|tracew|\badc\b", re.IGNORECASE)
_PERFUSION = re.compile(r"perf|dsc|dce|\basl\b|pcasl|pasl", re.IGNORECASE)


@dataclass(frozen=True)
class DicomOptions:
    """How DICOM inputs are selected and named: ``series_filter`` (:class:`SeriesFilter` text),
    ``ct`` (keep CT series), ``keep_identifiers`` (write patient identifiers as columns),
    ``id_key`` (key file of :mod:`morphometry.identity`; None: its default place)."""

    series_filter: str | None = None
    ct: bool = False
    keep_identifiers: bool = False
    id_key: Path | None = None


@dataclass(frozen=True)
class DicomFile:
    """A DICOM file: ``source`` itself, or member ``member`` of the zip archive ``source``."""

    source: Path
    member: str | None = None

    def __str__(self) -> str:
        return str(self.source) if self.member is None else f"{self.source}!{self.member}"

    def read_bytes(self) -> bytes:
        if self.member is None:
            return self.source.read_bytes()
        with zipfile.ZipFile(self.source) as archive:
            return archive.read(self.member)


@dataclass(frozen=True)
class Skipped:
    """A series or file left out: where, why, and the series' id and description when known."""

    path: str
    reason: str
    scan_id: str = ""
    series_description: str = ""


@dataclass(frozen=True, eq=False)
class _Image:
    """Geometry and acquisition of one image (a file, or a frame of a multi-frame file)."""

    position: tuple[float, ...] | None  # ImagePositionPatient, LPS mm, as written
    orientation: tuple[float, ...] | None  # ImageOrientationPatient rounded to 1e-4
    size: tuple[int, int]
    echo_ms: float | None
    b_value: float | None


@dataclass(frozen=True, eq=False)
class DicomSeries:
    """The files of one SeriesInstanceUID and the header of its first file (by InstanceNumber)."""

    uid: str
    header: pydicom.Dataset
    files: tuple[DicomFile, ...]
    images: tuple[_Image, ...]

    @property
    def folder(self) -> Path:
        """The deepest folder holding every file (an archive: the archive)."""
        sources = {f.source for f in self.files}
        if len(sources) == 1 and self.files[0].member is not None:
            return self.files[0].source
        parents = [p.parent for p in sources]
        common = parents[0]
        while not all(common == p or common in p.parents for p in parents):
            common = common.parent
        return common

    @property
    def description(self) -> str:
        return str(self.header.get("SeriesDescription") or "").strip()

    def positions(self) -> list[tuple[float, ...]]:
        """Slice positions (LPS, mm) rounded to 0.01 mm, for comparisons."""
        return [tuple(round(p, _ROUND_MM) for p in im.position) for im in self.images if im.position is not None]

    def volumes(self) -> int:
        """Images per slice position (1 for a 3-D series)."""
        distinct = len(set(self.positions()))
        return max(1, round(len(self.images) / distinct)) if distinct else 1

    def reason(self, options: DicomOptions, selected: bool = True) -> str | None:
        """Why this series is left out (module docstring), or None when it is segmented.
        ``selected``: whether it passed ``--series-filter``."""
        ds = self.header
        image_type = [str(t).upper() for t in (ds.get("ImageType") or [])]
        modality = str(ds.get("Modality") or "").upper()
        if not selected:
            return "not selected by --series-filter"
        if "Rows" not in ds:
            return f"no image data (modality {modality or 'unknown'})"
        if str(ds.get("SOPClassUID", "")).startswith(SECONDARY_CAPTURE) or modality in ("SC", "OT") \
                or "SCREEN SAVE" in image_type:
            return "secondary capture or screenshot"
        if modality == "CT" and not options.ct:
            return "CT series (give --ct to segment CT)"
        if modality not in ("MR", "CT"):
            return f"modality {modality or 'unknown'}, not MR"
        if "LOCALIZER" in image_type or "SCOUT" in image_type:
            return "localiser (ImageType LOCALIZER)"
        if image_type and image_type[0] == "DERIVED":
            return f"derived image (ImageType {'/'.join(image_type)})"
        if len({im.orientation for im in self.images}) > 1:
            return "slices disagree in orientation"
        if len({im.size for im in self.images}) > 1:
            return "slices disagree in size (rows x columns)"
        slices = len(set(self.positions()))
        if slices < MIN_SLICES:
            return f"only {slices} slice(s): a localiser or a 2-D image"
        kind = self._kind(image_type)
        volumes = self.volumes()
        if volumes > 1:
            return f"{kind or 'functional'} series (4-D, {volumes} volumes)"
        if kind == "diffusion":
            return "diffusion-weighted series"
        return None

    def _kind(self, image_type: list[str]) -> str | None:
        words = " ".join(str(self.header.get(k) or "") for k in ("SeriesDescription", "ProtocolName", "SequenceName"))
        if "DIFFUSION" in image_type or any((im.b_value or 0) > 0 for im in self.images) or _DIFFUSION.search(words):
            return "diffusion"
        if "PERFUSION" in image_type or _PERFUSION.search(words):
            return "perfusion"
        if len({im.echo_ms for im in self.images if im.echo_ms is not None}) > 1:
            return "multi-echo"
        return None

    def geometry(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The series' own grid in RAS mm from the header values, in float64: the voxel steps as
        columns (along a row, down a column, from the first slice to the next: the first is that
        of the lowest InstanceNumber or the first frame) and the centre of the first voxel; None
        without positions, orientation or pixel spacing, or with unequal slice steps."""
        from morphometry.acquisition import find

        iop = _numbers(find(self.header, "ImageOrientationPatient"), None)
        spacing = _numbers(find(self.header, "PixelSpacing"), None)
        if iop is None or spacing is None or len(iop) != 6 or len(spacing) != 2:
            return None
        ras = np.array([-1.0, -1.0, 1.0])
        row, col = np.array(iop[:3]) * ras * spacing[1], np.array(iop[3:]) * ras * spacing[0]
        normal = np.cross(iop[:3], iop[3:]) * ras
        points = {tuple(im.position): np.array(im.position) * ras for im in self.images if im.position is not None}
        stack = sorted(points.values(), key=lambda p: float(p @ normal))
        if len(stack) < 2:
            return None
        if self.images[0].position is not None and \
                np.allclose(np.array(self.images[0].position) * ras, stack[-1]):
            stack.reverse()
        step = (stack[-1] - stack[0]) / (len(stack) - 1)
        if any(np.linalg.norm(b - a - step) > 1e-3 for a, b in pairwise(stack)):
            return None
        return np.stack([row, col, step], axis=1), stack[0]

    def flags(self) -> list[str]:
        """Oddities of a kept series: irregular slice spacing (missing slices)."""
        orientation = self.images[0].orientation
        positions = np.array(sorted(set(self.positions())), float)
        if orientation is None or len(positions) < 3:
            return []
        normal = np.cross(orientation[:3], orientation[3:])
        gaps = np.diff(np.sort(positions @ normal))
        gaps = gaps[gaps > 10 ** -_ROUND_MM]
        if gaps.size and gaps.max() > 1.5 * gaps.min():
            return [(f"irregular slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm: missing slices?); "
                     "converted by dcm2niix to equal spacing")]
        return []


class SeriesFilter:
    """``--series-filter``: conditions on DICOM tags of a series' first file, joined by ``and``.

    A condition is ``Keyword OP value`` with OP one of ``~`` (regular expression found, case
    insensitive), ``!~`` (not found), ``=``, ``!=`` (text, case insensitive), ``<``, ``<=``, ``>``,
    ``>=`` (numbers); multi-valued tags read as ``A\\B\\C``. Example:
    ``SeriesDescription ~ mprage|t1 and SliceThickness <= 1.5``.
    """

    _CONDITION = re.compile(r"^\s*([A-Za-z][A-Za-z0-9]*)\s*(!~|~|!=|<=|>=|=|<|>)\s*(.*?)\s*$")

    def __init__(self, text: str):
        self.text = text
        self.conditions = []
        for part in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE):
            match = self._CONDITION.match(part)
            if not match or not match.group(3):
                raise InputError(f"{part.strip()!r}: expected 'Keyword OP value' with OP one of ~ !~ = != < <= > >=",
                                 setting="series_filter")
            keyword, op, value = match.groups()
            value = value.strip("'\"")
            if tag_for_keyword(keyword) is None:
                raise InputError(f"{keyword!r} is not a DICOM keyword (e.g. SeriesDescription, Modality)",
                                 setting="series_filter")
            if op in ("~", "!~"):
                try:
                    value = re.compile(value, re.IGNORECASE)
                except re.error as exc:
                    raise InputError(f"{value!r}: bad regular expression ({exc})", setting="series_filter") from None
            elif op in ("<", "<=", ">", ">="):
                try:
                    value = float(value)
                except ValueError:
                    raise InputError(f"{part.strip()!r}: {op} needs a number", setting="series_filter") from None
            self.conditions.append((keyword, op, value))

    def __call__(self, ds: pydicom.Dataset) -> bool:
        from morphometry.acquisition import find

        for keyword, op, value in self.conditions:
            raw = find(ds, keyword)
            text = "" if raw is None else ("\\".join(str(v) for v in raw) if isinstance(raw, (list, MultiValue))
                                           else str(raw)).strip()
            if op in ("~", "!~"):
                ok = bool(value.search(text)) == (op == "~")
            elif op in ("=", "!="):
                ok = (text.lower() == value.lower()) == (op == "=")
            else:
                try:
                    number = float(text)
                except ValueError:
                    return False
                ok = {"<": number < value, "<=": number <= value, ">": number > value, ">=": number >= value}[op]
            if not ok:
                return False
        return True


def _numbers(value, decimals: int | None = 4) -> tuple[float, ...] | None:
    """The numbers of a multi-valued tag, rounded to ``decimals`` (None: as written)."""
    try:
        return tuple(round(float(v), decimals) if decimals is not None else float(v) for v in value) \
            if value is not None else None
    except (TypeError, ValueError):
        return None


def _images(ds: pydicom.Dataset) -> list[_Image]:
    from morphometry.acquisition import find

    size = (int(ds.get("Rows") or 0), int(ds.get("Columns") or 0))
    echo = find(ds, "EchoTime") or find(ds, "EffectiveEchoTime")
    echo = float(echo) if echo is not None else None
    b_value = ds.get("DiffusionBValue")
    frames = ds.get("PerFrameFunctionalGroupsSequence")
    orientation = _numbers(find(ds, "ImageOrientationPatient"))
    if not frames:
        position = _numbers(ds.get("ImagePositionPatient"), None)
        return [_Image(position, orientation, size, echo, float(b_value) if b_value is not None else None)]
    shared = ds.get("SharedFunctionalGroupsSequence")
    images = []
    for frame in frames:
        plane = frame.get("PlanePositionSequence")
        position = _numbers(plane[0].get("ImagePositionPatient"), None) if plane else None
        own = frame.get("PlaneOrientationSequence")
        frame_orientation = _numbers(own[0].get("ImageOrientationPatient")) if own else orientation
        diffusion = frame.get("MRDiffusionSequence") or (shared[0].get("MRDiffusionSequence") if shared else None)
        b = diffusion[0].get("DiffusionBValue") if diffusion else None
        echoes = frame.get("MREchoSequence")
        frame_echo = float(echoes[0].EffectiveEchoTime) if echoes and "EffectiveEchoTime" in echoes[0] else echo
        images.append(_Image(position, frame_orientation, size, frame_echo, float(b) if b is not None else None))
    return images


def _pixel_problem(ds: pydicom.Dataset, available: int | None) -> str | None:
    """A truncated file: its pixel data shorter than rows x columns x frames (uncompressed only)."""
    if "Rows" not in ds or not ds.file_meta.get("TransferSyntaxUID") or ds.file_meta.TransferSyntaxUID.is_compressed:
        return None
    expected = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1)
                * -(-int(ds.get("BitsAllocated") or 16) // 8) * int(ds.get("NumberOfFrames") or 1))
    element = ds.get_item(PIXEL_DATA, keep_deferred=True)
    if element is None:
        return "no pixel data"
    if available is not None:  # a deferred element of a file: where its value would end
        length = min(element.length, max(0, available - element.value_tell))
    else:
        length = len(element.value or b"")
    return f"truncated DICOM (pixel data {length} of {expected} bytes)" if length < expected else None


def read_header(file: DicomFile, data: bytes | None = None) -> pydicom.Dataset | str:
    """The header of ``file`` (``data``: its bytes, when already read), or why it is not usable."""
    try:
        if data is None:
            ds = pydicom.dcmread(str(file.source), defer_size=1024)
            available = file.source.stat().st_size
        else:
            ds = pydicom.dcmread(io.BytesIO(data))
            available = None
    except InvalidDicomError:
        return "not a DICOM file"
    except Exception as exc:  # pydicom raises many types for a damaged file
        return f"truncated or unreadable DICOM ({type(exc).__name__})"
    if str(ds.file_meta.get("MediaStorageSOPClassUID", "")) == DICOMDIR_CLASS:
        return "DICOMDIR (an index of images, not an image)"
    if "SeriesInstanceUID" not in ds:
        return "DICOM file without SeriesInstanceUID"
    try:
        problem = _pixel_problem(ds, available)
    except Exception as exc:  # a malformed size tag
        return f"unreadable DICOM ({type(exc).__name__})"
    return problem or ds


def _group(headers: list[tuple[DicomFile, pydicom.Dataset]]) -> list[DicomSeries]:
    by_uid: dict[str, list[tuple[DicomFile, pydicom.Dataset]]] = defaultdict(list)
    seen: set[str] = set()
    for file, ds in headers:
        instance = str(ds.get("SOPInstanceUID") or file)
        if instance in seen:  # the same image twice in an export: one copy is used
            continue
        seen.add(instance)
        by_uid[str(ds.SeriesInstanceUID)].append((file, ds))
    series = []
    for uid, members in by_uid.items():
        members.sort(key=lambda m: (int(m[1].get("InstanceNumber") or 0), str(m[0])))
        images = tuple(im for _, ds in members for im in _images(ds))
        header = members[0][1]
        if "PixelData" in header:  # keep the header only (a deferred or read pixel element)
            del header.PixelData
        series.append(DicomSeries(uid, header, tuple(f for f, _ in members), images))
    return sorted(series, key=lambda s: (str(s.folder), int(s.header.get("SeriesNumber") or 0), s.uid))


def _is_zip(path: Path) -> bool:
    return path.suffix.lower() == ".zip"


def read_zip(path: Path) -> tuple[list[DicomSeries], list[Skipped]]:
    """The series of the DICOM files in the zip archive ``path`` and the members left out."""
    headers, skipped = [], []
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.is_dir() or any(part.startswith(".") for part in Path(info.filename).parts):
                    continue
                file = DicomFile(path, info.filename)
                result = read_header(file, archive.read(info))
                if isinstance(result, str):
                    skipped.append(Skipped(str(file), result))
                else:
                    headers.append((file, result))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as exc:
        return [], [Skipped(str(path), f"unreadable zip archive ({type(exc).__name__}: {exc})")]
    return _group(headers), skipped


def read_files(files: list[Path]) -> tuple[list[DicomSeries], list[Skipped]]:
    """The series of ``files`` (zip archives are opened) and the files left out, with reasons."""
    headers, skipped, series = [], [], []
    for path in files:
        if _is_zip(path):
            found, left = read_zip(path)
            series += found
            skipped += left
            continue
        file = DicomFile(path)
        result = read_header(file)
        if isinstance(result, str):
            skipped.append(Skipped(str(path), result))
        else:
            headers.append((file, result))
    return _group(headers) + series, skipped
