"""The report API: ``report(...)`` from DataFrames and results objects equals ``morpho report`` on files."""

from __future__ import annotations

import re
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from morphometry.cli import main
from morphometry.errors import InputError
from morphometry.labels import STRUCTURES
from morphometry.reports.report import report
from morphometry.tables import write_volumes

FIT = dict(structures=("hippocampus", "lateral_ventricle"), bootstrap=10, seed=3)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Volumes of two methods for 50 scans, their covariates, and a per-scan evaluation table,
    both as DataFrames and as the files the commands write."""
    root = tmp_path_factory.mktemp("api_report")
    rng = np.random.default_rng(8)
    n = 50
    ages = rng.uniform(20, 90, n)
    rows = []
    for method, noise in (("synthseg+", 0.02), ("synthseg", 0.05)):
        for i, age in enumerate(ages):
            spacing = [1.0, 1.0, 1.0]
            spacing[i % 3] = 1.0 + (i * 5 % 7)
            row = {"scan_id": f"s{i:02d}", "subject_id": f"p{i:02d}", "session_id": "ses-1", "path": f"s{i}.nii.gz",
                   "method": method, "model_id": "test", "spacing_x_mm": spacing[0], "spacing_y_mm": spacing[1],
                   "spacing_z_mm": spacing[2], "slice_spacing_mm": max(spacing),
                   "slice_axis": ("sagittal", "coronal", "axial")[i % 3], "shape_x": 200, "shape_y": 200,
                   "shape_z": 60}
            shrink = 1 - 0.004 * max(age - 40, 0)
            for s in STRUCTURES:
                grow = 1 / shrink if "ventricle" in s else shrink
                row[s] = (4000.0 if "hippocampus" in s else 20000.0) * grow * (1 + noise * rng.normal())
            row["total_intracranial"] = sum(row[s] for s in STRUCTURES)
            rows.append(row)
    volumes = pd.DataFrame(rows)
    write_volumes(volumes, root / "seg")
    covariates = pd.DataFrame({"scan_id": [f"s{i:02d}" for i in range(n)], "age": ages,
                               "sex": rng.choice(["F", "M"], n)})
    covariates.to_csv(root / "cov.csv", index=False)
    scans = pd.DataFrame({"scan_id": np.repeat([f"s{i:02d}" for i in range(10)], 2),
                          "method": ["synthseg+", "synthseg"] * 10,
                          "qc_group": np.repeat(["pass", "small_fail"], 10),
                          "mean_dice": rng.uniform(0.5, 0.9, 20), "mean_msd_mm": rng.uniform(0.5, 3, 20)})
    (root / "evaluation").mkdir()
    scans.to_parquet(root / "evaluation" / "scans.parquet")
    return root, volumes, covariates, scans


@dataclass(frozen=True)
class ScansOnly:
    """An evaluation result as the report reads it: a ``scans`` table and ``metadata()``."""

    scans: pd.DataFrame

    def metadata(self) -> dict:
        return {}


@dataclass(frozen=True)
class WritesOnly:
    """A result that can only write its output folder."""

    scans: None
    table: pd.DataFrame

    def write(self, out_dir) -> None:
        out_dir.mkdir(parents=True)
        self.table.to_parquet(out_dir / "scans.parquet")


def _tables(page: str) -> list[str]:
    return re.findall(r"<table.*?</table>", page, flags=re.S)


def _rows(table: str) -> list[str]:
    return re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1], flags=re.S)


def _cells(row: str) -> list[str]:
    return re.findall(r"<td>(.*?)</td>", row)


def _headings(page: str) -> list[str]:
    return re.findall(r"<h[23]>(.*?)</h[23]>", page)


def test_report_from_results_objects_equals_the_cli_on_files(cohort, tmp_path):
    from morphometry.analysis.ageing_api import fit_ageing

    root, volumes, covariates, scans = cohort
    fit = fit_ageing(volumes, covariates, **FIT)
    api = report(tmp_path / "api.html", volumes=volumes, covariates=covariates, ageing=fit,
                 evaluation=ScansOnly(scans), title="study")
    assert api == tmp_path / "api.html"

    assert main(["fit-ageing", str(root / "seg" / "volumes.parquet"), "--covariates", str(root / "cov.csv"),
                 "-o", str(tmp_path / "ageing"), "--structures", *FIT["structures"], "--bootstrap",
                 str(FIT["bootstrap"]), "--seed", str(FIT["seed"]), "--no-figures"]) == 0
    cli = tmp_path / "cli" / "report.html"
    assert main(["report", "-o", str(cli), "--volumes", str(root / "seg" / "volumes.parquet"), "--covariates",
                 str(root / "cov.csv"), "--ageing", str(tmp_path / "ageing"), "--evaluation",
                 str(root / "evaluation"), "--title", "study"]) == 0

    a, b = api.read_text(), cli.read_text()
    assert _headings(a) == _headings(b) == ["Cohort", "Segmentation", "Evaluation against silver standards",
                                            "Ageing trajectories", "Annual % change", "Outliers per method",
                                            "Provenance"]
    assert len(_tables(a)) == 4 and _tables(a) == _tables(b)  # segmentation, evaluation, change, outliers
    names = sorted(p.name for p in (tmp_path / "api_figures").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "cli" / "report_figures").iterdir())
    for name in ("fig6_trajectories.png", "fig_s3_cohort.png", "fig5_dice_msd.png"):  # drawn from equal tables
        assert (tmp_path / "api_figures" / name).read_bytes() == (tmp_path / "cli" / "report_figures" / name).read_bytes()
    assert "DataFrame (100 rows x" in a and "AgeingFit" in a  # the provenance says how inputs were given
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the scratch folder is gone


def test_a_result_is_written_and_read_back_when_it_only_writes(cohort, tmp_path):
    root, volumes, covariates, scans = cohort
    page = report(tmp_path / "r.html", evaluation=WritesOnly(None, scans)).read_text()
    expected = scans.groupby(["qc_group", "method"], sort=False)["mean_dice"].median()
    shown = [float(_cells(row)[3]) for row in _rows(_tables(page)[0])]  # qc_group, method, scans, median_dice
    np.testing.assert_allclose(shown, expected.to_numpy(), rtol=5e-3)  # the table shows 3 significant digits
    assert (tmp_path / "r_figures" / "fig5_dice_msd.png").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_report_of_a_real_evaluation_result(tmp_path):
    from morphometry.analysis.evaluation import evaluate

    truth = np.zeros((20, 20, 20), dtype=np.int32)
    truth[5:15, 5:15, 5:15] = 17  # left hippocampus, a 10-voxel cube
    pred = np.roll(truth, 1, axis=0)  # shifted by one voxel: Dice 9/10
    affine = np.eye(4)
    result = evaluate(nib.Nifti1Image(pred, affine), nib.Nifti1Image(truth, affine), labels=("left_hippocampus",),
                      progress=False)
    page = report(tmp_path / "e.html", evaluation=result).read_text()
    assert ">Evaluation against silver standards<" in page
    (row,) = _rows(_tables(page)[0])
    assert _cells(row)[2:4] == ["1", "0.9"]  # one scan, its Dice


def test_report_api_errors_name_the_argument(cohort, tmp_path):
    root, volumes, covariates, scans = cohort
    with pytest.raises(InputError, match="nothing to report"):
        report(tmp_path / "r.html")
    with pytest.raises(InputError) as err:
        report(tmp_path / "r.html", ageing=42)
    assert err.value.setting == "ageing"
    with pytest.raises(InputError) as err:
        report(tmp_path / "r.html", volumes=volumes.drop(columns=["left_hippocampus"]))
    assert err.value.setting == "volumes" and "left_hippocampus" in str(err.value)
    with pytest.raises(InputError) as err:
        report(tmp_path / "r.html", evaluation=root / "seg")
    assert err.value.setting == "evaluation" and "no scans.parquet" in str(err.value)
    with pytest.raises(InputError) as err:
        report(tmp_path / "r.html", volumes=volumes, planted=pd.DataFrame({"structure": ["x"]}))
    assert err.value.setting == "planted" and "age_years, volume_mm3" in str(err.value)
    with pytest.raises(InputError) as err:
        report(tmp_path / "r.html", volumes=volumes, covariates=tmp_path / "none.csv")
    assert err.value.setting == "covariates" and "file not found" in str(err.value)
