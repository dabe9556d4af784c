"""Rigid registration recovers known transforms of a simulated head; labels follow."""

from __future__ import annotations

import numpy as np
import pytest

from morphometry.analysis.metrics import dice
from morphometry.analysis.silver import RegistrationConfig, from_sitk, propagate_labels, register_rigid, to_sitk

# Head-like phantom in world RAS mm: (label, centre, semi-axes, T1 intensity, T2 intensity).
# Drawn in order, later shapes over earlier ones; eyes and the cerebellum break the symmetries.
SHAPES = (
    (0, (0, 0, 0), (72, 88, 78), 0.55, 0.45),       # scalp and soft tissue
    (0, (0, 0, 4), (66, 82, 72), 0.08, 0.05),       # skull
    (24, (0, 0, 6), (62, 78, 66), 0.20, 0.90),      # CSF
    (3, (0, 2, 10), (58, 73, 58), 0.50, 0.65),      # cortex
    (2, (0, 2, 12), (50, 64, 48), 0.85, 0.35),      # white matter
    (4, (9, 4, 16), (5, 22, 9), 0.18, 0.95),        # left lateral ventricle
    (43, (-9, 4, 16), (5, 22, 9), 0.18, 0.95),      # right lateral ventricle
    (10, (12, -6, 2), (8, 11, 8), 0.70, 0.45),      # thalamus
    (49, (-12, -6, 2), (8, 11, 8), 0.70, 0.45),
    (8, (0, -58, -38), (44, 22, 17), 0.60, 0.55),   # cerebellum
    (16, (0, -30, -36), (9, 10, 22), 0.75, 0.40),   # brain stem
    (0, (32, 64, -30), (12, 12, 11), 0.35, 0.90),   # eye
    (0, (-30, 66, -28), (11, 12, 11), 0.35, 0.90),  # eye
)
EDGE_MM = 1.0


def phantom(points_mm: np.ndarray, contrast: int) -> tuple[np.ndarray, np.ndarray]:
    """Intensities (soft edges) and labels at world points (N x 3, RAS mm); contrast 0: T1, 1: T2."""
    intensity = np.zeros(len(points_mm))
    labels = np.zeros(len(points_mm), dtype=np.int32)
    for label, centre, axes, t1, t2 in SHAPES:
        radius = np.linalg.norm((points_mm - centre) / axes, axis=1)
        inside = 1.0 / (1.0 + np.exp((radius - 1.0) * np.min(axes) / EDGE_MM))
        intensity = intensity * (1 - inside) + (t1, t2)[contrast] * inside
        labels = np.where(radius < 1.0, label, labels)
    return intensity, labels


def grid_points(shape, affine) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def centred_affine(shape, spacing) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2 * np.asarray(spacing)
    return affine


