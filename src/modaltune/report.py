"""The one-page ``report.html`` of a run directory (its plots come from ``plots.py``).

``report.html`` is self-contained (inline CSS, images as base64 data URIs, no scripts) so it can
be mailed or attached to a ticket, and everything from configs, labels or data is HTML-escaped
by jinja2's autoescaping.
"""

from __future__ import annotations

import base64
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from modaltune.plots import is_number, metric_names, plot_history, series

PLOTS_DIR = "plots"
REPORT_FILE = "report.html"
#: Images shown first in the report, in this order; any other PNG follows alphabetically.
_PLOT_ORDER = ["loss", "lr", "metrics", "confusion_matrix", "comparison"]
_CAPTIONS = {"lr": "Learning rate", "metrics": "Validation metrics"}


# --------------------------------------------------------------------------- report.html

_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       padding: 0 1rem; color: #222; line-height: 1.4; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3rem; }
h2 { margin-top: 2rem; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: #f5f5f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pos { color: #17803d; } .neg { color: #b3261e; }
figure { margin: 1rem 0; } figcaption { color: #666; font-size: .85rem; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
{% macro table(t) -%}
{% if t.title %}<h3>{{ t.title }}</h3>{% endif %}
<table>
<tr>{% for h in t.header %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in t.rows %}<tr>{% for cell in row -%}
<td{% if cell.cls %} class="{{ cell.cls }}"{% endif %}>{{ cell.text }}</td>
{%- endfor %}</tr>
{% endfor %}</table>
{%- endmacro %}
{% if metric_tables %}<h2>Metrics</h2>
{% for t in metric_tables %}{{ table(t) }}{% endfor %}{% endif %}
{% if images %}<h2>Plots</h2>
{% for img in images %}<figure><img src="data:image/png;base64,{{ img.data }}" alt="{{ img.name }}">
<figcaption>{{ img.name }}</figcaption></figure>
{% endfor %}{% endif %}
{% if training_tables %}<h2>Training</h2>
{% for t in training_tables %}{{ table(t) }}{% endfor %}{% endif %}
{% if data_tables %}<h2>Data</h2>
{% for t in data_tables %}{{ table(t) }}{% endfor %}{% endif %}
{% for heading, html in sections %}<h2>{{ heading }}</h2>
{{ html | safe }}
{% endfor %}
<h2>Configuration</h2>
{{ table(config_table) }}
</body>
</html>
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)


def write_report(
    run_dir: Path,
    *,
    title: str,
    config: dict,
    data_report: dict | None,
    metrics: dict,
    history: list[dict],
    sections: Sequence[tuple[str, str]] = (),
) -> Path:
    """Write ``run_dir/report.html`` and return its path.

    Shows the metrics (top-level numbers; nested dicts such as ``zero_shot`` side by side with
    this run's values when they share keys; ``per_class`` as its own table), every PNG in
    ``run_dir/plots/`` inline, a training summary from ``history`` (its curves are plotted first
    when ``plots/loss.png`` is missing), the data report and the config.

    ``sections`` are extra ``(heading, html)`` parts; the heading is escaped, the html is
    inserted as is, so the caller must have escaped anything user-supplied in it.
    """
    run_dir = Path(run_dir)
    plots = run_dir / PLOTS_DIR
    if history and not (plots / "loss.png").exists():
        plot_history(history, plots)

    html = _ENV.from_string(_TEMPLATE).render(
        title=title,
        metric_tables=_metric_tables(metrics),
        images=_images(plots),
        training_tables=_training_tables(history),
        data_tables=_data_tables(data_report),
        sections=list(sections),
        config_table=_Table("", ["setting", "value"], [[_cell(k), _cell(v)] for k, v in _flatten(config)]),
    )
    path = run_dir / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)  # a reader (or the serve page) never sees half a report
    return path


