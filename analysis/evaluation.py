"""Evaluation of segmentations against silver standards: pairing, grids, metrics, QC groups.

Predictions (``<scan_id>_<method>`` label images, as ``morpho segment`` writes them, or a manifest)
are paired with references (``<scan_id>`` label images or a manifest) by ``scan_id``. When the two
maps live on different voxel grids, one is resampled into the other's grid through their affines
with nearest neighbour (:class:`EvaluationConfig.grid` chooses which grid). The metrics are those
of :mod:`morphometry.analysis.metrics`; scans are then grouped by a quality-control outcome (from a user
table, or from a reference method's mean Dice) and summarised per method x group x structure.
"""

from __future__ import annotations

import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from morphometry.analysis import metrics
from morphometry.errors import DataError, InputError
from morphometry.io import IMAGE_SUFFIXES, is_image_path, strip_image_suffix
from morphometry.labels import PARCELLATION_LABELS, SEGMENTATION_LABELS, STRUCTURES
from morphometry.tables import read_text_csv

KNOWN_METHODS = ("synthseg+", "s1+s2", "synthseg", "synthseg+d", "s1+s2+d")
"""Method names ``morpho segment`` writes as file-name suffixes (DESIGN.md, method variants)."""

GRIDS = ("reference", "prediction")
QC_ORDER = ("big_fail", "small_fail", "pass")
ALL_SCANS = "all"
UNASSIGNED = "unassigned"
MEAN_OVER_STRUCTURES = "mean_over_structures"
MAX_LABEL_VALUE = 65535

_NAME_OF_VALUE = {lab.value: lab.name for lab in SEGMENTATION_LABELS}
_NAME_OF_VALUE.update({parcel.value: parcel.name for parcel in PARCELLATION_LABELS})
_VALUE_OF_NAME = {name: value for value, name in _NAME_OF_VALUE.items()}
SYNTHSEG_VALUES = tuple(_VALUE_OF_NAME[name] for name in STRUCTURES)


def structure_name(value: int) -> str:
    """snake_case name of a label value (``morphometry.labels``), else ``label_<value>``."""
    return _NAME_OF_VALUE.get(int(value), f"label_{int(value)}")


def parse_label_selection(items) -> str | tuple[int, ...]:
    """``["synthseg"]`` / ``["present"]`` / label values or structure names -> selection."""
    items = list(items or ["synthseg"])
    if items in (["synthseg"], ["present"]):
        return items[0]
    values = []
    for item in items:
        if str(item).isdigit():
            values.append(int(item))
        elif item in _VALUE_OF_NAME:
            values.append(_VALUE_OF_NAME[item])
        else:
            raise InputError(f"--labels: unknown structure {item!r} (give label values, snake_case "
                             "structure names, 'synthseg' or 'present')")
    if 0 in values:
        raise InputError("--labels: 0 is the background and is not evaluated")
    return tuple(dict.fromkeys(values))


@dataclass(frozen=True)
class EvaluationConfig:
    """How a prediction is compared with its reference.

    ``grid``: the voxel grid metrics are computed on (``reference`` or ``prediction``); the other
    map is resampled into it with nearest neighbour. ``msd_mode``: ``mean_of_means`` or
    ``pooled`` (see :mod:`morphometry.analysis.metrics`). ``labels``: ``synthseg`` (the 32 SynthSeg 2.0
    structures), ``present`` (every non-zero value found in either map) or explicit values.
    """

    grid: str = "reference"
    msd_mode: str = "mean_of_means"
    labels: str | tuple[int, ...] = "synthseg"

    def __post_init__(self):
        if self.grid not in GRIDS:
            raise InputError(f"--grid must be one of {', '.join(GRIDS)}, not {self.grid!r}")
        if self.msd_mode not in metrics.MSD_MODES:
            raise InputError(f"--msd must be one of {', '.join(metrics.MSD_MODES)}, not {self.msd_mode!r}")


@dataclass(frozen=True)
class LabelImage:
    """An integer label map with its affine (voxel -> world mm)."""

    path: Path
    data: np.ndarray
    affine: np.ndarray

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]


