"""``morpho synthseg`` (mri_synthseg's flags and files) against the files of the original.

Fixtures: ../shared/fixtures/e2e-original (README.md there): what the original SynthSeg code wrote
for six scans with the small networks of ../shared/fixtures/keras-reference. Those weights are laid
out here as a fake ``$FREESURFER_HOME/models`` (plus a SynthSeg 1.0 file made from the 2.0 one by
dropping its CSF output) and imported with ``morpho models import-freesurfer``; ``morpho synthseg``
then finds them without ``--models``. Two scans keep the runs short: ``tiny_1mm`` (not resampled)
and ``t2_0p8mm`` (resampled to 129 x 141 x 117); the robust and parcellation runs take ``tiny_1mm``
alone. Volumes are held to the README's tolerance
|dv| <= 10 mm^3 + 1e-3 v (robust mode: total intracranial within 0.5 %, QC within 0.02, as the
README's end-to-end acceptance); CSV layouts are compared as text.
"""

from __future__ import annotations

import csv
import io
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import SHARED
from e2e_fixtures import MIN_AGREEMENT

from morphometry.cli import main
from morphometry.labels import PARCELLATION_LABELS, SYNTHSEG_1, SYNTHSEG_2
from morphometry.segment.synthseg_files import list_folder, output_name, plan_outputs, subject_name
from morphometry.segment.synthseg_tables import volume_columns

E2E = SHARED / "fixtures" / "e2e-original"
KERAS = SHARED / "fixtures" / "keras-reference"
pytestmark = pytest.mark.skipif(not (E2E / "README.md").is_file() or not (KERAS / "README.md").is_file(),
                                reason=f"original SynthSeg fixtures not found at {E2E} and {KERAS}")
SCANS = ("t2_0p8mm", "tiny_1mm")  # sorted file order, as the original writes its rows
OFFICIAL = {"synthseg_weights.h5": "synthseg_2.0.h5", "robust_weights.h5": "synthseg_robust_2.0.h5",
            "parc_weights.h5": "synthseg_parc_2.0.h5", "qc_weights.h5": "synthseg_qc_2.0.h5"}
MODES = {  # fixture folder -> (extra flags: the fixture's own, see its README; scans)
    "default": (["--resample", "{out}/resampled"], SCANS),
    "fast": (["--fast"], SCANS),
    "robust": (["--robust", "--qc", "{out}/qc.csv"], ("tiny_1mm",)),
    "parc": (["--parc"], ("tiny_1mm",)),
}


def synthseg(*args) -> int:
    return main(["synthseg", *map(str, args), "--threads", "2"])


def read_csv(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_bytes().decode(), newline="")))


def write_v1_weights(path: Path) -> None:
    """A SynthSeg 1.0 file: the 2.0 network of the fixtures without its CSF output (channel 16)."""
    from morphometry.segment.keras_import import read_keras_h5, write_keras_h5

    layers = dict(read_keras_h5(KERAS / "synthseg_weights.h5").networks["unet"])
    keep = [i for i in range(SYNTHSEG_2.n_channels) if i != SYNTHSEG_2.channel_of(24)]
    kernel, bias = layers["likelihood"]
    layers["likelihood"] = (kernel[..., keep], bias[keep])
    write_keras_h5(path, {"unet": layers})


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """$MORPHO_MODELS with the bundles import-freesurfer made from a fake FreeSurfer 7.4.1 home."""
    root = tmp_path_factory.mktemp("freesurfer")
    home = root / "freesurfer"
    (home / "models").mkdir(parents=True)
    for source, name in OFFICIAL.items():
        (home / "models" / name).symlink_to(KERAS / source)
    write_v1_weights(home / "models" / "synthseg_1.0.h5")
    (home / "build-stamp.txt").write_text("freesurfer-linux-ubuntu22_x86_64-7.4.1-20230614-7eb8460\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MORPHO_MODELS", str(root / "models"))
        mp.setenv("XDG_DATA_HOME", str(root / "data"))
        mp.delenv("FREESURFER_HOME", raising=False)
        assert main(["models", "import-freesurfer", "--freesurfer-home", str(home)]) == 0
        yield {"home": home, "models": root / "models"}


