"""Segmentation on a Dask cluster: the same tables as one process, surviving dead workers and poison
scans, resume, settings and job scripts (morphometry.cluster, morphometry.segment.cluster_batch)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import head_phantom, save

from morphometry.cli import main
from morphometry.cluster import ClusterSpec, cluster_spec, connect, job_cluster
from morphometry.errors import InputError
from morphometry.segment import journal
from morphometry.segment.cluster_batch import CRASH_HOOK
from morphometry.segment.segmenter import Segmenter

N_SCANS = 6


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    """Random networks on a 32-voxel minimum grid: a scan takes well under a second."""
    from morphometry.segment.random_bundle import random_bundle

    return random_bundle(tmp_path_factory.mktemp("bundle") / "small", features=2, seed=7, levels=3, min_size=32)


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    rng = np.random.default_rng(11)
    root = tmp_path_factory.mktemp("scans")
    for i in range(N_SCANS):
        shape = (20 + 2 * i, 24, 18)
        save(root / f"scan{i}.nii.gz", head_phantom(shape, rng), np.diag([2.0, 2.0, 2.0, 1.0]))
    return root


@pytest.fixture(scope="module")
def segmenter(small_bundle):
    return Segmenter(small_bundle.root, ("synthseg", "s1+s2"), threads=1)


@pytest.fixture(scope="module")
def single(segmenter, scans, tmp_path_factory):
    """The single-process run: the reference of every cluster run."""
    return segmenter.segment_many(scans, tmp_path_factory.mktemp("single") / "out", progress=False)


@pytest.fixture(scope="module")
def scheduler():
    """A running LocalCluster of 2 worker processes, reached by its address (the tcp:// path)."""
    import dask
    import distributed

    with dask.config.set({"distributed.scheduler.allowed-failures": 3,
                          "distributed.scheduler.worker-saturation": 1.0}), \
            distributed.LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        yield cluster.scheduler_address


def _assert_same_outputs(result, single) -> None:
    assert single.succeeded == N_SCANS and len(single.volumes) == 2 * N_SCANS
    assert single.volumes["total_intracranial"].gt(0).sum() == N_SCANS  # something to compare
    pd.testing.assert_frame_equal(result.volumes, single.volumes)
    assert result.failures.empty
    for path in sorted((single.out_dir / "seg").glob("*.nii.gz")):
        theirs = result.out_dir / "seg" / path.name
        assert np.array_equal(nib.load(theirs).get_fdata(), nib.load(path).get_fdata()), path.name
    ids = [e["scan_id"] for e in journal.entries(result.out_dir)]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == N_SCANS  # every scan exactly once


def test_a_cluster_run_equals_the_single_process_run(segmenter, scans, single, scheduler, tmp_path):
    result = segmenter.segment_many(scans, tmp_path / "out", progress=False, cluster=scheduler)
    _assert_same_outputs(result, single)
    assert (result.succeeded, result.failed, result.skipped) == (N_SCANS, 0, 0)
    assert not list((tmp_path / "out").rglob(".*.tmp")) and not list((tmp_path / "out" / "seg").glob(".*"))


def test_a_worker_killed_mid_batch_loses_and_duplicates_nothing(segmenter, scans, single, tmp_path, monkeypatch):
    marker = tmp_path / "killed-once"
    monkeypatch.setenv(CRASH_HOOK, f"scan3@{marker}")  # the worker running scan3 is SIGKILLed, once
    result = segmenter.segment_many(scans, tmp_path / "out", progress=False, cluster="local:2")
    assert marker.is_file()  # a worker did die
    _assert_same_outputs(result, single)


def test_a_poison_scan_fails_after_the_retry_limit_and_the_others_succeed(segmenter, scans, single, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv(CRASH_HOOK, "scan2")  # kills every worker that runs it
    spec = ClusterSpec("local", processes=2, allowed_failures=1)
    result = segmenter.segment_many(scans, tmp_path / "out", progress=False, cluster=spec)
    assert (result.succeeded, result.failed) == (N_SCANS - 1, 1)
    failure = result.failures.iloc[0]
    assert (failure["scan_id"], failure["stage"]) == ("scan2", "worker")
    assert failure["error"].endswith("scan2.nii.gz: worker died 2 times while processing this scan "
                                     "(out of memory? crash?)")
    expected = single.volumes[single.volumes["scan_id"] != "scan2"].reset_index(drop=True)
    pd.testing.assert_frame_equal(result.volumes, expected)
    assert not (tmp_path / "out" / "seg" / "scan2_synthseg.nii.gz").exists()


def test_resume_on_the_cluster_after_a_partial_run(segmenter, small_bundle, scans, single, scheduler, tmp_path,
                                                   capsys):
    out = tmp_path / "out"
    segmenter.segment_many([scans / "scan0.nii.gz", scans / "scan4.nii.gz"], out, progress=False)
    code = main(["segment", str(scans), "-o", str(out), "--models", str(small_bundle.root), "--method", "synthseg",
                 "--method", "s1+s2", "--threads", "1", "--resume", "--cluster", scheduler])
    assert code == 0, capsys.readouterr().err
    prov = json.loads((out / "provenance.json").read_text())["result"]
    assert (prov["succeeded"], prov["skipped"]) == (N_SCANS - 2, 2)
    assert prov["timings"]["cluster:task_wall"] > 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "volumes.parquet"), single.volumes)
    assert pd.read_csv(out / "failures.csv").empty


