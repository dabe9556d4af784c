"""``morpho report``: sections from morphometry.segment / evaluate / fit-ageing outputs, and a real browser check."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from morphometry.cli import main
from morphometry.labels import STRUCTURES
from morphometry.tables import write_volumes

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="module")
def report_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(4)
    n = 60
    ages = rng.uniform(20, 90, n)
    rows = []
    for method, noise in (("synthseg+", 0.02), ("synthseg", 0.06)):
        for i, age in enumerate(ages):
            row = {"scan_id": f"s{i:03d}", "subject_id": f"p{i:03d}", "session_id": "ses-1", "path": f"s{i}.nii.gz",
                   "method": method, "model_id": "test", "shape_x": 256, "shape_y": 256, "shape_z": 40}
            spacing = [1.0, 1.0, 1.0]
            axis = i % 3
            spacing[axis] = 1.0 + (i * 7 % 8)
            row.update(spacing_x_mm=spacing[0], spacing_y_mm=spacing[1], spacing_z_mm=spacing[2],
                       slice_spacing_mm=max(spacing), slice_axis=("sagittal", "coronal", "axial")[axis])
            shrink = 1 - 0.004 * max(age - 40, 0)
            for s in STRUCTURES:
                base = 4000.0 if "hippocampus" in s else 20000.0
                grow = 1 / shrink if "ventricle" in s else shrink
                row[s] = base * grow * (1 + noise * rng.normal())
            row["total_intracranial"] = sum(row[s] for s in STRUCTURES)
            rows.append(row)
    seg = root / "seg"
    write_volumes(pd.DataFrame(rows), seg)
    pd.DataFrame({"scan_id": ["bad"], "path": ["bad.nii"], "stage": ["load"], "error": ["bad.nii: truncated"]}) \
        .to_csv(seg / "failures.csv", index=False)
    cov = root / "cov.csv"
    pd.DataFrame({"scan_id": [f"s{i:03d}" for i in range(n)], "age": ages, "sex": rng.choice(["F", "M"], n)}) \
        .to_csv(cov, index=False)
    ageing = root / "ageing"
    assert main(["fit-ageing", str(seg / "volumes.parquet"), "--covariates", str(cov), "-o", str(ageing),
                 "--structures", "hippocampus", "lateral_ventricle", "--bootstrap", "20", "--no-figures"]) == 0
    evaluation = root / "evaluation"
    evaluation.mkdir()
    scans = pd.DataFrame({"scan_id": np.repeat([f"s{i:03d}" for i in range(12)], 2),
                          "method": ["synthseg+", "synthseg"] * 12,
                          "qc_group": np.repeat(["pass", "small_fail", "big_fail"], 8),
                          "mean_dice": rng.uniform(0.5, 0.9, 24), "mean_msd_mm": rng.uniform(0.5, 3, 24)})
    scans.to_parquet(evaluation / "scans.parquet")
    return root, seg, cov, ageing, evaluation


def test_report_has_every_section_and_figure_files(report_inputs):
    root, seg, cov, ageing, evaluation = report_inputs
    out = root / "report.html"
    assert main(["report", "-o", str(out), "--volumes", str(seg / "volumes.parquet"), "--covariates", str(cov),
                 "--ageing", str(ageing), "--evaluation", str(evaluation)]) == 0
    page = out.read_text()
    for heading in ("Cohort", "Segmentation", "Evaluation against silver standards", "Ageing trajectories",
                    "Annual % change", "Outliers per method", "Provenance"):
        assert f">{heading}<" in page
    assert "1 scan(s) failed." in page and "bad.nii: truncated" in page
    images = re.findall(r'<img [^>]*src="data:image/png;base64,', page)
    assert len(images) == 4  # S3, Fig. 5, Fig. 6, S5
    assert "http://" not in page and "https://" not in page  # opens offline
    figures = sorted(p.name for p in (root / "report_figures").iterdir())
    assert figures == ["fig5_dice_msd.pdf", "fig5_dice_msd.png", "fig6_trajectories.pdf", "fig6_trajectories.png",
                       "fig_s3_cohort.pdf", "fig_s3_cohort.png", "fig_s5_synthsegplus.pdf", "fig_s5_synthsegplus.png"]


def test_report_draws_planted_curves_and_rejects_bad_ones(report_inputs, tmp_path, capsys):
    root, seg, cov, ageing, evaluation = report_inputs
    planted = tmp_path / "planted.csv"
    ages = np.arange(20.0, 90.5, 0.5)
    pd.DataFrame({"structure": "hippocampus", "age_years": ages, "volume_mm3": 8000.0}).to_csv(planted, index=False)
    out = tmp_path / "p.html"
    assert main(["report", "-o", str(out), "--ageing", str(ageing), "--planted", str(planted)]) == 0
    assert "dashed: the planted truth" in out.read_text()
    pd.DataFrame({"structure": ["hippocampus"], "age": [20.0]}).to_csv(planted, index=False)
    assert main(["report", "-o", str(out), "--ageing", str(ageing), "--planted", str(planted)]) == 2
    assert f"{planted}: planted curves need the column(s) age_years, volume_mm3" in capsys.readouterr().err
    pd.DataFrame({"structure": ["hippocampus"] * 2, "age_years": [20.0, 21.0], "volume_mm3": ["1", "x"]}) \
        .to_csv(planted, index=False)
    assert main(["report", "-o", str(out), "--ageing", str(ageing), "--planted", str(planted)]) == 2
    assert "column volume_mm3 has a missing or non-numeric value in row 3" in capsys.readouterr().err
    assert main(["report", "-o", str(out), "--ageing", str(ageing), "--planted", str(tmp_path / "none.csv")]) == 2
    assert "none.csv: file not found" in capsys.readouterr().err


def test_report_errors(report_inputs, tmp_path, capsys):
    root, seg, cov, ageing, evaluation = report_inputs
    assert main(["report", "-o", str(tmp_path / "r.html")]) == 2
    assert "nothing to report" in capsys.readouterr().err
    assert main(["report", "-o", str(tmp_path / "r.html"), "--ageing", str(evaluation)]) == 2
    assert "no trajectories.parquet" in capsys.readouterr().err
    assert main(["report", "-o", str(tmp_path / "r.html"), "--ageing", str(ageing), "--structures", "amygdala"]) == 2
    assert "structures not in the ageing fit: amygdala" in capsys.readouterr().err


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1200,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(service=Service(driver_path), options=options)


def test_report_in_headless_chromium(report_inputs):
    root, seg, cov, ageing, evaluation = report_inputs
    out = root / "browser.html"
    main(["report", "-o", str(out), "--volumes", str(seg / "volumes.parquet"), "--covariates", str(cov),
          "--ageing", str(ageing), "--evaluation", str(evaluation)])
    driver = _browser()
    try:
        driver.get(out.resolve().as_uri())
        sizes = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight, "
            "i.getBoundingClientRect().width, i.getBoundingClientRect().height]);")
        assert len(sizes) == 4
        for complete, nw, nh, w, h in sizes:
            assert complete and nw > 0 and nh > 0 and w > 0 and h > 0
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        ARTIFACTS.mkdir(exist_ok=True)
        driver.set_window_size(1200, 3000)
        assert driver.save_screenshot(str(ARTIFACTS / "report.png"))
    finally:
        driver.quit()


def test_cohort_figure_stacks_the_scans_of_each_bin():
    from matplotlib.colors import to_hex

    from morphometry.reports.cohort_figures import AXIS_COLOURS, SEX_COLOURS, cohort_figure

    rng = np.random.default_rng(5)
    n = 90
    scans = pd.DataFrame({"age": rng.uniform(20, 90, n), "sex": rng.choice(["F", "M", "?"], n),
                          "slice_spacing_mm": rng.choice([1.0, 3.0, 5.5, 7.0], n),
                          "slice_axis": rng.choice(["axial", "coronal", "sagittal"], n)})
    ages_ax, spacing_ax = cohort_figure(scans).axes
    for ax, values, bins, colours in (
            (ages_ax, scans["age"], np.arange(20, 95, 5), SEX_COLOURS),
            (spacing_ax, scans["slice_spacing_mm"], np.arange(0.5, 10.0, 0.5), AXIS_COLOURS)):
        heights: dict[float, float] = {}
        for bar in ax.patches:
            heights[round(bar.get_x(), 6)] = heights.get(round(bar.get_x(), 6), 0.0) + bar.get_height()
            assert to_hex(bar.get_facecolor()) in colours.values()
        counts, _ = np.histogram(values, bins)
        assert [heights.get(round(b, 6), 0.0) for b in bins[:-1]] == counts.tolist()
