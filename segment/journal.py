"""Per-scan journal of a batch: one small JSON file per finished (or failed) scan, compacted as the
batch goes into Parquet parts.

Each entry is written atomically when its scan is done (by the batch's process or by any cluster
worker), so a batch killed at any moment loses only the scans in flight. Tables (volumes, failures)
are rebuilt from the journal by merging, which makes reruns idempotent: one entry per scan_id, no
duplicate rows.

Layout of ``OUT/.journal/``:

- ``<2 hex>/<sha1 of scan_id>.json``: loose entries, newest of all;
- ``parts/part-<seq>.parquet``: compacted entries, one row per volumes row (a failure: one row),
  the row's values as columns plus ``_entry`` (the entry without its rows, JSON), ``_keys`` (the
  row's keys in order, JSON) and ``_status``; a higher ``seq`` is newer;
- ``parts/.claim-<seq>/``: loose files taken by the compaction that writes part ``seq``; left
  behind only by a compaction that was killed, read as if they were part ``seq``.

When one scan_id has several entries the newest wins: loose files over parts, a higher part over a
lower one. The process holding the folder's lock compacts (:func:`compact`); writers never
wait for it: a compaction renames each loose file into its claim folder before reading it, so an
entry rewritten meanwhile stays loose and newer.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from morphometry.atomic import atomic_write
from morphometry.progress import log
from morphometry.tables import order_columns

JOURNAL_DIR = ".journal"
PARTS_DIR = "parts"
FAILURE_COLUMNS = ("scan_id", "path", "stage", "error")
COMPACT_EVERY = 10_000  # entries recorded between two compactions of a running batch
READ_CHUNK = 20_000  # loose files read into one Arrow table at a time
_PART = re.compile(r"part-(\d+)\.parquet")
_CLAIM = re.compile(r"\.claim-(\d+)")
_LOOSE_RANK = 1 << 40  # loose files are newer than every part
_SOURCE_RANKS = 1 << 41  # ranks of the i-th merged folder start at i * _SOURCE_RANKS
_JSON_COLUMN = "_json:"  # prefix of a row column stored as JSON text (values of mixed types)


def _entry_path(out_dir: Path, scan_id: str) -> Path:
    digest = hashlib.sha1(scan_id.encode()).hexdigest()
    return Path(out_dir) / JOURNAL_DIR / digest[:2] / f"{digest}.json"


def record(out_dir: Path, entry: dict) -> None:
    """Store one scan's entry: ``scan_id``, ``status`` (ok | failed), ``rows`` or ``error``.
    Safe from many processes at once (an atomic rename per entry)."""
    text = json.dumps(entry, default=float)
    atomic_write(_entry_path(out_dir, entry["scan_id"]), lambda tmp: tmp.write_text(text))


# -- sources: loose files, claim folders, parts ----------------------------------------------------
def _parts_dir(out_dir: Path) -> Path:
    return Path(out_dir) / JOURNAL_DIR / PARTS_DIR


def _numbered(folder: Path, pattern: re.Pattern) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.fullmatch(p.name))]
    return sorted(found)


def _loose_files(out_dir: Path) -> list[Path]:
    root = Path(out_dir) / JOURNAL_DIR
    return sorted(root.glob("[0-9a-f][0-9a-f]/*.json")) if root.is_dir() else []


def _read_json(paths: Iterable[Path]) -> Iterator[dict]:
    for path in paths:
        try:
            yield json.loads(path.read_text())
        except (OSError, ValueError):  # moved by a compaction meanwhile, or a leftover of a crash
            continue


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _sources(out_dir: Path, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """Arrow tables of every entry of a folder with a ``_rank`` column (higher: newer), read newest
    first (loose, then claims, then parts) so that a compaction running meanwhile hides nothing."""
    for chunk in _chunks(_read_json(_loose_files(out_dir)), READ_CHUNK):
        yield _entries_table(chunk, _LOOSE_RANK)
    parts = _parts_dir(out_dir)
    for seq, claim in reversed(_numbered(parts, _CLAIM)):
        for chunk in _chunks(_read_json(sorted(claim.glob("*.json"))), READ_CHUNK):
            yield _entries_table(chunk, 2 * seq + 1)
    for seq, part in reversed(_numbered(parts, _PART)):
        try:
            schema = pq.read_schema(part)
            wanted = None if columns is None else [c for c in schema.names if c in columns or c.startswith(
                _JSON_COLUMN) and c[len(_JSON_COLUMN):] in columns]
            table = pq.read_table(part, columns=wanted)
        except (OSError, pa.ArrowException) as exc:  # written atomically: unreadable means damaged on disk
            log.warning(f"warning: {part}: unreadable journal part, its entries are left out ({exc})")
            continue
        yield table.append_column("_rank", pa.array([2 * seq] * table.num_rows, pa.int64()))


# -- entries <-> Arrow -------------------------------------------------------------------------------
def _column(values: list) -> pa.Array | None:
    """An Arrow array of ``values``, or None when their types do not mix (stored as JSON text)."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return None


