"""The demo's sections that need no pretrained base model: they run while the base pretrains.

A section is one `Section` in `SECTIONS`. ``run_demo`` runs each as a job of its worker processes
(one torch thread each), in this order, while the CLIP base pretrains;
the demo's own process prints its table when it is done. To add one, write (module-level functions:
they are sent to a worker by name) ``run_<name>_section(output, *, quick, console)`` returning one
JSON-able dict per result (``console`` writes to the section's log, ``<output>/logs``),
``<name>_table(results)`` (a rich renderable for the console) and ``<name>_html(results)`` (its part
of ``report.html``), then append its `Section` below. Budget: about 40 s of one core on an idle
2-core machine (the whole ``make demo``, fresh clone included, has 10 minutes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modaltune.testing.demo.audio import audio_html, audio_table, run_audio_section
from modaltune.testing.demo.chat import chat_html, chat_tables, run_chat_section
from modaltune.testing.demo.detect import detect_html, detect_table, run_detect_section
from modaltune.testing.demo.vl import run_vl_section, vl_html, vl_table


@dataclass(frozen=True)
class Section:
    title: str  # its console heading; capitalised, its heading in report.html
    results_file: str  # what ``run`` returns, as JSON in the output folder (replaced on a rerun)
    run: Callable[..., list[dict[str, Any]]]  # run(output, *, quick, console) -> results
    table: Callable[[list[dict[str, Any]]], Any]  # results -> what the console shows
    html: Callable[[list[dict[str, Any]]], str]  # results -> its part of report.html

    @property
    def heading(self) -> str:
        return self.title[:1].upper() + self.title[1:]


SECTIONS: list[Section] = [
    Section("visual question answering and captioning", "demo_vl_results.json", run_vl_section, vl_table, vl_html),
    Section("sound classification (CLAP)", "demo_audio_results.json", run_audio_section, audio_table,
            audio_html),
    Section("open-vocabulary detection (OWLv2)", "demo_detect_results.json", run_detect_section, detect_table,
            detect_html),
    Section("visual instruction tuning (LLaVA)", "demo_chat_results.json", run_chat_section, chat_tables, chat_html),
]
