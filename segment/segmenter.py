"""The Python API of segmentation: :class:`Segmenter` and :func:`merge`.

A Segmenter loads and verifies a model bundle and starts its networks once, then segments one scan
in memory (:meth:`Segmenter.segment`, from a file or a nibabel image) or many into an output folder
(:meth:`Segmenter.segment_many`, what ``morpho segment`` runs)::

    seg = Segmenter(methods=("synthseg+", "synthseg")).segment("t1.nii.gz")
    seg["synthseg+"].volumes["left_hippocampus"]  # mm^3
    Segmenter().segment_many("scans/", "out/").volumes  # one row per scan and method
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from morphometry.atomic import atomic_write, no_space
from morphometry.cluster import ClusterSpec, cluster_spec
from morphometry.dicom_convert import convert_series
from morphometry.dicom_records import COVARIATE_COLUMNS
from morphometry.dicom_series import DicomOptions
from morphometry.errors import InputError, ModelError, OutputError
from morphometry.folder_lock import FolderLock
from morphometry.inputs import ScanRecord, Survey, discover, survey
from morphometry.io import LoadLimits, Scan, check_image, load_scan, output_image
from morphometry.progress import Progress, log
from morphometry.segment import journal
from morphometry.segment.batch import (
    Outputs,
    SegmentBatch,
    SegmentOptions,
    Shard,
    disk_full,
    finish_method,
    merge_outputs,
    network_outputs,
    prepare,
    provenance,
    record_identity,
    remove_partial_writes,
    write_provenance,
)
from morphometry.segment.bundle import Bundle, load_bundle, require, verify_bundle
from morphometry.segment.methods import DEFAULT_METHOD, METHODS, STAGES, Method, resolve_methods
from morphometry.segment.models import STARTER_BUNDLE
from morphometry.segment.preprocess import PreprocessConfig
from morphometry.segment.runtime import DEVICES, Engine, RuntimeConfig
from morphometry.segment.synthseg_files import subject_name
from morphometry.segment.synthseg_tables import write_qc_csv, write_volumes_csv
from morphometry.stopping import StopRequest
from morphometry.tables import order_columns

IN_MEMORY_ID = "image"  # scan_id of a nibabel image without a file name, unless one is given
CT_WINDOW = (0.0, 80.0)  # Hounsfield units kept with ct=True (mri_synthseg --ct)
VOLUMES_FORMATS = ("tidy", "synthseg")  # segment_many(volumes_format=...)
STARTER_WARNING = ("warning: segmenting with the starter bundle, a demonstration, not a measurement (mean Dice "
                   "about 0.45 on held-out anatomy); for real volumes import the official weights with "
                   "`morpho models import-freesurfer` (or import-keras) and pass the bundle")
_starter_warned = False  # True once the starter warning was logged in this process


@dataclass(frozen=True, eq=False)
class MethodResult:
    """One method's segmentation of one scan, as ``morpho segment`` writes it."""

    method: str
    labels: nib.Nifti1Image  # int32 FreeSurfer labels on the output grid, in the scan's voxel order (seg/)
    posteriors: nib.Nifti1Image | None  # float32 (x, y, z, 33), channels of labels.SYNTHSEG_2, when asked for
    volumes: pd.Series  # the volumes.parquet row: identity, acquisition, volumes in mm^3, parcels, qc_*


