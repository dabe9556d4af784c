"""The cohort simulator behind ``morpho simulate-cohort``: subjects with planted ageing, scanned
with clinical protocols.

Per subject (independent random stream spawned from the seed): sex, a base anatomy (the anatomy
scaled by a sex- and subject-dependent head size and deformed by a mild velocity field), baseline
age ~ U(20, 90 - follow-up) and follow-up sessions 1-3 years apart. Per session: the base anatomy
aged with :func:`morphometry.segment.synthesis.planted_ageing.age_label_map` to the planted volumes,
its 1 mm truth (SynthSeg 2.0 labels) written to ``truth/``, then 1..``max_protocols`` acquisitions
written to ``scans/``. Outputs: ``manifest.csv``, ``truth_volumes.parquet`` and ``.csv`` (VolumesTable schema,
method "truth", one row per scan), ``subjects.csv`` (sex, head scale and base volumes in mm^3 of
each subject), ``planted_ageing.json`` and ``planted_trajectories.csv`` (the planted population
curve of every structure: structure, age_years, volume_mm3, on a half-year grid).

For normative models (``sites`` > 1 or ``failure_fraction`` > 0) the cohort also gets what a
segmenter at several sites reports: each session is scanned at a site drawn uniformly
(``site`` column of the manifest, ``site-1`` ...); every site has a planted measurement offset
per structure (left and right alike), a log-volume factor drawn from N(0, ``site_offset_sd``^2)
(in ``planted_ageing.json``, ``site_offsets``); and a fraction ``failure_fraction`` of scans are
failed segmentations (``planted_failure`` in the manifest), each of their structures multiplied
by a factor from U(0.2, 0.6) or U(1.6, 3.0). ``measured_volumes.parquet`` and ``.csv`` hold these
volumes (method ``measured``): truth x site factor x failure factor, ``total_intracranial`` the sum.
The planted between-subject variance growing with age is the ageing model's ``deviation_sd`` and
``deviation_sd_per_decade`` (:mod:`morphometry.segment.synthesis.planted_ageing`), realised in the
truth label maps.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from morphometry.atomic import atomic_write
from morphometry.errors import InputError
from morphometry.labels import STRUCTURES, TOTAL_INTRACRANIAL, bilateral_name
from morphometry.progress import Progress
from morphometry.segment.synthesis.anatomy import Anatomy, structure_targets
from morphometry.segment.synthesis.planted_ageing import (
    PlantedAgeingModel,
    age_label_map,
    structure_counts,
    target_counts,
    volumes_mm3,
)
from morphometry.segment.synthesis.priors import SpatialPriors, Uniform
from morphometry.segment.synthesis.protocols import Protocol, ProtocolPriors, acquire, sample_protocol
from morphometry.segment.synthesis.spatial import sample_deformation, source_coordinates, warp_labels
from morphometry.tables import order_columns, table_metadata, write_parquet


@dataclass(frozen=True)
class CohortConfig:
    """Size and design of a simulated cohort (ages in years)."""

    subjects: int = 4
    sessions_per_subject: int = 1
    max_protocols: int = 3
    seed: int = 0
    min_age: float = 20.0
    max_age: float = 90.0
    follow_up_years: Uniform = Uniform(1.0, 3.0)
    ageing: PlantedAgeingModel = field(default_factory=PlantedAgeingModel)
    protocols: ProtocolPriors = field(default_factory=ProtocolPriors)
    sites: int = 1
    site_offset_sd: float = 0.05  # SD of a site's log-volume measurement offset per structure
    failure_fraction: float = 0.0

    def __post_init__(self):
        for name in ("subjects", "sessions_per_subject", "max_protocols", "sites"):
            if getattr(self, name) < 1:
                raise InputError(f"must be at least 1 (got {getattr(self, name)})", setting=name)
        if not 0.0 <= self.failure_fraction < 0.5:
            raise InputError(f"must lie in [0, 0.5), not {self.failure_fraction}", setting="failure_fraction")
        if self.site_offset_sd < 0:
            raise InputError(f"must be >= 0, not {self.site_offset_sd}", setting="site_offset_sd")
        span = (self.sessions_per_subject - 1) * self.follow_up_years.high
        if self.max_age - span < self.min_age:
            raise InputError(f"{self.sessions_per_subject} sessions do not fit between ages "
                             f"{self.min_age:g} and {self.max_age:g}", setting="sessions_per_subject")

    @property
    def measured(self) -> bool:
        """Whether the cohort gets sites, failures and ``measured_volumes``."""
        return self.sites > 1 or self.failure_fraction > 0

    def site_offsets(self) -> dict[str, dict[str, float]]:
        """Planted log-volume offset of every site and bilateral structure (seeded by ``seed``)."""
        rng = np.random.default_rng([self.seed, 7919])
        names = list(dict.fromkeys(bilateral_name(s) for s in STRUCTURES))
        return {f"site-{k + 1}": dict(zip(names, rng.normal(0.0, self.site_offset_sd, len(names)).tolist()))
                for k in range(self.sites)}


def subject_deviations(model: PlantedAgeingModel, rng: np.random.Generator) -> dict[str, float]:
    """A subject's z per bilateral structure (empty when the model plants no deviation, so that
    the random stream is that of a cohort without it)."""
    if model.deviation_sd == 0 and model.deviation_sd_per_decade == 0:
        return {}
    names = list(dict.fromkeys(bilateral_name(s) for s in STRUCTURES))
    return dict(zip(names, rng.normal(size=len(names)).tolist()))


def measured_volumes(volumes: dict, site_offsets: dict[str, float], failed: bool, rng: np.random.Generator) -> dict:
    """Volumes (mm^3) as a segmenter at a site with ``site_offsets`` reports them; a failed scan's
    structures are each multiplied by a factor from U(0.2, 0.6) or U(1.6, 3.0)."""
    out = {}
    for s in STRUCTURES:
        v = volumes[s] * np.exp(site_offsets[bilateral_name(s)])
        if failed:
            v *= rng.uniform(0.2, 0.6) if rng.uniform() < 0.5 else rng.uniform(1.6, 3.0)
        out[s] = float(v)
    out[TOTAL_INTRACRANIAL] = float(sum(out.values()))
    return out

@dataclass(frozen=True, eq=False)
class Subject:
    """A subject's base anatomy (generation labels, at the reference age) and facts."""

    subject_id: str
    sex: str
    head_scale: float
    labels: np.ndarray
    jitter: np.ndarray  # tie-breaking of the boundary moves, in [0, 0.5)


