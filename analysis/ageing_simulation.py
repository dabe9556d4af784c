"""Synthetic volumes tables with a known ageing truth, for tests and benchmarks of the ageing model.

(The image-level cohort simulator with planted ageing lives in :mod:`morphometry.segment.synthesis`;
this one draws table rows directly.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class SimulatedAgeingData:
    """Settings and known truth of a synthetic ageing table: every structure follows

    y = base (1 - drop (0.3 t + 0.7 t^2)) + gamma . (s - 1 mm) + delta (male - 1/2) + u_subject + e,

    t = (age - age_min) / (age_max - age_min), a strictly decreasing curve; u_subject ~ N(0,
    subject_sd^2) shared by a subject's scans, e ~ N(0, noise_sd^2) per scan and method.
    Volumes in mm^3, ages in years, spacings in mm (one thick-slice axis per scan).
    """

    n_subjects: int = 200
    max_scans_per_subject: int = 3
    age_min: float = 20.0
    age_max: float = 90.0
    base: float = 4000.0
    drop: float = 0.3
    gamma: tuple[float, float, float] = (-40.0, 25.0, -60.0)
    delta: float = 250.0
    subject_sd: float = 100.0
    noise_sd: float = 150.0
    structures: tuple[str, ...] = ("left_hippocampus",)
    methods: tuple[str, ...] = ("synthseg+",)

    def truth(self, ages) -> np.ndarray:
        """Planted trajectory (mm^3) at 1 mm spacing, sexes averaged."""
        t = (np.asarray(ages, dtype=float) - self.age_min) / (self.age_max - self.age_min)
        return self.base * (1.0 - self.drop * (0.3 * t + 0.7 * t**2))


def simulate_ageing_table(planted: SimulatedAgeingData, rng: np.random.Generator) -> pd.DataFrame:
    """A joined volumes + covariates table (age, sex) drawn from ``planted``."""
    n_scans = rng.integers(1, planted.max_scans_per_subject + 1, size=planted.n_subjects)
    subject = np.repeat(np.arange(planted.n_subjects), n_scans)
    n = subject.size
    start = rng.uniform(planted.age_min, planted.age_max, planted.n_subjects)
    age = np.clip(start[subject] + rng.uniform(0.0, 3.0, n) * (np.arange(n) != np.searchsorted(subject, subject)),
                  planted.age_min, planted.age_max)
    male = rng.integers(0, 2, planted.n_subjects)[subject]
    spacing = rng.uniform(0.8, 1.3, (n, 3))
    thick = rng.integers(0, 3, n)
    spacing[np.arange(n), thick] = rng.uniform(1.0, 8.0, n)
    mean = (planted.truth(age) + (spacing - 1.0) @ np.asarray(planted.gamma)
            + planted.delta * (male - 0.5) + rng.normal(0.0, planted.subject_sd, planted.n_subjects)[subject])
    base = pd.DataFrame({
        "scan_id": [f"scan{i:06d}" for i in range(n)], "subject_id": [f"sub{s:05d}" for s in subject],
        "session_id": "ses1", "spacing_x_mm": spacing[:, 0], "spacing_y_mm": spacing[:, 1],
        "spacing_z_mm": spacing[:, 2], "slice_spacing_mm": spacing.max(axis=1),
        "slice_axis": np.array(["sagittal", "coronal", "axial"])[thick], "age": age,
        "sex": np.where(male == 1, "M", "F")})
    frames = []
    for method in planted.methods:
        vols = {s: mean + rng.normal(0.0, planted.noise_sd, n) for s in planted.structures}
        frames.append(base.assign(method=method, **vols))
    return pd.concat(frames, ignore_index=True)
