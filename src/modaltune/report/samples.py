"""The report's sample predictions: each beside its references and the base model's answer, its media
shown by the renderer registered for its kind (an image's thumbnail here; audio in ``report/audio.py``)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modaltune.plots import is_number

#: ``render(ref, thumbnail) -> cell HTML`` of a `SampleRenderer`.
RenderSample = Callable[[Any, int], str]


@dataclass(frozen=True)
class SampleRenderer:
    """How the sample table shows one kind of media (``"image"``, ``"audio"``; later video, …).

    ``header`` is the table's first column heading when every sample is of this kind (``"image"``,
    ``"clip"``). ``render(ref, thumbnail)`` gets what the sample holds under the kind (a path; a
    later kind may hold a list) and the thumbnail size in pixels, and returns the inner HTML of the
    cell, with anything from the data escaped; it never raises for a bad file, it says so in the cell.
    """

    kind: str
    header: str
    render: RenderSample


_SAMPLE_RENDERERS: dict[str, SampleRenderer] = {}


def register_sample_renderer(kind: str, header: str) -> Callable[[RenderSample], RenderSample]:
    """Decorator: ``render`` shows samples of media ``kind`` (see `SampleRenderer`); the table code
    needs no change for a new kind. Registering a kind twice replaces the earlier renderer."""

    def add(render: RenderSample) -> RenderSample:
        _SAMPLE_RENDERERS[kind] = SampleRenderer(kind, header, render)
        return render

    return add


def sample_renderers() -> dict[str, SampleRenderer]:
    """The registered renderers by kind (a copy)."""
    return dict(_SAMPLE_RENDERERS)


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


@register_sample_renderer("image", "image")
def _image_cell(path: Any, thumbnail: int) -> str:
    """An inline PNG thumbnail of the image, at most ``thumbnail`` pixels on its longer side."""
    import io

    from modaltune.data.media import MediaError, load_image

    try:
        image = load_image(Path(path)).convert("RGB")
    except (MediaError, OSError):
        return "(image unreadable)"
    image.thumbnail((thumbnail, thumbnail))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return f'<img alt="{_esc(path)}" src="{_png_uri(buffer.getvalue())}">'


def _esc(value: Any) -> str:
    import html as _html

    return _html.escape(str(value))


def sample_media(sample: Mapping[str, Any]) -> tuple[str, Any] | None:
    """``(kind, reference)`` of the media a sample shows: its ``"media"`` dict (``{"audio": path}``)
    first, else a top-level key named after a registered kind (``"image"``, ``"audio"``); ``None``
    when it has none. In a ``"media"`` dict a kind with a renderer wins over one without."""
    media = sample.get("media")
    if isinstance(media, Mapping) and media:
        for kind, ref in media.items():
            if kind in _SAMPLE_RENDERERS and ref:
                return str(kind), ref
        kind, ref = next(iter(media.items()))
        return str(kind), ref
    for kind in _SAMPLE_RENDERERS:
        if sample.get(kind):
            return kind, sample[kind]
    return None


def _media_cell(sample: Mapping[str, Any], thumbnail: int) -> str:
    found = sample_media(sample)
    if found is None:
        return "<td>(no media)</td>"
    kind, ref = found
    renderer = _SAMPLE_RENDERERS.get(kind)
    if renderer is None:
        return f"<td>(no preview for {_esc(kind)})</td>"
    return f"<td>{renderer.render(ref, thumbnail)}</td>"


def _prediction_text(sample: Mapping[str, Any] | None) -> str:
    """The prediction, escaped, with its score when the sample has one (a classifier's probability);
    a detector's sample (``"boxes"``) shows its image with the boxes drawn above the text."""
    if not sample:
        return ""
    text = _esc(sample.get("prediction", ""))
    score = sample.get("score")
    text = f"{text} ({float(score):.2f})" if score is not None and is_number(score) else text
    return _boxes_picture(sample, "boxes") + text


def _boxes_picture(sample: Mapping[str, Any], key: str) -> str:
    """The sample's image with ``sample[key]`` ({"box": xyxy pixels, "label", "score"?}) drawn, or ""."""
    if key not in sample or not sample.get("image"):
        return ""
    from modaltune.data.media import MediaError
    from modaltune.drawing import boxes_png_uri

    try:
        uri = boxes_png_uri(sample["image"], sample[key])
    except (MediaError, OSError):
        return "(image unreadable)<br>"
    return f'<img alt="{_esc(key)}" src="{uri}"><br>'


def _per_class_ap_section(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A detector's AP per class, this model beside the base model when the baseline has it."""
    ours = metrics.get("ap_per_class")
    if not isinstance(ours, Mapping) or not ours:
        return []
    base = (metrics.get("zero_shot") or {}).get("ap_per_class") or {}

    def cell(value: Any) -> str:
        return _esc(f"{float(value):.3f}") if is_number(value) else _esc(value)

    header = "<tr><th>class</th><th>AP (this model)</th>" + ("<th>AP (base model)</th>" if base else "") + "</tr>"
    rows = "".join(
        f"<tr><td>{_esc(name)}</td><td>{cell(value)}</td>"
        + (f"<td>{cell(base.get(name, ''))}</td>" if base else "")
        + "</tr>"
        for name, value in ours.items()
    )
    return [
        (
            "Per-class AP",
            f"<p>COCO AP@[.5:.95] of each class on the validation images.</p><table>{header}{rows}</table>",
        )
    ]


def sample_sections(metrics: dict, *, thumbnail: int = 96) -> list[tuple[str, str]]:
    """Sample predictions next to their references, with their media: ``metrics["samples"]`` from
    this run, and the base model's own predictions from the zero-shot baseline for the same rows.

    A sample is ``{"id", <media>, "prediction", "score"?, "question"?, "references": [...]}`` where
    the media is ``"image": path``, ``"audio": path`` or ``"media": {kind: path}``; each kind is
    shown by its `SampleRenderer` (an image thumbnail; a spectrogram and a player for a clip). The
    first column is headed by the kind's name (``image``, ``clip``), or ``media`` when kinds mix.
    """
    samples = metrics.get("samples")
    if not samples:
        return []
    base = {s["id"]: s for s in (metrics.get("zero_shot") or {}).get("samples", [])}

    kinds = {found[0] for found in map(sample_media, samples) if found}
    only = _SAMPLE_RENDERERS.get(next(iter(kinds))) if len(kinds) == 1 else None
    heading = only.header if only else "media"
    has_question = any(s.get("question") for s in samples)
    header = (
        f"<tr><th>{_esc(heading)}</th>"
        + ("<th>question</th>" if has_question else "")
        + "<th>this model</th>"
        + ("<th>base model (zero-shot)</th>" if base else "")
        + "<th>reference(s)</th></tr>"
    )
    rows = []
    for s in samples:
        refs = _boxes_picture(s, "reference_boxes") + "<br>".join(_esc(r) for r in s.get("references", []))
        question = f"<td>{_esc(s.get('question') or '')}</td>" if has_question else ""
        zero = f"<td>{_prediction_text(base.get(s['id']))}</td>" if base else ""
        rows.append(
            f"<tr>{_media_cell(s, thumbnail)}{question}<td><b>{_prediction_text(s)}</b></td>{zero}<td>{refs}</td></tr>"
        )
    return [
        (
            "Sample predictions",
            f"<p>The first {len(samples)} validation examples.</p><table>{header}{''.join(rows)}</table>",
        ),
        *_per_class_ap_section(metrics),
    ]
