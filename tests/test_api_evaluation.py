"""The evaluation API: a pair in a few lines, the same tables as ``morpho evaluate``, analytic values."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from morphometry.analysis.evaluation import EvaluationResult, evaluate
from morphometry.cli import main
from morphometry.errors import InputError
from morphometry.progress import configure_logging


def ball_map(shift_mm: float) -> np.ndarray:
    """Left (17) and right (53) hippocampus-like balls on a 1 mm 32^3 grid, shifted along x."""
    x, y, z = np.meshgrid(*[np.arange(32.0)] * 3, indexing="ij")
    data = np.zeros((32, 32, 32), dtype=np.int32)
    data[(x - 10 - shift_mm) ** 2 + (y - 16) ** 2 + (z - 16) ** 2 <= 36] = 17
    data[(x - 22 - shift_mm) ** 2 + (y - 16) ** 2 + (z - 16) ** 2 <= 36] = 53
    return data


def save(path: Path, data: np.ndarray, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.fixture
def study(tmp_path):
    """References s1..s4; predictions by synthseg+ (exact) and synthseg (shifted by 0..3 mm)."""
    for i, shift in enumerate((0.0, 1.0, 2.0, 3.0), start=1):
        save(tmp_path / "ref" / f"s{i}.nii.gz", ball_map(0.0))
        save(tmp_path / "seg" / f"s{i}_synthseg+.nii.gz", ball_map(0.0))
        save(tmp_path / "seg" / f"s{i}_synthseg.nii.gz", ball_map(shift))
    return tmp_path


def test_the_api_writes_what_the_cli_writes(study):
    assert main(["evaluate", "--pred", str(study / "seg"), "--reference", str(study / "ref"),
                 "-o", str(study / "cli"), "--no-figures"]) == 0
    result = evaluate(study / "seg", study / "ref", progress=False)
    assert isinstance(result, EvaluationResult) and result.ok
    for name in ("metrics", "scans", "summary", "comparisons"):
        pd.testing.assert_frame_equal(getattr(result, name), pd.read_parquet(study / "cli" / f"{name}.parquet"))
    result.write(study / "api")
    files = sorted(p.name for p in (study / "cli").iterdir())
    assert files == sorted(p.name for p in (study / "api").iterdir())
    for name in files:
        if name.endswith(".csv"):
            assert (study / "api" / name).read_text() == (study / "cli" / name).read_text()
    # synthseg against synthseg+ (the default reference method), per-scan mean Dice
    row = result.comparisons.set_index(["metric", "structure"]).loc[("dice", "mean_over_structures")]
    dice = result.scans.pivot(index="scan_id", columns="method", values="mean_dice")
    assert (row["method"], row["compared_to"], row["n_scans"]) == ("synthseg", "synthseg+", 4)
    assert row["median_difference"] == pytest.approx(np.median(dice["synthseg"] - dice["synthseg+"]))


def test_one_pair_from_files_and_from_images(study):
    pred, ref = study / "seg" / "s3_synthseg.nii.gz", study / "ref" / "s3.nii.gz"
    from_files = evaluate(pred, ref, progress=False)
    batch = evaluate(study / "seg", study / "ref", progress=False).metrics
    expected = batch[(batch["scan_id"] == "s3") & (batch["method"] == "synthseg")].reset_index(drop=True)
    pd.testing.assert_frame_equal(from_files.metrics, expected)
    assert from_files.comparisons.empty and from_files.unpaired.empty
    # in memory: the scan_id comes from the reference file's name, the method is "prediction"
    from_image = evaluate(nib.load(str(pred)), str(ref), progress=False).metrics
    assert set(from_image["scan_id"]) == {"s3"} and set(from_image["method"]) == {"prediction"}
    pd.testing.assert_frame_equal(from_image.drop(columns="method"), expected.drop(columns="method"))
    named = evaluate({"s3": nib.load(str(pred))}, {"s3": nib.load(str(ref))}, pred_method="mine", progress=False)
    assert named.metrics[["dice", "msd_mm"]].equals(expected[["dice", "msd_mm"]])
    assert set(named.metrics["method"]) == {"mine"}


def test_lists_dicts_and_dataframes(study):
    preds = sorted((study / "seg").glob("*_synthseg.nii.gz"))
    refs = sorted((study / "ref").glob("*.nii.gz"))
    by_list = evaluate(preds, refs, progress=False).metrics
    keyed = {(p.name.split("_")[0], "synthseg"): p for p in preds}
    by_dict = evaluate(keyed, {p.name.split(".")[0]: p for p in refs}, progress=False).metrics
    manifest = pd.DataFrame({"scan_id": [p.name.split("_")[0] for p in preds], "path": preds})
    by_frame = evaluate(manifest, refs, pred_method="synthseg", progress=False).metrics
    pd.testing.assert_frame_equal(by_list, by_dict)
    pd.testing.assert_frame_equal(by_list, by_frame)
    assert sorted(set(by_list["scan_id"])) == ["s1", "s2", "s3", "s4"]
    with pytest.raises(InputError, match="pred_method: .*plain.nii.gz: not named <scan_id>_<method>"):
        evaluate([save(study / "plain.nii.gz", ball_map(0.0))], refs)
    with pytest.raises(InputError, match=r"predictions: in-memory images need names"):
        evaluate([nib.load(str(preds[0]))], refs)


def cube(shape, lo, size) -> np.ndarray:
    data = np.zeros(shape, dtype=np.int16)
    data[lo[0]:lo[0] + size, lo[1]:lo[1] + size, lo[2]:lo[2] + size] = 17
    return data


def test_two_offset_cubes_give_the_analytic_dice_and_msd():
    """8-voxel cubes at 1.5 mm, the prediction shifted by 2 voxels along x.

    Dice = 2 * (6 * 8 * 8) / (2 * 512) = 0.75. Each boundary (the 296-voxel shell) is at the
    following distances (voxels) from the other one: the 64 voxels of the trailing x face at 2, the
    28 of the next ring at 1, the 5 rings of 28 inside the other cube's y/z faces at 0, and on the
    leading x face (inside the other cube) its ring of 28 at 0 and its 6 x 6 interior at
    min(2, distance to the nearest y/z face): 20 at 1, 16 at 2. Mean: (128 + 28 + 20 + 32) / 296
    voxels in both directions; HD95: more than 5 % of the distances are 2 voxels.
    """
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    pred = nib.Nifti1Image(cube((20, 16, 16), (6, 4, 4), 8), affine)
    ref = nib.Nifti1Image(cube((20, 16, 16), (4, 4, 4), 8), affine)
    for msd in ("mean_of_means", "pooled"):
        row = evaluate(pred, ref, msd=msd, progress=False).metrics.iloc[0]
        assert row["structure"] == "left_hippocampus" and row["dice"] == pytest.approx(0.75)
        assert row["msd_mm"] == pytest.approx(1.5 * 208 / 296)
        assert row["mean_pred_to_ref_mm"] == pytest.approx(row["mean_ref_to_pred_mm"])
        assert row["hd95_mm"] == pytest.approx(3.0)


def test_settings_are_named_and_the_cli_shows_their_flags(study, capsys):
    with pytest.raises(InputError, match="^grid: must be one of reference, prediction"):
        evaluate(study / "seg", study / "ref", grid="native")
    with pytest.raises(InputError, match="^correction: must be one of holm"):
        evaluate(study / "seg", study / "ref", correction="holmes")
    with pytest.raises(InputError, match="^qc_from: .*not both"):
        evaluate(study / "seg", study / "ref", qc=study / "qc.csv", qc_from="synthseg")
    args = ["evaluate", "--pred", str(study / "seg"), "--reference", str(study / "ref"), "-o", str(study / "e"),
            "--no-figures"]
    assert main(args + ["--compare-to", "s1+s2"]) == 2
    assert "error: --compare-to: method s1+s2 was not evaluated (found: synthseg+, synthseg)" in capsys.readouterr().err
    assert main(args + ["--labels", "hippo"]) == 2
    assert "error: --labels: unknown structure 'hippo'" in capsys.readouterr().err


def test_progress_lines_when_stderr_is_not_a_terminal(study, capsys):
    configure_logging(0)
    evaluate(study / "seg", study / "ref")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("evaluate: ")]
    assert lines and lines[-1].startswith("evaluate: 8/8 scan (100 %)")
    evaluate(study / "seg", study / "ref", progress=False)
    assert "evaluate: " not in capsys.readouterr().err