def make_subject(anatomy: Anatomy, model: PlantedAgeingModel, subject_id: str, rng: np.random.Generator) -> Subject:
    """Sex, head size and a mildly deformed copy of the anatomy."""
    sex = "F" if rng.uniform() < 0.5 else "M"
    scale = (model.female_head_scale if sex == "F" else 1.0) * rng.uniform(1 - model.head_scale_jitter,
                                                                           1 + model.head_scale_jitter)
    priors = SpatialPriors(rotation_deg=Uniform(0, 0), scaling=Uniform(1 / scale, 1 / scale),
                           shearing=Uniform(0, 0), nonlin_std=Uniform(model.subject_nonlin_std, model.subject_nonlin_std))
    deformation = sample_deformation(rng, priors, anatomy.labels.shape)
    labels = warp_labels(np.asarray(anatomy.labels), source_coordinates(deformation, anatomy.labels.shape))
    jitter = rng.uniform(0.0, 0.5, labels.shape).astype(np.float32)
    return Subject(subject_id, sex, float(scale), labels.astype(np.int16), jitter)


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, description: str) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header["descrip"] = description[:79].encode()
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    payload = gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)
    atomic_write(path, lambda tmp: tmp.write_bytes(payload))


def _acquisition_columns(data: np.ndarray, affine: np.ndarray) -> dict:
    from morphometry.io import ScanInfo
    from morphometry.orientation import ras_alignment

    zooms = tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0))
    alignment = ras_alignment(affine)
    info = ScanInfo(tuple(data.shape), zooms, tuple(zooms[p] for p in alignment.perm), alignment)  # type: ignore[arg-type]
    return info.acquisition_columns()


