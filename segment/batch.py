"""The segmentation of one scan, step by step, and the batch that runs it over many scans.

Per scan: load + check -> :func:`prepare` (preprocess) -> :func:`network_outputs` (one method
after another, shared stages once) -> :func:`finish_method` (postprocess, back to the scan's voxel
order, volumes row). ``Segmenter.segment`` runs these in turn for one scan; :class:`SegmentBatch`
overlaps them over many: loading and preprocessing in worker threads ahead of inference, networks
in the calling thread, postprocessing and image writing in worker threads while the next scan
runs, then one journal entry per scan. A failing scan is recorded with its cause and the batch goes
on; tables are merged from the journal at the end.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import nibabel as nib
import numpy as np

from morphometry import __version__
from morphometry.atomic import atomic_write, no_space
from morphometry.errors import InputError, MorphometryError, OutputError
from morphometry.inputs import ScanRecord
from morphometry.io import LoadLimits, Scan, load_scan, save_image
from morphometry.labels import SYNTHSEG_2
from morphometry.segment import journal
from morphometry.segment.bundle import Bundle
from morphometry.segment.methods import Method
from morphometry.segment.postprocess import (
    PostprocessConfig,
    postprocess,
    postprocess_parcellation,
    to_native,
    uncrop,
)
from morphometry.segment.preprocess import PreprocessConfig, Preprocessed, preprocess
from morphometry.segment.runtime import Engine
from morphometry.segment.streamed_postprocess import FastStream
from morphometry.tables import write_volumes
from morphometry.volumes import PARCEL_REFERENCES, channel_sums, parcel_volumes, qc_scores, volumes_from_sums


@dataclass(frozen=True)
class SegmentOptions:
    """What is computed for every scan and method besides the labels and the structure volumes."""

    parc: bool = False  # cortical parcellation: parcel labels in the cortex, parcel volumes (mm^3)
    qc: bool = False  # automated QC: qc_* scores in [0, 1]
    full_cleanup: bool = False  # SynthSeg 2.0 topology clean-up for every method (fair comparisons)
    fast: bool = False  # the original's --fast: no left-right flip, fast clean-up for every method
    parcel_reference: str = "white_matter"  # parcels sum to: white_matter (2 + 41, as the original) | cortex

    def __post_init__(self) -> None:
        if self.fast and self.full_cleanup:
            raise InputError("fast skips the topology clean-up that full_cleanup asks for; choose one",
                             setting="fast")
        if self.parcel_reference not in PARCEL_REFERENCES:
            raise InputError(f"{self.parcel_reference!r}: choose {', '.join(PARCEL_REFERENCES)}",
                             setting="parcel_reference")


@dataclass(frozen=True)
class Outputs:
    """Optional files a batch writes besides ``seg/`` and the tables. Every image carries the input's
    header, as the original writes it (:func:`morphometry.io.output_image`)."""

    posteriors: bool = False  # OUT/posteriors/<scan_id>_<method>.nii.gz, float32 4-D
    resampled: bool = False  # OUT/resampled/<scan_id>.nii.gz, the image on the working grid (input's type)


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``: a scan belongs to it by a hash of its scan_id."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise InputError(f"K must be between 1 and N (got {self.index}/{self.count})", setting="shard")

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"K/N"`` -> Shard(K, N)."""
        try:
            k, n = (int(v) for v in str(text).split("/"))
        except ValueError:
            raise InputError(f"expected K/N, e.g. 3/10 (got {text!r})", setting="shard") from None
        return cls(k, n)

    def holds(self, scan_id: str) -> bool:
        digest = int(hashlib.sha1(scan_id.encode()).hexdigest()[:12], 16)
        return digest % self.count == self.index - 1


@dataclass(frozen=True, eq=False)
class NetworkOutput:
    """The network outputs of one method for one scan, on the padded RAS-aligned grid."""

    method: Method
    posteriors: np.ndarray | FastStream  # (C, X, Y, Z) float32, overwritten by postprocessing; or streamed
    parcellation: np.ndarray | None  # (69, X, Y, Z) float32 with parcellation
    qc: np.ndarray | None  # the 9 raw QC network outputs with QC


