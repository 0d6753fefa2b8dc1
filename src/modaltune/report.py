"""Plots (PNG) and the one-page ``report.html`` of a run directory.

Plots are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas instead of through
``pyplot``: that needs no display, never switches the backend of a user's notebook or GUI, keeps
no global figure registry (nothing to leak or close) and is safe to call from the serve thread.

``report.html`` is self-contained (inline CSS, images as base64 data URIs, no scripts) so it can
be mailed or attached to a ticket, and everything from configs, labels or data is HTML-escaped
by jinja2's autoescaping.
"""

from __future__ import annotations

import base64
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Number, Real
from pathlib import Path
from typing import Any

import jinja2
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PLOTS_DIR = "plots"
REPORT_FILE = "report.html"
#: History keys that are axes, not series.
_AXIS_KEYS = {"step", "epoch", "kind"}
#: Above this many classes the confusion matrix drops its per-cell numbers (they would overlap).
_ANNOTATE_MAX_CLASSES = 30
#: Images shown first in the report, in this order; any other PNG follows alphabetically.
_PLOT_ORDER = ["loss", "lr", "metrics", "confusion_matrix", "comparison"]
_CAPTIONS = {"lr": "Learning rate", "metrics": "Validation metrics"}


# --------------------------------------------------------------------------- plotting helpers


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself to fig: rendering never goes through pyplot
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _is_number(value: Any) -> bool:
    # bool is an int subclass but a flag, not a series; NaN/inf would break axis limits.
    return isinstance(value, Number) and not isinstance(value, bool) and math.isfinite(float(value))