def rigid(angles_deg, translation_mm) -> np.ndarray:
    """4x4 RAS rotation (about x, then y, then z, about the origin) followed by a translation."""
    ax, ay, az = np.radians(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    matrix = np.eye(4)
    matrix[:3, :3] = rz @ ry @ rx
    matrix[:3, 3] = translation_mm
    return matrix


def reference_session(shape=(80, 96, 80), spacing=(2.0, 2.0, 2.0)):
    """The reference: T1 phantom and labels on a 2 mm grid."""
    affine = centred_affine(shape, spacing)
    image, labels = phantom(grid_points(shape, affine), 0)
    return image.reshape(shape).astype(np.float32), labels.reshape(shape), affine


def moved_scan(transform: np.ndarray, shape, spacing, contrast: int, rng: np.random.Generator,
               slab_mm: float = 0.0, noise: float = 0.0):
    """A scan of the same subject: voxel at world x shows the phantom at transform @ x.

    ``slab_mm`` > 0 averages 5 samples across the slice thickness along z (partial volume).
    """
    affine = centred_affine(shape, spacing)
    points = grid_points(shape, affine)
    offsets = np.linspace(-slab_mm / 2, slab_mm / 2, 5) if slab_mm else [0.0]
    image = np.zeros(len(points))
    for dz in offsets:
        moved = (points + [0, 0, dz]) @ transform[:3, :3].T + transform[:3, 3]
        image += phantom(moved, contrast)[0] / len(offsets)
    labels = phantom(points @ transform[:3, :3].T + transform[:3, 3], contrast)[1]
    image = image + noise * rng.standard_normal(len(points))
    return image.reshape(shape).astype(np.float32), labels.reshape(shape), affine


def rotation_error_deg(estimated: np.ndarray, truth: np.ndarray) -> float:
    relative = estimated[:3, :3].T @ truth[:3, :3]
    return float(np.degrees(np.arccos(np.clip((np.trace(relative) - 1) / 2, -1, 1))))


def brain_error_mm(estimated: np.ndarray, truth: np.ndarray) -> float:
    """Largest displacement difference over the corners of a 100 mm cube around the brain."""
    corners = np.array(np.meshgrid([-50, 50], [-50, 50], [-50, 50], indexing="ij")).reshape(3, -1).T
    homog = np.c_[corners, np.ones(len(corners))]
    return float(np.max(np.linalg.norm(homog @ (estimated - truth).T, axis=1)))


def test_sitk_conversion_keeps_world_coordinates():
    """ITK (LPS) physical points of voxel indices equal the nibabel (RAS) affine's, x and y negated."""
    affine = np.array([[0.0, 0.0, -2.0, 30.0], [1.5, 0.0, 0.0, -20.0], [0.0, 1.0, 0.0, 5.0], [0, 0, 0, 1]])
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    image = to_sitk(data, affine)
    for index in [(0, 0, 0), (3, 1, 5), (2, 4, 1)]:
        lps = np.asarray(image.TransformIndexToPhysicalPoint(index))
        ras = affine[:3, :3] @ index + affine[:3, 3]
        assert np.allclose(lps * [-1, -1, 1], ras)
        assert image[index] == data[index]
    assert np.array_equal(from_sitk(image), data)


@pytest.fixture(scope="module")
def reference():
    return reference_session()


def test_recovers_known_rigid_transform(reference):
    image, _, affine = reference
    truth = rigid((10.0, -6.0, 4.0), (8.0, -10.0, 5.0))
    rng = np.random.default_rng(1)
    scan, _, scan_affine = moved_scan(truth, (72, 88, 72), (2.0, 2.0, 2.0), 1, rng, noise=0.02)
    reg = register_rigid(scan, scan_affine, image, affine, RegistrationConfig(), rng)
    estimated = reg.matrix_ras()
    assert rotation_error_deg(estimated, truth) < 1.0
    assert np.linalg.norm(estimated[:3, 3] - truth[:3, 3]) < 1.0


@pytest.mark.slow
def test_degraded_5mm_axial_scan_and_label_propagation(reference):
    image, labels, affine = reference
    truth = rigid((-8.0, 5.0, 7.0), (6.0, 9.0, -7.0))
    rng = np.random.default_rng(2)
    scan, scan_labels, scan_affine = moved_scan(truth, (88, 104, 28), (2.0, 2.0, 5.0), 1, rng,
                                                slab_mm=5.0, noise=0.05)
    reg = register_rigid(scan, scan_affine, image, affine, RegistrationConfig(), rng)
    estimated = reg.matrix_ras()
    assert rotation_error_deg(estimated, truth) < 1.0
    assert np.linalg.norm(estimated[:3, 3] - truth[:3, 3]) < 1.0
    assert brain_error_mm(estimated, truth) < 2.0
    silver = propagate_labels(labels, affine, reg, scan.shape, scan_affine)
    assert silver.dtype == np.int32 and silver.shape == scan.shape
    for value in (2, 3, 8):
        assert dice(silver == value, scan_labels == value) > 0.85


def save_nifti(path, data, affine):
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def test_silver_command_writes_labels_report_and_a_manifest_evaluate_accepts(reference, tmp_path):
    import pandas as pd

    from morphometry.cli import main

    image, labels, affine = reference
    truth = rigid((6.0, -4.0, 8.0), (-7.0, 5.0, 3.0))
    scan, scan_labels, scan_affine = moved_scan(truth, (64, 72, 60), (2.5, 2.5, 2.5), 1,
                                                np.random.default_rng(4), noise=0.02)
    save_nifti(tmp_path / "t1.nii.gz", image, affine)
    save_nifti(tmp_path / "t1_aseg.nii.gz", labels, affine)
    save_nifti(tmp_path / "flair.nii.gz", scan, scan_affine)
    save_nifti(tmp_path / "broken.nii.gz", np.zeros((8, 8, 8), dtype=np.float32), np.eye(4))
    (tmp_path / "sessions.csv").write_text(
        "session_id,scan_id,path,labels\nses1,t1,t1.nii.gz,t1_aseg.nii.gz\nses1,flair,flair.nii.gz,\n"
        "ses1,broken,broken.nii.gz,\n")
    out = tmp_path / "silver"
    assert main(["silver", "--sessions", str(tmp_path / "sessions.csv"), "-o", str(out)]) == 1
    report = pd.read_csv(out / "registration.csv")
    assert report["scan_id"].tolist() == ["flair"] and report["reference_scan_id"].iloc[0] == "t1"
    assert {"angle_x_deg", "translation_x_mm", "final_metric", "matrix_ras"} <= set(report.columns)
    matrix = np.r_[np.array(report["matrix_ras"].iloc[0].split(), dtype=float).reshape(3, 4), [[0, 0, 0, 1]]]
    assert rotation_error_deg(matrix, truth) < 1.0
    assert (out / "transforms" / "flair.tfm").is_file()
    failures = pd.read_csv(out / "failures.csv")
    assert failures["scan_id"].tolist() == ["broken"] and "all-zero" in failures["error"].iloc[0]
    # the truth labels of the scan, evaluated against the propagated silver standard
    save_nifti(tmp_path / "pred" / "flair_synthseg+.nii.gz", scan_labels.astype(np.int32), scan_affine)
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--reference", str(out / "silver.csv"),
                 "-o", str(tmp_path / "eval"), "--labels", "2", "3", "--no-figures"]) == 0
    dice = pd.read_csv(tmp_path / "eval" / "metrics.csv").set_index("structure")["dice"]
    assert dice["left_cerebral_white_matter"] > 0.9 and dice["left_cerebral_cortex"] > 0.8