def _entries_table(chunk: list[dict], rank: int) -> pa.Table:
    """One Arrow row per volumes row of ``chunk`` (one per failed entry), see the module's layout."""
    rows, heads, statuses, keys, scan_ids = [], [], [], [], []
    for entry in chunk:
        head = json.dumps({k: v for k, v in entry.items() if k != "rows"}, default=float)
        entry_rows = entry.get("rows") if entry.get("status") == "ok" else None
        for row in entry_rows or [None]:
            rows.append(row or {})
            heads.append(head)
            statuses.append(entry.get("status"))
            keys.append(None if row is None else json.dumps(list(row)))
            scan_ids.append(entry["scan_id"])
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    names.pop("scan_id", None)
    arrays = {"scan_id": pa.array(scan_ids, pa.string())}
    for name in names:
        values = [row.get(name) for row in rows]
        array = _column(values)
        if array is None:
            arrays[_JSON_COLUMN + name] = pa.array([None if v is None else json.dumps(v) for v in values], pa.string())
        else:
            arrays[name] = array
    arrays.update(_entry=pa.array(heads, pa.string()), _keys=pa.array(keys, pa.string()),
                  _status=pa.array(statuses, pa.string()), _rank=pa.array([rank] * len(rows), pa.int64()))
    return pa.table(arrays)


def _table_entries(table: pa.Table) -> Iterator[tuple[int, dict]]:
    """(rank, entry) of the entries of an Arrow table of :func:`_entries_table`."""
    data = {name: table.column(name).to_pylist() for name in table.column_names}
    for name in [n for n in data if n.startswith(_JSON_COLUMN)]:
        data[name[len(_JSON_COLUMN):]] = [None if v is None else json.loads(v) for v in data.pop(name)]
    current = None
    for i in range(table.num_rows):
        key = (data["scan_id"][i], data["_rank"][i])
        if current is None or current[0] != key:
            if current is not None:
                yield current[0][1], current[1]
            current = (key, json.loads(data["_entry"][i]))
        if data["_keys"][i] is not None:
            row_keys = json.loads(data["_keys"][i])
            current[1].setdefault("rows", []).append({k: data[k][i] for k in row_keys})
    if current is not None:
        yield current[0][1], current[1]


# -- readers ------------------------------------------------------------------------------------------
def has_entries(out_dir: Path) -> bool:
    """True when the folder holds any journal entry (loose or compacted)."""
    parts = _parts_dir(out_dir)
    return bool(_loose_files(out_dir)) or bool(_numbered(parts, _PART)) or any(
        any(claim.glob("*.json")) for _, claim in _numbered(parts, _CLAIM))