@dataclass(frozen=True, eq=False)
class Segmentation:
    """The results of every configured method for one scan: ``seg["synthseg"]``; with one method,
    ``seg.labels``, ``seg.posteriors`` and ``seg.volumes`` directly."""

    scan_id: str
    results: dict[str, MethodResult]  # by method name
    warnings: tuple[str, ...] = ()  # recoverable oddities of the input (4-D series, NaN voxels, ...)

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.results)

    def __getitem__(self, method: str) -> MethodResult:
        if method not in self.results:
            raise KeyError(f"no method {method!r} in this segmentation (it has {', '.join(self.results)})")
        return self.results[method]

    def _only(self) -> MethodResult:
        if len(self.results) != 1:
            raise InputError(f"this segmentation holds {len(self.results)} methods ({', '.join(self.results)}); "
                             f"choose one, e.g. seg[{next(iter(self.results))!r}]")
        return next(iter(self.results.values()))

    @property
    def labels(self) -> nib.Nifti1Image:
        return self._only().labels

    @property
    def posteriors(self) -> nib.Nifti1Image | None:
        return self._only().posteriors

    @property
    def volumes(self) -> pd.Series:
        return self._only().volumes

    def volumes_table(self) -> pd.DataFrame:
        """One row per method (sorted by name), the columns of volumes.parquet."""
        rows = [self.results[name].volumes.to_dict() for name in sorted(self.results)]
        return order_columns(pd.DataFrame(rows))


@dataclass(frozen=True, eq=False)
class BatchResult:
    """What a :meth:`Segmenter.segment_many` run did, and the tables of its folder afterwards."""

    total: int  # scans segmented in this run (after sharding, those finished earlier not counted)
    succeeded: int
    failed: int
    skipped: int  # scans finished by an earlier run into the same folder
    timings: dict  # seconds per stage, summed over scans
    out_dir: Path
    volumes: pd.DataFrame  # volumes.parquet read back: every finished scan of the folder x method
    failures: pd.DataFrame  # failures.csv read back: scan_id, path, stage, error
    interrupted: str | None = None  # the signal that stopped the run early (SIGTERM, SIGINT), else None

    @property
    def ok(self) -> bool:
        """True when no scan of the folder failed (``morpho segment`` exits with 0)."""
        return self.failures.empty


@dataclass(frozen=True, eq=False)
class MergeResult:
    """The tables :func:`merge` wrote, read back."""

    out_dir: Path
    volumes: pd.DataFrame
    failures: pd.DataFrame


