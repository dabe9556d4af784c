"""The journal compacted into Parquet parts: same entries and tables as the loose JSON files, newest
entry wins, concurrent writers lose nothing, a killed compaction loses nothing, old folders merge."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from morphometry.cli import main
from morphometry.segment import journal


def _entry(i: int, version: int = 1, status: str = "ok") -> dict:
    if status == "failed":
        return {"scan_id": f"s{i:04d}", "path": f"/data/s{i:04d}.nii.gz", "warnings": [], "status": "failed",
                "stage": "load", "error": f"/data/s{i:04d}.nii.gz: not an image (v{version})"}
    rows = [{"scan_id": f"s{i:04d}", "subject_id": f"sub{i // 2}", "session_id": None,
             "path": f"/data/s{i:04d}.nii.gz", "method": method, "model_id": "m1", "shape_x": 64 + i,
             "left_hippocampus": 3000.5 + i + 0.25 * version, "total_intracranial": 1.4e6 + i,
             **({"site": "A" if i % 2 else "B"} if i % 5 == 0 else {})}  # a manifest column of some rows
            for method in ("synthseg", "synthseg+")]
    return {"scan_id": f"s{i:04d}", "path": f"/data/s{i:04d}.nii.gz", "warnings": ["4-D"] if i % 3 == 0 else [],
            "status": "ok", "rows": rows}


def _fill(folder: Path, n: int, failed_every: int = 7) -> list[dict]:
    made = [_entry(i, status="failed" if i % failed_every == 3 else "ok") for i in range(n)]
    for entry in made:
        journal.record(folder, entry)
    return made


def _by_id(entries: list[dict]) -> list[dict]:
    return sorted(entries, key=lambda e: e["scan_id"])


def _loose_reference(folder: Path) -> list[dict]:
    """The entries as the loose JSON files hold them, read independently of the journal module."""
    return [json.loads(p.read_text()) for p in (folder / ".journal").glob("*/*.json")]


def _assert_tables_equal(got, expected) -> None:
    pd.testing.assert_frame_equal(got[0], expected[0])
    pd.testing.assert_frame_equal(got[1], expected[1])


def test_compaction_keeps_entries_and_tables(tmp_path):
    made = _fill(tmp_path, 40)
    reference = _loose_reference(tmp_path)
    assert _by_id(reference) == _by_id(made)
    expected = journal.tables(reference)
    assert len(expected[0]) == 2 * 34 and len(expected[1]) == 6
    _assert_tables_equal(journal.merged_tables([tmp_path]), expected)
    assert journal.compact(tmp_path) == 40
    assert not list((tmp_path / ".journal").glob("*/*.json"))
    assert [p.name for p in (tmp_path / ".journal" / "parts").glob("*.parquet")] == ["part-00000001.parquet"]
    assert journal.entries(tmp_path) == _by_id(made)
    _assert_tables_equal(journal.merged_tables([tmp_path]), expected)
    assert journal.finished(tmp_path, ["synthseg", "synthseg+"]) == {e["scan_id"] for e in made if e["status"] == "ok"}
    assert journal.finished(tmp_path, ["synthseg", "fast"]) == set()
    assert journal.has_entries(tmp_path) and not journal.has_entries(tmp_path / "nothing")


def test_newest_entry_wins_across_parts_and_loose_files(tmp_path):
    _fill(tmp_path, 10)
    journal.compact(tmp_path)
    journal.record(tmp_path, _entry(3, version=2))  # failed in part 1, then succeeded: part 2
    journal.record(tmp_path, _entry(4, version=2, status="failed"))  # succeeded, then failed: part 2
    journal.compact(tmp_path)
    journal.record(tmp_path, _entry(4, version=3))  # and succeeded again: loose
    journal.record(tmp_path, _entry(5, version=3))
    got = {e["scan_id"]: e for e in journal.entries(tmp_path)}
    assert len(got) == 10
    assert got["s0003"] == _entry(3, version=2) and got["s0004"] == _entry(4, version=3)
    assert got["s0005"] == _entry(5, version=3)
    volumes, failures = journal.merged_tables([tmp_path])
    assert failures.empty and len(volumes) == 20 and not volumes.duplicated(["scan_id", "method"]).any()
    hippo = volumes.set_index(["scan_id", "method"])["left_hippocampus"]
    assert hippo[("s0004", "synthseg")] == 3000.5 + 4 + 0.75 and hippo[("s0001", "synthseg")] == 3000.5 + 1 + 0.25
    _assert_tables_equal((volumes, failures), journal.tables(journal.entries(tmp_path)))


def _writer(folder: str, start: int, count: int) -> None:
    for i in range(start, start + count):
        journal.record(Path(folder), _entry(i))
    for i in range(start, start + count, 3):  # rewrite every third entry: version 2 must win
        journal.record(Path(folder), _entry(i, version=2))


def test_concurrent_writers_while_compacting_lose_nothing(tmp_path):
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_writer, args=(str(tmp_path), k * 300, 300)) for k in range(2)]
    for w in writers:
        w.start()
    compactions = 0
    while any(w.is_alive() for w in writers):
        compactions += journal.compact(tmp_path) > 0
    for w in writers:
        w.join()
        assert w.exitcode == 0
    journal.compact(tmp_path)
    assert compactions >= 2, "the compactions should overlap the writers"
    got = journal.entries(tmp_path)
    assert got == [_entry(i, version=2 if i % 300 % 3 == 0 else 1) for i in range(600)]
    assert not list((tmp_path / ".journal").glob("*/*.json"))
    assert not list((tmp_path / ".journal" / "parts").glob(".claim-*"))


@pytest.mark.parametrize("crash_at", ["before the part", "after the part"])
def test_killed_compaction_is_resolved(tmp_path, monkeypatch, crash_at):
    made = _fill(tmp_path, 12)
    expected = journal.tables(made)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # the compaction dies here

    target = "write_table" if crash_at == "before the part" else "rmtree"
    monkeypatch.setattr(journal.pq if target == "write_table" else journal.shutil, target, crash)
    with pytest.raises(KeyboardInterrupt):
        journal.compact(tmp_path)
    monkeypatch.undo()
    parts = tmp_path / ".journal" / "parts"
    assert len(list((parts / ".claim-1").glob("*.json"))) == 12
    assert len(list(parts.glob("*.parquet"))) == (crash_at == "after the part")
    assert journal.entries(tmp_path) == _by_id(made)  # duplicates of part and claim resolved
    _assert_tables_equal(journal.merged_tables([tmp_path]), expected)
    journal.record(tmp_path, _entry(2, version=5))  # newer than the claimed copy
    journal.compact(tmp_path)
    assert not list(parts.glob(".claim-*")) and not list(parts.glob(".*.tmp"))
    got = {e["scan_id"]: e for e in journal.entries(tmp_path)}
    assert len(got) == 12 and got["s0002"] == _entry(2, version=5) and got["s0001"] == made[1]


def test_old_loose_folders_and_compacted_ones_merge(tmp_path, capsys):
    old, new = tmp_path / "old", tmp_path / "new"
    for i in range(6):  # the previous version's layout: loose JSON files only
        entry = _entry(i)
        digest = hashlib.sha1(entry["scan_id"].encode()).hexdigest()
        (old / ".journal" / digest[:2]).mkdir(parents=True, exist_ok=True)
        (old / ".journal" / digest[:2] / f"{digest}.json").write_text(json.dumps(entry))
    for i in range(4, 10):
        journal.record(new, _entry(i, version=2))
    journal.compact(new)
    assert main(["merge", str(old), str(new), "-o", str(tmp_path / "merged")]) == 0
    merged = pd.read_parquet(tmp_path / "merged" / "volumes.parquet")
    assert len(merged) == 20 and not merged.duplicated(["scan_id", "method"]).any()
    expected = journal.tables(_loose_reference(old) + [_entry(i, version=2) for i in range(4, 10)])[0]
    got = merged.set_index(["scan_id", "method"]).sort_index()
    want = expected.set_index(["scan_id", "method"]).sort_index()
    pd.testing.assert_series_equal(got["left_hippocampus"], want["left_hippocampus"])
    assert got.loc[("s0005", "synthseg"), "left_hippocampus"] == 3000.5 + 5 + 0.5  # the later folder wins
    assert got.loc[("s0000", "synthseg+"), "site"] == "B" and got.loc[("s0005", "synthseg"), "site"] == "A"
    assert pd.isna(got.loc[("s0001", "synthseg"), "site"])


def test_compactor_compacts_every_n_entries_in_the_background(tmp_path):
    compactor = journal.Compactor(tmp_path, every=5)
    for i in range(12):
        journal.record(tmp_path, _entry(i))
        compactor.recorded()
    compactor.wait()
    parts = list((tmp_path / ".journal" / "parts").glob("*.parquet"))
    compacted = sum(pq.read_metadata(p).num_rows for p in parts) // 2  # 2 rows per entry
    assert 1 <= len(parts) <= 2 and 5 <= compacted <= 12  # each takes the loose files there when it starts
    assert len(list((tmp_path / ".journal").glob("*/*.json"))) == 12 - compacted
    assert compactor.finish() == 12 - compacted and len(journal.entries(tmp_path)) == 12
    assert not list((tmp_path / ".journal").glob("*/*.json"))


def test_values_of_mixed_types_survive_compaction(tmp_path):
    made = [_entry(i) for i in range(4)]
    for i, entry in enumerate(made):  # a manifest column read as numbers in one run, as text in another
        for row in entry["rows"]:
            row["age"] = [61, "61y", None, 70.5][i]
        journal.record(tmp_path, entry)
    journal.compact(tmp_path)
    assert journal.entries(tmp_path) == made
    volumes = journal.merged_tables([tmp_path])[0]
    assert volumes.set_index(["scan_id", "method"])["age"].tolist() == [61, 61, "61y", "61y", None, None, 70.5, 70.5]
