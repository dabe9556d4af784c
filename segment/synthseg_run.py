"""``mri_synthseg``'s files from one :meth:`Segmenter.segment_many` batch (``morpho synthseg``).

The batch runs as ``morpho segment`` does (one process, networks started once, failures recorded
while the other scans go on, resumable) into a state folder, ``.morpho-synthseg/<key>/`` inside
``--o`` (or beside the ``--o`` file or list). ``<key>`` is a hash of ``--i`` (the image, folder or
list path), of every setting that changes results and of the outputs asked for, so a rerun of the
same command resumes: scans finished earlier are not segmented again (a scan added to the folder
is the only one segmented), failed ones are retried, and so are scans whose input path changed
(an edited list) or whose outputs were deleted since. Runs with other inputs or settings (several
``mri_synthseg`` calls in parallel into one folder) keep separate states. The segmentations,
posteriors and resampled images are then moved from the state folder to the original's names
(converted when the name asks for ``.nii`` or ``.mgz``), and the volumes and QC CSVs are written in
the original's layout from the batch's table, in the original's row order. The state folder keeps
the batch's ``volumes.parquet``/``.csv`` (every column of ``morpho segment``), ``failures.csv`` and
``provenance.json``; delete it to start over.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from morphometry.atomic import atomic_write
from morphometry.errors import InputError
from morphometry.io import strip_image_suffix
from morphometry.segment import journal
from morphometry.segment.batch import SegmentOptions
from morphometry.segment.segmenter import BatchResult, Segmenter
from morphometry.segment.synthseg_files import SynthsegJob, SynthsegPlan, image_suffix
from morphometry.segment.synthseg_tables import (
    write_qc_csv,
    write_subject_qc_csv,
    write_subject_volumes_csv,
    write_volumes_csv,
)

WORK_DIR = ".morpho-synthseg"
MGH_TYPES = (np.uint8, np.int16, np.int32, np.float32)  # voxel types an MGH file holds


@dataclass(frozen=True, eq=False)
class SynthsegRun:
    """What :func:`run_synthseg` did."""

    plan: SynthsegPlan
    work_dir: Path  # the state folder: journal, volumes.parquet, failures.csv, provenance.json
    batch: BatchResult  # the batch's result (every scan of the state folder)
    done: tuple[SynthsegJob, ...]  # jobs whose outputs are in place (this run or an earlier one)

    @property
    def failures(self) -> pd.DataFrame:
        return self.batch.failures

    @property
    def ok(self) -> bool:
        return len(self.done) == len(self.plan.jobs)


def run_synthseg(segmenter: Segmenter, plan: SynthsegPlan, *, progress: bool = True, command=None) -> SynthsegRun:
    """Segment every job of ``plan`` with ``segmenter`` (one method) and write the original's files.

    The CSVs take the layout of the method's network: SynthSeg 1.0 has no ``total intracranial``
    and no ``csf``. ``command``: recorded in the state folder's provenance.json.
    """
    if len(segmenter.method_names) != 1:
        raise InputError(f"mri_synthseg runs one method, got {', '.join(segmenter.method_names)}", setting="methods")
    method = segmenter.method_names[0]
    work = work_folder(plan, segmenter)
    ids = scan_ids(plan.jobs)
    manifest = work / "inputs.csv"
    table = pd.DataFrame({"path": [str(job.image.absolute()) for job in plan.jobs], "scan_id": ids})
    atomic_write(manifest, lambda tmp: table.to_csv(tmp, index=False))
    _forget_stale(work, plan.jobs, ids, method)
    batch = segmenter.segment_many(manifest, work, resume=True, progress=progress,
                                   posteriors=plan.wants_posteriors, resampled=plan.wants_resampled,
                                   command=command)
    rows = {}
    if not batch.volumes.empty:
        mine = batch.volumes[batch.volumes["method"] == method]
        rows = {row["scan_id"]: row for _, row in mine.iterrows()}
    done = []
    last = {scan_id: i for i, scan_id in enumerate(ids)}  # an image listed twice: copies, then the move
    for i, (job, scan_id) in enumerate(zip(plan.jobs, ids)):
        if scan_id in rows:
            _place_outputs(work, job, scan_id, method, keep=i < last[scan_id])
            done.append(job)
    results = [(job, rows[sid]) for job, sid in zip(plan.jobs, ids) if sid in rows]
    _write_tables(plan, results, segmenter.options, v1=segmenter.synthseg_version(method) == "1.0")
    return SynthsegRun(plan, work, batch, tuple(done))


def work_folder(plan: SynthsegPlan, segmenter: Segmenter) -> Path:
    """``<anchor>/.morpho-synthseg/<key>``: key = hash of --i, result settings and outputs asked for."""
    doc = {"source": str(plan.source.absolute()), "settings": segmenter.fingerprint(),
           "posteriors": plan.wants_posteriors, "resampled": plan.wants_resampled}
    key = hashlib.sha1(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]
    return plan.anchor / WORK_DIR / key


def scan_ids(jobs: tuple[SynthsegJob, ...]) -> list[str]:
    """The batch's scan_ids: the file names without extension; a name that several inputs share
    (lists of ``sub-*/anat/t1.nii.gz``) gets a hash of each input's path appended."""
    stems = [strip_image_suffix(job.image.name) for job in jobs]
    return [stem if stems.count(stem) == 1 else
            f"{stem}_{hashlib.sha1(str(job.image.absolute()).encode()).hexdigest()[:8]}"
            for stem, job in zip(stems, jobs)]


