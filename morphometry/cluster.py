"""Per-scan work on a Dask cluster: where it runs (:class:`ClusterSpec`), the client that reaches
it (:func:`connect`) and the loop that feeds it (:func:`run_tasks`).

A cluster is ``local`` (``local:N``: N worker processes on this machine), ``slurm`` or ``pbs``
(batch jobs started through dask-jobqueue, each job running one or more worker processes) or
the address of a running Dask scheduler (``tcp://HOST:PORT``). Settings come from a YAML file
(keys: the fields of :class:`ClusterSpec`, plus ``cluster``) and/or from arguments, which win.

The work is per scan: one task per item, at most about one task per worker thread in flight, so
the client holds a bounded number of futures however many items there are, and a worker that
dies takes at most the scans it was running with it. Dask retries a task whose worker died on
another worker; after ``allowed_failures`` retries it gives up (``KilledWorker``), and
:func:`run_tasks` reports the item as a failure with that cause. This module imports nothing of
segmentation or analysis; Dask is imported when a cluster is used.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from morphometry.errors import InputError

KINDS = ("local", "slurm", "pbs", "address")  # ClusterSpec.kind
JOB_QUEUES = ("slurm", "pbs")  # kinds that start batch jobs through dask-jobqueue
ALLOWED_FAILURES = 3  # retries of a task whose worker died before it counts as a failure
KILLED_MESSAGE = "worker died {n} times while processing this scan (out of memory? crash?)"
_WALLTIME = re.compile(r"^(\d+-)?\d+(:\d{2}){0,2}$")
_ADDRESS = re.compile(r"^(tcp|tls|ucx)://[^:/\s]+:\d+$")


@dataclass(frozen=True)
class ClusterSpec:
    """Where per-scan tasks run, and for batch jobs what each job asks for.

    ``processes``: worker processes (local: in all; jobs: per job; default: one per GPU, else one
    per ``threads`` CPU cores for local and one per job); ``threads_per_worker``: tasks a worker
    process runs at once. Job settings (slurm, pbs): ``queue``, ``account``, ``walltime``
    (``HH:MM:SS``), ``cores`` and ``memory`` (per job, e.g. ``"32GB"``), ``gpus`` (per job; one
    worker process per GPU), ``jobs`` (started at once) or ``adaptive_min`` / ``adaptive_max``
    (jobs, scaled with the work left), ``directives`` (extra lines for the job script header,
    without the ``#SBATCH``/``#PBS`` prefix), ``prologue`` (shell lines run before the worker starts,
    e.g. ``module load cuda``), ``local_directory`` (workers' scratch folder on the nodes).
    ``allowed_failures``: how often a scan's worker may die before the scan counts as failed.
    """

    kind: str = "local"
    address: str | None = None  # kind address: tcp://HOST:PORT of a running scheduler
    processes: int | None = None
    threads_per_worker: int = 1
    queue: str | None = None
    account: str | None = None
    walltime: str | None = None
    cores: int | None = None
    memory: str | None = None
    gpus: int = 0
    jobs: int = 1
    adaptive_min: int | None = None
    adaptive_max: int | None = None
    directives: tuple[str, ...] = ()
    prologue: tuple[str, ...] = ()
    local_directory: str | None = None
    allowed_failures: int = ALLOWED_FAILURES

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"{self.kind!r}: choose local, local:N, slurm, pbs or tcp://HOST:PORT", setting="cluster")
        if (self.kind == "address") != (self.address is not None):
            raise InputError("an address goes with kind address only (tcp://HOST:PORT)", setting="cluster")
        if self.address is not None and not _ADDRESS.match(self.address):
            raise InputError(f"{self.address!r}: expected tcp://HOST:PORT", setting="cluster")
        for name, minimum in (("processes", 1), ("threads_per_worker", 1), ("cores", 1), ("gpus", 0), ("jobs", 1),
                              ("adaptive_min", 0), ("adaptive_max", 1), ("allowed_failures", 0)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
                raise InputError(f"{name} must be a whole number >= {minimum} (got {value!r})", setting="cluster")
        if (self.adaptive_min is None) != (self.adaptive_max is None):
            raise InputError("adaptive scaling needs both adaptive_min and adaptive_max", setting="cluster")
        if self.adaptive_min is not None and self.adaptive_min > self.adaptive_max:
            raise InputError(f"adaptive_min {self.adaptive_min} exceeds adaptive_max {self.adaptive_max}",
                             setting="cluster")
        if self.walltime is not None and not _WALLTIME.match(str(self.walltime)):
            raise InputError(f"walltime {self.walltime!r}: expected HH:MM:SS (or D-HH:MM:SS)", setting="cluster")
        if self.kind in JOB_QUEUES and (self.cores is None or self.memory is None):
            raise InputError(f"{self.kind} jobs need cores and memory per job (--job-cores, --job-memory or the "
                             "config file)", setting="cluster")
        for name in ("queue", "account", "walltime", "memory", "local_directory"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise InputError(f"{name} must be a text (got {getattr(self, name)!r})", setting="cluster")
        for name in ("directives", "prologue"):
            if not all(isinstance(line, str) for line in getattr(self, name)):
                raise InputError(f"{name} must be a list of text lines", setting="cluster")

    @classmethod
    def parse(cls, text: str, **settings) -> ClusterSpec:
        """``local``, ``local:N``, ``slurm``, ``pbs`` or ``tcp://HOST:PORT``, with further fields."""
        text = str(text).strip()
        if text.startswith("local:"):
            count = text.removeprefix("local:")
            if not count.isdigit() or int(count) < 1:
                raise InputError(f"{text!r}: expected local:N with N worker processes >= 1", setting="cluster")
            return cls("local", **{**settings, "processes": int(count)})
        if "://" in text:
            return cls("address", address=text, **settings)
        if text in ("address", "") or text not in KINDS:
            raise InputError(f"{text!r}: choose local, local:N, slurm, pbs or tcp://HOST:PORT", setting="cluster")
        return cls(text, **settings)

    @property
    def slots(self) -> int:
        """Tasks the cluster runs at once when it has all its workers (adaptive: at its largest);
        0 when unknown (a running scheduler's)."""
        per_process = self.threads_per_worker
        if self.kind == "local":
            return (self.processes or 1) * per_process
        if self.kind in JOB_QUEUES:
            jobs = self.adaptive_max if self.adaptive_max is not None else self.jobs
            return jobs * self.job_processes * per_process
        return 0

    @property
    def job_processes(self) -> int:
        """Worker processes per batch job: ``processes``, else one per GPU, else one."""
        return self.processes or max(self.gpus, 1)


FIELDS = tuple(f.name for f in dataclasses.fields(ClusterSpec) if f.name not in ("kind", "address"))


def cluster_spec(cluster: str | ClusterSpec | None, config_file: str | os.PathLike | None = None,
                 **settings) -> ClusterSpec | None:
    """The :class:`ClusterSpec` of ``cluster`` (a spec or its text), the YAML ``config_file``
    (its keys: ``cluster`` and the fields of ClusterSpec) and ``settings`` (fields; None values are
    left out). Arguments win over the file. None when neither names a cluster."""
    doc = _read_config(Path(config_file)) if config_file is not None else {}
    settings = {k: v for k, v in settings.items() if v is not None}
    unknown = sorted(set(settings) - set(FIELDS))
    if unknown:
        raise InputError(f"unknown cluster setting(s) {', '.join(unknown)}", setting="cluster")
    if isinstance(cluster, ClusterSpec):
        return dataclasses.replace(cluster, **{**doc, **settings}) if doc or settings else cluster
    target = cluster if cluster is not None else doc.pop("cluster", None)
    doc.pop("cluster", None)
    if target is None:
        if doc or settings:
            raise InputError("cluster settings given without a cluster (local, local:N, slurm, pbs or "
                             "tcp://HOST:PORT)", setting="cluster")
        return None
    return ClusterSpec.parse(str(target), **{**doc, **settings})


def _read_config(path: Path) -> dict:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})", setting="cluster_config") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise InputError(f"{path}: not valid YAML{line}", setting="cluster_config") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise InputError(f"{path}: expected a mapping of cluster settings", setting="cluster_config")
    doc = {str(k).replace("-", "_"): v for k, v in doc.items()}
    unknown = sorted(set(doc) - set(FIELDS) - {"cluster"})
    if unknown:
        raise InputError(f"{path}: unknown setting(s) {', '.join(unknown)} (known: cluster, {', '.join(FIELDS)})",
                         setting="cluster_config")
    for name in ("directives", "prologue"):
        if name in doc:
            lines = doc[name]
            doc[name] = tuple(lines) if isinstance(lines, list) else (lines,)
    if isinstance(doc.get("walltime"), int):  # YAML reads 12:00:00 unquoted as a number of seconds
        raise InputError(f"{path}: quote the walltime, e.g. walltime: \"12:00:00\"", setting="cluster_config")
    return doc


