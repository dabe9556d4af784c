"""Shared figure style: one colour per method in every figure, print-size fonts."""

from __future__ import annotations

METHODS = ("synthseg+", "s1+s2", "synthseg", "synthseg+d", "s1+s2+d")
"""Method variants of the paper's Sec. 3.2, in the order figures list them."""

METHOD_COLOURS = {
    "synthseg+": "#d62728",
    "s1+s2": "#1f77b4",
    "synthseg": "#2ca02c",
    "synthseg+d": "#9467bd",
    "s1+s2+d": "#ff7f0e",
    "truth": "#000000",
}
_EXTRA = ("#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def method_colour(method: str) -> str:
    """Colour of a method; unknown methods get a stable colour from their name."""
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    return _EXTRA[sum(map(ord, method)) % len(_EXTRA)]


def method_order(methods) -> list[str]:
    """Known methods in the paper's order, then the others alphabetically."""
    present = list(dict.fromkeys(methods))
    return [m for m in METHODS if m in present] + sorted(m for m in present if m not in METHODS)


RC_PARAMS = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "figure.dpi": 150,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
}


def save_figure(fig, stem) -> list:
    """Write ``stem.png`` and ``stem.pdf``; return the two paths."""
    from pathlib import Path

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        fig.savefig(path)
    return paths
