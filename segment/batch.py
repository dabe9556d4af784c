"""The ``morpho segment`` batch: scans in, segmentations and a volumes table out.

Pipeline per scan: load + check -> preprocess (worker threads, ahead of inference) -> networks
(main thread, one method after another, shared stages once) -> postprocess, volumes and image
writing (worker threads, overlapping the next inference) -> journal entry. A failing scan is
recorded with its cause and the batch goes on; tables are merged from the journal at the end.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import nibabel as nib
import numpy as np

from morphometry import __version__
from morphometry.errors import InputError, MorphometryError
from morphometry.inputs import ScanRecord
from morphometry.io import LoadLimits, load_scan, save_image
from morphometry.labels import SYNTHSEG_2
from morphometry.tables import atomic_write, write_volumes
from morphometry.volumes import parcel_volumes, qc_scores, soft_volumes
from morphometry.segment import journal
from morphometry.segment.bundle import Bundle
from morphometry.segment.methods import Method
from morphometry.segment.postprocess import PostprocessConfig, postprocess, postprocess_parcellation, to_native
from morphometry.segment.preprocess import PreprocessConfig, Preprocessed, preprocess
from morphometry.segment.runtime import Engine


@dataclass(frozen=True)
class Outputs:
    """Which optional outputs to write and how to clean up."""

    posteriors: bool = False  # OUT/posteriors/<scan_id>_<method>.nii.gz, float32 4-D
    resampled: bool = False  # OUT/resampled/<scan_id>.nii.gz, the image on the working grid
    parc: bool = False
    qc: bool = False
    full_cleanup: bool = False  # topology clean-up for every method (fair comparisons)


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``: a scan belongs to it by a hash of its scan_id."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> "Shard":
        try:
            k, n = (int(v) for v in text.split("/"))
        except ValueError:
            raise InputError(f"--shard {text}: expected K/N, e.g. 3/10") from None
        if not 1 <= k <= n:
            raise InputError(f"--shard {text}: K must be between 1 and N")
        return cls(k, n)

    def holds(self, scan_id: str) -> bool:
        digest = int(hashlib.sha1(scan_id.encode()).hexdigest()[:12], 16)
        return digest % self.count == self.index - 1


@dataclass
class BatchResult:
    total: int
    succeeded: int
    failed: int
    skipped: int
    timings: dict = field(default_factory=dict)


class _ScanFailure(Exception):
    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


def _load_and_preprocess(record: ScanRecord, config: PreprocessConfig, limits: LoadLimits):
    timings = {}
    start = time.perf_counter()
    try:
        scan = load_scan(record.path, limits)
    except MorphometryError as exc:
        raise _ScanFailure("load", str(exc)) from None
    timings["load"] = time.perf_counter() - start
    start = time.perf_counter()
    try:
        pre = preprocess(scan, config)
    except MorphometryError as exc:
        raise _ScanFailure("preprocess", str(exc)) from None
    except (ValueError, MemoryError) as exc:
        raise _ScanFailure("preprocess", f"{record.path}: cannot preprocess ({type(exc).__name__}: {exc})") from None
    timings["preprocess"] = time.perf_counter() - start
    return scan, pre, timings


class SegmentBatch:
    """Runs methods of one bundle over many scans into an output folder."""

    def __init__(self, bundle: Bundle, methods: list[Method], engine: Engine, out_dir: Path,
                 outputs: Outputs = Outputs(), workers: int = 2, limits: LoadLimits = LoadLimits()):
        self.bundle, self.methods, self.engine = bundle, methods, engine
        self.out_dir, self.outputs, self.workers, self.limits = Path(out_dir), outputs, max(1, workers), limits
        self.pre_config = PreprocessConfig(resolution_mm=bundle.resolution_mm, min_size=bundle.min_size)
        self.timings: dict[str, float] = defaultdict(float)

    # -- per-method work (runs in a writer thread) --------------------------------------------
    def _finish_method(self, record: ScanRecord, scan, pre: Preprocessed, method: Method, posteriors: np.ndarray,
                       parc: np.ndarray | None, qc: np.ndarray | None) -> tuple[dict, dict]:
        timings = {}
        start = time.perf_counter()
        config = PostprocessConfig(topology=method.topology or self.outputs.full_cleanup, in_place=True)
        seg = postprocess(posteriors, SYNTHSEG_2, pre.inner, config)
        del posteriors
        row = self._identity(record, scan, method)
        row.update(soft_volumes(seg.posteriors, SYNTHSEG_2, pre.voxel_volume_mm3))
        labels = seg.labels
        if parc is not None:
            parcellated = postprocess_parcellation(parc, seg, pre.inner)
            labels = parcellated.labels
            sums = parcellated.posteriors[1:].reshape(len(parcellated.posteriors) - 1, -1).sum(1, dtype=np.float64)
            cortex = row["left_cerebral_cortex"] + row["right_cerebral_cortex"]
            row.update(parcel_volumes(sums, cortex))
        if qc is not None:
            row.update(qc_scores(qc))
        timings["postprocess"] = time.perf_counter() - start
        start = time.perf_counter()
        seg_path = self.out_dir / "seg" / f"{record.scan_id}_{method.name}.nii.gz"
        save_image(to_native(labels, pre), pre.grid_affine, seg_path)
        if self.outputs.posteriors:
            post = to_native(np.moveaxis(seg.posteriors, 0, -1), pre)
            save_image(post, pre.grid_affine,
                       self.out_dir / "posteriors" / f"{record.scan_id}_{method.name}.nii.gz")
        timings["write"] = time.perf_counter() - start
        return row, timings

    def _identity(self, record: ScanRecord, scan, method: Method) -> dict:
        row = {"scan_id": record.scan_id, "subject_id": record.subject_id, "session_id": record.session_id,
               "path": str(record.path), "method": method.name, "model_id": self.bundle.model_id}
        row.update(scan.info.acquisition_columns())
        row.update({k: v for k, v in record.extra.items() if k not in row})
        return row

    # -- the batch -----------------------------------------------------------------------------
    def run(self, records: list[ScanRecord], progress) -> BatchResult:
        (self.out_dir / "seg").mkdir(parents=True, exist_ok=True)
        succeeded = failed = 0
        lookahead = self.workers + 1
        with ThreadPoolExecutor(self.workers, thread_name_prefix="load") as loaders, \
                ThreadPoolExecutor(self.workers, thread_name_prefix="write") as writers:
            loading: list[tuple[ScanRecord, Future]] = []
            queue = iter(records)
            pending: list[tuple[ScanRecord, list[Future], dict]] = []

            def refill():
                while len(loading) < lookahead:
                    rec = next(queue, None)
                    if rec is None:
                        return
                    loading.append((rec, loaders.submit(_load_and_preprocess, rec, self.pre_config, self.limits)))

            def drain(block: bool):
                nonlocal succeeded, failed
                while pending and (block or all(f.done() for f in pending[0][1])):
                    rec, futures, info = pending.pop(0)
                    ok = self._journal(rec, futures, info)
                    succeeded, failed = succeeded + ok, failed + (not ok)
                    progress.update(1)

            refill()
            while loading:
                rec, fut = loading.pop(0)
                refill()
                info = {"warnings": []}
                try:
                    scan, pre, timings = fut.result()
                    info["warnings"] = scan.warnings
                    for w in scan.warnings:
                        progress.write(f"warning: {rec.path}: {w}", file=sys.stderr)
                    self._add(timings)
                    futures = self._infer(rec, scan, pre, writers)
                except _ScanFailure as exc:
                    futures, info["error"] = [], (exc.stage, str(exc))
                except Exception as exc:  # inference failure (e.g. out of memory): record, go on
                    futures, info["error"] = [], ("inference", f"{rec.path}: {type(exc).__name__}: {exc}")
                pending.append((rec, futures, info))
                drain(block=len(pending) > 2)
            drain(block=True)
        self.timings.update({f"network:{k}": v for k, v in self.engine.timings.items()})
        return BatchResult(len(records), succeeded, failed, 0, dict(self.timings))

    def _infer(self, rec: ScanRecord, scan, pre: Preprocessed, writers: ThreadPoolExecutor) -> list[Future]:
        futures = []
        for method, handles, posteriors in self.engine.segment(pre.image):
            parc = self.engine.parcellate(handles) if self.outputs.parc else None
            qc = self.engine.quality(handles) if self.outputs.qc else None
            futures.append(writers.submit(self._finish_method, rec, scan, pre, method, posteriors, parc, qc))
            wait([f for f in futures if not f.done()][:-1])  # bound the posteriors held in host memory
        if self.outputs.resampled and pre.resampled:
            save_image(pre.resampled_image().astype(np.float32), pre.grid_affine,
                       self.out_dir / "resampled" / f"{rec.scan_id}.nii.gz")
        return futures

    def _journal(self, rec: ScanRecord, futures: list[Future], info: dict) -> bool:
        entry = {"scan_id": rec.scan_id, "path": str(rec.path), "warnings": info["warnings"]}
        if "error" not in info:
            try:
                results = [f.result() for f in futures]
            except MorphometryError as exc:
                info["error"] = ("postprocess", str(exc))
            except Exception as exc:
                info["error"] = ("postprocess", f"{rec.path}: {type(exc).__name__}: {exc}")
        if "error" in info:
            stage, message = info["error"]
            entry.update(status="failed", stage=stage, error=message)
            print(f"failed: {message}", file=sys.stderr)
        else:
            entry.update(status="ok", rows=[row for row, _ in results])
            for _, timings in results:
                self._add(timings)
        journal.record(self.out_dir, entry)
        return entry["status"] == "ok"

    def _add(self, timings: dict) -> None:
        for key, value in timings.items():
            self.timings[key] += value


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
    all_entries = [e for src in (sources or [out_dir]) for e in journal.entries(src)]
    volumes, failures = journal.tables(all_entries)
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


def provenance(bundle: Bundle, engine: Engine, argv: list[str], result: BatchResult, started: datetime) -> dict:
    import onnxruntime as ort
    import scipy

    return {
        "tool": "morphometry", "version": __version__, "command": ["morpho", *argv],
        "started": started.isoformat(), "finished": datetime.now(timezone.utc).isoformat(),
        "platform": platform.platform(), "python": platform.python_version(),
        "versions": {"onnxruntime": ort.__version__, "numpy": np.__version__, "nibabel": nib.__version__,
                     "scipy": scipy.__version__},
        "device": engine.device, "providers": ort.get_available_providers(),
        "bundle": {"path": str(bundle.root), "model_id": bundle.model_id, "bundle_json_sha256": bundle.sha256(),
                   "networks": {r: n.sha256 for r, n in bundle.networks.items()},
                   "provenance": bundle.provenance},
        "result": asdict(result),
        "seconds_per_stage": {k: round(v, 3) for k, v in sorted(result.timings.items())},
    }