class Segmenter:
    """Segments scans with one model bundle and one or more methods.

    ``models``: ``"starter"`` (the bundle shipped with the package), a bundle folder or a
    :class:`~morphometry.segment.bundle.Bundle`. ``methods``: names of
    :data:`morphometry.segment.methods.METHODS` (or one name). ``device``: ``auto`` (CUDA when
    usable), ``cpu`` or ``cuda``; ``threads``: CPU threads of the networks (0: all cores);
    ``precision``: ``fp32``, ``fp16`` (CUDA only) or ``bf16`` (CPUs with AVX512-BF16 or AMX, OpenVINO);
    ``engine``: ``auto`` (OpenVINO on the CPU when installed, else ONNX Runtime), ``onnxruntime`` or
    ``openvino``; ``slab``: on the CPU, run the networks' full-resolution levels in slabs of this many
    rows (even; 0: whole graphs; None: 16 with OpenVINO, else 0): results equal to rounding, a
    fraction of the memory (:mod:`morphometry.segment.slabs`); ``head_window``: run the networks on
    the head's bounding box plus a margin
    instead of the whole padded field of view (:func:`~morphometry.segment.preprocess.head_window`;
    faster on scans with much air, results differ from the whole-image run, README);
    ``parc``: cortical parcellation and parcel volumes
    (needs a ``parc`` network); ``qc``: ``qc_*`` scores (needs a ``qc`` network); ``full_cleanup``:
    the topology clean-up of SynthSeg 2.0 for every method; ``fast``: ``mri_synthseg --fast`` for
    every method, the fast postprocessing (no topology clean-up) and no left-right flip averaging;
    ``parcel_reference``: what the parcel volumes sum to, ``white_matter`` (labels 2 + 41, as the
    original's files) or ``cortex`` (3 + 42, what the original meant);
    ``crop``: analyse only a centred box of 1 or 3 sizes (mm at the working resolution, along
    R, A, S; rounded up to multiples of 32), the rest is background (``mri_synthseg --crop``);
    ``ct``: clip intensities to [0, 80] (Hounsfield units) before normalising (``mri_synthseg
    --ct``); ``workers``: threads that load, preprocess, postprocess and write around inference in
    :meth:`segment_many`.

    The bundle is loaded and verified and the networks are started here, once; errors name the
    setting at fault. Segmenting with the starter bundle logs a one-line warning, once per process.
    """

    def __init__(self, models: str | os.PathLike | Bundle = "starter", methods: str | Iterable[str] = (DEFAULT_METHOD,),
                 device: str = "auto", threads: int = 0, *, precision: str = "fp32", engine: str = "auto",
                 slab: int | None = None, head_window: bool = False, parc: bool = False, qc: bool = False,
                 full_cleanup: bool = False, fast: bool = False, parcel_reference: str = "white_matter",
                 crop: int | Iterable[int] | None = None, ct: bool = False, workers: int = 2):
        if device not in DEVICES:
            raise InputError(f"{device!r}: choose {', '.join(DEVICES)}", setting="device")
        self.runtime = RuntimeConfig(device=device, threads=_whole(threads, "threads", 0), precision=precision,
                                     engine=engine, slab=None if slab is None else _whole(slab, "slab", 0))
        self.workers = _whole(workers, "workers", 1)
        self.options = SegmentOptions(parc=bool(parc), qc=bool(qc), full_cleanup=bool(full_cleanup), fast=bool(fast),
                                      parcel_reference=parcel_reference)
        self.methods: tuple[Method, ...] = _methods(methods)
        self.bundle = _bundle(models)
        self._verify()
        self.engine = Engine(self.bundle, list(self.methods), self.runtime, parc=self.options.parc, qc=self.options.qc,
                             flip=not self.options.fast)
        self.limits = LoadLimits()
        self.preprocessing = PreprocessConfig(resolution_mm=self.bundle.resolution_mm, min_size=self.bundle.min_size,
                                              ct_window=CT_WINDOW if ct else None, crop=_crop(crop),
                                              head_window=bool(head_window))
        _warn_if_starter(self.bundle)

    def _verify(self) -> None:
        for method in self.methods:
            _require(self.bundle, method.roles, f"method {method.name}", "methods")
        if self.options.parc:
            _require(self.bundle, {"parc"}, "parcellation", "parc")
        if self.options.qc:
            _require(self.bundle, {"qc"}, "QC", "qc")
        roles = {r for m in self.methods for r in m.roles} | ({"parc"} if self.options.parc else set()) \
            | ({"qc"} if self.options.qc else set())
        problems = verify_bundle(self.bundle, tuple(sorted(roles)))
        if problems:
            raise ModelError(f"{self.bundle.root}: bundle failed verification: {'; '.join(problems)}", setting="models")

    @property
    def device(self) -> str:
        """``cpu`` or ``cuda``: where the networks run."""
        return self.engine.device

    @property
    def method_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.methods)

    def __repr__(self) -> str:
        return (f"Segmenter(models={str(self.bundle.root)!r}, methods={self.method_names!r}, "
                f"device={self.runtime.device!r}, threads={self.runtime.threads}, "
                f"precision={self.runtime.precision!r}, engine={self.runtime.engine!r}, slab={self.runtime.slab!r}, "
                f"parc={self.options.parc}, qc={self.options.qc}, full_cleanup={self.options.full_cleanup}, "
                f"fast={self.options.fast}, parcel_reference={self.options.parcel_reference!r}, "
                f"crop={self.preprocessing.crop}, ct={self.preprocessing.ct_window is not None}, "
                f"head_window={self.preprocessing.head_window}, "
                f"workers={self.workers})")

    def fingerprint(self) -> str:
        """A hash of everything that changes results: the bundle (its bundle.json, which holds every
        network's hash), the methods as run, the options and the preprocessing."""
        doc = {"bundle": self.bundle.sha256(), "methods": [asdict(m) for m in self.methods],
               "options": asdict(self.options), "preprocessing": asdict(self.preprocessing),
               "precision": self.runtime.precision}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()

    def synthseg_version(self, method: str) -> str:
        """:func:`synthseg_version` of ``method`` with this segmenter's bundle."""
        return synthseg_version(self.bundle, method)

    # -- one scan, in memory ---------------------------------------------------------------------
    def segment(self, image: str | os.PathLike | nib.spatialimages.SpatialImage, *, posteriors: bool = False,
                scan_id: str | None = None) -> Segmentation:
        """Segment one scan: a file (.nii, .nii.gz, .mgz) or a nibabel image held in memory.

        ``posteriors``: also return the posteriors. ``scan_id``: the row's scan_id (default: the
        file name without its suffix; ``"image"`` for an image without a file); subject_id is the
        BIDS ``sub-*`` of the path, else the scan_id. Raises InputError naming the file (or the
        scan_id) for an unreadable or unusable scan.
        """
        scan, identity = self._scan(image, scan_id)
        for warning in scan.warnings:
            log.warning(f"warning: {scan.path}: {warning}")
        pre = prepare(scan, self.preprocessing)
        results = {}
        for net in network_outputs(self.engine, pre, self.options, posteriors):
            out = finish_method(identity, scan, pre, net, model_id=self.bundle.model_id,
                                full_cleanup=self.options.full_cleanup, fast=self.options.fast,
                                parcel_reference=self.options.parcel_reference, keep_posteriors=posteriors)
            post = (None if out.posteriors is None else
                    output_image(out.posteriors, pre.grid_affine, scan.header, dtype=np.float32))
            row = order_columns(pd.DataFrame([out.row])).iloc[0].rename(None)
            labels = output_image(out.labels, pre.grid_affine, scan.header, dtype=np.int32)
            results[net.method.name] = MethodResult(net.method.name, labels, post, row)
        return Segmentation(identity["scan_id"], results, tuple(scan.warnings))

    def _scan(self, image, scan_id: str | None) -> tuple[Scan, dict]:
        if scan_id is not None and (not isinstance(scan_id, str) or not scan_id.strip()):
            raise InputError(f"must be a non-empty text (got {scan_id!r})", setting="scan_id")
        if isinstance(image, (str, os.PathLike)):
            path = Path(image)
            if path.is_dir():
                raise InputError(f"{path} is a folder; segment takes one scan (segment_many takes folders)",
                                 setting="image")
            scan = load_scan(path, self.limits)
            identity = record_identity(discover([path])[0])
        else:
            filename = image.get_filename() if isinstance(image, nib.spatialimages.SpatialImage) else None
            scan = check_image(image, filename or scan_id or IN_MEMORY_ID, self.limits)
            identity = (record_identity(discover([filename])[0]) if filename else
                        {"scan_id": IN_MEMORY_ID, "subject_id": IN_MEMORY_ID, "session_id": None, "path": None})
        if scan_id is not None:
            subject = scan_id if identity["subject_id"] == identity["scan_id"] else identity["subject_id"]
            identity = {**identity, "scan_id": scan_id, "subject_id": subject}
        return scan, identity

    # -- many scans, into a folder ---------------------------------------------------------------
    def segment_many(self, inputs: str | os.PathLike | Iterable[str | os.PathLike], out_dir: str | os.PathLike, *,
                     resume: bool = True, shard: str | Shard | None = None, progress: bool = True,
                     posteriors: bool = False, resampled: bool = False, volumes_format: str = "tidy",
                     command=None, series_filter: str | None = None, keep_identifiers: bool = False,
                     id_key: str | os.PathLike | None = None, cluster=None,
                     cluster_config: str | os.PathLike | None = None) -> BatchResult:
        """Segment every scan of ``inputs`` (image files, folders searched recursively, BIDS
        datasets, manifest CSVs) into ``out_dir``, as ``morpho segment`` does.

        Writes ``seg/<scan_id>_<method>.nii.gz``, ``volumes.parquet`` and ``.csv``,
        ``failures.csv``, ``provenance.json`` (recording ``command``: an argv list or a text;
        default: this call), and with ``posteriors`` / ``resampled`` ``posteriors/`` and
        ``resampled/``. A failing scan is logged, listed in failures.csv, and the others go on.
        ``resume``: continue a batch already in ``out_dir`` (scans finished there are skipped,
        failed ones retried); False refuses a used folder. ``shard``: ``"K/N"`` or a
        :class:`~morphometry.segment.batch.Shard`, only the scans of shard K of N.
        ``cluster``: run the scans on a Dask cluster, ``"local"``, ``"local:N"`` (N worker
        processes here), ``"slurm"``, ``"pbs"`` (batch jobs through dask-jobqueue),
        ``"tcp://HOST:PORT"`` (a running scheduler) or a :class:`~morphometry.cluster.ClusterSpec`;
        ``cluster_config``: a YAML file of the cluster's settings (:func:`~morphometry.cluster.cluster_spec`).
        Each worker process loads the bundle once and writes its scans' files and journal entries
        into ``out_dir`` (shared with the workers); the tables are the same as without a cluster.
        With several GPUs, one worker process per GPU; ``threads`` are per worker process.
        ``progress``: a bar on a terminal, else a log line every 5 %. ``volumes_format``:
        ``"tidy"`` (the tables above) or ``"synthseg"``: also ``volumes_synthseg.csv`` (and with QC
        ``qc_synthseg.csv``), the files ``mri_synthseg --vol/--qc`` writes, one row per finished
        scan in path order (several methods: one file per method, ``volumes_synthseg_<method>.csv``).

        DICOM (folders of series, zip archives, manifest rows naming a series folder): each usable
        series is converted once into ``converted/<scan_id>.nii.gz`` (kept for ``resume``) and
        segmented; its acquisition columns join its rows; ``skipped.csv`` lists the series and
        files left out with reasons, ``covariates.csv`` age and sex for ``morpho fit-ageing``.
        Ids are keyed pseudonyms (:mod:`morphometry.identity`, key file ``id_key``, created on first
        use); ``keep_identifiers`` also writes patient identifiers in clear. ``series_filter``:
        conditions on tags (:class:`~morphometry.dicom_series.SeriesFilter`); CT series are kept
        when this Segmenter has ``ct``.
        """
        if volumes_format not in VOLUMES_FORMATS:
            raise InputError(f"{volumes_format!r}: choose {', '.join(VOLUMES_FORMATS)}", setting="volumes_format")
        spec = cluster_spec(cluster, cluster_config)
        started = datetime.now(timezone.utc)
        dicom = DicomOptions(series_filter, self.preprocessing.ct_window is not None, bool(keep_identifiers),
                             None if id_key is None else Path(id_key))
        found = survey([inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs), dicom)
        records = found.records
        if shard is not None:
            if not isinstance(shard, Shard):
                shard = Shard.parse(shard)
            records = [r for r in records if shard.holds(r.scan_id)]
        out = Path(out_dir)
        if command is None:
            command = (f"{self!r}.segment_many({inputs!r}, {str(out)!r}, resume={resume}, shard={shard!r}, "
                       f"posteriors={posteriors}, resampled={resampled}, volumes_format={volumes_format!r}, "
                       f"series_filter={series_filter!r}, keep_identifiers={keep_identifiers}, "
                       f"id_key={None if id_key is None else str(id_key)!r})")
        with FolderLock(out, " ".join(command) if isinstance(command, list) else str(command)), \
                StopRequest() as stop:
            if journal.has_entries(out) and not resume:
                raise InputError(f"{out} already holds results of an earlier batch; resume it or choose another "
                                 "output folder", setting="resume")
            _write_dicom_tables(out, found, records, dicom)
            done = journal.finished(out, list(self.method_names))
            todo = [r for r in records if r.scan_id not in done]
            remove_partial_writes(out)
            todo, convert_failed = _convert_dicom(todo, out, self.workers, progress)
            log.info(f"segmenting {len(todo)} scan(s) with {', '.join(self.method_names)} on {self.device}"
                     + (f" ({len(records) - len(todo)} already done)" if len(todo) < len(records) else ""))
            batch = SegmentBatch(self.bundle, self.engine, out, self.options, Outputs(posteriors, resampled),
                                 self.workers, self.limits, self.preprocessing)
            full, compactor = None, journal.Compactor(out)
            with Progress(len(todo), "segment", "scan", enabled=progress) as bar:
                try:
                    succeeded, failed = (batch.run(todo, bar, lambda: stop.requested, compactor) if spec is None else
                                         self._on_cluster(spec, batch, todo, bar, lambda: stop.requested, compactor))
                except OutputError as exc:  # a full disk: keep what is journaled, write what fits
                    full, succeeded, failed = exc, None, None
            compactor.wait()
            rows, full = _finish_journal(out, self.bundle.model_id, full)
            if succeeded is None:  # a full disk; provenance counts successes from the journal
                succeeded, failed = len(journal.finished(out, list(self.method_names)) & {r.scan_id for r in todo}), 0
            total = len(todo) + convert_failed
            interrupted = "no space left" if full else stop.signal.name if stop.requested else None
            counts = {"total": total, "succeeded": succeeded, "failed": failed + convert_failed,
                      "skipped": len(records) - total, "timings": dict(batch.timings), "interrupted": interrupted}
            try:
                write_provenance(out, provenance(self.bundle, self.engine, command, counts, started))
            except OSError as exc:
                if not no_space(exc):
                    raise
                full = full or disk_full(out, exc)
            if full is not None:
                raise full
            volumes, failures = _read_tables(out, rows)
            if volumes_format == "synthseg":
                self._write_synthseg_tables(volumes, out)
        return BatchResult(**counts, out_dir=out, volumes=volumes, failures=failures)

    def _on_cluster(self, spec: ClusterSpec, batch: SegmentBatch, records: list[ScanRecord], bar,
                    should_stop=lambda: False, compactor: journal.Compactor | None = None) -> tuple[int, int]:
        """Run ``records`` on a Dask cluster instead of ``batch.run``: each worker process builds
        ``batch``'s setup once and segments one scan per task into the same folder and journal
        (:mod:`morphometry.segment.cluster_batch`); the timings go into ``batch.timings``.
        ``should_stop`` and ``compactor``: as :meth:`SegmentBatch.run`'s."""
        from morphometry.segment.cluster_batch import WorkerRecipe, local_processes, run_on_cluster, worker_threads

        spec = local_processes(spec, self.device, self.runtime.threads, self.engine.scan_peak_gb)
        runtime = dataclasses.replace(self.runtime, threads=worker_threads(spec, self.device, self.runtime.threads))
        recipe = WorkerRecipe(self.bundle.root, self.methods, runtime, self.options, batch.outputs, batch.pre_config,
                              batch.limits, batch.out_dir)
        log.info(f"on a {spec.kind} cluster" + (f" of {spec.processes} worker process(es)" if spec.kind == "local"
                                                 else ""))
        run = run_on_cluster(recipe, records, spec, bar, should_stop, compactor)
        batch.timings.update(run.timings)
        batch.timings["cluster:task_wall"] = run.task_seconds
        return run.succeeded, run.failed

    def _write_synthseg_tables(self, volumes: pd.DataFrame, out: Path) -> None:
        """``volumes_synthseg.csv`` (+ ``qc_synthseg.csv``) per method: the original's layout, rows
        sorted by path, subject = file name as the original writes it."""
        for name in self.method_names:
            mine = volumes[volumes["method"] == name].sort_values("path") if not volumes.empty else volumes
            rows = [(subject_name(Path(row["path"])), row) for _, row in mine.iterrows()]
            tag = "" if len(self.method_names) == 1 else f"_{name}"
            write_volumes_csv(out / f"volumes_synthseg{tag}.csv", rows, self.options.parc,
                              self.synthseg_version(name) == "1.0", self.options.parcel_reference)
            if self.options.qc:
                write_qc_csv(out / f"qc_synthseg{tag}.csv", rows)