@pytest.fixture(scope="module", params=list(MODES))
def run(request, official, tmp_path_factory):
    """One folder run per fixture mode, with --vol (and the mode's flags): (mode, out, exit code, scans)."""
    mode = request.param
    flags, scans = MODES[mode]
    root = tmp_path_factory.mktemp(mode)
    (root / "in").mkdir()
    for scan in scans:
        (root / "in" / f"{scan}.nii.gz").symlink_to(E2E / "inputs" / f"{scan}.nii.gz")
    out = root / "out"
    code = synthseg("--i", root / "in", "--o", out, "--vol", out / "volumes.csv", *[f.format(out=out) for f in flags])
    return mode, out, code, scans


def reference_rows(mode: str) -> dict[str, list[str]]:
    """The original's volumes rows of a fixture mode, by subject."""
    return {row[0]: row for row in read_csv(E2E / mode / "volumes.csv")[1:]}


def assert_volumes_close(ours: list[str], ref: list[str], header: list[str], what: str) -> None:
    v, r = np.array(ours[1:], float), np.array(ref[1:], float)
    bad = np.abs(v - r) > 10 + 1e-3 * np.abs(r)
    assert not bad.any(), f"{what}: " + ", ".join(f"{h} {a} vs {b}" for h, a, b in
                                                 zip(np.array(header[1:])[bad], v[bad], r[bad]))


# --- the four fixture modes on a folder -----------------------------------------------------------

def test_mode_csv_layout_as_the_original(run):
    mode, out, code, scans = run
    assert code == 0
    ours, ref = (out / "volumes.csv").read_bytes(), (E2E / mode / "volumes.csv").read_bytes()
    assert ours.split(b"\r\n")[0] == ref.split(b"\r\n")[0]  # header: names and column order
    assert ours.endswith(b"\r\n") and ours.count(b"\r\n") == ours.count(b"\n") == 1 + len(scans)
    assert [row[0] for row in read_csv(out / "volumes.csv")[1:]] == list(scans)  # subjects, sorted file order


def test_mode_volumes_agree_with_the_original(run):
    mode, out, _, _ = run
    rows = read_csv(out / "volumes.csv")
    ref = reference_rows(mode)
    for row in rows[1:]:
        if mode == "robust":  # end to end only coarse agreement is possible (fixture README)
            assert abs(float(row[1]) / float(ref[row[0]][1]) - 1) < 5e-3, row[0]
        else:
            assert_volumes_close(row, ref[row[0]], rows[0], f"{mode}/{row[0]}")


def test_mode_segmentation_files(run):
    mode, out, _, scans = run
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{s}_synthseg.nii.gz" for s in scans]
    for scan in scans:
        ours, ref = nib.load(out / f"{scan}_synthseg.nii.gz"), nib.load(E2E / mode / f"{scan}_synthseg.nii.gz")
        assert ours.shape == ref.shape and ours.get_data_dtype() == np.int32
        np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-4)
        agree = np.mean(np.asarray(ours.dataobj) == np.asarray(ref.dataobj))
        assert agree >= (0.5 if mode == "robust" else 0.99995), f"{mode}/{scan}: labels agree on {agree:.6f}"


def test_mode_state_folder_holds_the_full_table(run):
    mode, out, _, _ = run
    (state,) = (out / ".morpho-synthseg").iterdir()
    assert {"volumes.parquet", "failures.csv", "provenance.json", "inputs.csv"} <= {p.name for p in state.iterdir()}
    assert not list((state / "seg").glob("*.nii.gz"))  # moved to the original's names


def test_robust_qc_scores(run):
    mode, out, _, _ = run
    if mode != "robust":
        pytest.skip("QC scores are in the robust run")
    ours, ref = read_csv(out / "qc.csv"), read_csv(E2E / "robust" / "qc.csv")
    assert ours[0] == ref[0]
    expected = {row[0]: row for row in ref[1:]}
    for row in ours[1:]:
        assert all(len(v.split(".")[1]) == 4 for v in row[1:])  # %.4f
        np.testing.assert_allclose(np.array(row[1:], float), np.array(expected[row[0]][1:], float), atol=0.02)