def _session_ages(config: CohortConfig, rng: np.random.Generator) -> list[float]:
    gaps = config.follow_up_years.sample(rng, config.sessions_per_subject - 1)
    span = (config.sessions_per_subject - 1) * config.follow_up_years.high
    baseline = rng.uniform(config.min_age, config.max_age - span)
    return [round(float(a), 2) for a in baseline + np.concatenate([[0.0], np.cumsum(gaps)])]


def simulate_cohort(out_dir: str | Path, anatomy: Anatomy, config: CohortConfig = CohortConfig(), *,
                    progress: bool = True) -> pd.DataFrame:
    """Simulate the cohort into ``out_dir`` and return the manifest. Progress (subjects done, with
    rate and time left) goes to the ``morphometry`` logger; ``progress=False`` silences it."""
    out = Path(out_dir)
    if (out / "manifest.csv").exists():
        raise InputError(f"{out}: already holds a simulated cohort (manifest.csv); choose an empty folder")
    manifest, truth_rows, subject_rows, measured_rows = [], [], [], []
    streams = np.random.SeedSequence(config.seed).spawn(config.subjects)
    with Progress(config.subjects, "simulate-cohort", "subject", enabled=progress) as bar:
        for i, stream in enumerate(streams):
            subject_row = _simulate_subject(out, anatomy, config, f"sub-{i + 1:03d}", np.random.default_rng(stream),
                                            manifest, truth_rows, measured_rows)
            subject_rows.append(subject_row)
            bar.update()
    _write_outputs(out, config, anatomy, manifest, truth_rows, subject_rows, measured_rows)
    return pd.DataFrame(manifest)


def _simulate_subject(out: Path, anatomy: Anatomy, config: CohortConfig, subject_id: str, rng: np.random.Generator,
                      manifest: list, truth_rows: list, measured_rows: list) -> dict:
    """Write one subject's truth maps and scans, append their manifest, truth-volume and (with
    sites or failures) measured-volume rows, and return the subject's row (sex, head scale, base
    volumes, planted deviations)."""
    voxel_mm = anatomy.voxel_size
    voxel_mm3 = voxel_mm ** 3
    model = config.ageing
    subject = make_subject(anatomy, model, subject_id, rng)
    base_counts = structure_counts(subject.labels)
    base_volumes = volumes_mm3(subject.labels, voxel_mm3)
    deviations = subject_deviations(model, rng)
    offsets = config.site_offsets() if config.measured else {}
    for k, age in enumerate(_session_ages(config, rng)):
        session_id = f"ses-{k + 1:02d}"
        site = f"site-{int(rng.integers(1, config.sites + 1))}" if config.measured else None
        aged = age_label_map(subject.labels, target_counts(model, base_counts, age, subject.sex, deviations),
                             subject.jitter)
        truth_path = f"truth/{subject.subject_id}_{session_id}.nii.gz"
        _write_nifti(out / truth_path, structure_targets(aged), anatomy.affine,
                     f"truth {subject.subject_id} {session_id} age={age:g}")
        volumes = volumes_mm3(aged, voxel_mm3)
        for run in range(int(rng.integers(1, config.max_protocols + 1))):
            protocol = sample_protocol(rng, config.protocols, aged.shape, voxel_mm)
            scan_id = f"{subject.subject_id}_{session_id}_run-{run + 1}_{protocol.contrast}"
            data, affine = acquire(aged, anatomy.affine, protocol, rng)
            path = f"scans/{scan_id}.nii.gz"
            _write_nifti(out / path, data, affine, _description(protocol))
            ids = {"path": path, "scan_id": scan_id, "subject_id": subject.subject_id, "session_id": session_id}
            manifest.append({**ids, "age": age, "sex": subject.sex, **protocol.columns(),
                             "orientation": "".join(_axcodes(affine)), "truth_path": truth_path})
            truth_rows.append({**ids, "method": "truth", "model_id": "planted",
                               **_acquisition_columns(data, affine), **volumes})
            if config.measured:
                failed = bool(rng.uniform() < config.failure_fraction)
                manifest[-1].update(site=site, planted_failure=failed)
                measured_rows.append({**truth_rows[-1], "method": "measured",
                                      **measured_volumes(volumes, offsets[site], failed, rng)})
    return {"subject_id": subject.subject_id, "sex": subject.sex, "head_scale": round(subject.head_scale, 5),
            **base_volumes, **{f"z_{name}": z for name, z in deviations.items()}}