def synthseg_version(bundle: Bundle, method: str) -> str:
    """``"1.0"`` when ``method`` ends with a SynthSeg 1.0 network of ``bundle`` (imported from 32
    labels, no CSF: its CSF channel is empty), else ``"2.0"``; the original's CSV layouts differ."""
    last = bundle.networks[STAGES[METHODS[method].chain[-1]][0]]
    return "2.0" if 24 in last.architecture.get("source_labels", last.labels) else "1.0"


def merge(sources: str | os.PathLike | Iterable[str | os.PathLike], out_dir: str | os.PathLike) -> MergeResult:
    """Combine the results of several :meth:`Segmenter.segment_many` folders (shards) into
    ``out_dir``: volumes.parquet, volumes.csv and failures.csv, one row per scan and method."""
    folders = [Path(s) for s in ([sources] if isinstance(sources, (str, os.PathLike)) else sources)]
    if not folders:
        raise InputError("no folders to merge", setting="sources")
    for src in folders:
        if not journal.has_entries(src):
            raise InputError(f"{src}: no segment results found (no {journal.JOURNAL_DIR}/ entries)")
    out = Path(out_dir)
    rows, _ = merge_outputs(out, folders)
    volumes, failures = _read_tables(out, rows)
    return MergeResult(out, volumes, failures)