@dataclass(frozen=True, eq=False)
class MethodOutput:
    """One method's result for one scan, on the output grid in the scan's voxel order."""

    row: dict  # the volumes-table row: identity, acquisition, volumes (mm^3), parcels, qc_* scores
    labels: np.ndarray  # (x, y, z) int32 FreeSurfer label values
    posteriors: np.ndarray | None  # (x, y, z, C) float32, when asked for
    timings: dict  # seconds per step


def record_identity(record: ScanRecord) -> dict:
    """Identity columns of a discovered scan, then its manifest's extra columns."""
    return {"scan_id": record.scan_id, "subject_id": record.subject_id, "session_id": record.session_id,
            "path": str(record.path), **record.extra}


def prepare(scan: Scan, config: PreprocessConfig) -> Preprocessed:
    """:func:`preprocess`, with a numerical failure (ValueError, MemoryError) as an InputError naming the scan."""
    try:
        return preprocess(scan, config)
    except (ValueError, MemoryError) as exc:
        raise InputError(f"{scan.path}: cannot preprocess ({type(exc).__name__}: {exc})") from None


def network_outputs(engine: Engine, pre: Preprocessed, options: SegmentOptions,
                    keep_posteriors: bool = False) -> Iterator[NetworkOutput]:
    """Run every method of ``engine`` (and parcellation / QC as ``options`` ask) on a preprocessed scan.

    A method postprocessed in fast mode whose posteriors are needed only for labels and volumes
    (no parcellation, QC or ``keep_posteriors``) streams them slab by slab into a
    :class:`FastStream` where the engine can (:meth:`Engine.streams`): the same results without
    holding the 33-channel posteriors (1.45 GB at 1 mm)."""
    sinks = {}
    if not (options.parc or options.qc or keep_posteriors):
        for method in engine.methods:
            config = postprocess_config(method, options.full_cleanup, options.fast)
            if not config.topology and engine.streams(method):
                sinks[method.name] = FastStream(SYNTHSEG_2, pre.network_image.shape, pre.network_inner, config)
    for method, handles, posteriors in engine.segment(pre.network_image, sinks):
        parc = engine.parcellate(handles) if options.parc else None
        qc = engine.quality(handles) if options.qc else None
        yield NetworkOutput(method, posteriors, parc, qc)


def postprocess_config(method: Method, full_cleanup: bool, fast: bool) -> PostprocessConfig:
    """The clean-up of ``method``: topology as the original for the method unless ``full_cleanup``
    or ``fast`` (:class:`SegmentOptions`) say otherwise; it overwrites the network output."""
    return PostprocessConfig(topology=(method.topology or full_cleanup) and not fast, in_place=True)


def finish_method(identity: dict, scan: Scan, pre: Preprocessed, net: NetworkOutput, *, model_id: str,
                  full_cleanup: bool = False, fast: bool = False, parcel_reference: str = "white_matter",
                  keep_posteriors: bool = False) -> MethodOutput:
    """Postprocess one method's network outputs into labels, posteriors and the volumes row.

    ``identity``: scan_id, subject_id, session_id, path and any extra columns (extras that clash
    with a column of the row are left out). ``full_cleanup`` applies the topology clean-up whatever
    the method, ``fast`` the fast clean-up whatever the method (:class:`SegmentOptions`);
    ``parcel_reference``: what the parcel volumes sum to (:data:`morphometry.volumes.PARCEL_REFERENCES`);
    ``keep_posteriors`` returns the posteriors too. Volumes are computed as the original does
    (:mod:`morphometry.volumes`); of a cropped scan (``pre.crop``) only the box is analysed, the rest
    is background, and the structure sums are float64 as the original's (over the box: the
    original's sums over the whole grid only add zeros). With a head window (``pre.window``) the
    networks' outputs cover the window; the rest of the grid is background.
    """
    start = time.perf_counter()
    row = {key: identity[key] for key in ("scan_id", "subject_id", "session_id", "path")}
    row.update(method=net.method.name, model_id=model_id, **scan.info.acquisition_columns())
    row.update({k: v for k, v in identity.items() if k not in row})
    dtype = np.float32 if pre.crop is None else np.float64
    if isinstance(net.posteriors, FastStream):
        if net.parcellation is not None or keep_posteriors:
            raise ValueError("streamed posteriors give labels and volumes only")
        seg = net.posteriors.result()
        sums = seg.channel_sums(pre.alignment.flips, dtype)
    else:
        config = postprocess_config(net.method, full_cleanup, fast)
        seg = postprocess(net.posteriors, SYNTHSEG_2, pre.network_inner, config)
        sums = channel_sums(seg.posteriors, pre.alignment.flips, dtype)
    row.update(volumes_from_sums(sums, SYNTHSEG_2, pre.voxel_volume_mm3))
    labels = seg.labels
    if net.parcellation is not None:
        parcellated = postprocess_parcellation(net.parcellation, seg, pre.network_inner)
        labels = parcellated.labels
        parcel_sums = channel_sums(parcellated.posteriors[1:])
        row.update(parcel_volumes(parcel_sums, sums, SYNTHSEG_2, pre.voxel_volume_mm3, parcel_reference))
    if net.qc is not None:
        row.update(qc_scores(net.qc))
    posteriors = None
    if keep_posteriors:
        posteriors = np.ascontiguousarray(to_native(uncrop(np.moveaxis(seg.posteriors, 0, -1), pre), pre))
    native = np.ascontiguousarray(to_native(uncrop(labels, pre), pre))
    return MethodOutput(row, native, posteriors, {"postprocess": time.perf_counter() - start})


