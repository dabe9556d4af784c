"""The ``--cluster`` options that per-scan commands (segment, evaluate, silver) share."""

from __future__ import annotations

import argparse

FLAGS = {"cluster": "--cluster", "cluster_config": "--cluster-config", "adaptive": "--adaptive"}


def add_arguments(parser: argparse.ArgumentParser, work: str = "scan", local: str = "one per core") -> None:
    """Add the cluster options to ``parser``; ``work``: what one task does, ``local``: how many
    worker processes ``--cluster local`` starts (for the help)."""
    g = parser.add_argument_group(
        "cluster", f"run the work on a Dask cluster, one task per {work} (settings: flags, or a YAML file whose "
                   "keys are cluster, queue, account, walltime, cores, memory, gpus, jobs, adaptive_min, "
                   "adaptive_max, processes, threads_per_worker, directives, prologue, local_directory, "
                   "allowed_failures; flags win; see README)")
    g.add_argument("--cluster", default=None, metavar="WHERE",
                   help=f"local (worker processes here: {local}), local:N (N "
                        "worker processes), slurm or pbs (batch jobs via dask-jobqueue), or tcp://HOST:PORT (a "
                        "running Dask scheduler); the output folder must be shared with the workers "
                        "(default: no cluster, this process)")
    g.add_argument("--cluster-config", default=None, metavar="FILE", help="YAML file of cluster settings")
    g.add_argument("--queue", default=None, help="slurm/pbs: queue (partition) of the jobs")
    g.add_argument("--account", default=None, help="slurm/pbs: account (project) charged")
    g.add_argument("--walltime", default=None, metavar="HH:MM:SS", help="slurm/pbs: time limit of each job")
    g.add_argument("--job-cores", type=int, default=None, metavar="N", help="slurm/pbs: CPU cores per job")
    g.add_argument("--job-memory", default=None, metavar="SIZE", help="slurm/pbs: memory per job, e.g. 64GB")
    g.add_argument("--gpus", type=int, default=None, metavar="N",
                   help="slurm/pbs: GPUs per job, one worker process each (default: 0)")
    g.add_argument("--cluster-jobs", type=int, default=None, metavar="N", help="slurm/pbs: jobs to start (default: 1)")
    g.add_argument("--adaptive", default=None, metavar="MIN:MAX",
                   help="slurm/pbs: scale between MIN and MAX jobs with the work left (instead of --cluster-jobs)")


def spec_from_args(args: argparse.Namespace):
    """The :class:`~morphometry.cluster.ClusterSpec` the options ask for, or None."""
    from morphometry.cluster import cluster_spec
    from morphometry.errors import InputError

    adaptive = (None, None)
    if args.adaptive is not None:
        try:
            low, high = (int(v) for v in args.adaptive.split(":"))
        except ValueError:
            raise InputError(f"expected MIN:MAX jobs, e.g. 0:20 (got {args.adaptive!r})", setting="adaptive") from None
        adaptive = (low, high)
    return cluster_spec(args.cluster, args.cluster_config, queue=args.queue, account=args.account,
                        walltime=args.walltime, cores=args.job_cores, memory=args.job_memory, gpus=args.gpus,
                        jobs=args.cluster_jobs, adaptive_min=adaptive[0], adaptive_max=adaptive[1])
