"""End to end: ``morpho segment`` on a folder of mixed scans with a bad file; resume after kill -9;
shards and merge; bundle verification."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import head_phantom, save

from morphometry.cli import main
from morphometry.labels import STRUCTURES, SYNTHSEG_2
from morphometry.segment import journal

MORPHO = [sys.executable, "-m", "morphometry.cli"]


@pytest.fixture(scope="module")
def segmented(tiny_bundle, scan_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "out"
    code = main(["segment", str(scan_folder), "-o", str(out), "--models", str(tiny_bundle.root),
                 "--method", "synthseg+", "--method", "synthseg", "--threads", "2", "--posteriors",
                 "--resampled"])
    return code, out


def test_rows_failures_and_exit_code(segmented, scan_folder):
    code, out = segmented
    assert code == 1  # one bad file
    vol = pd.read_parquet(out / "volumes.parquet")
    assert sorted(vol.scan_id.unique()) == ["coronal5", "iso15", "las1"]
    assert sorted(vol.method.unique()) == ["synthseg", "synthseg+"]
    assert len(vol) == 6 and not vol.duplicated(["scan_id", "method"]).any()
    assert set(STRUCTURES) <= set(vol.columns)
    np.testing.assert_allclose(vol.total_intracranial, vol[list(STRUCTURES)].sum(axis=1), rtol=1e-6, atol=0.02)
    fails = pd.read_csv(out / "failures.csv")
    assert fails.scan_id.tolist() == ["broken"] and "not a readable NIfTI/MGZ image" in fails.error[0]
    csv = pd.read_csv(out / "volumes.csv")
    assert len(csv) == 6
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["device"] == "cpu" and prov["bundle"]["model_id"].startswith("random")
    assert "network:s1" in prov["seconds_per_stage"]


def test_acquisition_columns(segmented):
    vol = pd.read_parquet(segmented[1] / "volumes.parquet").set_index(["scan_id", "method"])
    cor = vol.loc[("coronal5", "synthseg+")]
    # native axes: 0 -> -S? no: columns (0,0,-1),( -1,0,0),(0,5,0): voxel axis 0 is -A, 1 is +S (5 mm), 2 is -R
    assert (cor.spacing_x_mm, cor.spacing_y_mm, cor.spacing_z_mm) == (1.0, 1.0, 5.0)
    assert cor.slice_axis == "axial" and cor.slice_spacing_mm == 5.0
    assert (cor.shape_x, cor.shape_y, cor.shape_z) == (64, 60, 12)


def test_segmentations_on_the_working_grid_in_native_order(segmented, scan_folder):
    out = segmented[1]
    seg = nib.load(str(out / "seg" / "coronal5_synthseg+.nii.gz"))
    src = nib.load(str(scan_folder / "coronal5.nii.gz"))
    # resampled to 1 mm: 12 slices of 5 mm become 60 of 1 mm along the same (native) axis
    assert seg.shape == (60, 60, 64)
    assert np.allclose(np.linalg.norm(seg.affine[:3, :3], axis=0), 1.0)
    # the first voxel corner coincides with the source's first voxel corner
    corner = lambda a: a[:3, :3] @ np.full(3, -0.5) + a[:3, 3]  # noqa: E731
    np.testing.assert_allclose(corner(seg.affine), corner(src.affine), atol=1e-6)
    assert set(np.unique(seg.get_fdata()).astype(int)) <= set(SYNTHSEG_2.values.tolist())
    resampled = nib.load(str(out / "resampled" / "coronal5.nii.gz"))
    assert resampled.shape == seg.shape and np.allclose(resampled.affine, seg.affine)
    assert not (out / "resampled" / "las1.nii.gz").exists()  # written only when resampling happened
    iso = nib.load(str(out / "seg" / "las1_synthseg.nii.gz"))  # 1 mm: not resampled, native grid kept
    assert iso.shape == (64, 64, 64)
    np.testing.assert_allclose(iso.affine, np.diag([-1.0, 1.0, 1.0, 1.0]))


def test_soft_volumes_equal_posterior_sums(segmented):
    out = segmented[1]
    post = nib.load(str(out / "posteriors" / "iso15_synthseg+.nii.gz"))
    data = np.asarray(post.dataobj, dtype=np.float64)
    assert data.shape[-1] == 33
    np.testing.assert_allclose(data.sum(-1), 1.0, atol=1e-5)
    voxel = abs(np.linalg.det(post.affine[:3, :3]))
    row = pd.read_parquet(out / "volumes.parquet").query("scan_id == 'iso15' and method == 'synthseg+'").iloc[0]
    for channel, lab in enumerate(SYNTHSEG_2.labels[1:], start=1):
        assert row[lab.name] == pytest.approx(data[..., channel].sum() * voxel, abs=2e-3)


def test_refuses_to_overwrite_without_resume(segmented, tiny_bundle, scan_folder, capsys):
    code = main(["segment", str(scan_folder), "-o", str(segmented[1]), "--models", str(tiny_bundle.root)])
    assert code == 2
    assert "--resume: " in capsys.readouterr().err


def test_missing_bundle_and_unknown_network(tmp_path, scan_folder, tiny_bundle, capsys):
    assert main(["segment", str(scan_folder), "-o", str(tmp_path / "o"), "--models", str(tmp_path)]) == 2
    assert "no bundle.json" in capsys.readouterr().err
    partial = tmp_path / "partial"
    from morphometry.segment.random_bundle import random_bundle

    random_bundle(partial, features=2, roles=("synthseg",))
    assert main(["segment", str(scan_folder), "-o", str(tmp_path / "o2"), "--models", str(partial)]) == 2
    assert "needs network(s) d, s1, s2" in capsys.readouterr().err


def test_models_verify_detects_tampering(tmp_path, capsys):
    from morphometry.segment.random_bundle import random_bundle

    b = random_bundle(tmp_path / "b", features=2, roles=("s1",))
    assert main(["models", "verify", str(b.root)]) == 0
    with open(b.root / "s1.onnx", "ab") as fh:
        fh.write(b"\0")
    assert main(["models", "verify", str(b.root)]) == 1
    assert "does not match its sha256" in capsys.readouterr().err


def _journal_count(out: Path) -> int:
    return len(list((out / ".journal").glob("*/*.json"))) if (out / ".journal").exists() else 0


def test_kill_and_resume_without_loss_or_duplicates(tiny_bundle, tmp_path):
    rng = np.random.default_rng(11)
    scans = tmp_path / "scans"
    scans.mkdir()
    for i in range(4):
        save(scans / f"s{i}.nii.gz", head_phantom((30, 32, 30), rng), np.diag([1.2, 1.2, 1.2, 1.0]))
    out = tmp_path / "out"
    cmd = MORPHO + ["segment", str(scans), "-o", str(out), "--models", str(tiny_bundle.root), "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while _journal_count(out) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = _journal_count(out)
    assert 1 <= done_before < 4, "the kill should land in the middle of the batch"
    done = [e["scan_id"] for e in journal.entries(out)]
    first = {p: p.stat().st_mtime_ns for s in done for p in (out / "seg").glob(f"{s}_*.nii.gz")}
    assert len(first) == done_before
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"({done_before} already done)" in resumed.stderr
    vol = pd.read_parquet(out / "volumes.parquet")
    assert sorted(vol.scan_id) == [f"s{i}" for i in range(4)]
    assert not vol.duplicated(["scan_id", "method"]).any()
    for path, mtime in first.items():  # finished scans were not redone
        assert path.stat().st_mtime_ns == mtime
    assert not list(out.rglob(".*.tmp")) and not list((out / "seg").glob(".*"))


def test_shards_partition_and_merge(tiny_bundle, tmp_path, scan_folder):
    outs = []
    for k in (1, 2):
        out = tmp_path / f"shard{k}"
        main(["segment", str(scan_folder), "-o", str(out), "--models", str(tiny_bundle.root), "--shard", f"{k}/2"])
        outs.append(out)
    merged = tmp_path / "merged"
    assert main(["merge", *map(str, outs), "-o", str(merged)]) == 0
    vol = pd.read_parquet(merged / "volumes.parquet")
    fails = pd.read_csv(merged / "failures.csv")
    assert sorted(vol.scan_id) == ["coronal5", "iso15", "las1"] and fails.scan_id.tolist() == ["broken"]
    ids = [set(pd.read_csv(o / "volumes.csv").scan_id) if (o / "volumes.csv").exists() else set() for o in outs]
    assert not (ids[0] & ids[1])


def test_bad_shard_argument(tiny_bundle, scan_folder, tmp_path, capsys):
    assert main(["segment", str(scan_folder), "-o", str(tmp_path / "x"), "--models", str(tiny_bundle.root),
                 "--shard", "3/2"]) == 2
    err = capsys.readouterr().err
    assert "--shard: " in err and "3/2" in err


@pytest.mark.slow
def test_parcellation_and_qc_columns(tmp_path):
    from morphometry.labels import PARCELLATION_LABELS, QC_GROUPS
    from morphometry.segment.random_bundle import random_bundle

    bundle = random_bundle(tmp_path / "b", features=2, roles=("s1", "d", "s2", "parc", "qc"))
    rng = np.random.default_rng(5)
    save(tmp_path / "one.nii.gz", head_phantom((32, 36, 30), rng), np.diag([1.0, 1.0, 1.0, 1.0]))
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "one.nii.gz"), "-o", str(out), "--models", str(bundle.root),
                 "--parc", "--qc"]) == 0
    row = pd.read_parquet(out / "volumes.parquet").iloc[0]
    scores = [row[f"qc_{g}"] for g in QC_GROUPS[1:]]
    assert all(0 <= s <= 1 for s in scores)
    parcels = np.array([row[p.name] for p in PARCELLATION_LABELS])
    cortex = row.left_cerebral_cortex + row.right_cerebral_cortex
    assert parcels.sum() == pytest.approx(cortex, abs=0.1)  # rescaled to the cortex volume
    seg = np.asarray(nib.load(str(out / "seg" / "one_synthseg+.nii.gz")).dataobj)
    assert not np.isin(seg, [3, 42]).any()  # cortex voxels carry parcel labels
    assert main(["segment", str(tmp_path / "one.nii.gz"), "-o", str(tmp_path / "o2"), "--models",
                 str(random_bundle(tmp_path / "b2", features=2, roles=("s1", "d", "s2")).root), "--qc"]) == 2


def test_cuda_or_fp16_refused_without_cuda(tiny_bundle, scan_folder, tmp_path, capsys, monkeypatch):
    import morphometry.segment.runtime

    monkeypatch.setattr(morphometry.segment.runtime, "cuda_works", lambda: False)  # as on a machine without CUDA
    assert main(["segment", str(scan_folder), "-o", str(tmp_path / "a"), "--models", str(tiny_bundle.root),
                 "--device", "cuda"]) == 2
    assert "CUDA is not usable here" in capsys.readouterr().err
    for flags in (["--fp16"], ["--precision", "fp16"]):
        assert main(["segment", str(scan_folder), "-o", str(tmp_path / "b"), "--models", str(tiny_bundle.root),
                     *flags]) == 2
        assert "--precision: needs a CUDA device" in capsys.readouterr().err
