"""Finding, pairing and reading inputs of ``morpho evaluate``; each bad input gives a clear error."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from morphometry.analysis import evaluation as ev
from morphometry.analysis import evaluation_inputs as inputs
from morphometry.analysis import label_maps, qc_groups
from morphometry.errors import DataError, InputError
from morphometry.progress import configure_logging


def save(path: Path, data, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


def labels(value=2) -> np.ndarray:
    data = np.zeros((8, 8, 8), dtype=np.int32)
    data[2:6, 2:6, 2:6] = value
    return data


@pytest.mark.parametrize("name,expected", [
    ("sub_01_ses_1_synthseg+.nii.gz", ("sub_01_ses_1", "synthseg+")),
    ("a_s1+s2+d.mgz", ("a", "s1+s2+d")),
    ("x_synthseg+d.nii", ("x", "synthseg+d")),
    ("scan_synthseg.nii.gz", ("scan", "synthseg")),
    ("plain.nii.gz", None),
    ("_synthseg.nii.gz", None),
    ("scan_other.nii.gz", None),
])
def test_parse_prediction_name(name, expected):
    assert inputs.parse_prediction_name(name) == expected


def test_predictions_from_segment_output_folder(tmp_path, capsys):
    configure_logging(0)  # warnings to this test's stderr
    for name in ("s_1_synthseg+.nii.gz", "s_1_s1+s2.nii.gz", "s2_synthseg+.nii.gz", "notes.nii.gz"):
        save(tmp_path / "out" / "seg" / name, labels())
    (tmp_path / "out" / "volumes.csv").write_text("scan_id\n")
    preds = inputs.find_predictions(tmp_path / "out")
    assert sorted((p.scan_id, p.method) for p in preds) == [("s2", "synthseg+"), ("s_1", "s1+s2"), ("s_1", "synthseg+")]
    assert "skipped 1 file(s)" in capsys.readouterr().err


def test_prediction_folder_without_methods(tmp_path):
    save(tmp_path / "p" / "s1.nii.gz", labels())
    with pytest.raises(InputError, match="pred_method: "):
        inputs.find_predictions(tmp_path / "p")
    preds = inputs.find_predictions(tmp_path / "p", method="mytool")
    assert [(p.scan_id, p.method) for p in preds] == [("s1", "mytool")]


def test_manifests_resolve_relative_paths_and_check_columns(tmp_path):
    save(tmp_path / "maps" / "a.nii.gz", labels())
    (tmp_path / "pred.csv").write_text("scan_id,path,method\na,maps/a.nii.gz,synthseg\n")
    (tmp_path / "ref.csv").write_text("scan_id,path\na,maps/a.nii.gz\n")
    (tmp_path / "bad.csv").write_text("scan,path\na,maps/a.nii.gz\n")
    (tmp_path / "dup.csv").write_text("scan_id,path\na,x.nii.gz\na,y.nii.gz\n")
    (tmp_path / "blank.csv").write_text("scan_id,path\na,\n")
    pred = inputs.find_predictions(tmp_path / "pred.csv")[0]
    assert pred.path == tmp_path / "maps" / "a.nii.gz" and pred.method == "synthseg"
    assert inputs.find_references(tmp_path / "ref.csv")[0].path.is_file()
    with pytest.raises(InputError, match=r"bad.csv: manifest lacks column\(s\) scan_id"):
        inputs.find_references(tmp_path / "bad.csv")
    with pytest.raises(InputError, match="dup.csv: two entries for a"):
        inputs.find_references(tmp_path / "dup.csv")
    with pytest.raises(InputError, match="blank.csv: empty"):
        inputs.find_references(tmp_path / "blank.csv")
    with pytest.raises(InputError, match=r"ref.csv: manifest lacks column\(s\) method"):
        inputs.find_predictions(tmp_path / "ref.csv")


def test_reference_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no label maps"):
        inputs.find_references(tmp_path / "empty")
    with pytest.raises(InputError, match="not found"):
        inputs.find_references(tmp_path / "missing")
    save(tmp_path / "twice" / "a.nii.gz", labels())
    save(tmp_path / "twice" / "a.nii", labels())
    with pytest.raises(InputError, match="two entries for a"):
        inputs.find_references(tmp_path / "twice")


def test_pairing_reports_mismatched_scan_ids():
    preds = [inputs.Prediction("a", "synthseg", Path("a.nii.gz")), inputs.Prediction("b", "synthseg", Path("b.nii.gz"))]
    refs = [inputs.Reference("a", Path("ra.nii.gz")), inputs.Reference("c", Path("rc.nii.gz"))]
    pairing = inputs.pair_by_scan_id(preds, refs)
    assert [(p.scan_id, r.scan_id) for p, r in pairing.pairs] == [("a", "a")]
    unpaired = pairing.unpaired_table()
    assert set(zip(unpaired["scan_id"], unpaired["side"])) == {("b", "prediction"), ("c", "reference")}
    with pytest.raises(DataError, match="no scan_id in common between P .*e.g. b.* and R .*e.g. c"):
        inputs.pair_by_scan_id(preds[1:], refs[1:], "P", "R")


def test_label_map_errors(tmp_path):
    with pytest.raises(InputError, match="missing.nii.gz: label map not found"):
        label_maps.load_labels(tmp_path / "missing.nii.gz")
    (tmp_path / "table.csv").write_text("x\n")
    with pytest.raises(InputError, match="not an image file"):
        label_maps.load_labels(tmp_path / "table.csv")
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image")
    with pytest.raises(InputError, match="junk.nii.gz: not a readable label map"):
        label_maps.load_labels(tmp_path / "junk.nii.gz")
    with pytest.raises(DataError, match="non-integer values"):
        label_maps.load_labels(save(tmp_path / "t1.nii.gz", labels().astype(np.float32) * 0.37))
    with pytest.raises(DataError, match="label values must lie in 0..65535"):
        label_maps.load_labels(save(tmp_path / "neg.nii.gz", labels(-3)))
    with pytest.raises(InputError, match="3-D label map is required"):
        label_maps.load_labels(save(tmp_path / "flat.nii.gz", np.zeros((8, 8), dtype=np.int32)))
    image = label_maps.load_labels(save(tmp_path / "float.nii.gz", labels(17).astype(np.float32)))
    assert image.data.dtype == np.int32 and set(np.unique(image.data)) == {0, 17}


def test_label_selection():
    assert ev.parse_label_selection(None) == "synthseg"
    assert ev.parse_label_selection(["present"]) == "present"
    assert ev.parse_label_selection(["17", "left_hippocampus", "53"]) == (17, 53)
    with pytest.raises(InputError, match="unknown structure 'hippo'"):
        ev.parse_label_selection(["hippo"])
    with pytest.raises(InputError, match="background"):
        ev.parse_label_selection(["0"])
    assert len(ev.SYNTHSEG_VALUES) == 32 and 0 not in ev.SYNTHSEG_VALUES
    assert ev.structure_name(17) == "left_hippocampus"
    assert ev.structure_name(1035) == "ctx_lh_insula"
    assert ev.structure_name(77) == "label_77"


def test_qc_table_and_rule(tmp_path):
    (tmp_path / "qc.csv").write_text("scan_id,group\na,pass\nb,big_fail\n")
    (tmp_path / "noid.csv").write_text("id,group\na,pass\n")
    (tmp_path / "dup.csv").write_text("scan_id,qc_group\na,pass\na,pass\n")
    qc = qc_groups.read_qc_table(tmp_path / "qc.csv")
    assert list(qc.columns) == ["scan_id", "qc_group"] and qc["qc_group"].tolist() == ["pass", "big_fail"]
    with pytest.raises(InputError, match="noid.csv: QC table needs columns scan_id and qc_group"):
        qc_groups.read_qc_table(tmp_path / "noid.csv")
    with pytest.raises(InputError, match="dup.csv: several rows for scan_id a"):
        qc_groups.read_qc_table(tmp_path / "dup.csv")
    with pytest.raises(InputError, match="QC table not found"):
        qc_groups.read_qc_table(tmp_path / "none.csv")
    with pytest.raises(InputError, match="qc_thresholds: must satisfy"):
        qc_groups.QcRule("synthseg", 0.9, 0.8)
    scans = pd.DataFrame({"scan_id": ["a", "b", "c", "d", "a"],
                          "method": ["synthseg"] * 4 + ["synthseg+"],
                          "mean_dice": [0.5, 0.65, 0.79, 0.80, 0.1]})
    groups = qc_groups.qc_from_rule(scans, qc_groups.QcRule("synthseg", 0.65, 0.80))
    assert dict(zip(groups["scan_id"], groups["qc_group"])) == {
        "a": "big_fail", "b": "small_fail", "c": "small_fail", "d": "pass"}
    with pytest.raises(DataError, match="qc_from: no evaluated predictions of method s1\\+s2"):
        qc_groups.qc_from_rule(scans, qc_groups.QcRule("s1+s2"))
