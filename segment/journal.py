"""Per-scan journal of a batch: one small JSON file per finished (or failed) scan.

Each entry is written atomically when its scan is done, so a batch killed at any moment loses
only the scans in flight. Tables (volumes, failures) are rebuilt from the journal by merging,
which makes reruns idempotent: one entry per scan_id, no duplicate rows.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from morphometry.atomic import atomic_write
from morphometry.tables import order_columns

JOURNAL_DIR = ".journal"
FAILURE_COLUMNS = ("scan_id", "path", "stage", "error")


def _entry_path(out_dir: Path, scan_id: str) -> Path:
    digest = hashlib.sha1(scan_id.encode()).hexdigest()
    return Path(out_dir) / JOURNAL_DIR / digest[:2] / f"{digest}.json"


def record(out_dir: Path, entry: dict) -> None:
    """Store one scan's entry: ``scan_id``, ``status`` (ok | failed), ``rows`` or ``error``."""
    text = json.dumps(entry, default=float)
    atomic_write(_entry_path(out_dir, entry["scan_id"]), lambda tmp: tmp.write_text(text))


def entries(out_dir: Path) -> list[dict]:
    """All entries of a batch folder (unreadable leftovers of a crash are ignored)."""
    found = []
    for path in sorted((Path(out_dir) / JOURNAL_DIR).glob("*/*.json")):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return found


def finished(out_dir: Path, methods: list[str]) -> set[str]:
    """scan_ids whose every requested method succeeded."""
    wanted = set(methods)
    return {e["scan_id"] for e in entries(out_dir)
            if e["status"] == "ok" and wanted <= {r["method"] for r in e["rows"]}}


def tables(all_entries: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(volumes, failures) from journal entries; a later entry for a scan_id replaces an earlier one."""
    latest = {e["scan_id"]: e for e in all_entries}
    rows = [r for e in latest.values() if e["status"] == "ok" for r in e["rows"]]
    fails = [{k: e.get(k) for k in FAILURE_COLUMNS} for e in latest.values() if e["status"] == "failed"]
    volumes = order_columns(pd.DataFrame(rows)) if rows else pd.DataFrame()
    if rows:
        volumes = volumes.sort_values(["scan_id", "method"], kind="stable").reset_index(drop=True)
    failures = pd.DataFrame(fails, columns=list(FAILURE_COLUMNS)).sort_values("scan_id").reset_index(drop=True)
    return volumes, failures


def write_failures(failures: pd.DataFrame, out_dir: Path) -> None:
    atomic_write(Path(out_dir) / "failures.csv", lambda tmp: failures.to_csv(tmp, index=False))
