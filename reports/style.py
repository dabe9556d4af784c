"""Shared figure style: one colour per method in every figure, print-size fonts."""

from __future__ import annotations

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