SKIPPED_COLUMNS = ("scan_id", "path", "series_description", "reason")  # skipped.csv
CONVERTED_DIR = "converted"  # OUT/converted/<scan_id>.nii.gz: DICOM series as NIfTI


def _write_dicom_tables(out: Path, found: Survey, records: list[ScanRecord], dicom: DicomOptions) -> None:
    """``skipped.csv`` (series and files left out, with reasons) and ``covariates.csv`` (age, sex
    of the DICOM scans of ``records``) when the inputs hold DICOM; InputError when no scan is left."""
    if not found.skipped and not any(r.series is not None for r in records):
        return
    out.mkdir(parents=True, exist_ok=True)
    skipped = pd.DataFrame([asdict(s) for s in found.skipped], columns=list(SKIPPED_COLUMNS))
    atomic_write(out / "skipped.csv", lambda tmp: skipped.to_csv(tmp, index=False))
    mine = {r.scan_id for r in records}
    covariates = pd.DataFrame([c for c in found.covariates if c["scan_id"] in mine], columns=list(COVARIATE_COLUMNS))
    atomic_write(out / "covariates.csv", lambda tmp: covariates.sort_values("scan_id").to_csv(tmp, index=False))
    if found.skipped:
        log.info(f"{len(found.skipped)} DICOM series or file(s) left out, reasons in {out / 'skipped.csv'}")
    if dicom.keep_identifiers:
        log.warning(f"warning: writing patient identifiers in clear into {out} (--keep-identifiers)")
    if not found.records:
        raise InputError(f"no usable scans: {len(found.skipped)} series or file(s) left out, reasons in "
                         f"{out / 'skipped.csv'}")


