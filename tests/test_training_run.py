"""Training runs end to end on tiny phantom label maps: resume, errors, export, segment."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'morphometry[train]')")
pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")

from test_training_data import write_maps

from morphometry.cli import main
from morphometry.errors import InputError
from segment.bundle import load_bundle, verify_bundle
from segment.training.export import export_bundle, load_run, min_size_for
from segment.training.train import TrainConfig, train

TINY = dict(steps=2, crop=16, width=2, levels=2, resolution_mm=2.0, checkpoint_every=1, validate_every=1,
            validation_examples=1, held_out=1, workers=0, lr=1e-3)


@pytest.fixture(scope="module")
def maps_dir(tmp_path_factory):
    return write_maps(tmp_path_factory.mktemp("labelmaps"), 3)


def _config(maps_dir, role="s1", **kw) -> TrainConfig:
    return TrainConfig(role=role, label_maps=str(maps_dir), **{**TINY, **kw})


def _log(run_dir) -> list[dict]:
    with open(run_dir / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_resume_continues_with_the_same_step_and_data(maps_dir, tmp_path):
    straight = tmp_path / "straight"
    train(_config(maps_dir), straight, log=lambda m: None)
    split = tmp_path / "split"
    train(_config(maps_dir, steps=1), split, log=lambda m: None)
    with open(split / "log.csv", "a") as fh:  # a row the killed run wrote after its last checkpoint
        fh.write("2,0.5,,1.0\n")
    train(_config(maps_dir, steps=2), split, resume=True, log=lambda m: None)
    a, b = load_run(straight), load_run(split)
    assert a.step == b.step == 2
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=name)
    assert [r["loss"] for r in _log(straight)] == [r["loss"] for r in _log(split)]
    assert [r["step"] for r in _log(split)] == ["1", "2"]


def test_run_errors(maps_dir, tmp_path):
    with pytest.raises(InputError, match="needs a checkpoint"):
        train(_config(maps_dir), tmp_path / "none", resume=True)
    done = tmp_path / "done"
    train(_config(maps_dir, steps=1), done, log=lambda m: None)
    with pytest.raises(InputError, match="already holds checkpoints"):
        train(_config(maps_dir, steps=1), done)
    with pytest.raises(InputError, match="needs --previous"):
        train(_config(maps_dir, role="d"), tmp_path / "d")
    with pytest.raises(InputError, match="multiple of 2"):
        _config(maps_dir, crop=15)
    synthseg = tmp_path / "synthseg"
    train(_config(maps_dir, role="synthseg", steps=1), synthseg, log=lambda m: None)
    with pytest.raises(InputError, match="a synthseg run, expected a s1 run"):
        train(_config(maps_dir, role="d", previous=str(synthseg)), tmp_path / "d2")


def test_cli_resume_refuses_changed_settings(maps_dir, tmp_path, capsys):
    run = tmp_path / "cli"
    assert main(["train", "s1", "--label-maps", str(maps_dir), "-o", str(run), "--steps", "1", "--crop", "16",
                 "--width", "2", "--levels", "2", "--held-out", "1", "--workers", "0",
                 "--validation-examples", "1"]) == 0
    assert main(["train", "s1", "-o", str(run), "--resume", "--crop", "32"]) == 2
    assert "only --steps and --workers" in capsys.readouterr().err
    assert main(["train", "s2", "-o", str(run), "--resume"]) == 2
    assert main(["train", "s1", "-o", str(run), "--resume", "--steps", "2"]) == 0
    assert load_run(run).step == 2


@pytest.mark.slow
def test_all_five_networks_export_verify_and_segment(maps_dir, tmp_path):
    runs = {}
    for role in ("s1", "s2", "synthseg"):
        runs[role] = tmp_path / role
        train(_config(maps_dir, role=role, steps=1), runs[role], log=lambda m: None)
    runs["d"] = tmp_path / "d"
    train(_config(maps_dir, role="d", steps=1, previous=str(runs["s1"])), runs["d"], log=lambda m: None)
    runs["d_all"] = tmp_path / "d_all"
    train(_config(maps_dir, role="d_all", steps=1, previous=str(runs["synthseg"])), runs["d_all"], log=lambda m: None)

    out = tmp_path / "bundle"
    assert main(["train", "export", *map(str, runs.values()), "-o", str(out)]) == 0
    bundle = load_bundle(out)
    assert verify_bundle(bundle) == []
    assert bundle.resolution_mm == 2.0 and bundle.min_size == min_size_for(2.0) == 64
    card = bundle.provenance["networks"]["d"]
    assert card["steps"] == 1 and card["config"]["previous"] == str(runs["s1"])
    assert card["held_out_maps"] == ["map_02.nii.gz"]
    assert main(["models", "verify", str(out)]) == 0

    import nibabel as nib

    scan = tmp_path / "scan.nii.gz"
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.uniform(0, 100, (30, 34, 28)).astype(np.float32), np.diag([2, 2, 2, 1.0])), str(scan))
    seg = tmp_path / "seg"
    methods = [a for m in ("synthseg+", "s1+s2", "synthseg", "synthseg+d", "s1+s2+d") for a in ("--method", m)]
    assert main(["segment", str(scan), "-o", str(seg), "--models", str(out), *methods, "--threads", "1"]) == 0
    assert len(list((seg / "seg").glob("*.nii.gz"))) == 5


def test_export_refuses_mixed_runs(maps_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train(_config(maps_dir, steps=1), a, log=lambda m: None)
    train(_config(maps_dir, steps=1), b, log=lambda m: None)
    with pytest.raises(InputError, match="one run per role"):
        export_bundle([a, b], tmp_path / "x", "x")
    with pytest.raises(InputError, match="no checkpoint"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "config.json").write_text(json.dumps(_config(maps_dir).__dict__))
        export_bundle([tmp_path / "empty"], tmp_path / "y", "y")


@pytest.mark.slow
def test_evaluate_a_trained_bundle(maps_dir, tmp_path):
    from segment.training.evaluate import EvaluationConfig, evaluate_bundle

    runs = []
    for role in ("s1", "synthseg"):
        runs.append(tmp_path / role)
        train(_config(maps_dir, role=role, steps=1), runs[-1], log=lambda m: None)
    bundle = export_bundle(runs, tmp_path / "bundle", "tiny")
    config = EvaluationConfig(held_out=1, contrasts=("t1",), spacings_mm=(1.0, 6.0), low_snr_spacings_mm=(3.0,))
    result = evaluate_bundle(bundle, maps_dir, config)
    assert result["conditions"] == ["t1-1mm", "t1-6mm", "t1-3mm-lowsnr"]
    assert list(result["dice"]) == ["synthseg"] and result["scans"] == 3
    assert len(result["dice"]["synthseg"]["t1-6mm"]) == 32 and len(result["s1_tissue_dice"]["t1-1mm"]) == 4
    values = [v for v in result["dice"]["synthseg"]["t1-1mm"] if v is not None]
    assert values and all(0 <= v <= 1 for v in values)
    assert set(result["stage_seconds_per_scan"]) >= {"synthseg"}