def batch_files(work: Path, scan_id: str, method: str) -> dict[str, Path]:
    """Where a batch (``morphometry.segment.batch.SegmentBatch``) writes a scan's images."""
    name = f"{scan_id}_{method}.nii.gz"
    return {"segmentation": work / "seg" / name, "posteriors": work / "posteriors" / name,
            "resampled": work / "resampled" / f"{scan_id}.nii.gz"}


def _forget_stale(work: Path, jobs: tuple[SynthsegJob, ...], ids: list[str], method: str) -> None:
    """Scans the journal lists as finished but that another input now has the name of, or whose
    outputs are gone from both the state folder and their destination (moved, then deleted), are
    marked failed, so the batch segments them again."""
    finished = journal.finished(work, [method])
    paths = {entry["scan_id"]: entry["path"] for entry in journal.entries(work)}
    for job, scan_id in zip(jobs, ids):
        if scan_id not in finished:
            continue
        files = batch_files(work, scan_id, method)
        lost = [kind for kind, dest in (("segmentation", job.segmentation), ("posteriors", job.posteriors))
                if dest is not None and not files[kind].exists() and not dest.exists()]
        path = str(job.image.absolute())
        if paths[scan_id] != path:
            cause = f"input was {paths[scan_id]}"
        elif lost:
            cause = f"{' and '.join(lost)} missing"
        else:
            continue
        journal.record(work, {"scan_id": scan_id, "path": path, "warnings": [], "status": "failed",
                              "stage": "outputs", "error": f"{cause}; segmenting again"})


def _place_outputs(work: Path, job: SynthsegJob, scan_id: str, method: str, keep: bool) -> None:
    files = batch_files(work, scan_id, method)
    for kind, dest in (("segmentation", job.segmentation), ("posteriors", job.posteriors),
                       ("resampled", job.resampled)):
        if dest is not None and files[kind].exists():
            place_image(files[kind], dest, keep)


def place_image(src: Path, dest: Path, keep: bool = False) -> None:
    """Move (``keep``: copy) a NIfTI image to ``dest``, converting it when ``dest`` asks for another
    format (``.nii`` / ``.nii.gz`` / ``.mgz`` / ``.mgh``); ``dest`` appears complete or not at all."""
    suffix = image_suffix(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if suffix == image_suffix(src):
        if not keep:
            try:
                os.replace(src, dest)
                return
            except OSError:  # another file system: copy, then remove
                pass
        atomic_write(dest, lambda tmp: shutil.copyfile(src, tmp), suffix=suffix)
    else:
        img = nib.load(str(src))
        if suffix in (".mgz", ".mgh"):
            data = np.asanyarray(img.dataobj)
            img = nib.MGHImage(data if data.dtype in MGH_TYPES else data.astype(np.float32), img.affine)
        atomic_write(dest, lambda tmp: nib.save(img, str(tmp)), suffix=suffix)
    if not keep:
        src.unlink()


def _write_tables(plan: SynthsegPlan, results: list[tuple[SynthsegJob, pd.Series]], options: SegmentOptions,
                  v1: bool) -> None:
    parc, reference = options.parc, options.parcel_reference
    if plan.volumes_csv is not None:
        write_volumes_csv(plan.volumes_csv, [(job.subject, row) for job, row in results], parc, v1, reference)
    if plan.qc_csv is not None and options.qc:
        write_qc_csv(plan.qc_csv, [(job.subject, row) for job, row in results])
    for job, row in results:
        if job.volumes_csv is not None:
            write_subject_volumes_csv(job.volumes_csv, job.subject, row, parc, v1, reference)
        if job.qc_csv is not None and options.qc:
            write_subject_qc_csv(job.qc_csv, job.subject, row)