def _load_and_prepare(record: ScanRecord, config: PreprocessConfig, limits: LoadLimits):
    timings = {}
    start = time.perf_counter()
    try:
        scan = load_scan(record.path, limits)
    except MorphometryError as exc:
        raise _ScanFailure("load", str(exc)) from None
    timings["load"] = time.perf_counter() - start
    start = time.perf_counter()
    try:
        pre = prepare(scan, config)
    except MorphometryError as exc:
        raise _ScanFailure("preprocess", str(exc)) from None
    timings["preprocess"] = time.perf_counter() - start
    return scan, pre, timings


class _ScanFailure(Exception):
    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


class SegmentBatch:
    """Runs the methods of an engine over many scans into an output folder (files and journal).

    ``preprocessing``: the settings of :func:`preprocess` (crop, CT window, ...); default: the
    bundle's working resolution and minimum size.
    """

    def __init__(self, bundle: Bundle, engine: Engine, out_dir: Path, options: SegmentOptions = SegmentOptions(),
                 outputs: Outputs = Outputs(), workers: int = 2, limits: LoadLimits = LoadLimits(),
                 preprocessing: PreprocessConfig | None = None):
        self.bundle, self.engine, self.out_dir = bundle, engine, Path(out_dir)
        self.options, self.outputs, self.workers, self.limits = options, outputs, max(1, workers), limits
        self.pre_config = preprocessing or PreprocessConfig(resolution_mm=bundle.resolution_mm,
                                                            min_size=bundle.min_size)
        self.timings: dict[str, float] = defaultdict(float)

    def run(self, records: list[ScanRecord], progress, should_stop: Callable[[], bool] = lambda: False,
            compactor: journal.Compactor | None = None) -> tuple[int, int]:
        """Segment ``records``; ``progress`` has ``update(n)`` and ``write(message)`` (a
        :class:`morphometry.progress.Progress`). Returns (succeeded, failed).

        ``should_stop()`` true (a SIGTERM): no new scan starts, the scans being written are
        journaled, those loaded but not yet segmented are left for a rerun. ``compactor``: told
        of every entry recorded. A full disk raises OutputError (finished scans stay journaled)."""
        (self.out_dir / "seg").mkdir(parents=True, exist_ok=True)
        network_before = dict(self.engine.timings)
        succeeded = failed = 0
        lookahead = self.workers + 1
        with ThreadPoolExecutor(self.workers, thread_name_prefix="load") as loaders, \
                ThreadPoolExecutor(self.workers, thread_name_prefix="write") as writers:
            loading: list[tuple[ScanRecord, Future]] = []
            queue = iter(records)
            pending: list[tuple[ScanRecord, list[Future], dict]] = []

            def refill():
                while len(loading) < lookahead and not should_stop():
                    rec = next(queue, None)
                    if rec is None:
                        return
                    loading.append((rec, loaders.submit(_load_and_prepare, rec, self.pre_config, self.limits)))

            def drain(block: bool):
                nonlocal succeeded, failed
                while pending and (block or all(f.done() for f in pending[0][1])):
                    rec, futures, info = pending.pop(0)
                    ok = self._journal(rec, futures, info, progress)
                    succeeded, failed = succeeded + ok, failed + (not ok)
                    progress.update(1)
                    if compactor is not None:
                        compactor.recorded()

            refill()
            while loading:
                if should_stop():
                    for _, fut in loading:
                        fut.cancel()
                    break
                rec, fut = loading.pop(0)
                refill()
                futures, info = self._begin(rec, fut.result, writers, progress)
                pending.append((rec, futures, info))
                drain(block=len(pending) > 2)
            drain(block=True)
        self.timings.update({f"network:{k}": v - network_before.get(k, 0.0) for k, v in self.engine.timings.items()})
        return succeeded, failed

    def run_one(self, record: ScanRecord, progress) -> bool:
        """Segment one scan now, in this thread (postprocessing and writing of a method overlap the
        next method's inference), into the folder and its journal: the task of a cluster worker.
        Returns True when it succeeded."""
        (self.out_dir / "seg").mkdir(parents=True, exist_ok=True)
        network_before = dict(self.engine.timings)
        with ThreadPoolExecutor(1, thread_name_prefix="write") as writers:
            futures, info = self._begin(record, lambda: _load_and_prepare(record, self.pre_config, self.limits),
                                        writers, progress)
            ok = self._journal(record, futures, info, progress)
        for k, v in self.engine.timings.items():
            self.timings[f"network:{k}"] += v - network_before.get(k, 0.0)
        return ok

    def _begin(self, rec: ScanRecord, load, writers: ThreadPoolExecutor, progress) -> tuple[list[Future], dict]:
        """Load (``load()`` -> scan, preprocessed, timings) and run the networks of one scan, its
        postprocessing and writing submitted to ``writers``; a failure goes into the info."""
        info = {"warnings": []}
        try:
            scan, pre, timings = load()
            info["warnings"] = scan.warnings
            for w in scan.warnings:
                progress.write(f"warning: {rec.path}: {w}")
            self._add(timings)
            futures = self._infer(rec, scan, pre, writers)
        except _ScanFailure as exc:
            futures, info["error"] = [], (exc.stage, str(exc))
        except Exception as exc:  # inference failure (e.g. out of memory): record, go on
            if no_space(exc):
                raise disk_full(self.out_dir, exc) from None
            futures, info["error"] = [], ("inference", f"{rec.path}: {type(exc).__name__}: {exc}")
        return futures, info

    def _infer(self, rec: ScanRecord, scan: Scan, pre: Preprocessed, writers: ThreadPoolExecutor) -> list[Future]:
        futures = []
        identity = record_identity(rec)
        for net in network_outputs(self.engine, pre, self.options, self.outputs.posteriors):
            futures.append(writers.submit(self._finish_and_write, identity, scan, pre, net))
            wait([f for f in futures if not f.done()][:-1])  # bound the posteriors held in host memory
        if self.outputs.resampled and pre.resampled:
            save_image(pre.resampled_image(), pre.grid_affine, self.out_dir / "resampled" / f"{rec.scan_id}.nii.gz",
                       header=scan.header)
        return futures

    def _finish_and_write(self, identity: dict, scan: Scan, pre: Preprocessed, net: NetworkOutput) -> tuple[dict, dict]:
        out = finish_method(identity, scan, pre, net, model_id=self.bundle.model_id,
                            full_cleanup=self.options.full_cleanup, fast=self.options.fast,
                            parcel_reference=self.options.parcel_reference, keep_posteriors=self.outputs.posteriors)
        start = time.perf_counter()
        name = f"{identity['scan_id']}_{net.method.name}.nii.gz"
        save_image(out.labels, pre.grid_affine, self.out_dir / "seg" / name, header=scan.header, dtype=np.int32)
        if out.posteriors is not None:
            save_image(out.posteriors, pre.grid_affine, self.out_dir / "posteriors" / name, header=scan.header,
                       dtype=np.float32)
        return out.row, {**out.timings, "write": time.perf_counter() - start}

    def _journal(self, rec: ScanRecord, futures: list[Future], info: dict, progress) -> bool:
        entry = {"scan_id": rec.scan_id, "path": str(rec.path), "warnings": info["warnings"]}
        if "error" not in info:
            try:
                results = [f.result() for f in futures]
            except MorphometryError as exc:
                info["error"] = ("postprocess", str(exc))
            except Exception as exc:
                if no_space(exc):
                    raise disk_full(self.out_dir, exc) from None
                info["error"] = ("postprocess", f"{rec.path}: {type(exc).__name__}: {exc}")
        if "error" in info:
            stage, message = info["error"]
            entry.update(status="failed", stage=stage, error=message)
            progress.write(f"failed: {message}")
        else:
            entry.update(status="ok", rows=[row for row, _ in results])
            for _, timings in results:
                self._add(timings)
        try:
            journal.record(self.out_dir, entry)
        except OSError as exc:
            if no_space(exc):
                raise disk_full(self.out_dir, exc) from None
            raise
        return entry["status"] == "ok"

    def _add(self, timings: dict) -> None:
        for key, value in timings.items():
            self.timings[key] += value


