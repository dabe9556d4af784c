"""Faults on one machine: two batches on one folder (the lock), SIGTERM at a job's walltime, a full
disk, and checkpoints that could run code when loaded."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import head_phantom, save

from morphometry.cli import main
from morphometry.errors import InputError
from morphometry.folder_lock import FolderLock
from morphometry.segment import journal

MORPHO = [sys.executable, "-m", "morphometry.cli"]
N_SCANS = 4


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    """The tiny random bundle on a 64-voxel grid (not 128): these tests run whole batches several times."""
    from morphometry.segment.random_bundle import random_bundle

    return random_bundle(tmp_path_factory.mktemp("bundle") / "small", features=2, seed=7, levels=4, min_size=64)


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    rng = np.random.default_rng(5)
    root = tmp_path_factory.mktemp("scans")
    for i in range(N_SCANS):
        save(root / f"s{i}.nii.gz", head_phantom((24, 26, 24), rng), np.diag([1.5, 1.5, 1.5, 1.0]))
    return root


def _segment(scans: Path, out: Path, bundle, *extra: str) -> list[str]:
    return ["segment", str(scans), "-o", str(out), "--models", str(bundle.root), "--threads", "1",
            "--workers", "1", "--fast", *extra]


def _loose(out: Path) -> int:
    return len(list((out / ".journal").glob("*/*.json"))) if (out / ".journal").is_dir() else 0


def _no_partial_files(out: Path) -> None:
    assert not list(out.rglob(".*.tmp")) and not list(out.rglob(".*.nii*"))


def _every_scan_once(out: Path) -> None:
    vol = pd.read_parquet(out / "volumes.parquet")
    assert sorted(vol.scan_id) == [f"s{i}" for i in range(N_SCANS)]
    assert len(journal.entries(out)) == N_SCANS and not _loose(out)
    assert not list((out / ".journal" / "parts").glob(".claim-*"))
    assert sorted(p.name for p in (out / "seg").glob("*.nii.gz")) == [f"s{i}_synthseg+.nii.gz" for i in range(N_SCANS)]


# -- the lock ------------------------------------------------------------------------------------------
def test_lock_refuses_a_second_holder_and_is_released(tmp_path):
    with FolderLock(tmp_path, "first"):
        doc = json.loads((tmp_path / ".lock").read_text())
        assert doc["pid"] == os.getpid() and doc["command"] == "first"
        with pytest.raises(InputError, match=f"{tmp_path} is in use by another batch \\(pid {os.getpid()} on "), \
                FolderLock(tmp_path):
            pass
    with FolderLock(tmp_path, "second"):  # released when the first ended
        assert json.loads((tmp_path / ".lock").read_text())["command"] == "second"


def test_second_segment_refused_while_one_runs_and_not_after_kill(tmp_path, small_bundle, scans, capsys):
    out = tmp_path / "out"
    script = (f"import time\nfrom morphometry.folder_lock import FolderLock\nwith FolderLock({str(out)!r}):\n"
              "    print('held', flush=True)\n    time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(_segment(scans, out, small_bundle)) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1].startswith(f"morpho segment: error: {out} is in use by another batch (pid {holder.pid} on ")
        assert not (out / ".journal").exists()
    finally:
        holder.kill()  # SIGKILL: the holder never releases the lock itself
        holder.wait()
    with FolderLock(out):  # a dead holder's lock does not block
        assert json.loads((out / ".lock").read_text())["pid"] == os.getpid()


# -- SIGTERM -------------------------------------------------------------------------------------------
STOP_SCRIPT = """
import os, signal, time
from morphometry.stopping import StopRequest
before = signal.getsignal(signal.SIGTERM)
with StopRequest() as stop:
    assert not stop.requested
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)
    print(stop.requested, stop.signal == signal.SIGTERM, stop.exit_code)
