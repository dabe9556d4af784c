"""Inputs of an evaluation: predictions and references, found on disk or given in memory, paired.

Predictions are ``<scan_id>_<method>`` label maps (as ``morpho segment`` writes them to ``seg/``),
or ``<scan_id>`` maps of one named method, or a manifest (scan_id, path, method). References are
``<scan_id>`` label maps or a manifest (scan_id, path). The Python API also takes a single file or
nibabel image, a list of files, a dict ``{scan_id: file or image}`` (predictions also
``{(scan_id, method): ...}``) and a DataFrame manifest. Predictions and references are paired by
``scan_id``; a single prediction and a single reference are paired with each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from morphometry.analysis.label_maps import IN_MEMORY, is_image
from morphometry.errors import DataError, InputError
from morphometry.io import IMAGE_SUFFIXES, is_image_path, strip_image_suffix
from morphometry.methods import METHOD_NAMES as KNOWN_METHODS
from morphometry.progress import log
from morphometry.tables import read_text_csv

DEFAULT_METHOD = "prediction"
"""Method name of predictions whose method is neither given nor in their file name."""

DEFAULT_SCAN_ID = "scan"
"""scan_id of a single in-memory prediction."""


class _LabelSource:
    """A label map given as a file (``path``) or as an in-memory nibabel ``image``."""

    path: Path | None
    image: object

    @property
    def source(self):
        """What :func:`morphometry.analysis.label_maps.load_labels` reads: the image or the path."""
        return self.image if self.image is not None else self.path

    @property
    def where(self) -> str:
        """The file, or ``<in-memory image>``, for tables and messages."""
        return IN_MEMORY if self.image is not None else str(self.path)


@dataclass(frozen=True)
class Prediction(_LabelSource):
    """One method's label map of one scan."""

    scan_id: str
    method: str
    path: Path | None = None
    image: object = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Reference(_LabelSource):
    """The reference (silver standard) label map of one scan."""

    scan_id: str
    path: Path | None = None
    image: object = field(default=None, repr=False, compare=False)


def parse_prediction_name(name: str) -> tuple[str, str] | None:
    """``<scan_id>_<method>.nii.gz`` -> (scan_id, method), or None without a known method suffix."""
    stem = strip_image_suffix(name)
    scan_id, sep, method = stem.rpartition("_")
    if sep and scan_id and method in KNOWN_METHODS:
        return scan_id, method
    return None


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_path(p) and not p.name.startswith("."))