def disk_full(out_dir: Path, exc: BaseException) -> OutputError:
    """The error that stops a batch whose output folder has no space left."""
    where = f" writing {Path(exc.filename).name}" if isinstance(exc, OSError) and exc.filename else ""
    return OutputError(f"{out_dir}: no space left on the device or disk quota exceeded{where}; the batch stopped, "
                       "finished scans are kept: free space and rerun with --resume")


def remove_partial_writes(out_dir: Path) -> int:
    """Delete temporary files left by writes that a killed batch did not finish; return how many."""
    removed = 0
    for sub in ("seg", "posteriors", "resampled", journal.JOURNAL_DIR, "."):
        folder = Path(out_dir) / sub
        if folder.is_dir():
            for path in [*folder.glob(".*.nii*"), *folder.rglob(".*.tmp")]:
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def merge_outputs(out_dir: Path, sources: list[Path] | None = None, metadata: dict | None = None) -> tuple[int, int]:
    """Rebuild ``volumes.parquet``/``.csv`` and ``failures.csv`` of ``out_dir`` from the journals of
    ``sources`` (default: ``out_dir`` itself). Returns (rows, failures)."""
    volumes, failures = journal.merged_tables(sources or [out_dir])
    if not volumes.empty:
        write_volumes(volumes, out_dir, metadata)
    journal.write_failures(failures, out_dir)
    return len(volumes), len(failures)


