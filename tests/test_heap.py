"""Freed heap memory goes back to the system; numpy's huge-page requests can be turned off (morphometry.heap)."""

from __future__ import annotations

import ctypes.util
import subprocess
import sys
from pathlib import Path

import pytest

from morphometry.heap import _madvise_setter, ordinary_pages, release_free_heap


def resident_mb() -> float:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1]) / 1e3


@pytest.mark.skipif(not sys.platform.startswith("linux") or ctypes.util.find_library("c") is None,
                    reason="malloc_trim is glibc's (Linux)")
def test_freed_small_allocations_leave_the_resident_set():
    blocks = [bytearray(4096) for _ in range(60_000)]  # ~250 MB in heap-sized pieces
    for block in blocks:
        block[::512] = b"\x01" * 8  # touch every page
    last = blocks.pop()  # an allocation at the heap's top keeps glibc from trimming by itself
    del blocks
    before = resident_mb()
    assert release_free_heap()
    assert before - resident_mb() > 150
    assert last[0] == 1


@pytest.mark.skipif(_madvise_setter() is None, reason="this numpy has no huge-page switch")
@pytest.mark.parametrize("before", [True, False])
def test_ordinary_pages_turns_numpy_huge_pages_off_and_restores_the_setting(before):
    setter = _madvise_setter()
    setter(before)
    try:
        with ordinary_pages():
            assert setter(False) is False  # returns the setting in force
        assert setter(before) is before
    finally:
        setter(True)


# Run in a fresh interpreter: in this one, freed memory that numpy asked huge pages for earlier
# (the heap keeps the request) may be handed out again, whatever the switch says now.
FLAGS_OF_A_NEW_ARRAY = """
import sys
from pathlib import Path
import numpy as np
from morphometry.heap import _madvise_setter, ordinary_pages

_madvise_setter()(True)
if sys.argv[1] == "inside":
    with ordinary_pages():
        a = np.ones(16 * 2**20, np.float32)  # 64 MiB
else:
    a = np.ones(16 * 2**20, np.float32)
start, stop = a.ctypes.data, a.ctypes.data + a.nbytes
flags, overlaps = set(), False
for line in Path("/proc/self/smaps").read_text().splitlines():
    head = line.split()[0]
    if "-" in head and ":" not in head:
        lo, hi = (int(v, 16) for v in head.split("-"))
        overlaps = lo < stop and start < hi
    elif overlaps and head == "VmFlags:":
        flags.update(line.split()[1:])
print(" ".join(sorted(flags)))
"""


# Whether the kernel then backs a requested range with huge pages depends on its settings (and a
# range not requested may still get them where they are given always); what ordinary_pages
# controls is the request (``hg`` among the mapping's flags), checked with the default as control.
@pytest.mark.skipif(_madvise_setter() is None or not Path("/sys/kernel/mm/transparent_hugepage").exists(),
                    reason="needs Linux transparent huge pages and numpy's huge-page switch")
@pytest.mark.parametrize("where", ["inside", "outside"])
def test_arrays_made_inside_ask_for_no_huge_pages(where):
    run = subprocess.run([sys.executable, "-c", FLAGS_OF_A_NEW_ARRAY, where],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    flags = run.stdout.split()
    assert "rd" in flags  # the mapping was found
    assert ("hg" in flags) is (where == "outside")