def entries(out_dir: Path) -> list[dict]:
    """The newest entry of every scan_id of a batch folder, by scan_id (unreadable leftovers of a
    crash are ignored). Builds every entry as a dict: prefer :func:`merged_tables` and
    :func:`finished` for large folders."""
    newest: dict[str, tuple[int, dict]] = {}
    for table in _sources(out_dir):
        for rank, entry in _table_entries(table):
            if entry["scan_id"] not in newest or newest[entry["scan_id"]][0] < rank:
                newest[entry["scan_id"]] = (rank, entry)
    return [newest[k][1] for k in sorted(newest)]


def _newest(ranks: pd.DataFrame) -> np.ndarray:
    """Mask of the rows of the newest entry of each scan_id (columns scan_id, _rank)."""
    if ranks.empty:
        return np.zeros(0, bool)
    return (ranks["_rank"] == ranks.groupby("scan_id")["_rank"].transform("max")).to_numpy()


def finished(out_dir: Path, methods: list[str]) -> set[str]:
    """scan_ids whose newest entry succeeded with every requested method."""
    wanted = ["scan_id", "method", "_status", "_rank"]
    frames = [t.select([c for c in wanted if c in t.column_names]).to_pandas() for t in _sources(out_dir, wanted)]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=wanted)
    frame = frame[_newest(frame)]
    if "method" not in frame:
        return set()
    ok = frame[(frame["_status"] == "ok") & frame["method"].isin(list(methods))]
    counts = ok.drop_duplicates(["scan_id", "method"]).groupby("scan_id").size()
    return set(counts.index[counts == len(set(methods))])


def _reduced(table: pa.Table, rank_offset: int, row_keys: set) -> pa.Table:
    """``table`` without what the tables do not need: the row keys go into ``row_keys``, the
    entry text is kept for failures only, ranks are shifted by the source's offset."""
    for text in pc.unique(table.column("_keys")).to_pylist():
        if text is not None:
            row_keys.update(json.loads(text))
    failed = pc.equal(table.column("_status"), "failed")
    table = table.set_column(table.schema.get_field_index("_entry"), "_entry",
                             pc.if_else(failed, table.column("_entry"), pa.scalar(None, pa.string())))
    table = table.set_column(table.schema.get_field_index("_rank"), "_rank",
                             pc.add(table.column("_rank"), pa.scalar(rank_offset, pa.int64())))
    return table.drop_columns(["_keys"])


