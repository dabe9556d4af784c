"""A reference population for normative models, drawn as table rows from a cohort's planted model.

Per scan (one per subject): sex (equal odds), age ~ U(``min_age``, ``max_age``), base volumes =
the mean base volumes of that sex in the image cohort (``subjects.csv``) times ``h^3`` with ``h ~
U(1 - j, 1 + j)``, ``j`` the planted head-scale jitter; the planted ageing with the subject's
deviations z ~ N(0, 1) per bilateral structure (SD growing with age, see
:mod:`morphometry.segment.synthesis.planted_ageing`); then, as in ``measured_volumes`` of the
cohort, a site drawn uniformly with the cohort's planted site offsets, and failed segmentations
with probability ``failure_fraction``. Spacing is 1 mm (no acquisition effect is planted).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from morphometry.labels import BILATERAL_STRUCTURES, STRUCTURES, bilateral_name
from morphometry.segment.synthesis.cohort import CohortConfig, measured_volumes


def reference_table(config: CohortConfig, mean_base: Mapping[str, Mapping[str, float]], n_scans: int,
                    rng: np.random.Generator) -> pd.DataFrame:
    """``n_scans`` rows (scan_id, subject_id, method ``measured``, age, sex, site, planted_failure,
    spacing columns, every structure and ``total_intracranial`` in mm^3). ``mean_base``: sex ->
    mean base volumes (mm^3) of the cohort's subjects of that sex."""
    model = config.ageing
    offsets = config.site_offsets()
    names = list(dict.fromkeys(bilateral_name(s) for s in STRUCTURES))
    sexes = sorted(mean_base)
    rows = []
    for i in range(n_scans):
        sex = sexes[int(rng.integers(len(sexes)))]
        age = float(rng.uniform(config.min_age, config.max_age))
        head = rng.uniform(1 - model.head_scale_jitter, 1 + model.head_scale_jitter) ** 3
        base = {s: mean_base[sex][s] * head for s in STRUCTURES}
        deviations = dict(zip(names, rng.normal(size=len(names)).tolist()))
        site = f"site-{int(rng.integers(1, config.sites + 1))}"
        failed = bool(rng.uniform() < config.failure_fraction)
        volumes = measured_volumes(model.volumes(base, age, sex, deviations), offsets[site], failed, rng)
        rows.append({"scan_id": f"ref-{i + 1:06d}", "subject_id": f"ref-{i + 1:06d}", "method": "measured",
                     "age": round(age, 2), "sex": sex, "site": site, "planted_failure": failed,
                     "spacing_x_mm": 1.0, "spacing_y_mm": 1.0, "spacing_z_mm": 1.0, **volumes})
    return pd.DataFrame(rows)


def planted_site_offsets_mm3(config: CohortConfig, table: pd.DataFrame, structures) -> pd.DataFrame:
    """The planted site offsets as additive effects (mm^3, centred over sites), as the norms
    model estimates them: per structure, the median volume of ``table``'s clean scans before the
    offset times (exp(offset) - 1) (left and right share the offset; a left+right name sums them)."""
    offsets = config.site_offsets()
    rows = []
    for structure in structures:
        parts = BILATERAL_STRUCTURES.get(structure, (structure,))
        clean = table[~table["planted_failure"]]
        level = sum(float((clean[p] / np.exp(clean["site"].map(lambda s, p=p: offsets[s][bilateral_name(p)]))).median())
                    for p in parts)
        per_site = {site: level * (np.exp(offsets[site][bilateral_name(parts[0])]) - 1.0) for site in offsets}
        centre = np.mean(list(per_site.values()))
        rows += [{"structure": structure, "site": site, "planted_offset_mm3": v - centre}
                 for site, v in per_site.items()]
    return pd.DataFrame(rows)
