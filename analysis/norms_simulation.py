"""Synthetic volumes tables with a known normative truth, for tests and benchmarks of the norms model.

(The image-level cohort simulator lives in :mod:`morphometry.segment.synthesis`; this one draws
table rows directly.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from morphometry.analysis.norms_shash import shash_quantile


@dataclass(frozen=True)
class SimulatedNorms:
    """Every structure's volume (mm^3) is SHASH distributed with

    mu(age, sex, site) = base (1 - drop (0.3 t + 0.7 t^2)) + sex_offset (male - 1/2) + site_offsets[site],
    sigma(age)         = sd_young (1 + sd_growth t),  t = (age - age_min) / (age_max - age_min),

    skewness ``epsilon`` and tail weight ``delta``; spacing has no effect. A fraction ``outliers``
    of scans are gross errors: their volume is multiplied by a factor drawn from U(0.2, 0.6) or
    U(1.6, 3.0) (a failed segmentation), and marked in the ``planted_outlier`` column.
    """

    n_scans: int = 5000
    age_min: float = 20.0
    age_max: float = 90.0
    base: float = 4000.0
    drop: float = 0.3
    sex_offset: float = 200.0
    sd_young: float = 250.0
    sd_growth: float = 1.0
    epsilon: float = 0.4
    delta: float = 1.0
    site_offsets: tuple[float, ...] = (0.0,)
    outliers: float = 0.0
    structures: tuple[str, ...] = ("left_hippocampus",)
    method: str = "synthseg+"

    def t(self, ages) -> np.ndarray:
        return (np.asarray(ages, dtype=float) - self.age_min) / (self.age_max - self.age_min)

    def location(self, ages, male, site=None) -> np.ndarray:
        t = self.t(ages)
        offsets = np.asarray(self.site_offsets) - np.mean(self.site_offsets)
        shift = 0.0 if site is None else offsets[np.asarray(site)]
        curve = self.base * (1.0 - self.drop * (0.3 * t + 0.7 * t**2))
        return curve + self.sex_offset * (np.asarray(male) - 0.5) + shift

    def scale(self, ages) -> np.ndarray:
        return self.sd_young * (1.0 + self.sd_growth * self.t(ages))

    def centile(self, q_percent: float, ages, male, site=None) -> np.ndarray:
        """The planted centile ``q_percent`` (mm^3) at the average site unless ``site`` is given."""
        return shash_quantile(q_percent / 100.0, self.location(ages, male, site), self.scale(ages), self.epsilon,
                              self.delta)


def simulate_norms_table(planted: SimulatedNorms, rng: np.random.Generator, n_scans: int | None = None) -> pd.DataFrame:
    """A joined volumes + covariates table (age, sex, site, spacing) drawn from ``planted``; one
    scan per subject. ``n_scans`` overrides ``planted.n_scans``."""
    n = planted.n_scans if n_scans is None else n_scans
    age = rng.uniform(planted.age_min, planted.age_max, n)
    male = rng.integers(0, 2, n)
    site = rng.integers(0, len(planted.site_offsets), n)
    spacing = rng.uniform(0.8, 1.3, (n, 3))
    thick = rng.integers(0, 3, n)
    spacing[np.arange(n), thick] = rng.uniform(1.0, 8.0, n)
    table = pd.DataFrame({
        "scan_id": [f"scan{i:07d}" for i in range(n)], "subject_id": [f"sub{i:07d}" for i in range(n)],
        "method": planted.method, "spacing_x_mm": spacing[:, 0], "spacing_y_mm": spacing[:, 1],
        "spacing_z_mm": spacing[:, 2], "slice_spacing_mm": spacing.max(axis=1), "age": age,
        "sex": np.where(male == 1, "M", "F"),
        "site": np.array([f"site{k + 1}" for k in range(len(planted.site_offsets))])[site]})
    bad = rng.uniform(size=n) < planted.outliers
    factor = np.where(rng.uniform(size=n) < 0.5, rng.uniform(0.2, 0.6, n), rng.uniform(1.6, 3.0, n))
    mu, sigma = planted.location(age, male, site), planted.scale(age)
    for s in planted.structures:
        q = rng.uniform(size=n)
        v = shash_quantile(q, mu, sigma, planted.epsilon, planted.delta)
        table[s] = np.where(bad, v * factor, v)
    table["planted_outlier"] = bad
    return table
