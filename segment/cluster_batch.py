"""Segmentation on a Dask cluster: one task per scan, each worker process set up once.

Every worker process builds, when it joins, what :class:`~morphometry.segment.batch.SegmentBatch`
needs (the bundle, the networks' sessions, one GPU of its node where there are GPUs) from a
picklable :class:`WorkerRecipe` (:class:`SegmentPlugin`). A task segments one scan exactly as
the single-process batch does and writes its files and its journal entry on the worker (the
output folder must be shared by the client and the workers); the client only counts, and merges
the journal into the tables at the end. A scan whose worker dies is retried on another worker;
after the cluster's allowed failures it is journaled as failed with that cause.

Test hook (not for users): the environment variable ``MORPHOMETRY_TEST_CRASH_ON`` of the worker
processes, ``SCAN_ID`` or ``SCAN_ID@MARKER_FILE``, makes the worker processing that scan kill
itself with SIGKILL (with a marker file: only when the file does not exist yet, which it creates,
so once), to test how batches survive dying workers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import shutil
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from distributed import WorkerPlugin, get_worker

from morphometry.cluster import ClusterSpec, connect, run_tasks
from morphometry.errors import ModelError
from morphometry.inputs import ScanRecord
from morphometry.io import LoadLimits
from morphometry.segment import journal
from morphometry.segment.batch import Outputs, SegmentBatch, SegmentOptions
from morphometry.segment.bundle import load_bundle
from morphometry.segment.methods import Method
from morphometry.segment.preprocess import PreprocessConfig
from morphometry.segment.runtime import Engine, RuntimeConfig

CRASH_HOOK = "MORPHOMETRY_TEST_CRASH_ON"  # test hook, module docstring


@dataclass(frozen=True)
class WorkerRecipe:
    """What a worker process needs to segment scans as the client's Segmenter would."""

    bundle_root: Path
    methods: tuple[Method, ...]
    runtime: RuntimeConfig  # threads: the networks' CPU threads per worker process
    options: SegmentOptions
    outputs: Outputs
    preprocessing: PreprocessConfig
    limits: LoadLimits
    out_dir: Path

    def build(self) -> SegmentBatch:
        bundle = load_bundle(self.bundle_root)
        engine = Engine(bundle, list(self.methods), self.runtime, parc=self.options.parc, qc=self.options.qc,
                        flip=not self.options.fast)
        return SegmentBatch(bundle, engine, self.out_dir, self.options, self.outputs, 1, self.limits,
                            self.preprocessing)

    @property
    def name(self) -> str:
        """The worker plugin's name: one per recipe."""
        return "morphometry-segment-" + hashlib.sha1(pickle.dumps(self)).hexdigest()[:16]


class SegmentPlugin(WorkerPlugin):
    """Builds a worker's SegmentBatch once, when the worker starts (or joins later); a worker with
    several GPUs visible takes one by its index among the processes of its node or job."""

    def __init__(self, recipe: WorkerRecipe):
        self.recipe, self.name = recipe, recipe.name
        self.batch: SegmentBatch | None = None
        self.error: str | None = None

    def setup(self, worker) -> None:
        if self.recipe.runtime.device != "cpu":
            _choose_gpu(worker.name)
        try:
            self.batch = self.recipe.build()
        except Exception as exc:  # reported by the first task, raised on the client
            self.error = f"{type(exc).__name__}: {exc}"


def _choose_gpu(worker_name) -> None:
    """Restrict this process to one of the GPUs visible to it, by the worker's index (the last
    number of its name: local workers are 0..N-1, a job's processes NAME-0..NAME-K)."""
    visible = _visible_gpus()
    if len(visible) > 1:
        tail = str(worker_name).rsplit("-", 1)[-1]
        index = int(tail) if tail.isdigit() else 0
        os.environ["CUDA_VISIBLE_DEVICES"] = visible[index % len(visible)]


def _visible_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES, else those nvidia-smi lists, else none."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        lines = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(ln for ln in lines if ln.startswith("GPU "))]


class _Messages:
    """Collects what a task would print (warnings, failures) for the client to show."""

    def __init__(self):
        self.lines: list[str] = []

    def write(self, message: str) -> None:
        self.lines.append(message)