def _convert_dicom(records: list[ScanRecord], out: Path, workers: int, progress: bool) -> tuple[list[ScanRecord], int]:
    """Convert the DICOM series of ``records`` into ``OUT/converted/<scan_id>.nii.gz`` (a file
    already there, from an earlier run, is kept); return the records to segment, with the
    converted paths, and how many conversions failed (journaled as failures of stage convert)."""
    folder = out / CONVERTED_DIR
    dicom = [r for r in records if r.series is not None and not (folder / f"{r.scan_id}.nii.gz").is_file()]
    if folder.is_dir():  # leftovers of a killed conversion
        for leftover in [*folder.glob(".convert-*"), *folder.glob(".*.nii.gz*")]:
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    failed: set[str] = set()

    def one(rec: ScanRecord) -> None:
        try:
            convert_series(rec.series, folder / f"{rec.scan_id}.nii.gz", rec.scan_id)
            return
        except InputError as exc:
            message = str(exc)
        except Exception as exc:  # an unreadable dcm2niix output, a full disk: this series fails, the batch goes on
            message = f"{rec.scan_id}: conversion failed ({type(exc).__name__}: {exc})"
        failed.add(rec.scan_id)
        journal.record(out, {"scan_id": rec.scan_id, "path": str(rec.path), "warnings": [], "status": "failed",
                             "stage": "convert", "error": message})
        log.warning(f"failed: {message}")

    if dicom:
        with Progress(len(dicom), "convert", "series", enabled=progress) as bar, \
                ThreadPoolExecutor(workers, thread_name_prefix="convert") as pool:
            for _ in pool.map(one, dicom):
                bar.update(1)
    kept = []
    for rec in records:
        if rec.series is None:
            kept.append(rec)
        elif rec.scan_id not in failed:
            if rec.extra.get("dicom_flags"):
                log.warning(f"warning: {rec.scan_id}: {rec.extra['dicom_flags']}")
            kept.append(dataclasses.replace(rec, path=folder / f"{rec.scan_id}.nii.gz"))
    return kept, len(failed)