def job_cluster(spec: ClusterSpec):
    """The dask-jobqueue cluster object of a slurm or pbs spec (nothing is submitted until it scales)."""
    if spec.kind not in JOB_QUEUES:
        raise InputError(f"{spec.kind} is not a batch-job cluster", setting="cluster")
    try:
        import dask_jobqueue
    except ImportError:
        raise InputError(f"{spec.kind} needs dask-jobqueue (pip install dask-jobqueue)", setting="cluster") from None
    directives = list(spec.directives)
    # dask-jobqueue's cores are the Dask task threads of a job; the cores booked are spec.cores
    common = {"queue": spec.queue, "account": spec.account, "walltime": spec.walltime,
              "cores": spec.job_processes * spec.threads_per_worker, "memory": spec.memory,
              "processes": spec.job_processes, "job_script_prologue": list(spec.prologue),
              "local_directory": spec.local_directory, "scheduler_options": {"dashboard_address": None}}
    if spec.kind == "slurm":
        if spec.gpus:
            directives.append(f"--gres=gpu:{spec.gpus}")
        return dask_jobqueue.SLURMCluster(job_extra_directives=directives, job_cpu=spec.cores, **common)
    resources = f"select=1:ncpus={spec.cores}:mem={spec.memory}" + (f":ngpus={spec.gpus}" if spec.gpus else "")
    return dask_jobqueue.PBSCluster(job_extra_directives=directives, resource_spec=resources, **common)


