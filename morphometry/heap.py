"""How the process takes memory from the operating system.

Building an engine parses and copies the networks' weights in many small allocations; once freed,
glibc keeps that memory in the process (about 0.3 GB for the official networks) and it counts in
the resident set for the rest of the run, while the large arrays of a scan are mapped separately
and cannot reuse it. ``malloc_trim`` returns it. Elsewhere (macOS, musl) this does nothing.

numpy asks Linux for transparent huge pages for every array of 4 MiB or more. Where the kernel
assembles them by compacting memory at the first touch (``defrag = madvise``, the usual default),
a fresh array's first write can stall for a long time on a machine whose memory is fragmented
(e.g. by the page cache): slab-wise networks allocate arrays of 50-100 MB for every slab, and
these stalls took a fifth of their time at 1 mm (docs/benchmarks.md). :func:`ordinary_pages`
turns the request off for a block of work. The request stays with the memory: freed heap memory
that numpy asked huge pages for before the block keeps that request when malloc hands it out again
inside the block.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager
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


def _madvise_setter():
    """numpy's switch for its huge-page requests (``_set_madvise_hugepage``), or None."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    return getattr(multiarray, "_set_madvise_hugepage", None)


@contextmanager
def ordinary_pages() -> Iterator[None]:
    """numpy requests no transparent huge pages for the arrays it makes inside the block; the
    previous setting afterwards (module docstring: reused heap memory keeps an earlier request)."""
    setter = _madvise_setter()
    if setter is None:
        yield
        return
    previous = setter(False)
    try:
        yield
    finally:
        setter(previous)