def merged_tables(sources: Iterable[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(volumes, failures) of the journals of ``sources`` (folders; a later folder wins for a scan_id
    present in several), read column-wise: memory about the size of the tables, no entry dicts."""
    row_keys: set = set()
    tables = [_reduced(table, index * _SOURCE_RANKS, row_keys)
              for index, src in enumerate(sources) for table in _sources(src)]
    empty_failures = pd.DataFrame(columns=list(FAILURE_COLUMNS))
    if not tables:
        return pd.DataFrame(), empty_failures
    table = pa.concat_tables(tables, promote_options="permissive")
    del tables
    newest = _newest(table.select(["scan_id", "_rank"]).to_pandas())
    status = table.column("_status").to_numpy(zero_copy_only=False)
    failed_entries = table.filter(pa.array(newest & (status == "failed"))).column("_entry").to_pylist()
    fails = [{k: e.get(k) for k in FAILURE_COLUMNS} for e in map(json.loads, failed_entries)]
    failures = pd.DataFrame(fails, columns=list(FAILURE_COLUMNS)).sort_values("scan_id").reset_index(drop=True)
    ok = table.filter(pa.array(newest & (status == "ok")))
    del table
    if ok.num_rows == 0:
        return pd.DataFrame(), failures
    texts = {c[len(_JSON_COLUMN):]: ok.column(c).to_pylist() for c in ok.column_names
             if c.startswith(_JSON_COLUMN) and c[len(_JSON_COLUMN):] in row_keys}
    volumes = ok.select([c for c in ok.column_names if c in row_keys]).to_pandas()
    for key, values in texts.items():  # columns of mixed types, stored as JSON text in some sources
        decoded = pd.Series([None if v is None else json.loads(v) for v in values], dtype=object)
        volumes[key] = decoded if key not in volumes else volumes[key].astype(object).where(decoded.isna(), decoded)
    volumes = order_columns(volumes).sort_values(["scan_id", "method"], kind="stable").reset_index(drop=True)
    return volumes, failures


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


# -- compaction ---------------------------------------------------------------------------------------
def compact(out_dir: Path) -> int:
    """Move the loose entries of ``out_dir`` into a new Parquet part; return how many entries.

    Compactions of one folder run one at a time (a lock file in ``parts/``). Each loose file is first renamed into the
    claim folder of the new part (an entry written meanwhile stays loose, newer), the part is
    written atomically, then the claim folder is deleted; a claim folder left by a killed
    compaction is folded into the new part (or deleted when its part was written).
    """
    parts = _parts_dir(out_dir)
    parts.mkdir(parents=True, exist_ok=True)
    with open(parts / ".compacting", "a") as guard:  # one compaction at a time, even without the folder lock
        fcntl.flock(guard, fcntl.LOCK_EX)
        return _compact(parts, out_dir)


def _compact(parts: Path, out_dir: Path) -> int:
    written = {seq for seq, _ in _numbered(parts, _PART)}
    claims = _numbered(parts, _CLAIM)
    for seq, claim in claims:
        if seq in written:
            shutil.rmtree(claim, ignore_errors=True)
    leftovers = [(seq, claim) for seq, claim in claims if seq not in written]
    seq = max([*written, *(s for s, _ in claims), 0]) + 1
    claim = parts / f".claim-{seq}"
    claim.mkdir()
    for path in _loose_files(out_dir):
        try:
            os.rename(path, claim / path.name)
        except FileNotFoundError:
            continue
    newest: dict[str, dict] = {}
    for _, old in leftovers:  # older than the loose files just claimed
        newest.update((e["scan_id"], e) for e in _read_json(sorted(old.glob("*.json"))))
    newest.update((e["scan_id"], e) for e in _read_json(sorted(claim.glob("*.json"))))
    if newest:
        table = _entries_table(list(newest.values()), 0).drop_columns(["_rank"])
        atomic_write(parts / f"part-{seq:08d}.parquet", lambda tmp: pq.write_table(table, tmp), suffix=".tmp")
    for _, old in leftovers:
        shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(claim, ignore_errors=True)
    return len(newest)


class Compactor:
    """Compacts a running batch's journal in a background thread every ``every`` entries recorded
    (:meth:`recorded`), so that the batch does not wait for it, and at the end (:meth:`finish`);
    held by the process that holds the folder's lock."""

    def __init__(self, out_dir: Path, every: int = COMPACT_EVERY):
        self.out_dir, self.every, self.pending = Path(out_dir), max(1, every), 0
        self._thread: threading.Thread | None = None

    def recorded(self, n: int = 1) -> None:
        """``n`` more entries were recorded; start a compaction when ``every`` have accumulated
        and none is running."""
        self.pending += n
        if self.pending >= self.every and not (self._thread and self._thread.is_alive()):
            self.pending = 0
            self._thread = threading.Thread(target=self._compact, name="compact", daemon=True)
            self._thread.start()

    def _compact(self) -> None:
        try:
            compact(self.out_dir)
        except OSError as exc:  # e.g. a full disk: the entries stay readable, the next compaction retries
            log.warning(f"warning: {self.out_dir}: journal compaction failed ({exc}); the entries stay loose")

    def wait(self) -> None:
        """Wait for the compaction running in the background, if any."""
        if self._thread is not None:
            self._thread.join()

    def finish(self) -> int:
        """Wait for the background compaction, compact now; return how many entries went into the
        new part."""
        self.wait()
        self.pending = 0
        return compact(self.out_dir)
