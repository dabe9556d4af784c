"""Resampling between grids by the affines (nearest neighbour) and evaluation across grids."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from morphometry.analysis.evaluation import EvaluationConfig, evaluate_pair
from morphometry.analysis.evaluation_inputs import Prediction, Reference
from morphometry.analysis.label_maps import LabelImage, load_labels, on_common_grid, resample_nearest
from morphometry.errors import DataError


def save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.int32), affine), str(path))
    return path


def ball(shape, affine, centre_mm, radius_mm, value) -> np.ndarray:
    """Label ``value`` where the voxel centre (world mm) lies within the ball."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    return np.where(np.linalg.norm(world - centre_mm, axis=-1) <= radius_mm, value, 0).astype(np.int32)


def test_resample_identity_subsample_and_flip():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 5, size=(12, 10, 8)).astype(np.int32)
    source = LabelImage(Path("src.nii.gz"), data, np.eye(4))
    assert np.array_equal(resample_nearest(source, data.shape, np.eye(4)), data)
    # a 2 mm grid whose centres sit 0.3 mm past every other source centre: nearest = data[::2]
    coarse = np.diag([2.0, 2.0, 2.0, 1.0])
    coarse[:3, 3] = 0.3
    assert np.array_equal(resample_nearest(source, (6, 5, 4), coarse), data[::2, ::2, ::2])
    # the same world content stored with the first axis reversed
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])
    flipped[0, 3] = 11.0
    assert np.array_equal(resample_nearest(source, data.shape, flipped), data[::-1])
    # outside the source's field of view: background
    shifted = np.eye(4)
    shifted[0, 3] = 100.0
    assert not resample_nearest(source, data.shape, shifted).any()


def test_evaluation_on_either_grid(tmp_path):
    centre = np.array([20.2, 19.7, 20.4])
    fine = np.eye(4)
    thick = np.diag([1.0, 1.0, 4.0, 1.0])
    thick[2, 3] = 0.5
    pred_path = save(tmp_path / "s1_synthseg+.nii.gz", ball((40, 40, 40), fine, centre, 12.0, 17), fine)
    ref_path = save(tmp_path / "s1.nii.gz", ball((40, 40, 10), thick, centre, 12.0, 17), thick)
    pred, ref = Prediction("s1", "synthseg+", pred_path), Reference("s1", ref_path)
    for grid, resampled, spacing in (("reference", "prediction", (1.0, 1.0, 4.0)), ("prediction", "reference", (1.0,) * 3)):
        table = evaluate_pair(pred, ref, EvaluationConfig(grid=grid, labels=(17,)))
        row = table.iloc[0]
        assert row["structure"] == "left_hippocampus" and row["resampled"] == resampled
        # same ball on both grids: the only differences come from the 4 mm sampling
        assert row["dice"] > 0.9 and row["msd_mm"] < max(spacing) and row["status"] == "ok"
    a, b, spacing, _ = on_common_grid(load_labels(pred_path), load_labels(ref_path), "reference")
    assert a.shape == b.shape == (40, 40, 10) and spacing == pytest.approx((1.0, 1.0, 4.0))


def test_grids_that_do_not_overlap_are_reported(tmp_path):
    far = np.eye(4)
    far[:3, 3] = 500.0
    pred_path = save(tmp_path / "s1_synthseg.nii.gz", ball((20, 20, 20), np.eye(4), (10, 10, 10), 5, 2), np.eye(4))
    ref_path = save(tmp_path / "s1.nii.gz", ball((20, 20, 20), np.eye(4), (10, 10, 10), 5, 2), far)
    with pytest.raises(DataError, match="do not overlap"):
        evaluate_pair(Prediction("s1", "synthseg", pred_path), Reference("s1", ref_path), EvaluationConfig())


def test_cli_notes_pairs_on_different_grids(tmp_path, capsys):
    from morphometry.cli import main

    thick = np.diag([1.0, 1.0, 4.0, 1.0])
    centre = (16.2, 15.7, 16.4)
    (tmp_path / "pred").mkdir()
    (tmp_path / "ref").mkdir()
    save(tmp_path / "pred" / "s1_synthseg+.nii.gz", ball((32, 32, 32), np.eye(4), centre, 8.0, 17), np.eye(4))
    save(tmp_path / "ref" / "s1.nii.gz", ball((32, 32, 8), thick, centre, 8.0, 17), thick)
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--reference", str(tmp_path / "ref"),
                 "-o", str(tmp_path / "e"), "--grid", "prediction", "--no-figures"]) == 0
    assert "1 pair(s) on different grids: the reference was resampled onto the prediction grid" in \
        capsys.readouterr().err
