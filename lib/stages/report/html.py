"""The report page: one small self-contained index.html showing the PNGs beside it (relative links)."""
import html
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lib.core.io import atomic_write_text

STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse;font-size:14px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}.note{color:#a33}p.caption{margin:.3em 0 1.5em}"""


@dataclass
class Figure:
    """A picture of the report: file (beside index.html), heading and one line of explanation."""

    path: Path
    heading: str
    caption: str


def figure_html(figure: Figure) -> str:
    """Heading, image (relative link) and caption of one figure."""
    name = html.escape(Path(figure.path).name)
    return (f"<h3>{html.escape(figure.heading)}</h3>\n<img src=\"{name}\" alt=\"{html.escape(figure.heading)}\">\n"
            f"<p class=\"caption\">{html.escape(figure.caption)}</p>")


def render_page(title: str, intro: str, table: pd.DataFrame, sections: list[tuple[str, list[Figure], list[str]]],
                table_heading: str = "Key numbers (out-of-fold)") -> str:
    """The whole page: title, intro line, key-number table, then sections (heading, figures, notes)."""
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<p>{html.escape(intro)}</p>", f"<h2>{html.escape(table_heading)}</h2>",
             table.to_html(index=False, border=0, na_rep="")]
    for heading, figures, notes in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts += [f"<p class=\"note\">{html.escape(note)}</p>" for note in notes]
        parts += [figure_html(figure) for figure in figures]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_page(path: Path, page: str) -> Path:
    """Write index.html atomically."""
    return atomic_write_text(page, path)