@contextmanager
def connect(spec: ClusterSpec, connect_timeout_s: float = 60.0) -> Iterator:
    """A ``distributed.Client`` of ``spec``'s cluster (started here, and closed on exit, unless it
    is the address of a running scheduler). The scheduler started here retries a task whose worker
    died ``spec.allowed_failures`` times and hands a worker one task per thread at a time."""
    try:
        import dask
        import distributed
    except ImportError:
        raise InputError("needs dask distributed (pip install 'dask[distributed]')", setting="cluster") from None
    config = {"distributed.scheduler.allowed-failures": spec.allowed_failures,
              "distributed.scheduler.worker-saturation": 1.0}
    with dask.config.set(config):
        if spec.kind == "address":
            try:
                client = distributed.Client(spec.address, timeout=connect_timeout_s)
            except (OSError, TimeoutError) as exc:
                raise InputError(f"cannot reach the scheduler at {spec.address} ({type(exc).__name__}: {exc})",
                                 setting="cluster") from None
            with client:
                yield client
            return
        if spec.kind == "local":
            cluster = distributed.LocalCluster(n_workers=spec.processes or 1,
                                               threads_per_worker=spec.threads_per_worker,
                                               processes=True, dashboard_address=None,
                                               local_directory=spec.local_directory)
        else:
            submit = {"slurm": "sbatch", "pbs": "qsub"}[spec.kind]
            if shutil.which(submit) is None:
                raise InputError(f"{spec.kind}: no {submit} command here; run on a node that submits jobs",
                                 setting="cluster")
            cluster = job_cluster(spec)
            if spec.adaptive_min is not None:
                cluster.adapt(minimum_jobs=spec.adaptive_min, maximum_jobs=spec.adaptive_max)
            else:
                cluster.scale(jobs=spec.jobs)
        with cluster, distributed.Client(cluster) as client:
            yield client