def load_labels(path: str | Path) -> LabelImage:
    """Read a 3-D label map (NIfTI/MGZ); InputError/DataError naming the file and the cause."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: label map not found")
    if not is_image_path(path):
        raise InputError(f"{path}: not an image file (expected {', '.join(IMAGE_SUFFIXES)})")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for a bad file
        raise InputError(f"{path}: not a readable label map ({type(exc).__name__}: {exc})") from None
    if data.ndim > 3 and all(s == 1 for s in data.shape[3:]):
        data = data.reshape(data.shape[:3])
    if data.ndim != 3:
        raise InputError(f"{path}: a 3-D label map is required (shape {data.shape})")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(f"{path}: singular or non-finite affine")
    return LabelImage(path, _as_labels(path, data), affine)


def _as_labels(path: Path, data: np.ndarray) -> np.ndarray:
    if not np.issubdtype(data.dtype, np.integer):
        if not np.issubdtype(data.dtype, np.floating) or not np.all(np.isfinite(data)):
            raise DataError(f"{path}: label map has non-numeric or non-finite values")
        rounded = np.rint(data)
        if np.max(np.abs(data - rounded), initial=0.0) > 1e-3:
            raise DataError(f"{path}: label map has non-integer values (is it an intensity image?)")
        data = rounded
    lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
    if lo < 0 or hi > MAX_LABEL_VALUE:
        raise DataError(f"{path}: label values must lie in 0..{MAX_LABEL_VALUE} (found {lo}..{hi})")
    return np.ascontiguousarray(data, dtype=np.int32)


def same_grid(a: LabelImage, b: LabelImage, atol_mm: float = 1e-4) -> bool:
    return a.data.shape == b.data.shape and np.allclose(a.affine, b.affine, atol=atol_mm)


def resample_nearest(source: LabelImage, shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """Labels of ``source`` at the voxel centres of the grid (shape, affine); 0 outside its field of view."""
    to_source = np.linalg.inv(source.affine) @ np.asarray(affine, dtype=np.float64)
    return ndimage.affine_transform(source.data, to_source[:3, :3], offset=to_source[:3, 3],
                                    output_shape=tuple(shape), order=0, mode="constant", cval=0,
                                    output=np.int32)


def on_common_grid(pred: LabelImage, ref: LabelImage, grid: str) -> tuple[np.ndarray, np.ndarray, tuple, str]:
    """(pred voxels, ref voxels, spacing mm, which side was resampled: ``none``/``prediction``/``reference``)."""
    if same_grid(pred, ref):
        return pred.data, ref.data, ref.spacing_mm, "none"
    target, source = (ref, pred) if grid == "reference" else (pred, ref)
    moved = resample_nearest(source, target.data.shape, target.affine)
    if np.any(source.data) and not np.any(moved):
        raise DataError(f"{pred.path} and {ref.path} do not overlap in world space (check their affines)")
    if grid == "reference":
        return moved, ref.data, ref.spacing_mm, "prediction"
    return pred.data, moved, pred.spacing_mm, "reference"


def selected_values(pred: np.ndarray, ref: np.ndarray, labels: str | tuple[int, ...]) -> tuple[int, ...]:
    if labels == "synthseg":
        return SYNTHSEG_VALUES
    if labels == "present":
        n = int(max(pred.max(initial=0), ref.max(initial=0))) + 1
        counts = np.bincount(pred.ravel(), minlength=n) + np.bincount(ref.ravel(), minlength=n)
        return tuple(int(v) for v in np.flatnonzero(counts) if v != 0)
    return tuple(labels)


# ---------------------------------------------------------------- inputs and pairing


@dataclass(frozen=True)
class Prediction:
    scan_id: str
    method: str
    path: Path


@dataclass(frozen=True)
class Reference:
    scan_id: str
    path: Path


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
        raise InputError(f"{source}: prediction folder or manifest not found")
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
                         "for a folder of <scan_id> files name their method with --pred-method")
    if skipped:
        print(f"warning: {folder}: skipped {len(skipped)} file(s) without a method suffix, e.g. {skipped[0]}",
              file=sys.stderr)
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
        raise InputError(f"{source}: reference folder or manifest not found")
    return _unique(refs, source, lambda r: r.scan_id)


def _unique(items: list, source: Path, key) -> list:
    seen: dict = {}
    for item in items:
        if key(item) in seen:
            raise InputError(f"{source}: two entries for {key(item)} ({seen[key(item)].path.name}, {item.path.name})")
        seen[key(item)] = item
    return items


@dataclass(frozen=True)
class Pairing:
    """Predictions matched with their reference, and what could not be matched."""

    pairs: tuple[tuple[Prediction, Reference], ...]
    predictions_without_reference: tuple[Prediction, ...] = field(default=())
    references_without_prediction: tuple[Reference, ...] = field(default=())

    def unpaired_table(self) -> pd.DataFrame:
        rows = [{"scan_id": p.scan_id, "method": p.method, "side": "prediction", "path": str(p.path)}
                for p in self.predictions_without_reference]
        rows += [{"scan_id": r.scan_id, "method": "", "side": "reference", "path": str(r.path)}
                 for r in self.references_without_prediction]
        return pd.DataFrame(rows, columns=["scan_id", "method", "side", "path"])


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


# ---------------------------------------------------------------- metrics per pair

METRIC_COLUMNS = ("scan_id", "method", "structure", "label", "dice", "msd_mm", "hd95_mm",
                  "mean_pred_to_ref_mm", "mean_ref_to_pred_mm", "pred_voxels", "ref_voxels", "status",
                  "resampled")


def evaluate_pair(pred: Prediction, ref: Reference, config: EvaluationConfig,
                  reference_image: LabelImage | None = None) -> pd.DataFrame:
    """Long table of metrics (one row per structure present in either map) for one pair."""
    pred_img = load_labels(pred.path)
    ref_img = reference_image if reference_image is not None else load_labels(ref.path)
    a, b, spacing, resampled = on_common_grid(pred_img, ref_img, config.grid)
    values = selected_values(a, b, config.labels)
    rows = [{"scan_id": pred.scan_id, "method": pred.method, "structure": structure_name(m.label),
             **asdict(m), "resampled": resampled}
            for m in metrics.label_metrics(a, b, spacing, values, config.msd_mode)]
    return pd.DataFrame(rows, columns=list(METRIC_COLUMNS))


def _evaluate_reference_group(item) -> tuple[list[pd.DataFrame], list[dict]]:
    """All predictions of one reference (the reference is read once)."""
    ref, preds, config = item
    tables, failures = [], []
    try:
        ref_img = load_labels(ref.path)
    except (InputError, DataError) as exc:
        return [], [_failure(p, exc) for p in preds]
    for pred in preds:
        try:
            tables.append(evaluate_pair(pred, ref, config, ref_img))
        except (InputError, DataError) as exc:
            failures.append(_failure(pred, exc))
    return tables, failures


def _failure(pred: Prediction, exc: Exception) -> dict:
    return {"scan_id": pred.scan_id, "method": pred.method, "path": str(pred.path), "error": str(exc)}


def evaluate_pairs(pairing: Pairing, config: EvaluationConfig, jobs: int = 1,
                   progress=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metrics of every pair (long table) and the failures (scan_id, method, path, error).

    ``jobs`` > 1 evaluates references in that many processes; ``progress(n)`` is called after each
    reference with the number of predictions done.
    """
    groups: dict[str, tuple[Reference, list[Prediction]]] = {}
    for pred, ref in pairing.pairs:
        groups.setdefault(ref.scan_id, (ref, []))[1].append(pred)
    items = [(ref, preds, config) for ref, preds in groups.values()]
    tables, failures = [], []
    if jobs > 1 and len(items) > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            results = pool.map(_evaluate_reference_group, items)
            for item, (t, f) in zip(items, results):
                tables += t
                failures += f
                if progress:
                    progress(len(item[1]))
    else:
        for item in items:
            t, f = _evaluate_reference_group(item)
            tables += t
            failures += f
            if progress:
                progress(len(item[1]))
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=list(METRIC_COLUMNS))
    return table, pd.DataFrame(failures, columns=["scan_id", "method", "path", "error"])