@dataclass
class _Table:
    """What the template's table macro needs: a title, a header row and rows of cells."""

    title: str
    header: list[str]
    rows: list[list[dict]]


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, Integral):  # also numpy / torch-converted integers
        return str(int(value))
    if isinstance(value, Real):
        value = float(value)
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.4g}"  # learning rates and big counts: .4f would show 0.0000 / 123456.0000
        return f"{value:.4f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _cell(value: Any, cls: str = "") -> dict:
    if not cls and is_number(value):
        cls = "num"
    return {"text": _fmt(value), "cls": cls}


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as dotted keys (``train.lr``), so a config reads as one two-column table."""
    items: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            items.extend(_flatten(value, name + "."))
        else:
            items.append((name, value))
    return items


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _records_table(title: str, records: Mapping[str, Mapping[str, Any]], key_name: str) -> _Table:
    """A dict of dicts (per class, per strategy) as one table, columns = union of inner keys."""
    columns: dict[str, None] = {}
    for inner in records.values():
        columns.update(dict.fromkeys(k for k, v in inner.items() if _is_scalar(v)))
    rows = [[_cell(name)] + [_cell(inner.get(c, "")) for c in columns] for name, inner in records.items()]
    return _Table(title, [key_name, *columns], rows)


def _metric_tables(metrics: Mapping[str, Any]) -> list[_Table]:
    scalars = {k: v for k, v in metrics.items() if _is_scalar(v)}
    tables = []
    if scalars:
        tables.append(_Table("", ["metric", "value"], [[_cell(k), _cell(v)] for k, v in scalars.items()]))
    for name, value in metrics.items():
        if name == "confusion_matrix" or not isinstance(value, Mapping) or not value:
            continue  # the confusion matrix is shown as a plot
        if name == "per_class" and all(isinstance(v, Mapping) for v in value.values()):
            tables.append(_records_table("Per class", value, "class"))
            continue
        shared = [k for k, v in value.items() if is_number(v) and is_number(scalars.get(k))]
        if shared:
            tables.append(_comparison_table(name, value, scalars, shared))
        else:
            flat = [(k, v) for k, v in _flatten(value) if _is_scalar(v)]
            tables.append(_Table(_title(name), ["metric", "value"], [[_cell(k), _cell(v)] for k, v in flat]))
    return tables


def _comparison_table(
    name: str, baseline: Mapping[str, Any], final: Mapping[str, Any], keys: list[str]
) -> _Table:
    """E.g. zero-shot baseline vs this run, with the change: the number a user asks for first."""
    rows = []
    for key in keys:
        before, after = float(baseline[key]), float(final[key])
        delta = after - before
        sign = "pos" if delta > 0 else "neg" if delta < 0 else "num"
        change = {"text": f"{delta:+.4f}", "cls": f"num {sign}"}
        rows.append([_cell(key), _cell(before), _cell(after), change])
    return _Table(f"{_title(name)} vs this run", ["metric", _title(name), "this run", "change"], rows)


def _title(key: str) -> str:
    return str(key).replace("_", " ").replace("-", " ").capitalize()


def _images(plots: Path) -> list[dict[str, str]]:
    if not plots.is_dir():
        return []

    def order(path: Path) -> tuple[int, str]:
        rank = _PLOT_ORDER.index(path.stem) if path.stem in _PLOT_ORDER else len(_PLOT_ORDER)
        return rank, path.name

    return [
        {"name": _CAPTIONS.get(p.stem, _title(p.stem)), "data": base64.b64encode(p.read_bytes()).decode()}
        for p in sorted(plots.glob("*.png"), key=order)
    ]


def _training_tables(history: list[dict]) -> list[_Table]:
    steps = [r for r in history if r.get("kind", "step") == "step"]
    evals = [r for r in history if r.get("kind") == "eval"]
    if not steps and not evals:
        return []
    summary: list[tuple[str, Any]] = [("logged steps", len(steps)), ("evaluations", len(evals))]
    last = history[-1]
    for key in ("step", "epoch"):
        if is_number(last.get(key)):
            summary.append((f"last {key}", last[key]))
    for key in ("loss", "lr"):
        xs, ys = series(steps, key)
        if ys:
            summary.append((f"last train {key}", ys[-1]))
    tables = [_Table("", ["", "value"], [[_cell(k), _cell(v)] for k, v in summary])]
    if evals:
        names = (["val_loss"] if any("val_loss" in r for r in evals) else []) + metric_names(evals)
        rows = [[_cell(r.get("step", "")), _cell(r.get("epoch", ""))] + [_cell(r.get(n, "")) for n in names]
                for r in evals]
        tables.append(_Table("Evaluations", ["step", "epoch", *names], rows))
    return tables


def _data_tables(report: Mapping[str, Any] | None) -> list[_Table]:
    """The data report, whatever its sections: numbers as a summary, dicts (reason counts, label
    counts) as tables, lists of skipped rows as counts by reason plus the first examples."""
    if not report:
        return []
    summary = [(k, v) for k, v in report.items() if _is_scalar(v)]
    tables = [_Table("", ["", "value"], [[_cell(k), _cell(v)] for k, v in summary])] if summary else []
    for key, value in report.items():
        if isinstance(value, Mapping) and value:
            if all(isinstance(v, Mapping) for v in value.values()):
                tables.append(_records_table(_title(key), value, "name"))
            else:
                flat = _flatten(value)
                counts = all(isinstance(v, int) and not isinstance(v, bool) for _, v in flat)
                tables.append(_Table(_title(key), ["", "count" if counts else "value"],
                                     [[_cell(k), _cell(v)] for k, v in flat]))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            tables.extend(_row_list_tables(_title(key), value))
        elif isinstance(value, list) and value:
            tables.append(_Table(_title(key), ["values"], [[_cell(value)]]))
    return tables


def _row_list_tables(title: str, rows: list[Mapping[str, Any]], examples: int = 20) -> list[_Table]:
    tables = []
    reasons = Counter(str(r["reason"]) for r in rows if "reason" in r)
    if reasons:
        tables.append(_Table(f"{title}: by reason", ["reason", "rows"],
                             [[_cell(k), _cell(v)] for k, v in reasons.most_common()]))
    columns = list(dict.fromkeys(k for r in rows[:examples] for k in r))
    shown = [[_cell(r.get(c, "")) for c in columns] for r in rows[:examples]]
    more = f" (first {examples} of {len(rows)})" if len(rows) > examples else ""
    tables.append(_Table(f"{title}{more}", columns, shown))
    return tables


def transfer_sections(metrics: dict) -> list[tuple[str, str]]:
    """Report sections for the advisor's reasons, the forgetting report, rehearsal and the WiSE-FT sweep."""
    import html as _html

    esc = _html.escape
    sections: list[tuple[str, str]] = []
    advice = metrics.get("advice")
    if advice:
        items = "".join(f"<li>{esc(reason)}</li>" for reason in advice["reasons"])
        layers = f", layers {advice['layers']}" if advice.get("layers") else ""
        sections.append(("Advisor (strategy auto)", f"<p><b>{esc(advice['strategy'])}{esc(layers)}</b>, "
                         f"lr {advice['lr']:g}, {advice['epochs']} epochs, because:</p><ul>{items}</ul>"))
    forgetting = metrics.get("forgetting")
    if forgetting:
        def num(v: Any) -> str:
            return "n/a" if v is None else f"{v:.4f}"
        sections.append(("Forgetting (old task)", (
            f"<p>Old task <code>{esc(str(forgetting['old_task']))}</code> ({esc(forgetting['task'])}, "
            f"{forgetting['rows']} rows), metric <code>{esc(forgetting['metric'])}</code>: "
            f"before {num(forgetting['before'])}, after {num(forgetting['after'])}, "
            f"drop {num(forgetting['drop'])}.</p>")))
    replay = metrics.get("replay")
    if replay:
        how = (esc(replay["skipped"]) if replay.get("skipped") else
               f"a share {replay['ratio']:g} of every batch came from it, on top of the target rows")
        sections.append(("Rehearsal (--replay)", f"<p>Old-task data <code>{esc(str(replay['data']))}</code> "
                         f"({esc(replay['task'])}, {replay['rows']} rows): {how}.</p>"))
    wise = metrics.get("wise_ft")
    if wise:
        rows = "".join(
            f"<tr><td>{e['alpha']:.1f}</td><td>{e['target']:.4f}</td><td>"
            f"{'n/a' if e['drop'] is None else format(e['drop'], '.4f')}</td></tr>" for e in wise["sweep"])
        table = (f"<table><tr><th>alpha</th><th>target (val)</th><th>old-task drop</th></tr>{rows}</table>"
                 if rows else "")
        sections.append(("WiSE-FT", f"<p>alpha = {wise['alpha']:.2f} ({esc(wise['rule'])}).</p>{table}"))
    return sections


