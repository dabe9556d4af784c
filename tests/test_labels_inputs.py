"""Label tables against the original's label files (``data/labels_classes_priors/*.npy``); input discovery (folders, manifests, BIDS)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import save

from morphometry.errors import InputError
from morphometry.inputs import discover
from morphometry.labels import (
    BILATERAL_STRUCTURES,
    LEFT_RIGHT_PAIRS,
    PARCELLATION_LABELS,
    QC_GROUPS,
    STRUCTURES,
    SYNTHSEG_1,
    SYNTHSEG_2,
)
from morphometry.volumes import soft_volumes


def test_label_order_and_flip_vector():
    assert SYNTHSEG_2.values.tolist() == [0, 2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 26, 28,
                                          41, 42, 43, 44, 46, 47, 49, 50, 51, 52, 53, 54, 58, 60]
    assert SYNTHSEG_2.flip_channels.tolist() == [0, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 11, 12, 13, 29, 30,
                                                 16, 31, 32, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 14, 15, 17, 18]
    assert SYNTHSEG_1.n_channels == 32 and 24 not in SYNTHSEG_1.values
    assert len(STRUCTURES) == 32 and len(LEFT_RIGHT_PAIRS) == 14 and len(BILATERAL_STRUCTURES) == 14
    assert BILATERAL_STRUCTURES["hippocampus"] == ("left_hippocampus", "right_hippocampus")


def test_groupings_match_the_facts():
    groups = {g: sorted(SYNTHSEG_2.values[SYNTHSEG_2.tissue_groups == g].tolist()) for g in range(5)}
    assert groups[0] == [0, 24] and groups[4] == [7, 8, 46, 47]
    assert groups[3] == [4, 5, 14, 15, 43, 44] and groups[2] == [3, 17, 18, 42, 53, 54]
    assert sorted(SYNTHSEG_2.values[SYNTHSEG_2.qc_groups == 7].tolist()) == [12, 13, 51, 52]
    assert sorted(SYNTHSEG_2.values[SYNTHSEG_2.topology_classes == 14].tolist()) == [41, 42, 43, 44]
    assert len(set(SYNTHSEG_2.topology_classes.tolist())) == 24 and len(QC_GROUPS) == 9
    values = [p.value for p in PARCELLATION_LABELS]
    assert len(values) == 68 and 1004 not in values and 2004 not in values and values[0] == 1001
    assert PARCELLATION_LABELS[34].name == "ctx_rh_bankssts" and PARCELLATION_LABELS[-1].value == 2035


def test_soft_volumes_are_posterior_sums_times_voxel_volume():
    rng = np.random.default_rng(0)
    post = rng.random((33, 5, 6, 7)).astype(np.float32)
    post /= post.sum(0)
    vols = soft_volumes(post, SYNTHSEG_2, voxel_volume_mm3=0.9**3)
    assert vols["left_hippocampus"] == pytest.approx(post[14].sum() * 0.729, abs=1e-3)
    assert vols["total_intracranial"] == pytest.approx((1 - post[0]).sum() * 0.729, abs=1e-3)
    assert "background" not in vols


def test_folder_bids_and_manifest(tmp_path):
    img = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    bids = tmp_path / "bids"
    for sub, ses in (("sub-01", "ses-a"), ("sub-02", "ses-b")):
        (bids / sub / ses / "anat").mkdir(parents=True)
        save(bids / sub / ses / "anat" / f"{sub}_{ses}_T1w.nii.gz", img, np.eye(4))
    (bids / "derivatives" / "x").mkdir(parents=True)
    save(bids / "derivatives" / "x" / "seg.nii.gz", img, np.eye(4))
    recs = discover([bids])
    assert [(r.scan_id, r.subject_id, r.session_id) for r in recs] == [
        ("sub-01_ses-a_T1w", "sub-01", "ses-a"), ("sub-02_ses-b_T1w", "sub-02", "ses-b")]
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,scan_id,subject_id,age\nbids/sub-01/ses-a/anat/sub-01_ses-a_T1w.nii.gz,x1,p1,70\n"
                        "missing.nii.gz,x2,p2,50\n")
    recs = discover([manifest])
    assert recs[0].path.is_file() and recs[0].subject_id == "p1" and recs[0].extra == {"age": "70"}
    assert recs[1].scan_id == "x2" and not recs[1].path.exists()  # fails later, in the batch


def test_duplicate_names_in_subfolders_and_bad_manifests(tmp_path):
    img = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    for sub in ("a", "b"):
        (tmp_path / "d" / sub).mkdir(parents=True)
        save(tmp_path / "d" / sub / "t1.nii.gz", img, np.eye(4))
    assert sorted(r.scan_id for r in discover([tmp_path / "d"])) == ["a_t1", "b_t1"]
    bad = tmp_path / "bad.csv"
    bad.write_text("file\nx.nii\n")
    with pytest.raises(InputError, match="needs a 'path' column"):
        discover([bad])
    dup = tmp_path / "dup.csv"
    dup.write_text("path,scan_id\na.nii,s\nb.nii,s\n")
    with pytest.raises(InputError, match="duplicate scan_id 's'"):
        discover([dup])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .nii"):
        discover([tmp_path / "empty"])