# ---------------------------------------------------------------- QC groups and summaries


@dataclass(frozen=True)
class QcRule:
    """QC groups from a reference method's mean Dice over structures (per scan).

    mean Dice < ``low``: ``big_fail``; ``low`` <= mean Dice < ``high``: ``small_fail``; else ``pass``.
    A scan the method did not segment is ``unassigned``.
    """

    method: str = "synthseg"
    low: float = 0.65
    high: float = 0.80

    def __post_init__(self):
        if not (0.0 <= self.low < self.high <= 1.0):
            raise InputError(f"--qc-thresholds must satisfy 0 <= low < high <= 1 (got {self.low}, {self.high})")


def per_scan(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (scan_id, method): mean Dice over the evaluated structures (missing ones count
    as 0), mean MSD and HD95 over the structures present in both maps (mm), counts."""
    grouped = table.groupby(["scan_id", "method"], sort=False)
    out = grouped.agg(mean_dice=("dice", "mean"), mean_msd_mm=("msd_mm", "mean"),
                      mean_hd95_mm=("hd95_mm", "mean"), n_structures=("structure", "size"),
                      n_missing=("status", lambda s: int((s != metrics.OK).sum())))
    return out.reset_index()


def qc_from_rule(scans: pd.DataFrame, rule: QcRule) -> pd.DataFrame:
    """scan_id -> qc_group from the per-scan table by the thresholds of ``rule``."""
    of_method = scans[scans["method"] == rule.method]
    if of_method.empty:
        found = ", ".join(sorted(scans["method"].unique()))
        raise DataError(f"--qc-from {rule.method}: no evaluated predictions of that method (found: {found})")
    dice = of_method["mean_dice"].to_numpy()
    group = np.where(dice < rule.low, "big_fail", np.where(dice < rule.high, "small_fail", "pass"))
    return pd.DataFrame({"scan_id": of_method["scan_id"].to_numpy(), "qc_group": group})


def read_qc_table(path: str | Path) -> pd.DataFrame:
    """scan_id -> qc_group from a CSV with columns scan_id and qc_group (or group)."""
    path = Path(path)
    df = read_text_csv(path, "QC table")
    column = "qc_group" if "qc_group" in df.columns else "group" if "group" in df.columns else None
    if "scan_id" not in df.columns or column is None:
        raise InputError(f"{path}: QC table needs columns scan_id and qc_group (found {', '.join(df.columns)})")
    if df["scan_id"].duplicated().any():
        raise InputError(f"{path}: several rows for scan_id {df.loc[df['scan_id'].duplicated(), 'scan_id'].iloc[0]}")
    if df[column].eq("").any():
        raise InputError(f"{path}: empty {column} for scan_id {df.loc[df[column].eq(''), 'scan_id'].iloc[0]}")
    return df[["scan_id", column]].rename(columns={column: "qc_group"})


def assign_groups(table: pd.DataFrame, qc: pd.DataFrame | None) -> pd.DataFrame:
    """Add ``qc_group`` (``all`` without a QC table; ``unassigned`` for scans it lacks)."""
    out = table.drop(columns=["qc_group"], errors="ignore")
    if qc is None:
        return out.assign(qc_group=ALL_SCANS)
    merged = out.merge(qc, on="scan_id", how="left")
    merged["qc_group"] = merged["qc_group"].fillna(UNASSIGNED)
    return merged


def group_order(groups) -> list[str]:
    """QC groups in the paper's order (big fails, small fails, passes), then the others sorted."""
    present = list(dict.fromkeys(groups))
    return [g for g in QC_ORDER if g in present] + sorted(g for g in present if g not in QC_ORDER)


def _describe(frame: pd.DataFrame, keys: list[str], columns: dict[str, str]) -> pd.DataFrame:
    grouped = frame.groupby(keys, sort=False)
    parts = {"n_scans": grouped["scan_id"].nunique()}
    for column, prefix in columns.items():
        parts[f"{prefix}_median"] = grouped[column].median()
        parts[f"{prefix}_mean"] = grouped[column].mean()
        parts[f"{prefix}_q25"] = grouped[column].quantile(0.25)
        parts[f"{prefix}_q75"] = grouped[column].quantile(0.75)
    return pd.DataFrame(parts).reset_index()


def summarise(table: pd.DataFrame, scans: pd.DataFrame) -> pd.DataFrame:
    """Per method x qc_group x structure: n, median, mean and quartiles of Dice, MSD, HD95; rows
    with structure ``mean_over_structures`` describe the per-scan means."""
    keys = ["method", "qc_group", "structure"]
    by_structure = _describe(table, keys, {"dice": "dice", "msd_mm": "msd_mm", "hd95_mm": "hd95_mm"})
    missing = table.assign(missing=table["status"] != metrics.OK).groupby(keys, sort=False)["missing"].sum()
    by_structure = by_structure.merge(missing.rename("n_missing").reset_index(), on=keys)
    per_scan_means = scans.assign(structure=MEAN_OVER_STRUCTURES)
    overall = _describe(per_scan_means, keys,
                        {"mean_dice": "dice", "mean_msd_mm": "msd_mm", "mean_hd95_mm": "hd95_mm"})
    overall = overall.merge(per_scan_means.groupby(keys, sort=False)["n_missing"].sum().reset_index(), on=keys)
    summary = pd.concat([overall, by_structure], ignore_index=True)
    summary["n_missing"] = summary["n_missing"].astype(int)
    return _sorted(summary)


def _sorted(summary: pd.DataFrame) -> pd.DataFrame:
    methods = [m for m in KNOWN_METHODS if m in set(summary["method"])]
    methods += sorted(set(summary["method"]) - set(methods))
    rank = {"method": {m: i for i, m in enumerate(methods)},
            "qc_group": {g: i for i, g in enumerate(group_order(summary["qc_group"]))}}
    key = summary.apply(lambda r: (rank["method"][r["method"]], rank["qc_group"][r["qc_group"]],
                                   r["structure"] != MEAN_OVER_STRUCTURES), axis=1)
    return summary.loc[key.sort_values(kind="stable").index].reset_index(drop=True)


def metadata(config: EvaluationConfig, qc_source: str) -> dict:
    """Definitions and settings stored with the outputs."""
    return {"definitions": metrics.DEFINITIONS, "msd": config.msd_mode, "grid": config.grid,
            "labels": config.labels if isinstance(config.labels, str) else list(config.labels),
            "qc_groups": qc_source, "units": "mm"}