def test_resampled_images(run):
    mode, out, _, _ = run
    if mode != "default":
        pytest.skip("the default run writes --resample")
    assert [p.name for p in (out / "resampled").iterdir()] == ["t2_0p8mm_resampled.nii.gz"]  # tiny: not resampled
    ours = nib.load(out / "resampled" / "t2_0p8mm_resampled.nii.gz")
    ref = nib.load(E2E / "default" / "resampled" / "t2_0p8mm_resampled.nii.gz")
    assert ours.shape == ref.shape and ours.get_data_dtype() == ref.get_data_dtype()
    np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-4)
    ref_data = ref.get_fdata()
    np.testing.assert_allclose(ours.get_fdata(), ref_data, atol=1e-5 * np.abs(ref_data).max())


# --- one image, posteriors, lists of paths, resume, failures ----------------------------------------

def test_single_image_with_posteriors(official, tmp_path):
    image = E2E / "inputs" / "tiny_1mm.nii.gz"
    code = synthseg("--i", image, "--o", tmp_path / "seg", "--post", tmp_path / "post.nii.gz",
                    "--vol", tmp_path / "volumes")
    assert code == 0
    assert (tmp_path / "seg" / "tiny_1mm_synthseg.nii.gz").is_file()  # a folder --o: the original's name
    rows = read_csv(tmp_path / "volumes.csv")  # .csv appended, as the original
    assert [r[0] for r in rows] == ["subject", "tiny_1mm"]
    assert_volumes_close(rows[1], reference_rows("default")["tiny_1mm"], rows[0], "tiny_1mm")
    ours = nib.load(tmp_path / "post.nii.gz")
    ref = nib.load(E2E / "default" / "posteriors" / "tiny_1mm_posteriors.nii.gz")
    assert ours.shape == ref.shape == (64, 72, 56, 33) and ours.get_data_dtype() == np.float32
    # voxel by voxel as tests/test_e2e_original.py: one may differ where float noise crossed a
    # threshold of the clean-up
    difference = np.abs(ours.get_fdata() - ref.get_fdata()).max(axis=-1)
    assert np.count_nonzero(difference > 1e-3) <= (1 - MIN_AGREEMENT) * difference.size
    assert np.median(difference) < 1e-5


@pytest.fixture(scope="module")
def listed(official, tmp_path_factory):
    """A .txt list of two scans with one file name (tiny_1mm in two folders), .txt output lists."""
    root = tmp_path_factory.mktemp("lists")
    for sub in ("sub-1", "sub-2"):
        (root / sub).mkdir()
        (root / sub / "tiny_1mm.nii.gz").symlink_to(E2E / "inputs" / "tiny_1mm.nii.gz")
    (root / "inputs.txt").write_text(f"{root}/sub-1/tiny_1mm.nii.gz\n\n{root}/sub-2/tiny_1mm.nii.gz\n")
    (root / "seg.txt").write_text(f"{root}/a/seg.nii.gz\n{root}/b/seg.mgz\n")
    (root / "vol.txt").write_text(f"{root}/a/vol.csv\n{root}/b/vol.csv\n")
    args = ["--i", root / "inputs.txt", "--o", root / "seg.txt", "--vol", root / "vol.txt", "--fast"]
    return root, args, synthseg(*args)


def test_text_lists_give_one_csv_per_subject(listed):
    root, _, code = listed
    assert code == 0
    assert (root / "a" / "seg.nii.gz").is_file()
    mgz = nib.load(root / "b" / "seg.mgz")  # converted to the format the name asks for
    np.testing.assert_array_equal(np.asarray(mgz.dataobj), np.asarray(nib.load(root / "a" / "seg.nii.gz").dataobj))
    ref = reference_rows("fast")["tiny_1mm"]
    for sub in ("a", "b"):
        header, row = read_csv(root / sub / "vol.csv")
        assert header == [""] + [name for name, _ in volume_columns(False)]  # the original's per-subject layout
        assert row[0] == "tiny_1mm"
        assert_volumes_close(row, ref, header, sub)


