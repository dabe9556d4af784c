"""Giving freed heap memory back to the operating system.

Building an engine parses and copies the networks' weights in many small allocations; once freed,
glibc keeps that memory in the process (about 0.3 GB for the official networks) and it counts in
the resident set for the rest of the run, while the large arrays of a scan are mapped separately
and cannot reuse it. ``malloc_trim`` returns it. Elsewhere (macOS, musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache


@cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def release_free_heap() -> bool:
    """Return the heap's free memory to the system (glibc); True when it could."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
