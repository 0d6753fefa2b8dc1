"""The one-page ``report.html`` of a run directory (its plots come from ``plots.py``).

``report.html`` is self-contained (inline CSS, images as base64 data URIs, no scripts) so it can
be mailed or attached to a ticket, and everything from configs, labels or data is HTML-escaped
by jinja2's autoescaping.

``page`` writes the page and its tables; ``transfer`` and ``samples`` make its extra sections (the
transfer story; sample predictions with their media, one renderer per media kind, ``audio``'s for clips).
"""

# Importing audio registers its renderer after samples' image one: sample_media tries the kinds in that order.
from modaltune.report.audio import PLAYER_MAX_RATE, PLAYER_MAX_SECONDS, clip_for_player, wav_bytes
from modaltune.report.page import PLOTS_DIR, REPORT_FILE, write_report
from modaltune.report.samples import (
    RenderSample,
    SampleRenderer,
    register_sample_renderer,
    sample_media,
    sample_renderers,
    sample_sections,
)
from modaltune.report.transfer import transfer_sections

__all__ = [
    "PLAYER_MAX_RATE",
    "PLAYER_MAX_SECONDS",
    "PLOTS_DIR",
    "REPORT_FILE",
    "RenderSample",
    "SampleRenderer",
    "clip_for_player",
    "register_sample_renderer",
    "sample_media",
    "sample_renderers",
    "sample_sections",
    "transfer_sections",
    "wav_bytes",
    "write_report",
]