def _finish_journal(out: Path, model_id: str, full: OutputError | None) -> tuple[int, OutputError | None]:
    """Compact the journal of ``out`` and write its tables; after a full disk (``full``, or one met
    here) the journal stays readable and the old tables stay. Returns (volumes rows, full)."""
    try:
        journal.compact(out)
    except OSError as exc:  # the entries stay loose or claimed, readable; the next run compacts them
        if not no_space(exc):
            raise
        full = full or disk_full(out, exc)
    try:
        rows, _ = merge_outputs(out, metadata={"model_id": model_id})
    except OSError as exc:
        if not no_space(exc):
            raise
        return 0, full or disk_full(out, exc)
    return rows, full


def _read_tables(out: Path, rows: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """volumes.parquet (empty when no scan succeeded) and failures.csv of a results folder."""
    volumes = pd.read_parquet(out / "volumes.parquet") if rows else pd.DataFrame()
    return volumes, pd.read_csv(out / "failures.csv", dtype=str)


def _bundle(models) -> Bundle:
    if isinstance(models, Bundle):
        return models
    if isinstance(models, str) and models == "starter":
        if not (STARTER_BUNDLE / "bundle.json").is_file():
            raise ModelError(f"no starter bundle in {STARTER_BUNDLE}; give a bundle folder (e.g. one made by "
                             "morpho models import-keras)", setting="models")
        models = STARTER_BUNDLE
    if not isinstance(models, (str, os.PathLike)):
        raise InputError(f"expected 'starter', a bundle folder or a Bundle, got {type(models).__name__}",
                         setting="models")
    try:
        return load_bundle(models)
    except ModelError as exc:
        raise exc.renamed("models") from None


def _methods(methods) -> tuple[Method, ...]:
    names = [methods] if isinstance(methods, str) else list(methods)
    if not names:
        raise InputError("give at least one method", setting="methods")
    try:
        return tuple(resolve_methods(names))
    except InputError as exc:
        raise exc.renamed("methods") from None


def _crop(crop) -> tuple[int, int, int] | None:
    """None, or 1 or 3 whole sizes >= 1 (mm) -> three sizes."""
    if crop is None:
        return None
    sizes = [crop] if isinstance(crop, (int, np.integer)) else list(crop)
    if len(sizes) not in (1, 3) or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1
                                       for c in sizes):
        raise InputError(f"give 1 or 3 whole sizes >= 1 (got {crop!r})", setting="crop")
    return tuple(int(c) for c in sizes * (3 if len(sizes) == 1 else 1))  # type: ignore[return-value]


def _warn_if_starter(bundle: Bundle) -> None:
    """One warning line per process when the starter bundle segments."""
    global _starter_warned
    if _starter_warned or bundle.root.resolve() != STARTER_BUNDLE.resolve():
        return
    _starter_warned = True
    log.warning(STARTER_WARNING)


def _require(bundle: Bundle, roles: set[str], what: str, setting: str) -> None:
    try:
        require(bundle, roles, what)
    except ModelError as exc:
        raise exc.renamed(setting) from None


def _whole(value, setting: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"must be a whole number >= {minimum} (got {value!r})", setting=setting)
    return int(value)
