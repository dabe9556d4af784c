"""Evaluation of segmentations against silver standards: :func:`evaluate` and its steps.

Predictions are paired with references by ``scan_id`` (:mod:`morphometry.analysis.evaluation_inputs`);
when the two maps live on different voxel grids, one is resampled into the other's grid
(:mod:`morphometry.analysis.label_maps`, :class:`EvaluationConfig.grid` chooses which). The metrics
are those of :mod:`morphometry.analysis.metrics`; scans are then grouped by a quality-control
outcome (:mod:`morphometry.analysis.qc_groups`), summarised per method x group x structure, and
methods are compared scan by scan (:mod:`morphometry.analysis.method_comparisons`).
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from morphometry.analysis import metrics
from morphometry.analysis.evaluation_inputs import Pairing, Prediction, Reference, pair_inputs
from morphometry.analysis.label_maps import IN_MEMORY, LabelImage, load_labels, on_common_grid
from morphometry.analysis.method_comparisons import ComparisonConfig, compare_methods
from morphometry.analysis.qc_groups import QcRule, assign_groups, group_order, qc_from_rule, read_qc_table
from morphometry.cluster import ClusterSpec, cluster_map, cluster_spec
from morphometry.errors import DataError, InputError
from morphometry.labels import PARCELLATION_LABELS, SEGMENTATION_LABELS, STRUCTURES
from morphometry.methods import method_order
from morphometry.progress import Progress, log

GRIDS = ("reference", "prediction")
MEAN_OVER_STRUCTURES = "mean_over_structures"

_NAME_OF_VALUE = {lab.value: lab.name for lab in SEGMENTATION_LABELS}
_NAME_OF_VALUE.update({parcel.value: parcel.name for parcel in PARCELLATION_LABELS})
_VALUE_OF_NAME = {name: value for value, name in _NAME_OF_VALUE.items()}
SYNTHSEG_VALUES = tuple(_VALUE_OF_NAME[name] for name in STRUCTURES)


def structure_name(value: int) -> str:
    """snake_case name of a label value (``morphometry.labels``), else ``label_<value>``."""
    return _NAME_OF_VALUE.get(int(value), f"label_{int(value)}")


def parse_label_selection(items) -> str | tuple[int, ...]:
    """``"synthseg"`` / ``"present"`` / label values or structure names (one or a list) -> selection."""
    items = [items] if isinstance(items, (str, int)) else list(items or ["synthseg"])
    if items in (["synthseg"], ["present"]):
        return items[0]
    values = []
    for item in items:
        if str(item).isdigit():
            values.append(int(item))
        elif item in _VALUE_OF_NAME:
            values.append(_VALUE_OF_NAME[item])
        else:
            raise InputError(f"unknown structure {item!r} (give label values, snake_case structure names, "
                             "'synthseg' or 'present')", setting="labels")
    if 0 in values:
        raise InputError("0 is the background and is not evaluated", setting="labels")
    return tuple(dict.fromkeys(values))


def selected_values(pred: np.ndarray, ref: np.ndarray, labels: str | tuple[int, ...]) -> tuple[int, ...]:
    """Label values evaluated on a pair of label arrays for a selection of :func:`parse_label_selection`."""
    if labels == "synthseg":
        return SYNTHSEG_VALUES
    if labels == "present":
        n = int(max(pred.max(initial=0), ref.max(initial=0))) + 1
        counts = np.bincount(pred.ravel(), minlength=n) + np.bincount(ref.ravel(), minlength=n)
        return tuple(int(v) for v in np.flatnonzero(counts) if v != 0)
    return tuple(labels)


@dataclass(frozen=True)
class EvaluationConfig:
    """How a prediction is compared with its reference.

    ``grid``: the voxel grid metrics are computed on (``reference`` or ``prediction``); the other
    map is resampled into it with nearest neighbour. ``msd``: ``mean_of_means`` or ``pooled`` (see
    :mod:`morphometry.analysis.metrics`). ``labels``: ``synthseg`` (the 32 SynthSeg 2.0
    structures), ``present`` (every non-zero value found in either map) or explicit values.
    """

    grid: str = "reference"
    msd: str = "mean_of_means"
    labels: str | tuple[int, ...] = "synthseg"

    def __post_init__(self):
        if self.grid not in GRIDS:
            raise InputError(f"must be one of {', '.join(GRIDS)}, not {self.grid!r}", setting="grid")
        if self.msd not in metrics.MSD_MODES:
            raise InputError(f"must be one of {', '.join(metrics.MSD_MODES)}, not {self.msd!r}", setting="msd")


# ---------------------------------------------------------------- metrics per pair

METRIC_COLUMNS = ("scan_id", "method", "structure", "label", "dice", "msd_mm", "hd95_mm",
                  "mean_pred_to_ref_mm", "mean_ref_to_pred_mm", "pred_voxels", "ref_voxels", "status",
                  "resampled")
FAILURE_COLUMNS = ("scan_id", "method", "path", "error")


def _read(item: Prediction | Reference) -> LabelImage:
    return load_labels(item.source, None if item.image is None else f"{item.scan_id}: {IN_MEMORY}")


def evaluate_pair(pred: Prediction, ref: Reference, config: EvaluationConfig,
                  reference_image: LabelImage | None = None) -> pd.DataFrame:
    """Long table of metrics (one row per structure present in either map) for one pair."""
    pred_img = _read(pred)
    ref_img = reference_image if reference_image is not None else _read(ref)
    a, b, spacing, resampled = on_common_grid(pred_img, ref_img, config.grid)
    values = selected_values(a, b, config.labels)
    rows = [{"scan_id": pred.scan_id, "method": pred.method, "structure": structure_name(m.label),
             **asdict(m), "resampled": resampled}
            for m in metrics.label_metrics(a, b, spacing, values, config.msd)]
    return pd.DataFrame(rows, columns=list(METRIC_COLUMNS))


def _evaluate_reference_group(item) -> tuple[list[pd.DataFrame], list[dict]]:
    """All predictions of one reference (the reference is read once)."""
    ref, preds, config = item
    tables, failures = [], []
    try:
        ref_img = _read(ref)
    except (InputError, DataError) as exc:
        return [], [_failure(p, exc) for p in preds]
    for pred in preds:
        try:
            tables.append(evaluate_pair(pred, ref, config, ref_img))
        except (InputError, DataError) as exc:
            failures.append(_failure(pred, exc))
    return tables, failures


def _failure(pred: Prediction, exc: Exception) -> dict:
    return {"scan_id": pred.scan_id, "method": pred.method, "path": pred.where, "error": str(exc)}


def evaluate_pairs(pairing: Pairing, config: EvaluationConfig, jobs: int = 1,
                   progress: Progress | None = None, cluster: ClusterSpec | None = None
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metrics of every pair (long table) and the failures (scan_id, method, path, error).

    ``jobs`` > 1 evaluates references in that many processes; ``cluster``: on a Dask cluster
    instead, one task per reference (:mod:`morphometry.cluster`), with the same tables.
    ``progress`` counts the predictions done and logs each failure (``failed: <scan_id>
    <method>: <error>``) as it happens.
    """
    groups: dict[str, tuple[Reference, list[Prediction]]] = {}
    for pred, ref in pairing.pairs:
        groups.setdefault(ref.scan_id, (ref, []))[1].append(pred)
    items = [(ref, preds, config) for ref, preds in groups.values()]
    tables: list[list[pd.DataFrame]] = [[] for _ in items]
    failures: list[list[dict]] = [[] for _ in items]

    def take(index: int, result: tuple[list[pd.DataFrame], list[dict]]) -> None:
        tables[index], failures[index] = result
        if progress is not None:
            for row in failures[index]:
                progress.write(f"failed: {row['scan_id']} {row['method']}: {row['error']}")
            progress.update(len(items[index][1]))

    if cluster is not None:
        cluster_map(cluster, _evaluate_reference_group, items, take, name="evaluate",
                    on_failure=lambda index, message: take(
                        index, ([], [_failure(p, message) for p in items[index][1]])))
    else:
        pool = ProcessPoolExecutor(max_workers=jobs) if jobs > 1 and len(items) > 1 else None
        try:
            results = pool.map(_evaluate_reference_group, items) if pool else map(_evaluate_reference_group, items)
            for index, result in enumerate(results):
                take(index, result)
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
    done = [t for group in tables for t in group]
    table = pd.concat(done, ignore_index=True) if done else pd.DataFrame(columns=list(METRIC_COLUMNS))
    return table, pd.DataFrame([f for group in failures for f in group], columns=list(FAILURE_COLUMNS))


