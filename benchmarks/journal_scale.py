"""The journal at 10^4, 10^5 and 10^6 scans: the previous loose-JSON layout against Parquet parts.

Entries are realistic: one method, the 47 columns of the volumes table (identity, acquisition,
volumes; random values), 1 % failures. Measured per size, each reading in a fresh process (peak
memory is that process's maximum resident set, less the same process right after its imports):

- write: ``journal.record`` of 10^4 entries (entries per second; the same for both layouts), and
  one compaction of those 10^4 loose files into a part (seconds; a batch compacts every 10^4);
- loose: merge as the previous version did (read every JSON file into a list of dicts, then
  ``journal.tables``), and ``finished`` (the resume check) from that list;
- parts: ``journal.merged_tables`` and ``journal.finished`` on the folder a batch leaves: one part
  per 10^4 entries plus up to 10^4 loose files;
- files: the most files in one folder and in all, per layout;
- tables: writing volumes.parquet, volumes.csv and failures.csv from the merged tables (the same
  for both layouts; part of ``morpho merge`` and of the end of a batch).

Folders at 10^6 are made directly as parts (the same writer a compaction uses) plus a tail of 10^4
loose entries; the loose layout is built by ``journal.record`` up to ``--loose-max`` entries
(default 10^5: 10^6 files take about 4 GB of inodes and blocks; pass 1000000 to measure them).

    python benchmarks/journal_scale.py [--sizes 10000 100000 1000000] [--loose-max 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from morphometry.segment import journal
from morphometry.tables import ACQUISITION_COLUMNS, VOLUME_COLUMNS, write_volumes

CHUNK = journal.COMPACT_EVERY


def make_entries(start: int, count: int, seed: int = 0) -> list[dict]:
    """``count`` entries from scan ``start`` on: one synthseg+ row each, 1 % failures."""
    rng = np.random.default_rng([seed, start])
    volumes = rng.uniform(100.0, 500_000.0, (count, len(VOLUME_COLUMNS)))
    made = []
    for k in range(count):
        i = start + k
        scan_id = f"sub-{i:07d}_ses-1_T1w"
        path = f"/cohort/sub-{i:07d}/ses-1/anat/{scan_id}.nii.gz"
        if i % 100 == 99:
            made.append({"scan_id": scan_id, "path": path, "warnings": [], "status": "failed", "stage": "load",
                         "error": f"{path}: not a readable NIfTI/MGZ image"})
            continue
        row = {"scan_id": scan_id, "subject_id": f"sub-{i:07d}", "session_id": "ses-1", "path": path,
               "method": "synthseg+", "model_id": "synthseg-2.0-0123456789ab"}
        row.update(zip(ACQUISITION_COLUMNS, (1.0, 1.0, 1.2, 1.2, "axial", 176, 256, 256)))
        row.update(zip(VOLUME_COLUMNS, volumes[k].tolist()))
        made.append({"scan_id": scan_id, "path": path, "warnings": [], "status": "ok", "rows": [row]})
    return made


def write_loose(folder: Path, start: int, count: int) -> float:
    """Record ``count`` entries as loose files; return the seconds."""
    t0 = time.perf_counter()
    for chunk_start in range(start, start + count, CHUNK):
        for entry in make_entries(chunk_start, min(CHUNK, start + count - chunk_start)):
            journal.record(folder, entry)
    return time.perf_counter() - t0


def write_parts(folder: Path, count: int) -> None:
    """The parts a batch of ``count`` compacted entries leaves, written directly."""
    parts = folder / journal.JOURNAL_DIR / journal.PARTS_DIR
    parts.mkdir(parents=True, exist_ok=True)
    for seq, start in enumerate(range(0, count, CHUNK), 1):
        table = journal._entries_table(make_entries(start, min(CHUNK, count - start)), 0).drop_columns(["_rank"])
        pq.write_table(table, parts / f"part-{seq:08d}.parquet")


def file_counts(folder: Path) -> tuple[int, int]:
    """(most files in one folder, files in all) under the folder's journal."""
    per_dir = [len(files) for _, _, files in os.walk(folder / journal.JOURNAL_DIR)]
    return max(per_dir, default=0), sum(per_dir)


def measure(kind: str, folder: Path) -> dict:
    """One reading in this process: seconds and peak memory above the imports."""
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if kind == "loose-merge":  # the previous version: every entry as a dict, then the tables
        found = [json.loads(p.read_text()) for p in sorted((folder / journal.JOURNAL_DIR).glob("*/*.json"))]
        volumes, failures = journal.tables(found)
    elif kind == "loose-finished":
        found = [json.loads(p.read_text()) for p in sorted((folder / journal.JOURNAL_DIR).glob("*/*.json"))]
        done = {e["scan_id"] for e in found
                if e["status"] == "ok" and {"synthseg+"} <= {r["method"] for r in e["rows"]}}
        volumes, failures = done, ()
    elif kind == "parts-merge":
        volumes, failures = journal.merged_tables([folder])
    elif kind == "parts-finished":
        volumes, failures = journal.finished(folder, ["synthseg+"]), ()
    else:
        raise SystemExit(f"unknown measurement {kind}")
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    t0 = time.perf_counter()
    if kind.endswith("merge"):  # the same for both layouts: volumes.parquet, volumes.csv, failures.csv
        write_volumes(volumes, folder)
        journal.write_failures(failures, folder)
    return {"seconds": seconds, "peak_mib": peak / 1024, "rows": len(volumes), "failures": len(failures),
            "write_seconds": time.perf_counter() - t0}


def in_fresh_process(kind: str, folder: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", kind, str(folder)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--loose-max", type=int, default=100_000)
    parser.add_argument("--measure", nargs=2, metavar=("KIND", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]))))
        return

    root = Path(tempfile.mkdtemp(prefix="journal-scale-"))
    try:
        probe = root / "probe"
        write_seconds = write_loose(probe, 0, CHUNK)
        t0 = time.perf_counter()
        journal.compact(probe)
        compact_seconds = time.perf_counter() - t0
        part_mib = sum(p.stat().st_size for p in probe.rglob("*.parquet")) / 2**20
        print(f"write: {CHUNK / write_seconds:,.0f} entries/s (journal.record, loose JSON); compaction of "
              f"{CHUNK:,} loose entries into a part: {compact_seconds:.2f} s ({part_mib:.1f} MiB part)")
        print(f"{'entries':>9} | {'layout':>6} | {'files/folder':>12} | {'files':>9} | {'merge s':>8} | "
              f"{'merge MiB':>9} | {'finished s':>10} | {'finished MiB':>12} | {'tables s':>8}")
        for size in args.sizes:
            rows = []
            if size <= args.loose_max:
                loose = root / f"loose-{size}"
                write_loose(loose, 0, size)
                rows.append(("loose", loose))
            parts = root / f"parts-{size}"
            tail = min(CHUNK, size)
            write_parts(parts, size - tail)
            write_loose(parts, size - tail, tail)
            rows.append(("parts", parts))
            for layout, folder in rows:
                merge = in_fresh_process(f"{layout}-merge", folder)
                done = in_fresh_process(f"{layout}-finished", folder)
                per_folder, files = file_counts(folder)
                print(f"{size:>9,} | {layout:>6} | {per_folder:>12,} | {files:>9,} | {merge['seconds']:>8.2f} | "
                      f"{merge['peak_mib']:>9,.0f} | {done['seconds']:>10.2f} | {done['peak_mib']:>12,.0f} | "
                      f"{merge['write_seconds']:>8.2f}", flush=True)
                shutil.rmtree(folder)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
