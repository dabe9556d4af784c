"""Shared fixtures: synthetic scans and a bundle of small seeded random networks."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def head_phantom(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """An ellipsoidal 'head' with a brighter core and noise (float32)."""
    grid = np.indices(shape).astype(np.float32)
    centre = (np.array(shape, np.float32) - 1)[:, None, None, None] / 2
    radius = np.sqrt((((grid - centre) / (centre + 1)) ** 2).sum(0))
    image = 100.0 * (radius < 0.8) + 60.0 * (radius < 0.5) + rng.normal(0, 5, shape)
    return image.astype(np.float32)


@pytest.fixture(autouse=True)
def every_progress_line(monkeypatch):
    """Tests finish in milliseconds: let progress log every step, as a long batch would."""
    monkeypatch.setattr("morphometry.progress.MIN_INTERVAL_S", 0.0)


def save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    from morphometry.segment.random_bundle import random_bundle

    return random_bundle(tmp_path_factory.mktemp("bundle") / "tiny", features=2, seed=7)


@pytest.fixture(scope="session")
def scan_folder(tmp_path_factory) -> Path:
    """Three small scans of mixed orientation and resolution, and one broken file."""
    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("scans")
    save(root / "iso15.nii.gz", head_phantom((40, 48, 36), rng), np.diag([1.5, 1.5, 1.5, 1.0]))
    coronal = np.array([[0, 0, -1, 90], [-1, 0, 0, 100], [0, 5, 0, -50], [0, 0, 0, 1.0]])  # 5 mm coronal, LIA-like
    save(root / "coronal5.nii.gz", head_phantom((60, 12, 64), rng).astype(np.int16), coronal)
    (root / "sub").mkdir()
    save(root / "sub" / "las1.nii", head_phantom((64, 64, 64), rng), np.diag([-1.0, 1.0, 1.0, 1.0]))
    (root / "broken.nii.gz").write_bytes(b"this is not an image")
    return root