# ---------------------------------------------------------------- per scan and summaries


def per_scan(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (scan_id, method): mean Dice over the evaluated structures (missing ones count
    as 0), mean MSD and HD95 over the structures present in both maps (mm), counts."""
    grouped = table.groupby(["scan_id", "method"], sort=False)
    out = grouped.agg(mean_dice=("dice", "mean"), mean_msd_mm=("msd_mm", "mean"),
                      mean_hd95_mm=("hd95_mm", "mean"), n_structures=("structure", "size"),
                      n_missing=("status", lambda s: int((s != metrics.OK).sum())))
    return out.reset_index()


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
    rank = {"method": {m: i for i, m in enumerate(method_order(summary["method"]))},
            "qc_group": {g: i for i, g in enumerate(group_order(summary["qc_group"]))}}
    key = summary.apply(lambda r: (rank["method"][r["method"]], rank["qc_group"][r["qc_group"]],
                                   r["structure"] != MEAN_OVER_STRUCTURES), axis=1)
    return summary.loc[key.sort_values(kind="stable").index].reset_index(drop=True)


def comparison_values(table: pd.DataFrame, scans: pd.DataFrame) -> pd.DataFrame:
    """Dice and MSD per scan x method x structure, the per-scan means first (structure
    ``mean_over_structures``): the input of :func:`method_comparisons.compare_methods`."""
    means = scans.rename(columns={"mean_dice": "dice", "mean_msd_mm": "msd_mm"}).assign(structure=MEAN_OVER_STRUCTURES)
    columns = ["scan_id", "method", "qc_group", "structure", "dice", "msd_mm"]
    return pd.concat([means[columns], table[columns]], ignore_index=True)


def metadata(config: EvaluationConfig, qc_source: str, comparison: ComparisonConfig | None = None) -> dict:
    """Definitions and settings stored with the outputs."""
    meta = {"definitions": metrics.DEFINITIONS, "msd": config.msd, "grid": config.grid,
            "labels": config.labels if isinstance(config.labels, str) else list(config.labels),
            "qc_groups": qc_source, "units": "mm"}
    if comparison is not None:
        meta["comparisons"] = {"compare_to": comparison.compare_to, "correction": comparison.correction,
                               "test": "Wilcoxon signed-rank, two-sided, paired over scans; "
                                       "difference = method - compared_to",
                               "family": "all rows of one metric"}
    return meta


# ---------------------------------------------------------------- the Python API


@dataclass(frozen=True, repr=False)
class EvaluationResult:
    """Everything :func:`evaluate` computed; :meth:`write` saves it as ``morpho evaluate`` does.

    ``metrics``: one row per scan x method x structure (Dice, MSD, HD95 in mm, voxel counts,
    status, qc_group); ``scans``: one row per scan x method (means over structures);
    ``summary``: per method x QC group x structure; ``comparisons``: paired method comparisons
    (:mod:`morphometry.analysis.method_comparisons`); ``failures``: pairs that could not be
    evaluated (scan_id, method, path, error); ``unpaired``: predictions without a reference and
    references without a prediction; ``qc_source``: how the QC groups were formed.
    """

    metrics: pd.DataFrame
    scans: pd.DataFrame
    summary: pd.DataFrame
    comparisons: pd.DataFrame
    failures: pd.DataFrame
    unpaired: pd.DataFrame
    qc_source: str
    config: EvaluationConfig
    comparison: ComparisonConfig

    @property
    def ok(self) -> bool:
        """True when every paired prediction was evaluated."""
        return self.failures.empty

    def metadata(self) -> dict:
        """Definitions and settings stored in the Parquet files."""
        return metadata(self.config, self.qc_source, self.comparison)

    def write(self, out_dir: str | Path) -> Path:
        """Write metrics, summary, scans and comparisons (``.parquet`` with :meth:`metadata`, and
        ``.csv``), and ``failures.csv`` / ``unpaired.csv`` when not empty (a stale one is removed).
        Figures are drawn by :func:`morphometry.reports.evaluation_figures.fig5_boxplots`."""
        from morphometry.atomic import atomic_write
        from morphometry.tables import write_parquet

        out = Path(out_dir)
        meta = self.metadata()
        for name in ("metrics", "summary", "scans", "comparisons"):
            frame = getattr(self, name)
            write_parquet(frame, out / f"{name}.parquet", meta)
            atomic_write(out / f"{name}.csv", lambda tmp, f=frame: f.to_csv(tmp, index=False))
        for name in ("failures", "unpaired"):
            frame, path = getattr(self, name), out / f"{name}.csv"
            if len(frame):
                atomic_write(path, lambda tmp, f=frame: f.to_csv(tmp, index=False))
            else:
                path.unlink(missing_ok=True)
        return out

    def __repr__(self) -> str:
        methods = ", ".join(method_order(self.scans["method"]))
        return (f"EvaluationResult({len(self.scans)} prediction(s) of {self.scans['scan_id'].nunique()} scan(s); "
                f"methods: {methods}; {len(self.failures)} failure(s); QC groups: {self.qc_source})")


def evaluate(predictions, references, *, grid: str = "reference", msd: str = "mean_of_means",
             labels="synthseg", qc=None, qc_from: str | None = None, qc_thresholds=(0.65, 0.80),
             pred_method: str | None = None, compare_to: str = "auto", correction: str = "holm",
             jobs: int = 1, progress: bool = True, cluster=None,
             cluster_config: str | Path | None = None) -> EvaluationResult:
    """Dice and surface distances of predictions against references, by method and QC group.

    ``predictions``: a ``morpho segment`` output folder, a folder of ``<scan_id>_<method>`` label
    maps (``<scan_id>`` maps with ``pred_method``), a manifest CSV or DataFrame (scan_id, path,
    method), one label map file or nibabel image, a list of files, or a dict ``{scan_id: file or
    image}`` / ``{(scan_id, method): file or image}``. ``references``: a folder of ``<scan_id>``
    maps, a manifest (scan_id, path), one file or image, a list or a dict ``{scan_id: ...}``.
    One prediction and one reference are paired with each other; otherwise pairs share a scan_id.
    ``grid``, ``msd``, ``labels``: see :class:`EvaluationConfig` (``labels`` also takes structure
    names). QC groups come from ``qc`` (CSV or DataFrame: scan_id, qc_group) or from
    ``qc_from``'s mean Dice with ``qc_thresholds`` (low, high); otherwise one group, ``all``.
    ``compare_to`` and ``correction``: see :class:`ComparisonConfig`. ``jobs``: processes.
    ``cluster`` (``"local"``, ``"local:N"``, ``"slurm"``, ``"pbs"``, ``"tcp://HOST:PORT"`` or a
    :class:`~morphometry.cluster.ClusterSpec`) and ``cluster_config`` (YAML settings): evaluate
    on a Dask cluster instead of ``jobs`` processes, one task per reference; the same results.
    ``progress``: a progress line (or bar) per scan evaluated. Pairs that fail are logged and
    listed in ``failures``; DataError when none could be evaluated.
    """
    config = EvaluationConfig(grid=grid, msd=msd, labels=parse_label_selection(labels))
    comparison = ComparisonConfig(compare_to=compare_to, correction=correction)
    if not isinstance(jobs, int) or jobs < 1:
        raise InputError(f"must be at least 1 (got {jobs})", setting="jobs")
    if qc is not None and qc_from is not None:
        raise InputError("give QC groups as a table (qc) or derive them from a method (qc_from), not both",
                         setting="qc_from")
    spec = cluster_spec(cluster, cluster_config)
    rule = QcRule(qc_from, *qc_thresholds) if qc_from else None
    qc_table = read_qc_table(qc) if qc is not None else None
    pairing = pair_inputs(predictions, references, pred_method)
    pairing.warn_unpaired()
    with Progress(len(pairing.pairs), "evaluate", unit="scan", enabled=progress) as bar:
        table, failures = evaluate_pairs(pairing, config, jobs, bar, spec)
    if table.empty:
        if len(failures):
            raise DataError(f"no scan could be evaluated; first error: {failures['error'].iloc[0]}")
        raise DataError("none of the selected structures is in any pair of label maps", setting="labels")
    scans = per_scan(table)
    groups = qc_from_rule(scans, rule) if rule else qc_table
    table, scans = assign_groups(table, groups), assign_groups(scans, groups)
    result = EvaluationResult(metrics=table, scans=scans, summary=summarise(table, scans),
                              comparisons=compare_methods(comparison_values(table, scans), comparison),
                              failures=failures, unpaired=pairing.unpaired_table(), qc_source=_qc_source(rule, qc),
                              config=config, comparison=comparison)
    _log_notes(result)
    return result


def _qc_source(rule: QcRule | None, qc) -> str:
    if rule is not None:
        return rule.describe()
    if qc is None:
        return "none (one group: all)"
    return "table (DataFrame)" if isinstance(qc, pd.DataFrame) else f"table {qc}"


def _log_notes(result: EvaluationResult) -> None:
    table, scans = result.metrics, result.scans
    resampled = scans.merge(table[["scan_id", "method", "resampled"]].drop_duplicates(), on=["scan_id", "method"])
    for side, count in resampled.loc[resampled["resampled"] != "none", "resampled"].value_counts().items():
        log.info(f"note: {count} pair(s) on different grids: the {side} was resampled onto the "
                 f"{result.config.grid} grid (nearest neighbour)")
    for status, count in table.loc[table["status"] != metrics.OK, "status"].value_counts().items():
        log.info(f"note: {count} structure(s) {status.replace('_', ' ')}: Dice 0, distances NaN "
                 "(status column of metrics.csv)")