def test_rerun_resumes_and_remakes_lost_outputs(listed, capsys):
    root, args, _ = listed
    seg = root / "a" / "seg.nii.gz"
    before = seg.stat().st_mtime_ns
    (root / "b" / "seg.mgz").unlink()
    capsys.readouterr()
    assert synthseg(*args) == 0
    assert "segmenting 1 scan(s) with synthseg on cpu (1 already done)" in capsys.readouterr().err
    assert seg.stat().st_mtime_ns == before and (root / "b" / "seg.mgz").is_file()


def test_an_edited_list_segments_the_changed_line_again(official, tmp_path, capsys):
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        shutil.copy(E2E / "inputs" / "tiny_1mm.nii.gz", tmp_path / folder / "scan.nii.gz")
    listing, outputs = tmp_path / "in.txt", tmp_path / "out.txt"
    outputs.write_text(f"{tmp_path}/seg.nii.gz\n")
    logs = []
    for folder in ("x", "y", "y"):  # the same list path (the same state), its line edited once
        listing.write_text(f"{tmp_path}/{folder}/scan.nii.gz\n")
        capsys.readouterr()
        assert synthseg("--i", listing, "--o", outputs, "--fast") == 0
        logs.append(capsys.readouterr().err)
    assert "segmenting 1 scan(s) with synthseg on cpu\n" in logs[0]
    assert "segmenting 1 scan(s) with synthseg on cpu\n" in logs[1]  # another file: segmented again
    assert "segmenting 0 scan(s) with synthseg on cpu (1 already done)" in logs[2]


