"""The planted age model of the cohort simulator and its realisation on a label map.

Planted model (per subject, volumes relative to the subject's base anatomy, which stands for age
``reference_age``): for every structure k other than CSF,

    V_k(age, sex) = V_k(base) * exp(m_sex * [a_k * (age - reference_age) / 10
                                             + b_k * (max(0, age - knee_age) / 10)^2])

with a_k the log-volume change per decade at all ages, b_k the extra change after the knee age
(per decade squared: faster shrinkage after 60 for hippocampus, amygdala and cortex, faster growth
of the ventricles), m_sex = ``male_rate_factor`` for men and 1 for women. Between-subject
variance that grows with age (for normative models): a subject's structure (left and right
together) may deviate by the extra factor ``exp(s(age) z_k)``, ``z_k ~ N(0, 1)`` drawn once per
subject and bilateral structure, ``s(age) = deviation_sd + deviation_sd_per_decade *
max(0, age - reference_age) / 10`` (both 0 by default: no deviation). The population curves are
those of the median subject (z = 0). Sex also sets the head
size of the base anatomy (women ``female_head_scale`` times smaller linearly, before a per-subject
jitter). The intracranial volume is constant with age, so extra-cerebral CSF (label 24) is the
remainder: V_csf(age) = ICV - sum of the other structures, and ``total_intracranial`` = ICV.

Realisation (``age_label_map``): exact voxel counts by moving structure boundaries. Ventricles grow
into the nearest brain tissue; then each tissue structure shrinks (or grows) at its boundary
facing a "sink" label, in an order where every sink is handled after the structures that feed it:
deep grey nuclei -> cerebral white matter of their side -> cortex -> CSF; cerebellar white matter
-> cerebellar cortex -> CSF; hippocampus, amygdala, brain stem -> CSF. Voxels are taken in order of
distance to the sink (ties broken by a fixed per-subject jitter), so atrophy thins the cortex from
the pial side and the white matter from the cortical side, and volumes match round(V_k) voxels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

from morphometry.errors import DataError
from morphometry.labels import BILATERAL_STRUCTURES, STRUCTURES, SYNTHSEG_2, TOTAL_INTRACRANIAL, bilateral_name
from morphometry.segment.synthesis.generation_labels import GENERATION_LABELS

CSF = 24
VENTRICLES = (4, 43, 5, 44, 14, 15)

# bilateral (or neutral) structure name -> (a: per decade, b: per decade^2 after the knee)
DEFAULT_RATES: tuple[tuple[str, float, float], ...] = (
    ("cerebral_white_matter", -0.005, -0.025),
    ("cerebral_cortex", -0.025, -0.015),
    ("lateral_ventricle", 0.10, 0.06),
    ("inferior_lateral_ventricle", 0.10, 0.08),
    ("cerebellum_white_matter", -0.010, -0.010),
    ("cerebellum_cortex", -0.015, -0.010),
    ("thalamus", -0.020, -0.010),
    ("caudate", -0.010, -0.010),
    ("putamen", -0.020, -0.010),
    ("pallidum", -0.015, -0.005),
    ("third_ventricle", 0.08, 0.04),
    ("fourth_ventricle", 0.03, 0.02),
    ("brain_stem", -0.005, -0.005),
    ("hippocampus", -0.010, -0.040),
    ("amygdala", -0.010, -0.030),
    ("accumbens_area", -0.020, -0.010),
    ("ventral_dc", -0.010, -0.005),
)

# (structure label, sink label) per side, in processing order (sinks come after their sources)
_SINKS = (
    (10, 2), (11, 2), (12, 2), (13, 2), (26, 2), (28, 2), (49, 41), (50, 41), (51, 41), (52, 41), (58, 41), (60, 41),
    (17, CSF), (18, CSF), (53, CSF), (54, CSF), (16, CSF),
    (2, 3), (41, 42), (3, CSF), (42, CSF), (7, 8), (46, 47), (8, CSF), (47, CSF),
)


@dataclass(frozen=True)
class PlantedAgeingModel:
    """The planted age model (see the module docstring); ages in years."""

    reference_age: float = 20.0
    knee_age: float = 60.0
    male_rate_factor: float = 1.15
    female_head_scale: float = 0.96
    head_scale_jitter: float = 0.04  # subject linear scale ~ U(1 - j, 1 + j) times the sex scale
    subject_nonlin_std: float = 1.0  # velocity std of the subject's base deformation
    rates: tuple[tuple[str, float, float], ...] = DEFAULT_RATES
    deviation_sd: float = 0.0  # SD of a subject's log-volume deviation at reference_age
    deviation_sd_per_decade: float = 0.0  # its growth per decade after reference_age

    def deviation_scale(self, age: float) -> float:
        """s(age): SD of the log-volume deviation of subjects at ``age`` (years)."""
        return self.deviation_sd + self.deviation_sd_per_decade * max(0.0, age - self.reference_age) / 10.0

    def log_factor(self, structure: str, age: float, sex: str, deviation: float = 0.0) -> float:
        """log(V(age) / V(base)) of one structure (snake_case name, either side) for a subject
        whose deviation of that structure is ``deviation`` (z_k, standard normal units)."""
        rates = {name: (a, b) for name, a, b in self.rates}
        key = bilateral_name(structure)
        if key not in rates:
            raise DataError(f"no planted age effect for structure {structure!r}")
        a, b = rates[key]
        m = self.male_rate_factor if sex == "M" else 1.0
        late = max(0.0, age - self.knee_age) / 10.0
        return m * (a * (age - self.reference_age) / 10.0 + b * late * late) + self.deviation_scale(age) * deviation

    def volumes(self, base_volumes: Mapping[str, float], age: float, sex: str,
                deviations: Mapping[str, float] | None = None) -> dict[str, float]:
        """True volumes (mm^3) of every structure and ``total_intracranial`` at ``age`` for a
        subject of ``sex`` ("F"/"M") whose base anatomy has ``base_volumes`` (mm^3, all
        STRUCTURES) and whose deviations are ``deviations`` (bilateral name -> z; none: 0)."""
        icv = float(sum(base_volumes[s] for s in STRUCTURES))
        dev = deviations or {}
        out = {s: float(base_volumes[s]) * float(np.exp(self.log_factor(s, age, sex, dev.get(bilateral_name(s), 0.0))))
               for s in STRUCTURES if s != "csf"}
        out["csf"] = icv - sum(out.values())
        out[TOTAL_INTRACRANIAL] = icv
        return out

    def population_curves(self, mean_base: Mapping[str, Mapping[str, float]], ages) -> dict[str, np.ndarray]:
        """The planted mean volume (mm^3) at ``ages`` (years) of every structure, of
        ``total_intracranial`` and of the left + right sums (bilateral names), averaged with equal
        weights over the sexes in ``mean_base`` (sex -> mean base volumes of that sex's subjects):
        the quantity a sex-averaged ageing fit of the cohort estimates. ``volumes`` is linear in
        the base volumes, so the mean of the subjects' curves is the curve of the mean base."""
        ages = np.asarray(ages, dtype=float)
        per_sex = [[self.volumes(base, float(a), sex) for a in ages] for sex, base in mean_base.items()]
        names = [*STRUCTURES, TOTAL_INTRACRANIAL]
        out = {n: np.mean([[v[n] for v in curve] for curve in per_sex], axis=0) for n in names}
        for name, (left, right) in BILATERAL_STRUCTURES.items():
            out[name] = out[left] + out[right]
        return out

    def to_json(self) -> dict:
        return {
            "formula": "V_k(age, sex) = V_k(base) * exp(m_sex * (a_k * (age - reference_age) / 10 "
                       "+ b_k * (max(0, age - knee_age) / 10)^2) + s(age) z_k); s(age) = deviation_sd + "
                       "deviation_sd_per_decade * max(0, age - reference_age) / 10, z_k ~ N(0, 1) per subject "
                       "and bilateral structure; csf = ICV - sum of other structures; "
                       "total_intracranial = ICV (constant)",
            "m_sex": {"F": 1.0, "M": self.male_rate_factor},
            **{k: v for k, v in asdict(self).items() if k != "rates"},
            "rates": {name: {"a_per_decade": a, "b_per_decade2": b} for name, a, b in self.rates},
        }


def structure_counts(labels: np.ndarray) -> dict[int, int]:
    """Voxel count of every SynthSeg 2.0 target label of a generation-label map."""
    targets = GENERATION_LABELS.target_lut[labels]
    counts = np.bincount(targets.ravel(), minlength=int(SYNTHSEG_2.values.max()) + 1)
    return {int(v): int(counts[v]) for v in SYNTHSEG_2.values}


def volumes_mm3(labels: np.ndarray, voxel_mm3: float) -> dict[str, float]:
    """Volumes (mm^3) of the STRUCTURES and ``total_intracranial`` of a generation-label map."""
    counts = structure_counts(labels)
    vols = {lab.name: counts[lab.value] * voxel_mm3 for lab in SYNTHSEG_2.labels if lab.value != 0}
    vols[TOTAL_INTRACRANIAL] = float(sum(vols.values()))
    return vols


def target_counts(model: PlantedAgeingModel, base_counts: Mapping[int, int], age: float, sex: str,
                  deviations: Mapping[str, float] | None = None) -> dict[int, int]:
    """Planted voxel count of every structure label except CSF and background (``deviations``:
    the subject's z per bilateral structure name, none: 0)."""
    names = {lab.value: lab.name for lab in SYNTHSEG_2.labels}
    dev = deviations or {}
    return {v: int(round(n * np.exp(model.log_factor(names[v], age, sex, dev.get(bilateral_name(names[v]), 0.0)))))
            for v, n in base_counts.items() if v not in (0, CSF)}


class _Editor:
    """Boundary moves on one label map (in place), with a fixed tie-breaking jitter."""

    def __init__(self, labels: np.ndarray, jitter: np.ndarray, margin: int = 15):
        self.labels = labels
        self.targets = GENERATION_LABELS.target_lut[labels].astype(np.int16)
        self.jitter = jitter
        self.margin = margin

    def _box(self, mask: np.ndarray) -> tuple[slice, ...]:
        idx = [np.nonzero(np.any(mask, axis=tuple(b for b in range(3) if b != a)))[0] for a in range(3)]
        return tuple(slice(max(int(i[0]) - self.margin, 0), int(i[-1]) + self.margin + 1) for i in idx)

    def _take(self, box, candidates: np.ndarray, distance: np.ndarray, n: int, new_label: int, what: str) -> None:
        where = np.nonzero(candidates)
        if len(where[0]) < n:
            raise DataError(f"cannot realise the planted volume of {what}: {n} voxels needed, "
                            f"{len(where[0])} available")
        priority = distance[where] + self.jitter[box][where]
        chosen = np.argpartition(priority, n - 1)[:n] if n < len(priority) else np.arange(len(priority))
        sel = tuple(w[chosen] + b.start for w, b in zip(where, box))
        self.labels[sel] = new_label
        self.targets[sel] = GENERATION_LABELS.target_lut[new_label]

    def move(self, structure: int, target: int, source_or_sink: np.ndarray, sink_label: int) -> None:
        """Bring ``structure`` to ``target`` voxels: shrink into ``sink_label`` at the boundary
        nearest to the sink, or grow over the nearest voxels allowed by ``source_or_sink``."""
        mask = self.targets == structure
        n = int(target - mask.sum())
        if n == 0:
            return
        full = tuple(slice(0, s) for s in self.labels.shape)
        for box in (self._box(mask), full):
            if n < 0:
                sink = source_or_sink[box] & (self.targets[box] != structure)
                if not sink.any() and box != full:
                    continue
                distance = ndi.distance_transform_edt(~sink)
                self._take(box, mask[box], distance, -n, sink_label, f"label {structure}")
                return
            allowed = source_or_sink[box]
            if allowed.sum() < n and box != full:
                continue
            distance = ndi.distance_transform_edt(~mask[box])
            self._take(box, allowed, distance, n, structure, f"label {structure}")
            return


def age_label_map(base: np.ndarray, targets: Mapping[int, int], jitter: np.ndarray) -> np.ndarray:
    """A copy of the generation-label map ``base`` whose structures have exactly ``targets``
    voxels (structure label -> count, every label but background and CSF); ``jitter`` (same
    shape, values in [0, 0.5)) breaks distance ties."""
    editor = _Editor(base.copy(), jitter)
    tissue_targets = [v for v in SYNTHSEG_2.values.tolist() if v not in (0, CSF, *VENTRICLES)]
    for v in VENTRICLES:
        tissue = np.isin(editor.targets, tissue_targets)
        editor.move(v, targets[v], tissue if targets[v] > np.count_nonzero(editor.targets == v)
                    else editor.targets == CSF, CSF)
    for structure, sink in _SINKS:
        editor.move(structure, targets[structure], editor.targets == sink, sink)
    return editor.labels
