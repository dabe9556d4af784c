"""The names of the segmentation methods (the paper's Sec. 3.2), in the order tables and figures
list them. ``morphometry.segment.methods`` defines what each one runs."""

from __future__ import annotations

METHOD_NAMES = ("synthseg+", "s1+s2", "synthseg", "synthseg+d", "s1+s2+d")
DEFAULT_METHOD = "synthseg+"


def method_order(methods) -> list[str]:
    """Known methods in the paper's order, then any others alphabetically (duplicates dropped)."""
    present = list(dict.fromkeys(methods))
    return [m for m in METHOD_NAMES if m in present] + sorted(m for m in present if m not in METHOD_NAMES)