print(signal.getsignal(signal.SIGTERM) is before)
"""


def test_stop_request_catches_sigterm_and_restores_the_handler():
    # in a fresh process: a signal sent to the test runner itself would reach its other threads' libraries
    done = subprocess.run([sys.executable, "-c", STOP_SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "143", "True"]


def test_sigterm_writes_the_tables_and_resume_completes(tmp_path, small_bundle, scans):
    out = tmp_path / "out"
    cmd = MORPHO + _segment(scans, out, small_bundle)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while _loose(out) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("morpho segment: stopped by SIGTERM with ") and "rerun with --resume" in last
    done = journal.entries(out)
    assert 1 <= len(done) < N_SCANS, "SIGTERM should land in the middle of the batch"
    vol = pd.read_parquet(out / "volumes.parquet")
    assert sorted(vol.scan_id) == sorted(e["scan_id"] for e in done)
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["result"]["interrupted"] == "SIGTERM"
    assert prov["result"]["succeeded"] == len(done)
    _no_partial_files(out)
    kept = {p: p.stat().st_mtime_ns for e in done for p in (out / "seg").glob(f"{e['scan_id']}_*.nii.gz")}
    assert main(_segment(scans, out, small_bundle, "--resume")) == 0
    _every_scan_once(out)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # finished scans were not redone
    assert json.loads((out / "provenance.json").read_text())["result"]["interrupted"] is None


# -- a full disk ---------------------------------------------------------------------------------------
def _full_after(monkeypatch, module: str, writes: int) -> None:
    """Make ``atomic_write`` as ``module`` uses it raise ENOSPC after ``writes`` writes."""
    from morphometry import atomic

    calls = []

    def write(path, func, **kwargs):
        calls.append(path)
        full = len(calls) > writes  # the data is written, then the disk fills
        atomic.atomic_write(path, (lambda tmp: (func(tmp), _raise_no_space(tmp))) if full else func, **kwargs)

    monkeypatch.setattr(f"{module}.atomic_write", write)


def _raise_no_space(tmp: Path) -> None:
    raise OSError(errno.ENOSPC, "No space left on device", str(tmp))


@pytest.mark.parametrize("where", ["morphometry.io", "morphometry.segment.journal"])
def test_full_disk_stops_clearly_and_resume_completes(tmp_path, small_bundle, scans, monkeypatch, capsys, where):
    out = tmp_path / "out"
    _full_after(monkeypatch, where, 2)  # the 3rd segmentation (or the 3rd journal entry) finds the disk full
    assert main(_segment(scans, out, small_bundle)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"morpho segment: error: {out}: no space left on the device")
    assert "rerun with --resume" in err[-1]
    done = journal.entries(out)  # readable, complete entries only
    assert len(done) == 2 and all(e["status"] == "ok" and len(e["rows"]) == 1 for e in done)
    _no_partial_files(out)
    monkeypatch.undo()
    assert main(_segment(scans, out, small_bundle, "--resume")) == 0
    _every_scan_once(out)
    assert pd.read_csv(out / "failures.csv").empty


# -- checkpoints -----------------------------------------------------------------------------------------
class _Payload:
    """Any pickled object: loading it could run code."""


def test_checkpoints_load_weights_only(tmp_path):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'morphometry-mri[train]')")
    from morphometry.segment.training.runs import load_checkpoint

    plain = {"step": 3, "model": {"w": torch.ones(2)}, "elapsed_s": 1.5, "hardware": "cpu", "train_maps": ["a"]}
    torch.save(plain, tmp_path / "plain.pt")
    loaded = load_checkpoint(tmp_path / "plain.pt")
    assert loaded["step"] == 3 and torch.equal(loaded["model"]["w"], torch.ones(2))
    for name, payload in [("object.pt", _Payload()), ("numpy.pt", np.arange(3))]:
        torch.save({**plain, "extra": payload}, tmp_path / name)
        with pytest.raises(InputError, match=f"{tmp_path / name}: refused: the checkpoint holds pickled objects"):
            load_checkpoint(tmp_path / name)
    (tmp_path / "cut.pt").write_bytes((tmp_path / "plain.pt").read_bytes()[:50])
    with pytest.raises(InputError, match="unreadable checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
