"""The web page served at ``/``: one plain HTML file with its own script (no build step), read once."""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def page_html() -> str:
    return files("modaltune.serve").joinpath("page.html").read_text(encoding="utf-8")