def test_silver_inputs_are_checked(tmp_path, capsys):
    from morphometry.analysis.silver import read_sessions
    from morphometry.cli import main
    from morphometry.errors import InputError

    (tmp_path / "two.csv").write_text("session_id,scan_id,path,labels\ns,a,a.nii.gz,x.nii.gz\ns,b,b.nii.gz,y.nii.gz\n")
    (tmp_path / "cols.csv").write_text("session,scan_id,path\ns,a,a.nii.gz\n")
    with pytest.raises(InputError, match="session s has 2 rows with labels"):
        read_sessions(tmp_path / "two.csv")
    with pytest.raises(InputError, match=r"cols.csv: session manifest lacks column\(s\) session_id, labels"):
        read_sessions(tmp_path / "cols.csv")
    assert main(["silver", "scan.nii.gz", "-o", str(tmp_path / "o")]) == 2
    assert "--reference-image: needed with scans" in capsys.readouterr().err
    with pytest.raises(InputError):
        RegistrationConfig(init="random")
    # missing reference files: every scan of the session is a failure, the batch still finishes
    rc = main(["silver", str(tmp_path / "scan.nii.gz"), "--reference-image", str(tmp_path / "t1.nii.gz"),
               "--reference-labels", str(tmp_path / "aseg.nii.gz"), "-o", str(tmp_path / "o")])
    assert rc == 1 and "t1.nii.gz: file not found" in capsys.readouterr().err


def test_silver_api_matches_the_command_and_reports_progress(reference, tmp_path, capsys):
    import nibabel as nib
    import pandas as pd

    from morphometry.analysis.silver import SilverResult, silver
    from morphometry.cli import main
    from morphometry.progress import configure_logging

    image, labels, affine = reference
    truth = rigid((-5.0, 3.0, 6.0), (4.0, -6.0, 2.0))
    scan, _, scan_affine = moved_scan(truth, (64, 72, 60), (2.5, 2.5, 2.5), 1, np.random.default_rng(5), noise=0.02)
    t1 = save_nifti(tmp_path / "t1.nii.gz", image, affine)
    aseg = save_nifti(tmp_path / "t1_aseg.nii.gz", labels, affine)
    flair = save_nifti(tmp_path / "flair.nii.gz", scan, scan_affine)
    assert main(["silver", str(flair), "--reference-image", str(t1), "--reference-labels", str(aseg),
                 "-o", str(tmp_path / "cli"), "--seed", "3"]) == 0
    configure_logging(0)
    sessions = pd.DataFrame({"session_id": ["s", "s"], "scan_id": ["t1", "flair"], "path": [str(t1), str(flair)],
                             "labels": [str(aseg), ""]})
    result = silver(tmp_path / "api", sessions=sessions, seed=3)
    assert isinstance(result, SilverResult) and result.ok and result.n_sessions == 1
    assert "silver: 1/1 scan (100 %)" in capsys.readouterr().err
    cli = pd.read_csv(tmp_path / "cli" / "registration.csv")
    assert result.registrations["seed"].tolist() == cli["seed"].tolist()
    matrix = np.r_[np.array(result.registrations["matrix_ras"].iloc[0].split(), dtype=float).reshape(3, 4),
                   [[0, 0, 0, 1]]]
    assert rotation_error_deg(matrix, truth) < 1.0
    columns = [c for c in cli.columns if c.startswith(("angle_", "translation_"))]
    # multithreaded SimpleITK is not bit-exact from run to run
    assert np.allclose(result.registrations[columns].to_numpy(float), cli[columns].to_numpy(float), atol=0.05)
    assert pd.read_csv(tmp_path / "api" / "silver.csv").equals(result.manifest)
    api_labels = np.asarray(nib.load(result.manifest["path"].iloc[0]).dataobj)
    cli_labels = np.asarray(nib.load(str(tmp_path / "cli" / "silver" / "flair.nii.gz")).dataobj)
    assert np.mean(api_labels == cli_labels) > 0.995  # the registrations differ slightly (above): boundary voxels
    from morphometry.errors import InputError

    with pytest.raises(InputError, match="^sessions: .*not both"):
        silver(tmp_path / "x", sessions=sessions, scans=[flair])
    with pytest.raises(InputError, match="^reference_labels: needed with scans"):
        silver(tmp_path / "x", scans={"flair": flair}, reference_image=t1)