@pytest.mark.parametrize("args, message", [
    (["--cluster", "local:0"], "--cluster: 'local:0': expected local:N with N worker processes >= 1"),
    (["--cluster", "lokal"], "--cluster: 'lokal': choose local, local:N, slurm, pbs or tcp://HOST:PORT"),
    (["--cluster", "tcp://host"], "--cluster: 'tcp://host': expected tcp://HOST:PORT"),
    (["--cluster", "slurm"], "--cluster: slurm jobs need cores and memory per job"),
    (["--cluster", "slurm", "--job-cores", "4", "--job-memory", "8GB", "--walltime", "2h"],
     "--cluster: walltime '2h': expected HH:MM:SS"),
    (["--cluster", "pbs", "--adaptive", "4:2", "--job-cores", "4", "--job-memory", "8GB"],
     "--cluster: adaptive_min 4 exceeds adaptive_max 2"),
    (["--adaptive", "x"], "--adaptive: expected MIN:MAX jobs, e.g. 0:20 (got 'x')"),
    (["--cluster-jobs", "3"], "--cluster: cluster settings given without a cluster"),
])
def test_bad_cluster_settings_give_one_line(args, message, small_bundle, scans, tmp_path, capsys):
    code = main(["segment", str(scans), "-o", str(tmp_path / "out"), "--models", str(small_bundle.root), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"morpho segment: error: {message}"), err
    assert not (tmp_path / "out" / "volumes.parquet").exists()


@pytest.mark.parametrize("text, message", [
    ("cluster: slurm\ncores: 4\nmemory: 8GB\nqueues: gpu\n", "unknown setting(s) queues (known: cluster, "),
    ("cluster: [slurm\n", "not valid YAML (line 2)"),
    ("- slurm\n", "expected a mapping of cluster settings"),
    ("cluster: pbs\ncores: 4\nmemory: 8GB\nwalltime: 12:00:00\n", 'quote the walltime, e.g. walltime: "12:00:00"'),
])
def test_bad_config_files_are_named(text, message, tmp_path):
    config = tmp_path / "cluster.yaml"
    config.write_text(text)
    with pytest.raises(InputError, match="cluster_config") as caught:
        cluster_spec(None, config)
    assert str(caught.value).startswith(f"cluster_config: {config}: {message}")


def test_an_unreachable_scheduler_is_one_error():
    with pytest.raises(InputError, match=r"^cluster: cannot reach the scheduler at tcp://127.0.0.1:9 "), \
            connect(ClusterSpec.parse("tcp://127.0.0.1:9"), connect_timeout_s=1):
        pass


SLURM_YAML = """\
cluster: slurm
queue: gpu
account: cohort-42
walltime: "12:00:00"
cores: 16
memory: 64GB
gpus: 2
adaptive-min: 0
adaptive-max: 30
prologue:
  - module load cuda/12.4
directives:
  - --constraint=h100
"""


def test_slurm_job_script_from_yaml_and_flags(tmp_path):
    config = tmp_path / "cluster.yaml"
    config.write_text(SLURM_YAML)
    spec = cluster_spec(None, config, walltime="04:00:00")  # arguments win over the file
    assert spec == ClusterSpec("slurm", queue="gpu", account="cohort-42", walltime="04:00:00", cores=16,
                               memory="64GB", gpus=2, adaptive_min=0, adaptive_max=30,
                               prologue=("module load cuda/12.4",), directives=("--constraint=h100",))
    assert (spec.job_processes, spec.slots) == (2, 60)  # one worker process per GPU, 30 jobs at most
    with job_cluster(spec) as cluster:
        script = cluster.job_script()
    lines = script.splitlines()
    for directive in ("#SBATCH -p gpu", "#SBATCH -A cohort-42", "#SBATCH -t 04:00:00", "#SBATCH -n 1",
                      "#SBATCH --cpus-per-task=16", "#SBATCH --constraint=h100", "#SBATCH --gres=gpu:2"):
        assert directive in lines, (directive, script)
    assert any(line.startswith("#SBATCH --mem=") and line.endswith("G") for line in lines)
    assert "module load cuda/12.4" in lines
    assert "--nworkers 2" in script and "--nthreads 1 " in script


def test_pbs_job_script_from_flags(small_bundle, tmp_path):
    spec = cluster_spec("pbs", queue="workq", cores=8, memory="32GB", jobs=4, walltime="01:30:00")
    assert (spec.job_processes, spec.slots) == (1, 4)
    with job_cluster(spec) as cluster:
        lines = cluster.job_script().splitlines()
    for directive in ("#PBS -q workq", "#PBS -l select=1:ncpus=8:mem=32GB", "#PBS -l walltime=01:30:00"):
        assert directive in lines, (directive, lines)


def test_cluster_texts_parse():
    assert ClusterSpec.parse("local:3") == ClusterSpec("local", processes=3)
    assert ClusterSpec.parse("local").processes is None
    assert ClusterSpec.parse("tcp://10.0.0.5:8786") == ClusterSpec("address", address="tcp://10.0.0.5:8786")
    assert ClusterSpec.parse("local:3", threads_per_worker=2).slots == 6
    assert cluster_spec(None) is None


def _ball(centre_x: int) -> np.ndarray:
    x, y, z = np.indices((32, 32, 32))
    data = np.zeros((32, 32, 32), np.int32)
    data[(x - centre_x) ** 2 + (y - 16) ** 2 + (z - 16) ** 2 <= 49] = 17
    data[(x - 16) ** 2 + (y - 8) ** 2 + (z - 16) ** 2 <= 16] = 53
    return data


def test_evaluate_on_the_cluster_equals_evaluate_here(scheduler, tmp_path):
    from morphometry.analysis.evaluation import evaluate

    (tmp_path / "ref").mkdir()
    (tmp_path / "seg").mkdir()
    for i in range(5):
        save(tmp_path / "ref" / f"s{i}.nii.gz", _ball(16), np.eye(4))
        save(tmp_path / "seg" / f"s{i}_synthseg.nii.gz", _ball(14 + i), np.eye(4))
        save(tmp_path / "seg" / f"s{i}_synthseg+.nii.gz", _ball(16 + i // 2), np.eye(4))
    (tmp_path / "seg" / "s3_synthseg.nii.gz").write_bytes(b"broken")  # one failure, listed the same way
    here = evaluate(tmp_path / "seg", tmp_path / "ref", progress=False)
    there = evaluate(tmp_path / "seg", tmp_path / "ref", progress=False, cluster=scheduler)
    assert len(here.failures) == 1 and here.metrics["dice"].between(0, 1).all() and here.metrics["dice"].lt(1).any()
    for name in ("metrics", "scans", "summary", "comparisons", "failures"):
        pd.testing.assert_frame_equal(getattr(there, name), getattr(here, name), obj=name)


def test_silver_on_the_cluster_equals_silver_here(scheduler, tmp_path):
    from morphometry.analysis.silver import silver

    rng = np.random.default_rng(5)
    image = head_phantom((32, 36, 30), rng)
    reference = save(tmp_path / "ref.nii.gz", image, np.diag([2.0, 2.0, 2.0, 1.0]))
    labels = save(tmp_path / "ref_labels.nii.gz", (image > 120).astype(np.int32) * 17, np.diag([2.0, 2.0, 2.0, 1.0]))
    scans = [save(tmp_path / f"t{i}.nii.gz", np.roll(image, i, axis=0) + rng.normal(0, 2, image.shape).astype(np.float32),
                  np.diag([2.0, 2.0, 2.0, 1.0])) for i in range(3)]
    (tmp_path / "t9.nii.gz").write_bytes(b"broken")
    kwargs = {"scans": [*scans, tmp_path / "t9.nii.gz"], "reference_image": reference, "reference_labels": labels,
              "sampling": 0.5, "seed": 4, "progress": False}
    here = silver(tmp_path / "here", **kwargs)
    there = silver(tmp_path / "there", cluster=scheduler, **kwargs)
    paths = ["silver_path", "transform_path"]
    assert len(here.registrations) == 3 and here.registrations["seed"].nunique() == 3
    pd.testing.assert_frame_equal(there.registrations.drop(columns=paths), here.registrations.drop(columns=paths))
    pd.testing.assert_frame_equal(there.failures, here.failures)
    for scan_id in ("t0", "t1", "t2"):
        ours, theirs = (nib.load(d / "silver" / f"{scan_id}.nii.gz").get_fdata() for d in (here.out_dir, there.out_dir))
        assert np.array_equal(ours, theirs) and ours.any()


def test_run_tasks_feeds_every_item_or_stops_when_asked(scheduler):
    import operator

    from morphometry.cluster import run_tasks

    with connect(ClusterSpec.parse(scheduler)) as client:
        seen: dict[int, int] = {}
        assert run_tasks(client, operator.neg, range(40), key=str, on_result=seen.__setitem__,
                         on_failure=pytest.fail, name="neg")
        assert seen == {i: -i for i in range(40)}
        stopped: dict[int, int] = {}
        assert not run_tasks(client, operator.neg, range(40), key=str, on_result=stopped.__setitem__,
                             on_failure=pytest.fail, should_stop=lambda: len(stopped) >= 3, name="neg")
        assert 3 <= len(stopped) <= 6 and all(v == -k for k, v in stopped.items())


@pytest.mark.parametrize("cores,threads,memory_gb,scan_gb,expected", [
    (16, 1, 64.0, 4.3, 14),  # memory allows 14 of 16 one-thread scans
    (16, 4, 64.0, 4.3, 4),  # cores allow 4 scans of 4 threads
    (64, 1, 24.0, 7.5, 3),  # memory decides
    (2, 1, 3.0, 7.5, 1),  # never fewer than one
    (16, 0, 64.0, 4.3, 1),  # no --threads: one scan on every core
])
def test_local_workers_follow_cores_and_memory(cores, threads, memory_gb, scan_gb, expected, monkeypatch):
    from morphometry.segment import cluster_batch

    monkeypatch.setattr(cluster_batch.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(cluster_batch, "available_memory_gb", lambda: memory_gb)
    spec = cluster_batch.local_processes(ClusterSpec("local"), "cpu", threads, scan_gb)
    assert spec.processes == expected
    assert cluster_batch.worker_threads(spec, "cpu", threads) == (threads or max(1, cores // expected))
    assert cluster_batch.local_processes(ClusterSpec("local", processes=3), "cpu", threads, scan_gb).processes == 3


def test_local_workers_one_per_gpu(monkeypatch):
    from morphometry.segment import cluster_batch

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,3")
    assert cluster_batch.local_processes(ClusterSpec("local"), "cuda", 0, 7.5).processes == 3


def test_available_memory_is_read():
    from morphometry.segment.cluster_batch import available_memory_gb

    with open("/proc/meminfo") as f:
        total = int(next(line for line in f if line.startswith("MemTotal")).split()[1]) / 1e6
    assert 0 < available_memory_gb() <= total
