"""``morpho demo --quick`` end to end with the shipped starter bundle (checks outputs, not timing)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from morphometry.cli import main
from morphometry.segment.bundle import load_bundle
from morphometry.segment.methods import supported_methods
from morphometry.segment.models import STARTER_BUNDLE as DEFAULT_BUNDLE


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "-o", str(out)]) == 0
    methods = set(supported_methods(set(load_bundle(DEFAULT_BUNDLE).networks)))
    volumes = pd.read_parquet(out / "segment" / "volumes.parquet")
    manifest = pd.read_csv(out / "cohort" / "manifest.csv")
    assert set(volumes["method"]) == methods
    assert set(volumes["scan_id"]) == set(manifest["scan_id"])
    scans = pd.read_parquet(out / "evaluation" / "scans.parquet")
    assert set(scans["method"]) == methods and scans["mean_dice"].between(0, 1).all()
    summary = pd.read_csv(out / "ageing" / "summary.csv")  # methods that found every fitted structure
    assert "truth" in set(summary["method"]) and set(summary["method"]) - {"truth"} <= methods
    assert len(set(summary["method"])) >= 2
    traj = pd.read_parquet(out / "ageing" / "trajectories.parquet")
    assert (traj.query("quantity == 'difference'")["reference_method"] == "truth").all()
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 6 and ">Ageing trajectories<" in page
    assert ">Normative centiles<" in page and ">Site effects (mm^3)<" in page
    known = json.loads((out / "norms" / "known_answer.json").read_text())
    assert known["reference_failures"]["flagged_in_some_structure"] >= 0.9 * known["reference_failures"]["planted"]
    sites = pd.DataFrame(known["site_offsets"]).query("structure == 'hippocampus'")
    assert (sites["fitted_offset_mm3"] - sites["planted_offset_mm3"]).abs().max() < 0.5 * sites["planted_offset_mm3"].abs().max()
    scores = pd.read_parquet(out / "norm_scores" / "scores.parquet")
    assert set(scores["scan_id"]) == set(manifest["scan_id"]) and set(scores["method"]) == {"measured"}
    assert "dashed: the planted truth" in page
    planted = pd.read_csv(out / "cohort" / "planted_trajectories.csv")
    assert {"hippocampus", "lateral_ventricle"} <= set(planted["structure"])
    assert json.loads((out / "segment" / "provenance.json").read_text())["bundle"]["model_id"]