def test_a_failing_scan_does_not_stop_the_others(official, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "broken.nii.gz").write_bytes(b"not an image")
    (folder / "tiny_1mm.nii.gz").symlink_to(E2E / "inputs" / "tiny_1mm.nii.gz")
    (folder / "notes.txt").write_text("not listed: not an image name")
    (folder / "sub").mkdir()  # not searched, as the original
    shutil.copy(E2E / "inputs" / "tiny_1mm.nii.gz", folder / "sub" / "other.nii.gz")
    assert synthseg("--i", folder, "--o", tmp_path / "out", "--vol", tmp_path / "v.csv", "--fast") == 1
    assert [r[0] for r in read_csv(tmp_path / "v.csv")] == ["subject", "tiny_1mm"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["tiny_1mm_synthseg.nii.gz"]
    (state,) = (tmp_path / "out" / ".morpho-synthseg").iterdir()
    assert "broken" in (state / "failures.csv").read_text()


# --- SynthSeg 1.0, CT, crop -------------------------------------------------------------------------

def test_v1_layout_and_parcels_scaled_to_the_cortex(official, tmp_path):
    image = E2E / "inputs" / "tiny_1mm.nii.gz"
    assert synthseg("--i", image, "--o", tmp_path / "seg.nii.gz", "--vol", tmp_path / "v.csv", "--v1",
                    "--fast", "--parc") == 0
    header, row = read_csv(tmp_path / "v.csv")
    names = [lab.freesurfer_name for lab in SYNTHSEG_1.labels[1:]] + [p.freesurfer_name for p in PARCELLATION_LABELS]
    assert header == ["subject"] + names  # no total intracranial, no csf
    values = dict(zip(header[1:], map(float, row[1:])))
    parcels = sum(values[p.freesurfer_name] for p in PARCELLATION_LABELS)
    cortex = values["left cerebral cortex"] + values["right cerebral cortex"]
    assert parcels == pytest.approx(cortex, rel=1e-5, abs=0.05)
    labels = np.unique(np.asarray(nib.load(tmp_path / "seg.nii.gz").dataobj))
    assert 24 not in labels


def test_ct_clips_intensities_before_normalising(official, tmp_path):
    image = nib.load(E2E / "inputs" / "tiny_1mm.nii.gz")
    data = image.get_fdata(dtype=np.float32)
    low, high = np.percentile(data, [20, 80])
    hu = (data - low) / (high - low) * 60 + 10  # a quarter of the voxels above 80 "HU"
    nib.save(nib.Nifti1Image(hu, image.affine), tmp_path / "ct.nii.gz")
    nib.save(nib.Nifti1Image(np.clip(hu, 0, 80), image.affine), tmp_path / "clipped.nii.gz")
    assert synthseg("--i", tmp_path / "ct.nii.gz", "--o", tmp_path / "a.nii.gz", "--ct", "--fast") == 0
    assert synthseg("--i", tmp_path / "clipped.nii.gz", "--o", tmp_path / "b.nii.gz", "--fast") == 0
    a, b = (np.asarray(nib.load(tmp_path / n).dataobj) for n in ("a.nii.gz", "b.nii.gz"))
    np.testing.assert_array_equal(a, b)


def test_crop_keeps_a_centred_box(official, tmp_path):
    image = E2E / "inputs" / "tiny_1mm.nii.gz"  # RAS, 64 x 72 x 56
    assert synthseg("--i", image, "--o", tmp_path / "seg.nii.gz", "--post", tmp_path / "post.nii.gz",
                    "--crop", "40", "--fast") == 0
    labels = np.asarray(nib.load(tmp_path / "seg.nii.gz").dataobj)
    post = nib.load(tmp_path / "post.nii.gz").get_fdata(dtype=np.float32)
    box = (slice(0, 64), slice(4, 68), slice(0, 56))  # 40 -> 64; start max((n - 64) // 2, 0)
    outside = np.ones(labels.shape, bool)
    outside[box] = False
    assert labels[box].any() and not labels[outside].any()
    assert np.all(post[outside][:, 0] == 1)


# --- pairing rules and errors -----------------------------------------------------------------------

def test_output_names_and_folder_listing(tmp_path):
    assert output_name(Path("a/t1.nii.gz"), "synthseg") == "t1_synthseg.nii.gz"
    assert output_name(Path("t1.nii"), "posteriors") == "t1_posteriors.nii"
    assert output_name(Path("t1.mgz"), "resampled") == "t1_resampled.mgz"
    assert subject_name(Path("x/t1.nii.gz")) == "t1" and subject_name(Path("t1.mgz")) == "t1.mgz"
    for name in ("b.nii.gz", "a.mgz", "c.nii", ".hidden.nii.gz", "d.npz", "e.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "f.nii.gz").write_bytes(b"")
    assert [p.name for p in list_folder(tmp_path)] == ["a.mgz", "b.nii.gz", "c.nii"]
    plan = plan_outputs(tmp_path, tmp_path / "out", tmp_path / "post", None, tmp_path / "vol", tmp_path / "qc.csv")
    assert [j.segmentation.name for j in plan.jobs] == ["a_synthseg.mgz", "b_synthseg.nii.gz", "c_synthseg.nii"]
    assert [j.posteriors.name for j in plan.jobs] == ["a_posteriors.mgz", "b_posteriors.nii.gz", "c_posteriors.nii"]
    assert plan.volumes_csv == tmp_path / "vol.csv" and plan.qc_csv == tmp_path / "qc.csv"
    single = plan_outputs(tmp_path / "b.nii.gz", tmp_path / "s.mgz", tmp_path / "p")
    assert single.jobs[0].segmentation == tmp_path / "s.mgz"
    assert single.jobs[0].posteriors == tmp_path / "p" / "b_posteriors.nii.gz"


def test_outputs_are_moved_or_copied_into_the_format_asked(tmp_path):
    from morphometry.segment.synthseg_files import SynthsegJob
    from morphometry.segment.synthseg_run import place_image, scan_ids

    labels = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    src = tmp_path / "work.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.diag([2.0, 1, 1, 1])), src)
    place_image(src, tmp_path / "a" / "copy.mgz", keep=True)  # the same image listed twice: a copy first
    place_image(src, tmp_path / "b" / "copy.nii")
    place_image(tmp_path / "b" / "copy.nii", tmp_path / "moved.nii.gz")
    assert not src.exists() and not (tmp_path / "b" / "copy.nii").exists()
    for name in ("a/copy.mgz", "moved.nii.gz"):
        img = nib.load(tmp_path / name)
        np.testing.assert_array_equal(np.asarray(img.dataobj), labels)
        np.testing.assert_allclose(img.affine, np.diag([2.0, 1, 1, 1]))
    jobs = tuple(SynthsegJob(Path(p), Path("o.nii.gz")) for p in ("x/t1.nii.gz", "y/t1.nii", "y/t2.mgz"))
    ids = scan_ids(jobs)
    assert ids[2] == "t2" and ids[0].startswith("t1_") and ids[1].startswith("t1_") and ids[0] != ids[1]


@pytest.mark.parametrize("case, flag, message", [
    ("folder_to_file", "--o", "--i is a folder, so this must be a folder too"),
    ("list_to_folder", "--o", "--i is a .txt list, so this must be a .txt list too"),
    ("list_counts", "--vol", "lists 1 path(s) but"),
    ("image_to_list", "--post", "a .txt list of outputs goes with a .txt list of inputs only"),
    ("missing", "--i", "no such file or folder"),
    ("npz", "--i", "not an image, a folder or a .txt list"),
    ("crop", "--crop", "give 1 or 3 sizes"),
    ("robust_v1", "--v1", "SynthSeg 1.0 has no robust version"),
])
def test_bad_pairings_name_the_flag(case, flag, message, tmp_path, capsys):
    image = tmp_path / "t1.nii.gz"
    image.write_bytes(b"")
    (tmp_path / "x.npz").write_bytes(b"")
    (tmp_path / "in.txt").write_text(f"{image}\n{image}\n")
    (tmp_path / "one.txt").write_text(f"{tmp_path}/v.csv\n")
    (tmp_path / "two.txt").write_text(f"{tmp_path}/a.nii.gz\n{tmp_path}/b.nii.gz\n")
    args = {
        "folder_to_file": ["--i", tmp_path, "--o", tmp_path / "seg.nii.gz"],
        "list_to_folder": ["--i", tmp_path / "in.txt", "--o", tmp_path / "out"],
        "list_counts": ["--i", tmp_path / "in.txt", "--o", tmp_path / "two.txt", "--vol", tmp_path / "one.txt"],
        "image_to_list": ["--i", image, "--o", tmp_path / "out", "--post", tmp_path / "two.txt"],
        "missing": ["--i", tmp_path / "nothing", "--o", tmp_path / "out"],
        "npz": ["--i", tmp_path / "x.npz", "--o", tmp_path / "out"],
        "crop": ["--i", image, "--o", tmp_path / "out", "--crop", "96", "96"],
        "robust_v1": ["--i", image, "--o", tmp_path / "out", "--robust", "--v1"],
    }[case]
    assert synthseg(*args) == 2
    err = capsys.readouterr().err
    assert f"morpho synthseg: error: {flag}: " in err and message in err, err


def test_v1_needs_a_v1_bundle(official, tmp_path, capsys):
    image = E2E / "inputs" / "tiny_1mm.nii.gz"
    assert synthseg("--i", image, "--o", tmp_path, "--v1", "--models", official["models"] / "freesurfer") == 2
    assert "--v1: " in capsys.readouterr().err
    assert synthseg("--i", image, "--o", tmp_path, "--models", official["models"] / "freesurfer-v1") == 2
    assert "holds a SynthSeg 1.0 network; add --v1" in capsys.readouterr().err


# --- import-freesurfer, finding the bundles ----------------------------------------------------------

def test_import_freesurfer_makes_two_named_bundles(official, capsys):
    from morphometry.segment.bundle import load_bundle, verify_bundle

    main_bundle = load_bundle(official["models"] / "freesurfer")
    v1 = load_bundle(official["models"] / "freesurfer-v1")
    assert main_bundle.model_id == "freesurfer-7.4.1" and v1.model_id == "freesurfer-7.4.1-v1"
    assert set(main_bundle.networks) == {"synthseg", "s1", "d", "s2", "parc", "qc"}
    assert set(v1.networks) == {"synthseg", "parc", "qc"}
    assert v1.networks["synthseg"].architecture["source_labels"] == SYNTHSEG_1.values.tolist()
    assert verify_bundle(main_bundle) == [] and verify_bundle(v1) == []
    files = {r["file"] for r in main_bundle.provenance["files"]}
    assert files == set(OFFICIAL.values())
    again = main(["models", "import-freesurfer", "--freesurfer-home", str(official["home"]),
                  "-o", str(official["models"] / "freesurfer")])
    assert again == 2 and "--output: " in capsys.readouterr().err


def test_missing_official_bundle_says_what_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MORPHO_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    image = tmp_path / "t1.nii.gz"
    image.write_bytes(b"")
    assert synthseg("--i", image, "--o", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "--models: no official SynthSeg networks found" in err and "morpho models import-freesurfer" in err
    monkeypatch.delenv("FREESURFER_HOME", raising=False)
    assert main(["models", "import-freesurfer"]) == 2
    assert "--freesurfer-home: FREESURFER_HOME is not set" in capsys.readouterr().err


# --- morpho segment --volumes-format synthseg, the starter warning ----------------------------------

def test_segment_writes_the_original_csv_too(official, tmp_path):
    image = E2E / "inputs" / "tiny_1mm.nii.gz"
    out = tmp_path / "out"
    assert main(["segment", str(image), "-o", str(out), "--models", str(official["models"] / "freesurfer"),
                 "--method", "synthseg", "--fast", "--volumes-format", "synthseg", "--threads", "2"]) == 0
    assert (out / "volumes.parquet").is_file()
    rows = read_csv(out / "volumes_synthseg.csv")
    assert rows[0] == ["subject"] + [name for name, _ in volume_columns(False)] and rows[1][0] == "tiny_1mm"
    assert_volumes_close(rows[1], reference_rows("fast")["tiny_1mm"], rows[0], "segment --fast")


def test_starter_bundle_warns_once(monkeypatch):
    from morphometry.segment import segmenter as module

    monkeypatch.setattr(module, "_starter_warned", False)
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("morphometry").addHandler(handler)
    try:
        module.Segmenter("starter", "synthseg", threads=1)
        module.Segmenter("starter", "synthseg", threads=1)
    finally:
        logging.getLogger("morphometry").removeHandler(handler)
    warnings = [m for m in seen if "starter bundle" in m]
    assert len(warnings) == 1 and "about 0.45" in warnings[0] and "\n" not in warnings[0]


def test_segment_many_writes_one_original_csv_per_method(tiny_bundle, scan_folder, tmp_path):
    from morphometry import Segmenter
    from morphometry.errors import InputError

    segmenter = Segmenter(tiny_bundle.root, ("synthseg", "s1+s2"), threads=2)
    scans = [scan_folder / "sub" / "las1.nii", scan_folder / "coronal5.nii.gz"]
    result = segmenter.segment_many(scans, tmp_path / "out", progress=False, volumes_format="synthseg")
    for method in ("synthseg", "s1+s2"):
        header, *rows = read_csv(tmp_path / "out" / f"volumes_synthseg_{method}.csv")
        assert header[:2] == ["subject", "total intracranial"]
        assert [r[0] for r in rows] == ["coronal5", "las1.nii"]  # path order; only .nii.gz is stripped
        table = result.volumes[result.volumes.method == method].set_index("scan_id")
        np.testing.assert_allclose([float(r[1]) for r in rows],
                                   table.loc[["coronal5", "las1"], "total_intracranial"], rtol=1e-6)
    with pytest.raises(InputError, match="volumes_format: 'wide': choose tidy, synthseg"):
        segmenter.segment_many(scans, tmp_path / "other", volumes_format="wide")