def segment_task(plugin_name: str, record: ScanRecord) -> dict:
    """Segment one scan on this worker into the output folder and journal; returns ``ok``,
    ``messages`` (lines for the client's log), ``timings`` (s per stage) and ``seconds`` (wall)."""
    start = time.perf_counter()
    _crash_hook(record.scan_id)
    plugin = get_worker().plugins[plugin_name]
    if plugin.batch is None:
        raise ModelError(f"a worker could not set up segmentation: {plugin.error}", setting="cluster")
    batch = plugin.batch
    before = dict(batch.timings)
    messages = _Messages()
    ok = batch.run_one(record, messages)
    timings = {k: v - before.get(k, 0.0) for k, v in batch.timings.items()}
    return {"ok": ok, "messages": messages.lines, "timings": timings, "seconds": time.perf_counter() - start}


def _crash_hook(scan_id: str) -> None:
    target = os.environ.get(CRASH_HOOK)
    if not target:
        return
    wanted, _, marker = target.partition("@")
    if wanted != scan_id:
        return
    if marker:
        try:
            Path(marker).touch(exist_ok=False)
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class ClusterRun:
    """What a cluster batch did: counts, seconds per stage summed over scans, and the wall time
    of the scans' tasks summed (s)."""

    succeeded: int = 0
    failed: int = 0
    timings: dict = dataclasses.field(default_factory=lambda: defaultdict(float))
    task_seconds: float = 0.0
    completed: bool = True  # False when should_stop ended it early


def run_on_cluster(recipe: WorkerRecipe, records, spec: ClusterSpec, progress,
                   should_stop: Callable[[], bool] = lambda: False,
                   compactor: journal.Compactor | None = None) -> ClusterRun:
    """Segment ``records`` (an iterable) on ``spec``'s cluster into ``recipe.out_dir``;
    ``progress`` has ``update(n)`` and ``write(message)``. A scan whose workers kept dying is
    journaled as failed (stage ``worker``). ``should_stop()`` true: no new scan is handed out and
    those in flight are abandoned (rerun with resume). ``compactor``: told of every scan done."""
    out = ClusterRun()
    (recipe.out_dir / "seg").mkdir(parents=True, exist_ok=True)

    def done(record: ScanRecord, result: dict) -> None:
        for line in result["messages"]:
            progress.write(line)
        out.succeeded += result["ok"]
        out.failed += not result["ok"]
        out.task_seconds += result["seconds"]
        for k, v in result["timings"].items():
            out.timings[k] += v
        progress.update(1)
        if compactor is not None:
            compactor.recorded()

    def died(record: ScanRecord, message: str) -> None:
        text = f"{record.path}: {message}"
        journal.record(recipe.out_dir, {"scan_id": record.scan_id, "path": str(record.path), "warnings": [],
                                        "status": "failed", "stage": "worker", "error": text})
        progress.write(f"failed: {text}")
        out.failed += 1
        progress.update(1)
        if compactor is not None:
            compactor.recorded()

    with connect(spec) as client:
        client.register_plugin(SegmentPlugin(recipe))
        out.completed = run_tasks(client, partial(segment_task, recipe.name), records,
                                  key=lambda r: hashlib.sha1(r.scan_id.encode()).hexdigest()[:16],
                                  on_result=done, on_failure=died, slots=spec.slots, should_stop=should_stop,
                                  name="segment")
    return out


def local_processes(spec: ClusterSpec, device: str, threads: int, scan_gb: float) -> ClusterSpec:
    """``spec`` with its worker processes settled for a local cluster: as given, else one per GPU
    visible (``device`` cuda), else as many scans in flight as both the cores (one per ``threads``
    cores; 0: one scan on all of them) and the available memory (``scan_gb`` GB per scan) allow."""
    if spec.kind != "local" or spec.processes is not None:
        return spec
    gpus = len(_visible_gpus()) if device == "cuda" else 0
    if gpus:
        return dataclasses.replace(spec, processes=gpus)
    cores = os.cpu_count() or 1
    by_cores = cores // threads if threads else 1  # on 1 mm grids 1 x 2 threads beat 2 x 1 (benchmarks)
    by_memory = int(available_memory_gb() // scan_gb)
    return dataclasses.replace(spec, processes=max(1, min(by_cores, by_memory)))


def available_memory_gb() -> float:
    """Memory this machine can give new processes (GB): MemAvailable of /proc/meminfo, else all of it."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1e6
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9


def worker_threads(spec: ClusterSpec, device: str, threads: int) -> int:
    """The networks' CPU threads per worker process: ``threads`` when given (or on GPUs), else the
    cores of a local machine or of a job shared among its worker processes, else 0 (all cores)."""
    if threads or device == "cuda":
        return threads
    if spec.kind == "local":
        return max(1, (os.cpu_count() or 1) // (spec.processes or 1))
    if spec.cores is not None:
        return max(1, spec.cores // spec.job_processes)
    return 0
