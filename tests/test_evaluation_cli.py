"""``morpho evaluate`` end to end on small synthetic label maps."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from morphometry.cli import main


def ball_map(shift_mm: float, extra_label: bool = False) -> np.ndarray:
    """Left (17) and right (53) hippocampus-like balls on a 1 mm 32^3 grid, shifted along x."""
    x, y, z = np.meshgrid(*[np.arange(32.0)] * 3, indexing="ij")
    data = np.zeros((32, 32, 32), dtype=np.int32)
    data[(x - 10 - shift_mm) ** 2 + (y - 16) ** 2 + (z - 16) ** 2 <= 36] = 17
    data[(x - 22 - shift_mm) ** 2 + (y - 16) ** 2 + (z - 16) ** 2 <= 36] = 53
    if extra_label:
        data[1:3, 1:3, 1:3] = 77
    return data


def save(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


@pytest.fixture
def study(tmp_path):
    """References s1..s4; predictions of s1..s3 by two methods and of s5 (no reference)."""
    for i in range(1, 5):
        save(tmp_path / "ref" / f"s{i}.nii.gz", ball_map(0.0, extra_label=(i == 1)))
    shifts = {"s1": 0.0, "s2": 1.0, "s3": 3.0}
    for scan_id, shift in shifts.items():
        save(tmp_path / "out" / "seg" / f"{scan_id}_synthseg+.nii.gz", ball_map(0.0))
        save(tmp_path / "out" / "seg" / f"{scan_id}_synthseg.nii.gz", ball_map(shift))
    save(tmp_path / "out" / "seg" / "s5_synthseg+.nii.gz", ball_map(0.0))
    return tmp_path


def test_evaluate_writes_metrics_summary_and_figures(study, capsys):
    out = study / "eval"
    rc = main(["evaluate", "--pred", str(study / "out"), "--reference", str(study / "ref"), "-o", str(out),
               "--labels", "present", "--qc-from", "synthseg", "--qc-thresholds", "0.5", "0.9"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "1 prediction(s) without a reference (e.g. s5)" in err
    assert "1 reference(s) without a prediction (e.g. s4)" in err
    assert "2 structure(s) missing in prediction" in err  # label 77 of s1, for both methods
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert {"scan_id", "method", "structure", "dice", "msd_mm", "hd95_mm", "qc_group"} <= set(metrics.columns)
    exact = metrics[metrics["method"] == "synthseg+"].set_index(["scan_id", "structure"])
    assert np.allclose(exact.loc[[("s2", "left_hippocampus"), ("s3", "right_hippocampus")], "dice"], 1.0)
    assert np.allclose(exact.loc[("s2", "left_hippocampus"), ["msd_mm", "hd95_mm"]].to_numpy(float), 0.0)
    # label 77 is only in the reference of s1: reported by value, missing in the prediction
    extra = metrics[(metrics["structure"] == "label_77")]
    assert set(extra["status"]) == {"missing_in_prediction"} and set(extra["dice"]) == {0.0}
    # a ball shifted by 1 mm along x: identical boundaries moved by exactly one voxel
    shifted = metrics[(metrics["scan_id"] == "s2") & (metrics["method"] == "synthseg")]
    assert np.allclose(shifted["hd95_mm"], 1.0)
    scans = pd.read_csv(out / "scans.csv")
    groups = scans[scans["method"] == "synthseg"].set_index("scan_id")["qc_group"].to_dict()
    mean_dice = scans[scans["method"] == "synthseg"].set_index("scan_id")["mean_dice"]
    assert mean_dice["s1"] == pytest.approx(2 / 3)  # label 77 counts as a miss: (1 + 1 + 0) / 3
    assert groups == {s: ("big_fail" if d < 0.5 else "small_fail" if d < 0.9 else "pass")
                      for s, d in mean_dice.items()}
    summary = pd.read_csv(out / "summary.csv")
    for (method, group), rows in metrics.groupby(["method", "qc_group"]):
        row = summary[(summary["method"] == method) & (summary["qc_group"] == group)
                      & (summary["structure"] == "left_hippocampus")].iloc[0]
        values = rows.loc[rows["structure"] == "left_hippocampus", "dice"]
        assert row["dice_median"] == pytest.approx(values.median())
        assert row["n_scans"] == len(values)
    meta = json.loads(pq.read_schema(out / "metrics.parquet").metadata[b"morphometry"])
    assert meta["msd"] == "mean_of_means" and "6-connected" in meta["definitions"]["boundary"]
    assert meta["qc_groups"].startswith("mean Dice of synthseg")
    assert (out / "figures" / "fig5_dice_msd.png").stat().st_size > 0
    assert (out / "figures" / "fig5_dice_msd.pdf").stat().st_size > 0
    unpaired = pd.read_csv(out / "unpaired.csv")
    assert set(unpaired["scan_id"]) == {"s4", "s5"}


def test_pooled_msd_parallel_jobs_and_qc_table(study):
    (study / "qc.csv").write_text("scan_id,qc_group\ns1,pass\ns2,pass\n")
    out1, out2 = study / "e1", study / "e2"
    args = ["evaluate", "--pred", str(study / "out"), "--reference", str(study / "ref"), "--msd", "pooled",
            "--qc", str(study / "qc.csv"), "--no-figures"]
    assert main(args + ["-o", str(out1)]) == 0
    assert main(args + ["-o", str(out2), "--jobs", "2"]) == 0
    m1 = pd.read_csv(out1 / "metrics.csv").sort_values(["scan_id", "method", "structure"]).reset_index(drop=True)
    m2 = pd.read_csv(out2 / "metrics.csv").sort_values(["scan_id", "method", "structure"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(m1, m2)
    assert set(m1["structure"]) == {"left_hippocampus", "right_hippocampus"}  # default: SynthSeg structures
    assert dict(zip(m1["scan_id"], m1["qc_group"])) == {"s1": "pass", "s2": "pass", "s3": "unassigned"}
    assert not (out1 / "figures").exists()


def test_failures_are_recorded_and_the_rest_finishes(study, capsys):
    (study / "out" / "seg" / "s3_synthseg+.nii.gz").write_bytes(b"broken")
    out = study / "eval"
    rc = main(["evaluate", "--pred", str(study / "out"), "--reference", str(study / "ref"), "-o", str(out),
               "--no-figures"])
    assert rc == 1
    failures = pd.read_csv(out / "failures.csv")
    assert failures[["scan_id", "method"]].values.tolist() == [["s3", "synthseg+"]]
    assert "not a readable label map" in failures["error"].iloc[0]
    assert len(pd.read_csv(out / "scans.csv")) == 5
    assert "failed: s3 synthseg+" in capsys.readouterr().err


def test_no_common_scan_ids_is_one_clear_error(study, tmp_path, capsys):
    save(tmp_path / "other" / "x1.nii.gz", ball_map(0.0))
    rc = main(["evaluate", "--pred", str(study / "out"), "--reference", str(tmp_path / "other"),
               "-o", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert rc == 2 and "no scan_id in common" in err and "x1" in err
    assert len(err.strip().splitlines()) == 1
