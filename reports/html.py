"""A small writer of self-contained HTML pages: figures embedded as PNG data, tables inline."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

STYLE = """
body { font-family: Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0 1.5em; }
th, td { border: 1px solid #ddd; padding: .25em .5em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #555; } .note { color: #555; font-size: .9em; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: .8em; }
"""


class Page:
    """Collects sections of HTML; ``render()`` returns the whole document."""

    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str, css: str = "") -> None:
        cls = f' class="{css}"' if css else ""
        self.parts.append(f"<p{cls}>{html.escape(text)}</p>")

    def figure(self, png: Path, caption: str) -> None:
        """Embed a PNG file as data, with its pixel size."""
        data = Path(png).read_bytes()
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        encoded = base64.b64encode(data).decode()
        self.parts.append(f'<figure><img alt="{html.escape(caption)}" width="{width}" height="{height}" '
                          f'src="data:image/png;base64,{encoded}"><figcaption>{html.escape(caption)}'
                          "</figcaption></figure>")

    def table(self, frame: pd.DataFrame, float_format: str = "{:.3g}") -> None:
        self.parts.append(frame.to_html(index=False, border=0, na_rep="",
                                        float_format=lambda v: float_format.format(v)))

    def preformatted(self, text: str) -> None:
        self.parts.append(f"<pre>{html.escape(text)}</pre>")

    def render(self) -> str:
        body = "\n".join(self.parts)
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(self.title)}'
                f"</title><style>{STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>\n{body}\n"
                "</body></html>\n")