def _description(protocol: Protocol) -> str:
    a = protocol.slice_axis
    return (f"morpho simulate-cohort {protocol.contrast} spacing={protocol.spacing_mm[a]:.2f}mm "
            f"thickness={protocol.thickness_mm[a]:.2f}mm")


def _axcodes(affine: np.ndarray) -> tuple[str, ...]:
    import nibabel as nib

    return nib.aff2axcodes(affine)


def planted_trajectories(config: CohortConfig, subjects: pd.DataFrame) -> pd.DataFrame:
    """Long table (structure, age_years, volume_mm3) of the planted population curves of a cohort
    whose ``subjects`` table has the sex and base volumes of every subject."""
    ages = np.arange(config.min_age, config.max_age + 0.25, 0.5)
    mean_base = {sex: part[[*STRUCTURES]].mean().to_dict() for sex, part in subjects.groupby("sex")}
    curves = config.ageing.population_curves(mean_base, ages)
    return pd.DataFrame({"structure": np.repeat(list(curves), len(ages)), "age_years": np.tile(ages, len(curves)),
                         "volume_mm3": np.concatenate(list(curves.values()))})


def _write_outputs(out: Path, config: CohortConfig, anatomy: Anatomy, manifest: list, truth_rows: list,
                   subject_rows: list, measured_rows: list) -> None:
    def csv(name: str, df: pd.DataFrame) -> None:
        atomic_write(out / name, lambda tmp: df.to_csv(tmp, index=False))

    truth = order_columns(pd.DataFrame(truth_rows))
    meta = table_metadata({"source": "morpho simulate-cohort", "seed": config.seed})
    write_parquet(truth, out / "truth_volumes.parquet", meta)
    csv("truth_volumes.csv", truth)
    subjects = pd.DataFrame(subject_rows)
    deviation_columns = [c for c in subjects.columns if c.startswith("z_")]
    columns = ["subject_id", "sex", "head_scale", TOTAL_INTRACRANIAL, *STRUCTURES, *deviation_columns]
    csv("subjects.csv", subjects[columns])
    if config.measured:
        measured = order_columns(pd.DataFrame(measured_rows))
        write_parquet(measured, out / "measured_volumes.parquet", meta)
        csv("measured_volumes.csv", measured)
    csv("manifest.csv", pd.DataFrame(manifest))
    csv("planted_trajectories.csv", planted_trajectories(config, pd.DataFrame(subject_rows)))
    planted = {"model": config.ageing.to_json(), "seed": config.seed, "anatomy": anatomy.source,
               "voxel_size_mm": anatomy.voxel_size, "subjects": config.subjects,
               "sessions_per_subject": config.sessions_per_subject,
               "base_volumes": "subjects.csv (mm^3, at reference_age)"}
    if config.measured:
        planted.update(sites=config.sites, site_offset_sd=config.site_offset_sd,
                       failure_fraction=config.failure_fraction, site_offsets=config.site_offsets(),
                       measured_volumes="truth x exp(site offset of the bilateral structure) x failure factor "
                                        "(U(0.2, 0.6) or U(1.6, 3.0) per structure of a failed scan)")
    text = json.dumps(planted, indent=2)
    atomic_write(out / "planted_ageing.json", lambda tmp: tmp.write_text(text))