# --------------------------------------------------------------------------- sample predictions

#: The longest stretch of a clip the report's player holds (and its spectrogram shows), in seconds.
PLAYER_MAX_SECONDS = 10.0
#: Clips recorded above this rate are resampled to it for the player (the spectrogram keeps the
#: clip's own rate): 10 s of 16-bit mono is then at most ~590 kB of base64 per sample.
PLAYER_MAX_RATE = 22_050


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


def clip_for_player(path: str | Path) -> tuple[np.ndarray, int, float]:
    """What the report's player plays of the clip at ``path``: ``(samples, rate, seconds of the whole clip)``.

    The clip is decoded by the project's audio decoder (`modaltune.data.media.load_audio`: mono, by
    averaging channels), cut to its first `PLAYER_MAX_SECONDS`, resampled to `PLAYER_MAX_RATE` when
    recorded above it, and clipped to [-1, 1]. Raises `MediaError` (with a reason code) if unreadable.
    """
    from modaltune.data.media import audio_info, load_audio
    from modaltune.data.media.audio import resample

    rate = audio_info(path).sampling_rate
    samples = load_audio(path)
    seconds = len(samples) / rate
    samples = samples[: int(PLAYER_MAX_SECONDS * rate)]
    if rate > PLAYER_MAX_RATE:
        samples, rate = resample(samples, rate, PLAYER_MAX_RATE), PLAYER_MAX_RATE
    return np.clip(samples, -1.0, 1.0).astype(np.float32), rate, seconds