def _read_manifest(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    df = read_text_csv(path, "manifest")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{path}: manifest lacks column(s) {', '.join(missing)} (needs {', '.join(columns)})")
    empty = df[list(columns)].eq("").any(axis=1)
    if empty.any():
        raise InputError(f"{path}: empty {'/'.join(columns)} in row {int(np.flatnonzero(empty)[0]) + 2}")
    df["path"] = [str(p if Path(p).is_absolute() else path.parent / p) for p in df["path"]]
    return df


def find_predictions(source: str | Path, method: str | None = None) -> list[Prediction]:
    """Predictions from a ``morpho segment`` output folder, a folder of label maps, or a manifest.

    A folder holds ``<scan_id>_<method>`` images (or has them in ``seg/``); with ``method`` given,
    it holds ``<scan_id>`` images of that one method. A manifest is a CSV with scan_id, path,
    method (paths relative to the CSV's folder).
    """
    source = Path(source)
    if source.is_file():
        df = _read_manifest(source, ("scan_id", "path", "method"))
        preds = [Prediction(r.scan_id, r.method, Path(r.path)) for r in df.itertuples()]
    elif source.is_dir():
        folder = source / "seg" if (source / "seg").is_dir() else source
        preds = _predictions_in(folder, method)
    else:
        raise InputError(f"{source}: prediction folder or manifest not found", setting="predictions")
    return _unique(preds, source, lambda p: (p.scan_id, p.method))


def _predictions_in(folder: Path, method: str | None) -> list[Prediction]:
    files = _image_files(folder)
    if method is not None:
        return [Prediction(strip_image_suffix(p.name), method, p) for p in files]
    preds, skipped = [], []
    for path in files:
        parsed = parse_prediction_name(path.name)
        if parsed is None:
            skipped.append(path.name)
        else:
            preds.append(Prediction(parsed[0], parsed[1], path))
    if not preds:
        raise InputError(f"{folder}: no <scan_id>_<method> label maps (methods: {', '.join(KNOWN_METHODS)}); "
                         "for a folder of <scan_id> files name their method", setting="pred_method")
    if skipped:
        log.warning(f"warning: {folder}: skipped {len(skipped)} file(s) without a method suffix, e.g. {skipped[0]}")
    return preds


def find_references(source: str | Path) -> list[Reference]:
    """References from a folder of ``<scan_id>`` label maps or a manifest (scan_id, path)."""
    source = Path(source)
    if source.is_file():
        df = _read_manifest(source, ("scan_id", "path"))
        refs = [Reference(r.scan_id, Path(r.path)) for r in df.itertuples()]
    elif source.is_dir():
        refs = [Reference(strip_image_suffix(p.name), p) for p in _image_files(source)]
        if not refs:
            raise InputError(f"{source}: no label maps ({', '.join(IMAGE_SUFFIXES)}) in the reference folder")
    else:
        raise InputError(f"{source}: reference folder or manifest not found", setting="references")
    return _unique(refs, source, lambda r: r.scan_id)


def _unique(items: list, source, key) -> list:
    seen: dict = {}
    for item in items:
        if key(item) in seen:
            names = (Path(i.where).name for i in (seen[key(item)], item))
            raise InputError(f"{source}: two entries for {key(item)} ({', '.join(names)})")
        seen[key(item)] = item
    return items


# ---------------------------------------------------------------- the Python API's inputs


def _is_single_file(obj) -> bool:
    return isinstance(obj, (str, Path)) and Path(obj).is_file() and is_image_path(Path(obj))


def is_single(obj) -> bool:
    """Whether ``obj`` is one label map: an image file or an in-memory nibabel image."""
    return is_image(obj) or _is_single_file(obj)


def describe(obj) -> str:
    """How an input is named in messages: the path, or what kind of collection it is."""
    if isinstance(obj, (str, Path)):
        return str(obj)
    if is_image(obj):
        return IN_MEMORY
    return f"{type(obj).__name__} of {len(obj)}" if hasattr(obj, "__len__") else type(obj).__name__


def predictions_from(obj, method: str | None = None) -> list[Prediction]:
    """Predictions from what :func:`morphometry.analysis.evaluation.evaluate` accepts.

    A folder or manifest CSV (as ``morpho evaluate --pred``), one image file or nibabel image, a
    DataFrame (scan_id, path, and method unless ``method`` is given), a dict ``{scan_id: file or
    image}`` or ``{(scan_id, method): file or image}``, or a list of files. A file's scan_id and
    method come from its name (``<scan_id>_<method>``); with ``method`` given, the name is the
    scan_id. Unnamed methods are called ``prediction``.
    """
    if is_image(obj):
        return [Prediction(DEFAULT_SCAN_ID, method or DEFAULT_METHOD, image=obj)]
    if _is_single_file(obj):
        return [_named_prediction(Path(obj), method, strict=False)]
    if isinstance(obj, (str, Path)):
        return find_predictions(obj, method)
    if isinstance(obj, pd.DataFrame):
        needed = ("scan_id", "path") + (() if method else ("method",))
        _check_frame(obj, needed, "predictions")
        preds = [Prediction(str(r["scan_id"]), method or str(r["method"]), Path(r["path"]))
                 for _, r in obj.iterrows()]
    elif isinstance(obj, Mapping):
        preds = [_keyed_prediction(key, value, method) for key, value in obj.items()]
    elif isinstance(obj, Iterable):
        preds = [_listed_prediction(item, method) for item in obj]
    else:
        raise InputError(f"cannot read predictions from a {type(obj).__name__}", setting="predictions")
    if not preds:
        raise InputError("no predictions given", setting="predictions")
    return _unique(preds, describe(obj), lambda p: (p.scan_id, p.method))


def _named_prediction(path: Path, method: str | None, strict: bool) -> Prediction:
    if method is not None:
        return Prediction(strip_image_suffix(path.name), method, path)
    parsed = parse_prediction_name(path.name)
    if parsed is not None:
        return Prediction(parsed[0], parsed[1], path)
    if strict:
        raise InputError(f"{path}: not named <scan_id>_<method> (methods: {', '.join(KNOWN_METHODS)}); "
                         "give the method", setting="pred_method")
    return Prediction(strip_image_suffix(path.name), DEFAULT_METHOD, path)


def _keyed_prediction(key, value, method: str | None) -> Prediction:
    scan_id, key_method = key if isinstance(key, tuple) and len(key) == 2 else (key, None)
    name = str(key_method or method or DEFAULT_METHOD)
    if is_image(value):
        return Prediction(str(scan_id), name, image=value)
    return Prediction(str(scan_id), name, Path(value))


def _listed_prediction(item, method: str | None) -> Prediction:
    if is_image(item):
        raise InputError("in-memory images need names: give a dict {scan_id: image}", setting="predictions")
    return _named_prediction(Path(item), method, strict=True)


def references_from(obj) -> list[Reference]:
    """References from a folder or manifest CSV (as ``morpho evaluate --reference``), one image
    file (its name is the scan_id) or nibabel image, a DataFrame (scan_id, path), a dict
    ``{scan_id: file or image}`` or a list of files named ``<scan_id>``."""
    if is_image(obj):
        return [Reference(DEFAULT_SCAN_ID, image=obj)]
    if _is_single_file(obj):
        return [Reference(strip_image_suffix(Path(obj).name), Path(obj))]
    if isinstance(obj, (str, Path)):
        return find_references(obj)
    if isinstance(obj, pd.DataFrame):
        _check_frame(obj, ("scan_id", "path"), "references")
        refs = [Reference(str(r["scan_id"]), Path(r["path"])) for _, r in obj.iterrows()]
    elif isinstance(obj, Mapping):
        refs = [Reference(str(k), image=v) if is_image(v) else Reference(str(k), Path(v)) for k, v in obj.items()]
    elif isinstance(obj, Iterable):
        items = list(obj)
        if any(is_image(item) for item in items):
            raise InputError("in-memory images need names: give a dict {scan_id: image}", setting="references")
        refs = [Reference(strip_image_suffix(Path(item).name), Path(item)) for item in items]
    else:
        raise InputError(f"cannot read references from a {type(obj).__name__}", setting="references")
    if not refs:
        raise InputError("no references given", setting="references")
    return _unique(refs, describe(obj), lambda r: r.scan_id)


def _check_frame(frame: pd.DataFrame, columns: tuple[str, ...], setting: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"table lacks column(s) {', '.join(missing)} (needs {', '.join(columns)})",
                         setting=setting)


# ---------------------------------------------------------------- pairing


@dataclass(frozen=True)
class Pairing:
    """Predictions matched with their reference, and what could not be matched."""

    pairs: tuple[tuple[Prediction, Reference], ...]
    predictions_without_reference: tuple[Prediction, ...] = field(default=())
    references_without_prediction: tuple[Reference, ...] = field(default=())

    def unpaired_table(self) -> pd.DataFrame:
        rows = [{"scan_id": p.scan_id, "method": p.method, "side": "prediction", "path": p.where}
                for p in self.predictions_without_reference]
        rows += [{"scan_id": r.scan_id, "method": "", "side": "reference", "path": r.where}
                 for r in self.references_without_prediction]
        return pd.DataFrame(rows, columns=["scan_id", "method", "side", "path"])

    def warn_unpaired(self) -> None:
        """Log a warning for predictions without a reference and references without a prediction."""
        for items, what in ((self.predictions_without_reference, "prediction(s) without a reference"),
                            (self.references_without_prediction, "reference(s) without a prediction")):
            if items:
                shown = ", ".join(sorted({i.scan_id for i in items})[:3])
                log.warning(f"warning: {len(items)} {what} (e.g. {shown}); listed in unpaired.csv")


def pair_by_scan_id(preds: list[Prediction], refs: list[Reference], pred_source: str = "predictions",
                    ref_source: str = "references") -> Pairing:
    """Match predictions to references by scan_id; DataError when no scan_id is shared."""
    by_id = {r.scan_id: r for r in refs}
    pairs = tuple((p, by_id[p.scan_id]) for p in preds if p.scan_id in by_id)
    if not pairs:
        ids_p = sorted({p.scan_id for p in preds})
        raise DataError(f"no scan_id in common between {pred_source} ({len(ids_p)} ids, e.g. "
                        f"{', '.join(ids_p[:3])}) and {ref_source} ({len(by_id)} ids, e.g. "
                        f"{', '.join(sorted(by_id)[:3])})")
    used = {p.scan_id for p, _ in pairs}
    return Pairing(pairs=pairs,
                   predictions_without_reference=tuple(p for p in preds if p.scan_id not in by_id),
                   references_without_prediction=tuple(r for r in refs if r.scan_id not in used))


def pair_inputs(predictions, references, method: str | None = None) -> Pairing:
    """Read both inputs (see :func:`predictions_from`, :func:`references_from`) and pair them by
    scan_id. A single prediction and a single reference (files or images) are paired with each
    other under the prediction file's scan_id, else the reference file's, else ``scan``."""
    preds, refs = predictions_from(predictions, method), references_from(references)
    if is_single(predictions) and is_single(references):
        pred, ref = preds[0], refs[0]
        scan_id = ref.scan_id if pred.image is not None and ref.image is None else pred.scan_id
        return Pairing(pairs=((Prediction(scan_id, pred.method, pred.path, pred.image),
                               Reference(scan_id, ref.path, ref.image)),))
    return pair_by_scan_id(preds, refs, describe(predictions), describe(references))
