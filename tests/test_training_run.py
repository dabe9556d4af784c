"""Training runs end to end on tiny phantom label maps: resume, errors, export, segment."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'morphometry-mri[train]')")
pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")

from test_training_data import write_maps

from morphometry.cli import main
from morphometry.errors import InputError
from morphometry.segment.bundle import load_bundle, verify_bundle
from morphometry.segment.training.export import export_bundle, min_size_for
from morphometry.segment.training.runs import TrainConfig, load_run
from morphometry.segment.training.train import train

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
    train(_config(maps_dir), straight)
    split = tmp_path / "split"
    train(_config(maps_dir, steps=1), split)
    with open(split / "log.csv", "a") as fh:  # a row the killed run wrote after its last checkpoint
        fh.write("2,0.5,,1.0\n")
    train(_config(maps_dir, steps=2), split, resume=True)
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
    train(_config(maps_dir, steps=1), done)
    with pytest.raises(InputError, match="already holds checkpoints"):
        train(_config(maps_dir, steps=1), done)
    with pytest.raises(InputError, match="previous: training d needs the run folder of an S1 training run"):
        train(_config(maps_dir, role="d"), tmp_path / "d")
    with pytest.raises(InputError, match="multiple of 2"):
        _config(maps_dir, crop=15)
    synthseg = tmp_path / "synthseg"
    train(_config(maps_dir, role="synthseg", steps=1), synthseg)
    with pytest.raises(InputError, match="a synthseg run, expected a s1 run"):
        train(_config(maps_dir, role="d", previous=str(synthseg)), tmp_path / "d2")


def test_cli_resume_refuses_changed_settings(maps_dir, tmp_path, capsys):
    run = tmp_path / "cli"
    assert main(["train", "s1", "--label-maps", str(maps_dir), "-o", str(run), "--steps", "1", "--crop", "16",
                 "--width", "2", "--levels", "2", "--held-out", "1", "--workers", "0",
                 "--validation-examples", "1"]) == 0
    err = capsys.readouterr().err  # the logger's lines when stderr is not a terminal
    assert "train s1: 1/1 step (100 %)" in err and "step 1: loss " in err
    assert main(["train", "s1", "-o", str(run), "--resume", "--crop", "32"]) == 2
    assert "only --steps and --workers" in capsys.readouterr().err
    assert main(["train", "s2", "-o", str(run), "--resume"]) == 2
    assert main(["train", "s1", "-o", str(run), "--resume", "--steps", "2"]) == 0
    assert load_run(run).step == 2


def test_cli_errors_name_the_flag(maps_dir, tmp_path, capsys):
    base = ["--label-maps", str(maps_dir), "--held-out", "1", "--workers", "0"]
    assert main(["train", "s1", *base, "-o", str(tmp_path / "a"), "--crop", "15", "--levels", "2"]) == 2
    assert "morpho train: error: --crop: 15 must be a multiple of 2" in capsys.readouterr().err
    assert main(["train", "d", *base, "-o", str(tmp_path / "b"), "--crop", "16", "--width", "2", "--levels", "2"]) == 2
    assert "--previous: training d needs the run folder of an S1 training run" in capsys.readouterr().err
    assert main(["train", "s1", *base, "-o", str(tmp_path / "c"), "--init", str(tmp_path / "none")]) == 2
    assert f"--init: {tmp_path / 'none'}: no checkpoint in" in capsys.readouterr().err


@pytest.mark.slow
def test_all_five_networks_export_verify_and_segment(maps_dir, tmp_path):
    runs = {}
    for role in ("s1", "s2", "synthseg"):
        runs[role] = tmp_path / role
        train(_config(maps_dir, role=role, steps=1), runs[role])
    runs["d"] = tmp_path / "d"
    train(_config(maps_dir, role="d", steps=1, previous=str(runs["s1"])), runs["d"])
    runs["d_all"] = tmp_path / "d_all"
    train(_config(maps_dir, role="d_all", steps=1, previous=str(runs["synthseg"])), runs["d_all"])

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
    train(_config(maps_dir, steps=1), a)
    train(_config(maps_dir, steps=1), b)
    with pytest.raises(InputError, match="one run per role"):
        export_bundle([a, b], tmp_path / "x", "x")
    with pytest.raises(InputError, match="no checkpoint"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "config.json").write_text(json.dumps(_config(maps_dir).__dict__))
        export_bundle([tmp_path / "empty"], tmp_path / "y", "y")


@pytest.mark.slow
def test_evaluate_a_trained_bundle(maps_dir, tmp_path):
    from morphometry.segment.training.evaluate import EvaluationConfig, evaluate_bundle

    runs = []
    for role in ("s1", "synthseg"):
        runs.append(tmp_path / role)
        train(_config(maps_dir, role=role, steps=1), runs[-1])
    bundle = export_bundle(runs, tmp_path / "bundle", "tiny")
    config = EvaluationConfig(held_out=1, contrasts=("t1",), spacings_mm=(1.0, 6.0), low_snr_spacings_mm=(3.0,))
    result = evaluate_bundle(bundle, maps_dir, config)
    assert result["conditions"] == ["t1-1mm", "t1-6mm", "t1-3mm-lowsnr"]
    assert list(result["dice"]) == ["synthseg"] and result["scans"] == 3
    assert len(result["dice"]["synthseg"]["t1-6mm"]) == 32 and len(result["s1_tissue_dice"]["t1-1mm"]) == 4
    values = [v for v in result["dice"]["synthseg"]["t1-1mm"] if v is not None]
    assert values and all(0 <= v <= 1 for v in values)
    assert set(result["stage_seconds_per_scan"]) >= {"synthseg"}


def test_batchnorm_recalibration_averages_the_examples_statistics(maps_dir):
    from morphometry.segment.training.data import DataConfig, ExampleSource, load_maps, split_label_maps
    from morphometry.segment.training.train import RECALIBRATION_STREAM, recalibrate_batchnorm
    from morphometry.segment.training.unet_torch import UNet

    config = _config(maps_dir, recalibration_examples=3)
    train_paths, _ = split_label_maps(config.label_maps, config.held_out)
    source = ExampleSource(load_maps(train_paths, 2.0, config.brain_margin_mm), DataConfig("s1", 16, 2.0))
    model = UNet(config.spec())
    seen = []
    model.norms["bn_down_0"].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    recalibrate_batchnorm(model, source, config, torch.device("cpu"))
    # independently: the first batch norm's input does not depend on any normalisation statistics
    expected = [model.convs["conv_downarm_0_1"](model.convs["conv_downarm_0_0"](torch.from_numpy(
        source.example(np.random.default_rng([config.seed, RECALIBRATION_STREAM, i]))[0][None])))
        for i in range(3)]
    for got, want in zip(seen, expected):
        torch.testing.assert_close(got, want.detach())
    norm = model.norms["bn_down_0"]
    means = torch.stack([x.mean((0, 2, 3, 4)) for x in expected]).mean(0)
    variances = torch.stack([x.var((0, 2, 3, 4), unbiased=True) for x in expected]).mean(0)
    torch.testing.assert_close(norm.running_mean, means.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(norm.running_var, variances.detach(), rtol=1e-5, atol=1e-6)
    assert norm.momentum == model.norms["bn_up_0"].momentum == 0.01  # restored after recalibration


def test_init_starts_from_another_runs_weights(maps_dir, tmp_path):
    first = tmp_path / "first"
    train(_config(maps_dir), first)
    tuned = tmp_path / "tuned"
    train(_config(maps_dir, crop=32, steps=1, lr=0.0, init=str(first)), tuned)
    a, b = load_run(first).model.state_dict(), load_run(tuned).model.state_dict()
    for name in a:
        if "norms" not in name:  # lr 0 keeps the weights; the batch-norm statistics are recalibrated
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    card = load_run(tuned).card()["initialised_from"]
    assert card["run"] == str(first) and card["steps"] == 2 and card["crop"] == 16
    with pytest.raises(InputError, match="differs from this run's"):
        train(_config(maps_dir, width=4, init=str(first)), tmp_path / "wider")
    with pytest.raises(InputError, match="no checkpoint"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "config.json").write_text((first / "config.json").read_text())
        train(_config(maps_dir, init=str(tmp_path / "empty")), tmp_path / "x")


def test_init_from_a_bundle_takes_its_network_of_the_same_role(maps_dir, tmp_path):
    first = tmp_path / "first"
    train(_config(maps_dir), first)
    bundle = tmp_path / "bundle"
    export_bundle([first], bundle, "tiny-v1")
    tuned = tmp_path / "tuned"
    frozen = dict(steps=1, lr=0.0, bn_momentum=0.0, recalibration_examples=0)  # one step that changes nothing
    train(_config(maps_dir, init=str(bundle), **frozen), tuned)
    a, b = load_run(first).model.state_dict(), load_run(tuned).model.state_dict()
    for name in a:  # through ONNX and back: bit-exact, batch-norm statistics included
        if not name.endswith("num_batches_tracked"):
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    card = load_run(tuned).card()["initialised_from"]
    assert card["bundle"] == str(bundle) and card["model_id"] == "tiny-v1" and card["steps"] == 2
    assert card["sha256"] == load_bundle(bundle).networks["s1"].sha256 and card["crop"] == 16
    with pytest.raises(InputError, match="differs from this run's"):
        train(_config(maps_dir, width=4, init=str(bundle)), tmp_path / "wider")
    with pytest.raises(InputError, match="has no synthseg network"):
        train(_config(maps_dir, role="synthseg", init=str(bundle)), tmp_path / "other")
    with pytest.raises(InputError, match="works at 2 mm, this run at 3 mm"):
        train(_config(maps_dir, resolution_mm=3.0, init=str(bundle)), tmp_path / "coarse")
    (bundle / "s1.onnx").write_bytes(b"not a network")
    with pytest.raises(InputError, match="does not match its sha256"):
        train(_config(maps_dir, init=str(bundle)), tmp_path / "broken")
