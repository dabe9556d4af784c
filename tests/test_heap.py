"""Freed heap memory goes back to the system (morphometry.heap)."""

from __future__ import annotations

import ctypes.util
import sys

import pytest

from morphometry.heap import release_free_heap


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