def wav_bytes(samples: np.ndarray, sampling_rate: int) -> bytes:
    """``samples`` (float, mono) as a 16-bit PCM WAV file: ``round(x * 32768)``, saturated, as
    ``modaltune.testing.synthetic_audio.quantize(x, "PCM_16")`` does, so a 16-bit clip is kept exactly."""
    import io

    import soundfile as sf

    ints = np.clip(np.rint(np.asarray(samples, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int16)
    buffer = io.BytesIO()
    sf.write(buffer, ints, int(sampling_rate), format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@register_sample_renderer("audio", "clip")
def _audio_cell(path: Any, thumbnail: int) -> str:
    """A log-mel spectrogram thumbnail (``2 * thumbnail`` × ``thumbnail`` px) over an ``<audio controls>``
    player holding the clip as a WAV data URI (see `clip_for_player`), and its length; shortened clips say so."""
    from modaltune.data.media import MediaError
    from modaltune.plots import spectrogram_png

    try:
        samples, rate, seconds = clip_for_player(path)
        spectrogram = spectrogram_png(samples, rate, width=2 * thumbnail, height=thumbnail)
        wav = base64.b64encode(wav_bytes(samples, rate)).decode("ascii")
    except MediaError as exc:
        return f"(clip unreadable: {_esc(exc.reason)})"
    except (OSError, ValueError, RuntimeError) as exc:
        return f"(clip unreadable: {_esc(type(exc).__name__)})"
    shown = len(samples) / rate
    length = (f"first {shown:.1f} s of {seconds:.1f} s (shortened)" if shown < seconds - 1e-6
              else f"{seconds:.1f} s")
    return (f'<img alt="spectrogram of {_esc(path)}" title="log-mel spectrogram" src="{_png_uri(spectrogram)}">'
            f'<br><audio controls preload="metadata" src="data:audio/wav;base64,{wav}"></audio>'
            f"<br><small>{length}</small>")


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
    rows = "".join(f"<tr><td>{_esc(name)}</td><td>{cell(value)}</td>"
                   + (f"<td>{cell(base.get(name, ''))}</td>" if base else "") + "</tr>" for name, value in ours.items())
    return [("Per-class AP", f"<p>COCO AP@[.5:.95] of each class on the validation images.</p>"
             f"<table>{header}{rows}</table>")]


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
    header = f"<tr><th>{_esc(heading)}</th>" + ("<th>question</th>" if has_question else "") + \
        "<th>this model</th>" + ("<th>base model (zero-shot)</th>" if base else "") + "<th>reference(s)</th></tr>"
    rows = []
    for s in samples:
        refs = _boxes_picture(s, "reference_boxes") + "<br>".join(_esc(r) for r in s.get("references", []))
        question = f"<td>{_esc(s.get('question') or '')}</td>" if has_question else ""
        zero = f"<td>{_prediction_text(base.get(s['id']))}</td>" if base else ""
        rows.append(f"<tr>{_media_cell(s, thumbnail)}{question}<td><b>{_prediction_text(s)}</b></td>{zero}"
                    f"<td>{refs}</td></tr>")
    return [("Sample predictions", f"<p>The first {len(samples)} validation examples.</p>"
             f"<table>{header}{''.join(rows)}</table>"), *_per_class_ap_section(metrics)]