def run_tasks(client, task: Callable, items: Iterable, *, key: Callable[[object], str],
              on_result: Callable[[object, object], None], on_failure: Callable[[object, str], None],
              slots: int = 0, should_stop: Callable[[], bool] = lambda: False, name: str = "task") -> bool:
    """Run ``task(item)`` on the cluster for every item, as the items are iterated.

    At most about one task per worker thread is in flight (``slots``, or the threads of the
    workers connected, re-read every few seconds), so a dying worker takes few innocent tasks with
    it and the client's memory does not grow with the number of items. ``on_result(item, result)``
    is called as tasks finish (progress, counts); ``on_failure(item, message)`` when the item's
    workers died more than the scheduler's allowed failures (another exception of a task is
    raised here). ``should_stop()`` is checked at least every :data:`POLL_S` seconds: when it
    answers True, nothing more is submitted, the tasks in flight are abandoned (cancelled) and
    False is returned; True when every item ran. ``key(item)``: a text unique among the items.
    """
    from distributed import wait
    from distributed.scheduler import KilledWorker

    items = iter(items)
    in_flight: dict = {}
    token = f"{name}-{os.getpid()}-{time.monotonic_ns()}"
    live = _LiveSlots(client, slots)
    exhausted = False
    while True:
        if should_stop():
            client.cancel(list(in_flight))
            return False
        while not exhausted and len(in_flight) < live():
            item = next(items, _END)
            if item is _END:
                exhausted = True
                break
            future = client.submit(task, item, key=f"{name}-{key(item)}-{token}", pure=False)
            in_flight[future] = item
        if not in_flight:
            return True
        try:
            done = wait(list(in_flight), timeout=POLL_S, return_when="FIRST_COMPLETED").done
        except TimeoutError:
            continue
        for future in done:
            item = in_flight.pop(future)
            if future.status == "error":
                error = future.exception()
                if not isinstance(error, KilledWorker):
                    client.cancel(list(in_flight))
                    raise error
                on_failure(item, KILLED_MESSAGE.format(n=error.allowed_failures + 1))
            elif future.status == "finished":
                on_result(item, future.result())
            future.release()


POLL_S = 1.0  # seconds between two looks at should_stop while tasks run


def cluster_map(spec: ClusterSpec, function: Callable, items: list, on_result: Callable[[int, object], None],
                on_failure: Callable[[int, str], None], name: str = "task") -> None:
    """``function(item)`` for every item of a list on ``spec``'s cluster (started and closed here;
    local without a process count: one per core): ``on_result(index, result)`` as they finish,
    ``on_failure(index, message)`` for an item whose workers kept dying (:func:`run_tasks`)."""
    if spec.kind == "local" and spec.processes is None:
        spec = dataclasses.replace(spec, processes=os.cpu_count() or 1)
    with connect(spec) as client:
        run_tasks(client, partial(_indexed, function), enumerate(items), key=lambda pair: str(pair[0]),
                  on_result=lambda pair, result: on_result(pair[0], result),
                  on_failure=lambda pair, message: on_failure(pair[0], message), slots=spec.slots, name=name)


def _indexed(function: Callable, pair: tuple) -> object:
    return function(pair[1])


_END = object()


class _LiveSlots:
    """Tasks to keep in flight: ``fixed``, or the worker threads connected (at least 1), re-read
    every :data:`REFRESH_S` seconds."""

    REFRESH_S = 5.0

    def __init__(self, client, fixed: int):
        self.client, self.fixed, self.value, self.read_at = client, fixed, 1, -float("inf")

    def __call__(self) -> int:
        if self.fixed:
            return self.fixed
        if time.monotonic() - self.read_at > self.REFRESH_S:
            self.value, self.read_at = max(1, sum(self.client.nthreads().values())), time.monotonic()
        return self.value