def _series(rows: Iterable[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of ``key`` over the rows that have a numeric value for it."""
    xs, ys = [], []
    for i, row in enumerate(rows):
        if _is_number(row.get(key)):
            xs.append(float(row.get("step", i)))
            ys.append(float(row[key]))
    return xs, ys


def _short(label: str, limit: int = 24) -> str:
    label = str(label)
    return label if len(label) <= limit else label[: limit - 1] + "…"


# --------------------------------------------------------------------------- plots


def plot_history(history: list[dict], out: Path) -> list[Path]:
    """Training curves from ``history.jsonl`` rows into the folder ``out``; returns the files written.

    Rows with ``kind == "step"`` (or no kind) are training steps, rows with ``kind == "eval"``
    are evaluations; any other kind is ignored. Writes ``loss.png`` (train ``loss`` and eval
    ``val_loss``), ``lr.png`` and ``metrics.png`` (one panel per other numeric eval key),
    skipping any plot that has no data.
    """
    steps = [r for r in history if r.get("kind", "step") == "step"]
    evals = [r for r in history if r.get("kind") == "eval"]
    out = Path(out)
    written: list[Path] = []

    train_loss, val_loss = _series(steps, "loss"), _series(evals, "val_loss")
    if train_loss[0] or val_loss[0]:
        fig = _figure(7, 4)
        ax = fig.add_subplot()
        if train_loss[0]:
            ax.plot(*train_loss, label="train loss", linewidth=1.2)
        if val_loss[0]:
            ax.plot(*val_loss, marker="o", label="val loss", linewidth=1.5)
        ax.set(xlabel="step", ylabel="loss", title="Loss")
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(_save(fig, out / "loss.png"))

    lr = _series(steps, "lr")
    if lr[0]:
        fig = _figure(7, 3)
        ax = fig.add_subplot()
        ax.plot(*lr, linewidth=1.2)
        ax.set(xlabel="step", ylabel="learning rate", title="Learning rate")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax.grid(alpha=0.3)
        written.append(_save(fig, out / "lr.png"))

    names = _metric_names(evals)
    if names:
        written.append(_save(_metric_panels(evals, names), out / "metrics.png"))
    return written


def _metric_names(evals: list[dict]) -> list[str]:
    """Numeric eval keys in first-seen order; val_loss already has its place in loss.png."""
    names: dict[str, None] = {}
    for row in evals:
        for key, value in row.items():
            if key not in _AXIS_KEYS and key != "val_loss" and _is_number(value):
                names[key] = None
    return list(names)


def _metric_panels(evals: list[dict], names: list[str]) -> Figure:
    # One small panel per metric: metrics live on different scales (accuracy vs seconds).
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = _figure(3.6 * cols, 2.8 * rows)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.plot(*_series(evals, name), marker="o", linewidth=1.5)
        ax.set_title(_short(name, 40), fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Validation metrics")
    return fig


def plot_confusion_matrix(cm: list[list[int]], labels: list[str], out_file: Path) -> Path:
    """Confusion matrix heat map, rows = true class, columns = predicted, with counts in the cells.

    Up to 30 classes every cell is annotated (font shrinking with the class count); beyond that
    only the colours remain, since numbers would overlap.
    """
    n = len(labels)
    if len(cm) != n or any(len(row) != n for row in cm):
        raise ValueError(f"confusion matrix must be {n}×{n} to match the labels")
    side = min(4 + 0.35 * n, 20)
    fig = _figure(side + 1.5, side)
    ax = fig.add_subplot()
    image = ax.imshow(cm, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8)

    tick_size = max(5, 10 - n // 8)
    names = [_short(label) for label in labels]
    ax.set_xticks(range(n), names, rotation=45 if n <= 10 else 90, ha="right" if n <= 10 else "center",
                  fontsize=tick_size)
    ax.set_yticks(range(n), names, fontsize=tick_size)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")

    if n <= _ANNOTATE_MAX_CLASSES:
        peak = max((v for row in cm for v in row), default=0)
        font = max(6, 12 - n // 4)
        for i, row in enumerate(cm):
            for j, count in enumerate(row):
                # White on dark cells, black on light ones, so every count stays legible.
                colour = "white" if peak and count > peak / 2 else "black"
                ax.text(j, i, str(count), ha="center", va="center", fontsize=font, color=colour)
    return _save(fig, out_file)


def plot_strategy_comparison(
    rows: list[dict], out_file: Path, metric_key: str, label_key: str = "strategy"
) -> Path | None:
    """Horizontal bars of ``metric_key`` per strategy, each bar labelled with its value.

    A second panel shows ``seconds`` when the rows have it (the cost side of the trade-off).
    Rows without a numeric ``metric_key`` (a failed strategy) are left out; returns None when
    no row has one.
    """
    rows = [r for r in rows if _is_number(r.get(metric_key))]
    if not rows:
        return None
    names = [_short(r.get(label_key, "?"), 30) for r in rows]
    with_time = any(_is_number(r.get("seconds")) for r in rows)
    height = 1.2 + 0.45 * len(rows)
    fig = _figure(10 if with_time else 6.5, height)
    panels = fig.subplots(1, 2 if with_time else 1, sharey=True, squeeze=False)[0]

    _bars(panels[0], names, [float(r[metric_key]) for r in rows], metric_key, "{:.4f}")
    if with_time:
        seconds = [float(r["seconds"]) if _is_number(r.get("seconds")) else 0.0 for r in rows]
        _bars(panels[1], names, seconds, "seconds", "{:.1f}s", colour="tab:gray")
    panels[0].invert_yaxis()  # first strategy on top, in the order given
    return _save(fig, out_file)


def _bars(
    ax: Any, names: list[str], values: list[float], title: str, fmt: str, colour: str = "tab:blue"
) -> None:
    bars = ax.barh(range(len(names)), values, color=colour)
    ax.set_yticks(range(len(names)), names)
    ax.bar_label(bars, labels=[fmt.format(v) for v in values], padding=3, fontsize=8)
    ax.set_xlim(0, max(values + [1e-9]) * 1.2)  # room for the value labels
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)


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
    if not cls and _is_number(value):
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
        shared = [k for k, v in value.items() if _is_number(v) and _is_number(scalars.get(k))]
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
        if _is_number(last.get(key)):
            summary.append((f"last {key}", last[key]))
    for key in ("loss", "lr"):
        xs, ys = _series(steps, key)
        if ys:
            summary.append((f"last train {key}", ys[-1]))
    tables = [_Table("", ["", "value"], [[_cell(k), _cell(v)] for k, v in summary])]
    if evals:
        names = (["val_loss"] if any("val_loss" in r for r in evals) else []) + _metric_names(evals)
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
    """Report sections for the advisor's reasons, the forgetting report and the WiSE-FT sweep."""
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
    wise = metrics.get("wise_ft")
    if wise:
        rows = "".join(
            f"<tr><td>{e['alpha']:.1f}</td><td>{e['target']:.4f}</td><td>"
            f"{'n/a' if e['drop'] is None else format(e['drop'], '.4f')}</td></tr>" for e in wise["sweep"])
        table = (f"<table><tr><th>alpha</th><th>target (val)</th><th>old-task drop</th></tr>{rows}</table>"
                 if rows else "")
        sections.append(("WiSE-FT", f"<p>alpha = {wise['alpha']:.2f} ({esc(wise['rule'])}).</p>{table}"))
    return sections



def sample_sections(metrics: dict, *, thumbnail: int = 96) -> list[tuple[str, str]]:
    """Sample predictions next to their references, with the image, for generative and VQA tasks:
    ``metrics["samples"]`` from this run, and the base model's own answers from the zero-shot
    baseline for the same rows."""
    import html as _html
    import io

    from modaltune.data import MediaError, load_image

    samples = metrics.get("samples")
    if not samples:
        return []
    esc = _html.escape
    base = {s["id"]: s for s in (metrics.get("zero_shot") or {}).get("samples", [])}

    def image_cell(path: str) -> str:
        try:
            image = load_image(Path(path)).convert("RGB")
        except (MediaError, OSError):
            return "<td>(image unreadable)</td>"
        image.thumbnail((thumbnail, thumbnail))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = base64.b64encode(buffer.getvalue()).decode("ascii")
        return f'<td><img alt="{esc(path)}" src="data:image/png;base64,{data}"></td>'

    has_question = any(s.get("question") for s in samples)
    header = "<tr><th>image</th>" + ("<th>question</th>" if has_question else "") + \
        "<th>this model</th>" + ("<th>base model (zero-shot)</th>" if base else "") + "<th>reference(s)</th></tr>"
    rows = []
    for s in samples:
        refs = "<br>".join(esc(r) for r in s.get("references", []))
        question = f"<td>{esc(s.get('question') or '')}</td>" if has_question else ""
        zero = f"<td>{esc(base.get(s['id'], {}).get('prediction', ''))}</td>" if base else ""
        rows.append(f"<tr>{image_cell(s['image'])}{question}<td><b>{esc(s['prediction'])}</b></td>{zero}"
                    f"<td>{refs}</td></tr>")
    return [("Sample predictions", f"<p>The first {len(samples)} validation examples.</p>"
             f"<table>{header}{''.join(rows)}</table>")]