def write_provenance(out_dir: Path, doc: dict) -> None:
    """``provenance.json``: this run plus the history of earlier runs into the same folder."""
    path = Path(out_dir) / "provenance.json"
    history = []
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            history = old.pop("history", []) + [old]
        except ValueError:
            history = []
    doc = {**doc, "history": history}
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(doc, indent=1, default=str)))


def provenance(bundle: Bundle, engine: Engine, command, result: dict, started: datetime) -> dict:
    """What ran, on what, with which models: ``command`` (argv list or text) and ``result`` (counts
    and ``timings``, seconds per stage)."""
    import scipy

    versions = engine.backend.versions()
    providers = versions.pop("providers", None)
    return {
        "tool": "morphometry", "version": __version__, "command": command,
        "started": started.isoformat(), "finished": datetime.now(timezone.utc).isoformat(),
        "platform": platform.platform(), "python": platform.python_version(),
        "versions": {**versions, "numpy": np.__version__, "nibabel": nib.__version__, "scipy": scipy.__version__},
        "device": engine.device, "engine": engine.engine, "precision": engine.config.precision,
        "threads": engine.config.threads, "slab": engine.slab, **({"providers": providers} if providers else {}),
        "bundle": {"path": str(bundle.root), "model_id": bundle.model_id, "bundle_json_sha256": bundle.sha256(),
                   "networks": {r: n.sha256 for r, n in bundle.networks.items()},
                   "provenance": bundle.provenance},
        "result": result,
        "seconds_per_stage": {k: round(v, 3) for k, v in sorted(result["timings"].items())},
    }
